"""Instrument effects computed the fast way equal the plain per-pixel formulas they stand for."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.simulate.detector import direct_beam, smooth_background


def _direct_beam_everywhere(shape, beam_xy, fwhm_px, total_counts):
    """The direct beam evaluated on every pixel of the frame (the reference)."""
    h, w = shape
    sigma = max(fwhm_px / 2.3548, 0.3)
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5 - beam_xy[1]
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5 - beam_xy[0]
    spot = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return (total_counts / (2 * np.pi * sigma * sigma) * spot).astype(np.float32)


@pytest.mark.parametrize("beam_xy, fwhm_px", [((40.3, 22.7), 1.0), ((40.3, 22.7), 9.0), ((0.2, 63.9), 3.0),
                                              ((-4.0, 30.0), 2.5), ((-60.0, 30.0), 2.5), ((80.0, 200.0), 4.0)])
def test_direct_beam_on_its_box_is_the_whole_frame_computation(beam_xy, fwhm_px):
    """Near an edge, just off it (tails still on the image) and far off: bit for bit the same image."""
    fast = direct_beam((64, 80), beam_xy, fwhm_px, 1e9)
    np.testing.assert_array_equal(fast, _direct_beam_everywhere((64, 80), beam_xy, fwhm_px, 1e9))
    assert fast.dtype == np.float32


def test_smooth_background_is_plane_waves_and_a_gradient_scaled_to_its_level():
    """The rank-one product equals the per-pixel sum cos(kx·x + ky·y + φ) it stands for, drawn in the same order."""
    shape, level, variation, scale_px = (48, 70), 120.0, 0.6, 30.0
    fast = smooth_background(shape, np.random.default_rng(5), level, variation, scale_px)
    rng = np.random.default_rng(5)
    y = np.linspace(0.0, shape[0] / scale_px, shape[0])[:, None]
    x = np.linspace(0.0, shape[1] / scale_px, shape[1])[None, :]
    field = np.zeros(shape)
    for _ in range(4):
        kx, ky = rng.normal(size=2) * (np.pi / 2)
        amplitude, phase = rng.normal(), rng.uniform(0, 2 * np.pi)
        field += amplitude * np.cos(kx * x + ky * y + phase)
    gy, gx = rng.normal(size=2) * 0.5
    field += gy * np.linspace(-1, 1, shape[0])[:, None] + gx * np.linspace(-1, 1, shape[1])[None, :]
    reference = level * np.clip(1 + variation * field / np.abs(field).max(), 0.05, None)
    assert fast.dtype == np.float32 and fast.shape == shape
    np.testing.assert_allclose(fast, reference, rtol=2e-5)
