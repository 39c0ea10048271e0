"""Form factors P(q) of particles, cylinders, layers and atoms, normalised to P(0) = 1.

Each function takes a 1-D q grid (Å⁻¹) and returns float64 of the same shape.
"""

from __future__ import annotations

import numpy as np


def sphere_amplitude(q: np.ndarray, radius: float) -> np.ndarray:
    """F(q) = 3(sin x − x cos x)/x³, x = qR; F(0) = 1."""
    x = np.asarray(q, dtype=np.float64) * radius
    out = np.ones_like(x)
    small = np.abs(x) < 1e-3
    xs = x[~small]
    out[~small] = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    out[small] = 1.0 - x[small] ** 2 / 10.0  # Taylor series, avoids 0/0
    return out


def sphere_form_factor(q: np.ndarray, radius: float) -> np.ndarray:
    """P(q) = F(q)², first minimum at qR = 4.493; Guinier Rg² = 3R²/5."""
    return sphere_amplitude(q, radius) ** 2


def schulz_weights(radius: float, relative_sigma: float, num: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """Radii and normalised number weights of a Schulz (gamma) distribution.

    Mean ``radius``, σ/R = ``relative_sigma``; z = 1/σ² − 1 (the Schulz-Zimm form used by
    SasView's polydispersity). Sampled over ±4σ (clipped at 0.05 R).
    """
    if relative_sigma <= 0:
        return np.array([radius]), np.array([1.0])
    z = 1.0 / relative_sigma**2 - 1.0
    r = np.linspace(max(0.05 * radius, radius * (1 - 4 * relative_sigma)), radius * (1 + 4 * relative_sigma), num)
    log_w = z * np.log(r / radius) - (z + 1) * r / radius
    w = np.exp(log_w - log_w.max())
    return r, w / w.sum()


def polydisperse_sphere_form_factor(q: np.ndarray, radius: float, relative_sigma: float) -> np.ndarray:
    """⟨V² P(q)⟩ / ⟨V²⟩ over a Schulz distribution of radii (volume-squared weighting, as
    scattered intensity scales with V²). Smears the minima of P(q)."""
    radii, weights = schulz_weights(radius, relative_sigma)
    v2 = weights * radii**6
    q = np.asarray(q, dtype=np.float64)
    total = np.zeros_like(q)
    for r, w in zip(radii, v2):
        total += w * sphere_form_factor(q, r)
    return total / v2.sum()


def cylinder_cross_section(q: np.ndarray, radius: float) -> np.ndarray:
    """(2 J₁(qR)/(qR))²: the form factor of a long cylinder of radius R for q normal to its axis,
    which is where the Bragg peaks of a 2-D lattice of parallel cylinders lie. First zero at
    qR = 3.8317; → 1 at q = 0."""
    from scipy.special import j1

    x = np.asarray(q, dtype=np.float64) * radius
    out = np.ones_like(x)
    big = np.abs(x) > 1e-4
    out[big] = (2.0 * j1(x[big]) / x[big]) ** 2
    return out


def polydisperse_cylinder_cross_section(q: np.ndarray, radius: float, relative_sigma: float) -> np.ndarray:
    """⟨R⁴ (2J₁(qR)/qR)²⟩ / ⟨R⁴⟩ over a Schulz distribution of radii (cross-section area squared
    weighting, as scattered intensity per unit length scales with (πR²)²)."""
    radii, weights = schulz_weights(radius, relative_sigma)
    w = weights * radii**4
    total = np.zeros_like(np.asarray(q, dtype=np.float64))
    for r, wi in zip(radii, w):
        total += wi * cylinder_cross_section(q, r)
    return total / w.sum()


def long_cylinder_powder(q: np.ndarray, radius: float, length: float) -> np.ndarray:
    """Orientation-averaged form factor of a cylinder much longer than its radius, for qL ≫ 1:
    P(q) ≈ π/(qL) · (2J₁(qR)/qR)² (the rod's intensity lies in a disc of reciprocal space, whose
    powder average falls as 1/q). Not normalised to 1 at q = 0 (the asymptote diverges there)."""
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(q > 0, np.pi / (q * length), np.inf) * cylinder_cross_section(q, radius)


def slab_form_factor(q: np.ndarray, thickness: float) -> np.ndarray:
    """[sin(qt/2)/(qt/2)]²: a uniform layer of thickness t seen along its normal, where the Bragg
    peaks of a lamellar stack lie. Zeros at q = 2πn/t; → 1 at q = 0."""
    x = np.asarray(q, dtype=np.float64) * thickness / 2
    return np.sinc(x / np.pi) ** 2


# Cromer–Mann coefficients (International Tables for Crystallography Vol. C, Table 6.1.1.4):
# f(s) = Σᵢ aᵢ exp(−bᵢ s²) + c with s = sin θ/λ = q/(4π) (Å⁻¹); f(0) ≈ Z (checked in the tests).
CROMER_MANN: dict[str, tuple[tuple[float, ...], tuple[float, ...], float]] = {
    "C": ((2.3100, 1.0200, 1.5886, 0.8650), (20.8439, 10.2075, 0.5687, 51.6512), 0.2156),
    "O": ((3.0485, 2.2868, 1.5463, 0.8670), (13.2771, 5.7011, 0.3239, 32.9089), 0.2508),
    "Na": ((4.7626, 3.1736, 1.2674, 1.1128), (3.2850, 8.8422, 0.3136, 129.424), 0.6760),
    "Mg": ((5.4204, 2.1735, 1.2269, 2.3073), (2.8275, 79.2611, 0.3808, 7.1937), 0.8584),
    "Al": ((6.4202, 1.9002, 1.5936, 1.9646), (3.0387, 0.7426, 31.5472, 85.0886), 1.1151),
    "Si": ((6.2915, 3.0353, 1.9891, 1.5410), (2.4386, 32.3337, 0.6785, 81.6937), 1.1407),
    "Cl": ((11.4604, 7.1962, 6.2556, 1.6455), (0.0104, 1.1662, 18.5194, 47.7784), -9.5574),
    "K": ((8.2186, 7.4398, 1.0519, 0.8659), (12.7949, 0.7748, 213.187, 41.6841), 1.4228),
    "Ti": ((9.7595, 7.3558, 1.6991, 1.9021), (7.8508, 0.5000, 35.6338, 116.105), 1.2807),
    "Fe": ((11.7695, 7.3573, 3.5222, 2.3045), (4.7611, 0.3072, 15.3535, 76.8805), 1.0369),
    "Ni": ((12.8376, 7.2920, 4.4438, 2.3800), (3.8785, 0.2565, 12.1763, 66.3421), 1.0341),
    "Cu": ((13.3380, 7.1676, 5.6158, 1.6735), (3.5828, 0.2470, 11.3966, 64.8126), 1.1910),
    "Zn": ((14.0743, 7.0318, 5.1652, 2.4100), (3.2655, 0.2333, 10.3163, 58.7097), 1.3041),
    "Ge": ((16.0816, 6.3747, 3.7068, 3.6830), (2.8509, 0.2516, 11.4468, 54.7625), 2.1313),
    "Ag": ((19.2808, 16.6885, 4.8045, 1.0463), (0.6446, 7.4726, 24.6605, 99.8156), 5.1790),
    "W": ((29.0818, 15.4300, 14.4327, 5.11982), (1.72029, 9.22590, 0.321703, 57.0560), 9.8875),
    "Pt": ((27.0059, 17.7639, 15.7131, 5.78370), (1.51293, 8.81174, 0.424593, 38.6103), 11.6883),
    "Au": ((16.8819, 18.5913, 25.5582, 5.86000), (0.461100, 8.62160, 1.48260, 36.3956), 12.0658),
}
ATOMIC_NUMBER = {"C": 6, "O": 8, "Na": 11, "Mg": 12, "Al": 13, "Si": 14, "Cl": 17, "K": 19, "Ti": 22, "Fe": 26,
                 "Ni": 28, "Cu": 29, "Zn": 30, "Ge": 32, "Ag": 47, "W": 74, "Pt": 78, "Au": 79}


def atomic_form_factor(q: np.ndarray, element: str) -> np.ndarray:
    """Atomic X-ray scattering factor f(q) (electrons) of a neutral atom, Cromer–Mann fit,
    valid to sin θ/λ ≈ 2 Å⁻¹ (q ≈ 25 Å⁻¹)."""
    a, b, c = CROMER_MANN[element]
    s2 = (np.asarray(q, dtype=np.float64) / (4 * np.pi)) ** 2
    return sum(ai * np.exp(-bi * s2) for ai, bi in zip(a, b)) + c


def atomic_form_factor_squared(q: np.ndarray, element: str) -> np.ndarray:
    """(f(q)/f(0))²: the intensity factor of one atom per lattice site, normalised to 1 at q = 0."""
    return (atomic_form_factor(q, element) / atomic_form_factor(np.zeros(1), element)[0]) ** 2
