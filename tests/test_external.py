"""`bench external`: detector files from sasmodels on other detectors and formats, and their scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector_samples import shared_saved_models

pytest.importorskip("sasmodels")


@pytest.fixture(scope="module")
def external_set(tmp_path_factory):
    from xrayscatter.benchmarks.external import write_external_set

    folder = tmp_path_factory.mktemp("external")
    return folder, write_external_set(folder, per_group=1, seed=3)


def test_files_are_other_detectors_and_formats_our_readers_take(external_set):
    from xrayscatter.benchmarks.external import DETECTORS, GROUPS
    from xrayscatter.readers import read_detector_image

    folder, truth = external_set
    assert [row["group"] for row in truth] == list(GROUPS)
    assert json.loads((folder / "truth.json").read_text()) == truth
    for row in truth:
        rows, cols, *_rest, suffix = DETECTORS[row["detector"]]
        assert row["file"].endswith(suffix)
        counts = read_detector_image(folder / row["file"])
        assert counts.shape == (rows, cols)
        missing = ~np.isfinite(counts) | (counts < 0)
        if row["detector"] != "ccd":
            assert missing.mean() > 0.01  # module gaps written as −1 arrive as missing pixels
        assert np.nanmax(counts) > 50


def test_the_first_lamellar_ring_sits_at_q_two_pi_over_d(external_set):
    """The lamellar stack's first Bragg ring in the written file is where q = 2π/d puts it."""
    from xrayscatter.benchmarks.external import DETECTORS
    from xrayscatter.readers import read_detector_image

    folder, truth = external_set
    row = next(r for r in truth if r["group"] == "lamellar")
    counts = read_detector_image(folder / row["file"]).astype(float)
    *_shape, pixel_mm, _suffix = DETECTORS[row["detector"]]
    if row["detector"] == "ccd":
        counts = (counts - 100) / 1.7
    valid = np.isfinite(counts) & (counts >= 0)
    q_first = 2 * np.pi / row["parameters"]["d_spacing"]
    two_theta = 2 * np.arcsin(q_first * row["wavelength_A"] / (4 * np.pi))
    ring_px = row["distance_mm"] * np.tan(two_theta) / pixel_mm
    yy, xx = np.indices(counts.shape)
    radius = np.hypot(yy - row["beam_centre_px"][0], xx - row["beam_centre_px"][1])
    inside = valid & (np.abs(radius - ring_px) < 3)
    between = valid & (np.abs(radius - 1.5 * ring_px) < 3)
    assert counts[inside].mean() > 2 * counts[between].mean()


def test_separation_is_roc_auc_per_attribute():
    from xrayscatter.benchmarks.external import separation

    truth = [{"file": "a", "attributes": ["Ring"]}, {"file": "b", "attributes": []},
             {"file": "c", "attributes": ["Ring"]}, {"file": "d", "attributes": []}]
    right = {"a": {"Ring": 0.9}, "b": {"Ring": 0.1}, "c": {"Ring": 0.8}, "d": {"Ring": 0.2}}
    wrong = {k: {"Ring": 1 - v["Ring"]} for k, v in right.items()}
    assert separation(truth, right)[0]["auc"] == 1.0
    assert separation(truth, wrong)[0]["auc"] == 0.0
    assert separation(truth, right)[0]["positives"] == 2


def test_bench_external_tags_the_set_and_writes_results(external_set, tmp_path_factory):
    from xrayscatter.benchmarks.external import bench_external

    folder, truth = external_set
    model = shared_saved_models(tmp_path_factory) / "resnet"
    summary = bench_external(model=model, folder=folder, per_group=1)
    assert summary["files"] == len(truth) == 5
    assert {r["attribute"] for r in summary["attributes"]} >= {"Ring", "Higher orders", "Circ. Beamstop"}
    assert all(0.0 <= r["auc"] <= 1.0 for r in summary["attributes"])
    assert json.loads((folder / "results.json").read_text())["mean_auc"] == pytest.approx(summary["mean_auc"])
