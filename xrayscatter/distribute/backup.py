"""The training backup both routes share, so that a run killed on one route resumes on either.

``<log_dir>/backup/`` holds a ``tf.train.Checkpoint`` of the model's weights (trainable and batch-norm
statistics) and the optimizer's variables (its step counter included), numbered by the global step
(``ckpt-<step>``, the last two kept), and ``run.json`` naming the run folder being trained. ``fit``
(``xrayscatter.train``) and the custom loop (``distribute/loop.py``) write and read the same files.

Under MultiWorkerMirroredStrategy saving is collective: every worker calls :meth:`Backup.save`, but only
the chief's copy goes to the shared folder; the others write into temporary folders beside it that are
removed (:func:`write_folder`). Every worker restores from the chief's folder, which every host must see.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from xrayscatter.distribute.strategy import is_chief, task_of
from xrayscatter.files import write_atomically

RUN_FILE = "run.json"


def write_folder(shared: Path, chief: bool, task: tuple[str, int]) -> Path:
    """Where this worker writes a collective checkpoint: the shared folder (chief) or a temporary one.

    A killed worker leaves its folder behind; a task id is held by one process at a time, so the
    folders with this task's prefix are that dead process's and are removed.
    """
    if chief:
        return shared
    prefix = f".{shared.name}-{task[0]}{task[1]}-"
    for stale in shared.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shared.parent))


class Backup:
    """Save and restore a training's state in ``folder``.

    Args:
        folder: ``<log_dir>/backup``.
        model, optimizer: built under ``strategy.scope()`` (the optimizer built over the model's variables).
        strategy: the training's strategy.
    """

    def __init__(self, folder: str | Path, model, optimizer, strategy):
        self.folder = Path(folder)
        self.optimizer = optimizer
        self.chief = is_chief(strategy)
        self.folder.mkdir(parents=True, exist_ok=True)
        with strategy.scope():
            self.checkpoint = tf.train.Checkpoint(weights=[w.value for w in model.weights],
                                                  optimizer=[v.value for v in optimizer.variables])
        self.write_dir = write_folder(self.folder, self.chief, task_of(strategy))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.write_dir), max_to_keep=2)
        self.saved_step = 0

    def restore(self) -> int:
        """Restore the newest backup if there is one; the global step training continues from."""
        latest = tf.train.latest_checkpoint(str(self.folder))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        self.saved_step = int(self.optimizer.iterations.numpy())
        return self.saved_step

    def save(self, step: int) -> None:
        """Back up the current state as ``ckpt-<step>`` (collective: every worker calls it)."""
        self.manager.save(checkpoint_number=step)
        self.saved_step = step

    def close(self) -> None:
        """Remove a non-chief worker's temporary folder."""
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def remove(self) -> None:
        """After a complete, exported schedule (chief): the next run starts afresh."""
        if self.chief:
            shutil.rmtree(self.folder, ignore_errors=True)

    def run_folder(self, log_dir: str | Path, new_name: str) -> tuple[Path, bool]:
        """The run's log folder: the one ``run.json`` names (a resumed run), else ``new_name`` (recorded by the chief).

        Returns:
            (folder, resumed).
        """
        state = self.folder / RUN_FILE
        if state.is_file():
            return Path(log_dir) / json.loads(state.read_text())["run"], True
        if self.chief:
            write_atomically(state, json.dumps({"run": new_name}) + "\n")
        return Path(log_dir) / new_name, False
