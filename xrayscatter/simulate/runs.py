"""Measurement runs: what a run shares (geometry, detector, beamstop, background style) and
the per-pixel maps derived from it, cached per process.

A run is drawn from its own random stream, ``(seed, run_id)``, so any process can rebuild
it; images of the run only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from xrayscatter.simulate import beamstops
from xrayscatter.simulate.detector import polarization_factor
from xrayscatter.simulate.geometry import (DETECTORS, Geometry, active_area_mask, module_gap_mask, sensitive_at,
                                           taper_seams)

STREAM_RUN = 1
STREAM_IMAGE = 2
STREAM_SPLIT = 3

# Relative frequencies of detectors across runs: pixel-array detectors dominate modern SAXS/WAXS
# beamlines; CCDs (single, round or tiled tapers) and image plates are still met in archives and labs.
DETECTOR_WEIGHTS = {
    "Pilatus100K": 0.03, "Pilatus300K": 0.09, "Pilatus1M": 0.15, "Pilatus2M": 0.09, "Pilatus6M": 0.06,
    "Eiger500K": 0.04, "Eiger1M": 0.08, "Eiger4M": 0.08, "Eiger9M": 0.04, "Eiger16M": 0.03,
    "MarCCD165": 0.08, "PhotonicScience": 0.07, "Rayonix-MX225": 0.06, "ADSC-Q210": 0.04, "Mar345": 0.06,
}
# "just_off": the beam a few mm outside an edge, so that part of the beamstop (and the strongest
# scattering) is cut by the edge; "off": the detector swung out to wide angles.
BEAM_PLACEMENTS = {"centred": 0.31, "offset": 0.32, "edge": 0.17, "just_off": 0.05, "off": 0.15}
BEAMSTOP_WEIGHTS = {"circular": 0.40, "linear": 0.26, "wedge": 0.21, "none": 0.13}
CIRCULAR_HOLDERS = {"arm": 0.55, "wire": 0.30, "none": 0.15}
SAMPLES_LONG_SIDE = 160  # points along the long side of the fixed sampling that gives a run's visible q range


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


def _along_axes_or_any(rng: np.random.Generator, p_axes: float = 0.75) -> float:
    """An azimuth (rad): mostly along the detector axes (holders come in from an edge), sometimes any."""
    if rng.random() < p_axes:
        return float(rng.integers(4) * np.pi / 2 + rng.normal(scale=0.05))
    return float(rng.uniform(0, 2 * np.pi))


def _draw_beamstop(rng: np.random.Generator, kind: str, px_per_mm: float) -> dict:
    """A beamstop at real sizes, in native pixels (and mm).

    Sizes: tungsten/lead/tantalum discs of 1.5–10 mm diameter (radius 0.8–5 mm, e.g. 5–30
    Pilatus pixels) on an arm, on a thin wire or glued on a Kapton/Mylar window; bars 1.4–6 mm
    wide (half-width 0.7–3 mm) ending just past the beam or crossing the detector (≈ 20 %);
    wedges of half-angle 8–22°. The penumbra σ 0.03–0.5 mm depends on how far in front of the
    detector the stop sits. Stops leak 10⁻⁵–10⁻² (thin or edge-on), now and then up to 5 %
    (semi-transparent stops used to monitor the direct beam).
    """
    bs: dict = {"kind": kind}
    if kind == "circular":
        radius_mm = _log_uniform(rng, 0.8, 5.0)
        holder = _choice(rng, CIRCULAR_HOLDERS)
        arm_angle = _along_axes_or_any(rng)
        if holder == "arm":
            # an arm at most ~⅓ of the disc's radius: a disc on an arm as wide as itself is a bar
            # (the linear stop below), and a person tells the two apart by the disc standing out
            arm_half_width = radius_mm * rng.uniform(0.12, 0.35) * px_per_mm
        elif holder == "wire":
            arm_half_width = rng.uniform(0.5, 1.0)  # a 1–2 native-pixel wire
        else:
            arm_half_width = 0.0
        bs.update(radius_mm=radius_mm, radius_px=radius_mm * px_per_mm, holder=holder, arm_angle=arm_angle,
                  arm_half_width_px=arm_half_width)
    elif kind == "linear":
        half_width_mm = _log_uniform(rng, 0.7, 3.0)
        through = bool(rng.random() < 0.2)
        bs.update(angle=_along_axes_or_any(rng, 0.8), half_width_mm=half_width_mm,
                  half_width_px=half_width_mm * px_per_mm, through=through,
                  tip_radius_px=half_width_mm * px_per_mm * rng.uniform(1.0, 1.25))  # no disc at the end
    elif kind == "wedge":
        apex_mm = rng.uniform(0.5, 4.0)
        bs.update(angle=_along_axes_or_any(rng), half_angle=float(np.radians(rng.uniform(8, 22))),
                  apex_offset_mm=apex_mm, apex_offset_px=apex_mm * px_per_mm)
    if kind != "none":
        leak = _log_uniform(rng, 1e-5, 1e-2) if rng.random() < 0.85 else rng.uniform(0.01, 0.05)
        bs.update(blur_px=_log_uniform(rng, 0.03, 0.5) * px_per_mm, leak=leak)
    return bs


def sample_run_params(seed: int, run_id: int, image_size: int, saxs_fraction: float) -> dict:
    """Draw everything a run shares. Returns a JSON-able dict (the run part of each image's record).

    Everything physical is drawn in native detector units (native pixels, metres, mm), from a
    random stream that ``image_size`` does not touch; ``image_size`` only sets the binning, so the
    same (seed, run) is the same experiment at every image size.
    """
    rng = rng_for(seed, STREAM_RUN, run_id)
    mode = "SAXS" if rng.random() < saxs_fraction else "WAXS"
    detector_name = _choice(rng, DETECTOR_WEIGHTS)
    det = DETECTORS[detector_name]
    rotated = bool(rng.random() < 0.25)  # detector mounted in portrait/landscape the other way
    native_h, native_w = (det.width, det.height) if rotated else (det.height, det.width)
    native_pixel = det.pixel_size_m
    px_per_mm = 1e-3 / native_pixel

    if mode == "SAXS":
        energy = rng.uniform(7.0, 18.0)
        distance = _log_uniform(rng, 1.0, 8.0)
    else:
        energy = rng.uniform(8.0, 25.0)
        distance = _log_uniform(rng, 0.06, 0.35)

    placement = _choice(rng, BEAM_PLACEMENTS)
    if placement == "centred":
        fx, fy = 0.5 + rng.normal(scale=0.06), 0.5 + rng.normal(scale=0.06)
    elif placement == "offset":
        fx, fy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
    elif placement == "edge":
        # near an edge or a corner, still on the image (typical WAXS and GISAXS set-ups)
        fx, fy = rng.uniform(0.02, 0.98), rng.uniform(0.02, 0.98)
        if rng.random() < 0.5:
            fx = rng.uniform(0.01, 0.08) if rng.random() < 0.5 else rng.uniform(0.92, 0.99)
        if rng.random() < 0.6:
            fy = rng.uniform(0.01, 0.08) if rng.random() < 0.5 else rng.uniform(0.92, 0.99)
    elif placement == "just_off":  # 0.3–6 mm outside an edge: the beamstop may still show in part
        side = int(rng.integers(4))
        out_x = rng.uniform(0.3, 6.0) * px_per_mm / native_w
        out_y = rng.uniform(0.3, 6.0) * px_per_mm / native_h
        along = rng.uniform(0.1, 0.9)
        fx, fy = [(-out_x, along), (1 + out_x, along), (along, -out_y), (along, 1 + out_y)][side]
    else:  # beam off the image: the detector is swung out to wide angles
        side = rng.integers(4)
        out = rng.uniform(0.02, 0.5)
        along = rng.uniform(-0.2, 1.2)
        fx, fy = [(-out, along), (1 + out, along), (along, -out), (along, 1 + out)][side]
    bx_n, by_n = float(fx * native_w), float(fy * native_h)  # beam centre, native pixels
    on_image = 0 <= bx_n < native_w and 0 <= by_n < native_h
    # Detectors are never quite normal to the beam: a small random tilt. A detector moved far
    # off the beam (wide angles) is usually swung towards the sample, by part of the angle.
    tilt_x, tilt_y = np.radians(rng.normal(scale=1.0, size=2))
    if placement == "off" and rng.random() < 0.7:
        swing = rng.uniform(0.2, 1.0)
        dx = (native_w / 2 - bx_n) * native_pixel
        dy = (native_h / 2 - by_n) * native_pixel
        tilt_y += swing * np.arctan2(dx, distance)  # face the detector centre towards the sample
        tilt_x += -swing * np.arctan2(dy, distance)

    kind = _choice(rng, BEAMSTOP_WEIGHTS) if on_image or placement == "just_off" else "none"
    beamstop = _draw_beamstop(rng, kind, px_per_mm)

    detector = {"name": detector_name, "kind": det.kind, "rotated": rotated, "native_shape": [native_h, native_w],
                "max_count": det.max_count,
                # point spread σ in native pixels: charge sharing in pixel detectors; phosphor + taper
                # in CCDs (≈ 40–120 µm); the read-out laser spot of an image plate
                "psf_native_px": {"pixel": rng.uniform(0.0, 0.5), "ccd": rng.uniform(0.5, 1.5),
                                  "plate": rng.uniform(0.5, 1.2)}[det.kind]}
    if det.kind in ("ccd", "plate"):
        ccd = det.kind == "ccd"
        detector.update(dark_offset=rng.uniform(0, 120) if ccd else rng.uniform(0, 20),
                        read_noise=rng.uniform(1, 10) if ccd else rng.uniform(0.5, 3),
                        gain=rng.uniform(0.5, 2.0),
                        # imperfect flat-field correction and fibre-optic taper vignetting (per taper)
                        flat_field_sigma=rng.uniform(0.0, 0.03), vignetting=rng.uniform(0.0, 0.3) if ccd else 0.0,
                        flat_field_seed=int(rng.integers(2**31)))
        if det.tiles != (1, 1):  # tapers bonded side by side: faint seams, slightly different gains
            detector.update(seam_native_px=rng.uniform(2.0, 8.0), seam_response=rng.uniform(0.55, 0.92),
                            tile_gain_sigma=rng.uniform(0.0, 0.04))
    detector.update(hot_fraction=_log_uniform(rng, 1e-6, 3e-4), dead_fraction=_log_uniform(rng, 1e-6, 3e-4),
                    zinger_rate=_log_uniform(rng, 1e-7, 5e-5) if det.kind != "pixel" else 0.0)

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
                         "transmission": rng.uniform(0.0, 0.4), "blur_px": _log_uniform(rng, 0.1, 2.0) * px_per_mm})
    exposure = _log_uniform(rng, 0.1, 10.0)

    # Binning: the only place the image size enters.
    scale = image_size / max(native_h, native_w)
    height, width = max(8, int(round(native_h * scale))), max(8, int(round(native_w * scale)))
    detector["binning"] = 1 / scale
    geometry = Geometry(energy, distance, native_pixel / scale, height, width, bx_n * scale, by_n * scale,
                        float(tilt_x), float(tilt_y)).to_dict()
    geometry.update(native_pixel_size_m=native_pixel, native_beam_x=round(bx_n, 3), native_beam_y=round(by_n, 3))
    params = {
        "run_id": int(run_id), "mode": mode, "polarization": round(float(polarization), 4), "shadow": shadow,
        "geometry": geometry, "beam_placement": placement, "detector": detector, "beamstop": _round(beamstop),
        "background": _round(background), "exposure": exposure,
    }
    visible, full = physical_q_ranges(params)
    params["visible_q_range"] = [round(visible[0], 7), round(visible[1], 7)]
    params["detector_q_range"] = [round(full[0], 7), round(full[1], 7)]
    return params


def native_geometry(params: dict) -> Geometry:
    """The run's geometry on the native (unbinned) detector."""
    g = params["geometry"]
    h, w = params["detector"]["native_shape"]
    return Geometry(g["energy_kev"], g["distance_m"], g["native_pixel_size_m"], h, w, g["native_beam_x"],
                    g["native_beam_y"], g.get("tilt_x", 0.0), g.get("tilt_y", 0.0))


def physical_q_ranges(params: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """(visible, full) q ranges (Å⁻¹) of a run, from the native geometry alone.

    visible: the 0.5–99.5 % range of q over the light-sensitive area outside the beamstop and any
    upstream shadow (a fixed sampling of the native detector, independent of the image size);
    full: the q range of the whole detector rectangle (exact at the beam, dense along the edges).
    """
    geom = native_geometry(params)
    model = DETECTORS[params["detector"]["name"]]
    h, w = geom.height, geom.width
    ny = max(8, int(round(SAMPLES_LONG_SIDE * h / max(h, w))))
    nx = max(8, int(round(SAMPLES_LONG_SIDE * w / max(h, w))))
    xs = ((np.arange(nx) + 0.5) * (w / nx))[None, :]
    ys = ((np.arange(ny) + 0.5) * (h / ny))[:, None]
    q = geom.q_at(xs, ys)
    if params["detector"]["rotated"]:  # the image is the transpose of the detector's own layout
        sensitive = sensitive_at(model, ys + 0 * xs, xs + 0 * ys)
    else:
        sensitive = sensitive_at(model, xs + 0 * ys, ys + 0 * xs)
    bs = params["beamstop"]
    transmission = np.ones_like(q)
    if bs["kind"] != "none":
        transmission = 1.0 - beamstops.opacity(bs, xs - geom.beam_x, ys - geom.beam_y) * (1.0 - bs["leak"])
    if params.get("shadow"):
        sh = params["shadow"]
        edge = beamstops.edge_shadow_at(xs / w, ys / h, sh["side"], sh["depth"], sh["angle"])
        transmission = transmission * (1.0 - edge * (1.0 - sh["transmission"]))
    open_q = q[sensitive & (transmission > 0.5)]
    if open_q.size == 0:
        open_q = q.ravel()
    lo = max(float(np.percentile(open_q, 0.5)), 1e-4)
    hi = float(np.percentile(open_q, 99.5))
    edge_t = np.linspace(0.0, 1.0, 1025)
    border_x = np.concatenate([edge_t * w, edge_t * w, np.zeros_like(edge_t), np.full_like(edge_t, w)])
    border_y = np.concatenate([np.zeros_like(edge_t), np.full_like(edge_t, h), edge_t * h, edge_t * h])
    q_border = geom.q_at(border_x, border_y)
    q_min = 0.0 if geom.beam_on_image() else float(q_border.min())
    q_max = float(max(q_border.max(), q.max()))
    if hi < lo * 1.5:  # a degenerate window (almost everything shaded): widen it within the detector
        hi = min(lo * 1.5, q_max)
        lo = min(lo, hi / 1.5)
    return (lo, hi), (q_min, q_max)


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
    valid: np.ndarray  # (H, W) bool: light-sensitive (not in a module gap, inside the active area)
    opacity: np.ndarray  # (H, W) float32 beamstop shadow in [0, 1]
    transmission: np.ndarray  # (H, W) float32
    q_grid: np.ndarray  # (G,) float64, profile grid from the image's lowest q to the detector's highest
    grid_index: np.ndarray  # (H·W,) int32: left grid node of each pixel
    grid_frac: np.ndarray  # (H·W,) float32: linear weight of the right node
    q_bin: np.ndarray  # (H, W) int32: radial bin of each pixel, for tag statistics
    bin_edges: np.ndarray  # (B+1,) Å⁻¹
    q_step_px: float  # Δq of one pixel at the median radius (Å⁻¹)
    pixel_dq_grid: np.ndarray  # (G,) Δq spanned by one image pixel across the ring through each grid node (Å⁻¹)
    visible_q: tuple[float, float]  # physical visible q range (Å⁻¹), independent of the image size
    detector_q: tuple[float, float]  # q range of the whole detector rectangle (Å⁻¹)
    response: np.ndarray | None = None  # (H, W) float32 pixel response (flat field, vignetting, seams), None = 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def binning(self) -> float:
        """Native pixels per image pixel."""
        return float(self.params["detector"]["binning"])

    def pixel_dq(self, q) -> np.ndarray:
        """Δq (Å⁻¹) spanned by one image pixel across a ring at ``q`` (averaged over the ring)."""
        return np.interp(q, self.q_grid, self.pixel_dq_grid)

    def to_image(self, profile: np.ndarray) -> np.ndarray:
        """(G,) 1-D profile on ``q_grid`` → (H, W) float32 by linear interpolation in q
        (one table look-up per pixel instead of transcendental functions)."""
        p = profile.astype(np.float32)
        left = np.take(p, self.grid_index)
        image = np.take(p, self._grid_index_right)
        image -= left  # in place: each full-image temporary costs as much as the arithmetic
        image *= self.grid_frac
        image += left
        return image.reshape(self.shape)

    # Per-run products every image of the run would otherwise recompute, full-image, each time.
    @cached_property
    def valid_float(self) -> np.ndarray:
        """(H, W) float32 1 / 0: ``valid`` as a factor."""
        return self.valid.astype(np.float32)

    @cached_property
    def transmission_floor(self) -> np.ndarray:
        """(H, W) float32 ``transmission`` kept ≥ 10⁻⁶ (to undo the shadow without dividing by 0)."""
        return np.maximum(self.transmission, 1e-6)

    @cached_property
    def shaded_geometric_factor(self) -> np.ndarray:
        """(H, W) float32 solid angle × polarisation × beamstop transmission."""
        return self.geometric_factor * self.transmission

    @cached_property
    def tag_bins(self) -> dict:
        """What the tag rules compute once per run from these maps (radial-bin labels of the open pixels,
        pixel counts, mean geometric factors), filled by them on the run's first image."""
        return {}

    @cached_property
    def _grid_index_right(self) -> np.ndarray:
        """(H·W,) int32: right grid node of each pixel (``grid_index`` + 1), once per run."""
        return self.grid_index + 1


def _sensitive_mask(model, params: dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool: light-sensitive image pixels (module gaps and the outside of a circular area masked)."""
    if params["detector"]["rotated"]:
        return (~module_gap_mask(model, width, height) & active_area_mask(model, width, height)).T
    return ~module_gap_mask(model, height, width) & active_area_mask(model, height, width)


def _response(model, det: dict, height: int, width: int) -> np.ndarray:
    """(H, W) float32 response of a CCD or image plate: imperfect flat field × vignetting of each
    fibre-optic taper (brightest at the taper's centre) × gains of the tiles × faint seams."""
    rotated = det["rotated"]
    h, w = (width, height) if rotated else (height, width)  # the detector's own layout
    rng = np.random.default_rng(det["flat_field_seed"])
    noise = rng.normal(scale=det["flat_field_sigma"], size=(h, w))
    nx, ny = model.tiles
    ty = (np.arange(h) + 0.5)[:, None] * ny / h  # tile coordinates: integer part = tile, fraction = position
    tx = (np.arange(w) + 0.5)[None, :] * nx / w
    fy, fx = 2 * (ty % 1.0) - 1, 2 * (tx % 1.0) - 1
    response = (1.0 + noise) * (1.0 - det["vignetting"] * (fx * fx + fy * fy) / 2)
    if "seam_response" in det:
        gains = 1.0 + rng.normal(scale=det["tile_gain_sigma"], size=(ny, nx))
        response = response * gains[np.minimum(ty.astype(int), ny - 1), np.minimum(tx.astype(int), nx - 1)]
        seams = taper_seams(model, h, w, det["seam_native_px"])
        response = response * (1.0 - seams * (1.0 - det["seam_response"]))
    response = response.astype(np.float32)
    return response.T if rotated else response


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
    binning = float(det["binning"])
    model = DETECTORS[det["name"]]
    valid = _sensitive_mask(model, params, *shape)

    bs = params["beamstop"]
    if bs["kind"] != "none":
        x, y = beamstops.pixel_coords(shape, beam)
        opacity = beamstops.blur_opacity(beamstops.opacity(bs, x, y, binning), bs["blur_px"] / binning)
        transmission = 1.0 - opacity * (1.0 - bs["leak"])
    else:
        opacity = np.zeros(shape, dtype=np.float32)
        transmission = np.ones(shape, dtype=np.float32)
    if params.get("shadow"):
        sh = params["shadow"]
        edge = beamstops.edge_shadow(shape, sh["side"], sh["depth"], sh["angle"])
        edge = beamstops.blur_opacity(edge, sh["blur_px"] / binning)
        transmission = transmission * (1.0 - edge * (1.0 - sh["transmission"]))

    visible_q = tuple(params["visible_q_range"])
    detector_q = tuple(params["detector_q_range"])
    q_lo = float(q.min())  # > 0: profiles such as power laws diverge at q = 0
    q_hi = max(float(q.max()), detector_q[1]) * (1 + 1e-6)
    n_grid = int(2 * (radius.max() - radius.min()) + 64)  # ≥ 2 nodes per pixel of radius
    q_grid = np.linspace(q_lo, q_hi, n_grid)
    pos = (q.ravel() - q_lo) / (q_grid[1] - q_grid[0])
    grid_index = np.clip(pos.astype(np.int32), 0, n_grid - 2)
    grid_frac = (pos - grid_index).astype(np.float32)
    # Δq across one pixel (|∇q|), averaged over the pixels of each grid node: the width of the
    # ring a pixel integrates over, including tilt.
    gy, gx = np.gradient(q.astype(np.float64))
    dq = np.hypot(gx, gy).ravel()
    n_at = np.bincount(grid_index, minlength=n_grid)
    filled = n_at > 0
    dq_mean = np.bincount(grid_index, weights=dq, minlength=n_grid)[filled] / n_at[filled]
    pixel_dq_grid = np.interp(q_grid, q_grid[filled], dq_mean)
    n_bins = int(np.clip(radius.max() - radius.min(), 16, 512))
    bin_edges = np.linspace(float(q.min()), float(q.max()) * (1 + 1e-6), n_bins + 1)
    q_bin = np.clip(np.searchsorted(bin_edges, q, side="right") - 1, 0, n_bins - 1).astype(np.int32)
    r_med = float(np.median(radius))
    q_step = float(geometry.q_from_radius_px(r_med + 0.5) - geometry.q_from_radius_px(max(r_med - 0.5, 0)))
    response = _response(model, det, *shape) if "flat_field_sigma" in det else None
    return RunMaps(params, geometry, q, chi, factor.astype(np.float32), valid, opacity.astype(np.float32),
                   transmission.astype(np.float32), q_grid, grid_index, grid_frac, q_bin, bin_edges, q_step,
                   pixel_dq_grid, visible_q, detector_q, response)


@lru_cache(maxsize=4)
def run_maps(seed: int, run_id: int, image_size: int, saxs_fraction: float) -> RunMaps:
    """The run's parameters and per-pixel maps (cached: images of a run come in order)."""
    return _build_maps(sample_run_params(seed, run_id, image_size, saxs_fraction))
