"""Spatial-pyramid (SPM) features from the patch autoencoder's soft assignments.

For one image (Wang et al. 2017, §3.2, after Lazebnik et al. 2006):

1. at each scale s in ``scales`` the image is normalised and resized to s × s
   (``normalization.to_model_input``), and every P × P patch on a dense grid of
   stride ``stride`` px (top-left corners 0, stride, 2·stride, … ≤ s − P) is encoded
   to its soft assignment over the K = code_size clusters. The encoder runs fully
   convolutionally over the whole image (``autoencoder.model.encode_grid``), never
   in a loop over patches;
2. a patch belongs to the pyramid cell holding its centre: at a level of L × L cells,
   cell (row, col) = (⌊(y + P/2) · L / s⌋, ⌊(x + P/2) · L / s⌋), with (y, x) its corner;
3. each cell's K-bin histogram is the sum of its patches' soft assignments, over all scales
   (sum pooling: the paper counts how often each cluster occurs).

Normalisation: every histogram is divided by N, the number of patches of the image over
all scales. Each level's cells then sum to 1 (each soft assignment sums to 1 and each patch
falls in exactly one cell of a level), so a feature does not depend on the image size or
the number of scales, and the whole vector sums to the number of levels.

Layout (levels (1, 2, 4) → 21 cells): cells are numbered level by level, row-major within
a level — cell 0 is the whole image, cells 1–4 the 2 × 2 grid, cells 5–20 the 4 × 4 grid —
and feature index = cell · K + cluster. So 21 × 1024 = 21,504 values for K = 1024.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xrayscatter.autoencoder.model import encode_grid
from xrayscatter.normalization import to_model_input

SPM_NORMALIZATION_DESCRIPTION = (
    "each pyramid cell holds the sum of the soft assignments (softmax of the code, sums to 1 per patch) "
    "of the patches whose centre lies in it, over all scales, divided by the image's number of patches "
    "over all scales; each pyramid level therefore sums to 1"
)


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per side of the dense grid on an image_size × image_size image."""
    return (image_size - patch_size) // stride + 1


def patch_cells(image_size: int, patch_size: int, stride: int, cells_per_side: int) -> np.ndarray:
    """Cell (along one axis) of each grid position: (G,) int, ⌊(i·stride + P/2) · L / s⌋."""
    centres = np.arange(grid_size(image_size, patch_size, stride)) * stride + patch_size // 2
    return centres * cells_per_side // image_size


def cell_matrix(image_size: int, patch_size: int, stride: int, cells_per_side: int) -> np.ndarray:
    """One-hot (G, L) float32: row i marks the cell of grid position i along one axis."""
    cells = patch_cells(image_size, patch_size, stride, cells_per_side)
    return np.eye(cells_per_side, dtype=np.float32)[cells]


def spm_layout(levels, code_size: int) -> list[dict]:
    """Where each level lives in the feature vector (travels inside the SavedModel)."""
    layout, first = [], 0
    for cells_per_side in levels:
        count = cells_per_side * cells_per_side
        layout.append({"cells_per_side": int(cells_per_side), "first_cell": first, "num_cells": count,
                       "first_feature": first * code_size, "num_features": count * code_size,
                       "cell_order": "row-major"})
        first += count
    return layout


def num_cells(levels) -> int:
    """Cells of the pyramid: 21 for levels (1, 2, 4)."""
    return sum(n * n for n in levels)


def spm_features(encoder, counts: tf.Tensor, scales, stride: int, levels) -> tf.Tensor:
    """Raw detector counts (B, H, W) → SPM features (B, num_cells(levels) · K) float32.

    Args:
        encoder: the autoencoder's encoder (``autoencoder.model.build_encoder``).
        counts: (B, H, W) raw counts, any real dtype; missing pixels negative or NaN.
        scales: square sizes (px) the image is resized to, each ≥ P.
        stride: dense grid stride (px), a multiple of P / 4.
        levels: cells per side of each pyramid level, e.g. (1, 2, 4).
    """
    patch_size = encoder.input_shape[1]
    total_patches = sum(grid_size(s, patch_size, stride) ** 2 for s in scales)
    pooled = [0.0] * len(levels)
    for size in scales:  # a handful of scales; the patches of one scale are one convolution pass
        assignments = encode_grid(encoder, to_model_input(counts, size), stride)  # (B, G, G, K)
        for n, cells_per_side in enumerate(levels):
            cells = tf.constant(cell_matrix(size, patch_size, stride, cells_per_side))  # (G, L)
            pooled[n] += tf.einsum("bijk,ip,jq->bpqk", assignments, cells, cells)  # (B, L, L, K)
    batch = tf.shape(counts)[0]
    code_size = encoder.output_shape[-1]
    per_cell = [tf.reshape(p, (batch, n * n, code_size)) for p, n in zip(pooled, levels)]
    features = tf.concat(per_cell, axis=1) / float(total_patches)  # (B, cells, K)
    return tf.reshape(features, (batch, num_cells(levels) * code_size))

