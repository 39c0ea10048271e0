"""Leave-one-run-out cross-validation and average precision, with the paper's conventions.

One fold per measurement run: the SVMs are trained on every other run (C chosen by an inner
GroupKFold over those runs only) and score the held-out run. Images of one run share geometry,
detector and sample, so holding out whole runs is what tells how tags transfer to a new experiment.

How fold APs are combined (``COMBINATION_TEXT`` repeats this in every report):

* Fold AP of attribute a in the fold of run r, over the images of r whose label for a is known,
  with ``sklearn.metrics.average_precision_score`` on the SVM decision values:

  ============================  ==========================================  ====================
  status                        when                                        fold AP
  ============================  ==========================================  ====================
  ``measured``                  r has positives and negatives; training     measured AP
                                has both classes
  ``only_positives_in_test``    r has positives only (training both)        1 (any ranking)
  ``absent_from_test_run``      r has no positive                           1 (paper)
  ``absent_from_training``      r has positives, training lacks a class     prevalence in r (paper:
                                                                            a random classifier)
  ``unlabelled_in_test_run``    no image of r has a known label for a       not counted
  ============================  ==========================================  ====================

* AP of an attribute (paper) = mean of its counted fold APs; mAP (Table 4) = mean over the
  attributes with positive and negative labels somewhere in the data set.
* Table 5 = the same attribute APs, mean over attributes with positives in ≥ 2 runs.
* Strict = per attribute the mean over ``measured`` folds only (no convention fills in a number),
  mean over the Table-5 attributes that have at least one measured fold.
* Pooled AP (used for the PR curves) = one AP over every image's out-of-fold score; scores of
  different folds come from different SVMs, so it is a secondary number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score

from xrayscatter.evaluation.svm import FoldSpace, choose_c, fit_linear_svms

MEASURED = "measured"
ONLY_POSITIVES = "only_positives_in_test"
ABSENT_TEST = "absent_from_test_run"
ABSENT_TRAIN = "absent_from_training"
UNLABELLED = "unlabelled_in_test_run"
FOLD_STATUSES = (MEASURED, ONLY_POSITIVES, ABSENT_TEST, ABSENT_TRAIN, UNLABELLED)

COMBINATION_TEXT = (
    "Leave-one-run-out: one fold per run; the SVMs of a fold never see its run (C is chosen by an inner "
    "GroupKFold over the training runs only). Fold AP = sklearn average_precision_score of the held-out run's "
    "decision values over its images with a known label. Paper's convention: a run without positives gives "
    "fold AP 1; a run with positives whose training runs lack positives (or negatives) gives the run's "
    "prevalence, a random classifier's AP; a run with positives only gives 1; a run with no known label is "
    "not counted. Attribute AP = mean of its counted fold APs. mAP (Table 4) = mean attribute AP over the "
    "attributes with both positive and negative labels in the data set. Table 5 = the same, over attributes "
    "with positives in at least two runs. Strict mAP = over the Table-5 attributes, each attribute's mean "
    "over only the folds where the AP was measured (both classes in the held-out run and in training). "
    "Pooled AP = one AP over all out-of-fold scores (PR curves)."
)

# Hierarchical mode: score of an attribute that every training image of the predicted group has
# (or lacks): above (below) any SVM decision value, so it ranks first (last).
_GROUP_CONSTANT_SCORE = 1e3


@dataclass
class CrossValidation:
    """Out-of-fold results of one feature set.

    Attributes:
        scores: (N, A) float64 decision values from the fold that held each image's run out
            (NaN where that fold's training held one class only).
        fold_ap: (F, A) float64 fold APs by the paper's convention (NaN: not counted).
        fold_status: (F, A) str, one of FOLD_STATUSES.
        chosen_c: (F, A) float64 C of each fold's SVMs.
        c_measured: (F, A) bool, whether the inner validation could measure AP for that choice.
        unconverged: LIBLINEAR fits that reached the iteration cap.
        seconds: wall time of the whole cross-validation.
        hierarchical: the hierarchical mode's results (scores, fold_ap, fold_status), if run.
        group_accuracy: (F,) accuracy of the hierarchical mode's group predictions on each held-out run.
        group_majority: (F,) the training runs' majority rate of the group (what always answering the
            more common group would score on them).
        group_classifier_used: (F,) bool, whether the fold used its group SVM (its inner cross-validation
            beat the majority rate) or fell back to the training runs' majority group.
    """

    scores: np.ndarray
    fold_ap: np.ndarray
    fold_status: np.ndarray
    chosen_c: np.ndarray
    c_measured: np.ndarray
    unconverged: int = 0
    seconds: float = 0.0
    hierarchical: "CrossValidation | None" = None
    group_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_majority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_classifier_used: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def fold_average_precision(scores: np.ndarray, labels: np.ndarray, runs: np.ndarray,
                           num_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold APs and statuses under the paper's conventions (see the module docstring).

    Args:
        scores: (N, A) out-of-fold decision values.
        labels: (N, A) float 1 / 0 / NaN.
        runs: (N,) int run codes in [0, num_runs).

    Returns:
        fold_ap (num_runs, A) float64 (NaN where not counted), fold_status (num_runs, A) str.
    """
    num_attributes = labels.shape[1]
    fold_ap = np.full((num_runs, num_attributes), np.nan)
    fold_status = np.full((num_runs, num_attributes), UNLABELLED, dtype=object)
    known = ~np.isnan(labels)
    positive = known & (labels > 0.5)
    negative = known & (labels <= 0.5)
    total_pos = positive.sum(axis=0)
    total_neg = negative.sum(axis=0)
    for r in range(num_runs):
        test = runs == r
        test_pos = positive[test].sum(axis=0)
        test_neg = negative[test].sum(axis=0)
        train_pos = total_pos - test_pos
        train_neg = total_neg - test_neg
        for a in range(num_attributes):
            if test_pos[a] + test_neg[a] == 0:
                continue
            if test_pos[a] == 0:
                fold_ap[r, a], fold_status[r, a] = 1.0, ABSENT_TEST
            elif train_pos[a] == 0 or train_neg[a] == 0:
                fold_ap[r, a] = test_pos[a] / (test_pos[a] + test_neg[a])
                fold_status[r, a] = ABSENT_TRAIN
            elif test_neg[a] == 0:
                fold_ap[r, a], fold_status[r, a] = 1.0, ONLY_POSITIVES
            else:
                rows = test & known[:, a]
                s = scores[rows, a]
                if np.isnan(s).any():  # cannot happen when training held both classes; guard anyway
                    fold_ap[r, a] = test_pos[a] / (test_pos[a] + test_neg[a])
                    fold_status[r, a] = ABSENT_TRAIN
                    continue
                fold_ap[r, a] = average_precision_score(labels[rows, a] > 0.5, s)
                fold_status[r, a] = MEASURED
    return fold_ap, fold_status


def runs_with_positive(labels: np.ndarray, runs: np.ndarray, num_runs: int) -> np.ndarray:
    """(A,) int: how many runs hold at least one positive image of each attribute."""
    positive = ~np.isnan(labels) & (labels > 0.5)
    return np.array([sum(bool(positive[runs == r, a].any()) for r in range(num_runs))
                     for a in range(labels.shape[1])], dtype=np.int64)


def constant_within_runs(labels: np.ndarray, runs: np.ndarray, num_runs: int) -> np.ndarray:
    """(A,) bool: every run's known labels of the attribute are one class (all positive or all negative)."""
    known = ~np.isnan(labels)
    positive = known & (labels > 0.5)
    negative = known & (labels <= 0.5)
    mixed = np.zeros(labels.shape[1], dtype=bool)
    for r in range(num_runs):
        test = runs == r
        mixed |= positive[test].any(axis=0) & negative[test].any(axis=0)
    return ~mixed


def summarize(fold_ap: np.ndarray, fold_status: np.ndarray, scores: np.ndarray, labels: np.ndarray,
              runs: np.ndarray, attributes: tuple[str, ...]) -> dict:
    """Attribute APs and the three mAPs as a JSON-able dict.

    An attribute is *constant within runs* when every run's known labels of it are all positive or
    all negative (the beamstop, the beam position and the background level of a simulated run). Under
    the paper's fold convention such an attribute scores 1 on every fold whose run lacks it and is
    never measured within a run, so its convention AP says nothing about the features; its pooled AP
    (all out-of-fold scores ranked together) does. ``map_headline`` uses the pooled AP for those
    attributes and the convention AP for the rest, and is the number to quote.

    Returns:
        ``{"map_headline", "map_pooled", "map_paper", "map_table5", "map_strict", "num_attributes_evaluable",
        "num_attributes_table5", "num_attributes_strict", "constant_within_runs": [names],
        "per_attribute": {name: {"ap_paper", "ap_strict", "ap_pooled", "ap_headline", "constant_within_runs",
        "runs_with_positive", "positives", "negatives", "unknown", "folds_by_status"}}}``;
        APs are floats in [0, 1], or None where undefined.
    """
    num_runs = fold_ap.shape[0]
    known = ~np.isnan(labels)
    positives = (known & (labels > 0.5)).sum(axis=0)
    negatives = (known & (labels <= 0.5)).sum(axis=0)
    in_runs = runs_with_positive(labels, runs, num_runs)
    evaluable = (positives > 0) & (negatives > 0)
    table5 = evaluable & (in_runs >= 2)
    per_attribute = {}
    ap_paper = np.full(len(attributes), np.nan)
    ap_strict = np.full(len(attributes), np.nan)
    ap_pooled = np.full(len(attributes), np.nan)
    constant = constant_within_runs(labels, runs, num_runs)
    for a, name in enumerate(attributes):
        counted = ~np.isnan(fold_ap[:, a])
        measured = fold_status[:, a] == MEASURED
        if evaluable[a] and counted.any():
            ap_paper[a] = fold_ap[counted, a].mean()
        if evaluable[a] and measured.any():
            ap_strict[a] = fold_ap[measured, a].mean()
        pooled = None
        ok = known[:, a] & ~np.isnan(scores[:, a])
        if evaluable[a] and 0 < (labels[ok, a] > 0.5).sum() < ok.sum():
            pooled = float(average_precision_score(labels[ok, a] > 0.5, scores[ok, a]))
            ap_pooled[a] = pooled
        per_attribute[name] = {
            "ap_paper": _float_or_none(ap_paper[a]),
            "ap_strict": _float_or_none(ap_strict[a]),
            "ap_pooled": pooled,
            "ap_headline": pooled if constant[a] else _float_or_none(ap_paper[a]),
            "constant_within_runs": bool(constant[a]),
            "runs_with_positive": int(in_runs[a]),
            "positives": int(positives[a]),
            "negatives": int(negatives[a]),
            "unknown": int((~known[:, a]).sum()),
            "in_table5": bool(table5[a]),
            "folds_by_status": {s: int((fold_status[:, a] == s).sum()) for s in FOLD_STATUSES},
        }
    strict_set = table5 & ~np.isnan(ap_strict)
    headline = np.where(constant, ap_pooled, ap_paper)
    return {
        "map_headline": _mean_or_none(headline[evaluable & ~np.isnan(headline)]),
        "map_pooled": _mean_or_none(ap_pooled[evaluable & ~np.isnan(ap_pooled)]),
        "constant_within_runs": [name for a, name in enumerate(attributes) if constant[a] and evaluable[a]],
        "map_paper": _mean_or_none(ap_paper[evaluable & ~np.isnan(ap_paper)]),
        "map_table5": _mean_or_none(ap_paper[table5 & ~np.isnan(ap_paper)]),
        "map_strict": _mean_or_none(ap_strict[strict_set]),
        "num_attributes_evaluable": int((evaluable & ~np.isnan(ap_paper)).sum()),
        "num_attributes_table5": int((table5 & ~np.isnan(ap_paper)).sum()),
        "num_attributes_strict": int(strict_set.sum()),
        "per_attribute": per_attribute,
    }


def _float_or_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def leave_one_run_out(features: np.ndarray, block_sizes: tuple[int, ...], labels: np.ndarray, runs: np.ndarray,
                      c_grid: tuple[float, ...], inner_folds: int = 2, threads: int = 1,
                      group_labels: np.ndarray | None = None,
                      on_fold_done: Callable[[], None] | None = None) -> CrossValidation:
    """Leave-one-run-out evaluation of one feature set, optionally with the hierarchical mode.

    Args:
        features: (N, D) float32 image features (any scale: standardised per fold).
        block_sizes: widths of the feature blocks (see ``svm.Standardizer``), summing to D.
        labels: (N, A) float 1 / 0 / NaN (unknown).
        runs: (N,) int run codes in [0, R); R ≥ 2.
        c_grid: C values of the inner search.
        inner_folds: GroupKFold splits of the training runs for choosing C.
        threads: attributes fitted at once.
        group_labels: (N,) float 1 / 0 / NaN; when given, also run the hierarchical mode: a first SVM
            predicts the group (e.g. SAXS vs WAXS) of each held-out image, then SVMs trained on the
            training images of that group score it.
        on_fold_done: called after each fold (progress bars).
    """
    start = time.perf_counter()
    labels = np.asarray(labels, dtype=np.float64)
    runs = np.asarray(runs, dtype=np.int64)
    num_runs = int(runs.max()) + 1
    if len(np.unique(runs)) < 2:
        raise ValueError(f"leave-one-run-out needs at least 2 runs. Received: runs={np.unique(runs).tolist()}")
    num_images, num_attributes = labels.shape
    hierarchical = group_labels is not None
    targets = labels if not hierarchical else np.column_stack([labels, group_labels])
    scores = np.full((num_images, num_attributes), np.nan)
    hier_scores = np.full((num_images, num_attributes), np.nan) if hierarchical else None
    chosen_c = np.full((num_runs, num_attributes), np.nan)
    c_measured = np.zeros((num_runs, num_attributes), dtype=bool)
    group_accuracy = np.full(num_runs, np.nan)
    group_majority = np.full(num_runs, np.nan)
    group_used = np.zeros(num_runs, dtype=bool)
    unconverged = 0
    for r in range(num_runs):
        test = np.flatnonzero(runs == r)
        train = np.flatnonzero(runs != r)
        if len(test) == 0:
            continue
        space = FoldSpace(features, block_sizes, train)
        selection = choose_c(space, train, targets, runs, c_grid, inner_folds, threads)
        design = space.design(train, test)
        models = fit_linear_svms(design.fit, targets[train], selection.c, threads)
        unconverged += int((~models.converged).sum())
        decision = models.decision(design.apply)
        scores[test] = decision[:, :num_attributes]
        chosen_c[r] = selection.c[:num_attributes]
        c_measured[r] = selection.measured[:num_attributes]
        if hierarchical:
            group_used[r], group_majority[r], majority = _trust_group_classifier(
                selection.inner_scores[:, -1], group_labels[train])
            if group_used[r]:
                predicted_group, accuracy = _predicted_group(decision[:, -1], models.constant[-1], group_labels[test])
            else:
                predicted_group, accuracy = _predicted_group(np.full(len(test), np.nan), float(majority),
                                                             group_labels[test])
            group_accuracy[r] = accuracy
            hier_scores[test] = _hierarchical_scores(design, labels[train], group_labels[train], predicted_group,
                                                     selection.c[:num_attributes], scores[test], threads)
        if on_fold_done is not None:
            on_fold_done()
    fold_ap, fold_status = fold_average_precision(scores, labels, runs, num_runs)
    result = CrossValidation(scores, fold_ap, fold_status, chosen_c, c_measured, unconverged,
                             group_accuracy=group_accuracy, group_majority=group_majority,
                             group_classifier_used=group_used)
    if hierarchical:
        h_ap, h_status = fold_average_precision(hier_scores, labels, runs, num_runs)
        result.hierarchical = CrossValidation(hier_scores, h_ap, h_status, chosen_c, c_measured)
    result.seconds = time.perf_counter() - start
    return result


def _trust_group_classifier(inner_scores: np.ndarray, train_groups: np.ndarray) -> tuple[bool, float, bool]:
    """Whether a fold's group SVM is worth using: its inner cross-validation accuracy (held-out runs of the
    fold's training images, ``choose_c``'s pooled held-out decision values) must beat always answering the
    training runs' more common group. Without that rule a group classifier on features that do not separate
    the groups does worse than the majority (measured: 41–48 % of held-out runs right where "always SAXS"
    gives 60 %), and every SVM of the wrong group then scores the image.

    Returns:
        (use the classifier, the majority rate, the majority group (True = label 1)).
    """
    known = ~np.isnan(train_groups)
    if not known.any():
        return False, float("nan"), True
    positive_rate = float(np.mean(train_groups[known] > 0.5))
    majority_rate = max(positive_rate, 1.0 - positive_rate)
    scored = known & ~np.isnan(inner_scores)
    if not scored.any():
        return False, majority_rate, positive_rate >= 0.5
    accuracy = float(np.mean((inner_scores[scored] > 0) == (train_groups[scored] > 0.5)))
    return accuracy > majority_rate, majority_rate, positive_rate >= 0.5


def _predicted_group(group_decision: np.ndarray, constant: float, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """Group-classifier decisions → (n,) bool predicted group, and accuracy on the known truths."""
    if np.isnan(group_decision).all():  # training held one group only: everything is that group
        predicted = np.full(len(group_decision), bool(constant > 0.5))
    else:
        predicted = group_decision > 0
    known = ~np.isnan(truth)
    accuracy = float(np.mean(predicted[known] == (truth[known] > 0.5))) if known.any() else float("nan")
    return predicted, accuracy


def _hierarchical_scores(design, train_labels: np.ndarray, train_groups: np.ndarray, predicted_group: np.ndarray,
                         c_values: np.ndarray, flat_scores: np.ndarray, threads: int) -> np.ndarray:
    """Scores of the held-out images from SVMs trained on the training images of their predicted group.

    Design rows of any subset of the fold's training images are exact (``svm.FoldSpace``), so the
    group models reuse the fold's Gram factor. Where a group's training images hold one class of an
    attribute, that attribute scores ±``_GROUP_CONSTANT_SCORE``; where they hold no known label, the
    flat SVM's score stands.
    """
    out = flat_scores.copy()
    for group in (False, True):
        members = np.flatnonzero(~np.isnan(train_groups) & ((train_groups > 0.5) == group))
        held_out = np.flatnonzero(predicted_group == group)
        if len(members) == 0 or len(held_out) == 0:
            continue
        models = fit_linear_svms(design.fit[members], train_labels[members], c_values, threads)
        decision = models.decision(design.apply[held_out])
        for a in range(train_labels.shape[1]):
            if models.trained[a]:
                out[held_out, a] = decision[:, a]
            elif not np.isnan(models.constant[a]):
                out[held_out, a] = _GROUP_CONSTANT_SCORE if models.constant[a] > 0.5 else -_GROUP_CONSTANT_SCORE
    return out
