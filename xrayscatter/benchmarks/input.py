"""``xrayscatter bench input``: images/s per CPU core of the ResNet's training input pipeline.

At ``pipelines/paper.toml``'s settings the pipeline reads 1024² 16-bit PNG records and makes batches
for a ResNet-50 at 224 px with augmentation on and the current inputs (three input channels, the
beam-centre head and the beam-region branch at ``resnet.detail_size``): it is
``resnet.data.make_dataset(config, "train", training=True, cache=False)``, run by one thread
(``tf.data`` private thread pool of 1, intra-op parallelism 1) so that its rate is one core's.

Two record layouts, side by side in one run, on the same images written by the real writer:

* **full image** — records without the ``resized`` feature (schema v2): every image is decoded from
  its 1024² PNG (and mask PNG), normalised and shrunk to the load size and the detail size (both 256 px);
* **stored resized** — the same records with ``resized`` (schema v3, written at simulation time):
  the pipeline decodes the small PNG that holds exactly the padded square it would have made at that
  side (``config.stored_view_size``), and makes the image and the detail from it.

Per core = images / CPU seconds of this process while iterating (robust to other work on the
machine; the wall rate is printed too). One GPU trains ResNet-50 at 1,770 images/s: NVIDIA's
published figure for an A100 (TensorFlow, mixed precision, NGC container). The cores that feed
it = 1,770 / per-core rate; the target is one 16-core host per GPU (≥ 110.6 images/s per core)
without the tf.data service.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table
from xrayscatter.benchmarks.work import DEFAULT_WORK_DIR, bench_dataset

GPU_IMAGES_PER_SECOND = 1770.0  # NVIDIA, A100 ResNet-50 training, TensorFlow, mixed precision (published)
GPU_NAME = "A100 (NVIDIA's published ResNet-50 TF mixed-precision training rate)"
HOST_CORES = 16
TARGET_PER_CORE = GPU_IMAGES_PER_SECOND / HOST_CORES


def strip_resized(source: Path, target: Path) -> list[str]:
    """Copy the TFRecord shards of ``source`` to ``target`` without the ``resized`` feature (schema v2 records)."""
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(source.glob("*.tfrecord-*")):
        copy = target / path.name
        if not copy.exists():
            with tf.io.TFRecordWriter(str(copy) + ".tmp") as writer:
                for serialized in tf.data.TFRecordDataset(str(path)):
                    example = tf.train.Example.FromString(serialized.numpy())
                    if "resized" in example.features.feature:
                        del example.features.feature["resized"]
                    writer.write(example.SerializeToString(deterministic=True))
            Path(str(copy) + ".tmp").rename(copy)
        out.append(str(copy))
    return out


def one_core(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The same pipeline run by one thread."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def pipeline_rate(dataset: tf.data.Dataset, seconds: float, warmup: int = 2) -> dict:
    """Images/s (wall) and images per CPU second of iterating ``dataset`` after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < seconds or images == 0:
        inputs, _ = next(iterator)
        images += int(tf.nest.flatten(inputs)[0].shape[0])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": images, "wall_s": wall, "cpu_s": cpu, "images_per_s": images / wall,
            "images_per_cpu_s": images / max(cpu, 1e-9)}


def _first_batch(config, paths: list[str]):
    """The first batch's inputs of the evaluation pipeline (fixed order, gaps shown missing, no crops) at the
    sides training decodes at: the image at the augmentation's load size, not cropped to the input size."""
    from xrayscatter.resnet.data import augment_load_size, make_dataset

    settings = config.resnet
    load_size = augment_load_size(settings)
    config = dataclasses.replace(config, resnet=dataclasses.replace(settings, input_size=load_size, augment=False))
    inputs, _ = next(iter(make_dataset(config, "train", training=False, cache=False, paths=paths)))
    return inputs


def bench_input(config, work_dir: str | Path = DEFAULT_WORK_DIR, images: int = 32, batch_size: int = 16,
                seconds: float = 15.0, processes: int = 0, json_path: str | Path | None = None) -> dict:
    """Measure and print the per-core rates of the two record layouts, the cores per GPU, and their ratios.

    Args:
        config: the pipeline (``pipelines/paper.toml``): image size, ResNet inputs, augmentation.
        work_dir: where the bench data set is simulated (reused on the next run).
        images: images in the bench data set (the pipeline repeats it; cache off, so each is decoded every pass).
        batch_size: per-core batches (the pipeline's 256 would hold ~360 MB per batch; the cost per image
            does not depend on it).
        seconds: measuring time per layout.
    """
    from rich.console import Console

    from xrayscatter.dataset import dataset_dir
    from xrayscatter.resnet.data import augment_load_size, make_dataset, stored_view_size

    console = Console()
    started = print_conditions(console, "input")
    settings = config.resnet
    config = dataclasses.replace(config, resnet=dataclasses.replace(settings, batch_size=batch_size, cache=False,
                                                                    data_service=""))
    side = stored_view_size(config)
    with console.status(f"simulating {images} images of {config.simulate.image_size}² px (once)"):
        data = bench_dataset(config, work_dir, f"bench-input-{config.simulate.image_size}", images,
                             images_per_run=4, processes=processes)
    folder = dataset_dir(data)
    full_paths = strip_resized(folder, folder.parent / f"{folder.name}-full-image")
    stored_paths = [str(p) for p in sorted(folder.glob("*.tfrecord-*"))]
    sizes = {"full image": sum(Path(p).stat().st_size for p in full_paths) / images,
             "stored resized": sum(Path(p).stat().st_size for p in stored_paths) / images}

    difference = float(max(np.abs(a - b).max() for a, b in zip(
        tf.nest.flatten(_first_batch(data, full_paths)), tf.nest.flatten(_first_batch(data, stored_paths)))
        if a.dtype.is_floating and not np.isnan(a.numpy()).all()))

    rates = {}
    for name, paths in (("full image", full_paths), ("stored resized", stored_paths)):
        with console.status(f"training input pipeline, {name}, one core"):
            rates[name] = pipeline_rate(one_core(make_dataset(data, "train", training=True, paths=paths)), seconds)
    rows = []
    for name, r in rates.items():
        r["cores_per_gpu"] = GPU_IMAGES_PER_SECOND / r["images_per_cpu_s"]
        r["record_bytes"] = sizes[name]
        rows.append((name, f"{r['record_bytes'] / 1e6:.2f} MB", f"{r['images_per_s']:.1f}",
                     f"{r['images_per_cpu_s']:.1f}", f"{r['cores_per_gpu']:.1f}"))
    console.print(results_table(
        f"training input pipeline, pipeline {config.name}: {config.simulate.image_size}² records → "
        f"{settings.input_size} px batches of {batch_size} (detail {settings.detail_size} px, "
        f"{len(settings.input_channels)} channels, augmentation {'on' if settings.augment else 'off'}), one thread",
        ("records", "per image on disk", "images/s (wall)", "images per CPU s", f"cores per GPU at {GPU_IMAGES_PER_SECOND:g}/s"),
        rows))
    if side:
        console.print(f"stored side {side} px; max |stored resized − full image| over the first batch's inputs "
                      f"(evaluation pipeline at training's sides, no crops): {difference:.1e}")
    else:
        load_size = augment_load_size(settings)
        console.print(f"no resized image stored: training makes its image at {load_size} px "
                      f"and the detail at {settings.detail_size} px (config.stored_view_size), each from the full "
                      f"image, so both layouts are the same records")
    console.print(f"GPU: {GPU_NAME}; target one {HOST_CORES}-core host per GPU → ≥ {TARGET_PER_CORE:.1f} "
                  f"images per core-second, without the tf.data service.")
    old, new = rates["full image"], rates["stored resized"]
    ratios = [
        Ratio("input", "images/s per core, full 1024² image (schema v2 records)", old["images_per_cpu_s"],
              round(TARGET_PER_CORE, 1), note=f"{old['cores_per_gpu']:.0f} cores per GPU"),
        Ratio("input", "images/s per core, stored resized (schema v3 records)", new["images_per_cpu_s"],
              round(TARGET_PER_CORE, 1), note=f"{new['cores_per_gpu']:.1f} cores per GPU"),
        Ratio("input", "cores to feed one A100 at 1,770 images/s", new["cores_per_gpu"], HOST_CORES, at_most=True,
              note="stored resized"),
    ]
    result = {"pipeline": config.name, "image_size": config.simulate.image_size, "input_size": settings.input_size,
              "detail_size": settings.detail_size, "stored_side": side, "batch_size": batch_size, "images": images,
              "gpu_images_per_second": GPU_IMAGES_PER_SECOND, "max_difference": difference, "rates": rates}
    return finish(console, result, ratios, json_path, started)
