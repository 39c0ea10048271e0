"""Scattering of an arbitrary arrangement of particles (Debye formula).

I(q) = Σᵢ Σⱼ fᵢ fⱼ sin(q rᵢⱼ)/(q rᵢⱼ) for identical scatterers (f = 1 here; multiply by a
particle form factor afterwards). The O(N²) pair distances are histogrammed once, so each
q costs O(bins): I(q) = N + 2 Σ_b n_b sinc(q r_b).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist

ARRANGEMENTS = ("gas", "aggregate", "cluster")


def pair_distance_histogram(positions: np.ndarray, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) positions (Å) → (bin centres r_b, pair counts n_b) over i < j."""
    d = pdist(positions)
    nbins = max(1, int(np.ceil(d.max() / bin_width)) + 1)
    counts, edges = np.histogram(d, bins=nbins, range=(0.0, nbins * bin_width))
    return 0.5 * (edges[1:] + edges[:-1]), counts.astype(np.float64)


def debye_intensity(q: np.ndarray, positions: np.ndarray, bin_width: float | None = None) -> np.ndarray:
    """Debye-formula intensity per particle, I(q)/N, for point scatterers at ``positions``.

    Args:
        q: (M,) Å⁻¹. positions: (N, 3) Å. bin_width: pair-distance histogram bin (Å);
            default a tenth of the smallest period resolved, 0.1·π/q_max.
    Returns:
        (M,) float64, → N at q → 0 (forward scattering of N coherent points), → 1 at large q.
    """
    q = np.asarray(q, dtype=np.float64)
    if bin_width is None:
        bin_width = 0.1 * np.pi / q.max()
    r, n = pair_distance_histogram(positions, bin_width)
    occupied = n > 0  # empty bins add nothing; bin centres are > 0, so sin(qr)/qr needs no guard at r = 0
    r, n = r[occupied], n[occupied]
    qr = np.outer(q, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.sin(qr)
        kernel /= qr
    kernel[qr == 0] = 1.0  # q = 0: sin(qr)/qr → 1
    return (len(positions) + 2.0 * (kernel @ n)) / len(positions)


def random_gas(rng: np.random.Generator, num: int, radius: float, box: float) -> np.ndarray:
    """Uniform random centres in a sphere of radius ``box`` (Å), no overlap control (dilute)."""
    v = rng.normal(size=(num, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * box * rng.random(num)[:, None] ** (1 / 3)


def random_aggregate(rng: np.random.Generator, num: int, step: float) -> np.ndarray:
    """A branched random-walk aggregate (mass-fractal-like, D ≈ 2): each particle sticks at
    distance ``step`` to a randomly chosen earlier one."""
    pos = np.zeros((num, 3))
    for i in range(1, num):
        d = rng.normal(size=3)
        pos[i] = pos[rng.integers(i)] + step * d / np.linalg.norm(d)
    return pos


def lattice_cluster(rng: np.random.Generator, lattice: str, a: float, cluster_radius: float,
                    displacement: float) -> np.ndarray:
    """Points of a BCC/FCC/SC lattice (constant ``a``, Å) inside a sphere, each displaced by
    Gaussian noise of r.m.s. ``displacement`` (Å) per axis (thermal/frozen disorder)."""
    basis = {"SC": [(0, 0, 0)], "BCC": [(0, 0, 0), (0.5, 0.5, 0.5)],
             "FCC": [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]}[lattice]
    n = int(np.ceil(cluster_radius / a)) + 1
    grid = np.stack(np.meshgrid(*(np.arange(-n, n + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = (grid[:, None, :] + np.asarray(basis)[None]).reshape(-1, 3) * a
    pts = pts[np.linalg.norm(pts, axis=1) <= cluster_radius]
    return pts + rng.normal(scale=displacement, size=pts.shape)
