"""Powder diffraction of lattices: reflection sequences, multiplicities, ring profiles.

Reflections are enumerated from Miller indices and the structure factor of the lattice's
basis, F(hkl) = Σⱼ exp(2πi(h·xⱼ + k·yⱼ + l·zⱼ)), so extinction rules and multiplicities are
computed rather than tabulated: BCC (h+k+l even) gives N = h²+k²+l² = 2, 4, 6, 8, … with
multiplicities 12, 6, 24, 12, …; FCC (h, k, l all odd or all even) gives N = 3, 4, 8, 11,
12, … with 8, 6, 12, 24, 8, …; diamond removes (200), (222), … from FCC. Ring positions
q_hkl = (2π/a)·√N for cubic lattices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# BCC, FCC, simple cubic, diamond cubic (an FCC Bravais lattice with a two-atom basis),
# hexagonal close packed (3-D, ideal c/a), 2-D hexagonal (cylinders), lamellar.
LATTICES = ("BCC", "FCC", "SC", "DIA", "HCP", "HEX", "LAM")
BRAVAIS = {"BCC": "BCC", "FCC": "FCC", "DIA": "FCC", "SC": "SC", "HCP": "HCP", "HEX": "HEX", "LAM": "LAM"}

_BASES = {
    "SC": [(0, 0, 0)],
    "BCC": [(0, 0, 0), (0.5, 0.5, 0.5)],
    "FCC": [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
    "DIA": [(x + d, y + d, z + d) for (x, y, z) in [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
            for d in (0.0, 0.25)],
    "HCP": [(0, 0, 0), (1 / 3, 2 / 3, 0.5)],
}
HCP_C_OVER_A = float(np.sqrt(8 / 3))

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Reflection:
    """One powder ring (a family of equivalent reflections).

    n: q² in units of (2π/a)² — the integer h²+k²+l² for cubic lattices, h²+hk+k² for the 2-D
    hexagonal lattice, the order for lamellar; ratio: q/q₁; multiplicity: reflections in the
    family with F ≠ 0; weight: Σ|F|² over the family divided by (atoms in the basis)², i.e.
    the powder intensity factor (= multiplicity for one-atom or centred cubic lattices).
    """

    n: float
    ratio: float
    multiplicity: int
    hkl: tuple[int, ...]
    weight: float


MAX_RATIO = 6.0  # reflections are enumerated once per lattice up to q/q₁ = 6, then filtered


def reflections(lattice: str, max_ratio: float = 4.0) -> tuple[Reflection, ...]:
    """Allowed powder reflections of ``lattice`` up to q/q₁ = ``max_ratio`` (≤ 6), sorted by q.

    ``lattice`` is one of LATTICES: BCC, FCC, SC, DIA (cubic, 3-D powder), HCP, HEX (2-D
    hexagonal, e.g. cylinders: ratios 1, √3, 2, √7, 3) or LAM (lamellar stack: 1, 2, 3, …).
    """
    if lattice == "LAM":
        return tuple(Reflection(n, float(n), 2, (n,), 2.0) for n in range(1, int(max_ratio) + 1))
    return tuple(r for r in _all_reflections(lattice) if r.ratio <= max_ratio + 1e-9)


@lru_cache(maxsize=None)
def _all_reflections(lattice: str) -> tuple[Reflection, ...]:
    span = int(np.ceil(MAX_RATIO * 2)) + 2
    ks = np.arange(-span, span + 1)
    if lattice == "HEX":
        hkl = np.stack(np.meshgrid(ks, ks, [0], indexing="ij"), -1).reshape(-1, 3)
    else:
        hkl = np.stack(np.meshgrid(ks, ks, ks, indexing="ij"), -1).reshape(-1, 3)
    h, k, l = hkl.T  # noqa: E741 - crystallographic names
    if lattice == "HEX":
        q2 = (h * h + h * k + k * k).astype(np.float64)
        f2 = np.ones(len(hkl))
    else:
        q2 = (4.0 / 3.0 * (h * h + h * k + k * k) + (l / HCP_C_OVER_A) ** 2 if lattice == "HCP"
              else (h * h + k * k + l * l).astype(np.float64))
        basis = np.asarray(_BASES[lattice])
        f2 = np.abs(np.exp(2j * np.pi * (hkl @ basis.T)).sum(axis=1)) ** 2 / len(basis) ** 2
    keep = (q2 > 0) & (f2 > 1e-9)
    hkl, q2, f2 = hkl[keep], np.round(q2[keep], 9), f2[keep]
    q2_first = q2.min()
    out = []
    for value in np.unique(q2):
        ratio = float(np.sqrt(value / q2_first))
        if ratio > MAX_RATIO + 1e-9:
            break
        members = q2 == value
        family = [tuple(m[:2] if lattice == "HEX" else m) for m in hkl[members].tolist()]
        positive = [m for m in family if min(m) >= 0]
        rep = max(positive) if positive else tuple(abs(i) for i in max(family))  # a readable representative
        n = int(value) if float(value).is_integer() else float(value)
        out.append(Reflection(n, ratio, int(members.sum()), rep, float(f2[members].sum())))
    return tuple(out)


def first_peak_n(lattice: str) -> float:
    return reflections(lattice)[0].n


# Nearest-neighbour distance between lattice sites in units of the lattice constant a (for LAM,
# a is the period d): BCC a√3/2, FCC a/√2, SC a, diamond a√3/4 (the two-atom basis), HCP a,
# 2-D hexagonal a, lamellar d.
NN_OVER_A = {"BCC": np.sqrt(3) / 2, "FCC": 1 / np.sqrt(2), "SC": 1.0, "DIA": np.sqrt(3) / 4, "HCP": 1.0,
             "HEX": 1.0, "LAM": 1.0}


def nearest_neighbour_distance(lattice: str, a: float) -> float:
    """Distance (Å) between nearest sites of ``lattice`` with lattice constant (or period) ``a`` (Å)."""
    return float(NN_OVER_A[lattice] * a)


def first_peak_q(lattice: str, a: float) -> float:
    """q (Å⁻¹) of the first reflection: 2π√N₁/a for the 3-D lattices (N₁ = h²+k²+l², or 4/3 for
    HCP (100)), 4π/(√3·a) for the 2-D hexagonal (10), 2π/d for lamellar (001)."""
    if lattice == "HEX":
        return float(4 * np.pi / (np.sqrt(3) * a))
    if lattice == "LAM":
        return float(2 * np.pi / a)
    return float(2 * np.pi * np.sqrt(first_peak_n(lattice)) / a)


def lattice_constant(lattice: str, q_first: float) -> float:
    """Inverse of :func:`first_peak_q`: the lattice constant (Å) whose first ring is at ``q_first``."""
    return first_peak_q(lattice, 1.0) / q_first


def is_higher_order(lattice: str, n_low: int, n_high: int) -> bool:
    """True when reflection family ``n_high`` is an integer multiple order of ``n_low``
    (e.g. BCC (110) N=2 → (220) N=8: q ratio exactly 2)."""
    if lattice == "LAM":
        return n_high % n_low == 0 and n_high > n_low
    ratio2 = n_high / n_low
    order = round(np.sqrt(ratio2))
    return order >= 2 and abs(order * order - ratio2) < 1e-6


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


def pixel_integrated_peak(q: np.ndarray, center: float, fwhm: float, shape: str, box: float = 0.0,
                          eta: float = 0.5) -> np.ndarray:
    """Area-normalised peak averaged over a box of width ``box`` (Å⁻¹), the q span of one image
    pixel: what a pixel integrating over its area records of a ring, however narrow the ring.
    Exact (differences of the cumulative distribution); = :func:`peak_shape` for ``box`` → 0.
    """
    q = np.asarray(q, dtype=np.float64)
    sigma = fwhm / FWHM_PER_SIGMA
    if box <= 1e-3 * max(fwhm, 1e-30):
        return peak_shape(q, center, fwhm, shape, eta)
    from scipy.special import ndtr

    out = np.zeros_like(q)
    if shape != "lorentzian":  # Gaussian part, evaluated only within its reach
        reach = 9 * sigma + box
        i0, i1 = np.searchsorted(q, [center - reach, center + reach])
        d = q[i0:i1] - center
        gauss = (ndtr((d + box / 2) / sigma) - ndtr((d - box / 2) / sigma)) / box
        out[i0:i1] += gauss if shape == "gaussian" else (1 - eta) * gauss
    if shape != "gaussian":
        hw = fwhm / 2
        d = q - center
        lorentz = (np.arctan((d + box / 2) / hw) - np.arctan((d - box / 2) / hw)) / (np.pi * box)
        out += lorentz if shape == "lorentzian" else eta * lorentz
    return out


def rendered_fwhm(fwhm: float, box: float) -> float:
    """FWHM of a peak of width ``fwhm`` integrated over a pixel box ``box`` (exact at both limits)."""
    return float(np.hypot(fwhm, box))


def scherrer_fwhm(grain_size: float, shape_factor: float = 0.9) -> float:
    """Peak FWHM in q (Å⁻¹) from grain size L (Å): Δq = 2π·K / L."""
    return 2 * np.pi * shape_factor / grain_size


@dataclass(frozen=True)
class RingPeak:
    """A rendered ring, for the tag rules: where it is and how strong at its crest."""

    q: float  # Å⁻¹
    fwhm: float  # Å⁻¹
    height: float  # profile value at the crest (same units as the profile)
    n: float  # reflection family (Reflection.n), or the order for ad-hoc rings
    family: str  # which module made it ("lattice:BCC", "adhoc", ...)
    index: int  # reflection index within that module
    area: float = 0.0  # ∫ I dq of the ring (profile units × Å⁻¹), whatever its shape; 0 = not tracked


def powder_profile(q: np.ndarray, lattice: str, q_first: float, *, fwhm_0: float, fwhm_growth: float,
                   debye_waller_sigma: float, form_factor: np.ndarray | None = None,
                   shape: str = "gaussian", max_ratio: float = 4.0, q_limit: float | None = None,
                   pixel_dq=None, diffuse_form_factor: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, list[RingPeak]]:
    """1-D powder ring profile of a lattice.

    I_peaks(q) = Σ_families (Σ|F_hkl|²) · P(q_hkl) / q_hkl² · DW(q_hkl) · G(q − q_hkl; w(q_hkl))
    with Debye–Waller DW = exp(−σ²q²), width w(q)² = w₀² + (g·q)² (paracrystalline growth),
    and the intensity lost to disorder returned separately as diffuse P_powder(q)(1 − DW(q)).
    The 1/q² Lorentz factor holds for every lattice here, 2-D and 1-D ones included: their
    reciprocal lattices are points too (rods and sheets of parallel cylinders and layers give
    points in the plane normal to the axis), and a point spread over a sphere of radius q falls as 1/q².

    Args:
        q: (N,) grid (Å⁻¹), increasing. q_first: position of the first reflection (Å⁻¹).
        fwhm_0 (Å⁻¹), fwhm_growth (dimensionless): peak width model.
        debye_waller_sigma: σ (Å), r.m.s. displacement along q.
        form_factor: (N,) factor of the object on each lattice site at the Bragg peaks, on the grid
            (None → 1): sphere P(q), cylinder cross-section, slab, atomic (f/f₀)².
        q_limit: reflections up to this q (Å⁻¹, default the end of the grid).
        pixel_dq: callable q → Δq spanned by one image pixel; peaks are then integrated over it
            (:func:`pixel_integrated_peak`) and the rings' ``fwhm`` are the rendered widths.
        diffuse_form_factor: (N,) powder-averaged form factor for the diffuse remainder
            (default ``form_factor``).
    Returns:
        (peaks (N,), diffuse (N,), list of RingPeak with crest heights in profile units and
        integrated areas ∫ dq).
    """
    q = np.asarray(q, dtype=np.float64)
    ff = np.ones_like(q) if form_factor is None else np.asarray(form_factor, dtype=np.float64)
    peaks = np.zeros_like(q)
    rings = []
    q_max = q[-1] if q_limit is None else q_limit
    for i, refl in enumerate(reflections(lattice, max_ratio)):
        q_hkl = q_first * refl.ratio
        if q_hkl > q_max * 1.05:
            break
        fwhm = float(np.hypot(fwhm_0, fwhm_growth * q_hkl))
        box = float(pixel_dq(q_hkl)) if pixel_dq is not None else 0.0
        f2 = float(np.interp(q_hkl, q, ff))
        weight = refl.weight * f2 / q_hkl**2 * np.exp(-(debye_waller_sigma * q_hkl) ** 2)
        peaks += weight * pixel_integrated_peak(q, q_hkl, fwhm, shape, box)
        crest = weight * float(pixel_integrated_peak(np.array([q_hkl]), q_hkl, fwhm, shape, box)[0])
        rings.append(RingPeak(q_hkl, rendered_fwhm(fwhm, box), crest, refl.n, f"lattice:{lattice}", i, area=weight))
    dff = ff if diffuse_form_factor is None else np.asarray(diffuse_form_factor, dtype=np.float64)
    diffuse = dff * -np.expm1(-(debye_waller_sigma * q) ** 2)
    return peaks, diffuse, rings
