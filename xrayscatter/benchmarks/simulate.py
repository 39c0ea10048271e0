"""``xrayscatter bench simulate``: simulator images/s per process, alone and on the whole ``simulate run`` path.

Two paths, each with 1 and with 2 worker processes (spawned, warmed up: the one-time start of a worker,
importing TensorFlow, is timed and printed on its own), at each image size:

* **generator** — ``simulate_image`` alone (physics, detector, counts);
* **simulate run** — the writer's own ``_write_shard`` on whole shards, as ``xrayscatter simulate run``
  runs it in every worker: the generator, the 16-bit PNG encoding of image and mask (and the optional
  ``resized`` feature, when the pipeline's training reads a smaller image), TFRecord writing, the
  shard's SHA-256 and its index entry.

"256²" means at most 256 px on the long side: detectors of other aspect ratios (Pilatus 487 × 619)
are simulated at that long side. The pipeline file gives the rest (``pipelines/paper.toml`` by
default: its ResNet reads a 256-px ``resized`` image, which the writer adds at 1024², not at 256²).
Where the time goes per image is printed for one process: generator, encoding (image PNG, mask
PNG, resized), and writing with hashing (the rest).

Per core = images per CPU second of the workers (robust to other work on the machine; the wall
rates are printed too). The CPU time per image with 1 and 2 processes tells contention between
the processes (it rises) apart from other work taking the cores (the workers get < 1 core each).

Targets (issue 13; 2 cores): the whole path ≥ 20 images/s per core at 256², ≥ 10 at 1024²,
1 → 2 process speed-up ≥ 1.9.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table

IMAGES_PER_RUN = 20  # realistic: the per-run set-up (q maps, beamstop) is amortised as in a real data set
TARGET_PER_CORE = {256: 20.0, 1024: 10.0}
TARGET_SPEEDUP = 1.9


def sized(config, size: int, images: int, output_dir: str):
    """``config`` at ``size`` px with ``images`` train images in shards of ``images_per_shard``, written to ``output_dir``."""
    return dataclasses.replace(config, simulate=dataclasses.replace(
        config.simulate, image_size=size, num_images=images, images_per_run=IMAGES_PER_RUN, val_fraction=0.0,
        test_fraction=0.0, output_dir=output_dir, dataset=f"bench-simulate-{size}"))


def _start_worker(config) -> float:
    """A worker's one-time start: import TensorFlow and what the writer imports, encode one record
    (first-call set-up); returns the seconds it took."""
    start = time.perf_counter()
    from xrayscatter.simulate.writer import keep_freed_memory
    from xrayscatter.tf_runtime import import_tensorflow

    keep_freed_memory()  # as every `simulate run` worker does: both paths run with the same allocator
    import_tensorflow()
    stage_seconds(config, [50_000])
    return time.perf_counter() - start


def _generate(config, image_ids: list[int]) -> tuple[float, float]:
    """Simulate these images (generator alone); returns (wall, CPU) seconds of this worker."""
    from xrayscatter.simulate.generator import simulate_image_from_config

    start, cpu = time.perf_counter(), time.process_time()
    for i in image_ids:
        simulate_image_from_config(config.simulate, config.seed, i)
    return time.perf_counter() - start, time.process_time() - cpu


def _write(config, shard_numbers: list[int]) -> tuple[float, float]:
    """Write these shards as ``simulate run`` does (generator, encoding, writing, index); returns (wall, CPU) s."""
    from xrayscatter.simulate.writer import _write_shard, plan_shards

    shards = plan_shards(config)
    start, cpu = time.perf_counter(), time.process_time()
    for n in shard_numbers:
        _write_shard(config, shards[n])
    return time.perf_counter() - start, time.process_time() - cpu


def stage_seconds(config, image_ids: list[int]) -> dict:
    """CPU seconds per image of each stage of writing one record, in this process (where the time goes)."""
    import numpy as np
    import tensorflow as tf

    from xrayscatter.resnet.data import stored_view_size
    from xrayscatter.schema import PNG_COMPRESSION, encode_png_uint16, encode_resized, serialize_example
    from xrayscatter.simulate.generator import simulate_image_from_config

    side = stored_view_size(config)
    totals = dict.fromkeys(("generator", "image PNG", "mask PNG", "resized", "whole record"), 0.0)
    for i in image_ids:
        start = time.process_time()
        image = simulate_image_from_config(config.simulate, config.seed, i)
        totals["generator"] += time.process_time() - start
        start = time.process_time()
        encode_png_uint16(image.counts)
        totals["image PNG"] += time.process_time() - start
        start = time.process_time()
        tf.io.encode_png(np.asarray(image.valid, np.uint8)[:, :, None], compression=PNG_COMPRESSION).numpy()
        totals["mask PNG"] += time.process_time() - start
        if 0 < side < max(image.counts.shape):  # stored only at a side smaller than the image (0: none)
            start = time.process_time()
            encode_resized(image.counts, image.valid, side)
            totals["resized"] += time.process_time() - start
        start = time.process_time()
        serialize_example(image.counts, image.labels, image.run_id, image.image_id, image.params, mask=image.valid,
                          beam_xy=image.beam_xy, resized_size=side)
        totals["whole record"] += time.process_time() - start
    return {k: v / len(image_ids) for k, v in totals.items()}


def _pool_rate(pool, fn, config, batches: list[list[int]], images: int) -> tuple[float, float, float]:
    """(images/s over the pool, CPU seconds per image in the workers, cores the workers got on average)."""
    start = time.perf_counter()
    times = [future.result() for future in [pool.submit(fn, config, batch) for batch in batches]]
    wall = time.perf_counter() - start
    cpu = sum(c for _, c in times)
    return images / wall, cpu / images, cpu / wall


def measure(config, size: int, seconds: float, processes: int = 2) -> dict:
    """Rates of both paths at one size with 1 and ``processes`` workers (each worker busy ~``seconds``)."""
    context = multiprocessing.get_context("spawn")
    row = {"size": size}
    with tempfile.TemporaryDirectory(prefix="xrayscatter-bench-simulate-") as folder:
        probe = sized(config, size, 2, folder)
        start = time.perf_counter()
        _generate(probe, [10_000, 10_001])  # this process: a probe of the rate (and warm caches)
        per_image = (time.perf_counter() - start) / 2
        count = max(2, int(seconds / per_image / 2))  # images per worker and path (writing costs ~2×)
        row["images_per_worker"] = count
        for workers in (1, processes):
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                start = time.perf_counter()
                [f.result() for f in [pool.submit(_start_worker, probe) for _ in range(workers)]]
                row[f"startup_s_{workers}"] = time.perf_counter() - start
                ids = [[30_000 + k * count + j for j in range(count)] for k in range(workers)]
                (row[f"generator_{workers}"], row[f"generator_cpu_{workers}"],
                 row[f"generator_cores_{workers}"]) = _pool_rate(pool, _generate, probe, ids, workers * count)
                # Whole path: one shard per worker, each of ``count`` images, in a data set of its own.
                data = sized(config, size, workers * count, str(Path(folder) / f"w{workers}"))
                data = dataclasses.replace(data, simulate=dataclasses.replace(data.simulate, shard_size=count))
                (Path(data.simulate.output_dir) / data.simulate.dataset / "shard_index").mkdir(parents=True)
                (row[f"write_{workers}"], row[f"write_cpu_{workers}"],
                 row[f"write_cores_{workers}"]) = _pool_rate(pool, _write, data, [[k] for k in range(workers)],
                                                             workers * count)
        stage_seconds(probe, [50_000])  # this process's first record: one-time set-up (traces), not timed
        row["stages_s"] = stage_seconds(probe, [40_000 + j for j in range(min(count, 4))])
    for path in ("generator", "write"):
        row[f"{path}_per_process_{processes}"] = row[f"{path}_{processes}"] / processes
        row[f"{path}_per_core_{processes}"] = 1.0 / row[f"{path}_cpu_{processes}"]
        row[f"{path}_speedup"] = row[f"{path}_{processes}"] / row[f"{path}_1"]
        # What the speed-up would be if every process had a core of its own: only contention between
        # the processes (memory, caches, threads) lowers it, not other work on the machine.
        row[f"{path}_speedup_cpu"] = processes * row[f"{path}_cpu_1"] / row[f"{path}_cpu_{processes}"]
    return row


def bench_simulate(config, sizes: list[int], seconds: float = 8.0, processes: int = 2,
                   json_path: str | Path | None = None) -> dict:
    """Print and return both paths' images/s at each size, the speed-ups, where the time goes, and the ratios."""
    from rich.console import Console

    console = Console()
    started = print_conditions(console, "simulate")
    rows = []
    for size in sizes:
        with console.status(f"{size}²: generator and simulate run, 1 and {processes} processes"):
            rows.append(measure(config, size, seconds, processes))
    p = processes
    console.print(results_table(
        f"simulator throughput (images/s), pipeline {config.name}, {IMAGES_PER_RUN} images per run; "
        f"size = the long side; CPU ms per image and the cores the workers got (CPU / wall) show whether a "
        f"second process lost time to contention (CPU per image rises) or to other work (cores < processes)",
        ("size", "path", "1 process", f"{p} processes", "per process", f"speed-up 1→{p}", "CPU ms/image 1 / 2",
         "cores got 1 / 2"),
        [(f"{r['size']}²", label, f"{r[f'{key}_1']:.1f}", f"{r[f'{key}_{p}']:.1f}",
          f"{r[f'{key}_per_process_{p}']:.1f}", f"{r[f'{key}_speedup']:.2f}",
          f"{1000 * r[f'{key}_cpu_1']:.0f} / {1000 * r[f'{key}_cpu_{p}']:.0f}",
          f"{r[f'{key}_cores_1']:.2f} / {r[f'{key}_cores_{p}']:.2f}")
         for r in rows for key, label in (("generator", "generator alone"), ("write", "simulate run (whole path)"))]))
    stages = ("generator", "image PNG", "mask PNG", "resized", "whole record")
    console.print(results_table(
        "where one process's time goes (CPU ms per image; 'whole record' = encoding all of it; the rest of "
        "simulate run is writing and hashing)", ("size", *stages, "simulate run"),
        [(f"{r['size']}²", *(f"{1000 * r['stages_s'][s]:.0f}" for s in stages), f"{1000 * r['write_cpu_1']:.0f}")
         for r in rows], first_left=False))
    console.print("worker start-up (spawn + import TensorFlow), once per simulate run: "
                  + ", ".join(f"{r['size']}²: {r[f'startup_s_{p}']:.1f} s for {p}" for r in rows))
    ratios = []
    for r in rows:
        target = TARGET_PER_CORE.get(r["size"])
        if target is not None:
            ratios.append(Ratio("simulate", f"simulate run images/s per core at {r['size']}² ({p} processes)",
                                r[f"write_per_core_{p}"], target,
                                note=f"per CPU second; wall {r[f'write_per_process_{p}']:.1f} per process; "
                                     f"generator alone {r[f'generator_per_core_{p}']:.1f}"))
        ratios.append(Ratio("simulate", f"simulate run speed-up 1 → {p} processes at {r['size']}²",
                            r["write_speedup"], TARGET_SPEEDUP,
                            note=f"wall; workers got {r[f'write_cores_{p}']:.2f} cores; with a core each "
                                 f"(CPU time) {r['write_speedup_cpu']:.2f}; generator alone "
                                 f"{r['generator_speedup']:.2f}"))
    return finish(console, {"pipeline": config.name, "processes": p, "images_per_run": IMAGES_PER_RUN, "rows": rows},
                  ratios, json_path, started)
