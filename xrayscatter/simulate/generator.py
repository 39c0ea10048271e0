"""One synthetic image: (seed, image index) → counts, tags and the full parameter record.

An image is the sum of 1–3 sample modules (scaled to counts), background and the direct
beam, times the beamstop transmission, blurred by the detector's point spread, with module
gaps masked, then counted (Poisson; CCDs add dark offset and read noise), with zingers,
hot/dead pixels and saturation. Images come in runs of ``images_per_run`` consecutive
indices sharing geometry, detector and beamstop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrayscatter.attributes import multi_hot
from xrayscatter.simulate import detector as det
from xrayscatter.simulate.lattices import BRAVAIS
from xrayscatter.simulate.modules import MODULES, Piece
from xrayscatter.simulate.runs import STREAM_IMAGE, RunMaps, rng_for, run_maps
from xrayscatter.simulate.tags import RingEvidence, SceneForTags, decide_tags

SIMULATOR_VERSION = 2  # 2: physical sizes per mode, form factor per lattice, native-unit instruments
MAX_ATTEMPTS = 20  # redraws (deterministic) until an image carries at least one of the 17 tags


@dataclass
class SimulatedImage:
    """counts: (H, W) float32 integer-valued counts in [0, 65535]; labels: 17 ints;
    valid: (H, W) bool light-sensitive pixels; beam_xy: beam centre (x, y) px, may be off the image."""

    counts: np.ndarray
    tags: list[str]
    labels: list[int]
    run_id: int
    image_id: int
    params: dict
    valid: np.ndarray
    beam_xy: tuple[float, float]


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _render_piece(piece: Piece, maps: RunMaps) -> np.ndarray:
    if piece.image is not None:
        return piece.image.astype(np.float32)
    img = maps.to_image(piece.profile)
    if piece.angular is not None:
        img = img * piece.angular
    return img * maps.geometric_factor


def _background(rng, maps: RunMaps, level: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) background counts (smooth field + air + parasitic streaks) and, separately, its air part
    (None without air): air scattering rises towards the beam like a sample's low-q scattering, and
    a person looking at the image cannot tell the two apart, so the tag rules read it as such."""
    bg = maps.params["background"]
    g = maps.geometry
    shape = maps.shape
    image = det.smooth_background(shape, rng, level, bg["variation"], bg["scale_frac"] * max(shape))
    air = None
    if bg["air_fraction"] > 0:  # air/window scattering falling off from the beam
        r = maps.geometry.radius_px_map() + 2.0
        air = (level * bg["air_fraction"] * (r / (0.1 * max(shape))) ** bg["air_exponent"]).astype(np.float32)
        image += air
    if bg["streaks"]:
        image += det.parasitic_streaks(shape, (g.beam_x, g.beam_y), rng, level * rng.uniform(0.5, 5.0), bg["streaks"])
    return image, air


def _compose(seed: int, image_id: int, attempt: int, maps: RunMaps):
    rng = rng_for(seed, STREAM_IMAGE, image_id, attempt)
    run = maps.params
    q_range = maps.visible_q  # physical: the same at every image size
    names = list(MODULES)
    weights = np.array([MODULES[n][1] for n in names])
    k = 1 + int(rng.binomial(2, 0.35))
    chosen = [names[i] for i in rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())]

    exposure = run["exposure"] * _log_uniform(rng, 0.5, 2.0)
    sample_peak = _log_uniform(rng, 0.5, 1e5) * exposure
    open_mask = maps.valid & (maps.transmission > 0.5)
    if not open_mask.any():
        open_mask = maps.valid

    shape = maps.shape
    sample = np.zeros(shape, dtype=np.float32)
    roles: dict[str, np.ndarray] = {}
    piece_images: list[np.ndarray] = []
    ring_evidence: list[tuple[int, RingEvidence]] = []
    sf_evidence: list[dict] = []
    module_records = []
    for m, name in enumerate(chosen):
        result = MODULES[name][0](rng, maps, q_range)
        if result is None:
            continue
        record, pieces = result
        images = [_render_piece(p, maps) for p in pieces]
        module_sum = np.sum(images, axis=0)
        norm = float(module_sum[open_mask].max()) if open_mask.any() else float(module_sum.max())
        amplitude = 1.0 if m == 0 else _log_uniform(rng, 0.03, 1.0)
        scale = sample_peak * amplitude / max(norm, 1e-30)
        record["peak_counts"] = round(sample_peak * amplitude, 4)
        module_records.append(record)
        # tags speak of Bravais lattices: diamond cubic is FCC
        lattice = BRAVAIS.get(record.get("lattice", ""), "LAM" if name == "adhoc_rings" else "")
        for piece, img in zip(pieces, images):
            img = img * np.float32(scale) * maps.transmission
            sample += img
            roles[piece.role] = roles.get(piece.role, 0) + img
            piece_images.append(img)
            index = len(piece_images) - 1
            for ring in piece.rings:
                ring_evidence.append((index, RingEvidence(ring, ring.height * scale, piece.crest_factor, m, lattice,
                                                          "halo" if piece.role == "halo" else piece.role)))
            if "sf_q" in piece.info:
                sf_evidence.append({"q": piece.info["sf_q"], "s_max": piece.info["sf_max"],
                                    "bump": piece.info["sf_bump"], "piece": index,
                                    "s_of_q": piece.info["sf_profile"]})

    bg_level = run["background"]["level"] * exposure / run["exposure"] * _log_uniform(rng, 0.7, 1.4)
    background, air = _background(rng, maps, bg_level)
    background = background * maps.transmission
    if air is not None:
        roles["air"] = air * maps.transmission
    g = maps.geometry
    # direct beam: FWHM 0.05–0.5 mm at the detector (focused to collimated), at least a pixel on the image
    beam_fwhm_px = float(np.hypot(rng.uniform(0.05, 0.5) * 1e-3 / g.pixel_size_m, 1.0))
    beam = det.direct_beam(shape, (g.beam_x, g.beam_y), beam_fwhm_px,
                           sample_peak * _log_uniform(rng, 1e2, 1e4)) * maps.transmission
    valid = maps.valid_float
    sample_and_background = sample + background
    expected = det.point_spread(sample_and_background + beam, run["detector"]["psf_native_px"] / maps.binning) * valid
    unshaded = sample_and_background / maps.transmission_floor

    bs = run["beamstop"]
    scene = SceneForTags(
        shape=shape, open_mask=open_mask, q_bin=maps.q_bin, bin_edges=maps.bin_edges,
        geometric_factor=maps.shaded_geometric_factor, total=sample_and_background * valid,
        sample=sample * valid, background=background * valid, roles={k: v * valid for k, v in roles.items()},
        piece_images=[p * valid for p in piece_images], rings=ring_evidence, structure_factor=sf_evidence,
        beam_on_image=g.beam_on_image(), beamstop_kind=bs["kind"],
        beamstop_shadow=(unshaded - sample - background) * valid, beamstop_opacity=maps.opacity,
        noise_variance=float(run["detector"].get("read_noise", 0.0)) ** 2, bins_cache=maps.tag_bins)
    tags, evidence = decide_tags(scene)
    image_record = {"attempt": attempt, "modules": module_records, "exposure": round(exposure, 5),
                    "sample_peak_counts": round(sample_peak, 4), "background_level": round(bg_level, 5)}
    return rng, expected, tags, evidence, image_record


def _count(rng, expected: np.ndarray, maps: RunMaps) -> tuple[np.ndarray, dict]:
    """Counting statistics and detector defects → stored counts."""
    d = maps.params["detector"]
    if maps.response is not None:
        expected = expected * maps.response
    counts = det.poisson_counts(expected, rng)
    if d["kind"] in ("ccd", "plate"):
        counts = det.ccd_readout(counts, rng, d["dark_offset"], d["read_noise"], d["gain"])
    full_scale = float(min(d["max_count"], 65535))
    zingers = det.add_zingers(counts, rng, d["zinger_rate"], full_scale) if d["zinger_rate"] else 0
    hot, dead = det.add_bad_pixels(counts, rng, d["hot_fraction"], d["dead_fraction"], full_scale)
    counts *= maps.valid  # gaps and the outside of a circular active area carry no counts (0 in 16-bit files)
    saturated = int((counts >= full_scale).sum())
    counts = np.rint(np.clip(counts, 0, full_scale)).astype(np.float32)
    return counts, {"zingers": zingers, "hot_pixels": hot, "dead_pixels": dead, "saturated_pixels": saturated}


def simulate_image(seed: int, image_id: int, *, images_per_run: int, image_size: int,
                   saxs_fraction: float = 0.6) -> SimulatedImage:
    """Render image ``image_id`` of the data set defined by ``seed`` (deterministic).

    Returns:
        SimulatedImage with counts (H, W) float32 in [0, 65535], H, W ≤ image_size.
    """
    run_id = image_id // images_per_run
    maps = run_maps(seed, run_id, image_size, saxs_fraction)
    for attempt in range(MAX_ATTEMPTS):
        rng, expected, tags, evidence, image_record = _compose(seed, image_id, attempt, maps)
        if tags:
            break
    counts, defects = _count(rng, expected, maps)
    params = {
        "simulator_version": SIMULATOR_VERSION, "seed": int(seed), "image_id": int(image_id),
        "run": maps.params, "image": {**image_record, "defects": defects}, "evidence": evidence, "tags": tags,
    }
    g = maps.geometry
    return SimulatedImage(counts, tags, multi_hot(tags), run_id, int(image_id), params, maps.valid,
                          (float(g.beam_x), float(g.beam_y)))


def simulate_image_from_config(sim_config, seed: int, image_id: int) -> SimulatedImage:
    """:func:`simulate_image` with the settings of a ``SimulateConfig``."""
    return simulate_image(seed, image_id, images_per_run=sim_config.images_per_run,
                          image_size=sim_config.image_size, saxs_fraction=sim_config.saxs_fraction)
