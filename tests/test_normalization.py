"""The one in-graph normalisation: log-scaled counts, missing pixels, padding to a square, resizing, input channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import detector_counts
from xrayscatter.config import INPUT_CHANNELS
from xrayscatter.normalization import (CONTRAST_PERCENTILES, LOG_COUNT_SCALE, model_input, normalize_counts,
                                       pad_to_square, to_model_input)


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


# --------------------------------------------------------------------------- input channels
def _channels(counts, size, channels):
    return model_input(tf.constant(counts, tf.float32), size, channels).numpy()


def test_log_channel_is_the_first_models_input():
    counts = detector_counts(2, 41, 57)  # not square, a −1 module gap, a NaN pixel
    for size in (16, 57, 90):  # shrinking, the padded square's own size, growing
        np.testing.assert_allclose(_channels(counts, size, ("log",)), to_model_input(tf.constant(counts), size).numpy(),
                                   atol=1e-6, err_msg=str(size))
    both = _channels(counts, 16, ("valid", "log"))
    assert both.shape == (2, 16, 16, 2)
    np.testing.assert_allclose(both[..., 1:], _channels(counts, 16, ("log",)), atol=1e-7)  # the order asked for


def test_filled_replaces_a_gap_by_its_neighbours_and_valid_says_how_much_was_measured():
    counts = np.full((1, 64, 64), 1000.0, np.float32)
    counts[0, :, 31] = -1.0  # a one-pixel module gap (Pilatus marks it −1)
    counts[0, :, 48:] = np.nan  # a region with nothing measured (wider than the resize kernel)
    log, filled, valid = np.moveaxis(_channels(counts, 32, ("log", "filled", "valid")), -1, 0)
    level = math.log1p(1000.0) / LOG_COUNT_SCALE
    gap = valid[0, :, 15] < 0.95  # the columns the gap was averaged into
    assert gap.any() and (valid[0, :, 15] > 0.05).all()
    assert (log[0][:, 15] < 0.9 * level).all()  # the log channel darkens the gap ...
    np.testing.assert_allclose(filled[0, :, :23], level, rtol=1e-5)  # ... filled carries its neighbours' level
    np.testing.assert_allclose(valid[0, :, :14], 1.0, atol=1e-6)
    np.testing.assert_array_equal(valid[0, :, 25:], 0.0)  # nothing measured: valid 0, filled 0
    np.testing.assert_array_equal(filled[0, :, 25:], 0.0)

    # A gradient: the filled gap is the mean of the pixels on either side (normalised convolution).
    ramp = np.tile(np.linspace(100.0, 20000.0, 64, dtype=np.float32), (64, 1))[None]
    with_gap = ramp.copy()
    with_gap[0, :, 31] = -1.0
    log_gap, filled_gap = np.moveaxis(_channels(with_gap, 32, ("log", "filled")), -1, 0)
    log_full = _channels(ramp, 32, ("log",))[..., 0]
    np.testing.assert_allclose(filled_gap[0, :, 15], log_full[0, :, 15], rtol=2e-3)
    assert (log_gap[0, :, 15] < 0.9 * log_full[0, :, 15]).all()


def test_valid_is_zero_in_gaps_and_padding():
    counts = np.full((1, 40, 64), 50.0, np.float32)
    counts[0, :, 20:23] = -1.0
    counts[0, 5, 7] = np.inf
    counts[0, 6, 7] = 0.0  # zero counts are measured
    valid = _channels(counts, 64, ("valid",))[0, :, :, 0]  # 64: the padded square's side, no resizing
    padding = np.ones(64, bool)
    padding[12:52] = False  # (64 − 40) // 2 = 12 rows above the image
    expected = np.zeros((64, 64), np.float32)
    expected[~padding] = (counts[0] >= 0) & np.isfinite(counts[0])
    np.testing.assert_array_equal(valid, expected)
    assert valid[padding].max() == 0.0 and valid[12:52, 20:23].max() == 0.0 and valid[12 + 6, 7] == 1.0


@pytest.mark.parametrize("percent", [0.0, 2.0, 50.0, 99.9, 100.0])
def test_percentile_is_the_nearest_rank_of_the_selected_values(percent):
    """Against NumPy's sort, with ties, rows of different counts, a row of one value and an empty row."""
    from xrayscatter.normalization import _percentile_over

    rng = np.random.default_rng(int(percent * 10))
    values = rng.integers(0, 50, (5, 300)).astype(np.float32) / 7  # many ties
    where = rng.random((5, 300)) < np.array([[0.9], [0.3], [0.05], [0.0], [0.0]])
    where[3, 17] = True  # one selected value
    got = _percentile_over(tf.constant(values), tf.constant(where), percent).numpy()
    for row in range(5):
        chosen = np.sort(values[row][where[row]])
        expected = chosen[int(math.floor((len(chosen) - 1) * percent / 100))] if len(chosen) else 0.0
        assert got[row] == expected, (row, got[row], expected)


def test_contrast_stretches_each_image_between_its_percentiles():
    rng = np.random.default_rng(4)
    counts = np.stack([rng.gamma(1.0, 30.0, (48, 48)), rng.gamma(2.0, 20000.0, (48, 48))]).astype(np.float32)
    counts[:, :, 10] = -1.0  # a gap: not part of the percentiles, 0 in the channel
    filled, contrast = np.moveaxis(_channels(counts, 48, ("filled", "contrast")), -1, 0)
    for b in range(2):
        measured = np.ones((48, 48), bool)
        measured[:, 10] = False
        values = np.sort(filled[b][measured])
        low, high = (values[int(math.floor((len(values) - 1) * p / 100))] for p in CONTRAST_PERCENTILES)
        expected = np.where(measured, np.clip((filled[b] - low) / (high - low), 0.0, 1.0), 0.0)
        np.testing.assert_allclose(contrast[b], expected, atol=1e-5)
        assert contrast[b].min() == 0.0 and contrast[b].max() == pytest.approx(1.0)
        assert (contrast[b][measured & (filled[b] <= low)] == 0.0).all()
        assert (contrast[b][measured & (filled[b] >= high)] == pytest.approx(1.0))
        # 2 % of the measured pixels at most sit at 0 (ties aside), 0.1 % at 1
        assert np.mean(contrast[b][measured] < 1e-6) < 0.03 and np.mean(contrast[b][measured] > 1 - 1e-6) < 0.003
    assert CONTRAST_PERCENTILES == (2.0, 99.9)
    # Images a thousand times apart in counts look alike: the per-image stretch.
    assert abs(contrast[0].mean() - contrast[1].mean()) < 0.2 < abs(filled[0].mean() - filled[1].mean())


def test_unknown_or_no_channels_are_rejected():
    counts = tf.ones((1, 8, 8))
    with pytest.raises(ValueError, match="rgb"):
        model_input(counts, 8, ("log", "rgb"))
    with pytest.raises(ValueError, match="channels"):
        model_input(counts, 8, ())
    assert set(INPUT_CHANNELS) == {"log", "filled", "contrast", "valid"}
