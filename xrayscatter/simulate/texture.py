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


def spotty_ring_image(q_map: np.ndarray, q_step: float, ring_q: np.ndarray, ring_totals: np.ndarray,
                      full_circle_px: np.ndarray, spots_per_circle: np.ndarray, spot_sigma_px: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Rings broken into grain reflections (a few crystallites in the beam).

    Each ring's integrated counts (``ring_totals``, as if the full circle were isotropic) are
    shared among ``spots_per_circle`` grains at random azimuths, with exponentially distributed
    intensities (grains differ in size). Spots are placed on the pixels whose q lies on the ring,
    so the placement is right for tilted detectors too; only the part of the circle that falls
    on the image (its share of ``full_circle_px``) receives spots.

    Args:
        q_map: (H, W) Å⁻¹. q_step: Δq of one pixel. ring_q, ring_totals, full_circle_px,
            spots_per_circle: (R,) per ring. spot_sigma_px: Gaussian spot size (px).
    Returns:
        ((H, W) float32 expected counts, number of spots placed per ring).
    """
    impulses = np.zeros(q_map.shape, dtype=np.float64)
    placed = []
    flat_q = q_map.ravel()
    for q0, total, circle, n_full in zip(ring_q, ring_totals, full_circle_px, spots_per_circle):
        on_ring = np.flatnonzero(np.abs(flat_q - q0) <= 0.6 * q_step)
        n_full = int(max(1, n_full))
        if on_ring.size == 0 or circle <= 0:
            placed.append(0)
            continue
        visible_fraction = min(1.0, on_ring.size / (1.2 * circle))
        n = int(rng.binomial(n_full, visible_fraction))
        placed.append(n)
        if n == 0:
            continue
        where = rng.choice(on_ring, size=n)
        share = rng.exponential(size=n) * (total / n_full)
        np.add.at(impulses.ravel(), where, share)
    return gaussian_filter(impulses, spot_sigma_px, mode="constant").astype(np.float32), placed
