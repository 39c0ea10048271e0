"""Spatial-pyramid features: the fully convolutional path equals an explicit loop over patches and cells."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.models.autoencoder import build_encoder, encode_grid, encode_patches
from xrayscatter.normalization import to_model_input
from xrayscatter.spm import cell_matrix, num_cells, patch_cells, spm_features, spm_layout

PATCH = 32


def peaked_encoder(code_size: int = 16, base_filters: int = 4, seed: int = 0) -> keras.Model:
    """A random encoder whose code logits are large, so the softmax is far from uniform
    (a uniform assignment would make every pooling rule look right)."""
    keras.utils.set_random_seed(seed)
    encoder = build_encoder(PATCH, code_size, base_filters)
    head = encoder.get_layer("code_logits")
    head.kernel.assign(head.kernel * 40.0)
    return encoder


def detector_counts(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Raw counts over four decades with a ring, a Pilatus-style gap (−1) and a NaN pixel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    out = []
    for _ in range(batch):
        r = np.hypot(yy - rng.uniform(0, height), xx - rng.uniform(0, width))
        image = 5e3 * np.exp(-r / 9) + 800 * np.exp(-((r - rng.uniform(15, 30)) / 2.5) ** 2)
        image = rng.poisson(image + 3).astype(np.float32)
        image[:, width // 3] = -1
        image[2, 3] = np.nan
        out.append(image)
    return np.stack(out)


def slow_reference_spm(encoder, counts: np.ndarray, scales, stride: int, levels) -> np.ndarray:
    """The SPM feature by definition: a Python loop over every patch and every pyramid cell.

    Only the resize (``to_model_input``) and the per-patch encoder are shared with the
    library; grid positions, patch cutting, softmax, cell membership, sum pooling,
    normalisation and layout are written out here in numpy.
    """
    code_size = encoder.output_shape[-1]
    batch = counts.shape[0]
    features = np.zeros((batch, sum(n * n for n in levels), code_size), np.float64)
    total = 0
    for size in scales:
        image = to_model_input(tf.constant(counts), size).numpy()[..., 0]  # (B, s, s)
        for top in range(0, size - PATCH + 1, stride):
            for left in range(0, size - PATCH + 1, stride):
                patch = image[:, top:top + PATCH, left:left + PATCH, None]
                logits = encoder(patch).numpy().astype(np.float64)
                soft = np.exp(logits - logits.max(axis=1, keepdims=True))
                soft /= soft.sum(axis=1, keepdims=True)
                total += 1
                centre_y, centre_x = top + PATCH / 2, left + PATCH / 2
                first_cell = 0
                for cells in levels:
                    for row in range(cells):
                        for col in range(cells):
                            inside_y = row * size / cells <= centre_y < (row + 1) * size / cells
                            inside_x = col * size / cells <= centre_x < (col + 1) * size / cells
                            if inside_y and inside_x:
                                features[:, first_cell + row * cells + col] += soft
                    first_cell += cells * cells
    return (features / total).reshape(batch, -1)


def test_spm_features_equal_slow_reference_loop():
    encoder = peaked_encoder()
    counts = detector_counts(2, 70, 90)  # not square: padded to 90 × 90 first
    scales, stride, levels = (64, 96), 16, (1, 2, 4)
    fast = spm_features(encoder, tf.constant(counts), scales, stride, levels).numpy()
    slow = slow_reference_spm(encoder, counts, scales, stride, levels)
    assert fast.shape == (2, 21 * 16)
    np.testing.assert_allclose(fast, slow, atol=2e-6)
    assert np.abs(fast[0] - fast[1]).max() > 1e-3  # different images, different features


def test_each_pyramid_level_sums_to_one():
    encoder = peaked_encoder(code_size=8)
    features = spm_features(encoder, tf.constant(detector_counts(3, 80, 80)), (64, 128), 8, (1, 2, 4)).numpy()
    per_cell = features.reshape(3, 21, 8).sum(axis=2)
    for layout in spm_layout((1, 2, 4), 8):
        level = per_cell[:, layout["first_cell"]:layout["first_cell"] + layout["num_cells"]].sum(axis=1)
        np.testing.assert_allclose(level, 1.0, atol=1e-5)
    np.testing.assert_allclose(features.sum(axis=1), 3.0, atol=1e-4)


def test_dense_grid_encoding_equals_encoding_each_patch():
    encoder = peaked_encoder()
    image = np.random.default_rng(1).random((1, 96, 96, 1)).astype(np.float32)
    grid = encode_grid(encoder, tf.constant(image), stride=24).numpy()  # a multiple of the encoder stride 8
    assert grid.shape == (1, 3, 3, 16)
    for i in range(3):
        for j in range(3):
            patch = image[:, 24 * i:24 * i + PATCH, 24 * j:24 * j + PATCH, 0]
            np.testing.assert_allclose(grid[:, i, j], encode_patches(encoder, tf.constant(patch)).numpy(), atol=1e-6)


def test_patches_belong_to_the_cell_of_their_centre():
    # 64 px, stride 16: corners 0, 16, 32 → centres 16, 32, 48 → halves 0, 1, 1 and quarters 1, 2, 3
    assert patch_cells(64, PATCH, 16, 2).tolist() == [0, 1, 1]
    assert patch_cells(64, PATCH, 16, 4).tolist() == [1, 2, 3]
    assert cell_matrix(64, PATCH, 16, 1).tolist() == [[1.0], [1.0], [1.0]]


def test_layout_of_the_three_level_pyramid():
    layout = spm_layout((1, 2, 4), 1024)
    assert num_cells((1, 2, 4)) == 21
    assert [(l["first_cell"], l["num_cells"]) for l in layout] == [(0, 1), (1, 4), (5, 16)]
    assert layout[-1]["first_feature"] + layout[-1]["num_features"] == 21_504


def test_stride_not_a_multiple_of_the_encoder_stride_is_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_grid(peaked_encoder(), tf.zeros((1, 64, 64, 1)), stride=12)
