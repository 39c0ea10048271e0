"""What a network supplies to training: the task (the pattern of TF Model Garden's ``base_task.Task``).

One generic trainer (:func:`xrayscatter.train.train`) runs any task, with Keras ``fit`` on one host or
the custom loop of :mod:`xrayscatter.distribute.loop` across hosts, so neither route knows which
network it trains. A task is the one place that builds its network's model, inputs, loss, metrics
and optimizer, and that reports and exports it after training:

==========================  ====================================================================
``build_model()``           the Keras model (called under the strategy's scope)
``build_optimizer(m, n)``   the optimizer of model ``m`` for a schedule of ``n`` steps
``build_inputs(context)``   the training stream: (inputs, targets) batches per replica, repeating
                            forever, this input pipeline's share of the files
``per_example_loss(t, o)``  (b,) float32 loss of each example; the mean over the global batch is
                            the loss both routes minimise
``compile_loss()``          what ``fit`` compiles with (default ``per_example_loss``; Keras applies one
                            loss to each output, so a network with several outputs returns its
                            per-output structure here, the same terms ``per_example_loss`` sums)
``build_metrics()``         Keras metrics shown during ``fit`` (a per-output structure for several outputs)
``fit_callbacks(...)``      the task's own ``fit`` callbacks (validation, figures, best checkpoint)
``validation_data()``       what ``fit`` validates on after every epoch (or None)
``after_training(...)``     after the schedule (both routes): e.g. back to the best checkpoint
``export(model, record)``   the chief's reports and SavedModel; returns what it wrote
==========================  ====================================================================

The log folder of a training (``<section>.log_dir``), the same on both routes, so that a run started
on one resumes on the other::

    backup/                 ckpt-<global step>.*, checkpoint, run.json (the run folder being trained);
                            removed when the schedule is complete
    run-<timestamp>/        train/ (TensorBoard), training_log.csv, and what the task adds
                            (validation/, figures/, checkpoints/ ...)
"""

from __future__ import annotations

import abc
import contextlib
import csv
import math
from pathlib import Path

BACKUP_FOLDER = "backup"
TRAINING_LOG = "training_log.csv"


def best_logged(csv_path: str | Path, key: str) -> float | None:
    """The largest finite value of ``key`` in a training log (CSVLogger file), or None."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return None
    with open(csv_path, newline="") as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key) not in (None, "", "nan")]
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


class Task(abc.ABC):
    """Base of the network tasks; subclasses set ``name`` and ``section`` and implement the builders.

    Args:
        config: the PipelineConfig; the task reads its own section (``config.<section>``).
    """

    name = ""
    section = ""

    def __init__(self, config):
        self.config = config
        self.settings = getattr(config, self.section)

    # ------------------------------------------------------------------ schedule
    @property
    def epochs(self) -> int:
        return self.settings.epochs

    @property
    def global_batch_size(self) -> int:
        """Examples per step over all replicas."""
        return self.settings.batch_size

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.log_dir)

    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """The section's ``steps_per_epoch``, or one pass over the training examples."""

    @property
    def jit_compile(self) -> bool:
        return False

    # ------------------------------------------------------------------ builders
    @abc.abstractmethod
    def build_model(self):
        """The task's Keras model (built inside the strategy's scope)."""

    @abc.abstractmethod
    def build_optimizer(self, model, total_steps: int):
        """The optimizer, with its schedule over ``total_steps``."""

    @abc.abstractmethod
    def build_inputs(self, input_context=None):
        """The training dataset (``input_context``: from ``distribute_datasets_from_function``)."""

    @abc.abstractmethod
    def per_example_loss(self, targets, outputs):
        """(B,) loss of each example, from the targets and the model's outputs."""

    def compile_loss(self):
        """The loss ``fit`` compiles with: ``per_example_loss`` for a single output."""
        return self.per_example_loss

    def build_metrics(self) -> list:
        return []

    def input_errors(self):
        """A context manager turning a data error into a message naming the file (default: none)."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ fit route extras
    def fit_callbacks(self, model, run_dir: Path, resumed: bool) -> list:
        return []

    def validation_data(self):
        return None

    # ------------------------------------------------------------------ after training
    def after_training(self, model, run_dir: Path, record: dict) -> dict:
        """Called on every worker after the schedule; returns entries for the result record."""
        return {}

    @abc.abstractmethod
    def export(self, model, record: dict) -> dict:
        """The chief's reports and SavedModel after a complete schedule; returns entries for the record."""
