"""Train across hosts: one custom training loop under MultiWorkerMirroredStrategy, for both networks.

Keras 3's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras#20585, a
``PerReplica`` ValueError), so in a cluster (``TF_CONFIG``, or a Slurm step: ``cluster.py``)
training runs its own step with ``strategy.run``. The same loop also runs under
``MirroredStrategy`` (all GPUs, or logical CPUs, of one host).

    cluster   make_strategy() ─► MultiWorkerMirroredStrategy (one replica per local device)
    data      a dataset per worker via distribute_datasets_from_function: each worker reads
              its own subset of the files (input_context: the FILE auto-shard policy)
    step      per-replica loss summed over the replica's examples and divided by the *global*
              batch (tf.nn.compute_average_loss) → gradients all-reduced by the optimizer
    backup    tf.train.CheckpointManager every ``checkpoint_every`` steps into
              ``<log_dir>/multiworker-backup`` (a folder every worker can read); a job
              killed and started again resumes at the last backup's step
    chief     writes the backup, TensorBoard scalars (``<log_dir>/multiworker/train``), the
              reports and the SavedModel; the other workers take part in the (collective)
              checkpoint saves into temporary folders that are removed right after

The networks differ only in what :class:`LoopJob` holds: the ResNet (summed binary
cross-entropy over the 17 attributes, AdamW with warm-up and cosine decay, the TFRecord
pipeline of ``data.py``) and the patch autoencoder (mean squared error per patch, Adam,
the patch pipeline of ``patches.py``).

Batch-norm moving statistics are per-replica in Keras 3 (aggregation "none"); they are
averaged over all replicas of all workers before every backup and at the end, so every
worker ends with identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


BACKUP_FOLDER = "multiworker-backup"


# --------------------------------------------------------------------------- cluster roles
def task_of(strategy: tf.distribute.Strategy) -> tuple[str, int]:
    """(task type, task id) of this process in the cluster; ("local", 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local", 0
    return str(resolver.task_type), int(resolver.task_id or 0)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes taking part in training (chief and workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))


def write_folder(shared: Path, chief: bool, task: tuple[str, int]) -> Path:
    """Where this worker writes a collective checkpoint: the shared folder (chief) or a temporary one.

    Every worker must call ``save`` under MultiWorkerMirroredStrategy (it is a collective
    operation), but only the chief's copy is kept; the others write beside it and remove theirs.
    """
    if chief:
        return shared
    prefix = f".{shared.name}-{task[0]}{task[1]}-"
    # A killed worker leaves its folder behind; a task id is held by one process at a time,
    # so the folders with this task's prefix are that dead process's and can go.
    for stale in shared.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shared.parent))


def weights_checksum(weights: list[np.ndarray]) -> str:
    """SHA-256 of the weights' bytes in order (equal weights ⇔ equal checksum)."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class LoopJob:
    """One network's training, as the loop needs it.

    Attributes:
        name: "resnet" or "autoencoder" (progress bar and logs).
        model: built under ``strategy.scope()``; maps a batch of inputs to outputs.
        optimizer: built under ``strategy.scope()`` over ``model.trainable_variables``.
        per_example_loss: (targets, outputs) → (b,) float32 loss of each example.
        dataset_fn: ``tf.distribute.InputContext`` → dataset of (inputs, targets) with
            per-replica batches, repeating forever, this worker's share of the files.
        global_batch_size: examples per step over all replicas.
        total_steps: the full schedule (the learning-rate schedule is built for it).
        log_dir: backups in ``<log_dir>/multiworker-backup``, TensorBoard in ``<log_dir>/multiworker``.
        input_errors: context manager factory turning a data error into a message naming the file.
    """

    name: str
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    per_example_loss: Callable
    dataset_fn: Callable
    global_batch_size: int
    total_steps: int
    log_dir: Path
    input_errors: Callable = contextlib.nullcontext


def make_train_step(strategy: tf.distribute.Strategy, job: LoopJob):
    """A tf.function: one step on a distributed batch → the global mean loss (float32 scalar).

    Each replica's loss is divided by the global batch, so summing the replicas'
    gradients (the optimizer's all-reduce) gives the gradient of the global mean loss.
    """
    model, optimizer = job.model, job.optimizer

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            loss = tf.nn.compute_average_loss(job.per_example_loss(targets, outputs),
                                              global_batch_size=job.global_batch_size)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        inputs, targets = next(iterator)
        per_replica_loss = strategy.run(replica_step, args=(inputs, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    return train_step


def make_statistics_sync(strategy: tf.distribute.Strategy, model: keras.Model):
    """A tf.function averaging the non-trainable weights (batch-norm statistics) over all replicas, or None."""
    variables = [w.value for w in model.non_trainable_weights]
    if not variables:
        return None

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    return tf.function(lambda: strategy.run(replica_fn))


def run_loop(strategy: tf.distribute.Strategy, job: LoopJob, steps: int | None = None,
             checkpoint_every: int | None = None, progress: bool = True) -> dict:
    """Train ``job`` from its last backup up to global step ``steps`` (default: the full schedule).

    Returns:
        dict with ``task_type``, ``task_id``, ``chief``, ``replicas``, ``workers``,
        ``initial_step`` (> 0 after a resume), ``final_step``, ``steps_run``, ``losses`` (per
        step run, global mean), ``examples_per_second``, ``complete``, ``weights`` (numpy
        arrays, identical on every worker) and ``weights_sha256``.
    """
    from xrayscatter.training import is_chief

    chief = is_chief(strategy)
    task = task_of(strategy)
    replicas = strategy.num_replicas_in_sync
    stop_step = job.total_steps if steps is None else min(int(steps), job.total_steps)
    checkpoint_every = max(1, int(checkpoint_every or job.total_steps))

    shared_backup = Path(job.log_dir) / BACKUP_FOLDER
    shared_backup.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        checkpoint = tf.train.Checkpoint(weights=[w.value for w in job.model.weights],
                                         optimizer=[v.value for v in job.optimizer.variables])
    # Every worker restores from the chief's shared backup (the folder must be visible to all).
    latest = tf.train.latest_checkpoint(str(shared_backup))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    initial_step = int(job.optimizer.iterations.numpy())

    write_dir = write_folder(shared_backup, chief, task)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2)
    train_step = make_train_step(strategy, job)
    sync_statistics = make_statistics_sync(strategy, job.model) if replicas > 1 else None
    writer = (tf.summary.create_file_writer(str(Path(job.log_dir) / "multiworker" / "train")) if chief
              else tf.summary.create_noop_writer())
    dataset = strategy.distribute_datasets_from_function(job.dataset_fn)

    losses: list[float] = []
    step_ends: list[float] = []
    bar = _Progress(job.name, job.total_steps, initial_step) if (progress and chief) else None
    step = initial_step
    saved_step = initial_step
    try:
        with job.input_errors(), naming_lost_workers(lambda: (step, saved_step)), writer.as_default():
            iterator = iter(dataset)
            while step < stop_step:
                loss = float(train_step(iterator))
                step += 1
                step_ends.append(time.perf_counter())
                losses.append(loss)
                tf.summary.scalar("loss", loss, step=step)
                if bar:
                    bar.advance(step, loss)
                if step % checkpoint_every == 0 or step == stop_step:
                    if sync_statistics:
                        sync_statistics()
                    manager.save(checkpoint_number=step)  # collective: every worker calls it
                    saved_step = step
    finally:
        if bar:
            bar.stop()
        writer.flush()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)

    if sync_statistics:
        sync_statistics()
    weights = [keras.ops.convert_to_numpy(w.value) for w in job.model.weights]
    rate = ((len(step_ends) - 1) * job.global_batch_size / (step_ends[-1] - step_ends[0])
            if len(step_ends) > 1 else None)
    final_step = int(job.optimizer.iterations.numpy())
    return {
        "network": job.name, "task_type": task[0], "task_id": task[1], "chief": chief, "replicas": replicas,
        "workers": num_workers(strategy), "initial_step": initial_step, "final_step": final_step,
        "total_steps": job.total_steps, "steps_run": len(losses), "losses": losses,
        "examples_per_second": rate, "complete": final_step >= job.total_steps,
        "weights": weights, "weights_sha256": weights_checksum(weights),
    }


@contextlib.contextmanager
def naming_lost_workers(where: Callable[[], tuple[int, int]]):
    """Turn the collective-op failure after a worker died into one line saying how to resume.

    When a worker dies the others' next all-reduce fails within seconds (UnavailableError,
    "Collective ops is aborted by ..."), so they exit instead of hanging and the job
    scheduler sees the whole job end. ``where()`` gives (current step, last backed-up step).
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError) as error:
        from xrayscatter.errors import XrayscatterError

        step, saved = where()
        lines = (error.message or str(error)).strip().splitlines() or [type(error).__name__]
        reason = next((line for line in lines if "aborted" in line or "peer" in line), lines[0]).strip()
        raise XrayscatterError(
            f"a worker of the cluster was lost at step {step + 1} ({reason}); start the job again "
            f"with the same command: it resumes from the backup at step {saved}") from error


def remove_backup(job: LoopJob, chief: bool) -> None:
    """After a complete, exported schedule: the next run starts afresh."""
    if chief:
        shutil.rmtree(Path(job.log_dir) / BACKUP_FOLDER, ignore_errors=True)


# --------------------------------------------------------------------------- the ResNet
def resnet_job(config, strategy: tf.distribute.Strategy) -> LoopJob:
    """The ResNet's loop job: classifier, AdamW schedule, the train split's TFRecord pipeline."""
    from xrayscatter.data import make_dataset, naming_bad_shards, shard_paths, split_size
    from xrayscatter.models.resnet import build_backbone, build_classifier
    from xrayscatter.training import learning_rate_schedule, summed_binary_crossentropy

    settings = config.resnet
    train_paths = shard_paths(config, "train")
    steps_per_epoch = settings.steps_per_epoch or max(1, split_size(config, "train") // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    keras.utils.set_random_seed(config.seed)  # identical initial weights on every worker
    with strategy.scope():
        classifier = build_classifier(build_backbone(settings.input_size, settings.width_multiplier))
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(config, total_steps),
                                           weight_decay=settings.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        optimizer.build(classifier.trainable_variables)
    return LoopJob(
        name="resnet", model=classifier, optimizer=optimizer, per_example_loss=summed_binary_crossentropy,
        dataset_fn=lambda context: make_dataset(config, "train", training=True, input_context=context),
        global_batch_size=settings.batch_size, total_steps=total_steps, log_dir=Path(settings.log_dir),
        input_errors=lambda: naming_bad_shards(train_paths))


def train_resnet_multiworker(config, steps: int | None = None, strategy: tf.distribute.Strategy | None = None,
                             checkpoint_every: int | None = None, export: bool = True,
                             progress: bool = True) -> dict:
    """Train the ResNet with the custom loop under a (multi-worker) mirrored strategy.

    Args:
        config: PipelineConfig (``resnet`` section; batch_size is the global batch).
        steps: stop after this global step (default, and at most: epochs × steps_per_epoch).
            A run stopped early keeps its backup; the next call resumes from it.
        strategy: default ``training.make_strategy()`` (multi-worker in a cluster).
        checkpoint_every: steps between backups (default ``resnet.steps_per_epoch``, i.e. once per epoch).
        export: when the schedule is complete, the chief writes the hold-out report and the SavedModel.
        progress: a rich progress bar on the chief.

    Returns:
        :func:`run_loop`'s dict; on the chief after a complete run also ``saved_model``,
        ``report_json``, ``holdout_mAP``.

    Raises:
        XrayscatterError: missing, truncated or corrupt shards (naming the file).
    """
    from xrayscatter.training import make_strategy

    strategy = strategy or make_strategy()
    job = resnet_job(config, strategy)
    every = checkpoint_every or job.total_steps // config.resnet.epochs
    result = run_loop(strategy, job, steps=steps, checkpoint_every=every, progress=progress)
    if result["chief"] and result["complete"] and export:
        from xrayscatter.training import report_and_export

        result.update(report_and_export(job.model, config, _training_summary(result)))
    if result["complete"]:
        remove_backup(job, result["chief"])
    return result


# --------------------------------------------------------------------------- the autoencoder
def autoencoder_job(config, strategy: tf.distribute.Strategy, source) -> LoopJob:
    """The autoencoder's loop job: model, Adam, random patches of this worker's share of the images."""
    from xrayscatter import patches as patch_data
    from xrayscatter.models.autoencoder import build_autoencoder_from_config

    ae = config.autoencoder
    steps_per_epoch = ae.steps_per_epoch or max(1, -(-source.num_train_images * ae.patches_per_image
                                                     // ae.batch_size))
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_autoencoder_from_config(ae)
        optimizer = keras.optimizers.Adam(ae.learning_rate)
        optimizer.build(model.trainable_variables)

    def per_patch_squared_error(targets, outputs):
        return tf.reduce_mean(tf.math.squared_difference(targets, outputs), axis=[1, 2])

    def dataset_fn(context):
        # Each input pipeline cuts its own patches: a different seed per pipeline, its own files.
        return patch_data.patch_dataset(source.train_images(context), ae,
                                        seed=config.seed + 1000 * context.input_pipeline_id,
                                        batch_size=context.get_per_replica_batch_size(ae.batch_size),
                                        training=True)

    return LoopJob(name="autoencoder", model=model, optimizer=optimizer, per_example_loss=per_patch_squared_error,
                   dataset_fn=dataset_fn, global_batch_size=ae.batch_size, total_steps=ae.epochs * steps_per_epoch,
                   log_dir=Path(ae.log_dir))


def train_autoencoder_multiworker(config, images_dir: str | Path | None = None, steps: int | None = None,
                                  strategy: tf.distribute.Strategy | None = None,
                                  checkpoint_every: int | None = None, export: bool = True,
                                  progress: bool = True) -> dict:
    """Train the patch autoencoder with the custom loop under a (multi-worker) mirrored strategy.

    Arguments as :func:`train_resnet_multiworker` (``autoencoder`` section; backups once per
    epoch by default); ``images_dir`` trains on a folder of real detector images as
    ``autoencoder_training.train_autoencoder`` does. On the chief after a complete run the
    result also holds ``report`` (the dict of ``reports/<pipeline>/autoencoder.json``) and
    ``saved_model``.
    """
    from xrayscatter.autoencoder_training import finish_autoencoder, heldout_patches, patch_source
    from xrayscatter.training import make_strategy

    strategy = strategy or make_strategy()
    source = patch_source(config, images_dir)
    job = autoencoder_job(config, strategy, source)
    every = checkpoint_every or max(1, job.total_steps // config.autoencoder.epochs)
    started = time.perf_counter()
    result = run_loop(strategy, job, steps=steps, checkpoint_every=every, progress=progress)
    if result["chief"] and result["complete"] and export:
        from xrayscatter.models.autoencoder import build_autoencoder_from_config

        trained = build_autoencoder_from_config(config.autoencoder)  # plain variables for the export
        trained.set_weights(result["weights"])
        training = _training_summary(result)
        training.update({"epochs": config.autoencoder.epochs,
                         "steps_per_epoch": job.total_steps // config.autoencoder.epochs,
                         "batch_size": job.global_batch_size, "seconds": time.perf_counter() - started,
                         "loss": {"loss": result["losses"]}})
        report = finish_autoencoder(config, trained, source, heldout_patches(config, source), training)
        result.update({"report": report, "saved_model": report["export"]})
    if result["complete"]:
        remove_backup(job, result["chief"])
    return result


# --------------------------------------------------------------------------- output
def _training_summary(result: dict) -> dict:
    summary = {key: result[key] for key in ("replicas", "workers", "initial_step", "final_step",
                                            "examples_per_second")}
    summary["route"] = "custom loop under MultiWorkerMirroredStrategy (xrayscatter.multiworker)"
    return summary


class _Progress:
    """One rich progress bar over the global steps (chief only)."""

    def __init__(self, name: str, total: int, completed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(f"[bold]train {name} (multi-worker)[/] {{task.description}}"),
                                 BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.progress.start()
        self.task = self.progress.add_task("", total=total, completed=completed)
        if completed:
            self.progress.console.print(f"resumed from the backup at step {completed}")

    def advance(self, step: int, loss: float) -> None:
        self.progress.update(self.task, completed=step, description=f"loss {loss:.4g}")

    def stop(self) -> None:
        self.progress.stop()


def summary_line(result: dict) -> str:
    """One human line per worker, printed by the CLI (the tests read the checksum from it)."""
    role = "chief" if result["chief"] else "worker"
    line = (f"{result['network']}: {result['task_type']} {result['task_id']} of {result['workers']} ({role}), "
            f"{result['replicas']} replicas, steps {result['initial_step']}→{result['final_step']} "
            f"of {result['total_steps']}, weights sha256 {result['weights_sha256']}")
    if result.get("saved_model"):
        line += f", exported {result['saved_model']}"
    return line


def summary_json(result: dict) -> str:
    """The result without the weight arrays (and the long report), as one JSON line."""
    return json.dumps({k: v for k, v in result.items() if k not in ("weights", "report")}, sort_keys=True,
                      default=str)


if __name__ == "__main__":  # pragma: no cover - exercised by tests/test_multiworker.py through a subprocess
    import argparse
    import sys

    from xrayscatter.config import load_config

    parser = argparse.ArgumentParser(description="One worker of a multi-worker training (reads TF_CONFIG).")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--network", choices=("resnet", "autoencoder"), default="resnet")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--weights-out", default=None, help="npz of this worker's final weights")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    from xrayscatter.errors import XrayscatterError

    train = train_resnet_multiworker if args.network == "resnet" else train_autoencoder_multiworker
    try:
        out = train(load_config(args.pipeline), steps=args.steps, checkpoint_every=args.checkpoint_every,
                    export=not args.no_export, progress=False)
    except XrayscatterError as error:
        sys.exit(f"error: {error}")
    if args.weights_out:
        np.savez(args.weights_out, *out["weights"])
    print("RESULT " + summary_json(out), flush=True)
