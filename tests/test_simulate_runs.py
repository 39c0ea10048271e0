"""Runs: the same experiment at every image size, beamstops at real sizes, detectors as their data
sheets give them."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.simulate import beamstops
from xrayscatter.simulate.generator import simulate_image
from xrayscatter.simulate.geometry import DETECTORS, active_area_mask, module_gap_mask
from xrayscatter.simulate.runs import DETECTOR_WEIGHTS, run_maps, sample_run_params

# Keys of a run record that describe the binned image, not the experiment.
BINNED_GEOMETRY_KEYS = ("height", "width", "pixel_size_m", "beam_x", "beam_y")


def _physical(run: dict) -> dict:
    run = {**run, "geometry": {k: v for k, v in run["geometry"].items() if k not in BINNED_GEOMETRY_KEYS},
           "detector": {k: v for k, v in run["detector"].items() if k != "binning"}}
    return run


def test_run_parameters_do_not_depend_on_image_size():
    for run_id in range(150):
        records = [_physical(sample_run_params(8, run_id, size, 0.6)) for size in (64, 256, 1024)]
        assert records[0] == records[1] == records[2], run_id


def test_image_parameters_do_not_depend_on_image_size():
    """The same (seed, index) gives the same lattice constants, radii, q positions … at 256 and
    1024 px (and at 48 and 160 px for many more indices); only the counts differ."""
    def modules_at(size, i):
        image = simulate_image(2017, i, images_per_run=5, image_size=size)
        return image.params["image"]["attempt"], image.params["image"]["modules"]

    compared = 0
    for sizes, indices in (((256, 1024), range(4)), ((48, 160), range(4, 64))):
        for i in indices:
            (attempt_a, mods_a), (attempt_b, mods_b) = modules_at(sizes[0], i), modules_at(sizes[1], i)
            if attempt_a != attempt_b:  # tags decided what is visible at that size: another redraw
                continue
            compared += 1
            assert mods_a == mods_b, (i, sizes)
    assert compared >= 50


def test_visible_q_range_comes_from_the_native_geometry():
    for run_id in range(60):
        run = sample_run_params(3, run_id, 128, 0.6)
        maps = run_maps(3, run_id, 128, 0.6)
        lo, hi = maps.visible_q
        assert 0 < lo < hi <= maps.detector_q[1] * (1 + 1e-6)
        open_q = maps.q[maps.valid & (maps.transmission > 0.5)]
        if open_q.size > 500 and hi > 1.6 * lo:  # the binned image agrees with the physical window
            assert np.percentile(open_q, 0.5) == pytest.approx(lo, rel=0.15)
            assert np.percentile(open_q, 99.5) == pytest.approx(hi, rel=0.05)
        bs = run["beamstop"]
        if bs["kind"] == "circular" and run["beam_placement"] == "centred":
            g = maps.geometry  # nothing is visible behind the disc
            assert lo >= g.q_from_radius_px(bs["radius_px"] / maps.binning) * 0.9


def test_beamstops_have_real_sizes_and_variants():
    runs = [sample_run_params(12, i, 256, 0.6) for i in range(1500)]
    by_kind: dict[str, list[dict]] = {}
    for run in runs:
        by_kind.setdefault(run["beamstop"]["kind"], []).append({**run["beamstop"], "_run": run})
    for bs in by_kind["circular"]:
        pixel_mm = bs["_run"]["geometry"]["native_pixel_size_m"] * 1e3
        assert 0.8 <= bs["radius_mm"] <= 5.0 and bs["radius_px"] == pytest.approx(bs["radius_mm"] / pixel_mm, rel=1e-5)
        if bs["holder"] == "wire":
            assert 0.5 <= bs["arm_half_width_px"] <= 1.0  # a 1–2 native-pixel wire
    holders = [bs["holder"] for bs in by_kind["circular"]]
    assert holders.count("none") / len(holders) == pytest.approx(0.15, abs=0.05)
    assert holders.count("wire") / len(holders) == pytest.approx(0.30, abs=0.06)
    assert all(0.7 <= bs["half_width_mm"] <= 3.0 for bs in by_kind["linear"])
    through = np.mean([bs["through"] for bs in by_kind["linear"]])
    assert through == pytest.approx(0.2, abs=0.06)
    assert all(np.radians(8) <= bs["half_angle"] <= np.radians(22) for bs in by_kind["wedge"])
    leaks = np.array([bs["leak"] for kind in ("circular", "linear", "wedge") for bs in by_kind[kind]])
    assert leaks.max() <= 0.05 and 0.05 < np.mean(leaks > 0.01) < 0.3  # semi-transparent now and then
    angles = np.array([bs["angle"] for bs in by_kind["linear"]] + [bs["arm_angle"] for bs in by_kind["circular"]])
    off_axis = np.abs((angles + np.pi / 4) % (np.pi / 2) - np.pi / 4)
    assert 0.65 < np.mean(off_axis < 0.2) < 0.9  # mostly along the axes, sometimes at any angle


def test_a_wire_thinner_than_a_pixel_dims_a_line_instead_of_vanishing():
    """Anti-aliased shapes: a 1.5-native-pixel wire binned 8× covers ≈ 1.5/8 of each pixel it
    crosses, the same all along (not dashed)."""
    x, y = beamstops.pixel_coords((64, 64), (32.0, 32.0))
    bs = {"kind": "circular", "radius_px": 40.0, "holder": "wire", "arm_angle": 0.0, "arm_half_width_px": 0.75}
    opacity = beamstops.opacity(bs, x, y, native_px_per_unit=8.0)
    across_wire = opacity[:20].sum(axis=1)  # rows above the disc: the wire goes up (between two columns)
    assert np.allclose(across_wire, 1.5 / 8, atol=0.005)
    assert opacity[:20, 20:44].max() < 0.2
    assert opacity[32, 32] == 1.0 and opacity[32, 32 + 6] == 0.0  # the disc: 5 px radius


@pytest.mark.parametrize("name,shape,pixel_um", [
    ("Pilatus100K", (195, 487), 172), ("Pilatus6M", (2527, 2463), 172), ("Eiger500K", (514, 1030), 75),
    ("Eiger9M", (3269, 3110), 75), ("Eiger16M", (4371, 4150), 75), ("Mar345", (3450, 3450), 100),
    ("ADSC-Q210", (4096, 4096), 51), ("Rayonix-MX225", (3072, 3072), 73.242)])
def test_detectors_have_their_data_sheet_shapes(name, shape, pixel_um):
    d = DETECTORS[name]
    assert (d.height, d.width) == shape and d.pixel_size_m == pytest.approx(pixel_um * 1e-6)
    assert name in DETECTOR_WEIGHTS


@pytest.mark.parametrize("ours,pyfai_name", [("Pilatus6M", "Pilatus6M"), ("Pilatus100K", "Pilatus100k"),
                                             ("Eiger500K", "Eiger500k"), ("Eiger9M", "Eiger9M"),
                                             ("Eiger16M", "Eiger16M")])
def test_module_gaps_match_pyfai_detectors(ours, pyfai_name):
    from pyFAI.detectors import detector_factory

    d = DETECTORS[ours]
    theirs = detector_factory(pyfai_name).calc_mask()
    theirs = np.zeros((d.height, d.width), bool) if theirs is None else theirs.astype(bool)
    assert np.array_equal(module_gap_mask(d, d.height, d.width), theirs)


@pytest.mark.parametrize("ours,pyfai_name,size", [("Mar345", "Mar345", 3450), ("MarCCD165", "mar165", 4096)])
def test_circular_active_areas_match_pyfai(ours, pyfai_name, size):
    from pyFAI.detectors import detector_factory

    theirs = detector_factory(pyfai_name).calc_mask().astype(bool)
    assert np.array_equal(~active_area_mask(DETECTORS[ours], size, size), theirs)


def _first_run_on(detector: str, size: int = 96) -> int:
    for run_id in range(2000):
        if sample_run_params(6, run_id, size, 0.6)["detector"]["name"] == detector:
            return run_id
    raise AssertionError(detector)


def test_image_plate_reads_zero_outside_its_circle():
    run_id = _first_run_on("Mar345")
    image = simulate_image(6, run_id, images_per_run=1, image_size=96)
    inside = active_area_mask(DETECTORS["Mar345"], *image.counts.shape)
    assert np.all(image.counts[~inside] == 0)
    assert (image.counts[inside] > 0).mean() > 0.5


def test_tiled_ccd_shows_faint_seams_between_its_tapers():
    run_id = _first_run_on("Rayonix-MX225", 192)
    maps = run_maps(6, run_id, 192, 0.6)
    det = maps.params["detector"]
    assert maps.response is not None and 0.55 <= det["seam_response"] <= 0.92
    profile = maps.response.mean(axis=1) if det["rotated"] else maps.response.mean(axis=0)
    for k in (1, 2):  # 3 × 3 tapers: seams at a third and two thirds of the width
        seam = int(k * len(profile) / 3)
        near = profile[seam - 1:seam + 2].min()
        assert near < np.median(profile) * 0.97 and near > 0.5
