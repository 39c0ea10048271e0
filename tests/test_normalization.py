"""The one in-graph normalisation: log-scaled counts, missing pixels, padding to a square, resizing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.normalization import LOG_COUNT_SCALE, normalize_counts, pad_to_square, to_model_input


def test_sixteen_bit_range_maps_to_zero_one_and_larger_counts_go_above():
    counts = tf.constant([0.0, 1.0, 65535.0, 4_000_000.0])
    x = normalize_counts(counts).numpy()
    assert x[0] == 0.0 and x[2] == pytest.approx(1.0)
    assert x[1] == pytest.approx(math.log(2) / math.log(65536))
    assert x[3] > 1.0  # 32-bit Pilatus counts: nothing is clipped
    assert LOG_COUNT_SCALE == pytest.approx(math.log1p(65535))


def test_negative_nan_and_infinite_pixels_are_missing():
    counts = tf.constant([-1.0, -2.0, np.nan, np.inf, -np.inf, 5.0])
    x = normalize_counts(counts).numpy()
    np.testing.assert_array_equal(x[:5], 0.0)
    assert x[5] == pytest.approx(math.log1p(5) / math.log1p(65535))


def test_any_integer_dtype_gives_float32():
    for dtype in (np.uint16, np.int32, np.uint32, np.float64):
        x = normalize_counts(tf.constant(np.array([[3, 7]], dtype=dtype)))
        assert x.dtype == tf.float32
        np.testing.assert_allclose(x.numpy(), np.log1p([[3, 7]]) / math.log1p(65535), rtol=1e-6)


def test_pad_to_square_centres_the_image_and_pads_with_zero():
    images = tf.ones((2, 3, 7, 1))
    padded = pad_to_square(images).numpy()
    assert padded.shape == (2, 7, 7, 1)
    np.testing.assert_array_equal(padded[:, 2:5], 1.0)  # (7 − 3) // 2 = 2 rows above
    np.testing.assert_array_equal(padded[:, :2], 0.0)
    np.testing.assert_array_equal(padded[:, 5:], 0.0)
    assert pad_to_square(tf.ones((1, 4, 4, 1))).shape == (1, 4, 4, 1)


def test_model_input_keeps_rings_circular_and_averages_when_shrinking():
    yy, xx = np.mgrid[:40, :80]
    ring = np.where(np.abs(np.hypot(yy - 20, xx - 40) - 10) < 1.5, 60000.0, 0.0).astype(np.float32)
    x = to_model_input(tf.constant(ring[None]), 40).numpy()[0, :, :, 0]
    assert x.shape == (40, 40)
    # padded to 80 × 80 then halved: the ring (radius 10 → 5 px) is centred and round
    yy, xx = np.mgrid[:40, :40]
    radius = np.hypot(yy - 19.5, xx - 19.5)
    inside, on, outside = x[radius < 3].mean(), x[np.abs(radius - 5) < 1].mean(), x[radius > 8].mean()
    assert on > 4 * max(inside, outside)
    # Antialiased: a one-pixel checkerboard shrunk by two averages to its mean, not to one of its values.
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 65535.0).astype(np.float32)
    small = to_model_input(tf.constant(checker[None]), 32).numpy()
    np.testing.assert_allclose(small, 0.5, atol=0.02)
