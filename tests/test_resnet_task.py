"""The ResNet task: its losses, the evaluation copy with recalibrated batch norm, and training end to end on the
smoke pipeline in both configurations (killed and resumed, hold-out report, SavedModel, predict)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector_samples import write_good_files
from helpers import ENV, copy_dataset, kill_when, latest_backup_step, paper_network, redirect, write_pipeline
from xrayscatter.attributes import ATTRIBUTES, NUM_ATTRIBUTES, slug
from xrayscatter.config import replace
from xrayscatter.dataset import shard_paths
from xrayscatter.errors import XrayscatterError
from xrayscatter.predict import TaggingModel, predict_directory
from xrayscatter.resnet.data import make_beam_dataset
from xrayscatter.resnet.model import RESNET50_BLOCKS
from xrayscatter.resnet.task import ResNetTask, beam_centre_error, learning_rate_schedule, summed_binary_crossentropy
from xrayscatter.train import train


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_loss_is_the_sum_over_attributes_of_binary_crossentropy():
    labels = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    probabilities = np.array([[0.9, 0.2], [0.5, 0.1]], np.float32)
    expected = -(np.log([0.9, 0.5]) + np.log([0.8, 0.9]))
    np.testing.assert_allclose(np.asarray(summed_binary_crossentropy(labels, probabilities)), expected, rtol=1e-5)


def test_beam_centre_error_counts_only_beams_on_the_image():
    truth = np.array([[0.2, 0.3], [np.nan, np.nan], [1.4, 0.5], [0.5, -0.1], [1.0, 0.0], [0.9, 0.9]], np.float32)
    estimate = np.array([[0.25, 0.1], [0.5, 0.5], [0.9, 0.5], [0.5, 0.1], [0.5, 0.5], [0.9, 0.9]], np.float32)
    error = np.asarray(beam_centre_error(truth, estimate))
    np.testing.assert_allclose(error, [0.05 + 0.2, 0.0, 0.0, 0.0, 0.5 + 0.5, 0.0], atol=1e-6)


def _network_batch(seed: int = 0, batch: int = 6):
    rng = np.random.default_rng(seed)
    beams = np.concatenate([rng.random((batch - 2, 2)), [[np.nan, np.nan], [1.5, 0.5]]]).astype(np.float32)
    targets = {"attributes": (rng.random((batch, NUM_ATTRIBUTES)) < 0.3).astype(np.float32),
               "beam": beams, "beam_coarse": beams}
    outputs = {"attributes": rng.uniform(0.05, 0.95, (batch, NUM_ATTRIBUTES)).astype(np.float32),
               "beam": rng.random((batch, 2)).astype(np.float32), "beam_coarse": rng.random((batch, 2)).astype(np.float32)}
    return targets, outputs


@pytest.mark.parametrize("refine", [False, True])
def test_per_example_loss_is_the_attribute_loss_plus_the_weighted_beam_error(smoke_dataset, refine):
    targets, outputs = _network_batch()
    for weight in (5.0, 0.5):
        task = ResNetTask(replace(smoke_dataset, "resnet", beam_centre_weight=weight, beam_refine=refine))
        assert task.beam_head and task.beam_refine == refine
        heads = ("beam", "beam_coarse") if refine else ("beam",)
        expected = (np.asarray(summed_binary_crossentropy(targets["attributes"], outputs["attributes"]))
                    + weight * sum(np.asarray(beam_centre_error(targets[k], outputs[k])) for k in heads))
        np.testing.assert_allclose(np.asarray(task.per_example_loss(targets, outputs)), expected, rtol=1e-6)
        bce = -(targets["attributes"] * np.log(outputs["attributes"])
                + (1 - targets["attributes"]) * np.log(1 - outputs["attributes"])).sum(axis=1)
        on = slice(0, 4)  # the last two beams are unknown and off the image: no beam term
        np.testing.assert_allclose(expected[on] - bce[on],
                                   weight * sum(np.abs(targets[k] - outputs[k])[on].sum(1) for k in heads),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(expected[4:], bce[4:], rtol=1e-5)
        # What fit compiles: one loss per output, whose batch means add up to the mean per-example loss.
        losses = task.compile_loss()
        assert set(losses) == {"attributes", *heads} and set(task.build_metrics()) == {"attributes"}
        total = sum(np.mean(np.asarray(losses[k](targets[k], outputs[k]))) for k in losses)
        assert total == pytest.approx(float(np.mean(expected)), rel=1e-6)

    paper = ResNetTask(paper_network(smoke_dataset))
    assert not paper.beam_head and isinstance(paper.build_metrics(), list)
    np.testing.assert_allclose(np.asarray(paper.per_example_loss(targets["attributes"], outputs["attributes"])),
                               np.asarray(summed_binary_crossentropy(targets["attributes"], outputs["attributes"])))


def test_evaluation_copy_recomputes_batch_norm_over_training_images_for_the_weights_it_has(smoke_dataset):
    import keras

    config = replace(smoke_dataset, "resnet", input_size=32, detail_size=32, detail_crop=16, batch_norm_images=12)
    task = ResNetTask(config)
    keras.utils.set_random_seed(0)
    model = task.build_model()
    batches = task.calibration_batches()
    assert [int(b["image"].shape[0]) for b in batches] == [12]  # batch_norm_images, in batches of 64
    assert np.isnan(batches[0]["centre"].numpy()).all()  # as at evaluation: the network's own estimate
    original = [keras.ops.convert_to_numpy(w) for w in model.weights]

    copy = task.evaluation_copy(model)

    for before, weight in zip(original, model.weights):  # the training model is untouched
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(weight))
    for source, target in zip(model.trainable_weights, copy.trainable_weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(source), keras.ops.convert_to_numpy(target))
    trunk = copy.get_layer("resnet50")
    conv1 = keras.Model(trunk.input, trunk.get_layer("conv1_conv").output)(batches[0]["image"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(trunk.get_layer("conv1_bn").moving_mean),
                               keras.ops.convert_to_numpy(conv1).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("resnet50").get_layer("conv1_bn").moving_mean),
                           keras.ops.convert_to_numpy(trunk.get_layer("conv1_bn").moving_mean))
    # The next epoch's call gives the same copy the new weights and statistics for them (one traced graph reused).
    calibrated = keras.ops.convert_to_numpy(trunk.get_layer("conv1_bn").moving_mean)
    kernel = model.get_layer("resnet50").get_layer("conv1_conv").kernel
    kernel.assign(kernel * 2.0)
    again = task.evaluation_copy(model)
    assert again is copy
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel),
                                  keras.ops.convert_to_numpy(again.get_layer("resnet50").get_layer("conv1_conv").kernel))
    conv1 = keras.Model(trunk.input, trunk.get_layer("conv1_conv").output)(batches[0]["image"])
    recalibrated = keras.ops.convert_to_numpy(trunk.get_layer("conv1_bn").moving_mean)
    np.testing.assert_allclose(recalibrated, keras.ops.convert_to_numpy(conv1).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(recalibrated, calibrated)
    # batch_norm_images = 0: the running averages of training are kept.
    task = ResNetTask(replace(config, "resnet", batch_norm_images=0))
    assert task.calibration_batches() == []
    kept = task.evaluation_copy(model)
    for source, target in zip(model.weights, kept.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(source), keras.ops.convert_to_numpy(target))


def test_learning_rate_warms_up_then_decays_by_cosine(smoke_config):
    schedule = learning_rate_schedule(replace(smoke_config, "resnet", learning_rate=1e-3), total_steps=100)
    assert float(schedule(0)) == pytest.approx(1e-4)  # a tenth of the peak
    assert float(schedule(5)) == pytest.approx(1e-3)  # warm-up: 5 % of the steps
    assert float(schedule(100)) == pytest.approx(1e-5)  # 1 % of the peak at the end


def test_weight_averaging_validates_and_ships_the_average_of_the_weights(smoke_dataset):
    import keras

    config = replace(smoke_dataset, "resnet", input_size=32, detail_size=32, detail_crop=16, batch_norm_images=0,
                     weight_averaging=True, averaging_momentum=0.9)
    task = ResNetTask(config)
    keras.utils.set_random_seed(0)
    model = task.build_model()
    optimizer = task.build_optimizer(model, total_steps=10)
    rng = np.random.default_rng(0)
    for _ in range(3):  # three steps of made-up gradients: the average now differs from the weights
        optimizer.apply([rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables],
                        model.trainable_variables)
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    averages = [keras.ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average]

    copy = task.evaluation_copy(model)  # what validation scores: the average

    for average, weight, variable in zip(averages, weights, copy.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), average)
    assert not all(np.array_equal(a, w) for a, w in zip(averages, weights))
    task.after_training(model, Path("unused"), {"route": "loop"})  # what is exported: the average too
    for average, variable in zip(averages, model.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), average)


def test_killed_with_sigkill_resumes_reports_and_exports(smoke_dataset, tmp_path):
    # as the default exports: 4 views in the graph, the beam centre refined by radial symmetry
    config = redirect(replace(smoke_dataset, "resnet", epochs=3, steps_per_epoch=2, views=4, symmetry_centre=True),
                      tmp_path)
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    backup = Path(config.resnet.log_dir) / "backup"

    process = subprocess.Popen([sys.executable, "-m", "xrayscatter", "train", "resnet", "--pipeline", str(pipeline)],
                               env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(process, lambda: latest_backup_step(backup) >= 2, timeout=400, poll=0.1)
    assert process.returncode == -signal.SIGKILL, f"not killed mid-training: {process.stderr.read()[-3000:]}"
    assert not (tmp_path / "saved_models").exists()
    backed_up = latest_backup_step(backup)  # the last backup before the kill, at an epoch's end
    assert 2 <= backed_up < 6 and backed_up % 2 == 0

    result = train("resnet", config, progress=False)

    assert result["route"] == "fit" and result["complete"]
    assert result["initial_step"] == backed_up and result["final_step"] == 6
    run_dir = Path(result["log_dir"])
    rows = _csv_rows(run_dir / "training_log.csv")
    epochs = [int(r["epoch"]) for r in rows]
    first_resumed = backed_up // 2
    assert sorted(set(epochs)) == list(range(config.resnet.epochs))
    resumed = epochs[epochs.index(first_resumed, first_resumed):]  # the rows the second run wrote
    assert resumed == list(range(first_resumed, config.resnet.epochs))
    # The optimizer's step counter came back too: the learning rate follows the schedule of one run.
    schedule = learning_rate_schedule(config, 6)
    for row in rows[-len(resumed):]:
        assert float(row["learning_rate"]) == pytest.approx(float(schedule((int(row["epoch"]) + 1) * 2)), rel=1e-5)
    # One loss per output, the PR-AUC of the attribute output, the validation of the evaluation copy.
    assert {"loss", "attributes_loss", "beam_loss", "attributes_pr_auc", "val_loss", "val_mAP", "val_AP_ring",
            "examples_per_second"} <= set(rows[0]), sorted(rows[0])
    assert not backup.exists()

    # TensorBoard: scalars, image grid, filters and PR curves were written.
    assert list((run_dir / "train").glob("events.out.tfevents.*"))
    assert len(list((run_dir / "validation").glob("events.out.tfevents.*"))) >= 2

    # Hold-out report and SavedModel, both holding the training record.
    report = json.loads(Path(result["report_json"]).read_text())
    assert report["pipeline"] == "smoke" and report["split"] == "test"
    assert 0.0 < report["mAP"] <= 1.0 and report["mAP"] == pytest.approx(result["holdout_mAP"])
    assert report["training"]["initial_step"] == backed_up and "both positives and negatives" in report["ap_rule"]
    assert all(v["ap"] is None or 0 < v["positives"] < report["num_images"] for v in report["attributes"].values())
    assert "| ResNet, this run |" in Path(result["report_md"]).read_text()
    # How far the beam-centre estimates lie from the records' centres, over the test images whose beam is on them.
    beams = np.stack([b.numpy() for b in make_beam_dataset(config, "test")])
    on_image = np.all((beams >= 0) & (beams <= 1), axis=1)
    centre = report["beam_centre"]
    assert centre["images"] == on_image.sum() > 0 and centre["side_px"] == config.simulate.image_size
    assert 0 <= centre["beam"]["median_px"] <= centre["beam"]["p90_px"] and "beam_coarse" not in centre
    assert 0 <= centre["beam_network"]["median_px"] <= centre["beam_network"]["p90_px"]  # before the refinement
    markdown = Path(result["report_md"]).read_text()
    assert "| refined by radial symmetry (`beam_centre` signature) |" in markdown
    assert "averaged over 4 flipped and turned views" in markdown
    saved = Path(result["saved_model"])
    assert saved == tmp_path / "saved_models" / "resnet" / "1"
    metadata = json.loads((saved / "assets.extra" / "metadata.json").read_text())
    assert set(metadata["thresholds"]) == set(report["attributes"])
    assert metadata["training"]["initial_step"] == backed_up and metadata["training"]["route"] == "fit"
    assert result["replicas"] == 1 and result["examples_per_second"] > 0 and result["best_val_mAP"] is not None
    assert result["final_val_mAP"] == pytest.approx(float(rows[-1]["val_mAP"]))  # the final weights are exported
    assert not list(run_dir.glob("*.weights.h5"))  # no best-epoch checkpoint

    # The network of this configuration: three channels, the beam-centre head, the beam-region branch.
    assert metadata["input_channels"] == ["filled", "contrast", "valid"] and "beam_centre" in metadata["signatures"]
    assert metadata["views"] == metadata["holdout"]["views"] == 4 and metadata["symmetry_centre"] is True
    assert "beam-region branch" in metadata["architecture"]
    _check_thresholds(config, result, metadata)
    _check_predictions(saved, tmp_path, beam_centre=True)


def _check_thresholds(config, result: dict, metadata: dict) -> None:
    """Thresholds by the precision rule, never below the floor, reported with their test precision and recall."""
    report = json.loads(Path(result["report_json"]).read_text())
    floor = config.resnet.threshold_floor
    assert all(t >= floor for t in metadata["thresholds"].values()), metadata["thresholds"]
    assert f"≥ {floor:g}" in metadata["thresholds_rule"]
    for name in ATTRIBUTES:
        entry = report["attributes"][name]
        assert entry["threshold"] == metadata["thresholds"][name] == metadata["holdout"]["decisions"][name]["threshold"]
        assert entry["rule"] in ("precision", "best F1", "default")
        assert entry["precision"] is None or 0 <= entry["precision"] <= 1
        assert entry["recall"] is None or 0 <= entry["recall"] <= 1
    assert "| threshold | rule | precision (%) | recall (%) |" in Path(result["report_md"]).read_text()


def _check_predictions(saved: Path, tmp_path: Path, beam_centre: bool) -> None:
    """``predict`` with the exported model: tags every file, with the beam centre exactly when the model has the head."""
    images = tmp_path / "images"
    good = write_good_files(images)
    model = TaggingModel(saved)
    assert model.has_beam_centre == beam_centre and model.input_size == 64
    assert predict_directory(images, model=model, output=tmp_path / "tags.jsonl", quiet=True) == []
    records = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    assert len(records) == len(good) and all(r["error"] is None for r in records)
    assert all(("beam_centre" in r) == beam_centre for r in records)
    assert predict_directory(images, model=model, output=tmp_path / "tags.csv", quiet=True) == []
    header = (tmp_path / "tags.csv").read_text().splitlines()[0].split(",")
    assert ("beam_x" in header) == beam_centre and f"{slug(ATTRIBUTES[0])}_probability" in header


def test_the_papers_network_trains_exports_and_predicts(smoke_dataset, tmp_path):
    """One channel, attribute outputs only, ResNet-50's 3-4-6-3 blocks: the first models' network (the only test
    that trains the full depth), still a configuration that works."""
    config = redirect(replace(paper_network(smoke_dataset), "resnet", blocks=RESNET50_BLOCKS, epochs=1,
                              steps_per_epoch=2, threshold_floor=0.6),  # a floor above the 0.5 default
                      tmp_path)

    result = train("resnet", config, progress=False)

    assert result["complete"] and result["final_step"] == 2 and 0 < result["holdout_mAP"] <= 1
    saved = Path(result["saved_model"])
    metadata = json.loads((saved / "assets.extra" / "metadata.json").read_text())
    assert metadata["input_channels"] == ["log"] and "beam_centre" not in metadata["signatures"]
    assert "1 input channel(s), sigmoid head" in metadata["architecture"]
    assert metadata["architecture"].startswith("ResNet-50 ") and metadata["blocks"] == [3, 4, 6, 3]
    assert metadata["views"] == metadata["holdout"]["views"] == 1 and "one_view" not in metadata["signatures"]
    _check_thresholds(config, result, metadata)
    report = json.loads(Path(result["report_json"]).read_text())
    assert any(report["attributes"][name]["rule"] == "default" for name in ATTRIBUTES)  # raised to the floor
    _check_predictions(saved, tmp_path, beam_centre=False)


def test_truncated_shard_is_named_before_training_starts(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    victim = Path(shard_paths(config, "test")[0])
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(XrayscatterError, match=str(victim)):
        ResNetTask(config).steps_per_epoch()  # walks every split's shards, before any step
