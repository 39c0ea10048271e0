"""Angular structure of rings: isotropic powder, oriented arcs, spotty (few-grain) rings."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def wrapped_cauchy_arcs(chi: np.ndarray, symmetry: int, eta: float, chi0: float) -> np.ndarray:
    """Angular weight of an oriented sample with ``symmetry``-fold arcs.

    w(χ) = (1−η²)/(1 + η² − 2η cos(n(χ−χ₀))): mean 1 over χ (intensity is redistributed,
    not created), η → 0 isotropic, η → 1 sharp arcs; crest (1+η)/(1−η).
    """
    return ((1 - eta**2) / (1 + eta**2 - 2 * eta * np.cos(symmetry * (chi - chi0)))).astype(np.float32)


def arc_crest_factor(eta: float) -> float:
    return (1 + eta) / (1 - eta)


def spotty_ring_image(shape: tuple[int, int], beam_xy: tuple[float, float], radii_px: np.ndarray,
                      ring_totals: np.ndarray, num_spots: np.ndarray, spot_sigma_px: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Rings broken into grain reflections: each ring's integrated counts shared among
    ``num_spots`` Gaussian spots at random azimuths (random grain orientations).

    Args:
        shape: (H, W). beam_xy: beam centre (px). radii_px: (R,) ring radii (px).
        ring_totals: (R,) integrated counts each ring would have if isotropic over the full circle.
        num_spots: (R,) spots per full circle. spot_sigma_px: spot size (px).
    Returns:
        (H, W) float32 expected counts; spots outside the image are lost, as on a real detector.
    """
    h, w = shape
    impulses = np.zeros(shape, dtype=np.float64)
    for r, total, n in zip(radii_px, ring_totals, num_spots):
        n = int(max(1, n))
        chi = rng.uniform(0, 2 * np.pi, n)
        # Grains differ in size: spot intensities follow an exponential distribution.
        share = rng.exponential(size=n)
        share *= total / share.sum()
        x = beam_xy[0] + r * np.sin(chi) - 0.5
        y = beam_xy[1] - r * np.cos(chi) - 0.5
        inside = (x >= 0) & (x < w - 0.5) & (y >= 0) & (y < h - 0.5)
        np.add.at(impulses, (np.rint(y[inside]).astype(int), np.rint(x[inside]).astype(int)), share[inside])
    return gaussian_filter(impulses, spot_sigma_px, mode="constant").astype(np.float32)
