"""Tag a folder of real detector images with a SavedModel: ``xrayscatter predict DIR/``.

Files are read by a pool of threads (:func:`xrayscatter.readers.read_detector_image`)
while the main thread runs the model, so reading overlaps inference. Images of the
same shape are batched together (the model takes raw counts of any size and pads and
resizes in its graph, so images of different sizes go into different batches rather
than being padded here, which would change what the model sees).

Exit codes of the command (``predict_directory`` returns the failures; the CLI maps):

* 0 — every file was read and tagged;
* 1 — some files could not be read (each is named with its reason; the others are tagged);
* 2 — nothing was done: missing or empty folder, missing or unusable model, bad option.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from xrayscatter.attributes import ATTRIBUTES, slug
from xrayscatter.errors import XrayscatterError
from xrayscatter.files import progress_bar, write_atomically
from xrayscatter.readers import UnreadableImageError, list_detector_files, read_detector_image
from xrayscatter.saved_model import SAVED_MODEL_FILE, newest_version, read_metadata

DEFAULT_MODEL_ROOT = Path("saved_models")
# The models --model can default to: the ResNet, and the evaluation's attribute model (SVMs on the
# learned features), which is taken only when its stored held-out score beats the ResNet's own on
# the same images (see default_model).
DEFAULT_MODEL_NAMES = ("attributes", "resnet")
DEFAULT_THRESHOLD = 0.5
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TABLE_ROWS = 200  # rows shown on the terminal; the output file has them all
TOP_ATTRIBUTES = 3


# --------------------------------------------------------------------------- the model
def default_model(root: str | Path = DEFAULT_MODEL_ROOT) -> tuple[Path, str]:
    """The model ``predict`` uses without ``--model``, and why.

    The newest ResNet, unless the newest attribute model (the evaluation's SVMs) stored a held-out
    comparison against that same ResNet version in which it scored higher: the evaluation scores
    both on the same held-out images (``metadata.json`` → ``holdout_comparison``), so the default
    follows what was measured, not which model came last.

    Raises:
        XrayscatterError: neither model exists under ``root``.
    """
    root = Path(root)
    resnet = newest_version(root / "resnet")
    attributes = newest_version(root / "attributes")
    if attributes is not None:
        comparison = read_metadata(attributes, required=False).get("holdout_comparison") or {}
        ours, theirs = comparison.get("attributes_model_mAP"), comparison.get("resnet_mAP")
        compared = comparison.get("resnet_saved_model")
        same_resnet = resnet is None or (compared is not None and Path(compared).resolve() == resnet.resolve())
        if ours is not None and theirs is not None and same_resnet and ours > theirs:
            return attributes, (f"attribute model: held-out mAP {100 * ours:.1f} % vs the ResNet's "
                                f"{100 * theirs:.1f} % on the same images")
        if resnet is None:
            return attributes, "attribute model (no ResNet found)"
        if ours is not None and theirs is not None and same_resnet:
            return resnet, (f"ResNet: held-out mAP {100 * theirs:.1f} % vs the attribute model's "
                            f"{100 * ours:.1f} % on the same images")
        return resnet, "ResNet (the attribute model has no held-out comparison with this ResNet)"
    if resnet is not None:
        return resnet, "ResNet"
    looked = " or ".join(f"{root / name}/<version>/" for name in DEFAULT_MODEL_NAMES)
    raise XrayscatterError(f"{root}: no trained model found (looked for {looked}); run 'xrayscatter train resnet' "
                           "or pass --model")


def resolve_model_dir(model: str | Path | None = None, root: str | Path = DEFAULT_MODEL_ROOT) -> Path:
    """The SavedModel folder to use.

    Args:
        model: a SavedModel folder (holding ``saved_model.pb``) or a model folder of
            integer versions (the newest is taken); None → :func:`default_model`.
        root: where the project's models live.

    Raises:
        XrayscatterError: nothing usable there (the message says where it looked).
    """
    if model is not None:
        model = Path(model)
        if (model / SAVED_MODEL_FILE).is_file():
            return model
        version = newest_version(model)
        if version is not None:
            return version
        if not model.exists():
            raise XrayscatterError(f"{model}: model folder not found")
        raise XrayscatterError(f"{model}: not a SavedModel (no saved_model.pb in it or in an integer version "
                               "subfolder)")
    return default_model(root)[0]


class TaggingModel:
    """A SavedModel's ``serving_default`` signature with its attribute names and thresholds.

    The signature takes ``images`` float32 (batch, height, width) raw counts (NaN or
    negative = missing) and returns either ``probabilities`` (ResNet) or ``scores``
    and ``decisions`` (attribute model), shape (batch, A).

    Attributes:
        path: the SavedModel folder.
        attributes: A attribute names (from ``assets.extra/metadata.json``).
        thresholds: (A,) float32; yes when score ≥ threshold (used unless the model
            outputs its own ``decisions``).
        score_name: ``"probability"`` or ``"score"`` (what the numbers are).
        has_beam_centre: the model also estimates the beam centre (``beam_centre`` signature).
    """

    def __init__(self, path: str | Path):
        from xrayscatter.tf_runtime import import_tensorflow

        tf = import_tensorflow()
        self.path = Path(path)
        metadata = read_metadata(self.path, required=False)
        try:
            self._loaded = tf.saved_model.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - TF raises many types for a broken SavedModel
            raise XrayscatterError(f"{self.path}: cannot load the SavedModel ({type(e).__name__}: {e})") from None
        signature = self._loaded.signatures.get("serving_default")
        if signature is None:
            raise XrayscatterError(f"{self.path}: the SavedModel has no 'serving_default' signature "
                                   f"(it has {sorted(self._loaded.signatures)})")
        inputs = signature.structured_input_signature[1]
        if list(inputs) != ["images"]:
            raise XrayscatterError(f"{self.path}: 'serving_default' takes {sorted(inputs)}, expected 'images'")
        outputs = signature.structured_outputs
        if "probabilities" in outputs:
            self._score_key, self.score_name = "probabilities", "probability"
        elif "scores" in outputs:
            self._score_key, self.score_name = "scores", "score"
        else:
            raise XrayscatterError(f"{self.path}: 'serving_default' outputs {sorted(outputs)}, expected "
                                   "'probabilities' or 'scores'")
        self._decision_key = "decisions" if "decisions" in outputs else None
        self._signature = signature
        num_attributes = int(outputs[self._score_key].shape[-1])
        self.attributes = _attribute_names(metadata, num_attributes, self.path)
        self.thresholds = _thresholds(metadata, self.attributes, self.path)
        self.input_size = metadata.get("input_size")
        self._beam_signature = self._loaded.signatures.get("beam_centre")
        self.has_beam_centre = self._beam_signature is not None

    def __call__(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W) float32 counts → scores (B, A) float32 and decisions (B, A) int32 0/1."""
        import tensorflow as tf

        outputs = self._signature(images=tf.constant(counts, tf.float32))
        scores = outputs[self._score_key].numpy()
        if self._decision_key is not None:
            decisions = outputs[self._decision_key].numpy().astype(np.int32)
        else:
            decisions = (scores >= self.thresholds).astype(np.int32)
        return scores, decisions

    def beam_centre(self, counts: np.ndarray) -> np.ndarray | None:
        """(B, H, W) float32 counts → (B, 2) float32 estimated beam centre (x, y) px, or None without the head."""
        import tensorflow as tf

        if self._beam_signature is None:
            return None
        return self._beam_signature(images=tf.constant(counts, tf.float32))["beam_centre"].numpy()


def _attribute_names(metadata: dict, count: int, path: Path) -> tuple[str, ...]:
    names = metadata.get("attributes")
    if names is None:
        if count == len(ATTRIBUTES):
            return ATTRIBUTES
        return tuple(f"attribute_{i}" for i in range(count))
    if len(names) != count:
        raise XrayscatterError(f"{path}: metadata lists {len(names)} attributes but the model outputs {count}")
    return tuple(names)


def _thresholds(metadata: dict, attributes: tuple[str, ...], path: Path) -> np.ndarray:
    """Per-attribute decision thresholds from metadata ``thresholds`` (list or {name: value}); 0.5 if absent."""
    stored = metadata.get("thresholds")
    if stored is None:
        return np.full(len(attributes), DEFAULT_THRESHOLD, np.float32)
    if isinstance(stored, dict):
        return np.array([float(stored.get(name, DEFAULT_THRESHOLD)) for name in attributes], np.float32)
    if len(stored) != len(attributes):
        raise XrayscatterError(f"{path}: metadata has {len(stored)} thresholds for {len(attributes)} attributes")
    return np.asarray(stored, np.float32)


# --------------------------------------------------------------------------- reading ahead
@dataclass
class ImageResult:
    """One file's outcome: scores and decisions (A,), or the reason it failed."""

    path: Path
    scores: np.ndarray | None = None
    decisions: np.ndarray | None = None
    error: str | None = None
    beam_xy: np.ndarray | None = None  # (2,) estimated beam centre (x, y) px, when the model has the head
    shape: tuple[int, int] | None = None  # (height, width) px of the image

    @property
    def beam_on_image(self) -> bool | None:
        """Whether the estimated beam centre lies on the image (None without an estimate)."""
        if self.beam_xy is None or self.shape is None:
            return None
        x, y = self.beam_xy
        return bool(0 <= x < self.shape[1] and 0 <= y < self.shape[0])


def _read_one(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return read_detector_image(path), None
    except UnreadableImageError as e:
        return None, e.reason
    except MemoryError:
        return None, "unreadable (too large for memory)"
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the batch
        return None, f"unreadable ({type(e).__name__}: {e})"


def read_ahead(paths: Iterable[Path], workers: int, lookahead: int) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """Yield (path, counts or None, reason or None) in order while ``workers`` threads read ahead.

    At most ``lookahead`` files are being read or waiting, which bounds memory.
    """
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        pending = deque((p, pool.submit(_read_one, p)) for p in islice(paths, lookahead))
        while pending:
            path, future = pending.popleft()
            following = next(paths, None)
            if following is not None:
                pending.append((following, pool.submit(_read_one, following)))
            yield (path, *future.result())


_ALLOCATOR_TUNED = False


def reuse_freed_memory_for_frames() -> None:
    """Ask glibc's malloc to keep large freed blocks for reuse instead of returning them to the OS.

    Each 1024² frame is decoded into fresh 4 MB arrays and each batch is a fresh 64 MB array.
    By default glibc serves such sizes with mmap and unmaps them on free, so every new array
    page-faults its memory in again: about half the reading time (measured: 16 frames read
    and stacked in 0.10 s before, 0.05 s after). Raising the mmap and trim thresholds keeps
    the memory in the heap (the process keeps its peak size). No-op where glibc is absent.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        libc.mallopt(m_mmap_threshold, 512 << 20)  # returns 0 (and changes nothing) if refused
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


# --------------------------------------------------------------------------- the command
def predict_directory(
    directory: str | Path,
    model: str | Path | TaggingModel | None = None,
    output: str | Path | None = None,
    recursive: bool = False,
    glob: str | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    quiet: bool = False,
) -> list[tuple[Path, str]]:
    """Tag every detector image of a folder; print a table; optionally write CSV/JSON Lines.

    Args:
        directory: folder of detector files (see :func:`xrayscatter.readers.list_detector_files`).
        model: SavedModel folder or model folder of versions; None → :func:`default_model` (the one
            the stored held-out scores favour; printed with the reason); or a loaded :class:`TaggingModel`.
        output: ``.csv`` or ``.jsonl`` file, one row per file (failed files have an ``error``),
            every attribute's score and 0/1 decision; written atomically.
        recursive, glob: which files (see ``list_detector_files``).
        batch_size: images per forward pass.
        workers: reading threads (default: min(4, CPUs)).
        quiet: no table or progress bar (benchmarks).

    Returns:
        The failures, [(path, reason)], in file order (empty when all were tagged).

    Raises:
        XrayscatterError: folder missing or without images, model missing or unusable,
            bad output name or batch size. Nothing is written then.
    """
    if batch_size < 1:
        raise XrayscatterError(f"--batch-size must be ≥ 1, got {batch_size}")
    output_format = _output_format(output) if output is not None else None
    paths = list_detector_files(directory, recursive=recursive, glob=glob)
    if output is not None:  # a previous run's output inside the folder is not an image to tag
        paths = [p for p in paths if p.resolve() != Path(output).resolve()]
        if not paths:
            raise XrayscatterError(f"{directory}: no detector images besides the output file {output}")
    if model is None:
        path, reason = default_model()
        if not quiet:
            from rich.console import Console

            Console(stderr=True).print(f"model {path}: {reason}", highlight=False)
        model = path
    tagging_model = model if isinstance(model, TaggingModel) else TaggingModel(resolve_model_dir(model))

    started = time.perf_counter()
    results = run_predictions(tagging_model, paths, batch_size=batch_size,
                              workers=workers or _default_workers(), show_progress=not quiet)
    seconds = time.perf_counter() - started

    if output is not None:
        write_predictions(results, tagging_model, Path(output), output_format)
    if not quiet:
        print_summary(results, tagging_model, Path(directory), seconds, output)
    return [(r.path, r.error) for r in results if r.error is not None]


def run_predictions(model: TaggingModel, paths: list[Path], batch_size: int = 16, workers: int = 2,
                    show_progress: bool = True) -> list[ImageResult]:
    """Read and tag ``paths``; one :class:`ImageResult` per path, in the same order.

    Reader threads decode the next files while this thread runs the model (TF releases the
    GIL). The model runs here rather than in a thread of its own: on a small CPU a third
    busy stage only steals cores from TF's intra-op threads (measured slower).
    """
    from rich.console import Console

    reuse_freed_memory_for_frames()
    results = [ImageResult(path) for path in paths]
    waiting: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}  # same-shape images, not yet a batch

    progress = progress_bar("predict", fields=("rate",), console=Console(stderr=True), disable=not show_progress,
                            transient=True)
    started = time.perf_counter()
    done = 0

    def run(batch: list[tuple[int, np.ndarray]]) -> None:
        nonlocal done
        indices = [i for i, _ in batch]
        stack = np.stack([counts for _, counts in batch])
        try:
            scores, decisions = model(stack)
            beams = model.beam_centre(stack) if model.has_beam_centre else None
        except Exception as e:  # noqa: BLE001 - a failed batch is reported per file, the others go on
            for i in indices:
                results[i].error = f"prediction failed ({type(e).__name__}: {str(e).splitlines()[0]})"
        else:
            for row, i in enumerate(indices):
                results[i].scores, results[i].decisions = scores[row], decisions[row]
                results[i].shape = stack.shape[1:]
                if beams is not None:
                    results[i].beam_xy = beams[row]
        done += len(indices)
        progress.update(task, advance=len(indices), rate=f"{done / (time.perf_counter() - started):.1f} img/s")

    with progress:
        task = progress.add_task("", total=len(paths), rate="– img/s")
        lookahead = 2 * batch_size + workers
        for index, (path, counts, reason) in enumerate(read_ahead(paths, workers, lookahead)):
            if reason is not None:
                results[index].error = reason
                progress.advance(task)
                continue
            group = waiting.setdefault(counts.shape, [])
            group.append((index, counts))
            if len(group) == batch_size:
                run(waiting.pop(counts.shape))
        for shape in list(waiting):
            run(waiting.pop(shape))
    return results


# --------------------------------------------------------------------------- output
def _output_format(output: str | Path) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise XrayscatterError(f"{output}: unknown output format '{suffix}' (use .csv or .jsonl)")
    return OUTPUT_FORMATS[suffix]


def prediction_rows(results: list[ImageResult], model: TaggingModel) -> list[dict]:
    """One flat dict per file: file, error, tags, (beam_x, beam_y, beam_on_image when the model estimates the
    beam centre), then ``<slug>_<score name>`` and ``<slug>_decision``."""
    rows = []
    for result in results:
        row = {"file": str(result.path), "error": result.error or "", "tags": ""}
        if result.error is None:
            row["tags"] = ";".join(n for n, d in zip(model.attributes, result.decisions) if d)
        if model.has_beam_centre:
            ok = result.beam_xy is not None
            row["beam_x"] = f"{result.beam_xy[0]:.1f}" if ok else ""
            row["beam_y"] = f"{result.beam_xy[1]:.1f}" if ok else ""
            row["beam_on_image"] = int(result.beam_on_image) if ok else ""
        for i, name in enumerate(model.attributes):
            ok = result.error is None
            row[f"{slug(name)}_{model.score_name}"] = f"{result.scores[i]:.6g}" if ok else ""
            row[f"{slug(name)}_decision"] = int(result.decisions[i]) if ok else ""
        rows.append(row)
    return rows


def prediction_records(results: list[ImageResult], model: TaggingModel) -> list[dict]:
    """One JSON-able dict per file: file, error, tags, {name: score}, {name: 0/1}."""
    key = "probabilities" if model.score_name == "probability" else "scores"
    records = []
    for result in results:
        if result.error is not None:
            records.append({"file": str(result.path), "error": result.error})
            continue
        record = {
            "file": str(result.path),
            "error": None,
            "tags": [n for n, d in zip(model.attributes, result.decisions) if d],
            key: {n: float(s) for n, s in zip(model.attributes, result.scores)},
            "decisions": {n: int(d) for n, d in zip(model.attributes, result.decisions)},
        }
        if result.beam_xy is not None:
            record["beam_centre"] = {"x": round(float(result.beam_xy[0]), 2), "y": round(float(result.beam_xy[1]), 2),
                                     "on_image": result.beam_on_image}
        records.append(record)
    return records


def write_predictions(results: list[ImageResult], model: TaggingModel, output: Path, output_format: str) -> Path:
    """Write CSV or JSON Lines to ``output`` atomically (temporary name in the same folder, then rename)."""
    buffer = io.StringIO(newline="")
    if output_format == "csv":
        rows = prediction_rows(results, model)
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for record in prediction_records(results, model):
            buffer.write(json.dumps(record) + "\n")
    return write_atomically(output, buffer.getvalue())


def print_summary(results: list[ImageResult], model: TaggingModel, directory: Path, seconds: float,
                  output: str | Path | None) -> None:
    """Terminal table (file, tags, top attributes) on stdout, failures with reasons, one summary line."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tagged = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]

    def name(path: Path) -> str:
        try:
            return str(path.relative_to(directory))
        except ValueError:
            return str(path)

    if tagged:
        table = Table(title=f"{len(tagged)} image(s) tagged by {model.path}")
        table.add_column("file", overflow="fold")
        table.add_column("tags (yes)", overflow="fold")
        table.add_column(f"top {TOP_ATTRIBUTES} ({model.score_name})", overflow="fold")
        for result in tagged[:TABLE_ROWS]:
            order = np.argsort(-result.scores)[:TOP_ATTRIBUTES]
            top = ", ".join(f"{model.attributes[i]} {result.scores[i]:.2f}" for i in order)
            tags = ", ".join(n for n, d in zip(model.attributes, result.decisions) if d) or "–"
            table.add_row(name(result.path), tags, top)
        console.print(table)
        if len(tagged) > TABLE_ROWS:
            console.print(f"… and {len(tagged) - TABLE_ROWS} more (all rows are in --output)")
    if failed:
        table = Table(title=f"{len(failed)} file(s) not tagged", title_style="bold red")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for result in failed:
            table.add_row(name(result.path), result.error)
        console.print(table)
    rate = len(tagged) / seconds if seconds > 0 else float("nan")
    line = f"{len(tagged)} tagged, {len(failed)} failed in {seconds:.1f} s ({rate:.1f} images/s)"
    if output is not None:
        line += f"; wrote {output}"
    console.print(line, highlight=False)
