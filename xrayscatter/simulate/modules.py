"""Scattering modules: each draws its own random parameters and returns *pieces* of the image.

A module is a function ``(rng, maps, q_range) -> (record, pieces)``, or ``None`` when nothing
physical of its kind can be seen with this run's detector set-up:
- ``maps`` is the run's :class:`~xrayscatter.simulate.runs.RunMaps` (q, χ, profile grid);
- ``q_range`` = (q_lo, q_hi), the q range visible outside the beamstop, computed from the
  native geometry (the same at every image size);
- ``record`` is the JSON-able parameter record; its physical values (sizes in Å, q in Å⁻¹,
  widths in mm on the detector) never depend on the image size, and the number of random
  numbers a module takes never does either (rendering at the image's pixels comes after).

Sizes are drawn from physical ranges per mode (SAXS: nanoparticle superlattices, mesophases,
colloids; WAXS: atomic and molecular crystals, molecules, amorphous halos), then conditioned on
the feature being visible: what a scientist does when choosing the detector distance for a sample.

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
    return float(np.exp(rng.uniform(*np.log(_sub_window(q_range, lo_frac, hi_frac)))))


def _sub_window(q_range, lo_frac: float, hi_frac: float) -> tuple[float, float]:
    """The part of the visible range between fractions of its log-extent."""
    lo, hi = np.log(q_range[0]), np.log(q_range[1])
    return float(np.exp(lo + lo_frac * (hi - lo))), float(np.exp(lo + hi_frac * (hi - lo)))


def _pick_visible(rng, options: dict, window: tuple[float, float]):
    """Physical draw conditioned on being visible: what a scientist puts on a detector set up for it.

    ``options`` maps a class name to (prior weight, q_lo, q_hi): the q range (Å⁻¹) of the feature
    over the class's physical size range, log-uniform in size (hence in q). Drawing from the prior
    and redrawing until the feature lands in ``window`` is the same as choosing a class with
    probability ∝ weight × (visible fraction of its log-range) and drawing log-uniformly over the
    visible part; done that way it always takes exactly two random numbers.

    Returns:
        (class name, q) or None when no class can be seen in this window.
    """
    names, weights, parts = [], [], []
    w_lo, w_hi = window
    for name, (weight, lo, hi) in options.items():
        a, b = max(lo, w_lo), min(hi, w_hi)
        if b > a * (1 + 1e-9):
            names.append(name)
            weights.append(weight * np.log(b / a) / np.log(hi / lo))
            parts.append((a, b))
    u_class, u_q = rng.random(), rng.random()
    if not names:
        return None
    cdf = np.cumsum(weights) / np.sum(weights)
    k = min(int(np.searchsorted(cdf, u_class, side="right")), len(names) - 1)
    a, b = parts[k]
    return names[k], float(np.exp(np.log(a) + u_q * np.log(b / a)))


def _instrument_fwhm(rng, maps, q: float) -> tuple[float, float]:
    """Ring broadening by beam size and divergence at the detector and the detector's point spread:
    a FWHM of 0.1–0.5 mm on the detector (focused synchrotron beams to collimated lab beams),
    as Δq at ``q``. Returns (Δq in Å⁻¹, the width in mm)."""
    width_mm = _log_uniform(rng, 0.1, 0.5)
    return float(maps.geometry.dq_dr(q) * width_mm * 1e-3), width_mm


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


# --------------------------------------------------------------------------- physical sizes
# Nearest-neighbour distance d_nn (Å) between lattice sites: (prior weight, d_nn min, d_nn max).
# SAXS: ordered soft matter and nanoparticle assemblies.
#   BCC/FCC/HCP/SC: nanocrystal superlattices (Au, PbS, Fe₃O₄ cores with ligand shells: 40–250 Å),
#   DNA-linked particle lattices (up to ~800 Å), block-copolymer spherical micelles (BCC/FCC, 200–600 Å);
#   DIA: DNA-origami diamond lattices (hundreds of Å).
#   HEX: 2-D hexagonal cylinders: MCM-41 (a ≈ 40–45 Å), SBA-15 (a ≈ 100–120 Å),
#        block copolymers (200–600 Å).
#   LAM: surfactant and lipid bilayers (30–70 Å; silver behenate d = 58.38 Å),
#        block-copolymer lamellae (100–600 Å).
SAXS_LATTICES = {"BCC": (0.27, 40.0, 800.0), "FCC": (0.25, 40.0, 800.0), "SC": (0.10, 40.0, 600.0),
                 "DIA": (0.06, 80.0, 800.0), "HCP": (0.08, 40.0, 800.0), "HEX": (0.12, 35.0, 600.0),
                 "LAM": (0.12, 30.0, 600.0)}
# WAXS: atomic and molecular crystals (room-temperature lattice constants, e.g. the pyFAI calibrants):
#   BCC: Fe 2.48, Cr 2.50, W/Mo 2.73, Na 3.72, K 4.61 Å; plastic crystals (succinonitrile ≈ 5.5 Å).
#   FCC: Ni 2.49, Cu 2.55, Pt 2.77, Al 2.86, Au/Ag 2.88 Å; rock-salt site lattice (NaCl 3.99, KCl 4.45 Å);
#        rare-gas solids 3.8–4.4 Å; C₆₀ 10.0 Å.
#   SC:  α-Po 3.35, perovskites 3.9–4.2, LaB₆ 4.16, CsCl-type 4.1–4.6 Å (site lattice).
#   DIA: Si 2.35, Ge/GaAs 2.45, InSb 2.81 Å (diamond itself, 1.54 Å, is left out: no WAXS d_nn < 2.2 Å).
#   HCP: Co 2.51, Zn 2.66, Ti 2.95, Mg 3.21, Zr 3.23, Y 3.65 Å.
#   HEX: hexagonal rotator phases of alkanes and polyethylene (a ≈ 4.8 Å), columnar liquid crystals (15–40 Å).
#   LAM: graphite and turbostratic carbon (3.35–3.6 Å), clays (10–20 Å), smectics and soaps (20–60 Å).
WAXS_LATTICES = {"BCC": (0.27, 2.45, 8.0), "FCC": (0.25, 2.45, 10.5), "SC": (0.10, 3.3, 6.5),
                 "DIA": (0.06, 2.35, 2.81), "HCP": (0.08, 2.5, 3.7), "HEX": (0.12, 4.8, 40.0),
                 "LAM": (0.12, 3.3, 60.0)}
# Atoms on the sites of WAXS crystals with d_nn below MOLECULAR_NN (Cromer–Mann factors); larger
# spacings are molecular crystals, whose sites scatter as a molecule (Guinier, Rg ≈ 0.25–0.4 d_nn).
ELEMENTS = {"BCC": ("Fe", "W", "Na", "K"), "FCC": ("Al", "Ni", "Cu", "Ag", "Pt", "Au"), "SC": ("Ti", "Cu", "Ag"),
            "DIA": ("Si", "Ge"), "HCP": ("Mg", "Ti", "Zn")}
MOLECULAR_NN = 4.7
# Sphere radii (Å): SAXS nanoparticles, micelles, proteins and colloids; WAXS molecules and small
# clusters (C₆₀ 3.5 Å, Au₂₅ ≈ 5 Å) up to micelles and proteins whose form factor reaches into WAXS.
SPHERE_RADIUS = {"SAXS": (10.0, 500.0), "WAXS": (3.5, 60.0)}
# Amorphous halos: centre q₀ (Å⁻¹) of the first sharp diffraction peak or correlation peak.
HALOS = {
    "SAXS": {"correlation peak": (1.0, 2 * np.pi / 1000, 2 * np.pi / 30)},  # microemulsions, ionomers: d 30–1000 Å
    "WAXS": {"polymer/organic": (0.50, 1.2, 1.6),  # PE melt 1.37, PS 1.4, PMMA ≈ 1.25 Å⁻¹; organic liquids
             "water": (0.15, 1.9, 2.1),  # liquid water's first peak ≈ 2.0 Å⁻¹
             "oxide glass": (0.10, 1.5, 2.2),  # silica ≈ 1.55, borates, phosphates
             "metallic glass": (0.10, 2.4, 3.0),  # Zr/Pd/Fe-based glasses
             "pre-peak": (0.15, 0.5, 1.0)},  # polystyrene "polymerisation" peak ≈ 0.7, ionic liquids ≈ 0.8–1.0
}


def _lattice_options(mode: str, weights_only: bool = False) -> dict:
    """{lattice: (weight, q₁ lo, q₁ hi)} over the physical d_nn range of ``mode``."""
    table = SAXS_LATTICES if mode == "SAXS" else WAXS_LATTICES
    out = {}
    for lattice, (weight, nn_lo, nn_hi) in table.items():
        a_lo, a_hi = nn_lo / lattices.NN_OVER_A[lattice], nn_hi / lattices.NN_OVER_A[lattice]
        out[lattice] = (weight, lattices.first_peak_q(lattice, a_hi), lattices.first_peak_q(lattice, a_lo))
    return out


def _site_factor(rng, q, mode: str, lattice: str, a: float, d_nn: float):
    """What sits on each lattice site: (Bragg-peak factor, powder diffuse factor, record).

    SAXS: polydisperse spheres on 3-D lattices (R = 0.25–0.48 d_nn, within 10–500 Å), long
    cylinders on the 2-D hexagonal lattice (cross-section (2J₁(qR)/qR)², R = 0.2–0.45 a; powder
    diffuse π/(qL)·(2J₁/qR)², i.e. ∝ cross-section/q), layers in a lamellar stack (slab
    [sin(qt/2)/(qt/2)]², t = 0.2–0.8 d; powder diffuse ∝ slab/q²). WAXS: atoms (Cromer–Mann f²)
    or molecules (Guinier) on 3-D lattices, molecular columns and layers on HEX and LAM.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_q = np.where(q > 0, 1.0 / np.maximum(q, 1e-300), 0.0)
    if lattice == "HEX":
        radius = a * rng.uniform(0.2, 0.45) if mode == "SAXS" else a * rng.uniform(0.3, 0.45)
        poly = rng.uniform(0.03, 0.12)
        ff = form_factors.polydisperse_cylinder_cross_section(q, radius, poly)
        return ff, ff * inv_q, {"form_factor": "cylinder", "radius": round(radius, 4), "polydispersity": round(poly, 4)}
    if lattice == "LAM":
        thickness = a * (rng.uniform(0.2, 0.8) if mode == "SAXS" else rng.uniform(0.3, 0.7))
        ff = form_factors.slab_form_factor(q, thickness)
        return ff, ff * inv_q**2, {"form_factor": "slab", "thickness": round(thickness, 4)}
    if mode == "SAXS":
        radius = float(np.clip(d_nn * rng.uniform(0.25, 0.48), SPHERE_RADIUS["SAXS"][0], SPHERE_RADIUS["SAXS"][1]))
        poly = rng.uniform(0.03, 0.12)
        ff = form_factors.polydisperse_sphere_form_factor(q, radius, poly)
        return ff, ff, {"form_factor": "sphere", "radius": round(radius, 4), "polydispersity": round(poly, 4)}
    if d_nn < MOLECULAR_NN:
        element = str(rng.choice(ELEMENTS[lattice]))
        ff = form_factors.atomic_form_factor_squared(q, element)
        return ff, ff, {"form_factor": "atomic", "element": element}
    rg = d_nn * rng.uniform(0.25, 0.4)
    ff = diffuse.guinier(q, rg)
    return ff, ff, {"form_factor": "molecular", "rg": round(rg, 4)}


def lattice_module(rng, maps, q_range):
    """Powder rings of a lattice (BCC, FCC, SC, diamond, HCP, 2-D hexagonal, lamellar), isotropic,
    spotty or oriented, at physical sizes for the run's mode (SAXS superlattices and mesophases,
    WAXS atomic and molecular crystals) that put the first ring in the visible window."""
    q = maps.q_grid
    mode = maps.params["mode"]
    picked = _pick_visible(rng, _lattice_options(mode), _sub_window(q_range, 0.0, 0.7))
    if picked is None:
        return None
    lattice, q_first = picked
    a = lattices.lattice_constant(lattice, q_first)
    d_nn = lattices.nearest_neighbour_distance(lattice, a)
    # Peak widths: grain size (Scherrer), paracrystalline/strain growth, instrument.
    if mode == "SAXS":
        grain = d_nn * _log_uniform(rng, 8.0, 300.0)  # ordered domains of 8–300 neighbour spacings
        growth = rng.uniform(0.0, 0.025)
        dw_sigma = d_nn * rng.uniform(0.01, 0.06)  # r.m.s. displacement 1–6 % of d_nn (paracrystals)
    else:
        grain = _log_uniform(rng, 60.0, 3000.0)  # crystallites of 6 nm to 0.3 µm
        growth = rng.uniform(0.0, 0.01)  # micro-strain up to 1 %
        dw_sigma = rng.uniform(0.04, 0.2)  # thermal r.m.s. displacement (Å): B = 8π²σ² ≈ 0.13–3.2 Å²
    instrument, instrument_mm = _instrument_fwhm(rng, maps, q_first)
    fwhm_0 = float(np.hypot(lattices.scherrer_fwhm(grain), instrument))
    ff, ff_diffuse, ff_record = _site_factor(rng, q, mode, lattice, a, d_nn)
    shape = str(rng.choice(["gaussian", "lorentzian", "pseudo-voigt"]))
    peaks, dw_diffuse, rings = lattices.powder_profile(
        q, lattice, q_first, fwhm_0=fwhm_0, fwhm_growth=growth, debye_waller_sigma=dw_sigma,
        form_factor=ff, shape=shape, max_ratio=float(rng.uniform(2.5, 5.0)), q_limit=maps.detector_q[1],
        pixel_dq=maps.pixel_dq, diffuse_form_factor=ff_diffuse)
    if not rings:
        return None
    mode_kind = str(rng.choice(["powder", "spotty", "oriented"], p=[0.55, 0.25, 0.2]))
    record = {"module": "lattice", "lattice": lattice, "q_first": round(q_first, 6), "a": round(a, 4),
              "d_nn": round(d_nn, 4), "grain_size": round(grain, 3), "instrument_fwhm_mm": round(instrument_mm, 4),
              "fwhm_0": round(fwhm_0, 7), "fwhm_growth": round(growth, 5), "dw_sigma": round(dw_sigma, 4),
              "peak_shape": shape, "mode": mode_kind, "num_reflections": len(rings), **ff_record}
    diffuse_weight = rng.uniform(0.0, 1.0) * max(r.height for r in rings) / max(dw_diffuse.max(), 1e-30) * 0.05
    pieces = [Piece("diffuse_low", profile=dw_diffuse * diffuse_weight)] if diffuse_weight > 0 else []
    if mode_kind == "spotty":
        grains = _log_uniform(rng, 1.5, 40.0)
        spot_native_px = rng.uniform(0.8, 3.0)  # spot σ: beam size and grain mosaic, native pixels
        refls = lattices.reflections(lattice, 6.0)  # a prefix-compatible superset of the rendered list
        multiplicity = np.array([refls[r.index].multiplicity for r in rings])
        n_spots = rng.poisson(grains * multiplicity / 2.0) + 1
        # on the image: at least about a pixel (a spot smaller than a binned pixel lands in one)
        sigma_px = float(np.hypot(spot_native_px / maps.binning, 0.45))
        img, placed = texture.spotty_ring_image(maps.geometry, maps.shape, np.array([r.q for r in rings]),
                                                np.array([r.area for r in rings]), n_spots, sigma_px, rng,
                                                maps.params.get("polarization", 0.98))
        record.update(grains=round(grains, 3), spot_sigma_native_px=round(spot_native_px, 3))
        pieces.append(Piece("spots", image=img, rings=rings, info={"polycrystalline": True, "num_spots": placed}))
    else:
        angular, crest, tex = _angular(rng, maps, 1.0 if mode_kind == "oriented" else 0.0)
        record.update(tex)
        pieces.append(Piece("ring", profile=peaks, angular=angular, rings=rings, crest_factor=crest))
    return record, pieces


def sphere_module(rng, maps, q_range):
    """Polydisperse spheres, optionally interacting (Percus–Yevick hard-sphere S(q)), with radii
    physical for the mode (:data:`SPHERE_RADIUS`) whose first form-factor minimum is visible."""
    q = maps.q_grid
    r_lo, r_hi = SPHERE_RADIUS[maps.params["mode"]]
    picked = _pick_visible(rng, {"sphere": (1.0, 4.493 / r_hi, 4.493 / r_lo)}, _sub_window(q_range, 0.0, 0.9))
    if picked is None:
        return None
    radius = 4.493 / picked[1]  # the first minimum of P(q) at qR = 4.493
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
        # S(q) itself goes to the tag rule, which asks whether the crest survives with S set to 1
        info = {"sf_q": float(q[k]), "sf_max": float(s_q[k]), "sf_bump": bump, "sf_profile": (q, s_q)}
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
    """Amorphous halo: a broad ring, Δq/q₀ ≈ 0.25–0.7, at q₀ physical for the mode (:data:`HALOS`:
    WAXS polymer and organic halos at 1.2–1.6 Å⁻¹, water, glasses, pre-peaks; SAXS correlation
    peaks of microemulsions and ionomers)."""
    q = maps.q_grid
    picked = _pick_visible(rng, HALOS[maps.params["mode"]], _sub_window(q_range, 0.05, 0.9))
    if picked is None:
        return None
    kind, q0 = picked
    width = rng.uniform(0.25, 0.7)
    prof = diffuse.amorphous_halo(q, q0, width, rng.uniform(0.0, 0.6))
    angular, crest, tex = _angular(rng, maps, 0.25)
    if angular is not None:  # halos are only weakly oriented
        eta = rng.uniform(0.1, 0.5)
        angular = texture.wrapped_cauchy_arcs(maps.chi, 2, eta, tex["chi0"])
        tex["eta"], crest = round(eta, 4), texture.arc_crest_factor(eta)
    ring = RingPeak(q0, width * q0, 1.0, 1, "halo", 0)
    return ({"module": "halo", "kind": kind, "q0": round(q0, 6), "relative_width": round(width, 4), **tex},
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
        instrument, _ = _instrument_fwhm(rng, maps, q0)
        fwhm = float(np.hypot(q0 * _log_uniform(rng, 0.004, 0.04), instrument))
        amp = _log_uniform(rng, 0.1, 1.0)
        orders = range(1, int(rng.integers(2, 5)) + 1) if with_orders else [1]
        decay = rng.uniform(0.15, 0.7)
        for n in orders:
            h = amp * decay ** (n - 1)
            width = fwhm * np.sqrt(n)
            box = float(maps.pixel_dq(n * q0))
            shape = lattices.pixel_integrated_peak(q, n * q0, width, "gaussian", box)
            crest = float(lattices.pixel_integrated_peak(np.array([n * q0]), n * q0, width, "gaussian", box)[0])
            total += h / crest * shape
            rings.append(RingPeak(n * q0, lattices.rendered_fwhm(width, box), h, n, f"adhoc:{i}", n - 1,
                                  area=h / crest))
        centers.append(round(q0, 6))
    angular, crest, tex = _angular(rng, maps, 0.3)
    return ({"module": "adhoc_rings", "centers": centers, "with_orders": with_orders, **tex},
            [Piece("ring", profile=total, angular=angular, rings=rings, crest_factor=crest)])


def adhoc_spots_module(rng, maps, q_range):
    """Ad-hoc isolated spots (single-crystal-like reflections, specular spots), at positions given as
    fractions of the detector so that they are the same spots at every image size."""
    from scipy.ndimage import gaussian_filter

    h, w = maps.shape
    n = int(rng.integers(2, 25))
    img = np.zeros((h, w), dtype=np.float64)
    fy, fx = rng.random(n), rng.random(n)
    np.add.at(img, ((fy * h).astype(int), (fx * w).astype(int)), rng.exponential(size=n))
    sigma_native = rng.uniform(1.0, 8.0)
    img = gaussian_filter(img, float(np.hypot(sigma_native / maps.binning, 0.45)), mode="constant").astype(np.float32)
    return {"module": "adhoc_spots", "count": n, "sigma_native_px": round(sigma_native, 3)}, [Piece("other", image=img)]


# Debye-formula clusters: nanoparticle clusters (SAXS, d_nn 40–800 Å, spheres on the sites) or
# metal nanocrystals of a few hundred atoms (WAXS, d_nn as the metals above, atoms on the sites).
DEBYE_CLUSTERS = {"SAXS": {"SC": (0.33, 40.0, 600.0), "BCC": (0.33, 40.0, 800.0), "FCC": (0.34, 40.0, 800.0)},
                  "WAXS": {"SC": (0.2, 3.3, 4.6), "BCC": (0.4, 2.45, 4.7), "FCC": (0.4, 2.45, 3.6)}}


def debye_module(rng, maps, q_range):
    """Scattering of an arbitrary arrangement of particles by the Debye formula:
    a dilute gas, a branched aggregate, or a small disordered lattice cluster."""
    q = maps.q_grid
    mode = maps.params["mode"]
    arrangement = str(rng.choice(debye.ARRANGEMENTS, p=[0.3, 0.35, 0.35]))
    q_lo_full, q_hi_full = maps.detector_q
    coarse = np.geomspace(max(q_lo_full, q_range[0] * 0.5, 1e-5), max(q_hi_full, q_range[1]), 384)
    if arrangement == "cluster":
        options = {}
        for lat, (weight, nn_lo, nn_hi) in DEBYE_CLUSTERS[mode].items():
            a_lo, a_hi = nn_lo / lattices.NN_OVER_A[lat], nn_hi / lattices.NN_OVER_A[lat]
            options[lat] = (weight, lattices.first_peak_q(lat, a_hi), lattices.first_peak_q(lat, a_lo))
        picked = _pick_visible(rng, options, _sub_window(q_range, 0.05, 0.6))
        if picked is None:
            return None
        lattice, q_first = picked
        a = lattices.lattice_constant(lattice, q_first)
        d_nn = lattices.nearest_neighbour_distance(lattice, a)
        n_per_cell = {"SC": 1, "BCC": 2, "FCC": 4}[lattice]
        n_target = rng.uniform(300, 1200)
        cluster_radius = a * (3 * n_target / (4 * np.pi * n_per_cell)) ** (1 / 3)
        disp = a * rng.uniform(0.02, 0.12) if mode == "SAXS" else rng.uniform(0.05, 0.25)
        pos = debye.lattice_cluster(rng, lattice, a, cluster_radius, disp)
        record = {"lattice": lattice, "a": round(a, 4), "d_nn": round(d_nn, 4),
                  "cluster_radius": round(cluster_radius, 4), "displacement": round(disp, 4)}
        if mode == "SAXS":
            particle = float(np.clip(d_nn * rng.uniform(0.25, 0.48), *SPHERE_RADIUS["SAXS"]))
            site_ff = lambda x: form_factors.sphere_form_factor(x, particle)  # noqa: E731
            record["particle_radius"] = round(particle, 4)
        else:
            element = str(rng.choice(ELEMENTS[lattice]))
            site_ff = lambda x: form_factors.atomic_form_factor_squared(x, element)  # noqa: E731
            record["element"] = element
    else:
        r_lo, r_hi = SPHERE_RADIUS[mode]
        picked = _pick_visible(rng, {"particle": (1.0, 4.493 / r_hi, 4.493 / r_lo)}, _sub_window(q_range, 0.3, 1.0))
        if picked is None:
            return None
        particle = 4.493 / picked[1]
        if arrangement == "gas":
            n = int(rng.integers(50, 300))
            pos = debye.random_gas(rng, n, particle, particle * rng.uniform(6, 15) * n ** (1 / 3))
        else:
            n = int(rng.integers(100, 600))
            pos = debye.random_aggregate(rng, n, 2 * particle * rng.uniform(1.0, 1.2))
        site_ff = lambda x: form_factors.sphere_form_factor(x, particle)  # noqa: E731
        record = {"particle_radius": round(particle, 4)}
    i_coarse = debye.debye_intensity(coarse, pos) * site_ff(coarse)
    prof = np.interp(q, coarse, i_coarse)
    record = {"module": "debye", "arrangement": arrangement, "num_particles": int(len(pos)), **record}
    rings = []
    if arrangement == "cluster":
        # The cluster's Bragg-like peaks, as seen in the computed profile: crest above the
        # smooth envelope (the same curve without the order, i.e. N·P(q) → 1·P(q) per particle).
        envelope = site_ff(q)
        excess = prof - envelope
        for i, refl in enumerate(lattices.reflections(lattice, 4.0)):
            qk = q_first * refl.ratio
            if qk > q_hi_full:
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
