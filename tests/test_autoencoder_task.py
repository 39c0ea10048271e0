"""The autoencoder task trained end to end: TFRecords and real-format files, two replicas, killed and resumed."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile

from helpers import ENV, kill_when, last_json_line, latest_backup_step, python_script, redirect, write_pipeline
from xrayscatter.config import replace
from xrayscatter.errors import XrayscatterError
from xrayscatter.train import train


def _summary_tags(folder: Path) -> set[str]:
    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_train_on_the_smoke_pipeline_reports_and_exports(smoke_dataset, tmp_path):
    config = redirect(smoke_dataset, tmp_path)
    result = train("autoencoder", config, progress=False)
    summary = result["report"]
    ae = config.autoencoder

    assert result["saved_model"] == summary["export"]
    export = Path(summary["export"])
    assert export == tmp_path / "saved_models" / "autoencoder" / "1"
    loaded = tf.saved_model.load(str(export))
    counts = tf.constant(np.random.default_rng(0).integers(0, 5000, (2, 64, 64)).astype(np.float32))
    features = loaded.signatures["features_spm"](images=counts)["features"].numpy()
    assert features.shape == (2, 21 * ae.code_size)
    np.testing.assert_allclose(features[:, :ae.code_size].sum(axis=1), 1.0, atol=1e-5)

    report = json.loads((tmp_path / "reports" / "smoke" / "autoencoder.json").read_text())
    error = report["reconstruction_error"]
    assert error["patches"] > 0 and "log1p" in error["definition"]
    assert 0 <= error["rmse"]["min"] <= error["rmse"]["mean"] <= error["rmse"]["max"]
    assert error["l2"]["mean"] == pytest.approx(32 * error["rmse"]["mean"], rel=1e-5)
    assert report["training"]["initial_step"] == 0 and report["training"]["route"] == "fit"
    assert len(report["training"]["history"]["val_loss"]) == ae.epochs
    assert np.isfinite(report["training"]["history"]["loss"]).all()
    markdown = (tmp_path / "reports" / "smoke" / "autoencoder.md").read_text()
    assert "min" in markdown and "autoencoder_reconstructions.png" in markdown
    for name in ("autoencoder_reconstructions.png", "autoencoder_prototypes.png"):
        image = tf.io.decode_png((tmp_path / "reports" / "smoke" / name).read_bytes()).numpy()
        assert image.shape[0] > 32 and image.std() > 0

    run = Path(result["log_dir"])
    assert run.parent == tmp_path / "logs" / "autoencoder"
    tags = _summary_tags(run / "figures")
    assert {"fig6_originals_over_reconstructions_by_error", "fig7_decoded_one_hot_codes"} <= tags
    assert list((run / "train").glob("events.out.tfevents.*"))
    assert len(list((run / "checkpoints").glob("epoch-*.weights.h5"))) == ae.epochs
    assert not (run.parent / "backup").exists()  # removed after a complete run, so the next run starts afresh


def test_train_on_a_folder_of_real_format_files(smoke_dataset, tmp_path, caplog):
    folder = tmp_path / "beamline"
    folder.mkdir()
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:80, :96]
    for i in range(7):
        ring = 3000 * np.exp(-((np.hypot(yy - 40, xx - 48) - 10 - 3 * i) / 2.0) ** 2)
        tifffile.imwrite(folder / f"frame_{i:04d}.tif", rng.poisson(ring + 20).astype(np.uint16))
    pilatus = rng.poisson(50, (60, 50)).astype(np.int32)
    pilatus[30, :] = -1  # module gap
    tifffile.imwrite(folder / "pilatus_0001.tif", pilatus)
    (folder / "zz_broken.tif").write_bytes(b"II*\x00 not really a tiff")
    config = redirect(replace(smoke_dataset, "autoencoder", heldout_fraction=0.25), tmp_path)

    with caplog.at_level(logging.WARNING):
        summary = train("autoencoder", config, images_dir=folder, progress=False)["report"]
    assert "zz_broken.tif" in caplog.text  # skipped, named, not fatal
    assert str(folder) in summary["data"]["source"]
    assert summary["data"]["train_images"] == 7  # 9 files, every 4th of them held out (2), broken one included
    assert summary["reconstruction_error"]["patches"] > 0
    assert (Path(summary["export"]) / "saved_model.pb").is_file()


def test_a_folder_without_images_is_a_clear_error(smoke_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XrayscatterError, match="empty"):
        train("autoencoder", redirect(smoke_dataset, tmp_path), images_dir=tmp_path / "empty")


def test_missing_dataset_is_a_clear_error(smoke_config, tmp_path):
    config = replace(redirect(smoke_config, tmp_path), "simulate", output_dir=str(tmp_path / "nowhere"))
    with pytest.raises(XrayscatterError, match="simulate run"):
        train("autoencoder", config, progress=False)


def test_trains_with_two_replicas_and_exports_plain_variables(smoke_dataset, tmp_path):
    """MirroredStrategy over two logical CPU devices (they must be set before TF starts: a subprocess)."""
    pipeline = write_pipeline(redirect(smoke_dataset, tmp_path), tmp_path / "two.toml")
    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from xrayscatter.config import load_config
from xrayscatter.train import train
result = train("autoencoder", load_config({str(pipeline)!r}), progress=False)
print(json.dumps({{"replicas": result["replicas"], "route": result["route"], "export": result["saved_model"]}}))
"""
    result = python_script(script, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = last_json_line(result.stdout)
    assert summary["replicas"] == 2 and summary["route"] == "fit"
    loaded = tf.saved_model.load(summary["export"])
    out = loaded.signatures["encode"](patches=tf.ones((2, 32, 32)))["assignments"].numpy()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_training_killed_with_sigkill_resumes_from_the_last_epoch(smoke_dataset, tmp_path):
    config = replace(redirect(smoke_dataset, tmp_path), "autoencoder", epochs=5, steps_per_epoch=15)
    pipeline = write_pipeline(config, tmp_path / "resume.toml")
    command = [sys.executable, "-m", "xrayscatter", "train", "autoencoder", "--pipeline", str(pipeline)]
    backup = tmp_path / "logs" / "autoencoder" / "backup"

    first = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(first, lambda: latest_backup_step(backup) > 0, timeout=180)
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    assert latest_backup_step(backup) % 15 == 0  # backed up at the end of an epoch
    assert not (tmp_path / "saved_models" / "autoencoder").exists() or \
        not [p for p in (tmp_path / "saved_models" / "autoencoder").iterdir() if p.name.isdigit()]

    # started again (in this process, to spare a TensorFlow start-up): it continues after the saved epoch
    result = train("autoencoder", config, progress=False)
    resumed_at = result["initial_step"] // 15
    assert resumed_at >= 1 and result["report"]["training"]["initial_step"] == 15 * resumed_at
    assert len(result["history"]["loss"]) == 5 - resumed_at
    assert (tmp_path / "saved_models" / "autoencoder" / "1" / "saved_model.pb").is_file()
