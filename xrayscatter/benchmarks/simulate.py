"""`xrayscatter bench simulate`: simulator images/s per process, and the 1 → 2 process speed-up."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from xrayscatter.benchmarks import results_table
from xrayscatter.simulate.generator import simulate_image

SEED = 12345
IMAGES_PER_RUN = 20  # realistic: the per-run set-up (q maps, beamstop) is amortised as in a real data set


def _generate(first: int, count: int, size: int) -> float:
    """Simulate ``count`` images from index ``first``; returns the seconds it took."""
    start = time.perf_counter()
    for i in range(first, first + count):
        simulate_image(SEED, i, images_per_run=IMAGES_PER_RUN, image_size=size)
    return time.perf_counter() - start


def _count_for(seconds: float, size: int) -> int:
    """How many images fill about ``seconds`` at this size (from a short probe)."""
    probe = max(2, 8 * (256 // size) ** 2) if size <= 256 else 2
    elapsed = _generate(10_000, probe, size)
    return max(probe, int(seconds * probe / max(elapsed, 1e-6)))


def measure(size: int, seconds: float, processes: int = 2) -> dict:
    """Rates at one image size: 1 process in this one, then ``processes`` workers side by side."""
    count = _count_for(seconds, size)
    one = count / _generate(0, count, size)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(_generate, [20_000 + k for k in range(processes)], [1] * processes, [size] * processes))  # warm up
        start = time.perf_counter()
        futures = [pool.submit(_generate, 30_000 + k * count, count, size) for k in range(processes)]
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    many = processes * count / wall
    return {"size": size, "images": count, "rate_1": one, f"rate_{processes}": many, "per_process": many / processes,
            "speedup": many / one}


def bench_simulate(sizes: list[int], seconds: float = 10.0) -> list[dict]:
    """Print and return images/s at each size for 1 and 2 processes. Targets (2-core CPU):
    ≥ 20 images/s per core at 256², ≥ 2 at 1024², speed-up ≥ 1.7 with 2 processes."""
    from rich.console import Console

    targets = {256: 20.0, 1024: 2.0}
    rows = [measure(size, seconds) for size in sizes]
    Console().print(results_table(
        "simulator throughput (images/s)",
        ("size (px)", "images/s, 1 process", "images/s, 2 processes", "per process", "speed-up 1→2", "target/core"),
        [(f"{r['size']}²", f"{r['rate_1']:.1f}", f"{r['rate_2']:.1f}", f"{r['per_process']:.1f}", f"{r['speedup']:.2f}",
          f"≥ {targets[r['size']]:g}" if r["size"] in targets else "-") for r in rows], first_left=False))
    return rows
