"""SVM stage: the exact Gram route, the fold AP conventions, the inner choice of C, the data sets,
the feature cache, and end-to-end runs on the smoke pipeline and on a folder of real-format files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation import protocol, svm
from xrayscatter.evaluation.datasets import load_folder_dataset, load_synthetic_dataset, read_labels_csv, \
    select_whole_runs
from xrayscatter.evaluation.features import FeatureCache, concatenate_blocks, FeatureMatrix

REPO = Path(__file__).resolve().parents[1]


def _problem(num_images=120, dims=500, runs=6, seed=0):
    """Features with a linear signal, labels for 3 attributes, run codes."""
    rng = np.random.default_rng(seed)
    run = np.repeat(np.arange(runs), num_images // runs)
    latent = rng.standard_normal((num_images, 4))
    features = (latent @ rng.standard_normal((4, dims)) + rng.standard_normal((num_images, dims))).astype(np.float32)
    features *= rng.uniform(0.1, 10, dims).astype(np.float32)  # very different feature scales
    labels = np.column_stack([latent[:, 0] > 0.3, latent[:, 1] > 0.8, rng.random(num_images) < 0.3]).astype(float)
    return features, labels, run


# --------------------------------------------------------------------------- svm
def test_gram_route_gives_the_decision_values_of_linearsvc_on_raw_rows(monkeypatch):
    monkeypatch.setattr(svm, "LIBLINEAR_TOLERANCE", 1e-9)
    monkeypatch.setattr(svm, "LIBLINEAR_MAX_ITER", 100_000)
    features, labels, run = _problem()
    train, test = np.flatnonzero(run != 2), np.flatnonzero(run == 2)
    space = svm.FoldSpace(features, (300, 200), train)
    assert space.uses_gram  # 500 dims > 100 training images
    design = space.design(train, test)
    models = svm.fit_linear_svms(design.fit, labels[train], np.array([0.1, 1.0, 10.0]))
    standardized = space.standardizer.transform(features)
    for a, c in enumerate([0.1, 1.0, 10.0]):
        reference = LinearSVC(C=c, tol=1e-9, max_iter=100_000).fit(standardized[train], labels[train, a])
        expected = reference.decision_function(standardized[test])
        np.testing.assert_allclose(models.decision(design.apply)[:, a], expected, atol=1e-4 * np.abs(expected).max())
    # the primal weights reproduce the design's scores for any image
    weights = space.primal_weights(design, models.coef)
    scores = models.decision(design.apply)
    np.testing.assert_allclose(standardized[test] @ weights.T + models.intercept, scores,
                               atol=1e-4 * np.abs(scores).max())  # the Gram matrix is summed from float32 products


def test_standardizer_gives_each_block_unit_total_variance():
    features, _, _ = _problem(dims=50)
    rows = np.arange(60)
    standardizer = svm.Standardizer.fit(features, rows, (10, 40))
    z = standardizer.transform(features[rows])
    assert z[:, :10].var(axis=0).sum() == pytest.approx(1.0)
    assert z[:, 10:].var(axis=0).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)


def test_attribute_with_one_class_in_training_is_not_trained():
    features, labels, run = _problem(dims=20)
    labels[:, 1] = 0.0
    labels[:5, 2] = np.nan
    space = svm.FoldSpace(features, (20,), np.arange(len(features)))
    design = space.design(np.arange(100), np.arange(100, 120))
    models = svm.fit_linear_svms(design.fit, labels[:100], np.ones(3))
    assert models.trained.tolist() == [True, False, True]
    assert models.constant[1] == 0.0
    assert np.isnan(models.decision(design.apply)[:, 1]).all()


def test_best_f1_threshold_separates_a_clean_split():
    scores = np.array([[3.0], [2.0], [1.0], [-1.0], [-2.0]])
    labels = np.array([[1.0], [1.0], [1.0], [0.0], [0.0]])
    threshold = svm.best_f1_thresholds(scores, labels)[0]
    assert -1.0 < threshold < 1.0
    assert svm.best_f1_thresholds(scores, np.zeros_like(labels))[0] == 0.0  # nothing to choose on


# --------------------------------------------------------------------------- AP conventions
def test_fold_ap_follows_the_papers_conventions():
    runs = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    scores = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.4, 0.1], [0.5, 0.3, 0.3, 0.3],
                       [0.8, 0.4, np.nan, 0.2], [0.2, 0.5, np.nan, 0.1], [0.7, 0.6, np.nan, 0.5],
                       [0.3, 0.7, 0.1, 0.6], [0.6, 0.8, 0.2, 0.2], [0.4, 0.9, 0.3, 0.1]])
    nan = np.nan
    labels = np.array([
        # measured; absent from run 0; positives only in run 1 (absent from its training); unknown in run 2
        [1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0],
        [1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0],
        [0, 1, 0, nan], [1, 0, 0, nan], [0, 0, 0, nan]], dtype=float)
    ap, status = protocol.fold_average_precision(scores, labels, runs, 3)
    assert status[0, 0] == protocol.MEASURED
    assert ap[0, 0] == pytest.approx(average_precision_score([1, 0, 1], [0.9, 0.1, 0.5]))
    assert (status[0, 1], ap[0, 1]) == (protocol.ABSENT_TEST, 1.0)
    assert (status[1, 2], ap[1, 2]) == (protocol.ABSENT_TRAIN, 1.0)  # prevalence of run 1 = 3/3
    assert (status[1, 1], ap[1, 1]) == (protocol.ONLY_POSITIVES, 1.0)
    assert status[2, 3] == protocol.UNLABELLED and np.isnan(ap[2, 3])


def test_prevalence_is_the_ap_when_training_lacks_the_attribute():
    runs = np.array([0, 0, 0, 0, 1, 1])
    labels = np.array([[1.0], [0.0], [0.0], [0.0], [0.0], [0.0]])
    ap, status = protocol.fold_average_precision(np.full((6, 1), np.nan), labels, runs, 2)
    assert status[0, 0] == protocol.ABSENT_TRAIN and ap[0, 0] == pytest.approx(0.25)
    assert status[1, 0] == protocol.ABSENT_TEST and ap[1, 0] == 1.0


def test_summary_separates_table4_table5_and_strict():
    fold_ap = np.array([[0.5, 1.0], [0.7, 0.2]])
    status = np.array([[protocol.MEASURED, protocol.ABSENT_TEST], [protocol.MEASURED, protocol.ABSENT_TRAIN]],
                      dtype=object)
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=float)
    runs = np.array([0, 0, 1, 1])
    summary = protocol.summarize(fold_ap, status, np.zeros((4, 2)), labels, runs, ("two runs", "one run"))
    assert summary["map_paper"] == pytest.approx(np.mean([0.6, 0.6]))
    assert summary["map_table5"] == pytest.approx(0.6)  # "one run" is in a single run
    assert summary["map_strict"] == pytest.approx(0.6)
    assert summary["num_attributes_table5"] == 1
    assert summary["per_attribute"]["one run"]["ap_strict"] is None


def test_leave_one_run_out_learns_a_signal_and_keeps_each_test_run_unseen():
    features, labels, run = _problem()
    result = protocol.leave_one_run_out(features, (500,), labels, run, (0.1, 1.0, 10.0), inner_folds=2)
    summary = protocol.summarize(result.fold_ap, result.fold_status, result.scores, labels, run, ("a", "b", "noise"))
    assert summary["per_attribute"]["a"]["ap_paper"] > 0.9
    assert summary["per_attribute"]["noise"]["ap_paper"] < 0.7
    assert set(result.chosen_c.ravel()) <= {0.1, 1.0, 10.0}
    # Changing the labels of run 0 changes nothing that the fold of run 0 computed.
    changed = labels.copy()
    changed[run == 0] = 1.0 - changed[run == 0]
    again = protocol.leave_one_run_out(features, (500,), changed, run, (0.1, 1.0, 10.0), inner_folds=2)
    np.testing.assert_array_equal(again.scores[run == 0], result.scores[run == 0])
    np.testing.assert_array_equal(again.chosen_c[0], result.chosen_c[0])


def test_hierarchical_mode_routes_by_the_predicted_group():
    features, labels, run = _problem(num_images=160, runs=8)
    group = (np.arange(160) % 3 == 0).astype(float)
    features[:, :100] += group[:, None] * features[:, :100].std(axis=0) * 4  # dims that give the group away
    result = protocol.leave_one_run_out(features, (500,), labels, run, (1.0,), group_labels=group)
    assert np.nanmean(result.group_accuracy) > 0.9
    assert result.hierarchical is not None
    assert result.hierarchical.scores.shape == result.scores.shape
    assert not np.allclose(result.hierarchical.scores, result.scores, equal_nan=True)


# --------------------------------------------------------------------------- data sets
def test_select_whole_runs_never_splits_a_run():
    sizes = [("a", 8), ("b", 8), ("c", 5), ("d", 8)]
    assert select_whole_runs(sizes, 0) == {"a", "b", "c", "d"}
    assert select_whole_runs(sizes, 20) == {"a", "b"}
    assert select_whole_runs(sizes, 21) == {"a", "b", "c"}


def test_synthetic_dataset_takes_whole_runs_test_split_first(smoke_dataset):
    config = dataclasses.replace(smoke_dataset, evaluate=dataclasses.replace(smoke_dataset.evaluate, max_images=40))
    data = load_synthetic_dataset(config)
    assert len(data) == 40 and len(data.run_names) == 5
    assert data.splits[:16] == ["test"] * 16  # the smoke test split holds 2 runs of 8
    assert np.bincount(data.runs).tolist() == [8] * 5
    assert set(data.groups) == {"SAXS", "WAXS"}
    assert data.labels.shape == (40, 17) and not np.isnan(data.labels).any()
    full = load_synthetic_dataset(smoke_dataset)
    assert len(full) == 96 and full.content_hash != data.content_hash


def test_labels_csv_bad_rows_are_reported_by_name(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "filename,run,Ring,Thin film\n"
        "a.npy,r1,1,0\n"
        "b.npy,r1,yes,0\n"  # bad label
        "c.npy,,1,0\n"  # no run
        "a.npy,r2,1,1\n"  # listed twice
        "d.npy,r2,1\n"  # missing cell
        "e.npy,r2,,1\n")
    attributes, rows, skipped = read_labels_csv(tmp_path / "labels.csv")
    assert attributes == ("Ring", "Thin film")
    assert [r[0] for r in rows] == ["a.npy", "e.npy"]
    assert np.isnan(rows[1][2][0]) and rows[1][2][1] == 1.0
    assert [s["name"] for s in skipped] == ["b.npy", "c.npy", "a.npy", "labels.csv row 6"]
    (tmp_path / "bad.csv").write_text("file,run,Ring\n")
    with pytest.raises(XrayscatterError, match="filename"):
        read_labels_csv(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- features
def test_feature_cache_round_trip_is_atomic_and_keyed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache.key({"model": "m", "images": "abc"})
    assert key != cache.key({"model": "m", "images": "abd"})
    path = cache.path("resnet", "v3", key)
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.save(path, values, {"model": "m"})
    np.testing.assert_array_equal(cache.load(path, 3), values)
    assert cache.load(path, 4) is None  # another data set size: not reused
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_concatenation_normalises_each_block():
    a = FeatureMatrix("resnet", np.array([[3.0, 4.0], [0.0, 0.0]], np.float32), (2,))
    b = FeatureMatrix("autoencoder", np.array([[10.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32), (3,))
    both = concatenate_blocks("resnet+autoencoder", [a, b])
    assert both.block_sizes == (2, 3)
    np.testing.assert_allclose(both.values, [[0.6, 0.8, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def smoke_models(smoke_dataset):
    """Untrained tiny ResNet and autoencoder of the smoke pipeline, exported through the real export code."""
    from xrayscatter.export import export_resnet
    from xrayscatter.export_autoencoder import export_autoencoder
    from xrayscatter.models.autoencoder import build_autoencoder_from_config
    from xrayscatter.models.resnet import build_backbone, build_classifier

    config = smoke_dataset
    backbone = build_backbone(config.resnet.input_size, config.resnet.width_multiplier)
    export_resnet(build_classifier(backbone), backbone, config)
    export_autoencoder(build_autoencoder_from_config(config.autoencoder), config)
    return dataclasses.replace(config, evaluate=dataclasses.replace(
        config.evaluate, hierarchical=True, baseline_image_size=64, bow_codebook_size=32, gallery_size=3,
        attributes_output_dir=str(Path(config.resnet.output_dir).parent / "attributes")))


@pytest.mark.slow
def test_evaluate_smoke_pipeline_end_to_end(smoke_models, tmp_path):
    from xrayscatter.evaluation.run import run_evaluation

    report = run_evaluation(smoke_models, report_name="smoke-e2e")
    metrics = json.loads((report / "metrics.json").read_text())
    for name in ("resnet", "autoencoder", "resnet+autoencoder", "bow", "lbpphog"):
        assert 0.0 < metrics["feature_sets"][name]["map_paper"] <= 1.0
        assert metrics["hierarchical"][name]["map_paper"] is not None
    assert {r["feature_set"] for r in metrics["tables"]["table4"]} == {"resnet", "autoencoder", "resnet+autoencoder",
                                                                       "bow", "lbpphog"}
    assert all(r["measured"] is not None for r in metrics["tables"]["table3"] + metrics["tables"]["table5"])
    assert metrics["network_holdout"]["num_images"] == 16
    assert metrics["feature_sets"]["resnet+autoencoder"]["block_sizes"] == [256, 21 * 64]
    html = (report / "report.html").read_text()
    assert "<img" in html and 'src="figures' not in html  # self-contained
    assert (report / "figures" / "ap_gap_resnet_autoencoder.png").is_file()

    # The attribute SavedModel serves the SVMs: same scores as the evaluation's own SVMs.
    export = Path(metrics["export"]["path"])
    assert export.parent.name == "attributes" and export.name.isdigit()
    meta = json.loads((export / "assets.extra" / "metadata.json").read_text())
    assert len(meta["attributes"]) == 17 and len(meta["thresholds"]) == 17
    from xrayscatter.evaluation.datasets import load_synthetic_dataset
    from xrayscatter.evaluation.export_attributes import fit_deployable_svms
    from xrayscatter.evaluation.features import FeatureCache, feature_sets

    data = load_synthetic_dataset(smoke_models)
    matrix = feature_sets(["resnet+autoencoder"], data, smoke_models, FeatureCache(smoke_models.evaluate.cache_dir))[
        "resnet+autoencoder"]
    assert matrix.from_cache  # the evaluation cached them
    svms = fit_deployable_svms(matrix.values, matrix.block_sizes, data.labels, data.runs,
                               smoke_models.evaluate.svm_c_grid, smoke_models.evaluate.inner_folds)
    rows = [i for i in range(len(data)) if data.image(i).shape == data.image(0).shape][:3]
    batch = np.stack([data.image(i) for i in rows])
    np.save(tmp_path / "batch.npy", batch)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "saved_model_cli"), "run", "--dir", str(export), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'batch.npy'}",
         "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    served = np.load(tmp_path / "out" / "scores.npy")
    np.testing.assert_allclose(served, svms.scores(matrix.values[rows]), atol=2e-3)
    decisions = np.load(tmp_path / "out" / "decisions.npy")
    np.testing.assert_array_equal(decisions, (served >= np.array(meta["thresholds"], np.float32)).astype(np.int32))

    # A second evaluation would read every feature matrix from the cache.
    from xrayscatter.evaluation.baselines import baseline_features

    cache = FeatureCache(smoke_models.evaluate.cache_dir)
    assert all(baseline_features(name, data, smoke_models, cache).from_cache for name in ("bow", "lbpphog"))
    assert not any(p.name.startswith(".") for p in report.iterdir())  # no temporary files left


def _real_format_folder(root: Path) -> Path:
    """16 simulated frames written as 16-bit TIFF, EDF and NPY in 4 runs, labels.csv with its own
    vocabulary and unknown labels, plus an unreadable file and a bad row."""
    import fabio.edfimage
    import tifffile

    from xrayscatter.simulate.generator import simulate_image

    folder = root / "beamline"
    folder.mkdir()
    lines = ["filename,run,Ring,Weak scattering,Circular beamstop"]
    for image_id in range(16):
        image = simulate_image(3, image_id, images_per_run=4, image_size=48)
        counts = np.clip(image.counts, 0, 65535).astype(np.uint16)
        kind = ("tif", "edf", "npy")[image_id % 3]
        name = f"frame_{image_id:03d}.{kind}"
        if kind == "tif":
            tifffile.imwrite(folder / name, counts)
        elif kind == "edf":
            fabio.edfimage.EdfImage(data=counts).write(str(folder / name))
        else:
            np.save(folder / name, counts.astype(np.int32))
        tags = set(image.tags)
        ring = "1" if "Ring" in tags else "0"
        weak = "" if image_id % 5 == 0 else ("1" if "Weak scattering" in tags else "0")  # some unknown
        beamstop = "1" if "Circ. Beamstop" in tags else "0"
        lines.append(f"{name},run{image_id // 4},{ring},{weak},{beamstop}")
    (folder / "broken.tif").write_text("not an image")
    lines.append("broken.tif,run0,1,0,0")
    lines.append("frame_000.tif,run1,maybe,0,0")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_evaluate_a_folder_of_real_format_files(smoke_models, tmp_path):
    from xrayscatter.evaluation.run import run_evaluation

    folder = _real_format_folder(tmp_path)
    data = load_folder_dataset(folder)
    assert len(data) == 16 and data.attributes == ("Ring", "Weak scattering", "Circular beamstop")
    assert {s["name"] for s in data.skipped} == {"broken.tif", "frame_000.tif"}
    assert np.isnan(data.labels[:, 1]).sum() == 4

    config = dataclasses.replace(smoke_models, evaluate=dataclasses.replace(
        smoke_models.evaluate, feature_sets=("autoencoder",), baselines=("lbpphog",),
        export_feature_set="autoencoder", hierarchical=False))
    report = run_evaluation(config, data_dir=folder, report_name="beamline")
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["dataset"]["skipped"] == 2 and metrics["dataset"]["num_runs"] == 4
    assert set(metrics["feature_sets"]["autoencoder"]["per_attribute"]) == set(data.attributes)
    assert metrics["tables"]["table3"] == []
    assert all(r["measured"] is not None for r in metrics["tables"]["table4"])
    assert "broken.tif" in (report / "report.md").read_text()
    meta = json.loads((Path(metrics["export"]["path"]) / "assets.extra" / "metadata.json").read_text())
    assert meta["attributes"] == list(data.attributes)

    # predict reads the attribute model's vocabulary and decisions
    from xrayscatter.predict import TaggingModel

    model = TaggingModel(metrics["export"]["path"])
    assert model.attributes == data.attributes and model.score_name == "score"
    scores, decisions = model(data.image(1)[None])
    assert scores.shape == (1, 3) and set(np.unique(decisions)) <= {0, 1}


def test_folder_without_two_runs_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((32, 32), np.float32))
    (tmp_path / "labels.csv").write_text("filename,run,Ring\na.npy,r1,1\n")
    with pytest.raises(XrayscatterError, match="at least 2 runs"):
        load_folder_dataset(tmp_path)
