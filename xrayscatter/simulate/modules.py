"""Scattering modules: each draws its own random parameters and returns *pieces* of the image.

A module is a function ``(rng, maps, q_range) -> (record, pieces)``:
- ``maps`` is the run's :class:`~xrayscatter.simulate.runs.RunMaps` (q, χ, profile grid);
- ``q_range`` = (q_lo, q_hi), the q range visible on the image outside the beamstop, so
  that features land where a real experiment would have put the detector;
- ``record`` is the JSON-able parameter record;
- ``pieces`` carry the intensity (a 1-D profile on ``maps.q_grid`` with an optional angular
  weight, or a direct image) tagged with a *role* that the tag rules read
  (``ring``, ``spots``, ``halo``, ``diffuse_low``, ``diffuse_high``, ``other``).

Units are arbitrary here: the generator scales each module to counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

from xrayscatter.simulate import debye, diffuse, form_factors, lattices, structure_factors, texture
from xrayscatter.simulate.lattices import RingPeak


@dataclass
class Piece:
    role: str
    profile: np.ndarray | None = None  # (G,) on maps.q_grid
    angular: np.ndarray | None = None  # (H, W) multiplier (mean 1 over χ), None = isotropic
    image: np.ndarray | None = None  # (H, W) direct image (spots), replaces profile
    rings: list[RingPeak] = field(default_factory=list)  # crest heights in profile units
    crest_factor: float = 1.0  # max of ``angular`` (arcs)
    info: dict = field(default_factory=dict)  # role-specific evidence for the tag rules


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _q_in_range(rng, q_range, lo_frac=0.0, hi_frac=1.0):
    """A q drawn log-uniformly inside a sub-range of the visible range."""
    lo, hi = q_range
    a = np.log(lo) + lo_frac * (np.log(hi) - np.log(lo))
    b = np.log(lo) + hi_frac * (np.log(hi) - np.log(lo))
    return float(np.exp(rng.uniform(a, b)))


def _instrument_fwhm(rng, maps) -> float:
    """Ring broadening by beam size, divergence and pixel size: 1–2.5 pixels of q."""
    return maps.q_step_px * rng.uniform(1.0, 2.5)


def _angular(rng, maps, p_oriented: float):
    """Isotropic (None) or oriented arcs, with its record."""
    if rng.random() >= p_oriented:
        return None, 1.0, {"texture": "isotropic"}
    symmetry = int(rng.choice([2, 2, 2, 4, 6]))
    eta = rng.uniform(0.3, 0.92)
    chi0 = float(rng.choice([0.0, np.pi / 2])) if rng.random() < 0.6 else rng.uniform(0, np.pi)
    weight = texture.wrapped_cauchy_arcs(maps.chi, symmetry, eta, chi0)
    return weight, texture.arc_crest_factor(eta), {"texture": "oriented", "symmetry": symmetry,
                                                   "eta": round(eta, 4), "chi0": round(chi0, 4)}


def lattice_module(rng, maps, q_range):
    """Powder rings of a lattice (BCC, FCC, SC, diamond, HCP, 2-D hexagonal, lamellar), isotropic, spotty or oriented."""
    q = maps.q_grid
    lattice = str(rng.choice(lattices.LATTICES, p=[0.27, 0.25, 0.10, 0.06, 0.08, 0.12, 0.12]))
    q_first = _q_in_range(rng, q_range, 0.0, 0.7)
    fwhm_0 = float(np.hypot(q_first * _log_uniform(rng, 0.003, 0.05), _instrument_fwhm(rng, maps)))
    growth = rng.uniform(0.0, 0.025)
    dw_sigma = rng.uniform(0.02, 0.45) / q_first  # σ·q₁ in [0.02, 0.45]
    first_n = lattices.first_peak_n(lattice)
    if lattice == "HEX":
        a = 4 * np.pi / (np.sqrt(3) * q_first)  # 2-D hexagonal: q₁₀ = 4π/(√3·a)
    elif lattice == "LAM":
        a = 2 * np.pi / q_first  # lamellar period d
    else:
        a = 2 * np.pi * np.sqrt(first_n) / q_first
    if rng.random() < 0.7:  # nanoparticle superlattice: spheres on the lattice sites
        radius = a * rng.uniform(0.12, 0.3)
        ff = form_factors.polydisperse_sphere_form_factor(q, radius, rng.uniform(0.03, 0.12))
        ff_record = {"form_factor": "sphere", "radius": round(radius, 4)}
    else:  # atoms/molecules: a smooth Gaussian scattering factor
        q_f = q_first * rng.uniform(2.0, 6.0)
        ff = np.exp(-((q / q_f) ** 2))
        ff_record = {"form_factor": "gaussian", "q_f": round(q_f, 5)}
    shape = str(rng.choice(["gaussian", "lorentzian", "pseudo-voigt"]))
    peaks, dw_diffuse, rings = lattices.powder_profile(
        q, lattice, q_first, fwhm_0=fwhm_0, fwhm_growth=growth, debye_waller_sigma=dw_sigma,
        form_factor=ff, shape=shape, max_ratio=float(rng.uniform(2.5, 5.0)))
    if not rings:
        return None
    mode = str(rng.choice(["powder", "spotty", "oriented"], p=[0.55, 0.25, 0.2]))
    record = {"module": "lattice", "lattice": lattice, "q_first": round(q_first, 6), "a": round(a, 4),
              "fwhm_0": round(fwhm_0, 7), "fwhm_growth": round(growth, 5), "dw_sigma": round(dw_sigma, 4),
              "peak_shape": shape, "mode": mode, "num_reflections": len(rings), **ff_record}
    diffuse_weight = rng.uniform(0.0, 1.0) * max(r.height for r in rings) / max(dw_diffuse.max(), 1e-30) * 0.05
    pieces = [Piece("diffuse_low", profile=dw_diffuse * diffuse_weight)] if diffuse_weight > 0 else []
    if mode == "spotty":
        grains = _log_uniform(rng, 1.5, 40.0)
        sigma_px = rng.uniform(0.6, 1.6)
        g = maps.geometry
        ring_q = np.array([r.q for r in rings])
        radii = np.nan_to_num(g.radius_px_from_q(ring_q), nan=0.0)
        # Integrated counts of each ring over its full circle: ∫I dq · (2πr) · (dr/dq), pixels per unit q.
        dr_dq = 1.0 / np.maximum(g.q_from_radius_px(radii + 0.5) - g.q_from_radius_px(np.maximum(radii - 0.5, 0)), 1e-12)
        refls = lattices.reflections(lattice, 6.0)  # a prefix-compatible superset of the rendered list
        multiplicity = np.array([refls[r.index].multiplicity for r in rings])
        areas = np.array([r.height * r.fwhm * 1.064 for r in rings])  # Gaussian area ≈ 1.064·h·FWHM
        circles = 2 * np.pi * radii
        totals = areas * circles * dr_dq
        n_spots = rng.poisson(grains * multiplicity / 2.0) + 1
        img, placed = texture.spotty_ring_image(maps.q, maps.q_step_px, ring_q, totals, circles, n_spots, sigma_px, rng)
        record.update(grains=round(grains, 3), spot_sigma_px=round(sigma_px, 3))
        pieces.append(Piece("spots", image=img, rings=rings, info={"polycrystalline": True, "num_spots": placed}))
    else:
        angular, crest, tex = _angular(rng, maps, 1.0 if mode == "oriented" else 0.0)
        record.update(tex)
        pieces.append(Piece("ring", profile=peaks, angular=angular, rings=rings, crest_factor=crest))
    return record, pieces


def sphere_module(rng, maps, q_range):
    """Polydisperse spheres, optionally interacting (Percus–Yevick hard-sphere S(q))."""
    q = maps.q_grid
    q_min1 = _q_in_range(rng, q_range, 0.0, 0.9)  # where the first form-factor minimum falls
    radius = 4.493 / q_min1
    poly = rng.uniform(0.03, 0.25)
    intensity = form_factors.polydisperse_sphere_form_factor(q, radius, poly)
    record = {"module": "sphere", "radius": round(radius, 4), "polydispersity": round(poly, 4)}
    info = {}
    if rng.random() < 0.7:
        phi = rng.uniform(0.1, 0.45)
        r_hs = radius * rng.uniform(1.0, 1.3)
        s_q = structure_factors.structure_factor_percus_yevick(q, r_hs, phi)
        intensity = intensity * s_q
        k = int(np.argmax(s_q))
        # Is the correlation peak a bump of P·S itself (not swallowed by the falling P(q))?
        peaks_found, _ = find_peaks(np.log(np.maximum(intensity, 1e-300)), prominence=0.05)
        bump = bool(np.any(np.abs(q[peaks_found] - q[k]) < 0.35 * q[k]))
        info = {"sf_q": float(q[k]), "sf_max": float(s_q[k]), "sf_bump": bump}
        record.update(structure_factor="percus-yevick", volume_fraction=round(phi, 4), hard_sphere_radius=round(r_hs, 4))
    return record, [Piece("diffuse_low", profile=intensity, info=info)]


def diffuse_low_module(rng, maps, q_range):
    """Smooth low-q scattering: power law, Guinier, Ornstein–Zernike, Debye–Bueche (or a sum)."""
    q = maps.q_grid
    kind = str(rng.choice(["power_law", "guinier", "ornstein_zernike", "debye_bueche", "guinier_porod"]))
    q_ref = q_range[0]
    if kind == "power_law":
        p = rng.uniform(-4.5, -1.8)
        prof = diffuse.power_law(q, p, q_ref)
        record = {"exponent": round(p, 4)}
    elif kind == "guinier":
        rg = rng.uniform(0.8, 4.0) / q_ref
        prof = diffuse.guinier(q, rg)
        record = {"rg": round(rg, 4)}
    elif kind == "ornstein_zernike":
        xi = _log_uniform(rng, 0.5, 20.0) / q_ref
        prof = diffuse.ornstein_zernike(q, xi)
        record = {"xi": round(xi, 4)}
    elif kind == "debye_bueche":
        a = _log_uniform(rng, 0.5, 10.0) / q_ref
        prof = diffuse.debye_bueche(q, a)
        record = {"a": round(a, 4)}
    else:
        rg = rng.uniform(0.8, 3.0) / q_ref
        p = rng.uniform(-4.2, -2.5)
        prof = diffuse.guinier(q, rg) + 0.01 * diffuse.power_law(q, p, q_ref)
        record = {"rg": round(rg, 4), "exponent": round(p, 4)}
    angular, crest, tex = _angular(rng, maps, 0.25)
    return {"module": "diffuse_low", "form": kind, **record, **tex}, [Piece("diffuse_low", profile=prof, angular=angular)]


def diffuse_high_module(rng, maps, q_range):
    """A broad rise towards high q (thermal diffuse, Compton, disorder)."""
    q = maps.q_grid
    sigma = rng.uniform(0.4, 2.0) / q_range[1]
    prof = diffuse.diffuse_high_q(q, sigma) * (q / q_range[1]) ** rng.uniform(0.0, 1.5)
    angular, crest, tex = _angular(rng, maps, 0.2)
    return {"module": "diffuse_high", "sigma": round(sigma, 5), **tex}, [Piece("diffuse_high", profile=prof, angular=angular)]


def halo_module(rng, maps, q_range):
    """Amorphous halo: a broad ring, Δq/q₀ ≈ 0.25–0.7 (polymer melts and glasses near 1.2–1.5 Å⁻¹ in WAXS)."""
    q = maps.q_grid
    if maps.params["mode"] == "WAXS" and q_range[0] < 1.3 < q_range[1] and rng.random() < 0.6:
        q0 = rng.uniform(max(q_range[0], 0.9), min(q_range[1], 2.2))
    else:
        q0 = _q_in_range(rng, q_range, 0.1, 0.85)
    width = rng.uniform(0.25, 0.7)
    prof = diffuse.amorphous_halo(q, q0, width, rng.uniform(0.0, 0.6))
    angular, crest, tex = _angular(rng, maps, 0.25)
    if angular is not None:  # halos are only weakly oriented
        eta = rng.uniform(0.1, 0.5)
        angular = texture.wrapped_cauchy_arcs(maps.chi, 2, eta, tex["chi0"])
        tex["eta"], crest = round(eta, 4), texture.arc_crest_factor(eta)
    ring = RingPeak(q0, width * q0, 1.0, 1, "halo", 0)
    return ({"module": "halo", "q0": round(q0, 6), "relative_width": round(width, 4), **tex},
            [Piece("halo", profile=prof, angular=angular, rings=[ring], crest_factor=crest)])


def adhoc_rings_module(rng, maps, q_range):
    """Ad-hoc rings (1–4) at arbitrary q, sometimes with higher orders (n·q)."""
    q = maps.q_grid
    n_rings = int(rng.integers(1, 5))
    total = np.zeros_like(q)
    rings = []
    with_orders = bool(rng.random() < 0.35)
    centers = []
    for i in range(n_rings):
        q0 = _q_in_range(rng, q_range, 0.0, 0.55 if with_orders else 0.95)
        fwhm = float(np.hypot(q0 * _log_uniform(rng, 0.004, 0.04), _instrument_fwhm(rng, maps)))
        amp = _log_uniform(rng, 0.1, 1.0)
        orders = range(1, int(rng.integers(2, 5)) + 1) if with_orders else [1]
        decay = rng.uniform(0.15, 0.7)
        for n in orders:
            h = amp * decay ** (n - 1)
            prof = h * np.exp(-4 * np.log(2) * ((q - n * q0) / (fwhm * np.sqrt(n))) ** 2)
            total += prof
            rings.append(RingPeak(n * q0, fwhm * np.sqrt(n), h, n, f"adhoc:{i}", n - 1))
        centers.append(round(q0, 6))
    angular, crest, tex = _angular(rng, maps, 0.3)
    return ({"module": "adhoc_rings", "centers": centers, "with_orders": with_orders, **tex},
            [Piece("ring", profile=total, angular=angular, rings=rings, crest_factor=crest)])


def adhoc_spots_module(rng, maps, q_range):
    """Ad-hoc isolated spots (single-crystal-like reflections, specular spots)."""
    from scipy.ndimage import gaussian_filter

    h, w = maps.shape
    n = int(rng.integers(2, 25))
    img = np.zeros((h, w), dtype=np.float64)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    np.add.at(img, (ys, xs), rng.exponential(size=n))
    sigma = rng.uniform(0.7, 2.5)
    img = gaussian_filter(img, sigma, mode="constant").astype(np.float32)
    return {"module": "adhoc_spots", "count": n, "sigma_px": round(sigma, 3)}, [Piece("other", image=img)]


def debye_module(rng, maps, q_range):
    """Scattering of an arbitrary arrangement of particles by the Debye formula:
    a dilute gas, a branched aggregate, or a small disordered lattice cluster."""
    q = maps.q_grid
    arrangement = str(rng.choice(debye.ARRANGEMENTS, p=[0.3, 0.35, 0.35]))
    coarse = np.geomspace(q[0] if q[0] > 0 else q[1], q[-1], 384)
    if arrangement == "cluster":
        lattice = str(rng.choice(["SC", "BCC", "FCC"]))
        q_first = _q_in_range(rng, q_range, 0.05, 0.6)
        a = 2 * np.pi * np.sqrt(lattices.first_peak_n(lattice)) / q_first
        n_per_cell = {"SC": 1, "BCC": 2, "FCC": 4}[lattice]
        n_target = rng.uniform(300, 1200)
        cluster_radius = a * (3 * n_target / (4 * np.pi * n_per_cell)) ** (1 / 3)
        disp = a * rng.uniform(0.02, 0.12)
        pos = debye.lattice_cluster(rng, lattice, a, cluster_radius, disp)
        particle = a * rng.uniform(0.1, 0.25)
        record = {"lattice": lattice, "a": round(a, 4), "cluster_radius": round(cluster_radius, 4),
                  "displacement": round(disp, 4)}
    else:
        particle = 4.493 / _q_in_range(rng, q_range, 0.3, 1.0)
        if arrangement == "gas":
            n = int(rng.integers(50, 300))
            pos = debye.random_gas(rng, n, particle, particle * rng.uniform(6, 15) * n ** (1 / 3))
        else:
            n = int(rng.integers(100, 600))
            pos = debye.random_aggregate(rng, n, 2 * particle * rng.uniform(1.0, 1.2))
        record = {}
    i_coarse = debye.debye_intensity(coarse, pos) * form_factors.sphere_form_factor(coarse, particle)
    prof = np.interp(q, coarse, i_coarse)
    record = {"module": "debye", "arrangement": arrangement, "num_particles": int(len(pos)),
              "particle_radius": round(particle, 4), **record}
    rings = []
    if arrangement == "cluster":
        # The cluster's Bragg-like peaks, as seen in the computed profile: crest above the
        # smooth envelope (the same curve without the order, i.e. N·P(q) → 1·P(q) per particle).
        envelope = form_factors.sphere_form_factor(q, particle)
        excess = prof - envelope
        for i, refl in enumerate(lattices.reflections(lattice, 4.0)):
            qk = q_first * refl.ratio
            if qk > q[-1]:
                break
            h = float(np.interp(qk, q, excess))
            if h > 0:
                width = 2 * np.pi * 0.9 / (2 * cluster_radius) + q_first * 0.01
                rings.append(RingPeak(qk, width, h, refl.n, f"debye:{lattice}", i))
        return record, [Piece("ring", profile=np.clip(excess, 0, None), rings=rings),
                        Piece("diffuse_low", profile=np.minimum(prof, envelope))]
    return record, [Piece("diffuse_low", profile=prof)]


MODULES = {
    "lattice": (lattice_module, 0.34),
    "sphere": (sphere_module, 0.20),
    "diffuse_low": (diffuse_low_module, 0.12),
    "halo": (halo_module, 0.10),
    "adhoc_rings": (adhoc_rings_module, 0.09),
    "diffuse_high": (diffuse_high_module, 0.08),
    "debye": (debye_module, 0.06),
    "adhoc_spots": (adhoc_spots_module, 0.04),
}
