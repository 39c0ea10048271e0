"""One-vs-all linear SVMs (scikit-learn ``LinearSVC``, i.e. LIBLINEAR) on standardised features.

Preprocessing, fitted on the training rows only:

    x̃_j = (x_j − mean_j) / std_j · g_b,   g_b = 1 / sqrt(d_b) for feature j in block b of d_b dims

so every block (the ResNet's 2048·w dims, the autoencoder's 21·code dims) contributes the same
total variance whatever its width, and an image's x̃ has squared norm ≈ the number of blocks:
C then means the same for every feature set.

The Gram-matrix shortcut (exact, not an approximation). An L2-regularised linear SVM's weight
vector lies in the span of its training vectors, and its dual problem and decision values need
only inner products. With n training images of D ≫ n dims we therefore factor the training
Gram matrix K_ff = X̃_f X̃_fᵀ = L Lᵀ (Cholesky) and train the *same* LinearSVC on the rows of
L (n × n) instead of X̃_f (n × D); an image x̃ enters as K(x̃, X̃_f) L⁻ᵀ. Decision values agree to
solver tolerance (checked in tests/test_evaluation.py), LIBLINEAR's intercept column included,
and one Gram matrix per fold serves every attribute, every C and every inner split.
On XMD's size (2,832 images × 23,552 dims) that turns 1.1 GB-per-fit problems into 2,832² ones.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GroupKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

# LIBLINEAR's own default stopping tolerance for its dual solvers (``-e 0.1``); scikit-learn's 1e-4
# costs 2-3× the iterations and moved no AP in the third decimal on XMD-sized problems.
LIBLINEAR_TOLERANCE = 0.1
LIBLINEAR_MAX_ITER = 2000
_GRAM_CHUNK = 4096  # feature columns standardised and multiplied at a time (bounds float64 copies)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map ``x̃ = (x − mean) · scale`` with ``scale = g_b / std``.

    Attributes:
        mean: (D,) float64, the training rows' mean.
        scale: (D,) float64, block weight over the training rows' standard deviation
            (a constant feature gets scale 0: it carries no information).
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray, block_sizes: tuple[int, ...]) -> "Standardizer":
        """Fit on ``features[rows]``; ``block_sizes`` must sum to ``features.shape[1]``."""
        if sum(block_sizes) != features.shape[1]:
            raise ValueError(f"block_sizes must sum to the feature width. Received: block_sizes={block_sizes}, "
                             f"features.shape={features.shape}")
        mean = np.zeros(features.shape[1])
        var = np.zeros(features.shape[1])
        for start in range(0, features.shape[1], _GRAM_CHUNK):
            chunk = features[rows, start:start + _GRAM_CHUNK].astype(np.float64)
            mean[start:start + chunk.shape[1]] = chunk.mean(axis=0)
            var[start:start + chunk.shape[1]] = chunk.var(axis=0)
        std = np.sqrt(var)
        weights = np.concatenate([np.full(d, 1.0 / np.sqrt(d)) for d in block_sizes])
        scale = np.divide(weights, std, out=np.zeros_like(std), where=std > 1e-12 * (1.0 + np.abs(mean)))
        return cls(mean=mean, scale=scale)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(n, D) any float → (n, D) float64 standardised and block-weighted."""
        return (features.astype(np.float64) - self.mean) * self.scale


@dataclass(frozen=True)
class Design:
    """Matrices to train LinearSVC on (``fit``) and to score (``apply``), in one shared basis.

    Attributes:
        fit: (n_fit, r) float64, training rows.
        apply: (n_apply, r) float64, rows to score.
        fit_rows, apply_rows: (n_fit,), (n_apply,) int64 image indices.
        cholesky: (n_fit, n_fit) lower-triangular factor when the Gram shortcut is used, else None.
    """

    fit: np.ndarray
    apply: np.ndarray
    fit_rows: np.ndarray
    apply_rows: np.ndarray
    cholesky: np.ndarray | None


class FoldSpace:
    """Every image's features under one scaler (fitted on ``scaler_rows``), ready for exact fits.

    Any subset of ``scaler_rows`` can then be a training set (the outer fold, its inner splits,
    per-group subsets of the hierarchical mode) without refitting the scaler or recomputing
    the Gram matrix.

    Args:
        features: (N, D) float32/float64 image features.
        block_sizes: widths of the concatenated blocks, summing to D.
        scaler_rows: (n,) int indices the scaler is fitted on (the fold's training images).
    """

    def __init__(self, features: np.ndarray, block_sizes: tuple[int, ...], scaler_rows: np.ndarray):
        self.features = features
        self.standardizer = Standardizer.fit(features, scaler_rows, block_sizes)
        num_images, dims = features.shape
        # The shortcut pays when a training set has fewer images than dims.
        self.uses_gram = dims > len(scaler_rows)
        if self.uses_gram:
            self.gram = np.zeros((num_images, num_images))
            all_rows = slice(None)
            for start in range(0, dims, _GRAM_CHUNK):
                # float32 products of one chunk (single-precision BLAS is twice as fast), summed in
                # float64 across chunks: relative error ~1e-6, far below LIBLINEAR's tolerance.
                block = self._standardized_columns(all_rows, start, np.float32)
                self.gram += block @ block.T
            self.standardized = None
        else:
            self.gram = None
            self.standardized = self.standardizer.transform(features)

    def _standardized_columns(self, rows: np.ndarray | slice, start: int, dtype=np.float64) -> np.ndarray:
        """Standardised values of ``rows`` for columns [start, start + chunk), in ``dtype``."""
        stop = start + _GRAM_CHUNK
        chunk = self.features[rows, start:stop].astype(dtype)
        return (chunk - self.standardizer.mean[start:stop].astype(dtype)) * self.standardizer.scale[
            start:stop].astype(dtype)

    def design(self, fit_rows: np.ndarray, apply_rows: np.ndarray) -> Design:
        """Training matrix for ``fit_rows`` and scoring matrix for ``apply_rows``."""
        fit_rows = np.asarray(fit_rows, dtype=np.int64)
        apply_rows = np.asarray(apply_rows, dtype=np.int64)
        if not self.uses_gram:
            return Design(self.standardized[fit_rows], self.standardized[apply_rows], fit_rows, apply_rows, None)
        gram_ff = self.gram[np.ix_(fit_rows, fit_rows)]
        chol = _cholesky_with_jitter(gram_ff)
        # Z_apply = K_af L⁻ᵀ, so that Z_apply Z_fitᵀ = K_af exactly.
        cross = self.gram[np.ix_(fit_rows, apply_rows)]
        apply = scipy.linalg.solve_triangular(chol, cross, lower=True, check_finite=False).T
        return Design(chol, np.ascontiguousarray(apply), fit_rows, apply_rows, chol)

    def primal_weights(self, design: Design, coef: np.ndarray) -> np.ndarray:
        """Weights in the standardised feature space: (A, r) design coefficients → (A, D) float64.

        Scores satisfy ``x̃ · w + b == design-row · coef + b`` for every image.
        """
        if design.cholesky is None:
            return np.asarray(coef, dtype=np.float64)
        # w = X̃_fᵀ L⁻ᵀ c
        solved = scipy.linalg.solve_triangular(design.cholesky, np.asarray(coef).T, lower=True, trans="T",
                                               check_finite=False)  # (n_fit, A)
        weights = np.zeros((coef.shape[0], self.features.shape[1]))
        for start in range(0, self.features.shape[1], _GRAM_CHUNK):
            block = self._standardized_columns(design.fit_rows, start)
            weights[:, start:start + block.shape[1]] = solved.T @ block
        return weights


def _cholesky_with_jitter(gram: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a PSD Gram matrix, adding the smallest ridge that makes it PD.

    Identical images (or fewer independent dims than images) make K singular; a ridge of
    1e-10 · mean(diag K) changes decision values far below the solver tolerance.
    """
    scale = max(float(np.mean(np.diag(gram))), 1e-300)
    for relative in (1e-10, 1e-8, 1e-6, 1e-4):
        try:
            return scipy.linalg.cholesky(gram + relative * scale * np.eye(len(gram)), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Gram matrix is not positive semi-definite even with a 1e-4 ridge")


@dataclass(frozen=True)
class LinearModels:
    """One linear SVM per label column, in a design's basis.

    Attributes:
        coef: (A, r) float64; rows of untrained attributes are 0.
        intercept: (A,) float64.
        trained: (A,) bool, False where the training rows held one class only.
        constant: (A,) float64, for untrained attributes the training rows' only class (1 or 0), else NaN.
        converged: (A,) bool, False where LIBLINEAR hit its iteration cap.
    """

    coef: np.ndarray
    intercept: np.ndarray
    trained: np.ndarray
    constant: np.ndarray
    converged: np.ndarray

    def decision(self, rows: np.ndarray) -> np.ndarray:
        """(n, r) design rows → (n, A) float64 decision values; NaN for untrained attributes."""
        scores = rows @ self.coef.T + self.intercept
        scores[:, ~self.trained] = np.nan
        return scores


def fit_linear_svms(train: np.ndarray, labels: np.ndarray, c_values: np.ndarray, threads: int = 1) -> LinearModels:
    """Fit one LinearSVC per label column.

    Args:
        train: (n, r) float64 design rows.
        labels: (n, A) float, 1 / 0 / NaN (unknown: that row is left out for that attribute).
        c_values: (A,) float, C per attribute.
        threads: attributes fitted at once (LIBLINEAR releases the GIL while it trains).
    """
    num_attributes = labels.shape[1]
    coef = np.zeros((num_attributes, train.shape[1]))
    intercept = np.zeros(num_attributes)
    trained = np.zeros(num_attributes, dtype=bool)
    constant = np.full(num_attributes, np.nan)
    converged = np.ones(num_attributes, dtype=bool)

    def fit_one(a: int) -> None:
        known = ~np.isnan(labels[:, a])
        y = labels[known, a]
        if y.size == 0:
            return
        if y.min() == y.max():
            constant[a] = y[0]
            return
        rows = train if known.all() else train[known]
        model = LinearSVC(C=float(c_values[a]), dual="auto", tol=LIBLINEAR_TOLERANCE, max_iter=LIBLINEAR_MAX_ITER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(rows, (y > 0.5).astype(np.int32))
        converged[a] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        coef[a] = model.coef_[0]
        intercept[a] = model.intercept_[0]
        trained[a] = True

    if threads > 1 and num_attributes > 1:
        # The fits are the parallelism: BLAS/OpenMP threads inside them would oversubscribe the cores.
        with threadpool_limits(1), ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fit_one, range(num_attributes)))
    else:
        for a in range(num_attributes):
            fit_one(a)
    return LinearModels(coef, intercept, trained, constant, converged)


@dataclass(frozen=True)
class CSelection:
    """C chosen per attribute by inner validation on the training runs only.

    Attributes:
        c: (A,) float, the chosen C (``default_c`` where the inner splits could not measure AP).
        inner_ap: (len(c_grid), A) float, pooled AP of the inner held-out scores per C (NaN: not measurable).
        inner_scores: (n_fit, A) float, held-out decision values at the chosen C (NaN where none).
        measured: (A,) bool, whether C came from measured AP.
    """

    c: np.ndarray
    inner_ap: np.ndarray
    inner_scores: np.ndarray
    measured: np.ndarray


def choose_c(space: FoldSpace, fit_rows: np.ndarray, labels: np.ndarray, runs: np.ndarray,
             c_grid: tuple[float, ...], inner_folds: int, threads: int = 1) -> CSelection:
    """Inner GroupKFold over the runs of ``fit_rows``: the test run is never among them.

    Every C of the grid is trained on the inner-training runs and scored on the inner held-out
    runs; the held-out scores of all inner splits are pooled and the C with the best AP wins
    (ties: the smaller C, i.e. the stronger regularisation). An attribute whose pooled held-out
    labels hold one class only keeps the grid's middle value.

    Args:
        space: the fold's FoldSpace (scaler fitted on the fold's training images).
        fit_rows: (n,) image indices of the fold's training images.
        labels: (N, A) float labels of all images, NaN unknown.
        runs: (N,) run codes of all images.
    """
    grid = np.array(sorted(c_grid), dtype=np.float64)
    num_attributes = labels.shape[1]
    default_c = float(grid[(len(grid) - 1) // 2])
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    fit_runs = runs[fit_rows]
    splits = min(inner_folds, len(np.unique(fit_runs)))
    held_out = np.full((len(grid), len(fit_rows), num_attributes), np.nan)
    if splits >= 2:
        for inner_train, inner_val in GroupKFold(n_splits=splits).split(fit_rows, groups=fit_runs):
            design = space.design(fit_rows[inner_train], fit_rows[inner_val])
            for i, c in enumerate(grid):
                models = fit_linear_svms(design.fit, labels[fit_rows[inner_train]],
                                         np.full(num_attributes, c), threads)
                held_out[i][inner_val] = models.decision(design.apply)
    inner_ap = np.full((len(grid), num_attributes), np.nan)
    fit_labels = labels[fit_rows]
    for a in range(num_attributes):
        for i in range(len(grid)):
            ok = ~np.isnan(fit_labels[:, a]) & ~np.isnan(held_out[i, :, a])
            y = fit_labels[ok, a]
            if y.size and 0 < y.sum() < y.size:
                inner_ap[i, a] = average_precision_score(y > 0.5, held_out[i, ok, a])
    measured = ~np.all(np.isnan(inner_ap), axis=0)
    best = np.full(num_attributes, (len(grid) - 1) // 2)
    best[measured] = np.nanargmax(inner_ap[:, measured], axis=0)  # first maximum = smallest C
    chosen = grid[best]
    chosen[~measured] = default_c
    inner_scores = held_out[best, :, np.arange(num_attributes)].T
    return CSelection(chosen, inner_ap, inner_scores, measured)

