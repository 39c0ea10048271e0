"""Train the ResNet on the TFRecords: data → model → training → hold-out mAP → export.

    strategy   MirroredStrategy over the visible GPUs, else the logical CPUs
               (MultiWorkerMirroredStrategy when TF_CONFIG is set)
    data       data.make_dataset through strategy.distribute_datasets_from_function
    model      models.resnet backbone + sigmoid head; loss = Σ over the 17 attributes of
               binary cross-entropy; AdamW, linear warm-up then cosine decay;
               mixed_float16 and XLA when the configuration asks (GPUs)
    callbacks  validation AP per attribute and mAP, images/s, TensorBoard (scalars,
               input grid with tags, PR curves, first-layer filters), best-mAP checkpoint,
               BackupAndRestore (a killed run resumes at its last finished epoch), CSV log
    after      hold-out AP on the test split → reports/<pipeline>/resnet_holdout.{json,md};
               decision thresholds from the validation split; SavedModel export

Log folder layout (``config.resnet.log_dir``)::

    backup/            BackupAndRestore state and run.json (the run being trained); removed when done
    run-<timestamp>/   train/ validation/ (TensorBoard), training_log.csv, best.weights.h5
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES, NUM_ATTRIBUTES, slug
from xrayscatter.data import make_dataset, make_label_dataset, naming_bad_shards, shard_paths, split_size
from xrayscatter.export import export_resnet
from xrayscatter.models.resnet import build_backbone, build_classifier, first_conv_kernel

PAPER_HOLDOUT_MAP = 77.1  # Wang et al., WACV 2017, Table 3: ResNet-50 on the synthetic hold-out
_EPSILON = 1e-7  # keras.backend.epsilon(), the clipping of binary cross-entropy


# --------------------------------------------------------------------------- strategy
def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy in a cluster (TF_CONFIG, or a Slurm step of ≥ 2 tasks: ``cluster.py``),
    else MirroredStrategy over all GPUs or all logical CPUs."""
    from xrayscatter.cluster import cluster_resolver

    resolver = cluster_resolver()
    if resolver is not None:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes logs, reports and SavedModels."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def distributed_dataset(strategy: tf.distribute.Strategy, config, split: str, training: bool):
    """``make_dataset`` per input pipeline, per-replica batches (``distribute_datasets_from_function``)."""
    return strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, split, training, input_context=context))


# --------------------------------------------------------------------------- loss and metrics
def summed_binary_crossentropy(y_true, y_pred):
    """(B, A) labels, (B, A) probabilities → (B,) Σ over attributes of binary cross-entropy."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    return keras.ops.sum(keras.ops.binary_crossentropy(y_true, y_pred), axis=-1)


def summed_binary_crossentropy_numpy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The loss above, mean over images, in numpy (validation from predictions)."""
    p = np.clip(probabilities.astype(np.float64), _EPSILON, 1 - _EPSILON)
    return float(np.mean(np.sum(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)), axis=1)))


def average_precisions(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, A) 0/1 labels, (N, A) scores → (A,) average precision; NaN for an attribute without positives."""
    from sklearn.metrics import average_precision_score

    out = np.full(labels.shape[1], np.nan)
    for a in range(labels.shape[1]):
        if labels[:, a].any():
            out[a] = average_precision_score(labels[:, a], scores[:, a])
    return out


def best_f1_thresholds(labels: np.ndarray, scores: np.ndarray, default: float = 0.5) -> list[float]:
    """Per attribute, the score threshold with the best F1 on these labels (``default`` without positives)."""
    from sklearn.metrics import precision_recall_curve

    thresholds = []
    for a in range(labels.shape[1]):
        if not labels[:, a].any() or labels[:, a].all():
            thresholds.append(default)
            continue
        precision, recall, cut = precision_recall_curve(labels[:, a], scores[:, a])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds.append(float(cut[int(np.argmax(f1))]))
    return thresholds


def predict_split(model: keras.Model, config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) probabilities and (N, A) labels of a whole split, in the same order."""
    paths = shard_paths(config, split)
    images = make_dataset(config, split, training=False, paths=paths).map(lambda x, y: x)
    with naming_bad_shards(paths):
        probabilities = model.predict(images, verbose=0)
        labels = np.stack([y.numpy() for y in make_label_dataset(config, split, paths=paths)])
    return np.asarray(probabilities, np.float32), labels


# --------------------------------------------------------------------------- model
def learning_rate_schedule(config, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over 5 % of the steps to ``resnet.learning_rate``, then cosine decay to 1 % of it."""
    peak = config.resnet.learning_rate
    warmup = max(1, total_steps // 20)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10, decay_steps=max(1, total_steps - warmup), alpha=0.01,
        warmup_target=peak, warmup_steps=warmup)


def compile_classifier(classifier: keras.Model, config, total_steps: int, optimizer=None) -> None:
    """Loss, optimizer, metrics and XLA switch of the training model.

    Args:
        optimizer: default AdamW with the warm-up + cosine schedule and decoupled weight
            decay ``resnet.weight_decay`` (batch-norm parameters and biases excluded).
    """
    if optimizer is None:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(config, total_steps),
                                           weight_decay=config.resnet.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    classifier.compile(
        optimizer=optimizer,
        loss=summed_binary_crossentropy,
        # Streaming area under the PR curve per attribute, averaged: the training-set mAP estimate.
        metrics=[keras.metrics.AUC(curve="PR", multi_label=True, num_labels=NUM_ATTRIBUTES, name="pr_auc")],
        jit_compile=bool(config.resnet.xla),
    )


def export_copy(classifier: keras.Model, config) -> tuple[keras.Model, keras.Model]:
    """A float32 (classifier, backbone) pair outside any strategy, holding ``classifier``'s weights."""
    backbone = build_backbone(config.resnet.input_size, config.resnet.width_multiplier)
    copy = build_classifier(backbone)
    copy.set_weights(classifier.get_weights())
    return copy, backbone


# --------------------------------------------------------------------------- callbacks
class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Averages the non-trainable weights (batch-norm moving statistics) over the replicas after every epoch.

    Keras 3 creates them with aggregation "none": under a MirroredStrategy each replica
    updates its own copy from its own per-replica batches and the copies drift apart
    (the trainable weights are all-reduced and stay equal). The update is linear,
    m ← μ·m + (1 − μ)·s, so the mean of the copies is exactly what averaging every step
    would give; doing it once per epoch costs nothing. Runs before every callback that
    evaluates, checkpoints or backs up the model.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def _build(self):
        variables = [w.value for w in self.model.non_trainable_weights]

        def replica_fn():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables])
            for variable, mean in zip(variables, means):
                variable.assign(mean)

        return tf.function(lambda: self.strategy.run(replica_fn))

    def synchronize(self) -> None:
        if self.strategy.num_replicas_in_sync == 1 or not self.model.non_trainable_weights:
            return
        if self._sync is None:
            self._sync = self._build()
        self._sync()

    def on_epoch_end(self, epoch, logs=None):
        self.synchronize()


class Throughput(keras.callbacks.Callback):
    """Adds ``images_per_second`` (training steps only, first step of each epoch excluded) and ``learning_rate``."""

    def __init__(self, global_batch_size: int):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._first_end = None
        self._last_end = None
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._steps += 1
        if self._first_end is None:
            self._first_end = now
        self._last_end = now

    def on_epoch_end(self, epoch, logs=None):
        if self._steps > 1:
            rate = (self._steps - 1) * self.global_batch_size / (self._last_end - self._first_end)
        else:
            rate = self._steps * self.global_batch_size / max(time.perf_counter() - self._epoch_start, 1e-9)
        self.rates.append(rate)
        if logs is not None:
            logs["images_per_second"] = rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ValidationMetrics(keras.callbacks.Callback):
    """After each epoch: predictions on the validation split → ``val_loss``, ``val_mAP``, ``val_AP_<attribute>``.

    Runs before the checkpoint, TensorBoard and CSV callbacks, which then see these values.
    """

    def __init__(self, config, paths: list[str]):
        super().__init__()
        self.paths = paths
        self.images = make_dataset(config, "val", training=False, paths=paths).map(lambda x, y: x)
        self.labels = np.stack([y.numpy() for y in make_label_dataset(config, "val", paths=paths)])
        self.probabilities: np.ndarray | None = None
        self.history: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        with naming_bad_shards(self.paths):
            self.probabilities = np.asarray(self.model.predict(self.images, verbose=0), np.float32)
        ap = average_precisions(self.labels, self.probabilities)
        mean_ap = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        self.history.append(mean_ap)
        if logs is not None:
            logs["val_loss"] = summed_binary_crossentropy_numpy(self.labels, self.probabilities)
            logs["val_mAP"] = mean_ap
            for name, value in zip(ATTRIBUTES, ap):
                logs[f"val_AP_{slug(name)}"] = float(value)


class TensorBoardFigures(keras.callbacks.Callback):
    """Per epoch, into ``<run>/validation``: a grid of validation inputs with their tags,
    PR curves per attribute (PR-curves dashboard) and the first convolution's filters (cf. the paper's Fig. 4)."""

    def __init__(self, log_dir: Path, validation: ValidationMetrics, backbone: keras.Model, grid_size: int = 16):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir / "validation"))
        self.validation = validation
        self.backbone = backbone
        self.grid_images = np.concatenate([x.numpy() for x in validation.images.take(grid_size)])[:grid_size]

    def on_epoch_end(self, epoch, logs=None):
        from tensorboard.plugins.pr_curve import summary as pr_summary

        probabilities = self.validation.probabilities
        labels = self.validation.labels
        with self.writer.as_default(step=epoch):
            n = len(self.grid_images)
            tf.summary.image("inputs_with_tags", input_grid_png(self.grid_images, labels[:n], probabilities[:n])[None],
                             description="validation inputs (normalised); true tags, predicted tags (p > 0.5)")
            tf.summary.image("conv1_filters", filter_grid(first_conv_kernel(self.backbone))[None],
                             description="first-layer 7×7 filters, each scaled to its own range")
            for a, name in enumerate(ATTRIBUTES):
                if labels[:, a].any():
                    proto = pr_summary.pb(f"pr_curve/{slug(name)}", labels[:, a].astype(bool),
                                          probabilities[:, a], num_thresholds=101, display_name=name)
                    tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=epoch)
        self.writer.flush()


class RichProgress(keras.callbacks.Callback):
    """One rich progress bar over all training steps, one line per finished epoch."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def on_train_begin(self, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train resnet[/] {task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn())
        self.progress.start()
        initial = getattr(self.model, "_initial_epoch", 0) or 0
        self.task = self.progress.add_task("", total=self.epochs * self.steps_per_epoch,
                                           completed=initial * self.steps_per_epoch)
        if initial:
            self.progress.console.print(f"resumed from the backup after epoch {initial}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        text = f"epoch {self.epoch + 1}/{self.epochs}" + (f" loss {loss:.3f}" if loss is not None else "")
        self.progress.update(self.task, advance=1, description=text)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for key, fmt in (("loss", "loss {:.3f}"), ("val_loss", "val_loss {:.3f}"), ("val_mAP", "val_mAP {:.3f}"),
                         ("images_per_second", "{:.1f} images/s")):
            if key in logs:
                parts.append(fmt.format(logs[key]))
        self.progress.console.print("  ".join(parts))

    def on_train_end(self, logs=None):
        self.progress.stop()


# --------------------------------------------------------------------------- figures
def input_grid_png(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> tf.Tensor:
    """(n, S, S, 1) normalised images with true and predicted tags → (H, W, 4) uint8 RGBA image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    columns = min(4, n)
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i, :, :, 0], cmap="viridis", vmin=0, vmax=max(float(images[i].max()), 1e-6))
        truth = [ATTRIBUTES[a] for a in np.flatnonzero(labels[i] > 0.5)]
        predicted = [ATTRIBUTES[a] for a in np.flatnonzero(probabilities[i] > 0.5)]
        ax.set_title("true: " + ", ".join(truth) + "\npred: " + ", ".join(predicted), fontsize=6, wrap=True)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return tf.io.decode_png(buffer.getvalue(), channels=4)


def filter_grid(kernel: np.ndarray, zoom: int = 4) -> tf.Tensor:
    """(k, k, C, F) conv kernel → (H, W, 1) uint8 tiles of the first input channel, each min–max scaled."""
    k, _, _, count = kernel.shape
    columns = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    tile = k * zoom + 2
    grid = np.zeros((rows * tile, columns * tile), np.uint8)
    for f in range(count):
        w = kernel[:, :, 0, f]
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
        w = np.kron(w, np.ones((zoom, zoom)))
        r, c = divmod(f, columns)
        grid[r * tile + 1:r * tile + 1 + k * zoom, c * tile + 1:c * tile + 1 + k * zoom] = (255 * w).astype(np.uint8)
    return tf.constant(grid[:, :, None])


# --------------------------------------------------------------------------- reports
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_holdout_report(config, ap: np.ndarray, labels: np.ndarray, extra: dict) -> tuple[Path, Path]:
    """Per-attribute AP and mAP on the test split → ``<report_dir>/<pipeline>/resnet_holdout.{json,md}``.

    Attributes without a positive test image have no AP; they are listed and left out of the mean.
    """
    folder = Path(config.evaluate.report_dir) / config.name
    present = np.isfinite(ap)
    mean_ap = float(np.mean(ap[present])) if present.any() else None
    positives = labels.sum(axis=0).astype(int)
    record = {
        "pipeline": config.name,
        "model": "resnet",
        "split": "test",
        "num_images": int(len(labels)),
        "mAP": mean_ap,
        "num_attributes_in_mean": int(present.sum()),
        "attributes": {name: {"ap": float(ap[a]) if present[a] else None, "positives": int(positives[a])}
                       for a, name in enumerate(ATTRIBUTES)},
        "paper_mAP": PAPER_HOLDOUT_MAP,
        "config": config.to_dict(),
        **extra,
    }
    json_path = folder / "resnet_holdout.json"
    _atomic_write(json_path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        f"# ResNet hold-out AP — pipeline `{config.name}`",
        "",
        f"Test split: {len(labels)} images. Network: ResNet-50 layout, input {config.resnet.input_size} px, "
        f"width × {config.resnet.width_multiplier:g}. mAP over the {int(present.sum())} attributes with a positive "
        "test image.",
        "",
        "| features | mAP (%) |",
        "|---|---|",
        f"| ResNet-50, paper (Wang et al. 2017, Table 3; 100,000 images, 224 px) | {PAPER_HOLDOUT_MAP:.1f} |",
        f"| ResNet, this run | {pct(mean_ap)} |",
        "",
        "| attribute | positives | AP (%) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {positives[a]} | {pct(float(ap[a]) if present[a] else None)} |"
              for a, name in enumerate(ATTRIBUTES)]
    md_path = folder / "resnet_holdout.md"
    _atomic_write(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


# --------------------------------------------------------------------------- runs
def _run_folder(log_root: Path) -> tuple[Path, bool]:
    """The run's log folder: the interrupted run's (recorded in backup/run.json) or a new one."""
    state = log_root / "backup" / "run.json"
    if state.is_file():
        return log_root / json.loads(state.read_text())["run"], True
    name = "run-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    state.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(state, json.dumps({"run": name}) + "\n")
    return log_root / name, False


def _best_logged(csv_path: Path, key: str = "val_mAP") -> float | None:
    """The largest value of ``key`` in a CSVLogger file (to carry the best checkpoint across a restart)."""
    if not csv_path.is_file():
        return None
    with open(csv_path, newline="") as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key) not in (None, "", "nan")]
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


def report_and_export(classifier: keras.Model, config, training_summary: dict) -> dict:
    """After training (chief only): hold-out AP on the test split, best-F1 thresholds on val, SavedModel.

    Writes ``<report_dir>/<pipeline>/resnet_holdout.{json,md}`` and ``<resnet.output_dir>/<version>/``
    (``training_summary`` goes into both), prints one line, and returns ``holdout_mAP``,
    ``holdout_ap`` (per attribute; None without positives), ``saved_model``, ``report_json``, ``report_md``.
    """
    from rich.console import Console

    model, features = export_copy(classifier, config)
    val_probabilities, val_labels = predict_split(model, config, "val")
    test_probabilities, test_labels = predict_split(model, config, "test")
    ap = average_precisions(test_labels, test_probabilities)
    present = np.isfinite(ap)
    holdout_map = float(np.mean(ap[present])) if present.any() else None
    json_path, md_path = write_holdout_report(config, ap, test_labels, {"training": training_summary})
    thresholds = dict(zip(ATTRIBUTES, best_f1_thresholds(val_labels, val_probabilities)))
    saved = export_resnet(model, features, config, {
        "thresholds": thresholds,
        "thresholds_rule": "per attribute, the best-F1 threshold on the validation split (0.5 without positives)",
        "holdout": {"mAP": holdout_map, "split": "test", "num_images": int(len(test_labels))},
        "training": training_summary,
    })
    Console(stderr=True).print(
        f"hold-out mAP {('n/a' if holdout_map is None else f'{100 * holdout_map:.1f}')} % "
        f"({int(present.sum())} attributes, {len(test_labels)} test images) → {md_path}; SavedModel {saved}")
    return {"holdout_mAP": holdout_map,
            "holdout_ap": {name: (float(ap[a]) if present[a] else None) for a, name in enumerate(ATTRIBUTES)},
            "saved_model": str(saved), "report_json": str(json_path), "report_md": str(md_path)}


def train_resnet(config, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Train, evaluate on the test split, export. See the module docstring.

    Args:
        config: PipelineConfig.
        strategy: default :func:`make_strategy` (pass one for multi-worker runs or tests).

    Returns:
        dict with ``holdout_mAP`` (0–1), ``holdout_ap`` {attribute: AP or None}, ``saved_model``,
        ``report_json``, ``report_md``, ``log_dir``, ``epochs``, ``steps_per_epoch``,
        ``initial_epoch`` (> 0 after a resume), ``images_per_second`` (median over epochs),
        ``best_val_mAP``, ``replicas``.

    Raises:
        XrayscatterError: missing, truncated or corrupt shards (naming the file).
    """
    settings = config.resnet
    strategy = strategy or make_strategy()
    chief = is_chief(strategy)
    train_paths = shard_paths(config, "train")
    val_paths = shard_paths(config, "val")
    # Walk every shard's record frames now: a truncated file fails here, by name, not hours later.
    train_images, _, _ = (split_size(config, split) for split in ("train", "val", "test"))
    steps_per_epoch = settings.steps_per_epoch or max(1, train_images // settings.batch_size)

    log_root = Path(settings.log_dir)
    run_dir, resumed = _run_folder(log_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = log_root / "backup"
    csv_path = run_dir / "training_log.csv"
    best_path = run_dir / "best.weights.h5"

    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if settings.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with strategy.scope():
            backbone = build_backbone(settings.input_size, settings.width_multiplier)
            classifier = build_classifier(backbone)
            compile_classifier(classifier, config, settings.epochs * steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    throughput = Throughput(settings.batch_size)
    validation = ValidationMetrics(config, val_paths)
    callbacks = [SyncBatchNormStatistics(strategy), throughput, validation]
    if chief:
        callbacks += [
            TensorBoardFigures(run_dir, validation, backbone),
            keras.callbacks.TensorBoard(str(run_dir), update_freq="epoch", write_graph=False),
            keras.callbacks.CSVLogger(str(csv_path), append=True),
            keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_mAP", mode="max", save_best_only=True,
                                            save_weights_only=True,
                                            initial_value_threshold=_best_logged(csv_path) if resumed else None),
        ]
    callbacks += [keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
                  RichProgress(settings.epochs, steps_per_epoch)]

    with naming_bad_shards(train_paths):
        classifier.fit(distributed_dataset(strategy, config, "train", training=True), epochs=settings.epochs,
                       steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False, verbose=0)
    initial_epoch = int(getattr(classifier, "_initial_epoch", 0) or 0)

    if best_path.is_file():
        classifier.load_weights(str(best_path))
    best_val = _best_logged(csv_path)
    summary = {
        "epochs": settings.epochs,
        "steps_per_epoch": steps_per_epoch,
        "initial_epoch": initial_epoch,
        "images_per_second": float(np.median(throughput.rates)) if throughput.rates else None,
        "best_val_mAP": best_val,
        "replicas": strategy.num_replicas_in_sync,
        "log_dir": str(run_dir),
    }
    result = dict(summary)
    if chief:
        result.update(report_and_export(classifier, config, summary))
    # Training is complete and exported: a later run starts afresh.
    shutil.rmtree(backup_dir, ignore_errors=True)
    return result

