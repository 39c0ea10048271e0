"""Hold-out AP (one rule) and best-F1 thresholds (one argument order: labels, scores)."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.metrics import average_precisions, best_f1_thresholds, mean_average_precision


def test_ap_is_measured_only_where_the_test_labels_hold_both_classes():
    labels = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]], np.float32)
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.2, 0.3, 0.8, 0.1], [0.7, 0.2, 0.9, 0.2], [0.1, 0.4, 0.7, 0.4]],
                      np.float32)
    ap = average_precisions(labels, scores)
    assert ap[0] == pytest.approx(1.0)  # both positives ranked first
    assert np.isnan(ap[1])  # no positive: no AP
    assert ap[2] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)  # ranks 2, 3, 4 among 4
    assert np.isnan(ap[3])  # only positives: AP would be 1 whatever the ranking, so none
    assert mean_average_precision(ap) == pytest.approx((1.0 + ap[2]) / 2)
    assert mean_average_precision(np.full(3, np.nan)) is None


def test_unknown_labels_are_left_out():
    labels = np.array([[1], [np.nan], [0], [1]], np.float32)
    scores = np.array([[0.9], [0.99], [0.1], [0.5]], np.float32)
    assert average_precisions(labels, scores)[0] == pytest.approx(1.0)


def test_best_f1_threshold_cuts_midway_between_distinct_scores():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]], np.float32)
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.7, 0.2, 0.9], [0.1, 0.4, 0.7]], np.float32)
    thresholds = best_f1_thresholds(labels, scores)
    assert thresholds[0] == pytest.approx((0.7 + 0.2) / 2)  # both positives above, both negatives below
    assert thresholds[1] == 0.5  # no positive: the default
    assert thresholds[2] == pytest.approx(0.2)  # F1 is best keeping every image: the lowest score itself
    assert (scores[:, 0] >= thresholds[0]).tolist() == [True, False, True, False]


def test_best_f1_threshold_on_svm_scores_with_unknowns_and_ties():
    scores = np.array([[2.0], [1.0], [1.0], [-1.0], [np.nan]])
    labels = np.array([[1], [1], [0], [0], [1]], np.float64)
    # Cutting between the tied scores is not allowed: 1.5 (F1 2/3) or 0 (F1 0.8).
    assert best_f1_thresholds(labels, scores, default=0.0)[0] == pytest.approx(0.0)
    assert best_f1_thresholds(np.zeros_like(labels), scores, default=0.0)[0] == 0.0  # nothing to choose on
