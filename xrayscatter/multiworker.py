"""Train the ResNet across hosts: a custom training loop under MultiWorkerMirroredStrategy.

Keras 3's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras#20585, a
``PerReplica`` ValueError), so this module runs its own step with ``strategy.run``; the
same loop also runs under ``MirroredStrategy`` (all GPUs, or logical CPUs, of one host).

    TF_CONFIG ─► make_strategy() ─► MultiWorkerMirroredStrategy (one replica per local device)
    data      make_dataset per worker via distribute_datasets_from_function: each worker
              reads its own subset of shards (input_context, the FILE auto-shard policy)
    step      per-replica loss = Σ over the 17 attributes of binary cross-entropy, averaged
              over the *global* batch (tf.nn.compute_average_loss) → gradients all-reduced
              by the optimizer (AdamW, warm-up + cosine, as ``training.py``)
    backup    tf.train.CheckpointManager every ``checkpoint_every`` steps into
              ``<resnet.log_dir>/multiworker-backup`` (a folder every worker can read);
              a killed and restarted job resumes at the last backup's step
    chief     writes the backup, TensorBoard scalars, the hold-out report and the SavedModel;
              the other workers take part in the (collective) checkpoint saves into
              temporary folders that are removed right after

Batch-norm moving statistics are per-replica in Keras 3 (aggregation "none"); they are
averaged over all replicas of all workers before every backup and at the end, so every
worker ends with identical weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.data import make_dataset, naming_bad_shards, shard_paths, split_size
from xrayscatter.models.resnet import build_backbone, build_classifier

BACKUP_FOLDER = "multiworker-backup"


def task_of(strategy: tf.distribute.Strategy) -> tuple[str, int]:
    """(task type, task id) of this process in the cluster; ("local", 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local", 0
    return str(resolver.task_type), int(resolver.task_id or 0)


def write_folder(shared: Path, chief: bool, task: tuple[str, int]) -> Path:
    """Where this worker writes a collective checkpoint: the shared folder (chief) or a temporary one.

    Every worker must call ``save`` under MultiWorkerMirroredStrategy (it is a collective
    operation), but only the chief's copy is kept; the others write beside it and remove theirs.
    """
    if chief:
        return shared
    return Path(tempfile.mkdtemp(prefix=f".{shared.name}-{task[0]}{task[1]}-", dir=shared.parent))


def make_train_step(strategy: tf.distribute.Strategy, classifier: keras.Model, optimizer: keras.optimizers.Optimizer,
                    global_batch_size: int):
    """A tf.function: one step on a distributed batch → the global mean loss (float32 scalar).

    Each replica's loss is divided by the global batch, so summing the replicas'
    gradients (the optimizer's all-reduce) gives the gradient of the global mean loss.
    """
    from xrayscatter.training import summed_binary_crossentropy

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = classifier(images, training=True)
            per_image = summed_binary_crossentropy(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
        gradients = tape.gradient(loss, classifier.trainable_variables)
        optimizer.apply_gradients(zip(gradients, classifier.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        per_replica_loss = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    return train_step


def make_statistics_sync(strategy: tf.distribute.Strategy, classifier: keras.Model):
    """A tf.function averaging the non-trainable weights (batch-norm statistics) over all replicas."""
    variables = [w.value for w in classifier.non_trainable_weights]

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    return tf.function(lambda: strategy.run(replica_fn))


def weights_checksum(weights: list[np.ndarray]) -> str:
    """SHA-256 of the weights' bytes in order (equal weights ⇔ equal checksum)."""
    import hashlib

    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def train_resnet_multiworker(config, steps: int | None = None, strategy: tf.distribute.Strategy | None = None,
                             checkpoint_every: int | None = None, export: bool = True,
                             progress: bool = True) -> dict:
    """Train the ResNet with a custom loop under a (multi-worker) mirrored strategy.

    Args:
        config: PipelineConfig (``resnet`` section; batch_size is the global batch).
        steps: stop after this global step (default, and at most: epochs × steps_per_epoch).
            A run stopped early keeps its backup; the next call resumes from it.
        strategy: default ``training.make_strategy()`` (MultiWorkerMirroredStrategy under TF_CONFIG).
        checkpoint_every: steps between backups (default ``resnet.steps_per_epoch``, i.e. once per epoch).
        export: when the schedule is complete, the chief writes the hold-out report and the SavedModel.
        progress: a rich progress bar on the chief.

    Returns:
        dict with ``task_type``, ``task_id``, ``chief``, ``replicas``, ``workers``, ``initial_step``
        (> 0 after a resume), ``final_step``, ``steps_run``, ``losses`` (per step run, global mean),
        ``images_per_second``, ``complete``, ``weights`` (list of numpy arrays of the classifier,
        identical on every worker), ``weights_sha256``; on the chief after a complete run also
        ``saved_model``, ``report_json``, ``holdout_mAP``.

    Raises:
        XrayscatterError: missing, truncated or corrupt shards (naming the file).
    """
    from xrayscatter.training import is_chief, learning_rate_schedule, make_strategy

    settings = config.resnet
    strategy = strategy or make_strategy()
    chief = is_chief(strategy)
    task = task_of(strategy)
    workers = strategy.num_replicas_in_sync
    train_paths = shard_paths(config, "train")
    steps_per_epoch = settings.steps_per_epoch or max(1, split_size(config, "train") // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    stop_step = total_steps if steps is None else min(int(steps), total_steps)
    checkpoint_every = max(1, checkpoint_every or steps_per_epoch)

    log_root = Path(settings.log_dir)
    shared_backup = log_root / BACKUP_FOLDER
    shared_backup.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(config.seed)  # identical initial weights on every worker
    with strategy.scope():
        backbone = build_backbone(settings.input_size, settings.width_multiplier)
        classifier = build_classifier(backbone)
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(config, total_steps),
                                           weight_decay=settings.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        optimizer.build(classifier.trainable_variables)
        checkpoint = tf.train.Checkpoint(weights=[w.value for w in classifier.weights],
                                         optimizer=[v.value for v in optimizer.variables])

    # Every worker restores from the chief's shared backup (the folder must be visible to all).
    latest = tf.train.latest_checkpoint(str(shared_backup))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    initial_step = int(optimizer.iterations.numpy())

    write_dir = write_folder(shared_backup, chief, task)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2)
    train_step = make_train_step(strategy, classifier, optimizer, settings.batch_size)
    sync_statistics = make_statistics_sync(strategy, classifier)
    writer = (tf.summary.create_file_writer(str(log_root / "multiworker" / "train")) if chief
              else tf.summary.create_noop_writer())

    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, "train", training=True, input_context=context))
    losses: list[float] = []
    step_ends: list[float] = []
    bar = _Progress(total_steps, initial_step) if (progress and chief) else None
    try:
        with naming_bad_shards(train_paths), writer.as_default():
            iterator = iter(dataset)
            step = initial_step
            while step < stop_step:
                loss = float(train_step(iterator))
                step += 1
                step_ends.append(time.perf_counter())
                losses.append(loss)
                tf.summary.scalar("loss", loss, step=step)
                if bar:
                    bar.advance(step, loss)
                if step % checkpoint_every == 0 or step == stop_step:
                    if workers > 1:
                        sync_statistics()
                    manager.save(checkpoint_number=step)  # collective: every worker calls it
    finally:
        if bar:
            bar.stop()
        writer.flush()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)

    if workers > 1:
        sync_statistics()
    weights = [keras.ops.convert_to_numpy(w.value) for w in classifier.weights]
    rate = ((len(step_ends) - 1) * settings.batch_size / (step_ends[-1] - step_ends[0])
            if len(step_ends) > 1 else None)
    complete = int(optimizer.iterations.numpy()) >= total_steps
    result = {
        "task_type": task[0], "task_id": task[1], "chief": chief, "replicas": workers,
        "workers": _num_workers(strategy),
        "initial_step": initial_step, "final_step": int(optimizer.iterations.numpy()),
        "steps_run": len(losses), "losses": losses, "images_per_second": rate, "complete": complete,
        "weights": weights, "weights_sha256": weights_checksum(weights),
    }
    if chief and complete and export:
        result.update(_report_and_export(config, classifier, result))
    if complete:
        # The schedule is done (and exported): a later run starts afresh.
        _remove_backup(shared_backup, chief)
    return result


def _num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))


def _remove_backup(shared_backup: Path, chief: bool) -> None:
    if chief:
        shutil.rmtree(shared_backup, ignore_errors=True)


def _report_and_export(config, classifier: keras.Model, result: dict) -> dict:
    """Chief only: hold-out AP on the test split, best-F1 thresholds on val, SavedModel export."""
    from xrayscatter.export import export_resnet
    from xrayscatter.training import (average_precisions, best_f1_thresholds, export_copy, predict_split,
                                      write_holdout_report)

    model, features = export_copy(classifier, config)
    val_probabilities, val_labels = predict_split(model, config, "val")
    test_probabilities, test_labels = predict_split(model, config, "test")
    ap = average_precisions(test_labels, test_probabilities)
    present = np.isfinite(ap)
    holdout_map = float(np.mean(ap[present])) if present.any() else None
    summary = {key: result[key] for key in ("replicas", "workers", "initial_step", "final_step", "images_per_second")}
    summary["route"] = "multiworker custom loop (xrayscatter.multiworker)"
    json_path, _md_path = write_holdout_report(config, ap, test_labels, {"training": summary})
    thresholds = dict(zip(ATTRIBUTES, best_f1_thresholds(val_labels, val_probabilities)))
    saved = export_resnet(model, features, config, {
        "thresholds": thresholds,
        "thresholds_rule": "per attribute, the best-F1 threshold on the validation split (0.5 without positives)",
        "holdout": {"mAP": holdout_map, "split": "test", "num_images": int(len(test_labels))},
        "training": summary,
    })
    return {"saved_model": str(saved), "report_json": str(json_path), "holdout_mAP": holdout_map}


class _Progress:
    """One rich progress bar over the global steps (chief only)."""

    def __init__(self, total: int, completed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train resnet (multi-worker)[/] {task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn())
        self.progress.start()
        self.task = self.progress.add_task("", total=total, completed=completed)
        if completed:
            self.progress.console.print(f"resumed from the backup at step {completed}")

    def advance(self, step: int, loss: float) -> None:
        self.progress.update(self.task, completed=step, description=f"loss {loss:.3f}")

    def stop(self) -> None:
        self.progress.stop()


def summary_json(result: dict) -> str:
    """The result without the weight arrays, as one JSON line (for logs and launch scripts)."""
    return json.dumps({k: v for k, v in result.items() if k != "weights"}, sort_keys=True)


if __name__ == "__main__":  # pragma: no cover - exercised by tests/test_multiworker.py through a subprocess
    import argparse

    from xrayscatter.config import load_config

    parser = argparse.ArgumentParser(description="One worker of a multi-worker ResNet training (reads TF_CONFIG).")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--weights-out", default=None, help="npz of this worker's final weights")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    out = train_resnet_multiworker(load_config(args.pipeline), steps=args.steps, export=not args.no_export,
                                   progress=False)
    if args.weights_out:
        np.savez(args.weights_out, *out["weights"])
    print("RESULT " + summary_json(out), flush=True)
