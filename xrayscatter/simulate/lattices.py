"""Powder diffraction of lattices: reflection sequences, multiplicities, ring profiles.

Reflections are enumerated from Miller indices with the lattice's extinction rule, so the
multiplicities are counted rather than tabulated: BCC (h+k+l even) gives N = h²+k²+l² =
2, 4, 6, 8, … with multiplicities 12, 6, 24, 12, …; FCC (h, k, l all odd or all even) gives
N = 3, 4, 8, 11, 12, … with 8, 6, 12, 24, 8, …. Ring positions q_hkl = (2π/a)·√N.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LATTICES = ("BCC", "FCC", "SC", "HEX", "LAM")

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Reflection:
    """One powder ring: family index N, ratio q/q₁, multiplicity, and Miller indices."""

    n: int  # h²+k²+l² (cubic), h²+hk+k² (hexagonal), or order (lamellar)
    ratio: float  # q_hkl / q_first
    multiplicity: int
    hkl: tuple[int, ...]


def _cubic_allowed(lattice: str, h: int, k: int, l: int) -> bool:  # noqa: E741 - crystallographic names
    if lattice == "SC":
        return True
    if lattice == "BCC":
        return (h + k + l) % 2 == 0
    if lattice == "FCC":
        parities = {h % 2, k % 2, l % 2}
        return len(parities) == 1
    raise ValueError(f"not a cubic lattice: {lattice}")


@lru_cache(maxsize=None)
def reflections(lattice: str, max_ratio: float = 4.0) -> tuple[Reflection, ...]:
    """Allowed powder reflections of ``lattice`` up to q/q₁ = ``max_ratio``, sorted by q.

    ``lattice`` is one of BCC, FCC, SC (cubic, 3-D powder), HEX (2-D hexagonal, e.g.
    cylinders: ratios 1, √3, 2, √7, 3) or LAM (lamellar stack: 1, 2, 3, …).
    """
    if lattice == "LAM":
        orders = range(1, int(max_ratio) + 1)
        return tuple(Reflection(n, float(n), 2, (n,)) for n in orders)
    families: dict[int, list[tuple[int, ...]]] = {}
    if lattice == "HEX":
        span = int(np.ceil(max_ratio)) + 1
        for h, k in itertools.product(range(-span, span + 1), repeat=2):
            n = h * h + h * k + k * k
            if n > 0:
                families.setdefault(n, []).append((h, k))
    else:
        span = int(np.ceil(max_ratio * 2)) + 1
        for h, k, l in itertools.product(range(-span, span + 1), repeat=3):  # noqa: E741
            n = h * h + k * k + l * l
            if n > 0 and _cubic_allowed(lattice, h, k, l):
                families.setdefault(n, []).append((h, k, l))
    n_first = min(families)
    out = []
    for n in sorted(families):
        ratio = float(np.sqrt(n / n_first))
        if ratio > max_ratio + 1e-9:
            break
        hkl = max(families[n])  # a representative with positive indices
        out.append(Reflection(n, ratio, len(families[n]), tuple(abs(i) for i in hkl)))
    return tuple(out)


def first_peak_n(lattice: str) -> int:
    return reflections(lattice)[0].n


def is_higher_order(lattice: str, n_low: int, n_high: int) -> bool:
    """True when reflection family ``n_high`` is an integer multiple order of ``n_low``
    (e.g. BCC (110) N=2 → (220) N=8: q ratio exactly 2)."""
    if lattice == "LAM":
        return n_high % n_low == 0 and n_high > n_low
    ratio2 = n_high / n_low
    order = round(np.sqrt(ratio2))
    return order >= 2 and abs(order * order - ratio2) < 1e-9


def gaussian_peak(q: np.ndarray, center: float, fwhm: float) -> np.ndarray:
    """Area-normalised Gaussian in q (Å⁻¹⁻¹ units: ∫ dq = 1)."""
    sigma = fwhm / FWHM_PER_SIGMA
    return np.exp(-0.5 * ((q - center) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def lorentzian_peak(q: np.ndarray, center: float, fwhm: float) -> np.ndarray:
    """Area-normalised Lorentzian in q."""
    hw = fwhm / 2
    return (hw / np.pi) / ((q - center) ** 2 + hw * hw)


def peak_shape(q: np.ndarray, center: float, fwhm: float, shape: str, eta: float = 0.5) -> np.ndarray:
    """Area-normalised peak: 'gaussian', 'lorentzian' or 'pseudo-voigt' (mixing ``eta`` Lorentzian)."""
    if shape == "gaussian":
        return gaussian_peak(q, center, fwhm)
    if shape == "lorentzian":
        return lorentzian_peak(q, center, fwhm)
    return eta * lorentzian_peak(q, center, fwhm) + (1 - eta) * gaussian_peak(q, center, fwhm)


def scherrer_fwhm(grain_size: float, shape_factor: float = 0.9) -> float:
    """Peak FWHM in q (Å⁻¹) from grain size L (Å): Δq = 2π·K / L."""
    return 2 * np.pi * shape_factor / grain_size


@dataclass(frozen=True)
class RingPeak:
    """A rendered ring, for the tag rules: where it is and how strong at its crest."""

    q: float  # Å⁻¹
    fwhm: float  # Å⁻¹
    height: float  # profile value at the crest (same units as the profile)
    n: int
    family: str  # which module made it ("lattice:BCC", "adhoc", ...)
    index: int  # reflection index within that module


def powder_profile(q: np.ndarray, lattice: str, q_first: float, *, fwhm_0: float, fwhm_growth: float,
                   debye_waller_sigma: float, form_factor: np.ndarray | None = None,
                   shape: str = "gaussian", max_ratio: float = 4.0) -> tuple[np.ndarray, np.ndarray, list[RingPeak]]:
    """1-D powder ring profile of a lattice.

    I_peaks(q) = Σ_hkl m_hkl · |F(q_hkl)|² / q_hkl² · DW(q_hkl) · G(q − q_hkl; w(q_hkl))
    with Debye–Waller DW = exp(−σ²q²), width w(q)² = w₀² + (g·q)² (paracrystalline growth),
    and the intensity lost to disorder returned separately as diffuse P(q)(1 − DW(q)).

    Args:
        q: (N,) grid (Å⁻¹), increasing. q_first: position of the first reflection (Å⁻¹).
        fwhm_0 (Å⁻¹), fwhm_growth (dimensionless): peak width model.
        debye_waller_sigma: σ (Å), r.m.s. displacement.
        form_factor: (N,) |F(q)|² on the grid (None → 1).
    Returns:
        (peaks (N,), diffuse (N,), list of RingPeak with crest heights in profile units).
    """
    q = np.asarray(q, dtype=np.float64)
    ff = np.ones_like(q) if form_factor is None else np.asarray(form_factor, dtype=np.float64)
    peaks = np.zeros_like(q)
    rings = []
    q_max = q[-1]
    for i, refl in enumerate(reflections(lattice, max_ratio)):
        q_hkl = q_first * refl.ratio
        if q_hkl > q_max * 1.05:
            break
        fwhm = float(np.hypot(fwhm_0, fwhm_growth * q_hkl))
        f2 = float(np.interp(q_hkl, q, ff))
        weight = refl.multiplicity * f2 / q_hkl**2 * np.exp(-(debye_waller_sigma * q_hkl) ** 2)
        profile = weight * peak_shape(q, q_hkl, fwhm, shape)
        peaks += profile
        crest = weight * float(peak_shape(np.array([q_hkl]), q_hkl, fwhm, shape)[0])
        rings.append(RingPeak(q_hkl, fwhm, crest, refl.n, f"lattice:{lattice}", i))
    diffuse = ff * (1 - np.exp(-(debye_waller_sigma * q) ** 2))
    return peaks, diffuse, rings
