"""`bench external`: detector files from sasmodels on other detectors and formats, their truth and their scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector_samples import shared_saved_models

pytest.importorskip("sasmodels")

SEED = 3


@pytest.fixture(scope="module")
def external_set(tmp_path_factory):
    """One file per group (17 files, every detector and format), written by two processes."""
    from xrayscatter.benchmarks.external import write_external_set

    folder = tmp_path_factory.mktemp("external")
    return folder, write_external_set(folder, per_group=1, seed=SEED, workers=2)


# --------------------------------------------------------------------------- the files
def test_every_file_reads_with_its_detector_shape_and_missing_pixels(external_set):
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import DETECTORS, GROUPS, load_truth
    from xrayscatter.readers import read_detector_image

    folder, truth = external_set
    definition, stored = load_truth(folder)
    assert stored == json.loads(json.dumps(truth)) and definition["seed"] == SEED
    assert [row["group"] for row in truth] == list(GROUPS)
    assert {row["detector"] for row in truth} == set(DETECTORS)  # 7 detector/format pairs
    assert {DETECTORS[row["detector"]].suffix for row in truth} == {".cbf", ".tif", ".edf", ".npy", ".png"}
    for row in truth:
        detector = DETECTORS[row["detector"]]
        assert row["file"].endswith(detector.suffix)
        assert set(row["labels"]) == set(ATTRIBUTES) and set(row["labels"].values()) <= {0, 1, None}
        counts = read_detector_image(folder / row["file"])
        assert counts.shape == (detector.rows, detector.cols)
        missing = np.isnan(counts)
        if detector.kind == "counting":  # module gaps (−1, 2³²−1 or NaN in the file) arrive as missing pixels
            gap_rows = np.flatnonzero(missing.all(axis=1))
            assert detector.module_rows in gap_rows and missing.mean() > 0.015
        else:
            assert not missing.any()
        if detector.kind == "plate":  # zero outside the plate's disc
            assert counts[0, 0] == 0 and counts[detector.rows // 2, detector.cols // 2] > 0


def test_beam_off_image_files_have_the_beam_outside_and_no_beamstop(external_set):
    from xrayscatter.benchmarks.external import PLATE_RADIUS

    _folder, truth = external_set
    for row in truth:
        (cy, cx), (rows, cols) = row["beam_centre_px"], row["shape"]
        outside = not (0 <= cy <= rows and 0 <= cx <= cols)
        if row["detector"] == "image_plate":  # off the plate's active disc
            outside = np.hypot(cy - rows / 2, cx - cols / 2) >= PLATE_RADIUS * min(rows, cols)
        assert row["labels"]["Beam Off Image"] == int(outside)
        if outside:
            assert row["beamstop"]["kind"] == "none"
            assert all(row["labels"][a] == 0 for a in ("Circ. Beamstop", "Linear beamstop", "Wedge beamstop"))


def test_module_gaps_are_the_real_detectors_masks():
    """The Pilatus and Eiger gap layouts written by the set are pyFAI's masks of those detectors."""
    pyFAI = pytest.importorskip("pyFAI")
    from xrayscatter.benchmarks.external import DETECTORS, sensitive_area

    for ours, theirs in (("pilatus1m", "Pilatus1M"), ("pilatus300k", "Pilatus300k"), ("eiger1m", "Eiger1M")):
        detector = pyFAI.detector_factory(theirs)
        assert detector.pixel1 == pytest.approx(DETECTORS[ours].pixel_mm * 1e-3)
        np.testing.assert_array_equal(~sensitive_area(DETECTORS[ours]), detector.calc_mask().astype(bool))


def test_set_definition_hash_follows_its_parameters():
    from xrayscatter.benchmarks.external import definition

    assert definition(2, 1)["hash"] == definition(2, 1)["hash"]
    assert len({definition(2, 1)["hash"], definition(3, 1)["hash"], definition(2, 2)["hash"],
                definition(2, 1, ["bcc"])["hash"]}) == 4


# --------------------------------------------------------------------------- physics spot checks
def _geometry(**kw):
    from xrayscatter.benchmarks.external import Geometry

    parameters = dict(rows=400, cols=420, pixel_mm=0.172, distance_mm=3000.0, wavelength=1.0,
                      centre=(180.5, 230.5))
    parameters.update(kw)
    return Geometry(**parameters)


def test_geometry_q_follows_bragg_and_tilt_keeps_the_beam_at_q_zero():
    g = _geometry()
    q = g.maps()["q"]
    # the pixel 100 px right of the beam centre, untilted: q = 4π/λ · sin(atan(r·p/D)/2)
    expected = 4 * np.pi / g.wavelength * np.sin(np.arctan(100 * g.pixel_mm / g.distance_mm) / 2)
    assert q[180, 330] == pytest.approx(expected, rel=1e-4)
    assert g.radius_px(expected) == pytest.approx(100, abs=1e-3)
    tilted = _geometry(tilt_deg=25.0, tilt_axis_deg=30.0, distance_mm=100.0).maps()["q"]
    assert tilted[180, 230] < 1e-3 and tilted.min() == tilted[180, 230]
    assert abs(tilted[180, 330] / tilted[180, 130] - 1) > 0.03  # rings are no longer circles


def test_lamellar_first_ring_sits_at_two_pi_over_d():
    from xrayscatter.benchmarks.external import DETECTORS, _combine, _lamellar, render

    rng = np.random.default_rng(0)
    part = _lamellar(rng)
    d = part[1]["d_spacing"]
    g = _geometry(distance_mm=float(80 * 0.172 / np.tan(2 * np.arcsin(2 * np.pi / d * 1.0 / (4 * np.pi))))
                  , rows=1043, cols=981, centre=(500.5, 480.5))
    scene, _info = render(_combine("saxs", [part]), g, DETECTORS["pilatus1m"], "none", rng, 1.0, 1e4)
    from scipy.signal import find_peaks

    image, bins = scene.pieces[0].image.ravel(), np.rint(scene.rho).astype(int).ravel()
    radial = np.bincount(bins, image) / np.maximum(np.bincount(bins), 1)
    peaks, props = find_peaks(np.log(radial[40:130]), prominence=0)
    ring = 40 + int(peaks[np.argmax(props["prominences"])])
    assert ring == pytest.approx(g.radius_px(2 * np.pi / d), abs=1.5)  # = 80 px by the choice of distance


def test_cubic_ring_ratios_and_sasmodels_paracrystal_peaks():
    """BCC rings at √2, √3, 2 × the first; FCC at √(4/3), √(8/3), √(11/3); sasmodels' smeared powder
    patterns put their first peaks there too."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    from xrayscatter.benchmarks.external import cubic_cell, cubic_rings, lattice_factor

    expected = {"BCC": [1, np.sqrt(2), np.sqrt(3), 2], "FCC": [1, np.sqrt(4 / 3), np.sqrt(8 / 3), np.sqrt(11 / 3)]}
    for lattice, ratios in expected.items():
        a = cubic_cell(lattice, 200.0)
        rings = cubic_rings(lattice, 0.2, a)
        assert [r["q"] / rings[0]["q"] for r in rings[:4]] == pytest.approx(ratios, rel=1e-9)
        q = np.geomspace(0.6 * rings[0]["q"], 2.2 * rings[0]["q"], 1500)
        z = lattice_factor(lattice, 0.07, q, 200.0)
        smeared = gaussian_filter1d(np.log(z), 0.01 / np.log(q[1] / q[0]))  # 1 % resolution
        peaks, _ = find_peaks(smeared, prominence=0.05)
        found = q[peaks] / q[peaks[0]]
        assert q[peaks[0]] == pytest.approx(rings[0]["q"], rel=0.02)
        for ratio in ratios[1:] if lattice == "BCC" else [ratios[2], ratios[3]]:
            assert np.min(np.abs(found - ratio)) < 0.02 * ratio


def test_grain_spots_land_on_their_powder_rings():
    from xrayscatter.benchmarks.external import cubic_cell, cubic_rings, render_spots

    g = _geometry(rows=600, cols=600, centre=(300.5, 300.5), distance_mm=2000.0)
    a = cubic_cell("FCC", 250.0)
    spec = {"lattice": "FCC", "spacing": a, "form": "sphere", "radius": 60.0, "grains": 400, "mosaic_deg": 0.3,
            "spot_sigma_px": 1.0}
    image, meta = render_spots(spec, g, g.maps()["solid_pol"], np.random.default_rng(1))
    spots = meta["spots"]
    assert len(spots) > 20 and image.max() > 0
    ring_q = {r["N"]: r["q"] for r in cubic_rings("FCC", 1.0, a)}
    radius = np.hypot(spots[:, 0] + 0.5 - 300.5, spots[:, 1] + 0.5 - 300.5)
    expected = g.radius_px(np.array([ring_q[int(n)] for n in spots[:, 3]]))
    assert np.abs(radius - expected).max() < 1.0


@pytest.mark.parametrize("kind", ["circular", "linear", "wedge"])
def test_beamstops_shade_the_beam_and_reach_an_edge(kind):
    from xrayscatter.benchmarks.external import draw_beamstop

    shape, centre = (300, 320), (140.5, 170.5)
    for seed in range(6):
        transmission, params = draw_beamstop(kind, shape, centre, np.random.default_rng(seed))
        assert transmission[140, 170] < 0.1  # the direct beam is stopped
        shadow = transmission < 0.5
        assert 0.001 < shadow.mean() < 0.5
        if kind == "circular":
            radius = params["radius_px"]
            assert np.pi * (radius - 3) ** 2 < shadow.sum()
            if params["arm"] == "none":
                assert shadow.sum() < np.pi * (radius + 3) ** 2
        if kind != "circular" or params["arm"] != "none":  # held from an edge
            assert shadow[0].any() or shadow[-1].any() or shadow[:, 0].any() or shadow[:, -1].any()


# --------------------------------------------------------------------------- truth rules on hand-built scenes
def _scene(pieces=(), background=10.0, beamstop="none", centre=(200.5, 210.5)):
    """A 400 × 420 untilted frame; ``pieces``: (role, I(q) → counts, meta)."""
    from xrayscatter.benchmarks.external import Piece, Scene, draw_beamstop

    g = _geometry(centre=centre)
    maps = g.maps()
    built = [Piece(role, "hand-made", None, 1.0, meta, np.asarray(f(maps["q"]), np.float32))
             for role, f, meta in pieces]
    transmission, _ = draw_beamstop(beamstop, maps["q"].shape, centre, np.random.default_rng(0))
    return Scene(q=maps["q"], rho=maps["rho"], sensitive=np.ones(maps["q"].shape, bool), transmission=transmission,
                 pieces=built, background=np.full(maps["q"].shape, background, np.float32), centre=centre,
                 beamstop=beamstop), g


def _bcc_rings(g, first_px=50, height=1000.0, width=0.01):
    from xrayscatter.benchmarks.external import cubic_rings

    q1 = float(g.q_at_radius(first_px))
    a = 2 * np.pi * np.sqrt(2) / q1
    rings = cubic_rings("BCC", float(g.q_at_radius(400)), a)

    def profile(q):
        return sum(height * np.exp(-0.5 * ((q - r["q"]) / (width * r["q"])) ** 2) for r in rings)

    return ("lattice", profile, {"lattice": "BCC", "rings": rings})


def test_a_flat_image_has_no_ring_and_no_sample_attribute():
    from xrayscatter.benchmarks.external import decide

    labels, _evidence = decide(_scene(background=10.0)[0])
    for attribute in ("Ring", "Higher orders", "Many rings", "BCC", "FCC", "Halo", "Structure factor",
                      "Polycrystalline", "Diffuse low-q", "Diffuse high-q", "Strong scattering", "Beam Off Image",
                      "Circ. Beamstop", "Linear beamstop", "Wedge beamstop"):
        assert labels[attribute] == 0, attribute
    assert labels["Weak scattering"] == 1


def test_a_strong_lattice_image_has_rings_higher_orders_and_its_lattice():
    from xrayscatter.benchmarks.external import decide

    _, g = _scene()
    scene, _ = _scene([_bcc_rings(g)], background=5.0, beamstop="circular")
    labels, evidence = decide(scene)
    assert evidence["rings_sure"] >= 5
    for attribute in ("Ring", "Higher orders", "Many rings", "BCC", "Strong scattering", "Circ. Beamstop"):
        assert labels[attribute] == 1, attribute
    for attribute in ("FCC", "Halo", "Structure factor", "Polycrystalline", "High background", "Weak scattering",
                      "Linear beamstop", "Wedge beamstop", "Beam Off Image"):
        assert labels[attribute] == 0, attribute


def test_a_ring_drowned_in_background_is_not_a_ring_and_the_background_is_high():
    from xrayscatter.benchmarks.external import decide

    _, g = _scene()
    labels, _ = decide(_scene([_bcc_rings(g, height=2.0)], background=400.0)[0])
    assert labels["Ring"] == 0 and labels["BCC"] == 0
    assert labels["High background"] == 1 and labels["Weak scattering"] == 1


def test_bright_rings_on_a_moderate_floor_are_not_high_background():
    from xrayscatter.benchmarks.external import decide

    _, g = _scene()
    labels, _ = decide(_scene([_bcc_rings(g, height=1e5)], background=100.0)[0])
    assert labels["High background"] == 0 and labels["Strong scattering"] == 1 and labels["Weak scattering"] == 0


def test_diffuse_low_q_needs_scattering_that_rises_towards_the_beam():
    from xrayscatter.benchmarks.external import decide

    porod = ("diffuse_low", lambda q: 1e-3 * np.maximum(q, 1e-4) ** -3.0, {})
    scene, _ = _scene([porod], background=1.0, beamstop="linear")
    labels, _ = decide(scene)
    assert labels["Diffuse low-q"] == 1 and labels["Linear beamstop"] == 1
    ring_only = ("diffuse_low", lambda q: 50 * np.exp(-0.5 * ((q - 0.02) / 0.003) ** 2), {})
    labels, _ = decide(_scene([ring_only], background=1.0, beamstop="linear")[0])
    assert labels["Diffuse low-q"] == 0


def test_a_beam_off_the_image_is_tagged_by_geometry():
    from xrayscatter.benchmarks.external import decide

    labels, _ = decide(_scene(background=10.0, centre=(-60.0, 100.0))[0])
    assert labels["Beam Off Image"] == 1


# --------------------------------------------------------------------------- scoring
def test_scoring_is_roc_auc_and_ap_over_known_labels():
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import score_attributes, summarise

    def row(name, ring, bcc):
        return {"file": name, "labels": {a: 0 for a in ATTRIBUTES} | {"Ring": ring, "BCC": bcc}}

    truth = [row("a", 1, 1), row("b", 0, 0), row("c", 1, None), row("d", 0, 0), row("e", None, 1), row("f", 1, 0)]
    scores = {n: {a: 0.5 for a in ATTRIBUTES} for n in "abcdef"}
    for name, ring, bcc in (("a", 0.9, 0.8), ("b", 0.1, 0.1), ("c", 0.8, 0.99), ("d", 0.2, 0.3), ("e", 0.0, 0.1),
                            ("f", 0.15, 0.2)):
        scores[name].update({"Ring": ring, "BCC": bcc})
    rows = {r["attribute"]: r for r in score_attributes(truth, scores)}
    ring, bcc = rows["Ring"], rows["BCC"]
    # Ring: positives a, c, f (0.9, 0.8, 0.15) vs negatives b, d (0.1, 0.2); e (unknown, score 0) left out
    assert (ring["positives"], ring["negatives"], ring["unknown"]) == (3, 2, 1)
    assert ring["auc"] == pytest.approx(5 / 6)
    assert ring["ap"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert ring["base_rate"] == pytest.approx(3 / 5)
    # BCC: positives a, e (0.8, 0.1) vs b, d, f (0.1, 0.3, 0.2); c (unknown, 0.99) left out
    assert (bcc["positives"], bcc["negatives"], bcc["unknown"]) == (2, 3, 1)
    assert bcc["auc"] == pytest.approx((3 + 0.5) / 6)
    assert rows["Halo"]["auc"] is None and rows["Halo"]["positives"] == 0  # one class only: not scored
    summary = summarise(list(rows.values()))
    assert summary["attributes_scored"] == 2
    assert summary["mean_auc"] == pytest.approx((ring["auc"] + bcc["auc"]) / 2)
    assert summary["map"] == pytest.approx((ring["ap"] + bcc["ap"]) / 2)
    assert summary["target_met"] is False


def test_breakdown_reads_the_scores_per_detector_and_leaves_out_thin_subsets():
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import breakdown, breakdowns

    rng = np.random.default_rng(0)
    truth, scores = [], {}
    for i in range(40):
        detector = "good" if i < 24 else "bad"
        ring = int(i % 2)
        name = f"f{i}"
        labels = {a: 0 for a in ATTRIBUTES} | {"Ring": ring, "Halo": int(i == 0 or i == 30)}
        truth.append({"file": name, "detector": detector, "kind": "saxs", "labels": labels})
        # the "good" files' Ring scores follow the label; the "bad" files' are the label turned upside down
        ring_score = ring if detector == "good" else 1 - ring
        scores[name] = {a: float(rng.random()) for a in ATTRIBUTES} | {"Ring": 0.2 + 0.6 * ring_score}
    rows = {r["value"]: r for r in breakdown(truth, scores, "detector")}
    assert list(rows) == ["good", "bad"] and (rows["good"]["files"], rows["bad"]["files"]) == (24, 16)
    assert rows["good"]["auc"]["Ring"] == 1.0 and rows["bad"]["auc"]["Ring"] == 0.0
    assert rows["bad"]["lowest"] == ("Ring", 0.0)
    # Halo has one positive in each subset (fewer than 3): not scored there; attributes without positives neither
    assert rows["good"]["auc"]["Halo"] is None and rows["good"]["attributes_scored"] == 1
    assert rows["good"]["mean_auc_common"] == 1.0 and rows["bad"]["mean_auc"] == 0.0
    split = breakdowns(truth, scores)
    assert set(split) == {"detector", "kind"}  # no beam_placement in these rows
    assert split["detector"]["common_attributes"] == ["Ring"] and len(split["kind"]["rows"]) == 1


def test_weighted_auc_and_ap_are_sklearns_with_sample_weights():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from xrayscatter.benchmarks.external import weighted_auc_and_ap

    rng = np.random.default_rng(3)
    labels = rng.random(80) < 0.3
    scores = np.round(rng.random(80), 1)  # ties, which both metrics must treat as sklearn does
    weights = rng.integers(0, 4, (6, 80)).astype(float)
    weights[0] = 1.0
    auc, ap = weighted_auc_and_ap(labels, scores, weights)
    np.testing.assert_allclose(auc, [roc_auc_score(labels, scores, sample_weight=w) for w in weights], atol=1e-12)
    np.testing.assert_allclose(ap, [average_precision_score(labels, scores, sample_weight=w) for w in weights], atol=1e-12)
    no_positives = np.where(labels, 0.0, 1.0)[None]  # a weighting that leaves one class out: not scored
    assert np.isnan(weighted_auc_and_ap(labels, scores, no_positives)).all()


def test_bootstrap_intervals_bracket_the_scores_and_narrow_with_more_files():
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import bootstrap_intervals, score_attributes, summarise

    rng = np.random.default_rng(4)

    def labelled_set(count):
        truth, scores = [], {}
        for i in range(count):
            ring = int(rng.random() < 0.4)
            truth.append({"file": f"f{i}", "labels": {a: 0 for a in ATTRIBUTES} | {"Ring": ring, "Halo": None}})
            scores[f"f{i}"] = {a: float(rng.random()) for a in ATTRIBUTES} | {"Ring": float(rng.normal(ring, 0.8))}
        return truth, scores

    widths = []
    for count in (60, 600):
        truth, scores = labelled_set(count)
        intervals = bootstrap_intervals(truth, scores, resamples=200)
        rows = {r["attribute"]: r for r in score_attributes(truth, scores)}
        low, high = intervals["auc"]["Ring"]
        assert low < rows["Ring"]["auc"] < high
        assert intervals["auc"]["Halo"] is None and intervals["auc"]["BCC"] is None  # unknown / one class: no interval
        summary = summarise(list(rows.values()))
        assert intervals["mean_auc"][0] < summary["mean_auc"] < intervals["mean_auc"][1]
        assert intervals["map"][0] < summary["map"] < intervals["map"][1]
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]  # ten times the files: about a third of the width


def test_paired_difference_of_two_models_on_the_same_files():
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import paired_difference, score_attributes, summarise

    rng = np.random.default_rng(5)
    truth, old, new = [], {}, {}
    for i in range(300):
        ring = int(rng.random() < 0.4)
        truth.append({"file": f"f{i}", "labels": {a: 0 for a in ATTRIBUTES} | {"Ring": ring, "Halo": int(rng.random() < 0.3)}})
        noise = {a: float(rng.random()) for a in ATTRIBUTES}
        old[f"f{i}"] = noise | {"Ring": float(rng.normal(ring, 1.0))}
        new[f"f{i}"] = noise | {"Ring": float(rng.normal(ring, 0.3))}  # the same files, a sharper Ring output
    same = paired_difference(truth, old, old, resamples=100)
    assert same["mean_auc"] == 0.0 and same["intervals"]["mean_auc"] == [0.0, 0.0]
    better = paired_difference(truth, new, old, resamples=200)
    rows = {r["attribute"]: r["auc"] for r in score_attributes(truth, new)}
    before = {r["attribute"]: r["auc"] for r in score_attributes(truth, old)}
    assert better["auc"]["Ring"] == pytest.approx(rows["Ring"] - before["Ring"])
    assert better["auc"]["Halo"] == 0.0  # the same scores: no difference in any resample
    low, high = better["intervals"]["auc"]["Ring"]
    assert 0.0 < low < better["auc"]["Ring"] < high  # surely better, and the interval holds the difference
    assert better["mean_auc"] == pytest.approx(summarise(list(score_attributes(truth, new)))["mean_auc"]
                                               - summarise(list(score_attributes(truth, old)))["mean_auc"])


def test_bench_external_tags_the_set_and_writes_results(external_set, tmp_path_factory):
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.benchmarks.external import bench_external

    folder, truth = external_set
    written = (folder / "truth.json").stat().st_mtime_ns
    model = shared_saved_models(tmp_path_factory) / "resnet"
    summary = bench_external(model=model, folder=folder, per_group=1, seed=SEED)
    assert (folder / "truth.json").stat().st_mtime_ns == written  # the set was reused, not rewritten
    assert summary["files"] == len(truth) == 17
    assert [r["attribute"] for r in summary["attributes"]] == list(ATTRIBUTES)
    scored = [r for r in summary["attributes"] if r["auc"] is not None]
    assert scored and all(0.0 <= r["auc"] <= 1.0 and 0.0 <= r["ap"] <= 1.0 for r in scored)
    results = json.loads((folder / "results.json").read_text())
    assert results["mean_auc"] == pytest.approx(summary["mean_auc"]) and results["map"] == pytest.approx(summary["map"])
    # how far another draw of as many files would move the figures: an interval beside each AUC and the means
    assert all(r["auc_interval"][0] <= r["auc_interval"][1] for r in scored if r["auc_interval"] is not None)
    assert results["interval_level"] == 0.9 and "interval" in (folder / "results.md").read_text()
    # against a baseline: the same model compared with itself differs by nothing, in every resample (here both
    # with their probabilities averaged over four views)
    again = bench_external(model=model, folder=folder, per_group=1, seed=SEED, baseline=model, views=4)
    assert again["against"]["mean_auc"] == pytest.approx(again["mean_auc"])
    assert again["against"]["difference"]["mean_auc"] == 0.0
    assert summary["views"] == 1 and again["views"] == 4 and "averaged over 4 views" in (folder / "results.md").read_text()
    assert "## Against" in (folder / "results.md").read_text()
    assert "| attribute | positives |" in (folder / "results.md").read_text()
    # the same scores per detector format, in results.json and results.md
    detectors = results["breakdowns"]["detector"]["rows"]
    assert sorted(r["value"] for r in detectors) == sorted({r["detector"] for r in truth})
    assert sum(r["files"] for r in detectors) == len(truth) and "## By detector" in (folder / "results.md").read_text()
    # The model has the beam-centre head: how far its centres lie from the files' is part of the summary.
    centre = summary["beam_centre"]
    on_image = sum(0 <= r["beam_centre_px"][0] <= r["shape"][0] and 0 <= r["beam_centre_px"][1] <= r["shape"][1]
                   for r in truth)
    assert centre["files"] == on_image > 0 and 0 <= centre["median_px"] <= centre["p90_px"]
    assert results["beam_centre"] == pytest.approx(centre) and "Beam centre" in (folder / "results.md").read_text()


def test_beam_centre_errors_read_the_truth_as_row_and_column():
    from xrayscatter.benchmarks.external import beam_centre_errors

    truth = [{"file": "a.tif", "beam_centre_px": [100.0, 300.0], "shape": [1000, 500]},   # row 100, column 300
             {"file": "b.tif", "beam_centre_px": [50.0, 40.0], "shape": [200, 200]},
             {"file": "off.tif", "beam_centre_px": [-80.0, 40.0], "shape": [200, 200]},   # beam off the image: left out
             {"file": "none.tif", "beam_centre_px": [10.0, 10.0], "shape": [200, 200]}]   # no estimate: left out
    estimates = {"a.tif": np.array([303.0, 104.0]), "b.tif": np.array([40.0, 50.0]), "off.tif": np.array([0.0, 0.0])}
    errors = beam_centre_errors(truth, estimates)  # estimates are (x, y): 5 px and 0 px off
    assert errors["files"] == 2
    assert errors["median_px"] == pytest.approx(2.5) and errors["median_percent"] == pytest.approx((0.5 + 0.0) / 2)
    assert errors["within_1_percent"] == 1.0
    assert beam_centre_errors(truth[2:3], estimates) is None
