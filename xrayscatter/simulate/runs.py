"""Measurement runs: what a run shares (geometry, detector, beamstop, background style) and
the per-pixel maps derived from it, cached per process.

A run is drawn from its own random stream, ``(seed, run_id)``, so any process can rebuild
it; images of the run only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from xrayscatter.simulate import beamstops
from xrayscatter.simulate.detector import polarization_factor
from xrayscatter.simulate.geometry import DETECTORS, Geometry, module_gap_mask

STREAM_RUN = 1
STREAM_IMAGE = 2
STREAM_SPLIT = 3

# Relative frequencies of detectors across runs (pixel-array detectors dominate modern beamlines).
DETECTOR_WEIGHTS = {
    "Pilatus300K": 0.12, "Pilatus1M": 0.20, "Pilatus2M": 0.13, "Eiger1M": 0.10, "Eiger4M": 0.10,
    "MarCCD165": 0.15, "PhotonicScience": 0.12, "Rayonix-MX225": 0.08,
}
BEAM_PLACEMENTS = {"centred": 0.33, "offset": 0.34, "edge": 0.18, "off": 0.15}
BEAMSTOP_WEIGHTS = {"circular": 0.40, "linear": 0.26, "wedge": 0.21, "none": 0.13}


def rng_for(seed: int, stream: int, index: int, attempt: int = 0) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index): results never depend on the
    order in which images are made or on how many processes make them."""
    return np.random.default_rng([int(seed), stream, int(index), attempt])


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_run_params(seed: int, run_id: int, image_size: int, saxs_fraction: float) -> dict:
    """Draw everything a run shares. Returns a JSON-able dict (the run part of each image's record)."""
    rng = rng_for(seed, STREAM_RUN, run_id)
    mode = "SAXS" if rng.random() < saxs_fraction else "WAXS"
    detector_name = _choice(rng, DETECTOR_WEIGHTS)
    det = DETECTORS[detector_name]
    rotated = bool(rng.random() < 0.25)  # detector mounted in portrait/landscape the other way
    native_h, native_w = (det.width, det.height) if rotated else (det.height, det.width)
    scale = image_size / max(native_h, native_w)
    height, width = max(8, int(round(native_h * scale))), max(8, int(round(native_w * scale)))
    pixel_size = det.pixel_size_m / scale

    if mode == "SAXS":
        energy = rng.uniform(7.0, 18.0)
        distance = _log_uniform(rng, 1.0, 8.0)
    else:
        energy = rng.uniform(8.0, 25.0)
        distance = _log_uniform(rng, 0.06, 0.35)

    placement = _choice(rng, BEAM_PLACEMENTS)
    if placement == "centred":
        bx = width * (0.5 + rng.normal(scale=0.06))
        by = height * (0.5 + rng.normal(scale=0.06))
    elif placement == "offset":
        bx, by = width * rng.uniform(0.1, 0.9), height * rng.uniform(0.1, 0.9)
    elif placement == "edge":
        # near an edge or a corner, still on the image (typical WAXS and GISAXS set-ups)
        bx, by = width * rng.uniform(0.02, 0.98), height * rng.uniform(0.02, 0.98)
        if rng.random() < 0.5:
            bx = width * (rng.uniform(0.01, 0.08) if rng.random() < 0.5 else rng.uniform(0.92, 0.99))
        if rng.random() < 0.6:
            by = height * (rng.uniform(0.01, 0.08) if rng.random() < 0.5 else rng.uniform(0.92, 0.99))
    else:  # beam off the image: the detector is swung out to wide angles
        side = rng.integers(4)
        out = rng.uniform(0.02, 0.5)
        along = rng.uniform(-0.2, 1.2)
        bx, by = [(-out * width, along * height), ((1 + out) * width, along * height),
                  (along * width, -out * height), (along * width, (1 + out) * height)][side]
    on_image = 0 <= bx < width and 0 <= by < height
    # Detectors are never quite normal to the beam: a small random tilt. A detector moved far
    # off the beam (wide angles) is usually swung towards the sample, by part of the angle.
    tilt_x, tilt_y = np.radians(rng.normal(scale=1.0, size=2))
    if not on_image and rng.random() < 0.7:
        swing = rng.uniform(0.2, 1.0)
        dx = (width / 2 - bx) * pixel_size
        dy = (height / 2 - by) * pixel_size
        tilt_y += swing * np.arctan2(dx, distance)  # face the detector centre towards the sample
        tilt_x += -swing * np.arctan2(dy, distance)

    size = max(height, width)
    beamstop: dict = {"kind": _choice(rng, BEAMSTOP_WEIGHTS) if on_image else "none"}
    if beamstop["kind"] == "circular":
        radius = size * rng.uniform(0.012, 0.06)
        beamstop.update(radius=radius, arm_angle=rng.uniform(0, 2 * np.pi),
                        arm_half_width=max(0.6, radius * rng.uniform(0.15, 0.45)))
    elif beamstop["kind"] == "linear":
        angle = (rng.integers(4) * np.pi / 2 + rng.normal(scale=0.08)) if rng.random() < 0.8 else rng.uniform(0, 2 * np.pi)
        half_width = max(0.8, size * rng.uniform(0.008, 0.03))
        beamstop.update(angle=float(angle), half_width=half_width, tip_radius=half_width * rng.uniform(1.0, 1.6))
    elif beamstop["kind"] == "wedge":
        beamstop.update(angle=rng.uniform(0, 2 * np.pi), half_angle=np.radians(rng.uniform(10, 20)),
                        apex_offset=size * rng.uniform(0.01, 0.05))
    if beamstop["kind"] != "none":
        beamstop.update(blur_px=size * rng.uniform(0.0008, 0.008), leak=_log_uniform(rng, 1e-5, 1e-2))

    kind = det.kind
    detector = {"name": detector_name, "kind": kind, "rotated": rotated, "native_shape": [native_h, native_w],
                "binning": 1 / scale, "max_count": det.max_count,
                "psf_px": rng.uniform(0.0, 0.6) if kind == "pixel" else rng.uniform(0.3, 1.2)}
    if kind == "ccd":
        detector.update(dark_offset=rng.uniform(0, 120), read_noise=rng.uniform(1, 10), gain=rng.uniform(0.5, 2.0),
                        # imperfect flat-field correction and fibre-optic taper vignetting
                        flat_field_sigma=rng.uniform(0.0, 0.03), vignetting=rng.uniform(0.0, 0.3),
                        flat_field_seed=int(rng.integers(2**31)))
    detector.update(hot_fraction=_log_uniform(rng, 1e-6, 3e-4), dead_fraction=_log_uniform(rng, 1e-6, 3e-4),
                    zinger_rate=_log_uniform(rng, 1e-7, 5e-5) if kind == "ccd" else 0.0)

    background = {
        "level": _log_uniform(rng, 0.05, 2e4),
        "variation": rng.uniform(0, 0.8),
        "scale_frac": rng.uniform(0.15, 0.6),
        "air_fraction": rng.uniform(0, 1) if rng.random() < 0.6 else 0.0,
        "air_exponent": rng.uniform(-3.0, -1.0),
        "streaks": int(rng.integers(1, 3)) if rng.random() < 0.25 else 0,
    }
    # Synchrotron beams are polarised in the horizontal plane; laboratory sources are not.
    polarization = rng.uniform(0.9, 0.99) if rng.random() < 0.8 else 0.5
    # Now and then something upstream (window frame, sample stage, flight-tube edge) shades an edge of the detector.
    shadow = None
    if rng.random() < 0.12:
        shadow = _round({"side": int(rng.integers(4)), "depth": rng.uniform(0.03, 0.25), "angle": rng.normal(scale=0.1),
                         "transmission": rng.uniform(0.0, 0.4), "blur_px": size * rng.uniform(0.002, 0.02)})
    return {
        "run_id": int(run_id), "mode": mode, "polarization": round(float(polarization), 4), "shadow": shadow,
        "geometry": Geometry(energy, distance, pixel_size, height, width, float(bx), float(by),
                             float(tilt_x), float(tilt_y)).to_dict(),
        "beam_placement": placement, "detector": detector, "beamstop": _round(beamstop),
        "background": _round(background),
        "exposure": _log_uniform(rng, 0.1, 10.0),
    }


def _round(d: dict) -> dict:
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


@dataclass
class RunMaps:
    """Per-pixel maps of a run, built once per process and shared by its images."""

    params: dict
    geometry: Geometry
    q: np.ndarray  # (H, W) float32 Å⁻¹
    chi: np.ndarray  # (H, W) float32 rad
    geometric_factor: np.ndarray  # (H, W) float32: solid angle × polarisation
    valid: np.ndarray  # (H, W) bool: not in a module gap
    opacity: np.ndarray  # (H, W) float32 beamstop shadow in [0, 1]
    transmission: np.ndarray  # (H, W) float32
    q_grid: np.ndarray  # (G,) float64, profile grid covering the image's q range
    grid_index: np.ndarray  # (H·W,) int32: left grid node of each pixel
    grid_frac: np.ndarray  # (H·W,) float32: linear weight of the right node
    q_bin: np.ndarray  # (H, W) int32: radial bin of each pixel, for tag statistics
    bin_edges: np.ndarray  # (B+1,) Å⁻¹
    q_step_px: float  # Δq of one pixel at the median radius (Å⁻¹)
    response: np.ndarray | None = None  # (H, W) float32 pixel response (CCD flat field × vignetting), None = 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def to_image(self, profile: np.ndarray) -> np.ndarray:
        """(G,) 1-D profile on ``q_grid`` → (H, W) float32 by linear interpolation in q
        (one table look-up per pixel instead of transcendental functions)."""
        p = profile.astype(np.float32)
        left = p[self.grid_index]
        right = p[self.grid_index + 1]
        return (left + (right - left) * self.grid_frac).reshape(self.shape)


def _build_maps(params: dict) -> RunMaps:
    g = params["geometry"]
    geometry = Geometry(g["energy_kev"], g["distance_m"], g["pixel_size_m"], g["height"], g["width"],
                        g["beam_x"], g["beam_y"], g.get("tilt_x", 0.0), g.get("tilt_y", 0.0))
    shape = (geometry.height, geometry.width)
    beam = (geometry.beam_x, geometry.beam_y)
    radius = geometry.radius_px_map()
    two_theta = geometry.two_theta_map()
    q = geometry.q_map()
    chi = geometry.chi_map()
    factor = geometry.solid_angle_map() * polarization_factor(two_theta, chi, params.get("polarization", 0.98))
    det = params["detector"]
    from xrayscatter.simulate.geometry import DETECTORS  # local: the table above is the source

    model = DETECTORS[det["name"]]
    if det["rotated"]:
        valid = ~module_gap_mask(model, geometry.width, geometry.height).T
    else:
        valid = ~module_gap_mask(model, geometry.height, geometry.width)

    bs = params["beamstop"]
    if bs["kind"] == "circular":
        opacity = beamstops.circular_beamstop(shape, beam, bs["radius"], bs["arm_angle"], bs["arm_half_width"])
    elif bs["kind"] == "linear":
        opacity = beamstops.linear_beamstop(shape, beam, bs["angle"], bs["half_width"], bs["tip_radius"])
    elif bs["kind"] == "wedge":
        opacity = beamstops.wedge_beamstop(shape, beam, bs["angle"], bs["half_angle"], bs["apex_offset"])
    else:
        opacity = np.zeros(shape, dtype=np.float32)
    if bs["kind"] != "none":
        opacity = beamstops.blur_opacity(opacity, bs["blur_px"])
        transmission = 1.0 - opacity * (1.0 - bs["leak"])
    else:
        transmission = np.ones(shape, dtype=np.float32)
    if params.get("shadow"):
        sh = params["shadow"]
        edge = beamstops.edge_shadow(shape, sh["side"], sh["depth"], sh["angle"])
        transmission = transmission * (1.0 - beamstops.blur_opacity(edge, sh["blur_px"]) * (1.0 - sh["transmission"]))

    q_lo, q_hi = float(q.min()), float(q.max())
    n_grid = int(2 * (radius.max() - radius.min()) + 64)  # ≥ 2 nodes per pixel of radius
    q_grid = np.linspace(q_lo, q_hi * (1 + 1e-6), n_grid)
    pos = (q.ravel() - q_lo) / (q_grid[1] - q_grid[0])
    grid_index = np.clip(pos.astype(np.int32), 0, n_grid - 2)
    grid_frac = (pos - grid_index).astype(np.float32)
    n_bins = int(np.clip(radius.max() - radius.min(), 16, 512))
    bin_edges = np.linspace(q_lo, q_hi * (1 + 1e-6), n_bins + 1)
    q_bin = np.clip(np.searchsorted(bin_edges, q, side="right") - 1, 0, n_bins - 1).astype(np.int32)
    r_med = float(np.median(radius))
    q_step = float(geometry.q_from_radius_px(r_med + 0.5) - geometry.q_from_radius_px(max(r_med - 0.5, 0)))
    response = None
    if "flat_field_sigma" in det:
        noise = np.random.default_rng(det["flat_field_seed"]).normal(scale=det["flat_field_sigma"], size=shape)
        yy = (np.arange(shape[0]) + 0.5 - shape[0] / 2)[:, None] / (shape[0] / 2)
        xx = (np.arange(shape[1]) + 0.5 - shape[1] / 2)[None, :] / (shape[1] / 2)
        response = ((1.0 + noise) * (1.0 - det["vignetting"] * (xx * xx + yy * yy) / 2)).astype(np.float32)
    return RunMaps(params, geometry, q, chi, factor.astype(np.float32), valid, opacity.astype(np.float32),
                   transmission.astype(np.float32), q_grid, grid_index, grid_frac, q_bin, bin_edges, q_step, response)


@lru_cache(maxsize=4)
def run_maps(seed: int, run_id: int, image_size: int, saxs_fraction: float) -> RunMaps:
    """The run's parameters and per-pixel maps (cached: images of a run come in order)."""
    return _build_maps(sample_run_params(seed, run_id, image_size, saxs_fraction))
