"""`xrayscatter bench predict`: end-to-end tagging of a folder of TIFFs vs the model's own forward rate.

Both rates are measured in the same run on the same images and batch size:

* forward — the SavedModel's ``serving_default`` on batches already in memory (the ceiling);
* end to end — :func:`xrayscatter.predict.run_predictions` on the folder: listing, reading
  and decoding the TIFFs in reader threads, batching, the same forward passes.

The target is end to end ≥ 0.8 × forward: reading must hide behind inference. The files
are freshly written, so they are read from the page cache (a cold network file system adds
its own latency, which the reader threads also overlap).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from xrayscatter.benchmarks import results_table
from xrayscatter.errors import XrayscatterError

TARGET_RATIO = 0.8
REPEATS = 3  # each rate is the best of this many passes (other processes share the CPU)


def write_tiff_folder(folder: Path, images: int, size: int, seed: int = 0) -> list[Path]:
    """``images`` Pilatus-like int32 TIFFs of ``size`` × ``size`` px (rings, a gap row, Poisson counts)."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    radius = np.hypot(yy - 0.45 * size, xx - 0.5 * size)
    paths = []
    for i in range(images):
        ring = 0.2 * size * (1 + 0.2 * rng.random())
        mean = 2 + 2000 * np.exp(-radius / (0.03 * size)) + 300 * np.exp(-((radius - ring) / (0.01 * size)) ** 2)
        counts = rng.poisson(mean).astype(np.int32)
        counts[size // 3: size // 3 + 17, :] = -1  # module gap, as Pilatus writes it
        path = folder / f"frame_{i:05d}.tif"
        tifffile.imwrite(path, counts)
        paths.append(path)
    return paths


def forward_rate(model, batches: list[np.ndarray]) -> float:
    """Images/s of the model alone on in-memory batches."""
    start = time.perf_counter()
    for batch in batches:
        model(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def end_to_end_rate(model, paths: list[Path], batch_size: int, workers: int) -> float:
    """Images/s of reading + batching + forward on the files."""
    from xrayscatter.predict import run_predictions

    start = time.perf_counter()
    results = run_predictions(model, paths, batch_size=batch_size, workers=workers, show_progress=False)
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.error is not None]
    if failed:
        raise XrayscatterError(f"{failed[0].path}: {failed[0].error} (benchmark files must all be readable)")
    return len(paths) / seconds


def read_rate(paths: list[Path], workers: int) -> float:
    """Images/s of the reader threads alone (no model)."""
    from xrayscatter.predict import read_ahead

    start = time.perf_counter()
    for _ in read_ahead(paths, workers, lookahead=4 * workers):
        pass
    return len(paths) / (time.perf_counter() - start)


def bench_predict(model: str | Path | None = None, images: int = 64, size: int = 1024, batch_size: int = 16,
                  workers: int | None = None) -> dict:
    """Print and return forward, end-to-end and read-only images/s and the end-to-end / forward ratio.

    Args:
        model: SavedModel (default: the newest under saved_models/, as ``predict``).
        images: number of TIFFs written (a multiple of ``batch_size`` keeps batches full).
        size: their side (px).
        batch_size: images per forward pass, for both rates.
        workers: reader threads (default as ``predict``).
    """
    from rich.console import Console

    from xrayscatter.predict import TaggingModel, _default_workers, resolve_model_dir, reuse_freed_memory_for_frames

    if images < batch_size:
        raise XrayscatterError(f"--images ({images}) must be ≥ --batch-size ({batch_size})")
    workers = workers or _default_workers()
    reuse_freed_memory_for_frames()  # as predict does, so that both rates run under the same allocator
    console = Console()
    tagging_model = TaggingModel(resolve_model_dir(model))
    with tempfile.TemporaryDirectory(prefix="xrayscatter-bench-predict-") as folder:
        with console.status(f"writing {images} TIFFs of {size}² px"):
            paths = write_tiff_folder(Path(folder), images, size)
        from xrayscatter.readers import read_detector_image

        counts = [read_detector_image(p) for p in paths]
        batches = [np.stack(counts[i:i + batch_size]) for i in range(0, len(counts), batch_size)]
        del counts
        with console.status("warming up"):
            tagging_model(batches[0])  # first call builds the graph's kernels
        forward, end_to_end, reading = 0.0, 0.0, 0.0
        for repeat in range(REPEATS):  # interleaved, so a busy moment of the machine hits both
            with console.status(f"pass {repeat + 1}/{REPEATS}: forward, end to end, reading"):
                forward = max(forward, forward_rate(tagging_model, batches))
                end_to_end = max(end_to_end, end_to_end_rate(tagging_model, paths, batch_size, workers))
                reading = max(reading, read_rate(paths, workers))
    ratio = end_to_end / forward
    console.print(results_table(
        f"predict throughput: {images} TIFFs of {size}² px, batch {batch_size}, {workers} reader threads, "
        f"model {tagging_model.path}",
        ("forward alone (img/s)", "end to end (img/s)", "ratio", "target", "reading alone (img/s)"),
        [(f"{forward:.1f}", f"{end_to_end:.1f}", f"{ratio:.2f}", f"≥ {TARGET_RATIO}", f"{reading:.1f}")],
        first_left=False))
    return {"forward": forward, "end_to_end": end_to_end, "ratio": ratio, "reading": reading,
            "images": images, "size": size, "batch_size": batch_size, "workers": workers,
            "model": str(tagging_model.path)}
