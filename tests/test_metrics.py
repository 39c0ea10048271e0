"""Hold-out AP (one rule), best-F1 and precision thresholds (one argument order: labels, scores), precision and recall."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.metrics import (average_precisions, best_f1_thresholds, mean_average_precision, precision_recall_at,
                                 precision_thresholds)


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


# --------------------------------------------------------------------------- precision thresholds
NAN = np.nan
# Columns: (0) a precision can be reached; (1) it cannot above the floor, best F1 there; (2) the lowest
# precise cut falls below the floor; (3) one class only; (4) no known label; (5) no score above the floor;
# (6) tied scores.
THRESHOLD_LABELS = np.array([
    [1, 0, 1, 0, NAN, 1, 1],
    [1, 1, 1, 0, NAN, 0, 0],
    [0, 0, 1, 0, NAN, 1, 1],
    [1, 1, 0, 0, NAN, 0, 0],
    [0, 1, 0, 0, NAN, 1, NAN],
    [1, 1, NAN, 0, NAN, 0, NAN],
    [0, 0, NAN, 0, NAN, 1, NAN],
    [1, 0, NAN, 0, NAN, 0, NAN]])
THRESHOLD_SCORES = np.array([
    [0.9, 0.9, 0.9, 0.9, 0.9, 0.29, 0.6],
    [0.8, 0.8, 0.8, 0.8, 0.8, 0.2, 0.6],
    [0.7, 0.7, 0.32, 0.7, 0.7, 0.1, 0.6],
    [0.6, 0.45, 0.1, 0.6, 0.6, 0.05, 0.2],
    [0.4, 0.25, 0.05, 0.4, 0.4, 0.04, 0.9],
    [0.35, 0.2, 0.5, 0.35, 0.35, 0.03, 0.9],
    [0.2, 0.15, 0.5, 0.2, 0.2, 0.02, 0.9],
    [0.1, 0.05, 0.5, 0.1, 0.1, 0.01, 0.9]])


def test_precision_threshold_is_the_lowest_cut_reaching_the_precision():
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.75, floor=0.3)
    # Column 0, ranked: 1 1 0 1 | 0 1 0 1 → precision 1, 1, 2/3, 3/4, 3/5, 4/6 … : the 4th cut is the lowest at 3/4
    # (higher ones reach it too, with less recall), midway between 0.6 and 0.4.
    assert thresholds[0] == pytest.approx(0.5) and rules[0] == "precision"
    precision, recall = precision_recall_at(THRESHOLD_LABELS, THRESHOLD_SCORES, thresholds)
    assert precision[0] == pytest.approx(3 / 4) and recall[0] == pytest.approx(3 / 5)
    # Asking for more precision moves the cut up: 0.8 is reached only by the top two.
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.8, floor=0.3)
    assert thresholds[0] == pytest.approx(0.75) and rules[0] == "precision"


def test_without_a_precise_cut_best_f1_above_the_floor_and_never_below_it():
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.75, floor=0.3)
    # Column 1, ranked: 0 1 0 1 | 1 1 0 0 (4 positives): no cut ≥ 0.3 reaches 3/4; best F1 among those is
    # the 4th cut (2·2 / (4 + 4) = 0.5), midway between 0.45 and 0.25 — not the overall best F1 (0.8, at 0.175).
    assert thresholds[1] == pytest.approx(0.35) and rules[1] == "best F1"
    # Column 2: the lowest precise cut lies midway between 0.32 and 0.1 (0.21): raised to the floor, which
    # decides the same images.
    assert thresholds[2] == pytest.approx(0.3) and rules[2] == "precision"
    known = ~np.isnan(THRESHOLD_LABELS[:, 2])
    assert ((THRESHOLD_SCORES[known, 2] >= 0.3) == (THRESHOLD_SCORES[known, 2] >= 0.21)).all()
    # Column 6: tied scores are decided together (the cut cannot fall between them): 0.6 ×3 (2 positives)
    # then 0.2; the first 0.6 alone (precision 1) is not a cut.
    assert thresholds[6] == pytest.approx(0.4) and rules[6] == "best F1"
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.6, floor=0.3)
    assert thresholds[6] == pytest.approx(0.4) and rules[6] == "precision"
    for floor in (0.0, 0.3, 0.55, 0.7, 0.95):
        for precision in (0.5, 0.8, 1.0):
            thresholds, _ = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision, floor)
            assert (thresholds >= floor).all(), (floor, precision, thresholds)


def test_precision_threshold_defaults_where_the_data_cannot_choose():
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.75, floor=0.3)
    assert thresholds[3:6].tolist() == [0.5, 0.5, 0.5] and rules[3:6] == ["default"] * 3
    thresholds, _ = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.75, floor=0.3, default=0.4)
    assert thresholds[3] == 0.4
    # A floor above the default: the default is raised to it.
    thresholds, rules = precision_thresholds(THRESHOLD_LABELS, THRESHOLD_SCORES, precision=0.75, floor=0.7)
    assert thresholds[3:6].tolist() == [0.7, 0.7, 0.7] and rules[3] == "default"


def test_precision_and_recall_at_thresholds_on_known_labels():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, NAN, 0], [0, 1, 0], [1, 0, 0]], np.float64)
    scores = np.array([[0.9, 0.2, 0.9], [0.4, 0.8, 0.1], [0.7, 0.99, 0.2], [0.2, 0.6, 0.3], [0.6, 0.1, 0.4]])
    precision, recall = precision_recall_at(labels, scores, np.array([0.5, 0.95, 0.35]))
    # Column 0: rows 0, 2, 4 decided (2 of them positive); positives 0, 1, 4 (2 of them decided).
    assert precision[0] == pytest.approx(2 / 3) and recall[0] == pytest.approx(2 / 3)
    # Column 1: the only score ≥ 0.95 has an unknown label: nothing decided, no precision; recall 0.
    assert np.isnan(precision[1]) and recall[1] == 0.0
    # Column 2: no positive: precision 0 of the two decided, no recall.
    assert precision[2] == 0.0 and np.isnan(recall[2])
