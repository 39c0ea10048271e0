"""`xrayscatter bench external`: a trained model on detector files this project's simulator never made.

The models are meant for real beamline data, so a score on the project's own simulator is not
enough. This check writes a set of detector files with physics and instrument code of its own —
**sasmodels** (SasView's model library) for the scattering, numpy for geometry, beamstops, detector
masks, grains and noise; nothing from ``xrayscatter.simulate`` — tags them through ``predict``'s
code path (:func:`xrayscatter.predict.run_predictions`) and reports, per attribute, ROC AUC and
average precision (AP) over the files whose truth is known, with their means (mAP).

Groups (``per_group`` files each; default 30 × 17 = 510 files). Powder patterns are 1-D I(q) from
sasmodels (orientation-averaged by sasmodels for anisotropic shapes), smeared by a pinhole-like
resolution of Δq/q = 0.5–2 % and mapped per pixel by interpolation in log q:

    group           scattering
    sphere          sphere, R 20–150 Å, Schulz polydispersity 8–25 %
    core_shell      core_shell_sphere, polydisperse
    anisotropic     cylinder (R 10–60, L 100–1500 Å) or ellipsoid
    power_law       power_law (exponent 2–4.2) or guinier_porod
    hard_sphere     sphere × hardsphere (φ 0.15–0.5, effective radius 1–2 × R: stabilised particles)
    sf_other        core_shell_sphere or sphere × hardsphere or stickyhardsphere, ± power law
    bcc, fcc        BCC / FCC paracrystal of spheres (dnn 100–500 Å, d_factor 0.05/0.07/0.1), ± power law
    lamellar        lamellar_stack_paracrystal (d 50–400 Å), ± power law
    spotty_saxs     grains of a BCC/FCC superlattice or lamellar stacks: spotty rings (own Ewald-sphere code)
    halo            broad_peak, peak_lorentz or gaussian_peak, Δq/q 0.25–0.6, ± power law
    diffuse_high    a broad rise to high q, A·(1 − exp(−q²/q_r²)), ± power law
    combination     lattice + halo; lamellae + S(q); spheres + halo; lamellae or lattice + high-q rise
    blank           empty cell / buffer: a faint power law (peak 0.5–30 counts)
    waxs_crystal    WAXS: atomic BCC/FCC paracrystal (dnn 2.5–5 Å, Gaussian atomic form factor), ± halo, ± rise
    waxs_amorphous  WAXS: one or two amorphous halos (q₀ 1–1.8 Å⁻¹), ± high-q rise, ± low-q power law
    waxs_spotty     WAXS: 100–3000 large grains of an atomic BCC/FCC crystal, ± halo

The paracrystals are sasmodels' ``bcc_paracrystal`` / ``fcc_paracrystal`` lattice factor Z(q·dnn)
(its own orientation average; unconverged at these d_factors — spurious splittings — until smeared
by the resolution, after which the rings sit at the √N ratios; ``tests/test_external.py`` checks it)
times a sphere or atomic form factor. Spotty rings: grains of random orientation, every reflection
within the mosaic spread (0.02–0.5°) of the Ewald sphere puts a Gaussian spot (σ 0.8–2 px) on the
detector at its Bragg angle and azimuth.

Instrument, drawn per file: the detector/format (cycled so that every group meets each), the beam
centre (centred, off-centre, 25–80 px from an edge, 30–100 px from a corner, or 20–400 px off the
image: rings as arcs, no beamstop; on an image plate, relative to its active disc), the beamstop (circular disc r 8–40 px with an arm, a wire or
nothing; linear bar half-width 8–30 px from an edge past the beam; wedge half-angle 8–20°; none,
with an attenuated direct beam; 25 % semi-transparent with a leaking direct beam; edges blurred by
0.5–2.5 px), detector tilt 3–30° (15 % of SAXS, 40 % of WAXS files), wavelength, and a distance that
puts the sample's feature (first ring, Guinier knee, halo, S(q) peak) at a chosen radius, as one sets
up a beamline. Sample peak counts 10¹–10⁶ (the 99.95th percentile of its expected counts), a
background of 10^−1.5–10³ counts split between a flat floor and air scatter falling from the beam,
Poisson counts.

    detector             shape (rows × cols)  pixel   file
    pilatus1m            1043 × 981           172 µm  CBF int32, −1 in module gaps, −2 on bad pixels
    pilatus300k           619 × 487           172 µm  TIFF int32, −1 gaps, −2 bad pixels
    eiger1m              1065 × 1030           75 µm  EDF uint32, 2³²−1 in the gap and dead pixels
    eiger1m_processed    1065 × 1030           75 µm  TIFF float32, NaN in gaps
    pilatus1m_processed  1043 × 981           172 µm  NPY float32, NaN in gaps
    ccd                  1024 × 1024          100 µm  TIFF uint16: gain 0.8–2 ADU/photon, dark offset
                                                      5–40 ADU, read noise 1.5–4 ADU, zingers
    image_plate          1024 × 1024          150 µm  PNG 16-bit, circular active area (0 outside)

The Pilatus and Eiger module gaps are those of pyFAI's masks for these detectors (tested).

Truth. Each label is 1, 0 or unknown (None: left out of that attribute's AUC and AP); it is decided
from the generator's own parts and their expected counts (before noise), as a scientist looking at
the image would, not from the project's tag rules. The rules read azimuthal averages of the expected
counts over the *open* pixels (sensitive, clear of the beamstop and its blurred edge) in 1-px bins
of radius (bins of q), per part (each sasmodels piece, grains, background). An excess e over a level
L per pixel, on n pixels, is **visible** when e ≥ 3σ, e ≥ 0.05 L, n ≥ 100 and e·n ≥ 30 counts, and
**maybe visible** when e ≥ 1.5σ, e ≥ 0.02 L, n ≥ 25, where σ = √((L + read noise²)/25) is the noise
of the mean of the 25 pixels the eye averages over (a 5 × 5 patch, or 25 px along a ring). A *crest*
is a local maximum of the total profile; its excess is its prominence, and it belongs to the part
whose removal lowers that prominence most. P is the sample's peak counts (99.95th percentile over
open pixels), B the median background there.

    attribute          1 when                                              0 when (else unknown)
    Ring               a lattice ring is a visible crest, or a grains'     no ring even maybe visible, and no
                       ring shows ≥ 10 visible spots                       other narrow (Δq/q < 0.15) visible
                                                                           crest (form-factor fringe, P·S max)
    Many rings         ≥ 5 distinct visible rings                          ≤ 4 rings counting maybe-visible
                                                                           ones and other crests
    Higher orders      two visible rings of one lattice at q ratio n ≥ 2   ≤ 1 lattice ring even maybe visible
                       (lamellar n·q₁; cubic hkl and nh nk nl)
    BCC / FCC          a BCC (FCC) lattice or grains with ≥ 2 distinct     no such lattice, or none of its
                       visible rings                                       rings even maybe visible
    Polycrystalline    grains with ≥ 10 visible spots (peak pixel ≥        no grains, or < 3 spots even maybe
                       max(3σ₉, 0.3 × level, 1 count); σ₉ over 9 px)       visible (1.5σ₉, 0.1 ×, 0.3 counts)
    Halo               a halo part's crest is visible                      no halo maybe visible, no broad
                                                                           (Δq/q ≥ 0.1) other crest, no S(q)
                                                                           bump even maybe visible
    Structure factor   a visible crest of the P·S part (0.4–1.2 × q of     no S(q) part, or its bump P·S − P
                       the S maximum) that loses half its prominence       not even maybe visible
                       when S is set to 1
    Diffuse low-q      the smooth sample part (diffuse parts, P·S,         that run (1.5σ, ≥ 0.2 × rest, ≥ 0.1
                       lattices' lower envelope) ≥ 3σ, ≥ the rest, ≥ 0.5   counts) < 300 px, or < 0.3 × its
                       counts over a run of bins from the inner edge of    max at the inner edge, or falling
                       ≥ 1500 px, ≥ 0.7 × its max at the inner edge and    < 1.2×; unknown also when air
                       falling ≥ 2× along the run                          scatter alone would pass
    Diffuse high-q     the high-q part ≥ 3σ, ≥ 0.5 × the rest, ≥ 0.5       < 500 px even at (1.5σ, 0.2 ×) or
                       counts on ≥ 3000 px of the outer 40 % of the        growth < 1.3, and no other smooth
                       radial range, and there ≥ 2× its inner-20 % mean    part visibly growing ≥ 1.5× there
    Strong scattering  P ≥ 1000 counts and P ≥ 10 B                        P < 200 or P < 3 B
    Weak scattering    P ≤ 10 counts or P ≤ B                              P ≥ 50 and P ≥ 5 B
    High background    B ≥ 10 counts and B ≥ 0.1 P (the floor within a     B + dark offset < 2 counts or
                       decade of the sample's brightest)                   < 0.01 P
    Beam Off Image     the beam centre is outside the frame                inside (never unknown)
    Circ. / Linear /   that beamstop's shadow (transmission < 0.5) has     another type, none, or a shadow
    Wedge beamstop     ≥ 60 sensitive px and, over the brighter half of    not even maybe visible (1.5σ, 0.05
                       what it covers, removes ≥ max(3σ, 0.2) counts and   counts, ≥ 0.25 × what is left)
                       ≥ what is left (σ of what is left)

Report: per attribute positives, negatives, unknown, base rate, ROC AUC and AP (sklearn), their
means over the attributes with both classes, and whether the issue's target (mean ROC AUC ≥ 0.90,
none below 0.80) is met; printed, and written to ``<folder>/results.json`` and ``results.md``.
``<folder>/truth.json`` holds the set's definition (version, per_group, seed, groups, a hash of this
module's generator source, sasmodels and numpy versions) and per file its parameters, labels and the
evidence behind them; a folder is reused only when the definition matches.

sasmodels is in the ``dev`` extra (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.errors import XrayscatterError

SET_VERSION = 2  # bump when the set changes in a way the source hash below would not see
DEFAULT_PER_GROUP = 30  # 510 files: 90 % bootstrap intervals of an attribute's AUC ±0.01–0.06, median ±0.03 (±0.02–0.08 at 15)
DEFAULT_SEED = 20261124


# =============================================================================== detectors
@dataclass(frozen=True)
class Detector:
    """A detector and the way its files store counts and missing pixels."""

    label: str
    rows: int
    cols: int
    pixel_mm: float
    suffix: str
    storage: str  # "int32" (−1 gaps, −2 bad), "uint32" (2³²−1), "float32" (NaN), "uint16" (no marker)
    kind: str = "counting"  # "counting" (Poisson only), "ccd" (gain, dark offset, read noise), "plate"
    module_rows: int = 0
    module_cols: int = 0
    gap_rows: int = 0
    gap_cols: int = 0
    max_count: float = 2**20 - 1  # Pilatus 20-bit counter


DETECTORS = {
    "pilatus1m": Detector("Pilatus 1M, CBF int32, −1 gaps, −2 bad pixels", 1043, 981, 0.172, ".cbf", "int32",
                          "counting", 195, 487, 17, 7),
    "pilatus300k": Detector("Pilatus 300K, TIFF int32, −1 gaps, −2 bad pixels", 619, 487, 0.172, ".tif", "int32",
                            "counting", 195, 487, 17, 7),
    "eiger1m": Detector("Eiger 1M, EDF uint32, 2³²−1 in gaps and dead pixels", 1065, 1030, 0.075, ".edf", "uint32",
                        "counting", 514, 1030, 37, 10, 2**32 - 2),
    "eiger1m_processed": Detector("Eiger 1M processed, TIFF float32, NaN gaps", 1065, 1030, 0.075, ".tif",
                                  "float32", "counting", 514, 1030, 37, 10, 2**32 - 2),
    "pilatus1m_processed": Detector("Pilatus 1M processed, NPY float32, NaN gaps", 1043, 981, 0.172, ".npy",
                                    "float32", "counting", 195, 487, 17, 7),
    "ccd": Detector("CCD 1024², TIFF uint16, gain + dark offset + read noise", 1024, 1024, 0.1, ".tif", "uint16",
                    "ccd", max_count=65535),
    "image_plate": Detector("image plate, PNG 16-bit, circular active area", 1024, 1024, 0.15, ".png", "uint16",
                            "plate", max_count=65535),
}


PLATE_RADIUS = 0.495  # × the frame's shorter side: an image plate's active disc


def module_gaps(rows: int, cols: int, module_rows: int, module_cols: int, gap_rows: int, gap_cols: int) -> np.ndarray:
    """(rows, cols) bool: True in the insensitive rows and columns between detector modules."""
    mask = np.zeros((rows, cols), bool)
    if module_rows:
        for start in range(module_rows, rows, module_rows + gap_rows):
            mask[start:start + gap_rows] = True
    if module_cols:
        for start in range(module_cols, cols, module_cols + gap_cols):
            mask[:, start:start + gap_cols] = True
    return mask


def sensitive_area(detector: Detector) -> np.ndarray:
    """(rows, cols) bool: pixels that can count (not a module gap, inside an image plate's disc)."""
    sensitive = ~module_gaps(detector.rows, detector.cols, detector.module_rows, detector.module_cols,
                             detector.gap_rows, detector.gap_cols)
    if detector.kind == "plate":
        yy, xx = np.indices((detector.rows, detector.cols))
        radius = PLATE_RADIUS * min(detector.rows, detector.cols)
        sensitive &= np.hypot(yy + 0.5 - detector.rows / 2, xx + 0.5 - detector.cols / 2) < radius
    return sensitive


# =============================================================================== geometry
@dataclass
class Geometry:
    """Flat detector at ``distance_mm`` from the sample, the direct beam hitting it at ``centre``.

    ``centre`` is (row, column) in pixel units where pixel (i, j) has its centre at (i + 0.5, j + 0.5);
    it may lie outside the frame. The detector plane may be tilted by ``tilt_deg`` about an in-plane
    axis through the beam centre at ``tilt_axis_deg`` from the column direction.
    """

    rows: int
    cols: int
    pixel_mm: float
    distance_mm: float
    wavelength: float  # Å
    centre: tuple[float, float]
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0

    @property
    def k(self) -> float:
        return 2 * np.pi / self.wavelength

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector column direction, row direction and normal in the lab frame (beam along +z)."""
        tau, phi = np.radians(self.tilt_deg), np.radians(self.tilt_axis_deg)
        axis = np.array([np.cos(phi), np.sin(phi), 0.0])
        cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + np.sin(tau) * cross + (1 - np.cos(tau)) * cross @ cross  # Rodrigues
        return rotation[:, 0], rotation[:, 1], rotation[:, 2]

    def maps(self) -> dict[str, np.ndarray]:
        """Per pixel: q (Å⁻¹), ``rho`` (radius in px an untilted detector would put that q at) and
        ``solid_pol`` (solid angle × horizontal polarisation, 1 at the beam centre)."""
        e1, e2, n = self.basis()
        x = ((np.arange(self.cols) + 0.5 - self.centre[1]) * self.pixel_mm)[None, :]
        y = ((np.arange(self.rows) + 0.5 - self.centre[0]) * self.pixel_mm)[:, None]
        d = self.distance_mm
        px, py, pz = (x * e1[i] + y * e2[i] + (d if i == 2 else 0.0) for i in range(3))
        r_perp = np.hypot(px, py)
        two_theta = np.arctan2(r_perp, pz)
        dist = np.sqrt(r_perp**2 + pz**2)
        q = 4 * np.pi / self.wavelength * np.sin(two_theta / 2)
        solid = d**2 * (n[0] * px + n[1] * py + n[2] * pz) / dist**3 / n[2]
        polarisation = 1 - (px / dist) ** 2
        rho = d * np.tan(np.minimum(two_theta, 1.4)) / self.pixel_mm  # capped at 2θ = 80°
        return {"q": q.astype(np.float32), "rho": rho.astype(np.float32),
                "solid_pol": (solid * polarisation).astype(np.float32)}

    def radius_px(self, q) -> np.ndarray:
        """Untilted radius (px) of a ring at q."""
        s = np.clip(np.asarray(q, float) * self.wavelength / (4 * np.pi), 0, 0.7)
        return self.distance_mm * np.tan(2 * np.arcsin(s)) / self.pixel_mm

    def q_at_radius(self, radius_px) -> np.ndarray:
        return 4 * np.pi / self.wavelength * np.sin(np.arctan(np.asarray(radius_px) * self.pixel_mm
                                                              / self.distance_mm) / 2)

    def project(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit lab-frame ray directions → (row, col) pixel positions (centre convention) and a bool 'hits'."""
        e1, e2, n = self.basis()
        d = self.distance_mm
        along = directions @ n
        hits = along > 1e-6
        t = d * n[2] / np.where(hits, along, 1.0)
        point = directions * t[:, None] - np.array([0.0, 0.0, d])
        col = self.centre[1] + point @ e1 / self.pixel_mm
        row = self.centre[0] + point @ e2 / self.pixel_mm
        return row, col, hits


# =============================================================================== beamstops
def _capsule_distance(yy, xx, start, end, half_width):
    """Signed distance (px) to a bar of half-width ``half_width`` around the segment start→end."""
    sy, sx = start
    dy, dx = end[0] - sy, end[1] - sx
    length2 = dy * dy + dx * dx
    t = np.clip(((yy - sy) * dy + (xx - sx) * dx) / length2, 0.0, 1.0)
    return np.hypot(yy - sy - t * dy, xx - sx - t * dx) - half_width


def draw_beamstop(kind: str, shape: tuple[int, int], centre: tuple[float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The beamstop's transmission (H, W) in [0, 1] (edges blurred) and its drawn parameters.

    circular: a disc (radius 8–40 px) held by an arm (a bar 0.15–0.4 × the radius wide), a thin
    wire (0.6–1.5 px) or nothing; linear: a bar (half-width 8–30 px) from an image edge ending
    past the beam; wedge: a sector (half-angle 8–20°) from an edge, its apex 10–80 px beyond the beam
    (so that the beam is ≥ 8 px inside its edges).
    """
    rows, cols = shape
    if kind == "none":
        return np.ones(shape, np.float32), {"kind": "none"}
    from scipy.special import ndtr

    yy, xx = np.indices(shape, dtype=np.float32)
    yy += 0.5
    xx += 0.5
    cy, cx = centre
    # direction from the beam to the holder: towards one of the four edges, sometimes slanted
    base = rng.choice([0.0, 90.0, 180.0, 270.0])
    angle = np.radians(base + (0.0 if rng.random() < 0.6 else rng.uniform(-25, 25)))
    uy, ux = np.sin(angle), np.cos(angle)
    far = 4 * (rows + cols)
    params: dict = {"kind": kind, "holder_angle_deg": float(np.degrees(angle) % 360)}
    if kind == "circular":
        radius = rng.uniform(8, 40)
        distance = np.hypot(yy - cy, xx - cx) - radius
        arm = rng.choice(["arm", "wire", "none"], p=[0.5, 0.3, 0.2])
        if arm != "none":
            half = max(2.0, radius * rng.uniform(0.15, 0.4)) if arm == "arm" else rng.uniform(0.6, 1.5)
            distance = np.minimum(distance, _capsule_distance(yy, xx, (cy, cx), (cy + far * uy, cx + far * ux), half))
            params["arm_half_width_px"] = float(half)
        params.update(radius_px=float(radius), arm=str(arm))
    elif kind == "linear":
        half = rng.uniform(8, 30)
        overshoot = half * rng.uniform(0.8, 2.5)
        start = (cy - overshoot * uy, cx - overshoot * ux)
        distance = _capsule_distance(yy, xx, start, (cy + far * uy, cx + far * ux), half)
        params.update(half_width_px=float(half), past_beam_px=float(overshoot))
    elif kind == "wedge":
        half_angle = np.radians(rng.uniform(8, 20))
        offset = float(np.clip(rng.uniform(8, 15) / np.tan(half_angle), 10, 80))  # the beam ≥ 8 px inside
        ay, ax = cy - offset * uy, cx - offset * ux
        vy, vx = yy - ay, xx - ax
        along = vy * uy + vx * ux
        across = np.abs(vx * uy - vy * ux)
        off_axis = np.arctan2(across, along) - half_angle
        norm = np.hypot(vy, vx)
        distance = np.where(off_axis < np.pi / 2, norm * np.sin(off_axis), norm)
        params.update(half_angle_deg=float(np.degrees(half_angle)), apex_offset_px=float(offset))
    else:
        raise ValueError(f"unknown beamstop kind {kind!r}")
    leak = 10 ** rng.uniform(-4, -2.5) if rng.random() < 0.25 else 0.0
    edge = rng.uniform(0.5, 2.5)
    params.update(edge_sigma_px=float(edge), transmission=float(leak))
    transmission = leak + (1 - leak) * ndtr(distance / edge)
    return transmission.astype(np.float32), params


# =============================================================================== scattering (sasmodels)
_MODELS: dict = {}


def sas(model_name: str, q: np.ndarray, **parameters) -> np.ndarray:
    """sasmodels' 1-D I(q) (orientation-averaged for anisotropic shapes) at ``q`` (Å⁻¹), background 0."""
    try:
        from sasmodels.core import load_model
        from sasmodels.direct_model import call_kernel
    except ImportError:
        raise XrayscatterError("bench external needs sasmodels (pip install sasmodels, or the dev extra)") from None
    if model_name not in _MODELS:
        _MODELS[model_name] = load_model(model_name)
    kernel = _MODELS[model_name].make_kernel([np.asarray(q, float)])
    try:
        return np.asarray(call_kernel(kernel, dict(scale=1.0, background=0.0, **parameters)), float)
    finally:
        kernel.release()


PARACRYSTAL_D_FACTORS = (0.05, 0.07, 0.1)
_X_GRID = np.geomspace(0.2, 90.0, 1200)  # q · dnn


@lru_cache(maxsize=None)
def paracrystal_lattice_factor(lattice: str, d_factor: float) -> np.ndarray:
    """sasmodels' ``bcc_paracrystal`` / ``fcc_paracrystal`` lattice factor Z on x = q·dnn (``_X_GRID``).

    sasmodels computes I = φ·P(q)·Z(q) (φ the lattice's volume fraction of spheres, P their form
    factor), orientation-averaged by its own quadrature; Z here is that I divided by φ·P of the same
    spheres (a small radius, so P is flat), → 1 where the disorder washes the peaks out. Multiplied by
    any form factor it gives the powder pattern of that lattice of scatterers.
    """
    radius = 1e-3
    contrast = dict(sld=2.0, sld_solvent=1.0)
    para = sas(f"{lattice.lower()}_paracrystal", _X_GRID, dnn=1.0, d_factor=d_factor, radius=radius, **contrast)
    cells = {"BCC": (2, np.sqrt(0.75)), "FCC": (4, np.sqrt(0.5))}[lattice]
    fraction = cells[0] * 4 / 3 * np.pi * (cells[1] * radius) ** 3
    return para / (fraction * sas("sphere", _X_GRID, radius=radius, **contrast))


def lattice_factor(lattice: str, d_factor: float, q: np.ndarray, dnn: float) -> np.ndarray:
    x = np.asarray(q) * dnn
    z = paracrystal_lattice_factor(lattice, d_factor)
    out = np.exp(np.interp(np.log(x), np.log(_X_GRID), np.log(np.maximum(z, 1e-12))))
    out[x > _X_GRID[-1]] = 1.0
    return out


MAX_N = 60  # rings up to h²+k²+l² = 60: beyond, paracrystal disorder and form factors wash them out


@lru_cache(maxsize=None)
def _cubic_families(lattice: str) -> tuple[tuple[int, int], ...]:
    """(N = h²+k²+l², multiplicity) of the allowed reflections up to MAX_N."""
    reach = int(np.ceil(np.sqrt(MAX_N)))
    counts: dict[int, int] = {}
    for h in range(-reach, reach + 1):
        for k in range(-reach, reach + 1):
            for l in range(-reach, reach + 1):
                n = h * h + k * k + l * l
                if n == 0 or n > MAX_N:
                    continue
                if lattice == "BCC" and (h + k + l) % 2:
                    continue
                if lattice == "FCC" and len({h % 2, k % 2, l % 2}) > 1:
                    continue
                counts[n] = counts.get(n, 0) + 1
    return tuple(sorted(counts.items()))


def cubic_rings(lattice: str, q_max: float, a: float) -> list[dict]:
    """Powder rings of a cubic lattice (cube edge ``a`` Å) up to ``q_max``: q, N = h²+k²+l², multiplicity."""
    rings = [{"q": 2 * np.pi / a * np.sqrt(n), "N": n, "multiplicity": m} for n, m in _cubic_families(lattice)]
    return [r for r in rings if r["q"] <= q_max]


def first_ring(lattice: str, a: float) -> float:
    return 2 * np.pi / a * np.sqrt(_cubic_families(lattice)[0][0])


def cubic_cell(lattice: str, dnn: float) -> float:
    """Conventional cube edge from the nearest-neighbour distance."""
    return 2 * dnn / np.sqrt(3) if lattice == "BCC" else np.sqrt(2) * dnn


def reflections(lattice: str, a: float, q_max: float, rings: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-lattice vectors (M, 3) of the first ``rings`` rings up to q_max, and their N = h²+k²+l²
    (lamellar: N = order²)."""
    if lattice == "LAM":
        orders = np.arange(1, min(int(q_max * a / (2 * np.pi)), rings) + 1)
        orders = np.concatenate([orders, -orders])
        return np.outer(orders, [0.0, 0.0, 2 * np.pi / a]), orders**2
    allowed = [n for n, _m in _cubic_families(lattice)][:rings]
    reach = int(np.ceil(np.sqrt(max(allowed))))
    r = np.arange(-reach, reach + 1)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    n = (hkl**2).sum(1)
    hkl, n = hkl[np.isin(n, allowed)], n[np.isin(n, allowed)]
    keep = (hkl.sum(1) % 2 == 0) if lattice == "BCC" else (np.ptp(hkl % 2, axis=1) == 0)
    hkl, n = hkl[keep], n[keep]
    g = 2 * np.pi / a * hkl
    inside = np.linalg.norm(g, axis=1) <= q_max
    return g[inside], n[inside]


# =============================================================================== samples
@dataclass
class Piece:
    """One part of a sample's scattering, with its role for the truth rules.

    roles: ``diffuse_low`` (form factors, power laws), ``diffuse_high`` (a broad rise to high q),
    ``lattice`` (powder rings: ``meta['rings']``, ``meta['lattice']``), ``halo`` (``meta['q0']``,
    ``meta['fwhm']``), ``sf`` (P·S with ``meta['s_q']``/``meta['s']`` the structure factor),
    ``spots`` (grains' reflections, rendered in 2-D; ``meta['spots']`` and ``meta['rings']``).
    """

    role: str
    name: str
    profile: np.ndarray | None = None  # I(q) on the render's q grid (relative units)
    weight: float = 1.0  # brightest 0.1 % of its pixels relative to the sample's first piece
    meta: dict = field(default_factory=dict)
    image: np.ndarray | None = None  # (H, W) expected counts (before the beamstop), set by render


@dataclass
class SampleSpec:
    kind: str  # "saxs" or "waxs"
    description: dict
    build: Callable[[np.ndarray], list[Piece]]
    q_feature: float | None = None  # placed at feature_frac × the typical radius of the frame
    feature_frac: tuple[float, float] = (0.1, 0.5)
    spots: dict | None = None
    peak_counts_log10: tuple[float, float] = (1.0, 6.0)


def _loguniform(rng, lo, hi):
    return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))


def _sphere_piece(q, radius, pd, role="diffuse_low", weight=1.0):
    return Piece(role, "sphere", sas("sphere", q, radius=radius, radius_pd=pd, radius_pd_n=35,
                                     radius_pd_type="schulz"), weight)


def _power_law(rng, weight=1.0):
    power = rng.uniform(2.0, 4.2)
    return (lambda q: Piece("diffuse_low", "power_law", sas("power_law", q, power=power), weight),
            {"model": "power_law", "power": power})


def _halo_piece(rng, q0, relative_fwhm, weight=1.0):
    """A broad peak of relative FWHM ``relative_fwhm`` at q0: sasmodels broad_peak, peak_lorentz or gaussian_peak."""
    fwhm = relative_fwhm * q0
    model = str(rng.choice(["broad_peak", "peak_lorentz", "gaussian_peak"]))
    if model == "broad_peak":
        pars = dict(porod_scale=0.0, porod_exp=3.0, peak_scale=1.0, correlation_length=2.0 / fwhm, peak_pos=q0,
                    width_exp=2.0, shape_exp=1.0)
    elif model == "peak_lorentz":
        pars = dict(peak_pos=q0, peak_hwhm=fwhm / 2)
    else:
        pars = dict(peak_pos=q0, sigma=fwhm / 2.3548)

    def build(q):
        return Piece("halo", model, sas(model, q, **pars), weight, {"q0": q0, "fwhm": fwhm})

    return build, {"model": model, "q0": q0, "relative_fwhm": relative_fwhm}


def _lattice(rng, lattice: str, dnn: float, form: str, weight=1.0, d_factor=None):
    """Paracrystal powder rings: sasmodels' lattice factor × a form factor (sphere or atomic)."""
    d_factor = float(d_factor if d_factor is not None else rng.choice(PARACRYSTAL_D_FACTORS))
    a = cubic_cell(lattice, dnn)
    description = {"model": f"{lattice.lower()}_paracrystal", "dnn": dnn, "d_factor": d_factor}
    if form == "sphere":
        radius = dnn * rng.uniform(0.25, 0.45)
        description["radius"] = radius
    else:
        b_atom = rng.uniform(5, 12)  # Gaussian atomic form factor f(s) = exp(−B s²), s = q/4π
        description["atomic_B"] = b_atom

    def build(q):
        z = lattice_factor(lattice, d_factor, q, dnn)
        if form == "sphere":
            p = sas("sphere", q, radius=radius, radius_pd=0.05, radius_pd_n=15)
        else:
            p = np.exp(-2 * b_atom * (q / (4 * np.pi)) ** 2)
        return Piece("lattice", description["model"], z * p, weight,
                     {"lattice": lattice, "rings": cubic_rings(lattice, float(q.max()), a), "d_factor": d_factor})

    return build, description


def _lamellar(rng, weight=1.0):
    d = _loguniform(rng, 50, 400)
    pars = dict(thickness=d * rng.uniform(0.3, 0.6), Nlayers=int(rng.integers(8, 60)), d_spacing=d,
                sigma_d=rng.uniform(0.02, 0.15), sld=1.0, sld_solvent=6.0)

    def build(q):
        orders = np.arange(1, int(q.max() * d / (2 * np.pi)) + 1)
        rings = [{"q": 2 * np.pi * n / d, "N": int(n * n), "multiplicity": 2} for n in orders]
        return Piece("lattice", "lamellar_stack_paracrystal", sas("lamellar_stack_paracrystal", q, **pars), weight,
                     {"lattice": "LAM", "rings": rings})

    return build, {"model": "lamellar_stack_paracrystal", **pars}


def _structure_factor(rng, form: str, weight=1.0, sticky: float = 0.3):
    """Particles (sphere or core–shell) with a hard-sphere or sticky-hard-sphere S(q), P and S from sasmodels."""
    radius = rng.uniform(25, 100)
    if form == "sphere":
        p_model, p_pars = "sphere", dict(radius=radius, radius_pd=rng.uniform(0.03, 0.12), radius_pd_n=25,
                                         radius_pd_type="schulz")
        outer = radius
    else:
        shell = rng.uniform(5, 25)
        p_model, p_pars = "core_shell_sphere", dict(radius=radius, thickness=shell, sld_core=1.0,
                                                    sld_shell=rng.uniform(2, 5), sld_solvent=rng.uniform(3, 6),
                                                    radius_pd=rng.uniform(0.03, 0.12), radius_pd_n=25)
        outer = radius + shell
    if rng.random() >= sticky:
        # the effective hard-sphere radius of sterically or charge-stabilised particles exceeds their core
        s_model, s_pars = "hardsphere", dict(radius_effective=outer * rng.uniform(1.0, 2.0),
                                             volfraction=rng.uniform(0.15, 0.5))
    else:
        s_model, s_pars = "stickyhardsphere", dict(radius_effective=outer * rng.uniform(1.0, 1.2),
                                                   volfraction=rng.uniform(0.15, 0.4),
                                                   perturb=rng.uniform(0.05, 0.1), stickiness=rng.uniform(0.15, 0.5))
    q_guess = 3.5 / s_pars["radius_effective"]

    def build(q):
        p = sas(p_model, q, **p_pars)
        s = sas(s_model, q, **s_pars)
        top = int(np.argmax(np.where(q > 1.5 / s_pars["radius_effective"], s, 0)))
        return Piece("sf", f"{p_model}@{s_model}", p * s, weight,
                     {"s_q": q, "s": s, "q_peak": float(q[top]), "s_max": float(s[top])})

    return build, {"model": f"{p_model}@{s_model}", **p_pars, **s_pars}, q_guess


def _diffuse_high(rng, q_rise, weight=1.0):
    """A broad rise towards high q, A·(1 − exp(−q²/q_rise²)) (thermal-diffuse / Debye–Waller-like)."""
    def build(q):
        return Piece("diffuse_high", "1-exp(-q²/q_rise²)", -np.expm1(-(q / q_rise) ** 2), weight, {"q_rise": q_rise})

    return build, {"model": "1-exp(-q²/q_rise²)", "q_rise": q_rise}


def _combine(kind, parts, q_feature=None, feature_frac=(0.1, 0.5), spots=None, peak=(1.0, 6.0)):
    builds = [b for b, _ in parts]
    description = {"pieces": [d for _, d in parts]}
    return SampleSpec(kind, description, lambda q: [b(q) for b in builds], q_feature, feature_frac, spots, peak)


def _spot_spec(rng, lattice, spacing, form, grains, mosaic_deg):
    spec = {"lattice": lattice, "spacing": spacing, "form": form, "grains": int(grains),
            "mosaic_deg": float(mosaic_deg), "spot_sigma_px": float(rng.uniform(0.8, 2.0))}
    if form == "sphere":
        spec["radius"] = spacing * rng.uniform(0.25, 0.4)
    else:
        spec["atomic_B"] = float(rng.uniform(5, 12))
    return spec


# --------------------------------------------------------------------------- the groups
def g_sphere(rng):
    radius = rng.uniform(20, 150)
    pd = rng.uniform(0.08, 0.25)
    return _combine("saxs", [(lambda q: _sphere_piece(q, radius, pd), {"model": "sphere", "radius": radius,
                                                                           "radius_pd": pd})],
                    q_feature=1.5 / radius, feature_frac=(0.05, 0.6))


def g_core_shell(rng):
    pars = dict(radius=rng.uniform(20, 80), thickness=rng.uniform(5, 30), sld_core=rng.uniform(0, 2),
                sld_shell=rng.uniform(3, 6), sld_solvent=rng.uniform(1, 4), radius_pd=rng.uniform(0.1, 0.25),
                radius_pd_n=25)
    return _combine("saxs", [(lambda q: Piece("diffuse_low", "core_shell_sphere", sas("core_shell_sphere", q, **pars)),
                              {"model": "core_shell_sphere", **pars})],
                    q_feature=1.5 / (pars["radius"] + pars["thickness"]), feature_frac=(0.05, 0.6))


def g_anisotropic(rng):
    if rng.random() < 0.5:
        pars = dict(radius=rng.uniform(10, 60), length=rng.uniform(100, 1500), radius_pd=rng.uniform(0.1, 0.2),
                    radius_pd_n=15)
        model, size = "cylinder", pars["radius"]
    else:
        pars = dict(radius_polar=rng.uniform(15, 150), radius_equatorial=rng.uniform(15, 150),
                    radius_equatorial_pd=0.1, radius_equatorial_pd_n=15)
        model, size = "ellipsoid", min(pars["radius_polar"], pars["radius_equatorial"])
    return _combine("saxs", [(lambda q: Piece("diffuse_low", model, sas(model, q, **pars)), {"model": model, **pars})],
                    q_feature=1.5 / size, feature_frac=(0.1, 0.8))


def g_power_law(rng):
    if rng.random() < 0.5:
        build, description = _power_law(rng)
        return _combine("saxs", [(build, description)])
    pars = dict(rg=rng.uniform(20, 200), s=rng.uniform(0, 2), porod_exp=rng.uniform(2.5, 4))
    return _combine("saxs", [(lambda q: Piece("diffuse_low", "guinier_porod", sas("guinier_porod", q, **pars)),
                              {"model": "guinier_porod", **pars})], q_feature=1 / pars["rg"], feature_frac=(0.05, 0.5))


def g_hard_sphere(rng):
    build, description, q_peak = _structure_factor(rng, "sphere", sticky=0.0)
    return _combine("saxs", [(build, description)], q_feature=q_peak, feature_frac=(0.1, 0.5))


def g_sf_other(rng):
    build, description, q_peak = _structure_factor(rng, "core_shell" if rng.random() < 0.5 else "sphere", sticky=0.5)
    parts = [(build, description)]
    if rng.random() < 0.4:
        pl, d = _power_law(rng, weight=_loguniform(rng, 0.03, 0.5))
        parts.append((pl, d))
    return _combine("saxs", parts, q_feature=q_peak, feature_frac=(0.1, 0.5))


def _saxs_lattice_group(rng, lattice):
    dnn = _loguniform(rng, 100, 500)
    parts = [_lattice(rng, lattice, dnn, "sphere")]
    if rng.random() < 0.5:
        parts.append(_power_law(rng, weight=_loguniform(rng, 0.05, 3)))
    q1 = first_ring(lattice, cubic_cell(lattice, dnn))
    return _combine("saxs", parts, q_feature=q1, feature_frac=(0.12, 0.6))


def g_bcc(rng):
    return _saxs_lattice_group(rng, "BCC")


def g_fcc(rng):
    return _saxs_lattice_group(rng, "FCC")


def g_lamellar(rng):
    build, description = _lamellar(rng)
    parts = [(build, description)]
    if rng.random() < 0.5:
        parts.append(_power_law(rng, weight=_loguniform(rng, 0.05, 3)))
    return _combine("saxs", parts, q_feature=2 * np.pi / description["d_spacing"], feature_frac=(0.06, 0.45))


def g_spotty_saxs(rng):
    lattice = str(rng.choice(["BCC", "FCC", "LAM"], p=[0.4, 0.4, 0.2]))
    if lattice == "LAM":
        spacing = _loguniform(rng, 60, 300)
        q1 = 2 * np.pi / spacing
        grains = _loguniform(rng, 100, 3000)
    else:
        spacing = _loguniform(rng, 150, 500)  # dnn
        spacing = cubic_cell(lattice, spacing)
        q1 = first_ring(lattice, spacing)
        grains = _loguniform(rng, 30, 1500)
    spots = _spot_spec(rng, lattice, spacing, "sphere", grains, rng.uniform(0.05, 0.5))
    parts = []
    if rng.random() < 0.5:
        radius = spots.get("radius", spacing / 4)
        weight = _loguniform(rng, 0.01, 0.3)
        parts.append((lambda q: _sphere_piece(q, radius, 0.1, weight=weight), {"model": "sphere", "radius": radius}))
    return _combine("saxs", parts, q_feature=q1, feature_frac=(0.12, 0.5), spots=spots)


def g_halo(rng):
    q0 = _loguniform(rng, 0.02, 0.3)
    parts = [_halo_piece(rng, q0, rng.uniform(0.25, 0.6))]
    if rng.random() < 0.5:
        parts.append(_power_law(rng, weight=_loguniform(rng, 0.05, 2)))
    return _combine("saxs", parts, q_feature=q0, feature_frac=(0.15, 0.7))


def g_diffuse_high(rng):
    q_rise = _loguniform(rng, 0.05, 0.5)
    parts = [_diffuse_high(rng, q_rise)]
    if rng.random() < 0.6:
        parts.append(_power_law(rng, weight=_loguniform(rng, 0.1, 5)))
    return _combine("saxs", parts, q_feature=q_rise, feature_frac=(0.35, 1.0))


def g_combination(rng):
    choice = int(rng.integers(5))
    if choice == 0:  # a lattice with a broad halo
        lattice = str(rng.choice(["BCC", "FCC"]))
        dnn = _loguniform(rng, 100, 400)
        q1 = first_ring(lattice, cubic_cell(lattice, dnn))
        parts = [_lattice(rng, lattice, dnn, "sphere"),
                 _halo_piece(rng, q1 * rng.uniform(1.8, 3.5), rng.uniform(0.25, 0.5), _loguniform(rng, 0.1, 1))]
        return _combine("saxs", parts, q_feature=q1, feature_frac=(0.12, 0.4))
    if choice == 1:  # lamellae among concentrated particles
        build, description, q_peak = _structure_factor(rng, "sphere")
        parts = [(build, description), _lamellar(rng, weight=_loguniform(rng, 0.2, 3))]
        return _combine("saxs", parts, q_feature=q_peak, feature_frac=(0.1, 0.4))
    if choice == 2:  # dilute particles plus a broad correlation peak
        radius = rng.uniform(20, 100)
        q0 = rng.uniform(1.5, 4) * 2 / radius
        parts = [(lambda q: _sphere_piece(q, radius, 0.15), {"model": "sphere", "radius": radius}),
                 _halo_piece(rng, q0, rng.uniform(0.25, 0.5), _loguniform(rng, 0.05, 1))]
        return _combine("saxs", parts, q_feature=q0, feature_frac=(0.2, 0.6))
    if choice == 3:  # lamellae on a power law with a rise at high q
        build, description = _lamellar(rng)
        parts = [(build, description), _power_law(rng, weight=_loguniform(rng, 0.1, 2))]
        q1 = 2 * np.pi / description["d_spacing"]
        parts.append(_diffuse_high(rng, q1 * rng.uniform(2, 5), _loguniform(rng, 0.1, 1)))
        return _combine("saxs", parts, q_feature=q1, feature_frac=(0.06, 0.3))
    lattice = str(rng.choice(["BCC", "FCC"]))  # a lattice with a rise at high q
    dnn = _loguniform(rng, 100, 400)
    q1 = first_ring(lattice, cubic_cell(lattice, dnn))
    parts = [_lattice(rng, lattice, dnn, "sphere"),
             _diffuse_high(rng, q1 * rng.uniform(2, 5), _loguniform(rng, 0.1, 1))]
    return _combine("saxs", parts, q_feature=q1, feature_frac=(0.1, 0.35))


def g_blank(rng):
    """An empty cell or a buffer: little sample scattering."""
    build, description = _power_law(rng)
    return _combine("saxs", [(build, description)], peak=(-0.3, 1.5))


def g_waxs_crystal(rng):
    lattice = str(rng.choice(["BCC", "FCC"]))
    dnn = rng.uniform(2.5, 5.0)
    parts = [_lattice(rng, lattice, dnn, "atomic")]
    q1 = first_ring(lattice, cubic_cell(lattice, dnn))
    if rng.random() < 0.4:
        parts.append(_halo_piece(rng, q1 * rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.45), _loguniform(rng, 0.05, 0.5)))
    if rng.random() < 0.3:
        parts.append(_diffuse_high(rng, q1 * rng.uniform(1.0, 2.5), _loguniform(rng, 0.05, 0.5)))
    return _combine("waxs", parts, q_feature=q1, feature_frac=(0.1, 0.45))


def g_waxs_amorphous(rng):
    q0 = rng.uniform(1.0, 1.8)
    parts = [_halo_piece(rng, q0, rng.uniform(0.25, 0.5))]
    if rng.random() < 0.5:
        parts.append(_halo_piece(rng, q0 * rng.uniform(1.8, 2.3), rng.uniform(0.25, 0.45), _loguniform(rng, 0.1, 0.6)))
    if rng.random() < 0.4:
        parts.append(_diffuse_high(rng, q0 * rng.uniform(1.2, 3), _loguniform(rng, 0.2, 2)))
    if rng.random() < 0.3:
        parts.append(_power_law(rng, weight=_loguniform(rng, 0.05, 1)))
    return _combine("waxs", parts, q_feature=q0, feature_frac=(0.2, 0.6))


def g_waxs_spotty(rng):
    lattice = str(rng.choice(["BCC", "FCC"]))
    dnn = rng.uniform(2.5, 5.0)
    a = cubic_cell(lattice, dnn)
    q1 = first_ring(lattice, a)
    spots = _spot_spec(rng, lattice, a, "atomic", _loguniform(rng, 100, 3000), rng.uniform(0.02, 0.3))
    parts = []
    if rng.random() < 0.4:
        parts.append(_halo_piece(rng, q1 * rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.45), _loguniform(rng, 0.02, 0.3)))
    return _combine("waxs", parts, q_feature=q1, feature_frac=(0.1, 0.4), spots=spots)


GROUPS: dict[str, tuple[Callable[[np.random.Generator], SampleSpec], str]] = {
    "sphere": (g_sphere, "polydisperse spheres, dilute (sasmodels sphere, Schulz)"),
    "core_shell": (g_core_shell, "core–shell spheres, dilute (core_shell_sphere)"),
    "anisotropic": (g_anisotropic, "cylinders or ellipsoids, orientation-averaged (cylinder, ellipsoid)"),
    "power_law": (g_power_law, "power law or Guinier–Porod (power_law, guinier_porod)"),
    "hard_sphere": (g_hard_sphere, "spheres with a hard-sphere or sticky S(q) (sphere × hardsphere)"),
    "sf_other": (g_sf_other, "core–shell or spheres × hardsphere / stickyhardsphere, ± power law"),
    "bcc": (g_bcc, "BCC paracrystal of spheres (bcc_paracrystal), ± power law"),
    "fcc": (g_fcc, "FCC paracrystal of spheres (fcc_paracrystal), ± power law"),
    "lamellar": (g_lamellar, "lamellar_stack_paracrystal, ± power law"),
    "spotty_saxs": (g_spotty_saxs, "grains of a BCC/FCC superlattice or lamellae: spotty rings (own numpy)"),
    "halo": (g_halo, "broad peak (broad_peak, peak_lorentz, gaussian_peak), ± power law"),
    "diffuse_high": (g_diffuse_high, "a rise to high q, A(1 − exp(−q²/q_r²)), ± power law"),
    "combination": (g_combination, "lattice + halo, lamellae + S(q), spheres + halo, … + high-q rise"),
    "blank": (g_blank, "empty cell / buffer: a faint power law"),
    "waxs_crystal": (g_waxs_crystal, "WAXS: atomic BCC/FCC paracrystal powder rings, ± halo, ± high-q rise"),
    "waxs_amorphous": (g_waxs_amorphous, "WAXS: one or two amorphous halos, ± high-q rise, ± low-q power law"),
    "waxs_spotty": (g_waxs_spotty, "WAXS: large grains of an atomic BCC/FCC crystal, ± halo"),
}


# =============================================================================== rendering
N_GRID = 1600
ROLES = ("diffuse_low", "diffuse_high", "lattice", "halo", "sf", "spots")


@dataclass
class Scene:
    """Everything the truth rules read: expected counts per part, before counting noise.

    Expected counts on the detector = ``transmission`` × (Σ piece images + ``background`` +
    ``direct``) (+ a dark offset, which the rules ignore but whose read noise they count).
    """

    q: np.ndarray  # (H, W) Å⁻¹
    rho: np.ndarray  # (H, W) radius (px) on an untilted detector for that q: the azimuthal bins
    sensitive: np.ndarray  # (H, W) bool
    transmission: np.ndarray  # (H, W) beamstop transmission
    pieces: list[Piece]
    background: np.ndarray  # (H, W) counts from outside the sample (air, window, flat)
    direct: np.ndarray | None = None  # (H, W) the direct beam spot
    air: np.ndarray | None = None  # (H, W) the part of ``background`` falling from the beam (air scatter)
    read_noise: float = 0.0  # photons (CCD / plate read noise ÷ gain)
    dark_offset: float = 0.0  # photons (CCD / plate offset ÷ gain)
    centre: tuple[float, float] = (0.0, 0.0)
    beamstop: str = "none"
    beam_on_active_area: bool | None = None  # set when the active area is not the frame (an image plate's disc)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def beam_on_image(self) -> bool:
        if self.beam_on_active_area is not None:
            return self.beam_on_active_area
        return 0 <= self.centre[0] <= self.shape[0] and 0 <= self.centre[1] <= self.shape[1]

    def sample(self) -> np.ndarray:
        total = np.zeros(self.shape, np.float32)
        for piece in self.pieces:
            total += piece.image
        return total

    def expected(self) -> np.ndarray:
        total = self.sample() + self.background
        if self.direct is not None:
            total += self.direct
        return total * self.transmission


def render_spots(spec: dict, geometry: Geometry, solid_pol: np.ndarray, rng: np.random.Generator):
    """Grains of random orientation; every reflection near the Ewald sphere puts a Gaussian spot on the detector.

    Returns the (H, W) image (arbitrary units) and per spot: row, col, peak height, N (ring label).
    """
    from scipy.spatial.transform import Rotation

    rows, cols = geometry.rows, geometry.cols
    q_max = float(geometry.q_at_radius(np.hypot(rows, cols) * 1.5))
    g, n = reflections(spec["lattice"], spec["spacing"], q_max)
    if spec["lattice"] == "LAM":
        g_norm = np.abs(g[:, 2])
    else:
        g_norm = np.linalg.norm(g, axis=1)
    if spec["form"] == "sphere":
        factor = sas("sphere", np.maximum(g_norm, 1e-6), radius=spec["radius"])
    else:
        factor = np.exp(-2 * spec["atomic_B"] * (g_norm / (4 * np.pi)) ** 2)
    rotations = Rotation.random(spec["grains"], random_state=rng).as_matrix()  # (G, 3, 3)
    g_lab = np.einsum("gij,mj->gmi", rotations, g).reshape(-1, 3)
    weight_hkl = np.tile(factor, spec["grains"])
    n_all = np.tile(n, spec["grains"])
    k = geometry.k
    k_out = g_lab + np.array([0.0, 0.0, k])
    excitation = np.linalg.norm(k_out, axis=1) - k  # distance from the Ewald sphere
    sigma = np.maximum(np.tile(g_norm, spec["grains"]) * np.radians(spec["mosaic_deg"]), 1e-9)
    weight = np.exp(-0.5 * (excitation / sigma) ** 2)
    keep = weight > 0.02
    # the mosaic block that satisfies Bragg's law exactly sends the ray at 2θ = 2 asin(|G|/2k), at G's azimuth
    g_keep = g_lab[keep]
    two_theta = 2 * np.arcsin(np.clip(np.linalg.norm(g_keep, axis=1) / (2 * k), 0, 1))
    azimuth = np.arctan2(g_keep[:, 1], g_keep[:, 0])
    direction = np.stack([np.sin(two_theta) * np.cos(azimuth), np.sin(two_theta) * np.sin(azimuth),
                          np.cos(two_theta)], 1)
    row, col, hits = geometry.project(direction)
    spot_sigma = spec["spot_sigma_px"]
    margin = 4 * spot_sigma
    inside = hits & (row > -margin) & (row < rows + margin) & (col > -margin) & (col < cols + margin)
    row, col = row[inside] - 0.5, col[inside] - 0.5  # → array index coordinates
    height = (weight[keep] * weight_hkl[keep])[inside]
    labels = n_all[keep][inside]
    image = np.zeros((rows, cols), np.float64)
    if len(row):
        ri, ci = np.clip(np.rint(row).astype(int), 0, rows - 1), np.clip(np.rint(col).astype(int), 0, cols - 1)
        height = height * solid_pol[ri, ci]
        half = int(np.ceil(margin))
        offsets = np.arange(-half, half + 1)
        oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
        yy = np.rint(row).astype(int)[:, None] + oy.ravel()[None, :]
        xx = np.rint(col).astype(int)[:, None] + ox.ravel()[None, :]
        values = height[:, None] * np.exp(-((yy - row[:, None]) ** 2 + (xx - col[:, None]) ** 2) / (2 * spot_sigma**2))
        ok = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        np.add.at(image, (yy[ok], xx[ok]), values[ok])
    q_of = {int(v): float(2 * np.pi / spec["spacing"] * np.sqrt(v)) for v in sorted(set(n.tolist()))}
    spots = np.stack([row, col, height, labels.astype(float)], 1) if len(row) else np.zeros((0, 4))
    rings = [{"q": q, "N": v, "multiplicity": int((n == v).sum())} for v, q in q_of.items() if q <= q_max]
    return image.astype(np.float32), {"lattice": spec["lattice"], "spots": spots, "rings": rings}


def _smear(profile: np.ndarray, log_step: float, relative: float) -> np.ndarray:
    """Pinhole-like resolution: a Gaussian of constant Δq/q on the log-spaced grid."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(profile, relative / log_step, mode="nearest")


BRIGHTNESS_PERCENTILE = 99.95  # "the sample's peak counts": its brightest ~500 pixels of a 1M frame


def brightness(values: np.ndarray) -> float:
    """Peak counts robust to single pixels: the 99.95th percentile (or the maximum, for very sparse images)."""
    if not values.size:
        return 0.0
    top = float(np.percentile(values, BRIGHTNESS_PERCENTILE))
    return top if top > 0 else float(values.max())


def _scale_piece(piece: Piece, factor: float) -> None:
    piece.image *= np.float32(factor)
    if piece.role == "spots":
        piece.meta["spots"][:, 2] *= factor


def render(spec: SampleSpec, geometry: Geometry, detector: Detector, beamstop: str, rng: np.random.Generator,
           background_level: float, peak_counts: float) -> tuple[Scene, dict]:
    """The sample on this detector: each piece's expected counts, the beamstop, background and direct beam.

    The pieces are scaled to their relative ``weight`` (of brightness) and the sample to ``peak_counts``;
    the background's median over the open pixels is ``background_level``.
    """
    maps = geometry.maps()
    q = maps["q"]
    q_lo = max(float(q.min()), 1e-6)
    q_hi = float(q.max()) * 1.001
    grid = np.geomspace(q_lo, q_hi, N_GRID)
    log_step = np.log(q_hi / q_lo) / (N_GRID - 1)
    resolution = rng.uniform(0.005, 0.02)
    pieces = spec.build(grid)
    position = np.clip((np.log(np.maximum(q, q_lo)) - np.log(q_lo)) / log_step, 0, N_GRID - 1.001).astype(np.float32)
    index = position.astype(np.int32)
    frac = position - index
    for piece in pieces:
        piece.profile = _smear(piece.profile, log_step, resolution)
        log_i = np.log(np.maximum(piece.profile, 1e-300)).astype(np.float64)
        # interpolate log I, keep the dynamic range in float64 until scaled
        piece.image = np.exp(log_i[index] * (1 - frac) + log_i[index + 1] * frac - log_i.max()).astype(np.float32)
        piece.image *= maps["solid_pol"]
        if piece.role == "sf":
            piece.meta["s"] = _smear(piece.meta["s"] * 1.0, log_step, resolution)
    if spec.spots is not None:
        image, meta = render_spots(spec.spots, geometry, maps["solid_pol"], rng)
        weight = _loguniform(rng, 1, 30) if pieces else 1.0  # spots brighter than the diffuse parts
        pieces.append(Piece("spots", f"{spec.spots['lattice']} grains", None, weight, meta, image))
    sensitive = sensitive_area(detector)
    transmission, stop = draw_beamstop(beamstop, q.shape, geometry.centre, rng)
    open_ = sensitive & (transmission >= 0.5)
    if not open_.any():
        open_ = sensitive
    # relative brightness of the pieces, then the whole sample to the drawn peak counts
    for piece in pieces:
        _scale_piece(piece, piece.weight / max(brightness(piece.image[open_]), 1e-30))
    sample = sum(p.image for p in pieces)
    factor = peak_counts / max(brightness(sample[open_]), 1e-30)
    for piece in pieces:
        _scale_piece(piece, factor)
    # background: flat + air scatter falling from the beam, its median over the open pixels = background_level
    flat_fraction = float(rng.choice([0.0, 1.0, rng.uniform(0, 1)], p=[0.3, 0.3, 0.4]))
    air = 1.0 / (1.0 + (maps["rho"] / rng.uniform(100, 600)) ** 2)
    air *= np.float32((1 - flat_fraction) * background_level / max(float(np.median(air[open_])), 1e-30))
    background = (air + np.float32(flat_fraction * background_level)).astype(np.float32)
    direct = None
    cy, cx = geometry.centre
    on_image = 0 <= cy <= q.shape[0] and 0 <= cx <= q.shape[1]
    on_plate = None
    if detector.kind == "plate":
        on_plate = bool(np.hypot(cy - q.shape[0] / 2, cx - q.shape[1] / 2) < PLATE_RADIUS * min(q.shape))
    if on_image and (beamstop == "none" or stop.get("transmission", 0) > 0):
        yy, xx = np.indices(q.shape, dtype=np.float32)
        width = rng.uniform(0.8, 2.0)
        amplitude = _loguniform(rng, 1e3, 3e5) if beamstop == "none" else _loguniform(rng, 1e6, 1e8)
        direct = amplitude * np.exp(-((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / (2 * width**2))
    scene = Scene(q=q, rho=maps["rho"], sensitive=sensitive, transmission=transmission, pieces=pieces,
                  background=background, direct=direct, air=air, centre=(float(cy), float(cx)), beamstop=beamstop,
                  beam_on_active_area=on_plate)
    return scene, {"beamstop": stop, "background_flat_fraction": flat_fraction}


# =============================================================================== detector files
def detector_frame(expected: np.ndarray, scene: Scene, detector: Detector,
                   rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Counting noise and the detector's own response → the array as its files store it.

    For a CCD or an image plate, the read noise and dark offset (in photons) are written into ``scene``.
    """
    counts = rng.poisson(np.maximum(expected, 0).astype(np.float64))
    info: dict = {}
    missing = ~scene.sensitive
    if detector.kind == "counting":
        counts = np.minimum(counts, detector.max_count)
        bad = rng.integers(0, counts.size, size=int(rng.integers(5, 40)))
        missing = missing.copy()
        missing.flat[bad] = True
        if detector.storage == "int32":
            frame = counts.astype(np.int32)
            frame[~scene.sensitive] = -1
            frame.flat[bad] = -2
        elif detector.storage == "uint32":
            frame = counts.astype(np.uint32)
            frame[missing] = np.iinfo(np.uint32).max
        else:
            frame = counts.astype(np.float32)
            frame[missing] = np.nan
    else:
        gain = rng.uniform(0.8, 2.0) if detector.kind == "ccd" else rng.uniform(0.5, 3.0)
        offset = rng.uniform(5, 40) if detector.kind == "ccd" else rng.uniform(1, 10)
        read = rng.uniform(1.5, 4.0) if detector.kind == "ccd" else rng.uniform(0.5, 2.0)
        adu = gain * counts + offset + rng.normal(0, read, counts.shape)
        if detector.kind == "ccd":  # zingers: cosmic rays and radioactivity
            hits = rng.integers(0, counts.size, size=int(rng.integers(0, 30)))
            adu.flat[hits] += rng.uniform(500, 60000, size=len(hits))
        else:
            adu[~scene.sensitive] = 0.0  # scanners write 0 outside the plate
        frame = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
        scene.read_noise, scene.dark_offset = read / gain, offset / gain
        info = {"gain_adu_per_photon": gain, "dark_offset_adu": offset, "read_noise_adu": read}
    return frame, info


def write_frame(path: Path, frame: np.ndarray, detector: Detector) -> None:
    if detector.suffix == ".cbf":
        import fabio

        fabio.cbfimage.CbfImage(data=frame).write(str(path))
    elif detector.suffix == ".edf":
        import fabio

        fabio.edfimage.EdfImage(data=frame).write(str(path))
    elif detector.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, frame)
    elif detector.suffix == ".png":
        from PIL import Image

        Image.fromarray(frame).save(path)
    elif detector.suffix == ".npy":
        np.save(path, frame)
    else:
        raise ValueError(detector.suffix)


# =============================================================================== truth rules
SURE_SIGMA, SURE_CONTRAST = 3.0, 0.05
MAYBE_SIGMA, MAYBE_CONTRAST = 1.5, 0.02
PATCH = 25  # pixels the eye averages over (a 5 × 5 patch, or 25 px along a ring)
SPOT_PATCH = 9  # the core of a spot
RING_PIXELS = 100
SPOTS_POLYCRYSTALLINE = 10
SPOTS_RING = 10


def _noise(level, read2: float, patch: int = PATCH):
    """Counting (and read) noise of the mean of ``patch`` pixels at ``level`` counts each."""
    return np.sqrt((np.maximum(level, 0.0) + read2) / patch)


def _visibility(excess: float, level: float, pixels: float, read2: float) -> str:
    """'sure', 'maybe' or 'none': an excess over ``level`` counts per pixel spread over ``pixels`` pixels."""
    sigma = _noise(level, read2)
    if (excess >= SURE_SIGMA * sigma and excess >= SURE_CONTRAST * level and pixels >= RING_PIXELS
            and excess * pixels >= 30):
        return "sure"
    if excess >= MAYBE_SIGMA * sigma and excess >= MAYBE_CONTRAST * level and pixels >= RING_PIXELS / 4:
        return "maybe"
    return "none"


class _Profiles:
    """Azimuthal averages over the open pixels (sensitive, clear of the beamstop and its blurred edge),
    1-px bins of rho."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.open = scene.sensitive & (scene.transmission >= 0.9)
        bins = np.floor(scene.rho[self.open]).astype(np.int64)
        self.bins = bins
        self.n = int(bins.max()) + 1 if bins.size else 1
        self.count = np.bincount(bins, minlength=self.n).astype(float)
        self.valid = self.count >= 6
        self.valid[:3] = False
        self.t = scene.transmission[self.open]
        q_sum = np.bincount(bins, weights=scene.q[self.open], minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            q_bin = q_sum / self.count
        good = self.count > 0
        self.q = np.interp(np.arange(self.n), np.flatnonzero(good), q_bin[good]) if good.any() else np.zeros(self.n)
        self.read2 = scene.read_noise**2

    def of(self, image: np.ndarray) -> np.ndarray:
        total = np.bincount(self.bins, weights=image[self.open] * self.t, minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(self.count > 0, total / np.maximum(self.count, 1), 0.0)
        return self.fill(out)

    def fill(self, y: np.ndarray) -> np.ndarray:
        if self.valid.sum() < 2:
            return y
        return np.interp(np.arange(self.n), np.flatnonzero(self.valid), y[self.valid])

    def bin_of(self, q: float) -> int:
        return int(np.searchsorted(self.q, q))

    def pixels(self, lo: int, hi: int) -> float:
        return float(self.count[max(lo, 0):max(hi + 1, 0)].sum())


def _crests(profile: np.ndarray, valid: np.ndarray) -> dict[int, tuple[float, float, float]]:
    """Local maxima of a profile on valid bins → {bin: (prominence, base level, half-prominence width in bins)}."""
    import warnings

    from scipy.signal import find_peaks, peak_widths

    peaks, props = find_peaks(profile, prominence=0)
    if not len(peaks):
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-width peaks of flat-topped noise-free profiles
        widths = peak_widths(profile, peaks, rel_height=0.5,
                             prominence_data=(props["prominences"], props["left_bases"], props["right_bases"]))[0]
    out = {}
    for b, prom, w in zip(peaks, props["prominences"], widths):
        if valid[b]:
            out[int(b)] = (float(prom), float(profile[b] - prom), float(w))
    return out


def _nearest(crests: dict, b: int, tol: int) -> tuple[float, float, float] | None:
    near = [(abs(c - b), v) for c, v in crests.items() if abs(c - b) <= tol]
    return min(near, key=lambda t: t[0])[1] if near else None


def decide(scene: Scene) -> tuple[dict[str, int | None], dict]:
    """The truth: attribute → 1 (has it), 0 (has not) or None (cannot be decided honestly), and the evidence."""
    prof = _Profiles(scene)
    read2 = prof.read2
    piece_profiles = [prof.of(p.image) for p in scene.pieces]
    background = prof.of(scene.background)
    total = background + (sum(piece_profiles) if piece_profiles else 0.0)
    crests = _crests(total, prof.valid)
    labels: dict[str, int | None] = {}
    evidence: dict = {}

    # ------------------------------------------------------------------ crests: who makes them
    sure = {}
    for b, (prom, base, width) in crests.items():
        lo, hi = b - max(1, int(width / 2)), b + max(1, int(width / 2))
        if _visibility(prom, base, prof.pixels(lo, hi), read2) == "sure":
            sure[b] = (prom, base, width)
    without = [(_crests(total - pp, prof.valid) if sure else {}) for pp in piece_profiles]
    owner: dict[int, int] = {}
    for b, (prom, _base, _w) in sure.items():
        drops = []
        for i in range(len(scene.pieces)):
            other = _nearest(without[i], b, 2)
            drops.append(prom - (other[0] if other and other[0] >= 0.5 * prom else 0.0))
        if drops:
            owner[b] = int(np.argmax(drops))

    # ------------------------------------------------------------------ rings of lattices and grains
    rings = []  # (piece index, ring dict, status, bin)
    other_crests = []  # visible crests that are not a lattice ring, a halo or an S(q) bump: (bin, width in bins)
    halo_status, sf_status = [], []
    spot_counts = []
    for i, piece in enumerate(scene.pieces):
        if piece.role == "lattice":
            ring_bins = [prof.bin_of(r["q"]) for r in piece.meta["rings"]]
            status = ["none"] * len(ring_bins)
            for k, bk in enumerate(ring_bins):
                if not (0 < bk < prof.n - 1):
                    continue
                gaps = [abs(bk - bj) for j, bj in enumerate(ring_bins) if j != k and bj != bk]
                tol = max(2, int(min(0.03 * bk + 1, 0.45 * min(gaps) if gaps else 1e9)))
                mine = [b for b in sure if owner.get(b) == i and abs(b - bk) <= tol]
                if mine:
                    status[k] = "sure"
                    continue
                window = max(4, 2 * tol)
                lo, hi = max(bk - window, 0), min(bk + window, prof.n - 1)
                seg = piece_profiles[i][lo:hi + 1]
                excess = float(piece_profiles[i][max(bk - tol, 0):bk + tol + 1].max() - seg.min())
                level = float(total[bk] - excess)
                if prof.valid[min(bk, prof.n - 1)]:
                    status[k] = _visibility(excess, level, prof.pixels(bk - tol, bk + tol), read2)
                    status[k] = "maybe" if status[k] != "none" else "none"
            for k, st in enumerate(status):
                rings.append((i, piece.meta["rings"][k], st, ring_bins[k]))
            matched = {b for b in sure if owner.get(b) == i
                       and any(abs(b - bk) <= max(2, int(0.03 * bk + 1)) for bk in ring_bins)}
            other_crests += [(b, sure[b][2]) for b in sure if owner.get(b) == i and b not in matched]
        elif piece.role == "spots":
            status_by_n, visible = _spot_visibility(scene, piece, prof, read2)
            spot_counts.append(visible)
            for ring in piece.meta["rings"]:
                rings.append((i, ring, status_by_n.get(ring["N"], "none"), prof.bin_of(ring["q"])))
        elif piece.role == "halo":
            b0 = prof.bin_of(piece.meta["q0"])
            half = max(2, prof.bin_of(piece.meta["q0"] + piece.meta["fwhm"] / 2) - b0)
            mine = [b for b in sure if owner.get(b) == i and abs(b - b0) <= half]
            if mine:
                halo_status.append("sure")
            else:
                lo, hi = max(b0 - 3 * half, 0), min(b0 + 3 * half, prof.n - 1)
                if lo >= prof.n - 1 or hi <= 0:
                    halo_status.append("none")
                    continue
                seg = piece_profiles[i][lo:hi + 1]
                excess = float(seg.max() - seg.min())
                at = lo + int(np.argmax(seg))
                st = _visibility(excess, float(total[at] - excess), prof.pixels(at - half, at + half), read2)
                halo_status.append("maybe" if st != "none" else "none")
            other_crests += [(b, sure[b][2]) for b in sure if owner.get(b) == i and abs(b - b0) > half]
        elif piece.role == "sf":
            s = np.interp(prof.q, piece.meta["s_q"], piece.meta["s"])
            no_s = piece_profiles[i] / np.maximum(s, 1e-6)
            b_peak = prof.bin_of(piece.meta["q_peak"])
            lo_bin, hi_bin = prof.bin_of(0.4 * piece.meta["q_peak"]), prof.bin_of(1.2 * piece.meta["q_peak"])
            tol = max(3, int(0.3 * b_peak))
            mine = [b for b in sure if owner.get(b) == i and lo_bin <= b <= hi_bin]
            if mine and piece.meta["s_max"] >= 1.05:
                replaced = _crests(total - piece_profiles[i] + no_s, prof.valid)
                still = _nearest(replaced, mine[0], 3)
                st = "sure" if not still or still[0] < 0.5 * sure[mine[0]][0] else "maybe"
            else:
                bump = np.maximum(piece_profiles[i] - no_s, 0)
                at = int(np.argmax(np.where(prof.valid, bump, 0)))
                window = prof.pixels(at - tol // 3, at + tol // 3)
                st = (_visibility(float(bump[at]), float(total[at] - bump[at]), window, read2)
                      if piece.meta["s_max"] >= 1.05 else "none")
                st = "maybe" if st != "none" else "none"
            sf_status.append(st)
            other_crests += [(b, sure[b][2]) for b in sure if owner.get(b) == i and b not in mine]
        else:
            other_crests += [(b, sure[b][2]) for b in sure if owner.get(b) == i]

    # distinct visible rings: rings on the same crest (within 2 bins) count once
    def distinct(statuses):
        bins = sorted(bk for _i, _r, st, bk in rings if st in statuses)
        merged = []
        for b in bins:
            if not merged or b - merged[-1] > 2:
                merged.append(b)
        return len(merged)

    n_sure, n_any = distinct({"sure"}), distinct({"sure", "maybe"})
    evidence.update(rings_sure=n_sure, rings_maybe=n_any - n_sure, other_crests=len(other_crests))

    # Ring, Many rings, Higher orders, BCC, FCC
    # other visible crests (form-factor fringes, P·S maxima): a narrow one may pass for a ring, a broad one for a halo
    widths = [_relative_width(prof, b, w) for b, w in other_crests]
    narrow_other, broad_other = sum(w < 0.15 for w in widths), sum(w >= 0.1 for w in widths)
    labels["Ring"] = 1 if n_sure >= 1 else (0 if n_any == 0 and not narrow_other else None)
    labels["Many rings"] = 1 if n_sure >= 5 else (0 if n_any + len(other_crests) <= 4 else None)
    higher = False
    for i in {r[0] for r in rings}:
        qs = [r["q"] for j, r, st, _b in rings if j == i and st == "sure"]
        for qa in qs:
            for qb in qs:
                ratio = qb / qa
                if ratio > 1.5 and abs(ratio - round(ratio)) < 0.02 * ratio:
                    higher = True
    labels["Higher orders"] = 1 if higher else (0 if n_any <= 1 else None)
    for lattice in ("BCC", "FCC"):
        mine = [i for i, p in enumerate(scene.pieces) if p.meta.get("lattice") == lattice]
        if not mine:
            labels[lattice] = 0
            continue
        sure_bins = sorted(bk for i, _r, st, bk in rings if i in mine and st == "sure")
        distinct_sure = len([b for j, b in enumerate(sure_bins) if j == 0 or b - sure_bins[j - 1] > 2])
        any_visible = any(st != "none" for i, _r, st, _b in rings if i in mine)
        labels[lattice] = 1 if distinct_sure >= 2 else (0 if not any_visible else None)

    # Polycrystalline
    if not spot_counts:
        labels["Polycrystalline"] = 0
    else:
        sure_spots = sum(c["sure"] for c in spot_counts)
        any_spots = sum(c["sure"] + c["maybe"] for c in spot_counts)
        labels["Polycrystalline"] = 1 if sure_spots >= SPOTS_POLYCRYSTALLINE else (0 if any_spots < 3 else None)
        evidence.update(spots_sure=sure_spots, spots_maybe=any_spots - sure_spots)

    # Halo and Structure factor
    sf_seen = any(st != "none" for st in sf_status)  # a correlation peak may pass for a halo
    labels["Halo"] = 1 if "sure" in halo_status else (
        0 if "maybe" not in halo_status and not broad_other and not sf_seen else None)
    labels["Structure factor"] = 1 if "sure" in sf_status else (0 if "maybe" not in sf_status else None)
    evidence.update(halo=halo_status, structure_factor=sf_status, broad_other_crests=broad_other)

    # Diffuse low-q / high-q
    labels["Diffuse low-q"], evidence["diffuse_low"] = _diffuse_low(scene, prof, piece_profiles, total)
    labels["Diffuse high-q"], evidence["diffuse_high"] = _diffuse_high_rule(scene, prof, piece_profiles, total)

    # Strong / Weak scattering, High background
    sample = scene.sample()[prof.open] * prof.t
    peak = brightness(sample)
    level = float(np.median(scene.background[prof.open] * prof.t)) if sample.size else 0.0
    seen_level = level + scene.dark_offset
    labels["Strong scattering"] = 1 if peak >= 1000 and peak >= 10 * level else (
        0 if peak < 200 or peak < 3 * level else None)
    labels["Weak scattering"] = 1 if peak <= 10 or peak <= level else (0 if peak >= 50 and peak >= 5 * level else None)
    labels["High background"] = 1 if level >= 10 and level >= 0.1 * peak else (
        0 if seen_level < 2 or seen_level < 0.01 * peak else None)
    evidence.update(sample_peak=peak, background_median=level)

    # Beam Off Image and the beamstops
    labels["Beam Off Image"] = 0 if scene.beam_on_image else 1
    stop_status, stop_evidence = _beamstop_visibility(scene)
    evidence["beamstop"] = stop_evidence
    for kind, attribute in (("circular", "Circ. Beamstop"), ("linear", "Linear beamstop"), ("wedge", "Wedge beamstop")):
        if scene.beamstop != kind:
            labels[attribute] = 0
        else:
            labels[attribute] = {"sure": 1, "maybe": None, "none": 0}[stop_status]
    return {a: labels[a] for a in ATTRIBUTES}, evidence


def _relative_width(prof: _Profiles, b: int, width_bins: float) -> float:
    lo, hi = max(int(b - width_bins / 2), 0), min(int(b + width_bins / 2), prof.n - 1)
    return float((prof.q[hi] - prof.q[lo]) / max(prof.q[b], 1e-12))


def _spot_visibility(scene: Scene, piece: Piece, prof: _Profiles, read2: float):
    """Per ring label N: 'sure'/'maybe'/'none' from its visible spots; and the counts of visible spots."""
    spots = piece.meta["spots"]
    counts = {"sure": 0, "maybe": 0}
    per_ring: dict[int, dict[str, int]] = {}
    if len(spots):
        rest = scene.expected() - scene.transmission * piece.image
        rows, cols = scene.shape
        seen_cells = set()
        order = np.argsort(-spots[:, 2])
        for row, col, height, label in spots[order]:
            r, c = int(round(row)), int(round(col))
            if not (0 <= r < rows and 0 <= c < cols) or not scene.sensitive[r, c]:
                continue
            cell = (r // 3, c // 3)
            if cell in seen_cells:
                continue
            seen_cells.add(cell)
            t = float(scene.transmission[r, c])
            peak = float(piece.image[r, c]) * t
            level = float(rest[r, c])
            sigma = _noise(level, read2, SPOT_PATCH)
            if peak >= max(3 * sigma, 0.3 * level, 1.0):
                status = "sure"
            elif peak >= max(1.5 * sigma, 0.1 * level, 0.3):
                status = "maybe"
            else:
                continue
            counts[status] += 1
            ring = per_ring.setdefault(int(label), {"sure": 0, "maybe": 0})
            ring[status] += 1
    status_by_n = {}
    for n, c in per_ring.items():
        status_by_n[n] = "sure" if c["sure"] >= SPOTS_RING else ("maybe" if c["sure"] + c["maybe"] >= 4 else "none")
    return status_by_n, counts


def _smooth_part(prof: _Profiles, scene: Scene, piece_profiles, roles) -> np.ndarray:
    """Sum of the pieces' smooth parts: diffuse and S(q) pieces as they are, lattices by their lower envelope."""
    from scipy.ndimage import minimum_filter1d

    out = np.zeros(prof.n)
    for piece, p in zip(scene.pieces, piece_profiles):
        if piece.role in roles:
            out += p
        elif piece.role == "lattice" and "envelope" in roles:
            envelope = p.copy()
            for size in (5, 11, 21, 41):  # a window that grows with the radius
                env = minimum_filter1d(p, size, mode="nearest")
                lo = {5: 0, 11: 50, 21: 150, 41: 400}[size]
                envelope[lo:] = env[lo:]
            out += envelope
    return out


def _diffuse_low(scene, prof, piece_profiles, total):
    """Smooth sample scattering, brightest next to the beam(stop), standing above everything else there.

    Air scatter falls from the beam the same way: where it alone would pass the test, a file whose
    sample does not is left unknown rather than negative.
    """
    diffuse = _smooth_part(prof, scene, piece_profiles, ("diffuse_low", "sf", "envelope"))
    label, evidence = _diffuse_low_test(prof, diffuse, total)
    if label == 0 and scene.air is not None:
        with_air, _ = _diffuse_low_test(prof, diffuse + prof.of(scene.air), total)
        if with_air != 0:
            label, evidence["air_alike"] = None, True
    return label, evidence


def _diffuse_low_test(prof, diffuse, total):
    rest = np.maximum(total - diffuse, 0)
    sigma = _noise(rest, prof.read2)
    valid = np.flatnonzero(prof.valid)
    if not len(valid) or diffuse.max() <= 0:
        return 0, {"pixels": 0}

    def run(strength, contrast, minimum):
        """Pixels of the qualifying run of bins from the inner edge; inner value vs the run's max and its end."""
        ok = (diffuse >= strength * sigma) & (diffuse >= contrast * rest) & (diffuse >= minimum) & prof.valid
        start = next((b for b in valid[:6] if ok[b]), None)
        if start is None:
            return 0.0, 0.0, 1.0
        end = start
        while end + 1 < prof.n and (ok[end + 1] or not prof.valid[end + 1]):
            end += 1
        inner = float(np.mean(diffuse[start:start + 3]))
        outer = float(np.mean(diffuse[max(end - 2, start):end + 1]))
        return prof.pixels(start, end), inner / float(diffuse[start:end + 1].max()), inner / max(outer, 1e-30)

    sure_px, sure_top, sure_fall = run(3.0, 1.0, 0.5)
    maybe_px, maybe_top, maybe_fall = run(1.5, 0.2, 0.1)
    evidence = {"pixels": sure_px, "inner_vs_max": round(sure_top, 2), "fall": round(sure_fall, 2),
                "pixels_maybe": maybe_px}
    if sure_px >= 1500 and sure_top >= 0.7 and sure_fall >= 2:
        return 1, evidence
    if maybe_px < 300 or maybe_top < 0.3 or maybe_fall < 1.2:
        return 0, evidence
    return None, evidence


def _diffuse_high_rule(scene, prof, piece_profiles, total):
    """Broad scattering growing towards high q: over the outer 40 % of the radial range it stands above
    everything else, and there it is ≥ 2× what it is over the inner 20 %."""
    high = _smooth_part(prof, scene, piece_profiles, ("diffuse_high",))
    valid = np.flatnonzero(prof.valid)
    if len(valid) < 10:
        return 0, {}
    b_in, b_out = valid[0], valid[-1]
    outer = valid[valid >= b_in + 0.6 * (b_out - b_in)]
    inner = valid[valid <= b_in + 0.2 * (b_out - b_in)]

    def growth(y):
        return float(np.mean(y[outer])) / max(float(np.mean(y[inner])), 1e-30)

    rest = np.maximum(total - high, 0)
    sigma = _noise(rest, prof.read2)
    sure = (high >= 3 * sigma) & (high >= 0.5 * rest) & (high >= 0.5)
    maybe = (high >= 1.5 * sigma) & (high >= 0.2 * rest) & (high >= 0.1)
    sure_px = float(prof.count[outer][sure[outer]].sum())
    maybe_px = float(prof.count[outer][maybe[outer]].sum())
    rise = growth(high) if high.max() > 0 else 0.0
    evidence = {"pixels": sure_px, "growth": round(rise, 2), "pixels_maybe": maybe_px}
    if sure_px >= 3000 and rise >= 2:
        return 1, evidence
    # other smooth sample parts growing towards the edge (a halo's flank, …) would look the same
    others = _smooth_part(prof, scene, piece_profiles, ("diffuse_low", "sf", "halo", "envelope"))
    other_rest = np.maximum(total - others, 0)
    others_visible = float(prof.count[outer][((others >= 0.5 * other_rest) & (others >= 0.5))[outer]].sum())
    evidence["others_growth"] = round(growth(others), 2) if others.max() > 0 else 0.0
    if (maybe_px < 500 or rise < 1.3) and not (others_visible >= 3000 and evidence["others_growth"] >= 1.5):
        return 0, evidence
    return None, evidence


def _beamstop_visibility(scene: Scene) -> tuple[str, dict]:
    """Is the beamstop's shadow on the image and darker than what surrounds it by more than the noise?

    Judged where the shadow hides the most (the brighter half of what it covers): a bar crossing a
    dark outer region is still seen where it crosses the bright scattering around the beam.
    """
    shadow = scene.sensitive & (scene.transmission < 0.5)
    pixels = int(shadow.sum())
    if scene.beamstop == "none" or pixels < 15:
        return "none", {"pixels": pixels}
    unshaded = (scene.sample() + scene.background)[shadow]
    t = scene.transmission[shadow]
    leak = scene.direct[shadow] * t if scene.direct is not None else 0.0
    bright = unshaded >= np.median(unshaded)
    removed = float(np.median((unshaded * (1 - t))[bright]))
    left = float(np.median((unshaded * t + leak)[bright]))
    sigma = _noise(left, scene.read_noise**2)
    evidence = {"pixels": pixels, "removed": round(removed, 3), "left": round(left, 3)}
    if pixels >= 60 and removed >= max(3 * sigma, 0.2) and removed >= left:
        return "sure", evidence
    if removed >= max(1.5 * sigma, 0.05) and removed >= 0.25 * left:
        return "maybe", evidence
    return "none", evidence


# =============================================================================== the set
BEAM_PLACEMENTS = ("centre", "off_centre", "near_edge", "corner", "off_image")
BEAM_PLACEMENT_P = (0.25, 0.3, 0.15, 0.12, 0.18)
BEAMSTOPS = ("circular", "linear", "wedge", "none")
BEAMSTOP_P = (0.36, 0.30, 0.26, 0.08)
DISTANCE_MM = {"saxs": (300.0, 15000.0), "waxs": (40.0, 800.0)}
WAVELENGTH_A = {"saxs": (0.7, 1.6), "waxs": (0.4, 1.6)}


def _place_beam(rng, rows, cols, placement, plate=False) -> tuple[float, float]:
    """The direct beam's position (row, col) for a placement; on an image plate, relative to its disc."""
    if plate:
        radius = PLATE_RADIUS * min(rows, cols)
        distance = {"centre": rng.uniform(0, 0.2) * radius, "off_centre": rng.uniform(0.2, 0.6) * radius,
                    "near_edge": radius - rng.uniform(25, 100), "corner": radius - rng.uniform(25, 100),
                    "off_image": radius + rng.uniform(20, 400)}[placement]
        angle = rng.uniform(0, 2 * np.pi)
        return rows / 2 + distance * np.sin(angle), cols / 2 + distance * np.cos(angle)
    if placement == "centre":
        return rows * rng.uniform(0.4, 0.6), cols * rng.uniform(0.4, 0.6)
    if placement == "off_centre":
        return rows * rng.uniform(0.15, 0.85), cols * rng.uniform(0.15, 0.85)
    if placement == "near_edge":
        inset = rng.uniform(25, 80)
        along = rng.uniform(0.2, 0.8)
        side = int(rng.integers(4))
        return [(inset, cols * along), (rows - inset, cols * along), (rows * along, inset),
                (rows * along, cols - inset)][side]
    if placement == "corner":
        return (rng.uniform(30, 100) if rng.random() < 0.5 else rows - rng.uniform(30, 100),
                rng.uniform(30, 100) if rng.random() < 0.5 else cols - rng.uniform(30, 100))
    outside = rng.uniform(20, 400)  # off the image: rings show as arcs
    along = rng.uniform(-0.2, 1.2)
    side = int(rng.integers(4))
    return [(-outside, cols * along), (rows + outside, cols * along), (rows * along, -outside),
            (rows * along, cols + outside)][side]


def plan_files(per_group: int, groups: list[str] | None = None) -> list[tuple[str, int]]:
    """(group, number within the group) of every file of the set, group by group."""
    names = list(groups or GROUPS)
    unknown = set(names) - set(GROUPS)
    if unknown:
        raise XrayscatterError(f"unknown external groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    return [(name, i) for name in names for i in range(per_group)]


def _rng(seed: int, group: str, i: int) -> np.random.Generator:
    """Each file's own stream: the same file whatever per_group or the subset of groups."""
    return np.random.default_rng([seed, list(GROUPS).index(group), i])


def make_file(folder: Path, group: str, i: int, seed: int) -> dict:
    """Draw, render and write file ``i`` of ``group``; return its truth row."""
    rng = _rng(seed, group, i)
    spec = GROUPS[group][0](rng)
    detector_name = list(DETECTORS)[(i + 3 * list(GROUPS).index(group)) % len(DETECTORS)]
    detector = DETECTORS[detector_name]
    placement = str(rng.choice(BEAM_PLACEMENTS, p=BEAM_PLACEMENT_P))
    centre = _place_beam(rng, detector.rows, detector.cols, placement, plate=detector.kind == "plate")
    on_image = placement != "off_image"
    beamstop = str(rng.choice(BEAMSTOPS, p=BEAMSTOP_P)) if on_image else "none"
    tilted = rng.random() < (0.4 if spec.kind == "waxs" else 0.15)
    tilt = rng.uniform(3, 30) if tilted else 0.0
    wavelength = rng.uniform(*WAVELENGTH_A[spec.kind])
    # place the sample's feature at a chosen radius by the choice of distance, as one sets up a beamline
    yy, xx = np.mgrid[0:detector.rows:16, 0:detector.cols:16]
    typical = float(np.median(np.hypot(yy + 0.5 - centre[0], xx + 0.5 - centre[1])))
    lo, hi = DISTANCE_MM[spec.kind]
    if spec.q_feature is not None:
        radius = max(typical * rng.uniform(*spec.feature_frac), 25.0)
        two_theta = 2 * np.arcsin(min(spec.q_feature * wavelength / (4 * np.pi), 0.95))
        distance = float(np.clip(radius * detector.pixel_mm / np.tan(two_theta), lo, hi))
    else:
        distance = _loguniform(rng, lo, hi)
    geometry = Geometry(detector.rows, detector.cols, detector.pixel_mm, distance, wavelength, centre, tilt,
                        rng.uniform(0, 360))
    peak_counts = 10 ** rng.uniform(*spec.peak_counts_log10)
    background_level = 10 ** rng.uniform(-1.5, 3.0)
    scene, info = render(spec, geometry, detector, beamstop, rng, background_level, peak_counts)
    frame, detector_info = detector_frame(scene.expected(), scene, detector, rng)
    name = f"{group}_{i:02d}{detector.suffix}"
    write_frame(folder / name, frame, detector)
    labels, evidence = decide(scene)
    return {"file": name, "group": group, "detector": detector_name, "format": detector.label,
            "shape": [detector.rows, detector.cols], "beam_centre_px": [float(centre[0]), float(centre[1])],
            "beam_placement": placement, "wavelength_A": float(wavelength), "distance_mm": distance,
            "pixel_mm": detector.pixel_mm, "tilt_deg": float(tilt), "tilt_axis_deg": float(geometry.tilt_axis_deg),
            "sample": _jsonable(spec.description), "spots": _jsonable(spec.spots), "kind": spec.kind,
            "peak_counts": float(peak_counts), "background_level": float(background_level),
            **_jsonable(info), "detector_response": _jsonable(detector_info),
            "labels": labels, "attributes": sorted(a for a, v in labels.items() if v == 1),
            "evidence": _jsonable(evidence)}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _needed_tables(plan, seed) -> set[tuple[str, float]]:
    """The paracrystal tables the planned files use (drawn the same way make_file draws them)."""
    needed = set()
    for group, i in plan:
        spec = GROUPS[group][0](_rng(seed, group, i))
        for piece in spec.description.get("pieces", []):
            if str(piece.get("model", "")).endswith("_paracrystal") and "dnn" in piece:
                needed.add((piece["model"].split("_")[0].upper(), float(piece["d_factor"])))
    return needed


def definition(per_group: int, seed: int, groups: list[str] | None = None) -> dict:
    """What the set is made of; its hash decides whether a folder's files can be reused."""
    try:
        from sasmodels import __version__ as sasmodels_version
    except ImportError:
        sasmodels_version = None
    source = Path(__file__).read_text().split(_SCORING_MARKER)[0]
    body = {"version": SET_VERSION, "per_group": per_group, "seed": seed, "groups": list(groups or GROUPS),
            "sasmodels": sasmodels_version, "numpy": np.__version__,
            "source_sha256": hashlib.sha256(source.encode()).hexdigest()}
    body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return body


def _make_file_task(args):
    return make_file(*args)


def write_external_set(folder: str | Path, per_group: int = DEFAULT_PER_GROUP, seed: int = DEFAULT_SEED,
                       groups: list[str] | None = None, workers: int = 1) -> list[dict]:
    """Write ``per_group`` files per group into ``folder`` and ``truth.json``; return the truth rows."""
    try:
        import sasmodels  # noqa: F401
    except ImportError:
        raise XrayscatterError("bench external needs sasmodels (pip install sasmodels, or the dev extra)") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_files(per_group, groups)
    for lattice, d_factor in sorted(_needed_tables(plan, seed)):  # once, before the workers fork
        paracrystal_lattice_factor(lattice, d_factor)
    tasks = [(folder, group, i, seed) for group, i in plan]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            truth = list(pool.map(_make_file_task, tasks, chunksize=2))
    else:
        truth = [_make_file_task(t) for t in tasks]
    document = {"definition": definition(per_group, seed, groups), "files": truth}
    (folder / "truth.json").write_text(json.dumps(document, indent=1) + "\n")
    return truth


def load_truth(folder: str | Path) -> tuple[dict | None, list[dict]]:
    path = Path(folder) / "truth.json"
    if not path.is_file():
        return None, []
    document = json.loads(path.read_text())
    if isinstance(document, list):  # written by version 1
        return None, document
    return document.get("definition"), document.get("files", [])


# ---- everything above defines the set (its source is hashed into truth.json) ----
_SCORING_MARKER = "# ---- everything above defines the set"


# =============================================================================== scoring
def known_labels(truth: list[dict], scores: dict[str, dict[str, float]], attribute: str):
    """The files whose ``attribute`` label is known (and scored): their positions in ``truth`` (int), labels (0/1
    int) and scores (float), as three (k,) arrays."""
    known = [(i, row["labels"][attribute], scores[row["file"]][attribute]) for i, row in enumerate(truth)
             if row["labels"].get(attribute) is not None and attribute in scores[row["file"]]]
    return (np.array([k[0] for k in known], int), np.array([k[1] for k in known], int),
            np.array([k[2] for k in known], float))


def score_attributes(truth: list[dict], scores: dict[str, dict[str, float]]) -> list[dict]:
    """Per attribute: ROC AUC and AP of the model's scores over the files whose label is known.

    A file's label is 1, 0 or None (unknown: left out of that attribute). Attributes without
    both classes get ``auc`` and ``ap`` None.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = []
    for attribute in ATTRIBUTES:
        _, y, s = known_labels(truth, scores, attribute)
        positives, negatives = int(y.sum()), int(len(y) - y.sum())
        both = positives > 0 and negatives > 0
        rows.append({"attribute": attribute, "positives": positives, "negatives": negatives,
                     "unknown": len(truth) - len(y), "base_rate": positives / len(y) if len(y) else None,
                     "auc": float(roc_auc_score(y, s)) if both else None,
                     "ap": float(average_precision_score(y, s)) if both else None,
                     "mean_score_with": float(s[y == 1].mean()) if positives else None,
                     "mean_score_without": float(s[y == 0].mean()) if negatives else None})
    return rows


BOOTSTRAP_RESAMPLES = 500
INTERVAL_LEVEL = 0.90


def weighted_auc_and_ap(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of one attribute under R weightings of its files at once.

    The same numbers as scikit-learn's ``roc_auc_score`` and ``average_precision_score`` with
    ``sample_weight`` (tested), vectorised over the weightings: a bootstrap needs hundreds of them, and
    the per-call checks of scikit-learn cost more than the sums.

    Args:
        labels: (n,) 0/1; scores: (n,); weights: (R, n) ≥ 0.

    Returns:
        (R,) AUC and (R,) AP; NaN where a weighting leaves one class without weight.
    """
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, float)
    weights = np.atleast_2d(np.asarray(weights, float))
    positive_weight = weights[:, labels].sum(axis=1)
    negative_weight = weights[:, ~labels].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # AUC: the weighted share of (positive, negative) pairs ranked right, ties counting half
        above = scores[labels][:, None] - scores[~labels][None, :]  # (positives, negatives)
        wins = (above > 0) + 0.5 * (above == 0)
        pairs = np.einsum("rp,pn,rn->r", weights[:, labels], wins, weights[:, ~labels])
        auc = pairs / (positive_weight * negative_weight)
        # AP: precision at each distinct score (highest first) times the recall it adds
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
        true_positives = np.cumsum(weights[:, order] * labels[order], axis=1)[:, last_of_tie]
        predicted = np.cumsum(weights[:, order], axis=1)[:, last_of_tie]
        precision = np.where(predicted > 0, true_positives / np.where(predicted > 0, predicted, 1.0), 0.0)
        recall_step = np.diff(true_positives, axis=1, prepend=0.0) / positive_weight[:, None]
        ap = np.sum(recall_step * precision, axis=1)
    one_class = (positive_weight <= 0) | (negative_weight <= 0)
    return np.where(one_class, np.nan, auc), np.where(one_class, np.nan, ap)


def resample_weights(count: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, count) bootstrap weights: how often each of ``count`` files is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, count, count), minlength=count) for _ in range(resamples)])


def resampled_scores(truth: list[dict], scores: dict[str, dict[str, float]], weights: np.ndarray):
    """ROC AUC and AP of every attribute under each resample's weights.

    Returns:
        (aucs, aps, scored): (R, 17) each (NaN where a resample or the set lacks a class), and the indices of
        the attributes with both classes in the whole set, over which ``summarise`` takes its means.
    """
    aucs = np.full((len(weights), len(ATTRIBUTES)), np.nan)
    aps = np.full((len(weights), len(ATTRIBUTES)), np.nan)
    scored = []
    for a, attribute in enumerate(ATTRIBUTES):
        positions, labels, values = known_labels(truth, scores, attribute)
        if 0 < labels.sum() < len(labels):
            scored.append(a)
            aucs[:, a], aps[:, a] = weighted_auc_and_ap(labels, values, weights[:, positions])
    return aucs, aps, scored


def _intervals(aucs: np.ndarray, aps: np.ndarray, scored: list[int], level: float) -> dict:
    """Percentile intervals of per-resample AUCs (R, 17), APs and their means over ``scored``."""
    resamples = len(aucs)
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def interval(values: np.ndarray):
        values = values[np.isfinite(values)]
        return [float(v) for v in np.percentile(values, tails)] if len(values) >= resamples / 2 else None

    nothing = np.full(resamples, np.nan)
    return {"auc": {attribute: interval(aucs[:, a]) for a, attribute in enumerate(ATTRIBUTES)},
            "mean_auc": interval(aucs[:, scored].mean(axis=1) if scored else nothing),
            "map": interval(aps[:, scored].mean(axis=1) if scored else nothing),
            "level": level, "resamples": resamples}


def bootstrap_intervals(truth: list[dict], scores: dict[str, dict[str, float]], resamples: int = BOOTSTRAP_RESAMPLES,
                        level: float = INTERVAL_LEVEL, seed: int = 0) -> dict:
    """How far the set's ROC AUCs and APs would move on another draw of as many files: percentile intervals over
    ``resamples`` bootstrap resamples of the files (a file drawn k times weighs k).

    Resampling whole files keeps each file's labels together, so the mean over attributes gets an interval
    of its own (not one made from the attributes' intervals, which are not independent).

    Returns:
        ``{"auc": {attribute: [low, high] or None}, "mean_auc": [low, high] or None, "map": [low, high] or None,
        "level", "resamples"}``; None where fewer than half the resamples have both classes.
    """
    return _intervals(*resampled_scores(truth, scores, resample_weights(len(truth), resamples, seed)), level)


def paired_difference(truth: list[dict], scores: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
                      resamples: int = BOOTSTRAP_RESAMPLES, level: float = INTERVAL_LEVEL, seed: int = 0) -> dict:
    """``scores`` − ``baseline`` (two models on the same files): the difference of each attribute's ROC AUC, of the
    mean AUC and of the mAP, with intervals from the *same* resamples for both (paired: the files both models
    found hard move both figures together, so the difference is surer than either figure).

    Returns:
        ``{"auc": {attribute: difference or None}, "mean_auc", "map", "intervals": _intervals(...) of the differences}``.
    """
    weights = resample_weights(len(truth), resamples, seed)
    ones = np.ones((1, len(truth)))
    new, new_ap, scored = resampled_scores(truth, scores, np.vstack([ones, weights]))
    old, old_ap, _ = resampled_scores(truth, baseline, np.vstack([ones, weights]))
    auc, ap = new - old, new_ap - old_ap
    return {"auc": {attribute: (None if np.isnan(auc[0, a]) else float(auc[0, a])) for a, attribute in enumerate(ATTRIBUTES)},
            "mean_auc": float(auc[0, scored].mean()) if scored else None,
            "map": float(ap[0, scored].mean()) if scored else None,
            "intervals": _intervals(auc[1:], ap[1:], scored, level)}


BREAKDOWN_MIN_CLASS = 3  # a subset's AUC needs this many files of each class, else it is left out (too noisy)
BREAKDOWNS = ("detector", "kind", "beam_placement")  # truth fields the results are split by


def breakdown(truth: list[dict], scores: dict[str, dict[str, float]], by: str = "detector",
              min_class: int = BREAKDOWN_MIN_CLASS) -> list[dict]:
    """The scores read per subset of the files: one row per value of the truth field ``by`` (``detector``,
    ``kind``, ``beam_placement``), holding each attribute's ROC AUC over that subset's files where it has at
    least ``min_class`` files of each class, and its mean over those attributes.

    A model that reads one file format or one geometry worse than the others shows it here, where the
    whole set's AUCs average it away. The subsets hold different attributes with both classes, so
    ``mean_auc_common`` is also given over the attributes every subset can score.

    Returns:
        one dict per value (in order of first appearance): ``value``, ``files``, ``auc`` ({attribute: AUC or
        None}), ``mean_auc`` (None if nothing scores), ``attributes_scored``, ``mean_auc_common``, ``lowest``
        ((attribute, AUC) or None).
    """
    values = list(dict.fromkeys(str(row.get(by)) for row in truth))
    rows = []
    for value in values:
        subset = [row for row in truth if str(row.get(by)) == value]
        auc = {r["attribute"]: r["auc"] if min(r["positives"], r["negatives"]) >= min_class else None
               for r in score_attributes(subset, scores)}
        scored = {a: v for a, v in auc.items() if v is not None}
        rows.append({"value": value, "files": len(subset), "auc": auc,
                     "mean_auc": float(np.mean(list(scored.values()))) if scored else None,
                     "attributes_scored": len(scored),
                     "lowest": min(scored.items(), key=lambda item: item[1]) if scored else None})
    common = common_attributes(rows)
    for r in rows:
        r["mean_auc_common"] = float(np.mean([r["auc"][a] for a in common])) if common else None
    return rows


def common_attributes(rows: list[dict]) -> list[str]:
    """The attributes that every subset of a :func:`breakdown` scores."""
    return [a for a in ATTRIBUTES if all(r["auc"][a] is not None for r in rows)]


def breakdowns(truth: list[dict], scores: dict[str, dict[str, float]]) -> dict:
    """:func:`breakdown` by every field of ``BREAKDOWNS`` the truth rows have, and the attributes common to all
    subsets of each (over which ``mean_auc_common`` is taken)."""
    out = {}
    for by in BREAKDOWNS:
        if not any(by in row for row in truth):
            continue
        rows = breakdown(truth, scores, by)
        out[by] = {"rows": rows, "common_attributes": common_attributes(rows)}
    return out


def summarise(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["auc"] is not None]
    aucs = [r["auc"] for r in scored]
    return {"mean_auc": float(np.mean(aucs)) if aucs else None,
            "map": float(np.mean([r["ap"] for r in scored])) if scored else None,
            "mean_base_rate": float(np.mean([r["base_rate"] for r in scored])) if scored else None,
            "min_auc": float(min(aucs)) if aucs else None,
            "attributes_scored": len(scored),
            "target_met": bool(aucs) and float(np.mean(aucs)) >= 0.90 and min(aucs) >= 0.80}


def _markdown(summary: dict) -> str:
    views = summary.get("views", 1)
    averaged = f", probabilities averaged over {views} views of each file" if views > 1 else ""
    lines = [f"# bench external: {summary['files']} sasmodels files tagged by `{summary['model']}`{averaged}", "",
             f"Set `{summary['definition']['hash']}` (seed {summary['definition']['seed']}, "
             f"{summary['definition']['per_group']} per group, {len(summary['definition']['groups'])} groups). "
             "Unknown labels are left out of each attribute's ROC AUC and AP.", "",
             f"Intervals: {100 * summary['interval_level']:.0f} % of bootstrap resamples of the files.", "",
             "| attribute | positives | negatives | unknown | base rate | ROC AUC | interval | AP |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["attributes"]:
        lines.append(f"| {r['attribute']} | {r['positives']} | {r['negatives']} | {r['unknown']} "
                     f"| {_fmt(r['base_rate'])} | {_fmt(r['auc'])} | {_interval(r['auc_interval'])} | {_fmt(r['ap'])} |")
    lines.append(f"| **mean** | | | | {_fmt(summary['mean_base_rate'])} | **{_fmt(summary['mean_auc'])}** "
                 f"| {_interval(summary['mean_auc_interval'])} | **{_fmt(summary['map'])}** "
                 f"({_interval(summary['map_interval'])}) |")
    lines += ["", f"Target (mean ROC AUC ≥ 0.90, every attribute ≥ 0.80): "
                  f"{'met' if summary['target_met'] else 'not met'} (lowest ROC AUC {_fmt(summary['min_auc'])})."]
    if summary.get("beam_centre"):
        lines += ["", beam_centre_line(summary["beam_centre"]).capitalize() + "."]
    for by, split in (summary.get("breakdowns") or {}).items():
        lines += ["", f"## By {by.replace('_', ' ')}", "",
                  f"ROC AUC over each subset's files, where it has at least {BREAKDOWN_MIN_CLASS} files of each "
                  f"class (– : fewer); common mean over the {len(split['common_attributes'])} attributes every "
                  "subset scores.", "",
                  "| attribute | " + " | ".join(r["value"] for r in split["rows"]) + " |",
                  "|---|" + "---|" * len(split["rows"])]
        lines.append("| files | " + " | ".join(str(r["files"]) for r in split["rows"]) + " |")
        for attribute in ATTRIBUTES:
            lines.append(f"| {attribute} | " + " | ".join(_fmt(r["auc"][attribute]) for r in split["rows"]) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(r['mean_auc'])}** ({r['attributes_scored']})"
                                                  for r in split["rows"]) + " |")
        lines.append("| common mean | " + " | ".join(_fmt(r["mean_auc_common"]) for r in split["rows"]) + " |")
    if summary.get("against"):
        intervals = summary["against"]["difference"]["intervals"]
        lines += ["", f"## Against `{summary['against']['model']}` on the same files", "",
                  f"Differences (this model − that one) with paired intervals ({100 * intervals['level']:.0f} % of "
                  f"{intervals['resamples']} bootstrap resamples, the same for both models).", "",
                  "| attribute | ROC AUC | baseline | difference | interval |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in _difference_rows(summary)]
    return "\n".join(lines) + "\n"


def _difference_rows(summary: dict) -> list[tuple[str, ...]]:
    """The comparison with ``summary["against"]``: per attribute, then the mean AUC and the mAP, the figure of
    this model and of the baseline, their difference and its paired interval."""
    against, difference = summary["against"], summary["against"]["difference"]
    intervals = difference["intervals"]
    baseline_auc = {r["attribute"]: r["auc"] for r in against["attributes"]}
    rows = [(r["attribute"], _fmt(r["auc"]), _fmt(baseline_auc[r["attribute"]]), _signed(difference["auc"][r["attribute"]]),
             _interval(intervals["auc"][r["attribute"]])) for r in summary["attributes"]]
    for name, key in (("mean AUC", "mean_auc"), ("mAP", "map")):
        rows.append((name, _fmt(summary[key]), _fmt(against[key]), _signed(difference[key]), _interval(intervals[key])))
    return rows


def _difference_table(summary: dict, table_class):
    """:func:`_difference_rows` as a rich table."""
    intervals = summary["against"]["difference"]["intervals"]
    table = table_class(title=f"{summary['model']} − {summary['against']['model']} on the same {summary['files']} "
                              f"files (paired: {100 * intervals['level']:.0f} % of {intervals['resamples']} bootstrap "
                              "resamples)")
    for column in ("attribute", "AUC", "baseline", "difference", "interval"):
        table.add_column(column, justify="left" if column == "attribute" else "right", no_wrap=True)
    for row in _difference_rows(summary):
        table.add_row(*row)
    return table


def _breakdown_table(split: dict, by: str, table_class):
    """One row per subset of a :func:`breakdown`: files, mean AUC, common mean, the lowest attribute."""
    table = table_class(title=f"by {by}: ROC AUC over each {by}'s files (attributes with ≥ {BREAKDOWN_MIN_CLASS} "
                              f"files of each class; common: the {len(split['common_attributes'])} every {by} scores)")
    for column in (by, "files", "mean AUC", "scored", "common mean", "lowest"):
        table.add_column(column, justify="left" if column in (by, "lowest") else "right", no_wrap=True)
    for r in split["rows"]:
        lowest = f"{r['lowest'][0]} {r['lowest'][1]:.2f}" if r["lowest"] else "–"
        table.add_row(r["value"], str(r["files"]), _fmt(r["mean_auc"]), str(r["attributes_scored"]),
                      _fmt(r["mean_auc_common"]), lowest)
    return table


def _signed(v):
    return "–" if v is None else f"{v:+.3f}"


def _fmt(v):
    return "–" if v is None else f"{v:.2f}"


def _interval(bounds):
    return "–" if bounds is None else f"{bounds[0]:.2f}–{bounds[1]:.2f}"


def bench_external(model: str | Path | None = None, folder: str | Path | None = None,
                   per_group: int = DEFAULT_PER_GROUP, seed: int = DEFAULT_SEED, workers: int = 2,
                   groups: list[str] | None = None, baseline: str | Path | None = None,
                   views: int | None = None) -> dict:
    """Write (or reuse) the sasmodels set, tag it with ``predict``'s code path, report ROC AUC and AP per attribute.

    Args:
        model: SavedModel (default: as ``predict`` picks it).
        folder: where the files go (default ``reports/external``); reused when its truth.json
            holds the same set definition (version, per_group, seed, groups, generator source).
        per_group: files per group (``len(GROUPS)`` groups).
        seed: the set's random seed.
        workers: processes writing the files.
        groups: a subset of ``GROUPS`` (default all).
        baseline: a second SavedModel to compare with on the same files: the difference (model − baseline)
            of each AUC, of the mean AUC and of the mAP, with paired bootstrap intervals (``summary["against"]``).
        views: the models' probabilities averaged over 1, 4 or 8 flipped and turned views of each file
            (:func:`xrayscatter.predict.dihedral_views`), for both models; None: each model's own (the views it
            was exported with, ``resnet.views``).

    Returns:
        dict with ``model``, ``folder``, ``files``, ``mean_auc``, ``map``, ``attributes`` (one dict
        per attribute) and ``definition``; also written to ``<folder>/results.json`` and ``results.md``.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    folder = Path(folder or "reports/external")
    wanted = definition(per_group, seed, groups)
    stored, truth = load_truth(folder)
    generation_seconds = None
    if stored is None or stored.get("hash") != wanted["hash"] or not all((folder / r["file"]).is_file() for r in truth):
        started = time.perf_counter()
        count = per_group * len(groups or GROUPS)
        with console.status(f"writing {count} detector files (sasmodels) into {folder}"):
            new_truth = write_external_set(folder, per_group, seed, groups, workers)
        generation_seconds = time.perf_counter() - started
        for stale in {r["file"] for r in truth} - {r["file"] for r in new_truth}:  # an older set's files
            (folder / stale).unlink(missing_ok=True)
        truth = new_truth

    from xrayscatter.predict import TaggingModel, resolve_model_dir, run_predictions

    def tag(model_dir):
        tagging_model = TaggingModel(resolve_model_dir(model_dir), views)
        results = run_predictions(tagging_model, [folder / row["file"] for row in truth], show_progress=True)
        failed = [r for r in results if r.error is not None]
        if failed:
            raise XrayscatterError(f"{failed[0].path}: {failed[0].error}")
        return tagging_model, results, {r.path.name: dict(zip(tagging_model.attributes, map(float, r.scores)))
                                        for r in results}

    started = time.perf_counter()
    tagging_model, results, scores = tag(model)
    seconds = time.perf_counter() - started
    rows = score_attributes(truth, scores)
    intervals = bootstrap_intervals(truth, scores)
    for row in rows:
        row["auc_interval"] = intervals["auc"][row["attribute"]] if row["auc"] is not None else None
    beams = {r.path.name: r.beam_xy for r in results if r.beam_xy is not None}
    summary = {"model": str(tagging_model.path), "views": tagging_model.views, "folder": str(folder),
               "files": len(truth), "definition": wanted, "generation_seconds": generation_seconds,
               "seconds": seconds, **summarise(rows), "mean_auc_interval": intervals["mean_auc"],
               "map_interval": intervals["map"], "interval_level": intervals["level"], "attributes": rows,
               "beam_centre": beam_centre_errors(truth, beams) if beams else None,
               "breakdowns": breakdowns(truth, scores)}
    if baseline is not None:
        baseline_model, _, baseline_scores = tag(baseline)
        baseline_rows = score_attributes(truth, baseline_scores)
        summary["against"] = {"model": str(baseline_model.path), "views": baseline_model.views,
                              **summarise(baseline_rows),
                              "attributes": [{k: r[k] for k in ("attribute", "auc", "ap")} for r in baseline_rows],
                              "difference": paired_difference(truth, scores, baseline_scores)}
    (folder / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "results.md").write_text(_markdown(summary))

    formats = sorted({DETECTORS[r["detector"]].suffix for r in truth})
    scores = "probabilities" if tagging_model.score_name == "probability" else "scores"
    table = Table(title=f"ROC AUC and AP of the {scores} of {tagging_model.path} on {len(truth)} "
                        f"sasmodels files ({', '.join(formats)}; {len({r['detector'] for r in truth})} detector formats)")
    level = f"AUC {100 * intervals['level']:.0f} %"
    for column in ("attribute", "pos/neg/unk", "base", "AUC", level, "AP", "mean +/−"):
        table.add_column(column, justify="left" if column == "attribute" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["attribute"], f"{r['positives']}/{r['negatives']}/{r['unknown']}", _fmt(r["base_rate"]),
                      _fmt(r["auc"]), _interval(r["auc_interval"]), _fmt(r["ap"]),
                      f"{_fmt(r['mean_score_with'])}/{_fmt(r['mean_score_without'])}")
    table.add_row("mean", "", _fmt(summary["mean_base_rate"]), _fmt(summary["mean_auc"]),
                  _interval(summary["mean_auc_interval"]), _fmt(summary["map"]), "")
    console.print(table)
    console.print(f"{level}: where {100 * intervals['level']:.0f} % of {intervals['resamples']} bootstrap resamples of "
                  f"the {len(truth)} files put it (mAP {_interval(summary['map_interval'])})")
    if summary["beam_centre"]:
        console.print(beam_centre_line(summary["beam_centre"]))
    if "detector" in summary["breakdowns"]:
        console.print(_breakdown_table(summary["breakdowns"]["detector"], "detector", Table))
    if baseline is not None:
        console.print(_difference_table(summary, Table))
    console.print(f"target (mean ROC AUC ≥ 0.90, none below 0.80): {'met' if summary['target_met'] else 'not met'}; "
                  f"results in {folder / 'results.md'}")
    return summary


def beam_centre_errors(truth: list[dict], estimates: dict[str, np.ndarray]) -> dict | None:
    """How far the model's beam centres lie from the files' true ones, over the files whose beam is on the image.

    Args:
        truth: the set's rows (``beam_centre_px`` (row, column), as ``Geometry.centre``, and ``shape`` (rows,
            columns) of each file).
        estimates: file name → (2,) estimated (x, y) px of that file.

    Returns:
        ``{"files", "median_px", "p90_px", "median_percent", "within_1_percent"}``: distances in px of each file and
        as a percentage of its long side (files are 487–2463 px), and the fraction of files within 1 % of it; None
        when no file with its beam on the image has an estimate.
    """
    distances, relative = [], []
    for row in truth:
        (y, x), (rows, columns) = row["beam_centre_px"], row["shape"]
        estimate = estimates.get(row["file"])
        if estimate is None or not (0 <= x <= columns and 0 <= y <= rows):
            continue
        distances.append(float(np.hypot(estimate[0] - x, estimate[1] - y)))
        relative.append(100.0 * distances[-1] / max(rows, columns))
    if not distances:
        return None
    return {"files": len(distances), "median_px": float(np.median(distances)), "p90_px": float(np.percentile(distances, 90)),
            "median_percent": float(np.median(relative)), "within_1_percent": float(np.mean(np.asarray(relative) <= 1.0))}


def beam_centre_line(errors: dict) -> str:
    return (f"beam centre, {errors['files']} files with the beam on the image: median error {errors['median_px']:.1f} px "
            f"({errors['median_percent']:.2f} % of the long side), 90th percentile {errors['p90_px']:.0f} px, "
            f"{100 * errors['within_1_percent']:.0f} % within 1 % of the side")


def contact_sheet(folder: str | Path, path: str | Path, count: int = 24, columns: int = 6) -> Path:
    """A PNG of ``count`` files spread over the set (log scale), titled with their truth: the attributes
    they have, and after '?' those left unknown."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xrayscatter.readers import read_detector_image

    _definition, truth = load_truth(folder)
    picks = truth[:: max(1, len(truth) // count)][:count]
    rows = int(np.ceil(len(picks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 4.1 * rows), squeeze=False)
    for ax, row in zip(axes.ravel(), picks):
        shown = np.log10(np.nan_to_num(read_detector_image(Path(folder) / row["file"]), nan=0.0).clip(0) + 1)
        ax.imshow(shown, cmap="magma", vmax=max(float(np.percentile(shown, 99.95)), 1e-3))
        yes = ", ".join(a for a, v in row["labels"].items() if v == 1) or "–"
        unknown = ", ".join(a for a, v in row["labels"].items() if v is None)
        title = textwrap.fill(yes, 48) + ("\n" + textwrap.fill("? " + unknown, 48) if unknown else "")
        ax.set_title(f"{row['file']}\n{title}", fontsize=6.5)
        ax.axis("off")
    for ax in axes.ravel()[len(picks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
