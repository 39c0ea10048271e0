"""Smooth scattering: diffuse low-q and high-q forms and amorphous halos. 1-D, q in Å⁻¹."""

from __future__ import annotations

import numpy as np


def power_law(q: np.ndarray, exponent: float, q_ref: float) -> np.ndarray:
    """(q/q_ref)^p, p ∈ [−4.5, −1.8] typically (Porod p = −4, mass fractals −1.8 … −3)."""
    return (np.asarray(q, dtype=np.float64) / q_ref) ** exponent


def guinier(q: np.ndarray, radius_of_gyration: float) -> np.ndarray:
    """exp(−q²Rg²/3)."""
    return np.exp(-((np.asarray(q, dtype=np.float64) * radius_of_gyration) ** 2) / 3.0)


def ornstein_zernike(q: np.ndarray, correlation_length: float) -> np.ndarray:
    """1/(1 + q²ξ²): concentration fluctuations with correlation length ξ (Å)."""
    return 1.0 / (1.0 + (np.asarray(q, dtype=np.float64) * correlation_length) ** 2)


def debye_bueche(q: np.ndarray, correlation_length: float) -> np.ndarray:
    """1/(1 + q²a²)²: random two-phase structure with correlation length a (Å)."""
    return 1.0 / (1.0 + (np.asarray(q, dtype=np.float64) * correlation_length) ** 2) ** 2


def diffuse_high_q(q: np.ndarray, sigma: float) -> np.ndarray:
    """A·(1 − exp(−σ²q²)) with A = 1: thermal diffuse / Compton-like rise towards high q."""
    return 1.0 - np.exp(-((np.asarray(q, dtype=np.float64) * sigma) ** 2))


def amorphous_halo(q: np.ndarray, q_center: float, relative_width: float, lorentzian_fraction: float = 0.3) -> np.ndarray:
    """A broad ring (crest = 1) at q₀ with FWHM Δq = relative_width·q₀ (0.3–0.6 for glasses and
    polymer melts): pseudo-Voigt, so the tails fall off slower than a Gaussian's."""
    q = np.asarray(q, dtype=np.float64)
    hw = relative_width * q_center / 2
    gauss = np.exp(-np.log(2) * ((q - q_center) / hw) ** 2)
    lorentz = 1.0 / (1.0 + ((q - q_center) / hw) ** 2)
    return lorentzian_fraction * lorentz + (1 - lorentzian_fraction) * gauss
