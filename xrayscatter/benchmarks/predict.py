"""`xrayscatter bench predict`: end-to-end tagging of a folder of TIFFs vs the model's own forward rate.

Both rates are measured in the same run on the same images and batch size:

* forward — what :func:`xrayscatter.predict.run_predictions` runs per batch, on batches already
  in memory (the ceiling): the SavedModel's ``serving_default`` and, for a model with the
  beam-centre head, its ``beam_centre`` signature too (predict reports both);
* end to end — ``run_predictions`` on the folder: reading and decoding the TIFFs in reader
  threads, batching, the same forward passes.

The target is end to end ≥ 0.9 × forward, for the smoke model (tiny: reading dominates) and the
default one: reading must hide behind inference. When it is short, a profile of one end-to-end
pass's main thread shows where its time goes (waiting for the reader threads, in the model,
stacking). The files are freshly written, so they are read from the page cache (a cold network
file system adds its own latency, which the reader threads also overlap).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table
from xrayscatter.errors import XrayscatterError

TARGET_RATIO = 0.9
REPEATS = 3  # each rate is the best of this many passes (other processes share the CPU)


def pilatus_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Pilatus-like int32 frames of ``size`` × ``size`` px: a central peak, a ring, Poisson counts, and a band
    of −1 where a module gap is (17 rows at 1024 px, scaled with the size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    radius = np.hypot(yy - 0.45 * size, xx - 0.5 * size)
    frames = []
    for _ in range(count):
        ring = 0.2 * size * (1 + 0.2 * rng.random())
        mean = 2 + 2000 * np.exp(-radius / (0.03 * size)) + 300 * np.exp(-((radius - ring) / (0.01 * size)) ** 2)
        counts = rng.poisson(mean).astype(np.int32)
        counts[size // 3: size // 3 + max(1, round(17 * size / 1024)), :] = -1  # module gap, as Pilatus writes it
        frames.append(counts)
    return frames


def write_tiff_folder(folder: Path, images: int, size: int, seed: int = 0) -> list[Path]:
    """``images`` Pilatus-like int32 TIFFs (:func:`pilatus_frames`) in ``folder``."""
    import tifffile

    paths = []
    for i, counts in enumerate(pilatus_frames(images, size, seed)):
        path = folder / f"frame_{i:05d}.tif"
        tifffile.imwrite(path, counts)
        paths.append(path)
    return paths


def forward(model, batch: np.ndarray) -> None:
    """The model's work on one batch, as ``run_predictions`` does it (attributes, and the beam centre if any)."""
    model.tag(batch)


def forward_rate(model, batches: list[np.ndarray]) -> float:
    """Images/s of the model alone on in-memory batches."""
    start = time.perf_counter()
    for batch in batches:
        forward(model, batch)
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


def profile_end_to_end(model, paths: list[Path], batch_size: int, workers: int, top: int = 8) -> list[dict]:
    """cProfile of one end-to-end pass (the main thread: waiting for files, the model, stacking): top entries
    by cumulative time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    end_to_end_rate(model, paths, batch_size, workers)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, function), (_, calls, _, cumulative, _) in stats.stats.items():
        entries.append({"function": f"{Path(filename).name}:{line}({function})", "calls": calls,
                        "cumulative_s": cumulative})
    entries.sort(key=lambda e: -e["cumulative_s"])
    return [e for e in entries if "profile_end_to_end" not in e["function"]][:top]


def measure_model(model_dir, images: int, size: int, batch_size: int, workers: int, console) -> dict:
    """Forward, end-to-end and read-only images/s of one model on a fresh folder of TIFFs."""
    from xrayscatter.predict import TaggingModel, resolve_model_dir
    from xrayscatter.readers import read_detector_image

    tagging_model = TaggingModel(resolve_model_dir(model_dir))
    with tempfile.TemporaryDirectory(prefix="xrayscatter-bench-predict-") as folder:
        with console.status(f"writing {images} TIFFs of {size}² px"):
            paths = write_tiff_folder(Path(folder), images, size)
        counts = [read_detector_image(p) for p in paths]
        batches = [np.stack(counts[i:i + batch_size]) for i in range(0, len(counts), batch_size)]
        del counts
        with console.status("warming up"):
            forward(tagging_model, batches[0])  # first call builds the graph's kernels
        best = {"forward": 0.0, "end_to_end": 0.0, "reading": 0.0}
        for repeat in range(REPEATS):  # interleaved, so a busy moment of the machine hits both
            with console.status(f"{tagging_model.path}: pass {repeat + 1}/{REPEATS}: forward, end to end, reading"):
                best["forward"] = max(best["forward"], forward_rate(tagging_model, batches))
                best["end_to_end"] = max(best["end_to_end"], end_to_end_rate(tagging_model, paths, batch_size, workers))
                best["reading"] = max(best["reading"], read_rate(paths, workers))
        ratio = best["end_to_end"] / best["forward"]
        profile = profile_end_to_end(tagging_model, paths, batch_size, workers) if ratio < TARGET_RATIO else []
    return {**best, "ratio": ratio, "model": str(tagging_model.path), "beam_centre": tagging_model.has_beam_centre,
            "profile": profile}


def bench_predict(models: list[str | Path | None] | None = None, images: int = 64, size: int = 1024,
                  batch_size: int = 16, workers: int | None = None, json_path: str | Path | None = None) -> dict:
    """Print and return forward, end-to-end and read-only images/s and the end-to-end / forward ratio per model.

    Args:
        models: SavedModel folders (None in the list: the newest under saved_models/, as ``predict``);
            a folder without a version is skipped with a line saying so.
        images: number of TIFFs written (a multiple of ``batch_size`` keeps batches full).
        size: their side (px).
        batch_size: images per forward pass, for both rates.
        workers: reader threads (default as ``predict``).
    """
    from rich.console import Console

    from xrayscatter.predict import _default_workers, reuse_freed_memory_for_frames

    if images < batch_size:
        raise XrayscatterError(f"--images ({images}) must be ≥ --batch-size ({batch_size})")
    workers = workers or _default_workers()
    reuse_freed_memory_for_frames()  # as predict does, so that both rates run under the same allocator
    console = Console()
    started = print_conditions(console, "predict")
    rows, ratios = [], []
    for model in models or [None]:
        try:
            rows.append(measure_model(model, images, size, batch_size, workers, console))
            ratios.append(None)  # filled below, in the models' order
        except XrayscatterError as e:
            console.print(f"model {model or 'saved_models/'}: skipped ({e})", highlight=False)
            ratios.append(Ratio("predict", f"end to end / forward, {model or 'saved_models/'}", None, TARGET_RATIO,
                                note=f"skipped: {e}"))
    console.print(results_table(
        f"predict throughput: {images} TIFFs of {size}² px, batch {batch_size}, {workers} reader threads",
        ("model", "forward alone (img/s)", "end to end (img/s)", "ratio", "target", "reading alone (img/s)"),
        [(r["model"], f"{r['forward']:.1f}", f"{r['end_to_end']:.1f}", f"{r['ratio']:.2f}", f"≥ {TARGET_RATIO}",
          f"{r['reading']:.1f}") for r in rows]))
    slots = iter(i for i, ratio in enumerate(ratios) if ratio is None)
    for r in rows:
        ratios[next(slots)] = Ratio("predict", f"end to end / forward, {r['model']}", r["ratio"], TARGET_RATIO,
                                    note=f"{r['end_to_end']:.1f} / {r['forward']:.1f} img/s; reading alone "
                                         f"{r['reading']:.1f}")
        if r["profile"]:
            console.print(results_table(f"where one end-to-end pass of {r['model']} spends its main thread's time",
                                        ("function", "calls", "cumulative s"),
                                        [(e["function"], str(e["calls"]), f"{e['cumulative_s']:.2f}")
                                         for e in r["profile"]]))
    result = {"images": images, "size": size, "batch_size": batch_size, "workers": workers, "models": rows}
    return finish(console, result, ratios, json_path, started)
