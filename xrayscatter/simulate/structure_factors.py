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
