"""The custom training loop: one step under ``strategy.run``, for any task, where Keras ``fit`` cannot go.

Keras 3's ``Model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras#20585, a ``PerReplica``
ValueError), so in a cluster (``TF_CONFIG``, or a Slurm step: ``strategy.py``) :func:`xrayscatter.train.train`
runs this loop instead. It also runs under ``MirroredStrategy`` (all GPUs, or logical CPUs, of one host).

    data      the task's ``build_inputs`` per worker via distribute_datasets_from_function: each
              worker reads its own subset of the files (input_context: the FILE auto-shard policy)
    step      per-replica loss summed over the replica's examples and divided by the *global* batch
              (tf.nn.compute_average_loss) → gradients all-reduced by the optimizer; under mixed
              precision the optimizer's loss scale is applied and removed
    backup    every ``checkpoint_every`` steps and at the stop step, after averaging the batch-norm
              statistics over all replicas (``backup.py``: the same files ``fit`` writes)
    chief     writes the backup and the TensorBoard loss per step (``<run>/train``); a lost worker
              turns the others' next all-reduce into one line saying how to resume

Neither the loop nor the trainer knows which network it trains: everything network-specific comes
from the task (:mod:`xrayscatter.base_task`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from xrayscatter.errors import XrayscatterError
from xrayscatter.files import progress_bar


class StepProgress:
    """One progress bar over a training's global steps (both routes, chief only)."""

    def __init__(self, name: str, total: int, completed: int, disable: bool = False):
        self.progress = progress_bar(f"train {name}", disable=disable)
        self.progress.start()
        self.task = self.progress.add_task("", total=total, completed=completed)
        if completed:
            self.print(f"resumed from the backup at step {completed}")

    def update(self, step: int, description: str) -> None:
        self.progress.update(self.task, completed=step, description=description)

    def print(self, line: str) -> None:
        self.progress.console.print(line)

    def stop(self) -> None:
        self.progress.stop()


def make_train_step(strategy, model, optimizer, per_example_loss: Callable, global_batch_size: int):
    """A tf.function: one step on a distributed batch → the global mean loss (float32 scalar).

    Each replica's loss is divided by the global batch, so summing the replicas' gradients (the
    optimizer's all-reduce) gives the gradient of the global mean loss.
    """

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            loss = tf.nn.compute_average_loss(per_example_loss(targets, outputs),
                                              global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss)  # the loss itself, unless a LossScaleOptimizer
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        inputs, targets = next(iterator)
        per_replica_loss = strategy.run(replica_step, args=(inputs, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    return train_step


@contextlib.contextmanager
def naming_lost_workers(where: Callable[[], tuple[int, int]]):
    """Turn the collective-op failure after a worker died into one line saying how to resume.

    When a worker dies the others' next all-reduce fails within seconds (UnavailableError,
    "Collective ops is aborted by ..."), so they exit instead of hanging and the job scheduler sees
    the whole job end. ``where()`` gives (current step, last backed-up step).
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError) as error:
        step, saved = where()
        lines = (error.message or str(error)).strip().splitlines() or [type(error).__name__]
        reason = next((line for line in lines if "aborted" in line or "peer" in line), lines[0]).strip()
        raise XrayscatterError(
            f"a worker of the cluster was lost at step {step + 1} ({reason}); start the job again "
            f"with the same command: it resumes from the backup at step {saved}") from error


def run_loop(strategy, task, model, optimizer, backup, sync_statistics, *, initial_step: int, stop_step: int,
             checkpoint_every: int, steps_per_epoch: int, summary_dir: Path, progress: StepProgress | None) -> dict:
    """Train ``model`` from ``initial_step`` up to global step ``stop_step``.

    Args:
        task: supplies ``build_inputs``, ``per_example_loss``, ``global_batch_size``, ``input_errors``.
        model, optimizer: built under ``strategy.scope()``, restored from ``backup``.
        backup: a :class:`xrayscatter.distribute.backup.Backup`.
        sync_statistics: from ``strategy.make_statistics_sync`` (None: nothing to average).
        summary_dir: where the chief writes the loss of every step (TensorBoard).
        progress: the chief's bar (stopped by the caller), or None.

    Returns:
        dict with ``final_step``, ``history`` ({"loss": mean loss of each epoch's steps run here}) and
        ``examples_per_second`` (None with fewer than two steps).
    """
    train_step = make_train_step(strategy, model, optimizer, task.per_example_loss, task.global_batch_size)
    writer = (tf.summary.create_file_writer(str(summary_dir)) if backup.chief else tf.summary.create_noop_writer())
    dataset = strategy.distribute_datasets_from_function(task.build_inputs)
    epoch_losses: dict[int, list[float]] = {}
    step_ends: list[float] = []
    step = initial_step
    try:
        with task.input_errors(), naming_lost_workers(lambda: (step, backup.saved_step)), writer.as_default():
            iterator = iter(dataset)
            while step < stop_step:
                loss = float(train_step(iterator))
                step += 1
                step_ends.append(time.perf_counter())
                epoch_losses.setdefault((step - 1) // steps_per_epoch, []).append(loss)
                tf.summary.scalar("loss", loss, step=step)
                if progress:
                    progress.update(step, f"loss {loss:.4g}")
                if step % checkpoint_every == 0 or step == stop_step:
                    if sync_statistics:
                        sync_statistics()
                    backup.save(step)  # collective: every worker calls it
    finally:
        writer.flush()
    rate = ((len(step_ends) - 1) * task.global_batch_size / (step_ends[-1] - step_ends[0])
            if len(step_ends) > 1 else None)
    return {"final_step": step, "examples_per_second": rate,
            "history": {"loss": [sum(v) / len(v) for _, v in sorted(epoch_losses.items())]}}
