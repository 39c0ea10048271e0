"""Inter-particle structure factors S(q)."""

from __future__ import annotations

import numpy as np


def structure_factor_percus_yevick(q: np.ndarray, radius: float, volume_fraction: float) -> np.ndarray:
    """Hard-sphere S(q) in the Percus–Yevick closure (Kinning & Thomas 1984 form).

    Args:
        q: (N,) Å⁻¹. radius: hard-sphere radius R (Å). volume_fraction: φ in (0, 0.74).
    Returns:
        (N,) float64; S(0) = (1−φ)⁴/(1+2φ)², a correlation peak near qR ≈ 3–3.5 for φ ≳ 0.2.
    """
    phi = float(volume_fraction)
    a = 2.0 * np.asarray(q, dtype=np.float64) * radius  # A = 2qR
    alpha = (1 + 2 * phi) ** 2 / (1 - phi) ** 4
    beta = -6 * phi * (1 + phi / 2) ** 2 / (1 - phi) ** 4
    gamma = phi * alpha / 2
    out = np.full_like(a, (1 - phi) ** 4 / (1 + 2 * phi) ** 2)
    big = a > 0.05  # the closed form cancels catastrophically near A = 0; S is flat there
    A = a[big]
    s, c = np.sin(A), np.cos(A)
    g = (alpha * (s - A * c) / A**2
         + beta * (2 * A * s + (2 - A**2) * c - 2) / A**3
         + gamma * (-(A**4) * c + 4 * ((3 * A**2 - 6) * c + (A**3 - 6 * A) * s + 6)) / A**5)
    out[big] = 1.0 / (1.0 + 24 * phi * g / A)
    return out


def sticky_hard_sphere_lambda(volume_fraction: float, perturbation: float, stickiness: float) -> float | None:
    """Baxter's adhesion parameter λ of the sticky hard-sphere fluid (Menon, Manohar & Rao 1991).

    The spheres of diameter σ attract in a thin shell of width Δ (τ = Δ/(σ + Δ)); the fluid is
    solved in the Percus–Yevick closure with the volume fraction of the outer diameter,
    η = φ/(1 − τ)³. λ is the smaller root of (η/12)·λ² − (ε + η/(1 − η))·λ + (1 + η/2)/(1 − η)² = 0.

    Returns:
        λ, or None where the parameters have no physical solution (both roots complex, or
        μ = λη(1 − η) above 1 + 2η: the fluid would have separated into two phases).
    """
    eta = float(volume_fraction) / (1.0 - float(perturbation)) ** 3
    a = eta / 12.0
    b = float(stickiness) + eta / (1.0 - eta)
    c = (1.0 + eta / 2.0) / (1.0 - eta) ** 2
    discriminant = b * b - 4.0 * a * c
    if not 0.0 < eta < 1.0 or discriminant < 0.0:
        return None
    # the smaller root, written so that it does not cancel when a → 0 (the hard-sphere limit)
    lam = 2.0 * c / (b + np.sqrt(discriminant))
    if lam * eta * (1.0 - eta) > 1.0 + 2.0 * eta:
        return None
    return float(lam)


def structure_factor_sticky_hard_sphere(q: np.ndarray, radius: float, volume_fraction: float,
                                        perturbation: float, stickiness: float) -> np.ndarray:
    """S(q) of hard spheres with a narrow attractive well (Baxter's adhesive spheres, Percus–Yevick).

    Menon, Manohar & Rao, J. Chem. Phys. 95, 9186 (1991): S(q) = 1 / (A(k)² + B(k)²) with k = q·σ/(1 − τ),
    σ = 2·radius, and A, B the real and imaginary parts of Baxter's factorised Ornstein–Zernike
    function; stickiness ε = exp(U₀/kT)/(12τ) (smaller is stickier; ε → ∞ is the hard sphere).
    Attraction raises S at low q (clustering) and sharpens the contact peak at qσ ≈ 2π.

    Args:
        q: (N,) Å⁻¹. radius: hard-sphere radius (Å). volume_fraction: φ. perturbation: τ in
        (0, 0.1]. stickiness: ε > 0.
    Returns:
        (N,) float64.
    Raises:
        ValueError: the parameters have no physical solution (see :func:`sticky_hard_sphere_lambda`).
    """
    lam = sticky_hard_sphere_lambda(volume_fraction, perturbation, stickiness)
    if lam is None:
        raise ValueError(f"no physical sticky hard-sphere fluid at φ={volume_fraction}, τ={perturbation}, "
                         f"ε={stickiness}")
    eta = float(volume_fraction) / (1.0 - float(perturbation)) ** 3
    mu = lam * eta * (1.0 - eta)
    alpha = (1.0 + 2.0 * eta - mu) / (1.0 - eta) ** 2
    beta = (mu - 3.0 * eta) / (2.0 * (1.0 - eta) ** 2)
    k = np.asarray(q, dtype=np.float64) * 2.0 * float(radius) / (1.0 - float(perturbation))
    # below k ≈ 0.05 the closed form cancels catastrophically; its k → 0 limit holds there
    k = np.maximum(k, 0.05)
    s, c = np.sin(k), np.cos(k)
    a_k = 1.0 + 12.0 * eta * (alpha * (s - k * c) / k**3 + beta * (1.0 - c) / k**2 - lam * s / (12.0 * k))
    b_k = 12.0 * eta * (alpha * (0.5 / k - s / k**2 + (1.0 - c) / k**3) + beta * (1.0 / k - s / k**2)
                        - lam * (1.0 - c) / (12.0 * k))
    return 1.0 / (a_k**2 + b_k**2)
