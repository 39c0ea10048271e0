"""One-vs-all linear SVMs: the exact Gram route, the block-weighted standardisation, one-class attributes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from helpers import svm_problem
from xrayscatter.evaluation import svm
from xrayscatter.metrics import best_f1_thresholds


def test_gram_route_gives_the_decision_values_of_linearsvc_on_raw_rows(monkeypatch):
    monkeypatch.setattr(svm, "LIBLINEAR_TOLERANCE", 1e-9)
    monkeypatch.setattr(svm, "LIBLINEAR_MAX_ITER", 100_000)
    features, labels, run = svm_problem()
    train, test = np.flatnonzero(run != 2), np.flatnonzero(run == 2)
    space = svm.FoldSpace(features, (300, 200), train)
    assert space.uses_gram  # 500 dims > 100 training images
    design = space.design(train, test)
    models = svm.fit_linear_svms(design.fit, labels[train], np.array([0.1, 1.0, 10.0]))
    standardized = space.standardizer.transform(features)
    for a, c in enumerate([0.1, 1.0, 10.0]):
        reference = LinearSVC(C=c, tol=1e-9, max_iter=100_000).fit(standardized[train], labels[train, a])
        expected = reference.decision_function(standardized[test])
        np.testing.assert_allclose(models.decision(design.apply)[:, a], expected, atol=1e-4 * np.abs(expected).max())
    # the primal weights reproduce the design's scores for any image
    weights = space.primal_weights(design, models.coef)
    scores = models.decision(design.apply)
    np.testing.assert_allclose(standardized[test] @ weights.T + models.intercept, scores,
                               atol=1e-4 * np.abs(scores).max())  # the Gram matrix is summed from float32 products


def test_standardizer_gives_each_block_unit_total_variance():
    features, _, _ = svm_problem(dims=50)
    rows = np.arange(60)
    standardizer = svm.Standardizer.fit(features, rows, (10, 40))
    z = standardizer.transform(features[rows])
    assert z[:, :10].var(axis=0).sum() == pytest.approx(1.0)
    assert z[:, 10:].var(axis=0).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)


def test_attribute_with_one_class_in_training_is_not_trained():
    features, labels, run = svm_problem(dims=20)
    labels[:, 1] = 0.0
    labels[:5, 2] = np.nan
    space = svm.FoldSpace(features, (20,), np.arange(len(features)))
    design = space.design(np.arange(100), np.arange(100, 120))
    models = svm.fit_linear_svms(design.fit, labels[:100], np.ones(3))
    assert models.trained.tolist() == [True, False, True]
    assert models.constant[1] == 0.0
    assert np.isnan(models.decision(design.apply)[:, 1]).all()


def test_svm_thresholds_use_the_one_best_f1_rule():
    scores = np.array([[3.0], [2.0], [1.0], [-1.0], [-2.0]])
    labels = np.array([[1.0], [1.0], [1.0], [0.0], [0.0]])
    threshold = best_f1_thresholds(labels, scores, default=0.0)[0]
    assert threshold == pytest.approx(0.0)  # midway between the lowest positive (1) and the highest negative (−1)
