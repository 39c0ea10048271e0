"""``xrayscatter evaluate`` end to end: the smoke pipeline and a folder of real-format files with labels.csv."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import export_tiny_autoencoder, export_tiny_resnet
from xrayscatter.evaluation.datasets import load_folder_dataset


@pytest.fixture(scope="module")
def smoke_models(smoke_dataset):
    """Untrained tiny ResNet and autoencoder of the smoke pipeline, exported through the real export code."""
    config = smoke_dataset
    export_tiny_resnet(config.resnet.output_dir, config)
    export_tiny_autoencoder(config.autoencoder.output_dir, config)
    return dataclasses.replace(config, evaluate=dataclasses.replace(
        config.evaluate, hierarchical=True, baseline_image_size=64, bow_codebook_size=32, gallery_size=3))


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
    # The one hold-out AP rule (xrayscatter.metrics): no AP for an attribute whose test labels hold one class.
    holdout = metrics["network_holdout"]
    assert "both positives and negatives" in holdout["ap_rule"]
    assert holdout["num_attributes"] == sum(v is not None for v in holdout["per_attribute"].values()) < 17
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
        export_feature_set="autoencoder", hierarchical=True))
    # labels.csv has no SAXS column: the hierarchical mode is skipped (said once), the flat evaluation runs
    report = run_evaluation(config, data_dir=folder, report_name="beamline", export=True)
    metrics = json.loads((report / "metrics.json").read_text())
    assert config.evaluate.hierarchy_attribute in metrics["protocol"]["hierarchical_skipped"]
    assert metrics["protocol"]["hierarchical"] is False and "hierarchical" not in metrics
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

    # Without --export, a folder's evaluation leaves saved_models/attributes/ as it was
    exported = sorted(Path(metrics["export"]["path"]).parent.iterdir())
    quick = dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, baselines=()))
    again = json.loads((run_evaluation(quick, data_dir=folder, report_name="beamline2") / "metrics.json").read_text())
    assert "skipped" in again["export"] and sorted(Path(metrics["export"]["path"]).parent.iterdir()) == exported
