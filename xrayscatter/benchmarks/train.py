"""`xrayscatter bench train`: is training limited by the input pipeline?

Rates measured one after the other in the same process on the same strategy, model and batch
size (the pipeline file's ``[resnet]``: input size, width, channels, beam-centre head and
beam-region branch at ``detail_size``), each after a warm-up and for a fixed time:

* pipeline alone — ``resnet.data.make_dataset(train, training=True, cache=False)`` iterated
  without a model: every image is read, decoded, normalised, resized and augmented;
* in memory — ``fit`` on one batch repeated from memory (the step's ceiling);
* fed, cache off — ``fit`` on the real distributed pipeline (``ResNetTask.build_inputs``, as
  ``train("resnet", config)`` runs it) with ``resnet.cache = false``: it decodes every image;
* fed, cache on — the same with ``resnet.cache = true``, stopped before the first pass over the
  data set ends (the cache's warm-up window), so that it too decodes every image it trains on and
  pays the cache's writes; after that pass it would read cached tensors, which says nothing about
  decoding.

The data set is simulated by the real writer into the bench work folder with the pipeline's
image settings (``--images`` images, train split only), never the user's ``tfrecords/``.

Targets: fed (cache off) / in memory ≥ 0.9 (the pipeline hides behind the steps), and
pipeline alone ≥ 3 × the training rate (headroom, since on a CPU both share the cores).
"""

from __future__ import annotations

import time

import dataclasses
from pathlib import Path

import keras
import tensorflow as tf

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table
from xrayscatter.benchmarks.work import DEFAULT_WORK_DIR, bench_dataset
from xrayscatter.resnet.data import make_dataset

TARGET_FED_OVER_MEMORY = 0.9
TARGET_HEADROOM = 3.0


class _StopAfter(keras.callbacks.Callback):
    """Stops ``fit`` ``seconds`` after the end of the ``warmup``-th step; keeps the timed steps."""

    def __init__(self, warmup: int, seconds: float, max_steps: int | None = None):
        super().__init__()
        self.warmup, self.seconds, self.max_steps = warmup, seconds, max_steps
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
            if self.elapsed >= self.seconds or (self.max_steps and batch + 1 >= self.max_steps):
                self.model.stop_training = True


def _fit_rate(model: keras.Model, data, global_batch: int, warmup: int, seconds: float,
              max_images: int | None = None) -> tuple[float, int]:
    """Images/s of ``model.fit`` on ``data`` after ``warmup`` steps, measured for ``seconds`` (or until
    ``max_images`` were consumed); and the images the fit consumed in all (warm-up included)."""
    stopper = _StopAfter(warmup, seconds, max_images // global_batch if max_images else None)
    model.fit(data, epochs=1, steps_per_epoch=10**7, callbacks=[stopper], shuffle=False, verbose=0)
    return stopper.timed_steps * global_batch / stopper.elapsed, (warmup + stopper.timed_steps) * global_batch


def _pipeline_rate(dataset: tf.data.Dataset, warmup: int, seconds: float) -> float:
    """Images/s of iterating ``dataset`` (batches of images, labels) after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch, _ = next(iterator)
        images += int(tf.nest.flatten(batch)[0].shape[0])
    return images / (time.perf_counter() - start)


def bench_train(config, work_dir: str | Path = DEFAULT_WORK_DIR, images: int = 1024, seconds: float = 20.0,
                warmup: int = 3, json_path: str | Path | None = None) -> dict:
    """Measure and print the four rates and their ratios.

    Args:
        config: PipelineConfig (``resnet``: input size, width, channels, heads, batch, augment).
        work_dir: where the bench data set is simulated (reused on the next run).
        images: images of the bench data set (train split only).
        seconds: measuring time per rate, after the warm-up.
        warmup: untimed steps first (tracing, pipeline start).

    Returns:
        dict with ``pipeline_alone``, ``in_memory``, ``fed_cache_off``, ``fed_cache_on`` (images/s),
        ``fed_over_memory``, ``cached_over_memory``, ``pipeline_over_training``, ``ratios``, ``conditions``.
    """
    from rich.console import Console

    from xrayscatter.distribute.strategy import make_strategy
    from xrayscatter.resnet.task import ResNetTask
    from xrayscatter.train import build_training_model

    settings = config.resnet
    console = Console()
    started = print_conditions(console, "train")
    with console.status(f"simulating the bench data set ({images} images of {config.simulate.image_size} px, once)"):
        data = bench_dataset(config, work_dir, f"bench-train-{config.name}", images)
    data = dataclasses.replace(data, resnet=dataclasses.replace(settings, data_service=""))
    strategy = make_strategy()
    console.print(f"pipeline {config.name}: ResNet-50 layout, input {settings.input_size} px, "
                  f"width × {settings.width_multiplier:g}, {len(settings.input_channels)} channels, beam head "
                  f"{'on' if settings.beam_centre_weight > 0 else 'off'}, detail {settings.detail_size} px, global "
                  f"batch {settings.batch_size}, {strategy.num_replicas_in_sync} replica(s), {images} train images "
                  f"of {config.simulate.image_size} px, {seconds:g} s per rate", highlight=False)

    with console.status("input pipeline alone"):
        alone = _pipeline_rate(make_dataset(data, "train", training=True, cache=False), warmup, seconds)

    tasks = {cache: ResNetTask(dataclasses.replace(data, resnet=dataclasses.replace(data.resnet, cache=cache)))
             for cache in (False, True)}
    classifier, _ = build_training_model(tasks[False], strategy, total_steps=10**6, compile_for_fit=True)
    with console.status("training on one batch in memory"):
        inputs, targets = next(iter(make_dataset(data, "train", training=True, cache=False)))
        in_memory_data = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((inputs, targets)).repeat())
        in_memory, _ = _fit_rate(classifier, in_memory_data, settings.batch_size, warmup, seconds)
    fed, consumed = {}, {}
    for cache, label in ((False, "off"), (True, "on")):
        with console.status(f"training fed by the input pipeline, cache {label}"):
            # With the cache on, stop before the first pass ends: every image trained on is decoded.
            fed[cache], consumed[cache] = _fit_rate(
                classifier, strategy.distribute_datasets_from_function(tasks[cache].build_inputs),
                settings.batch_size, warmup, seconds, max_images=images if cache else None)
    cache_note = ("every image it trained on was decoded (first pass)" if consumed[True] <= images else
                  f"reached cached images after {images} of {consumed[True]}: partly cached tensors")

    result = {"pipeline": config.name, "images": images, "pipeline_alone": alone, "in_memory": in_memory,
              "fed_cache_off": fed[False], "fed_cache_on": fed[True], "consumed_cache_on": consumed[True],
              "fed_over_memory": fed[False] / in_memory, "cached_over_memory": fed[True] / in_memory,
              "pipeline_over_training": alone / in_memory, "cache_on_regime": cache_note}
    console.print(results_table(f"training throughput, pipeline {config.name} (images/s)",
                                ("measurement", "images/s", "/ in memory", "target"), [
                                    ("input pipeline alone (decode + augment, no cache)", f"{alone:.1f}",
                                     f"{result['pipeline_over_training']:.2f}", f"≥ {TARGET_HEADROOM:g}"),
                                    ("training steps, one batch in memory", f"{in_memory:.1f}", "1", ""),
                                    ("training fed by the input pipeline, cache off", f"{fed[False]:.1f}",
                                     f"{result['fed_over_memory']:.2f}", f"≥ {TARGET_FED_OVER_MEMORY:g}"),
                                    ("training fed by the input pipeline, cache on", f"{fed[True]:.1f}",
                                     f"{result['cached_over_memory']:.2f}", "")]))
    console.print(f"cache on: {consumed[True]} images consumed of a {images}-image data set: {cache_note}")
    ratios = [Ratio("train", f"fed (cache off) / in memory, pipeline {config.name}", result["fed_over_memory"],
                    TARGET_FED_OVER_MEMORY, note=f"{fed[False]:.1f} / {in_memory:.1f} images/s"),
              Ratio("train", f"pipeline alone / training, pipeline {config.name}", result["pipeline_over_training"],
                    TARGET_HEADROOM, note=f"{alone:.1f} / {in_memory:.1f} images/s"),
              Ratio("train", f"fed (cache on, first pass) / in memory, pipeline {config.name}",
                    result["cached_over_memory"], TARGET_FED_OVER_MEMORY, note=cache_note)]
    return finish(console, result, ratios, json_path, started)
