"""The ResNet task trained end to end on the smoke pipeline: killed and resumed, hold-out report, SavedModel."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ENV, copy_dataset, kill_when, latest_backup_step, redirect, write_pipeline
from xrayscatter.config import replace
from xrayscatter.dataset import shard_paths
from xrayscatter.errors import XrayscatterError
from xrayscatter.resnet.task import ResNetTask, learning_rate_schedule, summed_binary_crossentropy
from xrayscatter.train import train


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_loss_is_the_sum_over_attributes_of_binary_crossentropy():
    labels = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    probabilities = np.array([[0.9, 0.2], [0.5, 0.1]], np.float32)
    expected = -(np.log([0.9, 0.5]) + np.log([0.8, 0.9]))
    np.testing.assert_allclose(np.asarray(summed_binary_crossentropy(labels, probabilities)), expected, rtol=1e-5)


def test_learning_rate_warms_up_then_decays_by_cosine(smoke_config):
    schedule = learning_rate_schedule(replace(smoke_config, "resnet", learning_rate=1e-3), total_steps=100)
    assert float(schedule(0)) == pytest.approx(1e-4)  # a tenth of the peak
    assert float(schedule(5)) == pytest.approx(1e-3)  # warm-up: 5 % of the steps
    assert float(schedule(100)) == pytest.approx(1e-5)  # 1 % of the peak at the end


def test_killed_with_sigkill_resumes_reports_and_exports(smoke_dataset, tmp_path):
    config = redirect(replace(smoke_dataset, "resnet", epochs=6, steps_per_epoch=2), tmp_path)
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    backup = Path(config.resnet.log_dir) / "backup"

    process = subprocess.Popen([sys.executable, "-m", "xrayscatter", "train", "resnet", "--pipeline", str(pipeline)],
                               env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when(process, lambda: latest_backup_step(backup) >= 4, timeout=400, poll=0.1)
    assert process.returncode == -signal.SIGKILL, f"not killed mid-training: {process.stderr.read()[-3000:]}"
    assert not (tmp_path / "saved_models").exists()
    backed_up = latest_backup_step(backup)  # the last backup before the kill, at an epoch's end
    assert 4 <= backed_up < 12 and backed_up % 2 == 0

    result = train("resnet", config, progress=False)

    assert result["route"] == "fit" and result["complete"]
    assert result["initial_step"] == backed_up and result["final_step"] == 12
    run_dir = Path(result["log_dir"])
    rows = _csv_rows(run_dir / "training_log.csv")
    epochs = [int(r["epoch"]) for r in rows]
    first_resumed = backed_up // 2
    assert sorted(set(epochs)) == list(range(config.resnet.epochs))
    resumed = epochs[epochs.index(first_resumed, first_resumed):]  # the rows the second run wrote
    assert resumed == list(range(first_resumed, config.resnet.epochs))
    # The optimizer's step counter came back too: the learning rate follows the schedule of one run.
    schedule = learning_rate_schedule(config, 12)
    for row in rows[-len(resumed):]:
        assert float(row["learning_rate"]) == pytest.approx(float(schedule((int(row["epoch"]) + 1) * 2)), rel=1e-5)
    assert {"loss", "pr_auc", "val_loss", "val_mAP", "val_AP_ring", "examples_per_second"} <= set(rows[0])
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
    saved = Path(result["saved_model"])
    assert saved == tmp_path / "saved_models" / "resnet" / "1"
    metadata = json.loads((saved / "assets.extra" / "metadata.json").read_text())
    assert set(metadata["thresholds"]) == set(report["attributes"])
    assert metadata["training"]["initial_step"] == backed_up and metadata["training"]["route"] == "fit"
    assert result["replicas"] == 1 and result["examples_per_second"] > 0 and result["best_val_mAP"] is not None


def test_truncated_shard_is_named_before_training_starts(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    victim = Path(shard_paths(config, "test")[0])
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(XrayscatterError, match=str(victim)):
        ResNetTask(config).steps_per_epoch()  # walks every split's shards, before any step
