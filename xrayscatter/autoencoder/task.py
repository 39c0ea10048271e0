"""Train the patch autoencoder, report its reconstruction error, export it.

``train_autoencoder(config, images_dir=None)`` reads like the method (paper §3.2):

1. images: the pipeline's simulated TFRecords (train split; the val split is held out), or a
   folder of real detector images (every k-th file held out, ``heldout_fraction``);
2. patches: each image resized to every scale, ``patches_per_image`` random P × P patches;
3. model: encoder → code → softmax → decoder, mean squared error on normalised patches,
   Adam, under ``tf.distribute`` (every visible GPU, or every logical CPU device);
4. training with resume (``BackupAndRestore``: a killed run started again continues from
   its last finished epoch), a weights checkpoint per epoch, TensorBoard scalars and the
   paper's figures as images (Fig. 6: originals above reconstructions, sorted by error;
   Fig. 7: decoded one-hot codes);
5. the reconstruction error distribution on held-out patches → ``reports/<pipeline>/autoencoder.{json,md}``
   with the two figures as PNG;
6. export → ``saved_models/autoencoder/<version>/``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import xrayscatter
from xrayscatter import patches as patch_data
from xrayscatter.errors import XrayscatterError
from xrayscatter.export_autoencoder import export_autoencoder
from xrayscatter.models.autoencoder import build_autoencoder_from_config
from xrayscatter.normalization import NORMALIZATION_DESCRIPTION
from xrayscatter.training import make_strategy  # one strategy choice for both networks

log = logging.getLogger(__name__)

HELDOUT_PATCH_LIMIT = 8192  # held-out patches for validation and the error report (enough for stable percentiles)
FIGURE_COLUMNS = 10  # patches in the Fig. 6 strip
PROTOTYPES_SHOWN = 64  # one-hot codes decoded for Fig. 7 (the paper shows 20 of 1024)
ERROR_DEFINITION = (
    "per patch, rmse = sqrt(mean over the P×P pixels of (x − x̂)²) and l2 = ‖x − x̂‖₂ = P · rmse, "
    "with x the normalised patch (" + NORMALIZATION_DESCRIPTION + ") and x̂ its reconstruction"
)


# --------------------------------------------------------------------------- data
class PatchSource:
    """Where the images come from: train and held-out image streams, and how many train images."""

    def __init__(self, description: str, train_images, heldout_images, num_train_images: int):
        self.description = description
        # callable(input_context=None) → dataset of (H, W) raw counts, shuffled; with an
        # input context (multi-worker training), only that input pipeline's share of the files
        self.train_images = train_images
        self.heldout_images = heldout_images  # callable() → dataset of (H, W) raw counts, fixed order
        self.num_train_images = num_train_images

    @classmethod
    def from_tfrecords(cls, config) -> "PatchSource":
        train_files = patch_data.tfrecord_files(config, "train")
        heldout_split = "val" if patch_data.tfrecord_split_size(config, "val") else "test"
        heldout_files = patch_data.tfrecord_files(config, heldout_split)
        folder = patch_data.dataset_dir(config)
        return cls(
            description=f"simulated TFRecords {folder} (train split; held out: {heldout_split} split)",
            train_images=lambda context=None: patch_data.share_of_input_pipeline(
                train_files, context, lambda files: patch_data.tfrecord_images(files, shuffle_files=True,
                                                                               seed=config.seed)),
            heldout_images=lambda: patch_data.tfrecord_images(heldout_files),
            num_train_images=patch_data.tfrecord_split_size(config, "train"),
        )

    @classmethod
    def from_folder(cls, config, directory: str | Path) -> "PatchSource":
        files = patch_data.list_image_files(directory)
        train, heldout = patch_data.split_heldout(files, config.autoencoder.heldout_fraction)
        heldout = patch_data.readable_files(heldout)
        # Fail now, not after an endless wait on a stream that skips every file, if nothing reads.
        first_readable = next((f for f in train if patch_data.readable_files([f])), None)
        if first_readable is None:
            raise XrayscatterError(f"{directory}: none of the {len(train)} training image(s) can be read")
        if not heldout:
            log.warning("%s: no held-out image; the reconstruction error is measured on training images",
                        directory)
            heldout = train
        return cls(
            description=f"detector images in {directory} ({len(train)} train, {len(heldout)} held out)",
            train_images=lambda context=None: patch_data.share_of_input_pipeline(
                train, context, lambda files: patch_data.folder_images(files, shuffle=True, seed=config.seed)),
            heldout_images=lambda: patch_data.folder_images(heldout),
            num_train_images=len(train),
        )


# --------------------------------------------------------------------------- errors and figures
def reconstruction_errors(model: keras.Model, patches: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(N, P, P) normalised patches → (reconstructions (N, P, P), rmse (N,)) float32."""
    recon = model.predict(patches, batch_size=batch_size, verbose=0)
    rmse = np.sqrt(np.mean((recon - patches) ** 2, axis=(1, 2)))
    return recon.astype(np.float32), rmse.astype(np.float32)


def error_statistics(rmse: np.ndarray, patch_size: int) -> dict:
    """The distribution the paper reports (min, max, mean), in both units of ERROR_DEFINITION."""
    def summary(values):
        q = np.percentile(values, [5, 25, 50, 75, 95])
        return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                "std": float(values.std()), "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]),
                "p75": float(q[3]), "p95": float(q[4])}

    return {"patches": int(rmse.size), "definition": ERROR_DEFINITION,
            "rmse": summary(rmse), "l2": summary(rmse * patch_size)}


def _display(patches: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """Patches (N, P, P) → uint8 for viewing, each stretched to the grey range it shares with
    the same-index patches of ``others`` (an original and its reconstruction share one range)."""
    stack = np.stack((patches,) + others)
    low = stack.min(axis=(0, 2, 3))[:, None, None]
    high = stack.max(axis=(0, 2, 3))[:, None, None]
    scaled = (patches - low) / np.maximum(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _tile(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of (N, P, P) uint8 patches → one (H, W) uint8 image with a gap between patches."""
    n, p = rows[0].shape[0], rows[0].shape[1]
    canvas = np.full((len(rows) * (p + gap) - gap, n * (p + gap) - gap), 255, np.uint8)
    for r, row in enumerate(rows):
        for c in range(n):
            canvas[r * (p + gap):r * (p + gap) + p, c * (p + gap):c * (p + gap) + p] = row[c]
    return canvas


def figure6_selection(rmse: np.ndarray, columns: int = FIGURE_COLUMNS) -> np.ndarray:
    """Indices of ``columns`` patches spread evenly over the error ranking, lowest error first."""
    order = np.argsort(rmse, kind="stable")
    picks = np.linspace(0, len(order) - 1, num=min(columns, len(order))).round().astype(int)
    return order[picks]


def reconstruction_strip(patches: np.ndarray, recon: np.ndarray, rmse: np.ndarray) -> np.ndarray:
    """Fig. 6: (2·P + gap, W) uint8 — originals on top, reconstructions below, error rising left to right."""
    pick = figure6_selection(rmse)
    return _tile([_display(patches[pick], recon[pick]), _display(recon[pick], patches[pick])])


def decoded_prototypes(model: keras.Model, count: int = PROTOTYPES_SHOWN) -> np.ndarray:
    """Fig. 7: the decoder's output for the first ``count`` one-hot codes, (count, P, P) float32."""
    decoder = model.get_layer("decoder")
    code_size = decoder.input_shape[-1]
    one_hot = np.eye(code_size, dtype=np.float32)[:min(count, code_size)]
    return np.asarray(decoder.predict(one_hot, verbose=0), np.float32)


def prototype_grid(prototypes: np.ndarray, per_row: int = 16) -> np.ndarray:
    """(N, P, P) decoded prototypes → (H, W) uint8 grid, each prototype stretched to its own range."""
    shown = _display(prototypes)
    rows = [shown[i:i + per_row] for i in range(0, len(shown), per_row)]
    if len(rows) > 1 and len(rows[-1]) < per_row:  # pad the last row with white
        pad = np.full((per_row - len(rows[-1]),) + shown.shape[1:], 255, np.uint8)
        rows[-1] = np.concatenate([rows[-1], pad])
    return _tile(rows)


class FigureCallback(keras.callbacks.Callback):
    """After each epoch: Fig. 6 and Fig. 7 as TensorBoard images, error percentiles as scalars."""

    def __init__(self, log_dir: str | Path, heldout: np.ndarray, patch_size: int):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "figures"))
        self.heldout = heldout[:2048]  # enough for the figure's error ranking, cheap every epoch
        self.patch_size = patch_size

    def on_epoch_end(self, epoch, logs=None):
        recon, rmse = reconstruction_errors(self.model, self.heldout)
        strip = reconstruction_strip(self.heldout, recon, rmse)
        grid = prototype_grid(decoded_prototypes(self.model))
        with self.writer.as_default(step=epoch + 1):
            tf.summary.image("fig6_originals_over_reconstructions_by_error", strip[None, :, :, None])
            tf.summary.image("fig7_decoded_one_hot_codes", grid[None, :, :, None])
            for key in ("min", "mean", "median", "max"):
                tf.summary.scalar(f"heldout_rmse/{key}", getattr(np, key)(rmse))
        self.writer.flush()


class EpochRecorder(keras.callbacks.Callback):
    """Remembers the first epoch this run trained (> 0 when BackupAndRestore resumed) and epoch times."""

    def __init__(self):
        super().__init__()
        self.first_epoch = None
        self.epoch_seconds = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)


class RichProgress(keras.callbacks.Callback):
    """One rich progress bar per epoch with the running loss."""

    def __init__(self, epochs: int, steps: int):
        super().__init__()
        self.epochs, self.steps = epochs, steps
        self.progress = None
        self.task = None

    def on_train_begin(self, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeRemainingColumn())
        self.progress.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.task = self.progress.add_task(f"autoencoder epoch {epoch + 1}/{self.epochs}", total=self.steps,
                                           loss="")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        self.progress.update(self.task, advance=1, loss=f"loss {float(loss):.5f}" if loss is not None else "")

    def on_epoch_end(self, epoch, logs=None):
        val = (logs or {}).get("val_loss")
        if val is not None:
            self.progress.update(self.task, loss=f"loss {float(logs['loss']):.5f}  val_loss {float(val):.5f}")

    def on_train_end(self, logs=None):
        self.progress.stop()


# --------------------------------------------------------------------------- outputs
def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _png(image: np.ndarray, upscale: int = 4) -> bytes:
    """(H, W) uint8 → PNG bytes, enlarged by pixel repetition so 32-px patches are visible."""
    big = np.kron(image, np.ones((upscale, upscale), np.uint8))
    return tf.io.encode_png(big[:, :, None]).numpy()


def write_report(report_dir: Path, summary: dict, strip: np.ndarray, grid: np.ndarray,
                 strip_errors: list[float]) -> dict:
    """autoencoder.json, autoencoder.md and the two figure PNGs, each written atomically."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": report_dir / "autoencoder.json", "markdown": report_dir / "autoencoder.md",
             "fig6": report_dir / "autoencoder_reconstructions.png",
             "fig7": report_dir / "autoencoder_prototypes.png"}
    _write_atomic(files["fig6"], _png(strip))
    _write_atomic(files["fig7"], _png(grid))
    _write_atomic(files["json"], (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    err = summary["reconstruction_error"]
    lines = [
        f"# Patch autoencoder — pipeline `{summary['pipeline']}`",
        "",
        f"Trained on {summary['data']['source']}; {summary['training']['epochs']} epochs × "
        f"{summary['training']['steps_per_epoch']} steps × {summary['training']['batch_size']} patches "
        f"in {summary['training']['seconds']:.1f} s on {summary['training']['replicas']} replica(s).",
        f"Model: code size {summary['model']['code_size']}, patch {summary['model']['patch_size']} px, "
        f"scales {summary['model']['scales']}, {summary['model']['parameters']:,} parameters. "
        f"Exported to `{summary['export']}`.",
        "",
        f"## Reconstruction error on {err['patches']} held-out patches",
        "",
        f"Definition: {err['definition']}.",
        "",
        "| measure | min | max | mean | median | p95 |",
        "|---|---|---|---|---|---|",
    ]
    for unit in ("rmse", "l2"):
        s = err[unit]
        lines.append(f"| {unit} | {s['min']:.4f} | {s['max']:.4f} | {s['mean']:.4f} | {s['median']:.4f} "
                     f"| {s['p95']:.4f} |")
    lines += [
        "",
        "The paper (XMD real images, normalisation not stated) reports min 0.0044, max 1.2510, mean 0.6817.",
        "",
        "## Originals (top) and reconstructions (bottom), error rising to the right (paper Fig. 6)",
        "",
        f"![reconstructions]({files['fig6'].name})",
        "",
        "rmse per column: " + ", ".join(f"{e:.4f}" for e in strip_errors),
        "",
        "## Decoded one-hot codes: the cluster prototypes (paper Fig. 7)",
        "",
        f"![prototypes]({files['fig7'].name})",
        "",
        "Each column (original and reconstruction) shares one grey range; each prototype has its own.",
        "",
    ]
    _write_atomic(files["markdown"], "\n".join(lines).encode())
    return {k: str(v) for k, v in files.items()}


# --------------------------------------------------------------------------- training
def patch_source(config, images_dir: str | Path | None = None) -> PatchSource:
    """The pipeline's TFRecords, or a folder of real images (argument, else ``autoencoder.real_images_dir``)."""
    images_dir = images_dir or config.autoencoder.real_images_dir or None
    return PatchSource.from_folder(config, images_dir) if images_dir else PatchSource.from_tfrecords(config)


def heldout_patches(config, source: PatchSource) -> np.ndarray:
    """(N, P, P) float32 normalised held-out patches, the same ones every call (N ≤ HELDOUT_PATCH_LIMIT).

    Raises:
        XrayscatterError: no held-out image could be read.
    """
    heldout = patch_data.collect_patches(source.heldout_images(), config.autoencoder, seed=config.seed + 1,
                                         limit=HELDOUT_PATCH_LIMIT)
    if len(heldout) == 0:
        raise XrayscatterError(f"{source.description}: no held-out image could be read")
    return heldout


def train_autoencoder(config, images_dir: str | Path | None = None) -> dict:
    """Train, report and export the patch autoencoder of a pipeline.

    Args:
        config: ``PipelineConfig``; its ``[autoencoder]`` table sets model and training.
        images_dir: a folder of real detector images to train on instead of the simulated
            TFRecords (default: ``autoencoder.real_images_dir`` when set).

    Returns:
        The report dict also written to ``<report_dir>/<pipeline>/autoencoder.json``: data,
        training (epochs, steps, seconds, first epoch of this run, final losses), the held-out
        reconstruction error distribution, the export folder and the report files.

    Raises:
        XrayscatterError: no simulated data set, or an unusable image folder.
    """
    ae = config.autoencoder
    source = patch_source(config, images_dir)
    keras.utils.set_random_seed(config.seed)

    strategy = make_strategy()
    steps = ae.steps_per_epoch or max(1, math.ceil(source.num_train_images * ae.patches_per_image / ae.batch_size))
    train_ds = patch_data.patch_dataset(source.train_images(), ae, seed=config.seed, batch_size=ae.batch_size,
                                        training=True)
    heldout = heldout_patches(config, source)
    val_ds = tf.data.Dataset.from_tensor_slices((heldout, heldout)).batch(ae.batch_size)

    with strategy.scope():
        model = build_autoencoder_from_config(ae)
        model.compile(optimizer=keras.optimizers.Adam(ae.learning_rate), loss="mse")

    log_dir = Path(ae.log_dir)
    recorder = EpochRecorder()
    callbacks = [
        keras.callbacks.BackupAndRestore(str(log_dir / "backup"), double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(str(log_dir / "checkpoints" / "epoch-{epoch:03d}.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.TensorBoard(str(log_dir), update_freq="epoch"),
        FigureCallback(log_dir, heldout, ae.patch_size),
        recorder,
        RichProgress(ae.epochs, steps),
    ]
    (log_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    history = model.fit(train_ds, epochs=ae.epochs, steps_per_epoch=steps, validation_data=val_ds,
                        callbacks=callbacks, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    # A plain copy outside the strategy: the export must hold ordinary variables, not mirrored ones.
    trained = build_autoencoder_from_config(ae)
    trained.set_weights(model.get_weights())
    training = {"epochs": ae.epochs, "steps_per_epoch": steps, "batch_size": ae.batch_size,
                "replicas": strategy.num_replicas_in_sync, "seconds": seconds,
                "first_epoch_this_run": recorder.first_epoch if recorder.first_epoch is not None else ae.epochs,
                "epoch_seconds": recorder.epoch_seconds,
                "loss": {k: [float(v) for v in vals] for k, vals in history.history.items()},
                # epoch wall time includes the per-epoch validation and figures
                "patches_per_second": (len(recorder.epoch_seconds) * steps * ae.batch_size
                                       / max(sum(recorder.epoch_seconds), 1e-9))}
    return finish_autoencoder(config, trained, source, heldout, training)


def finish_autoencoder(config, trained: keras.Model, source: PatchSource, heldout: np.ndarray,
                       training: dict) -> dict:
    """After training: held-out error distribution, figures, SavedModel export, report files.

    Args:
        trained: the autoencoder with plain (not distributed) variables.
        heldout: (N, P, P) held-out patches from :func:`heldout_patches`.
        training: what the training loop reports (epochs, steps_per_epoch, batch_size,
            replicas, seconds, loss, ...); stored as the report's ``training``.

    Returns:
        The report dict written to ``<report_dir>/<pipeline>/autoencoder.json``.
    """
    ae = config.autoencoder
    recon, rmse = reconstruction_errors(trained, heldout)
    stats = error_statistics(rmse, ae.patch_size)
    pick = figure6_selection(rmse)
    strip = reconstruction_strip(heldout, recon, rmse)
    grid = prototype_grid(decoded_prototypes(trained))

    summary = {
        "pipeline": config.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {"source": source.description, "train_images": source.num_train_images,
                 "heldout_patches": int(len(heldout)), "patches_per_image": ae.patches_per_image,
                 "scales": list(ae.scales)},
        "model": {"patch_size": ae.patch_size, "code_size": ae.code_size, "base_filters": ae.base_filters,
                  "scales": list(ae.scales), "parameters": int(trained.count_params())},
        "training": training,
        "reconstruction_error": stats,
        "config": config.to_dict(),
        "versions": {"xrayscatter": xrayscatter.__version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__},
    }
    export_dir = export_autoencoder(trained, config, extra_metadata={
        "reconstruction_error": {k: stats[k] for k in ("patches", "definition", "rmse")},
        "training_data": source.description})
    summary["export"] = str(export_dir)
    report_dir = Path(config.evaluate.report_dir) / config.name
    summary["report_files"] = write_report(report_dir, summary, strip, grid, [float(rmse[i]) for i in pick])
    return summary
