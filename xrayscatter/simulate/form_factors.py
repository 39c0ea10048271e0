"""Particle form factors P(q), normalised to P(0) = 1.

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
