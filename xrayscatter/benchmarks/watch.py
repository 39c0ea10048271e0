"""`xrayscatter bench watch`: how soon a frame is tagged after its file is complete, and how fast ``watch`` can go.

A writer process plays the detector: it writes frames into an empty folder while
:class:`xrayscatter.watch.FolderWatch` runs in this process (with the model), and logs when each
file was complete (closed). The watch's own callback logs when each frame's line was written.

* **latency** at ``rate`` frames/s, for 1024² Pilatus-like int32 TIFFs (one file per frame,
  written in place as camserver does) and for Eiger-like HDF5 (a master written first, then data
  files of ``frames_per_file`` frames, bitshuffle+LZ4 chunks of one frame, each complete when
  closed): median and 95th percentile of (line written − file complete). Targets: median < 0.5 s,
  p95 < 1 s at 10 frames/s.
* **sustained rate**: ``burst`` frames dropped into the folder at once (renamed in from a hidden
  folder) — the watch drains the backlog at its highest rate, shown for information — then ``seconds``
  of writing at 0.95, 0.9, 0.85, 0.7, 0.5, 0.35, 0.25 × ``predict``'s rate (``run_predictions``, the code of
  ``bench predict``, on the same files in the same run) in turn until the backlog does not grow (the
  latency of the last quarter is not above the first quarter's by more than a second): the highest
  rate held is the sustained rate. Target: sustained ≥ 0.9 × predict. (The ladder is of predict's rate,
  which the target names; a ladder of the drained rate started low whenever the short burst's start-up
  — the first file noticed, the first frames read — weighed on it.)

Both rates and the latencies are measured after every batch size the watch uses (1, 2, 4, 8, 16) has
run once at the frame size: the first forward pass of each builds its kernels (0.3–4 s each on a busy
2-core machine), a one-time cost ``watch`` pays on its first frames (``warm_up`` at its start takes
the largest part, the graph's first call).

The machine's load average is printed with the results: other processes on a small machine
change every number here. No number is asserted (a benchmark, not a test).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from xrayscatter.benchmarks import results_table
from xrayscatter.benchmarks.predict import pilatus_frames
from xrayscatter.errors import XrayscatterError

TARGET_MEDIAN_S = 0.5
TARGET_P95_S = 1.0
TARGET_RATE = 10.0
TARGET_SUSTAINED_RATIO = 0.9
DISTINCT_FRAMES = 8  # the writer cycles through this many different frames (encoded once)
ROUNDS = 2  # the drained rate and predict's are each the best of this many interleaved passes
CHECK_FRACTIONS = (0.95, 0.9, 0.85, 0.7, 0.5, 0.35, 0.25)  # of predict's rate, tried in turn until one is held
MAKE_A_MODEL = ("no trained model under saved_models/ (and no --model): make a small one with "
                "'xrayscatter simulate run -p pipelines/smoke.toml && xrayscatter train resnet -p pipelines/smoke.toml' "
                "(the default model: 'make simulate train-resnet'), or pass --model")


# --------------------------------------------------------------------------- the writer (another process)
def _tiff_bytes(frame: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, frame)
    return buffer.getvalue()


def _compressed_chunks(frames: list[np.ndarray], folder: Path) -> tuple[list[bytes], int]:
    """Bitshuffle+LZ4 chunks of uint32 frames as the Eiger writes them (compressed once, written directly)."""
    import h5py
    import hdf5plugin

    stack = np.stack([np.where(f < 0, np.iinfo(np.uint32).max, f).astype(np.uint32) for f in frames])
    template = folder / ".template.h5"
    with h5py.File(template, "w") as f:
        f.create_dataset("data", data=stack, chunks=(1, *stack.shape[1:]),
                         **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    with h5py.File(template, "r") as f:
        dataset = f["data"]
        chunks = [dataset.id.read_direct_chunk((i, 0, 0))[1] for i in range(len(frames))]
    template.unlink()
    return chunks, stack.shape[1]


def _write_master(path: Path, prefix: str, files: int, size: int) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("entry/data")
        for k in range(1, files + 1):
            data[f"data_{k:06d}"] = h5py.ExternalLink(f"{prefix}_data_{k:06d}.h5", "/entry/data/data")
        detector = f.create_group("entry/instrument/detector")
        detector["beam_center_x"], detector["beam_center_y"] = 0.5 * size, 0.45 * size
        detector["detector_distance"] = 2.0
        detector["detector_distance"].attrs["units"] = "m"
        f["entry/instrument/beam/incident_wavelength"] = 1.0
        f["entry/instrument/detector/detectorSpecific/pixel_mask"] = np.zeros((size, size), np.uint32)


def _write_data_file(path: Path, chunks: list[bytes], first: int, size: int) -> None:
    import h5py
    import hdf5plugin

    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("/entry/data/data", shape=(len(chunks), size, size), dtype=np.uint32,
                                   chunks=(1, size, size), **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        for i, chunk in enumerate(chunks):
            dataset.id.write_direct_chunk((i, 0, 0), chunk)
        dataset.attrs["image_nr_low"] = first + 1
        dataset.attrs["image_nr_high"] = first + len(chunks)


def writer_process(folder: str, plan: dict, ready, go, log_path: str) -> None:
    """Write what ``plan`` says into ``folder`` on schedule; log ``[file, [frames], complete time]``.

    plan: ``{"kind": "tiff" | "hdf5" | "burst-tiff", "frames": n, "rate": frames/s, "size": px,
    "frames_per_file": n, "prefix": name}``.
    """
    folder = Path(folder)
    size, count, kind = plan["size"], plan["frames"], plan["kind"]
    frames = pilatus_frames(DISTINCT_FRAMES, size, seed=plan.get("seed", 0))
    log = []
    if kind in ("tiff", "burst-tiff"):
        encoded = [_tiff_bytes(f) for f in frames]
        staging = folder / ".staging"
        if kind == "burst-tiff":
            staging.mkdir(exist_ok=True)
            for i in range(count):
                (staging / f"{plan['prefix']}_{i:05d}.tif").write_bytes(encoded[i % len(encoded)])
        ready.set()
        go.wait()
        start = time.time()
        for i in range(count):
            name = f"{plan['prefix']}_{i:05d}.tif"
            if kind == "burst-tiff":
                os.rename(staging / name, folder / name)
            else:
                delay = start + i / plan["rate"] - time.time()
                if delay > 0:
                    time.sleep(delay)
                with open(folder / name, "wb") as f:  # in place, as a detector server writes
                    f.write(encoded[i % len(encoded)])
            log.append([str(folder / name), [0], time.time()])
    else:  # Eiger-like series
        per_file = plan["frames_per_file"]
        chunks, side = _compressed_chunks(frames, folder)
        files = math.ceil(count / per_file)
        prefix = plan["prefix"]
        ready.set()
        go.wait()
        start = time.time()
        master = folder / f"{prefix}_master.h5"
        _write_master(master, prefix, files, side)
        for k in range(files):
            first = k * per_file
            block = [chunks[(first + i) % len(chunks)] for i in range(min(per_file, count - first))]
            delay = start + (first + len(block)) / plan["rate"] - time.time()
            if delay > 0:
                time.sleep(delay)
            _write_data_file(folder / f"{prefix}_data_{k + 1:06d}.h5", block, first, side)
            log.append([str(master), list(range(first, first + len(block))), time.time()])
    Path(log_path).write_text(json.dumps(log))


def run_writer(folder: Path, plan: dict, before_start=None) -> list:
    """Run :func:`writer_process` in a fresh process; returns its log."""
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    log_path = folder / f".writer-{plan['prefix']}.json"
    process = context.Process(target=writer_process, args=(str(folder), plan, ready, go, str(log_path)), daemon=True)
    process.start()
    try:
        if not ready.wait(timeout=600):
            raise XrayscatterError("the writer process did not get ready")
        if before_start is not None:
            before_start()
        go.set()
        process.join(timeout=3600)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    if process.exitcode != 0 or not log_path.exists():
        raise XrayscatterError(f"the writer process failed (exit code {process.exitcode})")
    log = json.loads(log_path.read_text())
    log_path.unlink()
    return log


def _remove_tagged(log: list) -> None:
    """Delete a writer's files once the watch has tagged them (the watch forgets deleted files)."""
    for file in {file for file, _, _ in log}:
        Path(file).unlink(missing_ok=True)


# --------------------------------------------------------------------------- measuring
class _Lines:
    """When each (file, frame) line was written, from the watch's callback."""

    def __init__(self):
        self.times: dict[tuple[str, int], float] = {}
        self.errors: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, record: dict) -> None:
        with self.changed:
            self.times[(record["file"], record["frame"] if record["frame"] is not None else 0)] = time.time()
            if record.get("error"):
                self.errors.append(f"{record['file']}#{record['frame']}: {record['error']}")
            self.changed.notify_all()

    def wait_for(self, keys: list[tuple[str, int]], timeout: float) -> bool:
        deadline = time.time() + timeout
        with self.changed:
            while not all(k in self.times for k in keys):
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


def _latencies(log: list, lines: _Lines) -> list[float]:
    return [lines.times[(file, frame)] - complete for file, frames, complete in log for frame in frames
            if (file, frame) in lines.times]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def _keys(log: list) -> list[tuple[str, int]]:
    return [(file, frame) for file, frames, _ in log for frame in frames]


def per_frame_costs(model, paths: list[Path]) -> dict:
    """Seconds per frame when frames come one by one (batch 1): reading, and the model's pass (attributes and,
    with the beam-centre head, the centre: one forward pass for models with the ``tag`` signature, two before)."""
    from xrayscatter.readers import read_detector_image

    read, forward = [], []
    for path in paths:
        started = time.perf_counter()
        counts = read_detector_image(path)[None]
        read.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.tag(counts)
        forward.append(time.perf_counter() - started)
    return {"read": statistics.median(read), "forward": statistics.median(forward)}


def bench_watch(model: str | Path | None = None, rate: float = TARGET_RATE, seconds: float = 20.0, size: int = 1024,
                frames_per_file: int = 10, burst: int = 96, folder: str | Path | None = None, workers: int = 2,
                batch_size: int = 16, quiet: bool = False) -> dict:
    """Measure and print the latency table and the sustained-rate ratio (see the module docstring).

    Args:
        model: SavedModel (default: the one ``predict`` takes).
        rate: frames/s written in the latency phases.
        seconds: length of each latency phase and of each sustained-rate check.
        size: frame side (px).
        frames_per_file: frames per Eiger-like data file.
        burst: frames dropped at once to measure the sustained rate (and tagged by ``predict`` for the reference).
        folder: where the files go (emptied first; default a temporary folder, removed after).
        quiet: print nothing (tests).

    Returns:
        ``{"latency": {"tiff"|"hdf5": {"median", "p95", "frames", "rate"}}, "predict_rate", "sustained_rate",
        "ratio", "check": {...}, "load", "model", "size", "where_time_goes": {...}}``.
    """
    from rich.console import Console

    from xrayscatter.predict import TaggingModel, default_model, resolve_model_dir, run_predictions, warm_up
    from xrayscatter.watch import FolderWatch

    console = Console(quiet=quiet)
    if model is None:
        try:
            model_dir = default_model()[0]
        except XrayscatterError:
            raise XrayscatterError(MAKE_A_MODEL) from None
    else:
        model_dir = resolve_model_dir(model)
    tagging_model = TaggingModel(model_dir)
    load_before = _load()
    owned = folder is None
    root = Path(tempfile.mkdtemp(prefix="xrayscatter-bench-watch-")) if owned else Path(folder)
    if not owned:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    frames_per_phase = max(2, int(round(rate * seconds)))
    try:
        # ---- predict on the same kind of files (the reference rate)
        reference = root / "reference"
        reference.mkdir()
        with console.status(f"predict on {burst} TIFFs of {size}² px (the reference rate)"):
            run_writer(reference, {"kind": "burst-tiff", "frames": burst, "rate": 0, "size": size, "prefix": "ref"})
            paths = sorted(reference.glob("*.tif"))
            # The first call of every batch size builds its kernels: done here, so that both measure steady state.
            warm_up(tagging_model, (size, size), [b for b in (1, 2, 4, 8, 16, batch_size) if b <= batch_size])
            predict_rate = 0.0

            def predict_pass() -> float:
                started = time.perf_counter()
                results = run_predictions(tagging_model, paths, batch_size=batch_size, workers=workers,
                                          show_progress=False)
                return len(results) / (time.perf_counter() - started)

            predict_rate = predict_pass()
            forward_started = time.perf_counter()
            batch = np.zeros((batch_size, size, size), np.float32)
            tagging_model(batch)
            forward_rate = batch_size / (time.perf_counter() - forward_started)
            one = per_frame_costs(tagging_model, paths[:4])

        # ---- the watch, on an empty folder
        watched = root / "watched"
        watched.mkdir()
        lines = _Lines()
        stop = threading.Event()
        watch = FolderWatch(watched, tagging_model, root / "tags.jsonl", quiet=True, on_result=lines,
                            batch_size=batch_size, workers=workers, master_wait=60.0)
        thread = threading.Thread(target=watch.run, args=(stop,), name="watch", daemon=True)
        thread.start()
        while watch.started is None and thread.is_alive():
            time.sleep(0.05)
        time.sleep(1.0)  # the observer and the first scan
        latency, logs = {}, {}
        for kind in ("tiff", "hdf5"):
            plan = {"kind": kind, "frames": frames_per_phase, "rate": rate, "size": size,
                    "frames_per_file": frames_per_file, "prefix": f"lat_{kind}"}
            with console.status(f"latency: {frames_per_phase} {kind.upper()} frames at {rate:g} frames/s"):
                log = run_writer(watched, plan)
                lines.wait_for(_keys(log), timeout=120 + 10 * seconds)
            values = _latencies(log, lines)
            logs[kind] = log
            latency[kind] = {"median": _percentile(values, 50), "p95": _percentile(values, 95),
                             "max": max(values) if values else float("nan"), "frames": len(values),
                             "expected": len(_keys(log)), "rate": rate}

        # ---- sustained rate: a backlog drained (best of ROUNDS, each beside a predict pass on the same kind of
        # files: the machine's load changes from one minute to the next), then 0.9 × that rate held
        sustained = 0.0
        for round_ in range(ROUNDS):
            with console.status(f"sustained rate, round {round_ + 1}/{ROUNDS}: predict on {burst} TIFFs, then "
                                f"{burst} TIFF frames dropped at once into the watched folder"):
                predict_rate = max(predict_rate, predict_pass())
                log = run_writer(watched, {"kind": "burst-tiff", "frames": burst, "rate": 0, "size": size,
                                           "prefix": f"burst{round_}"})
                lines.wait_for(_keys(log), timeout=120 + 10 * burst)
                first_complete = min(t for _, _, t in log)
                last_line = max(lines.times.get(k, float("nan")) for k in _keys(log))
                if last_line > first_complete:
                    sustained = max(sustained, burst / (last_line - first_complete))
        shutil.rmtree(reference)
        # ---- the highest of these rates the watch holds for `seconds` without a growing backlog
        drained, sustained, checks = sustained, float("nan"), []
        for fraction in CHECK_FRACTIONS:
            check_rate = fraction * predict_rate
            if not (math.isfinite(check_rate) and check_rate > 0):
                break
            count = max(8, int(check_rate * seconds))
            with console.status(f"check: {count} TIFF frames at {check_rate:.1f} frames/s ({fraction:g} × predict)"):
                log = run_writer(watched, {"kind": "tiff", "frames": count, "rate": check_rate, "size": size,
                                           "prefix": f"check{len(checks)}", "seed": 1})
                lines.wait_for(_keys(log), timeout=120 + 10 * seconds)
            _remove_tagged(log)  # 20 s at 100 frames/s of 1024² int32 is 8 GB: the checks would fill a disk
            values = _latencies(log, lines)
            quarter = max(1, len(values) // 4)
            first, last = statistics.median(values[:quarter]), statistics.median(values[-quarter:])
            checks.append({"rate": check_rate, "fraction": fraction, "frames": len(values),
                           "median": _percentile(values, 50), "p95": _percentile(values, 95),
                           "first_quarter_median": first, "last_quarter_median": last,
                           "backlog_growing": last > first + 1.0, "latencies": [round(v, 4) for v in values]})
            if not checks[-1]["backlog_growing"]:
                sustained = check_rate
                break
            time.sleep(min(30.0, last))  # let the backlog drain before the next check
        check = checks[-1] if checks else {}
        stop.set()
        thread.join(timeout=60)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)

    load_after = _load()
    ratio = sustained / predict_rate if predict_rate > 0 else float("nan")
    where = {"forward_alone_frames_per_s": forward_rate, "predict_frames_per_s": predict_rate,
             "batch_1_seconds": one, "watch_errors": lines.errors[:5]}
    rows = []
    for kind, name in (("tiff", f"TIFF int32 {size}²"), ("hdf5", f"Eiger HDF5 {size}², {frames_per_file}/file")):
        m = latency[kind]
        rows.append((name, f"{m['rate']:g}", f"{m['frames']}/{m['expected']}", f"{m['median']:.3f}",
                     f"< {TARGET_MEDIAN_S}", f"{m['p95']:.3f}", f"< {TARGET_P95_S}", f"{m['max']:.3f}"))
    console.print(results_table(
        f"watch latency, file complete → its line in the output (s); model {tagging_model.path}",
        ("files", "frames/s", "frames", "median", "target", "p95", "target", "max"), rows))
    held = ", ".join(f"{c['rate']:.1f}: {'grows' if c['backlog_growing'] else 'held'} "
                     f"({c['first_quarter_median']:.2f} → {c['last_quarter_median']:.2f} s)" for c in checks)
    console.print(results_table(
        f"watch sustained rate vs predict on the same {size}² TIFFs (frames/s)",
        ("predict", "backlog drained at", f"rates written for {seconds:g} s: latency first → last quarter",
         "sustained", "ratio", "target", "forward alone"),
        [(f"{predict_rate:.1f}", f"{drained:.1f}", held, f"{sustained:.1f}", f"{ratio:.2f}",
          f"≥ {TARGET_SUSTAINED_RATIO}", f"{forward_rate:.1f}")],
        first_left=False))
    console.print(f"{load_before} before, {load_after} after (a busy machine slows every number here)")
    if lines.errors:
        console.print(f"[red]{len(lines.errors)} frame(s) reported unreadable[/], e.g. {lines.errors[0]}")
    single = one["read"] + one["forward"]
    console.print(f"frames one by one (batch 1): read {1000 * one['read']:.0f} ms + the model's pass "
                  f"{1000 * one['forward']:.0f} ms = {1000 * single:.0f} ms a frame, at most {1 / single:.1f} frames/s before frames queue up "
                  f"and batches grow (batches of {batch_size}: predict's {predict_rate:.1f} frames/s)")
    if predict_rate < TARGET_RATE:
        console.print(f"predict alone tags {predict_rate:.1f} frames/s of {size}² px here (forward pass alone "
                      f"{forward_rate:.1f}/s): below {TARGET_RATE:g} frames/s no watch can keep up; the time goes "
                      "into the model's forward pass (reading and decoding overlap it).")
    return {"latency": latency, "predict_rate": predict_rate, "sustained_rate": sustained, "ratio": ratio,
            "drained_rate": drained, "checks": checks, "check": check, "load": [load_before, load_after], "model": str(tagging_model.path), "size": size,
            "where_time_goes": where}
