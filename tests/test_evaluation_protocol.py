"""Leave-one-run-out cross-validation and the paper's fold AP conventions; the hierarchical mode."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from helpers import svm_problem
from xrayscatter.evaluation import protocol


def test_fold_ap_follows_the_papers_conventions():
    runs = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    scores = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.4, 0.1], [0.5, 0.3, 0.3, 0.3],
                       [0.8, 0.4, np.nan, 0.2], [0.2, 0.5, np.nan, 0.1], [0.7, 0.6, np.nan, 0.5],
                       [0.3, 0.7, 0.1, 0.6], [0.6, 0.8, 0.2, 0.2], [0.4, 0.9, 0.3, 0.1]])
    nan = np.nan
    labels = np.array([
        # measured; absent from run 0; positives only in run 1 (absent from its training); unknown in run 2
        [1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0],
        [1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0],
        [0, 1, 0, nan], [1, 0, 0, nan], [0, 0, 0, nan]], dtype=float)
    ap, status = protocol.fold_average_precision(scores, labels, runs, 3)
    assert status[0, 0] == protocol.MEASURED
    assert ap[0, 0] == pytest.approx(average_precision_score([1, 0, 1], [0.9, 0.1, 0.5]))
    assert (status[0, 1], ap[0, 1]) == (protocol.ABSENT_TEST, 1.0)
    assert (status[1, 2], ap[1, 2]) == (protocol.ABSENT_TRAIN, 1.0)  # prevalence of run 1 = 3/3
    assert (status[1, 1], ap[1, 1]) == (protocol.ONLY_POSITIVES, 1.0)
    assert status[2, 3] == protocol.UNLABELLED and np.isnan(ap[2, 3])


def test_prevalence_is_the_ap_when_training_lacks_the_attribute():
    runs = np.array([0, 0, 0, 0, 1, 1])
    labels = np.array([[1.0], [0.0], [0.0], [0.0], [0.0], [0.0]])
    ap, status = protocol.fold_average_precision(np.full((6, 1), np.nan), labels, runs, 2)
    assert status[0, 0] == protocol.ABSENT_TRAIN and ap[0, 0] == pytest.approx(0.25)
    assert status[1, 0] == protocol.ABSENT_TEST and ap[1, 0] == 1.0


def test_summary_separates_table4_table5_and_strict():
    fold_ap = np.array([[0.5, 1.0], [0.7, 0.2]])
    status = np.array([[protocol.MEASURED, protocol.ABSENT_TEST], [protocol.MEASURED, protocol.ABSENT_TRAIN]],
                      dtype=object)
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=float)
    runs = np.array([0, 0, 1, 1])
    summary = protocol.summarize(fold_ap, status, np.zeros((4, 2)), labels, runs, ("two runs", "one run"))
    assert summary["map_paper"] == pytest.approx(np.mean([0.6, 0.6]))
    assert summary["map_table5"] == pytest.approx(0.6)  # "one run" is in a single run
    assert summary["map_strict"] == pytest.approx(0.6)
    assert summary["num_attributes_table5"] == 1
    assert summary["per_attribute"]["one run"]["ap_strict"] is None


def test_leave_one_run_out_learns_a_signal_and_keeps_each_test_run_unseen():
    features, labels, run = svm_problem()
    result = protocol.leave_one_run_out(features, (500,), labels, run, (0.1, 1.0, 10.0), inner_folds=2)
    summary = protocol.summarize(result.fold_ap, result.fold_status, result.scores, labels, run, ("a", "b", "noise"))
    assert summary["per_attribute"]["a"]["ap_paper"] > 0.9
    assert summary["per_attribute"]["noise"]["ap_paper"] < 0.7
    assert set(result.chosen_c.ravel()) <= {0.1, 1.0, 10.0}
    # Changing the labels of run 0 changes nothing that the fold of run 0 computed.
    changed = labels.copy()
    changed[run == 0] = 1.0 - changed[run == 0]
    again = protocol.leave_one_run_out(features, (500,), changed, run, (0.1, 1.0, 10.0), inner_folds=2)
    np.testing.assert_array_equal(again.scores[run == 0], result.scores[run == 0])
    np.testing.assert_array_equal(again.chosen_c[0], result.chosen_c[0])


def test_hierarchical_mode_routes_by_the_predicted_group():
    features, labels, run = svm_problem(num_images=160, runs=8)
    group = (np.arange(160) % 3 == 0).astype(float)
    features[:, :100] += group[:, None] * features[:, :100].std(axis=0) * 4  # dims that give the group away
    result = protocol.leave_one_run_out(features, (500,), labels, run, (1.0,), group_labels=group)
    assert np.nanmean(result.group_accuracy) > 0.9
    assert result.hierarchical is not None
    assert result.hierarchical.scores.shape == result.scores.shape
    assert not np.allclose(result.hierarchical.scores, result.scores, equal_nan=True)
