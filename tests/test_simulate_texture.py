"""Spotty (few-grain) rings: the spots carry what the continuous ring of the same shape would,
follow the solid angle × polarisation, and sit on the ring's q on a tilted detector."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.simulate import lattices, texture
from xrayscatter.simulate.detector import polarization_factor
from xrayscatter.simulate.geometry import Geometry

POLARIZATION = 0.99  # strongly polarised synchrotron beam: P varies by ~15 % around a ring at 2θ ≈ 20°


def _geometry(tilt_x_deg: float = 0.0, tilt_y_deg: float = 0.0) -> Geometry:
    """A 12 keV WAXS set-up, 10 cm from the sample, 150 µm pixels; the ring at q₀ fits on it."""
    return Geometry(12.0, 0.10, 150e-6, 420, 460, 215.3, 198.6, np.radians(tilt_x_deg), np.radians(tilt_y_deg))


def _continuous_ring(geometry: Geometry, q0: float, fwhm: float, shape: str):
    """(image of the isotropic ring rendered as profiles are: I(q)·Ω·P, its area ∫I dq)."""
    q_map = geometry.q_map()
    grid = np.linspace(0.0, float(q_map.max()) * 1.01, 40000)
    peaks, _, rings = lattices.powder_profile(grid, "LAM", q0, fwhm_0=fwhm, fwhm_growth=0.0, debye_waller_sigma=0.0,
                                              shape=shape, max_ratio=1.0)
    polarization = polarization_factor(geometry.two_theta_map(), geometry.chi_map(), POLARIZATION)
    factor = geometry.solid_angle_map() * polarization
    return np.interp(q_map, grid, peaks) * factor, rings[0].area


def _spots(geometry: Geometry, q0: float, area: float, n_grains: int, seed: int = 0, sigma_px: float = 0.0):
    image, placed = texture.spotty_ring_image(geometry, (geometry.height, geometry.width), np.array([q0]),
                                              np.array([area]), np.array([n_grains]), sigma_px,
                                              np.random.default_rng(seed), POLARIZATION)
    return image, placed[0]


@pytest.mark.parametrize("shape", ["gaussian", "lorentzian", "pseudo-voigt"])
def test_spots_carry_the_counts_of_the_continuous_ring_of_their_peak_shape(shape):
    g = _geometry(8.0, 25.0)
    q0, fwhm = 1.2, 0.02
    ring, area = _continuous_ring(g, q0, fwhm, shape)
    spots, placed = _spots(g, q0, area, 40000)
    assert placed > 30000  # the whole ring is on the detector
    assert spots.sum() == pytest.approx(ring.sum(), rel=0.03)
    if shape != "gaussian":  # the Gaussian area 1.064·h·FWHM would have been 19–32 % short
        crest = float(lattices.peak_shape(np.array([q0]), q0, fwhm, shape)[0]) * area
        assert 1.064 * crest * fwhm < 0.85 * area


def test_spot_totals_follow_solid_angle_times_polarisation_around_a_tilted_ring():
    """Sector by sector around the ring, on a detector tilted by 35°, the spots deposit what the
    continuous ring (rendered with Ω·P, like every profile) deposits on the same pixels."""
    g = _geometry(10.0, 35.0)
    q0 = 1.4
    ring, area = _continuous_ring(g, q0, 0.02, "gaussian")
    spots, _ = _spots(g, q0, area, 60000, seed=3)
    chi = g.chi_map()
    sectors = np.floor((chi % (2 * np.pi)) / (np.pi / 3)).astype(int)  # six 60° sectors
    ring_by_sector = np.bincount(sectors.ravel(), weights=ring.ravel(), minlength=6)
    spots_by_sector = np.bincount(sectors.ravel(), weights=spots.ravel(), minlength=6)
    assert ring_by_sector.max() / ring_by_sector.min() > 1.15  # Ω·P really varies around this ring
    assert np.allclose(spots_by_sector, ring_by_sector, rtol=0.05)


def test_spot_pixels_lie_on_the_ring_q_on_a_strongly_tilted_detector():
    g = _geometry(-12.0, 38.0)
    q_map = g.q_map().astype(np.float64)
    dq_y, dq_x = np.gradient(q_map)
    pixel_dq = np.hypot(dq_x, dq_y)
    for q0 in (0.8, 1.5, 2.2):
        spots, placed = _spots(g, q0, 1.0, 500, seed=int(q0 * 10))
        hit = spots > 0
        assert placed > 50 and hit.sum() > 50
        assert np.all(np.abs(q_map[hit] - q0) <= 0.75 * pixel_dq[hit])


def test_spots_are_uniform_in_azimuth_around_the_beam():
    """Grains are oriented at random: the spots' azimuths around the beam are uniform, however the
    tilted detector stretches the ring."""
    g = _geometry(0.0, 30.0)
    spots, _ = _spots(g, 1.0, 1.0, 20000, seed=5)
    chi = g.chi_map()[spots > 0] % (2 * np.pi)
    counts, _ = np.histogram(chi, bins=12, range=(0, 2 * np.pi))
    assert counts.min() > 0.75 * counts.mean()


def test_ring_power_per_radian_is_the_untilted_pixel_count_formula():
    """On a flat, untilted detector: A·r·(dr/dq)·cos³2θ (pixels per unit q along the ring × Ω)."""
    g = _geometry()
    q0 = 1.3
    r = g.radius_px_from_q(q0)
    dr_dq = 1.0 / (g.dq_dr(q0) * g.pixel_size_m)
    two_theta = np.arctan(r * g.pixel_size_m / g.distance_m)
    expected = 2.5 * r * dr_dq * np.cos(two_theta) ** 3
    assert texture.ring_power_per_radian(g, q0, 2.5) == pytest.approx(expected, rel=1e-9)
