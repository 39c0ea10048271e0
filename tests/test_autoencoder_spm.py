"""Spatial-pyramid features: the fully convolutional path equals an explicit loop over patches and cells."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import detector_counts, peaked_encoder, slow_reference_spm
from xrayscatter.autoencoder.model import encode_grid, encode_patches
from xrayscatter.autoencoder.spm import cell_matrix, num_cells, patch_cells, spm_features, spm_layout

PATCH = 32


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
