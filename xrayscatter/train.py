"""One training entry for both networks: ``train(task, config)``.

    strategy   distribute.strategy.make_strategy(): MultiWorkerMirroredStrategy in a cluster
               (TF_CONFIG, or a Slurm step of ≥ 2 tasks), else MirroredStrategy over the host's
               GPUs or logical CPUs
    route      Keras ``fit`` on one host; the custom loop of distribute/loop.py under
               MultiWorkerMirroredStrategy, where ``fit`` fails (keras#20585). The library picks
               from the strategy, never the command line.
    task       resnet/task.py or autoencoder/task.py: model, inputs, loss, metrics, optimizer,
               the network's own callbacks, its report and export (base_task.py)
    backup     distribute/backup.py in ``<log_dir>/backup``, the same files on both routes, so a run
               killed on one route resumes on either; removed when the schedule is complete
    result     one record for both routes (:func:`train`)

``python -m xrayscatter.train --pipeline P [--network autoencoder] [--steps N] [--checkpoint-every K]``
is the same call with two knobs for launch scripts: stop after global step ``N`` (the backup is kept)
and back up every ``K`` steps.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from xrayscatter.base_task import BACKUP_FOLDER, TRAINING_LOG, Task
from xrayscatter.distribute.backup import Backup
from xrayscatter.distribute.loop import StepProgress, run_loop
from xrayscatter.distribute.strategy import (is_multi_worker, make_statistics_sync, make_strategy, num_workers,
                                             task_of)
from xrayscatter.errors import XrayscatterError

TASKS = {"resnet": "xrayscatter.resnet.task:ResNetTask",
         "autoencoder": "xrayscatter.autoencoder.task:AutoencoderTask"}
ROUTES = ("fit", "loop")


def make_task(name: str, config, images_dir: str | Path | None = None) -> Task:
    """The task of a network by name (``resnet``, ``autoencoder``); ``images_dir`` is the autoencoder's."""
    if name not in TASKS:
        raise XrayscatterError(f"unknown network '{name}' (known: {', '.join(TASKS)})")
    module, cls = TASKS[name].split(":")
    task_class = getattr(importlib.import_module(module), cls)
    return task_class(config, images_dir=images_dir) if name == "autoencoder" else task_class(config)


def weights_checksum(weights: list[np.ndarray]) -> str:
    """SHA-256 of the weights' bytes in order (equal weights ⇔ equal checksum)."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def build_training_model(task: Task, strategy, total_steps: int, compile_for_fit: bool, optimizer=None):
    """The task's model and optimizer under ``strategy.scope()``, the optimizer built (so a backup can restore it).

    Args:
        compile_for_fit: compile with the task's loss, metrics and XLA switch (the ``fit`` route).
        optimizer: instead of the task's (tests, benchmarks).
    """
    with strategy.scope():
        model = task.build_model()
        optimizer = optimizer or task.build_optimizer(model, total_steps)
        optimizer.build(model.trainable_variables)
        if compile_for_fit:
            model.compile(optimizer=optimizer, loss=task.compile_loss(), metrics=task.build_metrics(),
                          jit_compile=task.jit_compile)
    return model, optimizer


# --------------------------------------------------------------------------- fit callbacks
class BatchNormSync(keras.callbacks.Callback):
    """Averages the batch-norm statistics over the replicas after every epoch (before anything evaluates)."""

    def __init__(self, sync):
        super().__init__()
        self.sync = sync

    def on_epoch_end(self, epoch, logs=None):
        if self.sync:
            self.sync()


class Throughput(keras.callbacks.Callback):
    """Adds ``examples_per_second`` (training steps only, first step of each epoch excluded) and ``learning_rate``."""

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
            logs["examples_per_second"] = rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class BackupAndStop(keras.callbacks.Callback):
    """The shared backup during ``fit``: every ``every`` steps and at the stop step, where ``fit`` stops.

    Placed after the CSV logger, so an epoch's row is written before its backup: a resumed run never
    misses one. Mid-epoch backups (``every`` < steps per epoch) are written at the step's end.
    """

    def __init__(self, backup: Backup, sync, every: int, steps_per_epoch: int, stop_step: int):
        super().__init__()
        self.backup, self.sync = backup, sync
        self.every, self.steps_per_epoch, self.stop_step = every, steps_per_epoch, stop_step

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, step: int) -> None:
        if step != self.backup.saved_step:
            if self.sync:
                self.sync()
            self.backup.save(step)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step >= self.stop_step:
            self.model.stop_training = True
        elif step % self.every == 0 and step % self.steps_per_epoch != 0:
            self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        if step % self.every == 0 or step >= self.stop_step:
            self._save(step)


class FitProgress(keras.callbacks.Callback):
    """The step progress bar during ``fit``, and one line per finished epoch."""

    def __init__(self, progress: StepProgress, epochs: int):
        super().__init__()
        self.progress, self.epochs = progress, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        text = f"epoch {self.epoch + 1}/{self.epochs}" + (f" loss {float(loss):.4g}" if loss is not None else "")
        self.progress.update(int(self.model.optimizer.iterations.numpy()), text)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for key, fmt in (("loss", "loss {:.4g}"), ("val_loss", "val_loss {:.4g}"), ("val_mAP", "val_mAP {:.3f}"),
                         ("examples_per_second", "{:.1f} examples/s")):
            if key in logs:
                parts.append(fmt.format(float(logs[key])))
        self.progress.print("  ".join(parts))


def _fit(task: Task, model, strategy, backup: Backup, sync, run_dir: Path, resumed: bool, *, initial_step: int,
         stop_step: int, every: int, steps_per_epoch: int, progress: StepProgress | None) -> dict:
    """The ``fit`` route; returns what :func:`xrayscatter.distribute.loop.run_loop` returns."""
    throughput = Throughput(task.global_batch_size)
    callbacks = [BatchNormSync(sync), throughput, *task.fit_callbacks(model, run_dir, resumed),
                 keras.callbacks.TensorBoard(str(run_dir), update_freq="epoch", write_graph=False),
                 keras.callbacks.CSVLogger(str(run_dir / TRAINING_LOG), append=True),
                 BackupAndStop(backup, sync, every, steps_per_epoch, stop_step)]
    if progress:
        callbacks.append(FitProgress(progress, task.epochs))
    dataset = strategy.distribute_datasets_from_function(task.build_inputs)
    with task.input_errors():
        history = model.fit(dataset, epochs=math.ceil(stop_step / steps_per_epoch),
                            initial_epoch=initial_step // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                            validation_data=task.validation_data(), callbacks=callbacks, shuffle=False, verbose=0)
    return {"final_step": int(model.optimizer.iterations.numpy()),
            "examples_per_second": float(np.median(throughput.rates)) if throughput.rates else None,
            "history": {k: [float(v) if math.isfinite(v) else None for v in values]
                        for k, values in history.history.items()}}


# --------------------------------------------------------------------------- the entry
def train(task: str | Task, config=None, *, images_dir: str | Path | None = None, strategy=None,
          route: str | None = None, steps: int | None = None, checkpoint_every: int | None = None,
          export: bool = True, progress: bool = True) -> dict:
    """Train a network, from its last backup, on whichever route the strategy allows; report and export it.

    Args:
        task: ``"resnet"``, ``"autoencoder"`` or a :class:`~xrayscatter.base_task.Task`.
        config: the PipelineConfig (with a task name).
        images_dir: the autoencoder's folder of real detector images (default: ``autoencoder.real_images_dir``,
            else the TFRecords).
        strategy: default :func:`~xrayscatter.distribute.strategy.make_strategy` (multi-worker in a cluster).
        route: ``"fit"`` or ``"loop"``; default ``"loop"`` under MultiWorkerMirroredStrategy, else ``"fit"``.
        steps: stop after this global step (default, and at most: the full schedule); the backup is kept
            and the next call resumes from it.
        checkpoint_every: steps between backups (default: one epoch).
        export: when the schedule is complete, the chief writes the task's reports and SavedModel.
        progress: a progress bar on the chief.

    Returns:
        One record for both routes: ``network``, ``route``, ``strategy``, ``task_type``, ``task_id``,
        ``chief``, ``workers``, ``replicas``, ``epochs``, ``steps_per_epoch``, ``total_steps``,
        ``batch_size`` (global), ``initial_step`` (> 0 after a resume), ``final_step``, ``steps_run``,
        ``complete``, ``examples_per_second``, ``seconds``, ``history`` (per epoch run here: ``loss``, and on
        the ``fit`` route every logged metric), ``log_dir`` (the run folder), ``weights_sha256``,
        ``weights`` (numpy arrays, identical on every worker), what the task adds after training
        (ResNet: ``best_val_mAP``) and, on the chief after a complete schedule, what its export wrote
        (ResNet: ``saved_model``, ``report_json``, ``report_md``, ``holdout_mAP``, ``holdout_ap``;
        autoencoder: ``saved_model``, ``report``).

    Raises:
        XrayscatterError: missing, truncated or corrupt data (naming the file); a worker lost.
    """
    strategy = strategy or make_strategy()  # first: a multi-worker strategy must exist before other TF work
    if isinstance(task, str):
        task = make_task(task, config, images_dir)
    route = route or ("loop" if is_multi_worker(strategy) else "fit")
    if route not in ROUTES:
        raise XrayscatterError(f"unknown training route '{route}' (known: {', '.join(ROUTES)})")
    if route == "fit" and is_multi_worker(strategy):
        raise XrayscatterError("Keras fit does not run under MultiWorkerMirroredStrategy (keras#20585): "
                               "use the loop route")
    steps_per_epoch = task.steps_per_epoch()
    total_steps = task.epochs * steps_per_epoch
    stop_step = total_steps if steps is None else max(0, min(int(steps), total_steps))
    every = max(1, int(checkpoint_every or steps_per_epoch))

    keras.utils.set_random_seed(task.config.seed)  # identical initial weights on every worker
    model, optimizer = build_training_model(task, strategy, total_steps, compile_for_fit=route == "fit")
    backup = Backup(task.log_dir / BACKUP_FOLDER, model, optimizer, strategy)
    initial_step = backup.restore()
    run_dir, resumed = backup.run_folder(task.log_dir, "run-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if backup.chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    sync = make_statistics_sync(strategy, model)
    bar = StepProgress(task.name, total_steps, initial_step) if progress and backup.chief else None
    started = time.perf_counter()
    try:
        arguments = dict(initial_step=initial_step, stop_step=stop_step, steps_per_epoch=steps_per_epoch,
                         progress=bar)
        if route == "fit":
            outcome = _fit(task, model, strategy, backup, sync, run_dir, resumed, every=every, **arguments)
        else:
            outcome = run_loop(strategy, task, model, optimizer, backup, sync, checkpoint_every=every,
                               summary_dir=run_dir / "train", **arguments)
    finally:
        if bar:
            bar.stop()
        backup.close()
    if sync:
        sync()
    task_type, task_id = task_of(strategy)
    record = {
        "network": task.name, "route": route, "task_type": task_type,
        "strategy": "MultiWorkerMirroredStrategy" if is_multi_worker(strategy) else type(strategy).__name__,
        "task_id": task_id, "chief": backup.chief, "workers": num_workers(strategy),
        "replicas": strategy.num_replicas_in_sync, "epochs": task.epochs, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "batch_size": task.global_batch_size, "initial_step": initial_step,
        "final_step": outcome["final_step"], "steps_run": outcome["final_step"] - initial_step,
        "complete": outcome["final_step"] >= total_steps, "examples_per_second": outcome["examples_per_second"],
        "seconds": time.perf_counter() - started, "history": outcome["history"], "log_dir": str(run_dir),
    }
    record.update(task.after_training(model, run_dir, record))
    weights = [keras.ops.convert_to_numpy(w.value) for w in model.weights]
    record["weights_sha256"] = weights_checksum(weights)
    if record["complete"]:
        if backup.chief and export:
            record.update(task.export(model, dict(record)))
        backup.remove()
    record["weights"] = weights
    return record


# --------------------------------------------------------------------------- output
def summary_line(record: dict) -> str:
    """One human line per worker, printed by the CLI (the tests read the checksum from it)."""
    role = "chief" if record["chief"] else "worker"
    line = (f"{record['network']}: {record['task_type']} {record['task_id']} of {record['workers']} ({role}), "
            f"{record['replicas']} replicas, steps {record['initial_step']}→{record['final_step']} "
            f"of {record['total_steps']}, weights sha256 {record['weights_sha256']}")
    if record.get("saved_model"):
        line += f", exported {record['saved_model']}"
    return line


def summary_json(record: dict) -> str:
    """The record without the weight arrays (and the long report), as one JSON line."""
    return json.dumps({k: v for k, v in record.items() if k not in ("weights", "report")}, sort_keys=True,
                      default=str)


def main(argv: list[str] | None = None) -> None:
    """``python -m xrayscatter.train``: one training process (one worker of a cluster under TF_CONFIG or Slurm)."""
    import argparse
    import sys

    from xrayscatter.config import load_config

    parser = argparse.ArgumentParser(prog="python -m xrayscatter.train",
                                     description="Train a network (a worker of a cluster under TF_CONFIG or Slurm).")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--network", choices=tuple(TASKS), default="resnet")
    parser.add_argument("--images-dir", default=None, help="the autoencoder's folder of real detector images")
    parser.add_argument("--steps", type=int, default=None, help="stop after this global step (the backup is kept)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between backups")
    parser.add_argument("--weights-out", default=None, help="npz of this worker's final weights")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args(argv)
    try:
        record = train(args.network, load_config(args.pipeline), images_dir=args.images_dir, steps=args.steps,
                       checkpoint_every=args.checkpoint_every, export=not args.no_export, progress=False)
    except XrayscatterError as error:
        sys.exit(f"error: {error}")
    if args.weights_out:
        np.savez(args.weights_out, *record["weights"])
    print("RESULT " + summary_json(record), flush=True)


if __name__ == "__main__":  # pragma: no cover - exercised by tests/test_train.py through subprocesses
    main()
