"""Instrument and detector effects: polarisation, background, direct beam, counting noise,
defects and saturation. All images are (H, W) float32 counts."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def polarization_factor(two_theta: np.ndarray, chi: np.ndarray, horizontal_fraction: float = 0.98) -> np.ndarray:
    """Polarisation of a synchrotron beam polarised in the horizontal (x) plane.

    P = f·(1 − sin²2θ sin²χ) + (1 − f)·(1 − sin²2θ cos²χ), χ from vertical (0 = up);
    only visible at wide angles (WAXS).
    """
    s2 = np.sin(two_theta) ** 2
    sx = np.sin(chi) ** 2
    return horizontal_fraction * (1 - s2 * sx) + (1 - horizontal_fraction) * (1 - s2 * (1 - sx))


def direct_beam(shape, beam_xy, fwhm_px: float, total_counts: float) -> np.ndarray:
    """Gaussian spot of the unscattered beam (integrated ``total_counts``)."""
    h, w = shape
    sigma = max(fwhm_px / 2.3548, 0.3)
    image = np.zeros(shape, dtype=np.float32)
    # float32 exp(−r²/2σ²) is exactly 0 beyond r ≈ 14.4σ: computed on the box that holds the rest,
    # the image is the same as over the whole frame, at the cost of a few pixels instead of a million
    reach = int(np.ceil(15 * sigma)) + 2
    cx, cy = beam_xy
    y0, y1 = max(0, int(np.floor(cy)) - reach), min(h, int(np.floor(cy)) + reach + 1)
    x0, x1 = max(0, int(np.floor(cx)) - reach), min(w, int(np.floor(cx)) + reach + 1)
    if y0 >= y1 or x0 >= x1:  # the beam is off the image: nothing of the spot reaches it
        return image
    y = np.arange(h, dtype=np.float32)[y0:y1, None] + 0.5 - beam_xy[1]
    x = np.arange(w, dtype=np.float32)[None, x0:x1] + 0.5 - beam_xy[0]
    spot = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    image[y0:y1, x0:x1] = total_counts / (2 * np.pi * sigma * sigma) * spot
    return image


def smooth_background(shape, rng: np.random.Generator, level: float, variation: float, scale_px: float) -> np.ndarray:
    """A slowly varying background (air, windows, fluorescence): ``level``·(1 + variation·field).

    The field is a sum of random low-frequency plane waves (periods ≥ ``scale_px``) plus a
    linear gradient, normalised to [−1, 1]: smooth everywhere, with no grid artefacts.
    """
    h, w = shape
    y = np.linspace(0.0, h / scale_px, h, dtype=np.float32)
    x = np.linspace(0.0, w / scale_px, w, dtype=np.float32)
    # cos(kx·x + ky·y + φ) = cos(a)cos(b) − sin(a)sin(b): the field is a sum of rank-one terms, so the
    # whole (H, W) field is one (H, 10) × (10, W) product, not a per-pixel cosine or twenty full-image passes
    rows, columns = [], []
    for _ in range(4):
        kx, ky = rng.normal(size=2) * (np.pi / 2)
        amplitude, phase = np.float32(rng.normal()), rng.uniform(0, 2 * np.pi)
        a, b = kx * x + phase, ky * y
        rows += [amplitude * np.cos(b), -amplitude * np.sin(b)]
        columns += [np.cos(a), np.sin(a)]
    gy, gx = rng.normal(size=2) * 0.5
    rows += [np.float32(gy) * np.linspace(-1, 1, h, dtype=np.float32), np.ones(h, np.float32)]
    columns += [np.ones(w, np.float32), np.float32(gx) * np.linspace(-1, 1, w, dtype=np.float32)]
    # einsum's own loop rather than BLAS: no thread pool to contend with the other simulator workers
    field = np.einsum("ik,kj->ij", np.stack(rows, axis=1).astype(np.float32), np.stack(columns).astype(np.float32))
    field *= np.float32(variation / max(1e-6, float(np.abs(field).max())))
    field += np.float32(1.0)
    np.maximum(field, np.float32(0.05), out=field)
    field *= np.float32(level)
    return field


def parasitic_streaks(shape, beam_xy, rng: np.random.Generator, level: float, count: int) -> np.ndarray:
    """Slit/window scattering: thin streaks through the beam centre whose intensity falls off
    as a power of the distance from the beam."""
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5 - beam_xy[1]
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5 - beam_xy[0]
    r = np.sqrt(x * x + y * y) + 1.0
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(count):
        angle = rng.choice([0.0, np.pi / 2]) + rng.normal(scale=0.05)
        width = rng.uniform(0.5, 2.0)
        across = np.abs(x * np.cos(angle) + y * np.sin(angle))
        out += (level * np.exp(-0.5 * (across / width) ** 2) * (r / 10.0) ** rng.uniform(-2.5, -1.0)).astype(np.float32)
    return out


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counting: Poisson(expected), float32."""
    return rng.poisson(np.clip(expected, 0, 1e12)).astype(np.float32)


def ccd_readout(counts: np.ndarray, rng: np.random.Generator, dark_offset: float, read_noise: float,
                gain: float) -> np.ndarray:
    """CCD: counts × gain (ADU per photon) + dark offset + Gaussian read noise (ADU)."""
    noise = rng.normal(scale=read_noise, size=counts.shape).astype(np.float32)
    return counts * gain + dark_offset + noise


def add_zingers(image: np.ndarray, rng: np.random.Generator, rate: float, max_count: float) -> int:
    """Cosmic rays / zingers: rare single very bright pixels (in place). Returns how many."""
    n = rng.poisson(rate * image.size)
    if n:
        idx = rng.integers(0, image.size, n)
        image.flat[idx] += rng.uniform(0.1, 1.0, n).astype(np.float32) * max_count
    return int(n)


def add_bad_pixels(image: np.ndarray, rng: np.random.Generator, hot_fraction: float, dead_fraction: float,
                   max_count: float) -> tuple[int, int]:
    """Hot pixels (stuck near full scale) and dead pixels (0), in place."""
    n_hot = rng.binomial(image.size, hot_fraction)
    n_dead = rng.binomial(image.size, dead_fraction)
    if n_hot:
        image.flat[rng.integers(0, image.size, n_hot)] = max_count * rng.uniform(0.5, 1.0)
    if n_dead:
        image.flat[rng.integers(0, image.size, n_dead)] = 0
    return int(n_hot), int(n_dead)


def point_spread(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Detector point-spread (charge sharing, phosphor blur in CCDs)."""
    if sigma_px <= 0.05:
        return image
    return gaussian_filter(image, sigma_px, mode="nearest")
