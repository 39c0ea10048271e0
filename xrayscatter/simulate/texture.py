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


def ring_power_per_radian(geometry, q0: float, area: float) -> float:
    """Counts per radian of azimuth that an isotropic ring deposits on a detector before the
    polarisation factor, in the units of a rendered profile.

    A profile I(q) is rendered as I(q)·Ω/Ω₀·P per pixel, with Ω₀ = (p/d)²·cos(tilt_x)·cos(tilt_y)
    the solid angle of the pixel at the beam centre (p the image pixel, d the distance; see
    ``Geometry.solid_angle_map``). A ring of area A = ∫I dq at
    scattering angle 2θ covers, per radian of χ, the solid angle sin 2θ·d2θ = sin 2θ·dq/(k cos θ)
    (q = 2k sin θ), so it carries A·sin 2θ/(k cos θ)/Ω₀ per radian. On a flat, untilted detector
    this is the familiar A·r·(dr/dq)·cos³2θ in pixels; it holds for any tilt, because each
    pixel's share of the ring is its solid angle.
    """
    theta = np.arcsin(min(q0 / (2 * geometry.k), 1.0))
    omega_0 = (geometry.pixel_size_m / geometry.distance_m) ** 2 * np.cos(geometry.tilt_x) * np.cos(geometry.tilt_y)
    return float(area * np.sin(2 * theta) / (geometry.k * np.cos(theta)) / omega_0)


def spotty_ring_image(geometry, shape: tuple[int, int], ring_q: np.ndarray, ring_areas: np.ndarray,
                      spots_per_circle: np.ndarray, spot_sigma_px: float, rng: np.random.Generator,
                      polarization: float) -> tuple[np.ndarray, list[int]]:
    """Rings broken into grain reflections (a few crystallites in the beam).

    Each ring's power over its whole circle (:func:`ring_power_per_radian` × 2π, i.e. what the
    continuous ring of the same peak shape and area would carry) is shared among
    ``spots_per_circle`` grains at random azimuths χ (uniform around the beam, as grains are
    randomly oriented), with exponentially distributed shares (grains differ in size), each times
    the polarisation factor at its direction. A grain's spot lands where its diffracted ray
    (2θ of the ring, its χ) meets the detector plane — tilted or not — so spots lie exactly on
    the ring's q; spots whose ray misses the image are lost. The spot's counts do not depend on
    the pixel's solid angle (a Bragg spot puts all its photons somewhere); summed over many
    grains this equals the continuous ring's Σ I·Ω·P over the same pixels.

    Args:
        geometry: the image's :class:`~xrayscatter.simulate.geometry.Geometry`.
        shape: (H, W). ring_q (Å⁻¹), ring_areas (∫I dq, profile units), spots_per_circle: (R,).
        spot_sigma_px: Gaussian spot size (image px). polarization: horizontal fraction of the beam.
    Returns:
        ((H, W) float32 expected counts in profile units, number of spots on the image per ring).
    """
    from xrayscatter.simulate.detector import polarization_factor

    h, w = shape
    impulses = np.zeros(h * w, dtype=np.float64)
    placed = []
    k = geometry.k
    for q0, area, n_full in zip(ring_q, ring_areas, spots_per_circle):
        n_full = int(max(1, n_full))
        chi = rng.uniform(0.0, 2 * np.pi, n_full)
        share = rng.exponential(size=n_full)
        if q0 >= 2 * k:
            placed.append(0)
            continue
        two_theta = 2 * np.arcsin(q0 / (2 * k))
        per_spot = 2 * np.pi * ring_power_per_radian(geometry, q0, area) / n_full
        counts = share * per_spot * polarization_factor(two_theta, chi, polarization)
        x, y = geometry.pixel_from_angles(two_theta, chi)
        on = np.isfinite(x) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        placed.append(int(on.sum()))
        if on.any():
            index = y[on].astype(np.int64) * w + x[on].astype(np.int64)
            np.add.at(impulses, index, counts[on])
    image = impulses.reshape(h, w)
    if spot_sigma_px > 0.05:
        image = gaussian_filter(image, spot_sigma_px, mode="constant")
    return image.astype(np.float32), placed
