"""Patch autoencoder: model, patch pipeline, training end to end (TFRecords and real-format files), resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile

from xrayscatter.autoencoder_training import figure6_selection, train_autoencoder
from xrayscatter.config import replace
from xrayscatter.errors import XrayscatterError
from xrayscatter.models.autoencoder import build_autoencoder, encoder_stride
from xrayscatter.normalization import to_model_input
from xrayscatter.patches import patch_dataset, patches_per_scale, random_patches, split_heldout, tfrecord_files, \
    tfrecord_images

REPO = Path(__file__).resolve().parents[1]


def _outputs_in(config, folder: Path):
    """The config with the autoencoder's model, log and report folders under ``folder``."""
    config = replace(config, "autoencoder", output_dir=str(folder / "saved_models" / "autoencoder"),
                     log_dir=str(folder / "logs" / "autoencoder"))
    return replace(config, "evaluate", report_dir=str(folder / "reports"))


def _summary_tags(folder: Path) -> set[str]:
    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _toml(table: dict) -> str:
    """A pipeline dict (config.to_dict()) → TOML text (strings, numbers, booleans, lists, one level of tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    top = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in table.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


# --------------------------------------------------------------------------- model
def test_model_maps_patches_to_code_and_back():
    model = build_autoencoder(patch_size=32, code_size=24, base_filters=4)
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    patches = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert encoder(patches[..., None]).shape == (3, 24)
    assert decoder(np.eye(24, dtype=np.float32)[:2]).shape == (2, 32, 32)
    assert model(patches).shape == (3, 32, 32)
    assert encoder_stride(32) == 8


def test_patch_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        build_autoencoder(patch_size=24, code_size=8, base_filters=4)


# --------------------------------------------------------------------------- patches
def test_random_patches_are_cut_from_the_resized_image():
    counts = np.random.default_rng(1).integers(0, 60000, (50, 70)).astype(np.float32)
    patches = random_patches(tf.constant(counts), tf.constant([4, 2], tf.int64), (48, 64), 7, 32).numpy()
    assert patches.shape == (7, 32, 32) and patches_per_scale(7, 2) == [4, 3]
    for patch, size in zip(patches, [48] * 4 + [64] * 3):
        image = to_model_input(tf.constant(counts[None]), size).numpy()[0, :, :, 0]
        windows = np.lib.stride_tricks.sliding_window_view(image, (32, 32))
        assert np.isclose(windows, patch, atol=0).all(axis=(2, 3)).any()


def test_patch_stream_is_reproducible_and_changes_every_epoch(smoke_dataset):
    ae = smoke_dataset.autoencoder
    files = tfrecord_files(smoke_dataset, "val")

    def first_batches(training: bool, count: int):
        ds = patch_dataset(tfrecord_images(files), ae, seed=5, batch_size=ae.patches_per_image, training=training)
        return [x.numpy() for x, _ in ds.take(count)]

    heldout_a, heldout_b = first_batches(False, 2), first_batches(False, 2)
    np.testing.assert_array_equal(heldout_a[0], heldout_b[0])
    assert heldout_a[0].shape == (ae.patches_per_image, 32, 32)
    # training stream: image n of the repeated stream gets seed (5, n), so a second pass cuts new patches
    n_val = json.loads((Path(files[0]).parent / "manifest.json").read_text())["splits"]["val"]["num_images"]
    stream = first_batches(True, 2 * n_val)
    first_pass = np.concatenate(stream[:n_val])
    second_pass = np.concatenate(stream[n_val:])
    assert not np.array_equal(np.sort(first_pass.ravel()), np.sort(second_pass.ravel()))


def test_every_kth_file_is_held_out():
    files = [Path(f"f{i:02d}.tif") for i in range(20)]
    train, heldout = split_heldout(files, 0.1)
    assert heldout == [files[9], files[19]] and len(train) == 18
    assert split_heldout(files[:1], 0.1) == (files[:1], [])


def test_figure6_picks_patches_from_lowest_to_highest_error():
    errors = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    assert figure6_selection(errors, columns=3).tolist() == [1, 0, 2]  # 0.1, 0.5, 0.9: ranks 0, 2, 4


# --------------------------------------------------------------------------- training end to end
def test_train_on_the_smoke_pipeline_reports_and_exports(smoke_dataset, tmp_path):
    config = _outputs_in(smoke_dataset, tmp_path)
    summary = train_autoencoder(config)
    ae = config.autoencoder

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
    assert report["training"]["first_epoch_this_run"] == 0
    assert len(report["training"]["loss"]["val_loss"]) == ae.epochs
    assert np.isfinite(report["training"]["loss"]["loss"]).all()
    markdown = (tmp_path / "reports" / "smoke" / "autoencoder.md").read_text()
    assert "min" in markdown and "autoencoder_reconstructions.png" in markdown
    for name in ("autoencoder_reconstructions.png", "autoencoder_prototypes.png"):
        image = tf.io.decode_png((tmp_path / "reports" / "smoke" / name).read_bytes()).numpy()
        assert image.shape[0] > 32 and image.std() > 0

    logs = tmp_path / "logs" / "autoencoder"
    tags = _summary_tags(logs / "figures")
    assert {"fig6_originals_over_reconstructions_by_error", "fig7_decoded_one_hot_codes"} <= tags
    assert list((logs / "train").glob("events.out.tfevents.*"))
    assert len(list((logs / "checkpoints").glob("epoch-*.weights.h5"))) == ae.epochs
    assert not (logs / "backup").exists()  # removed after a complete run, so the next run starts afresh


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
    config = _outputs_in(replace(smoke_dataset, "autoencoder", heldout_fraction=0.25), tmp_path)

    with caplog.at_level(logging.WARNING):
        summary = train_autoencoder(config, images_dir=folder)
    assert "zz_broken.tif" in caplog.text  # skipped, named, not fatal
    assert str(folder) in summary["data"]["source"]
    assert summary["data"]["train_images"] == 7  # 9 files, every 4th of them held out (2), broken one included
    assert summary["reconstruction_error"]["patches"] > 0
    assert (Path(summary["export"]) / "saved_model.pb").is_file()


def test_a_folder_without_images_is_a_clear_error(smoke_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XrayscatterError, match="empty"):
        train_autoencoder(_outputs_in(smoke_dataset, tmp_path), images_dir=tmp_path / "empty")


def test_missing_dataset_is_a_clear_error(smoke_config, tmp_path):
    config = replace(_outputs_in(smoke_config, tmp_path), "simulate", output_dir=str(tmp_path / "nowhere"))
    with pytest.raises(XrayscatterError, match="simulate run"):
        train_autoencoder(config)


def test_trains_with_two_replicas_and_exports_plain_variables(smoke_dataset, tmp_path):
    """MirroredStrategy over two logical CPU devices (they must be set before TF starts: a subprocess)."""
    pipeline = tmp_path / "two.toml"
    pipeline.write_text(_toml(_outputs_in(smoke_dataset, tmp_path).to_dict()))
    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from xrayscatter.autoencoder_training import train_autoencoder
from xrayscatter.config import load_config
summary = train_autoencoder(load_config({str(pipeline)!r}))
print(json.dumps({{"replicas": summary["training"]["replicas"], "export": summary["export"]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2
    loaded = tf.saved_model.load(summary["export"])
    out = loaded.signatures["encode"](patches=tf.ones((2, 32, 32)))["assignments"].numpy()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_training_killed_with_sigkill_resumes_from_the_last_epoch(smoke_dataset, tmp_path):
    config = _outputs_in(smoke_dataset, tmp_path)
    config = replace(config, "autoencoder", epochs=5, steps_per_epoch=15)
    pipeline = tmp_path / "resume.toml"
    pipeline.write_text(_toml(config.to_dict()))
    command = [sys.executable, "-m", "xrayscatter", "train", "autoencoder", "--pipeline", str(pipeline)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    backup = tmp_path / "logs" / "autoencoder" / "backup" / "training_metadata.json"

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not backup.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert backup.exists()
    assert not (tmp_path / "saved_models" / "autoencoder").exists() or \
        not [p for p in (tmp_path / "saved_models" / "autoencoder").iterdir() if p.name.isdigit()]

    # started again (in this process, to spare a TensorFlow start-up): it continues after the saved epoch
    train_autoencoder(config)
    report = json.loads((tmp_path / "reports" / "smoke" / "autoencoder.json").read_text())
    resumed_at = report["training"]["first_epoch_this_run"]
    assert resumed_at >= 1
    assert len(report["training"]["loss"]["loss"]) == 5 - resumed_at
    assert (tmp_path / "saved_models" / "autoencoder" / "1" / "saved_model.pb").is_file()
