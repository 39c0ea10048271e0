"""Scores against labels, one rule each: hold-out average precision and best-F1 decision thresholds.

Both take ``(labels, scores)`` in that order (scikit-learn's ``y_true, y_score``), each (N, A) with
one column per attribute; labels are 1, 0 or NaN (unknown: that image is left out for that attribute).

Hold-out AP rule: an attribute's AP is measured only when its known test labels hold both classes.
With only positives (AP would be 1 whatever the ranking) or only negatives (AP undefined) it has no
AP (NaN, reported as ``None``) and is left out of the mAP. The ResNet's hold-out report after training
and the evaluation's "ResNet's own outputs on the test split" use this one rule. (The
leave-one-run-out protocol of ``evaluation/protocol.py`` is another matter: it follows the paper's
conventions per fold, written in every report.)
"""

from __future__ import annotations

import numpy as np

HOLDOUT_AP_RULE = ("AP per attribute over the test images with a known label, measured only when those hold both "
                   "positives and negatives (otherwise no AP; left out of the mAP)")


def _known(labels: np.ndarray, scores: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Column ``a``'s labels (bool) and scores where both are known."""
    ok = ~np.isnan(labels[:, a]) & ~np.isnan(scores[:, a])
    return labels[ok, a] > 0.5, scores[ok, a]


def average_precisions(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, A) labels, (N, A) scores → (A,) float64 average precision; NaN where not measurable (module docstring)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    out = np.full(labels.shape[1], np.nan)
    for a in range(labels.shape[1]):
        y, s = _known(labels, scores, a)
        if 0 < y.sum() < y.size:
            out[a] = average_precision_score(y, s)
    return out


def mean_average_precision(ap: np.ndarray) -> float | None:
    """Mean of the measured APs, None when there is none."""
    measured = ap[np.isfinite(ap)]
    return float(measured.mean()) if measured.size else None


def best_f1_thresholds(labels: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per attribute, the decision threshold maximising F1 on these scores (``decision = score >= threshold``).

    Cuts are only made between distinct scores, midway to the next lower score so that the chosen
    positives stay positive under small shifts (the lowest score itself when every image is kept).
    Among equal F1 the highest threshold wins.

    Args:
        labels: (N, A) 1 / 0 / NaN.
        scores: (N, A) scores (probabilities, SVM decision values ...; NaN: none).
        default: the threshold where the data cannot choose one (no positive or no negative known):
            0.5 for probabilities, 0 (the margin) for SVM decision values.

    Returns:
        (A,) float64 thresholds.
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    thresholds = np.full(labels.shape[1], float(default))
    for a in range(labels.shape[1]):
        y, s = _known(labels, scores, a)
        if y.sum() == 0 or y.sum() == y.size:
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted, y_sorted = s[order], y[order]
        true_pos = np.cumsum(y_sorted)
        predicted = np.arange(1, len(s_sorted) + 1)
        f1 = 2 * true_pos / (predicted + y.sum())
        last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        f1[~last_of_tie] = -1
        k = int(np.argmax(f1))
        thresholds[a] = s_sorted[k] if k + 1 == len(s_sorted) else 0.5 * (s_sorted[k] + s_sorted[k + 1])
    return thresholds


THRESHOLD_PRECISION = 0.8
THRESHOLD_FLOOR = 0.3


def precision_thresholds(labels: np.ndarray, scores: np.ndarray, precision: float = THRESHOLD_PRECISION,
                         floor: float = THRESHOLD_FLOOR, default: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """Per attribute, a decision threshold that means something: the lowest cut at or above ``floor``
    whose precision on these labels reaches ``precision`` (the most recall at that precision); where
    no cut reaches it, the best-F1 cut at or above ``floor``; where the data cannot choose (one class
    only, or no score at or above ``floor``), ``default`` (raised to ``floor`` if below it: no threshold
    is ever below the floor).

    A weak classifier's best F1 sits at "say yes to almost everything" (thresholds of 0.1); asking for
    a precision first, and never switching an attribute on below ``floor``, keeps a tag a statement
    a user can act on. Cuts fall midway between distinct scores, as in :func:`best_f1_thresholds`.

    Args:
        labels: (N, A) 1 / 0 / NaN; scores: (N, A) probabilities.

    Returns:
        (A,) float64 thresholds and, per attribute, which rule chose it
        (``"precision"``, ``"best F1"`` or ``"default"``).
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    thresholds = np.full(labels.shape[1], max(float(default), float(floor)))
    rules = ["default"] * labels.shape[1]
    for a in range(labels.shape[1]):
        y, s = _known(labels, scores, a)
        if y.sum() == 0 or y.sum() == y.size:
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted, y_sorted = s[order], y[order]
        last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        cuts = np.where(np.arange(len(s_sorted)) + 1 == len(s_sorted), s_sorted,
                        0.5 * (s_sorted + np.r_[s_sorted[1:], s_sorted[-1]]))
        usable = last_of_tie & (s_sorted >= floor)
        if not usable.any():
            continue
        true_pos = np.cumsum(y_sorted)
        kept = np.arange(1, len(s_sorted) + 1)
        cut_precision = true_pos / kept
        f1 = 2 * true_pos / (kept + y.sum())
        precise = usable & (cut_precision >= precision)
        if precise.any():
            k = int(np.flatnonzero(precise)[-1])  # the lowest such cut: most recall
            rules[a] = "precision"
        else:
            k = int(np.argmax(np.where(usable, f1, -1)))
            rules[a] = "best F1"
        thresholds[a] = max(float(cuts[k]), floor)  # the same images decided, never below the floor
    return thresholds, rules


def precision_recall_at(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A,) precision and recall of ``scores >= thresholds`` on known labels (NaN where undefined)."""
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    precision = np.full(labels.shape[1], np.nan)
    recall = np.full(labels.shape[1], np.nan)
    for a in range(labels.shape[1]):
        y, s = _known(labels, scores, a)
        decided = s >= thresholds[a]
        if decided.any():
            precision[a] = float(y[decided].mean())
        if y.any():
            recall[a] = float(decided[y].mean())
    return precision, recall
