"""`xrayscatter bench train`: is training limited by the input pipeline?

Three rates, measured one after the other in the same process on the same strategy,
model and batch size (``config.resnet``), each after a warm-up and for a fixed time:

* pipeline alone — ``resnet.data.make_dataset(train, training=True)`` iterated without a model,
  cache off, so every image is read, decoded, normalised, resized and augmented;
* in memory — ``fit`` on one batch repeated from memory (the step's ceiling);
* pipeline-fed — ``fit`` on the real distributed pipeline, as ``train("resnet", config)`` runs it.

Targets: pipeline-fed / in memory ≥ 0.9 (the pipeline hides behind the steps), and
pipeline alone ≥ 3 × the training rate (headroom, since on a CPU both share the cores).
Needs the pipeline's TFRecords (``xrayscatter simulate run``).
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from xrayscatter.benchmarks import results_table
from xrayscatter.resnet.data import make_dataset


class _StopAfter(keras.callbacks.Callback):
    """Stops ``fit`` ``seconds`` after the end of the ``warmup``-th step; keeps the timed steps."""

    def __init__(self, warmup: int, seconds: float):
        super().__init__()
        self.warmup, self.seconds = warmup, seconds
        self.start = None
        self.timed_steps = 0
        self.elapsed = 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch + 1 == self.warmup:
            self.start = now
        elif self.start is not None:
            self.timed_steps += 1
            self.elapsed = now - self.start
            if self.elapsed >= self.seconds:
                self.model.stop_training = True


def _fit_rate(model: keras.Model, data, global_batch: int, warmup: int, seconds: float) -> float:
    """Images/s of ``model.fit`` on ``data`` after ``warmup`` steps, measured for ``seconds``."""
    stopper = _StopAfter(warmup, seconds)
    model.fit(data, epochs=1, steps_per_epoch=10**7, callbacks=[stopper], shuffle=False, verbose=0)
    return stopper.timed_steps * global_batch / stopper.elapsed


def _pipeline_rate(dataset: tf.data.Dataset, warmup: int, seconds: float) -> float:
    """Images/s of iterating ``dataset`` (batches of images, labels) after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch, _ = next(iterator)
        images += int(batch.shape[0])
    return images / (time.perf_counter() - start)


def bench_train(config, seconds: float = 20.0, warmup: int = 3) -> dict:
    """Measure and print the three rates and their ratios.

    Args:
        config: PipelineConfig (``resnet``: input size, width, batch, cache, augment).
        seconds: measuring time per rate, after the warm-up.
        warmup: untimed steps first (tracing, pipeline start, first cache fill).

    Returns:
        dict with ``pipeline_alone``, ``in_memory``, ``pipeline_fed`` (images/s),
        ``fed_over_memory`` and ``pipeline_over_training``.
    """
    from rich.console import Console

    from xrayscatter.distribute.strategy import make_strategy
    from xrayscatter.resnet.task import ResNetTask
    from xrayscatter.train import build_training_model

    settings = config.resnet
    console = Console()
    strategy = make_strategy()
    task = ResNetTask(config)  # a clear error if the data set is missing
    console.print(f"[bold]bench train[/] pipeline {config.name}: ResNet-50 layout, input {settings.input_size} px, "
                  f"width × {settings.width_multiplier:g}, global batch {settings.batch_size}, "
                  f"{strategy.num_replicas_in_sync} replica(s), {seconds:g} s per rate")

    with console.status("input pipeline alone"):
        alone = _pipeline_rate(make_dataset(config, "train", training=True, cache=False), warmup, seconds)

    classifier, _ = build_training_model(task, strategy, total_steps=10**6, compile_for_fit=True)
    with console.status("training on one batch in memory"):
        images, labels = next(iter(make_dataset(config, "train", training=True, cache=False)))
        in_memory_data = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((images, labels)).repeat())
        in_memory = _fit_rate(classifier, in_memory_data, settings.batch_size, warmup, seconds)
    with console.status("training fed by the input pipeline"):
        fed = _fit_rate(classifier, strategy.distribute_datasets_from_function(task.build_inputs),
                        settings.batch_size, warmup, seconds)

    result = {"pipeline_alone": alone, "in_memory": in_memory, "pipeline_fed": fed,
              "fed_over_memory": fed / in_memory, "pipeline_over_training": alone / in_memory}
    console.print(results_table(f"training throughput, pipeline {config.name} (images/s)",
                                ("measurement", "images/s", "target"), [
                                    ("input pipeline alone (decode + augment, no cache)", f"{alone:.1f}", ""),
                                    ("training steps, one batch in memory", f"{in_memory:.1f}", ""),
                                    ("training fed by the input pipeline", f"{fed:.1f}", ""),
                                    ("pipeline-fed / in memory", f"{result['fed_over_memory']:.2f}", "≥ 0.9"),
                                    ("pipeline alone / training", f"{result['pipeline_over_training']:.1f}", "≥ 3")]))
    return result
