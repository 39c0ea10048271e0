"""Tag a folder of real detector images with a SavedModel: ``xrayscatter predict DIR/``.

Every frame is one result: a one-frame file (TIFF, CBF, PNG…) gives one row with frame 0, a
multi-frame file (multi-page TIFF, multi-frame EDF, NumPy stack, HDF5, an Eiger master with its
data files) one row per frame (:mod:`xrayscatter.readers`). A :class:`FrameReader` opens the files
in order in a thread of its own and a pool of threads reads their frames one at a time (a
1000-frame file is never in memory at once) while the main thread runs the model, so reading
overlaps inference. Frames of the same shape are batched together (the model takes raw counts of
any size and pads and resizes in its graph, so frames of different sizes go into different batches
rather than being padded here, which would change what the model sees). ``xrayscatter watch``
(:mod:`xrayscatter.watch`) uses the same reader and batching on files as they arrive.

Exit codes of the command (``predict_directory`` returns the failures; the CLI maps):

* 0 — every frame was read and tagged;
* 1 — some files or frames could not be read (each is named with its reason, ``file#frame`` for
  one frame of a multi-frame file; the others are tagged);
* 2 — nothing was done: missing or empty folder, missing or unusable model, bad option.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from xrayscatter.attributes import ATTRIBUTES, slug
from xrayscatter.config import VIEW_COUNTS
from xrayscatter.errors import XrayscatterError
from xrayscatter.files import progress_bar, write_atomically
from xrayscatter.readers import (FrameSource, UnreadableImageError, drop_linked_data_files, list_input_files,
                                 open_frames, read_detector_image)
from xrayscatter.saved_model import SAVED_MODEL_FILE, newest_version, read_metadata

DEFAULT_MODEL_ROOT = Path("saved_models")
# The models --model can default to: the ResNet, and the evaluation's attribute model (SVMs on the
# learned features), which is taken only when its stored held-out score beats the ResNet's own on
# the same images (see default_model).
DEFAULT_MODEL_NAMES = ("attributes", "resnet")
DEFAULT_THRESHOLD = 0.5
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
HEADER_FIELDS = ("beam_x", "beam_y", "wavelength_angstrom", "distance_m")  # readers' FrameSource.header
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
        has_beam_centre: the model also estimates the beam centre (``beam_centre`` signature; models
            exported since the ``tag`` signature give both from one forward pass).
        views: the probabilities are averaged over this many views of each frame (1, 4 or 8; see
            :func:`dihedral_views`); the beam centre is the model's (the median over the views of its graph; with
            views averaged here, the plain frame's). ResNet models only.
        model_views: the views the SavedModel itself averages over (metadata ``views``, set at export by
            ``resnet.views``; 1 for older models and attribute models), in one forward pass of its graph.

    Args:
        views: None → the model's own ``model_views``. Another count is averaged here, over forward passes of
            the model's one-view signature (``one_view``; ``serving_default`` and ``tag`` when the model itself
            averages none).
    """

    def __init__(self, path: str | Path, views: int | None = None):
        from xrayscatter.tf_runtime import import_tensorflow

        if views is not None and views not in VIEW_COUNTS:
            raise XrayscatterError(f"--views must be one of {', '.join(map(str, VIEW_COUNTS))}, got {views}")

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
        self.model_views = int(metadata.get("views", 1)) if self._score_key == "probabilities" else 1
        self.views = self.model_views if views is None else views
        if self.views > 1 and self._score_key != "probabilities":
            raise XrayscatterError(f"{self.path}: --views needs a ResNet model (probabilities); this one outputs "
                                   f"{self.score_name}s with its own decisions")
        self._beam_signature = self._loaded.signatures.get("beam_centre")
        self._signature, self._tag_signature = signature, self._loaded.signatures.get("tag")
        self._views_here = 1  # views averaged here, over calls of the signatures above
        if self.views != self.model_views:
            self._views_here = self.views
            if self.model_views > 1:  # the model's graph averages views: take its one-view signature
                one_view = self._loaded.signatures.get("one_view")
                if one_view is None:
                    raise XrayscatterError(f"{self.path}: the model averages {self.model_views} views and has no "
                                           f"'one_view' signature, so --views {self.views} cannot be given")
                self._signature = one_view
                self._tag_signature = one_view if "beam_centre" in one_view.structured_outputs else None
        num_attributes = int(outputs[self._score_key].shape[-1])
        self.attributes = _attribute_names(metadata, num_attributes, self.path)
        self.thresholds = _thresholds(metadata, self.attributes, self.path)
        self.input_size = metadata.get("input_size")
        self.has_beam_centre = self._beam_signature is not None

    def __call__(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W) float32 counts → scores (B, A) float32 and decisions (B, A) int32 0/1."""
        import tensorflow as tf

        if self._views_here > 1:
            scores = self._averaged(counts, lambda views: self._signature(images=views)[self._score_key])[0]
            return scores, (scores >= self.thresholds).astype(np.int32)
        outputs = self._signature(images=tf.constant(counts, tf.float32))
        scores = outputs[self._score_key].numpy()
        if self._decision_key is not None:
            decisions = outputs[self._decision_key].numpy().astype(np.int32)
        else:
            decisions = (scores >= self.thresholds).astype(np.int32)
        return scores, decisions

    def tag(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(B, H, W) float32 counts → scores (B, A), decisions (B, A) 0/1 and the beam centre (B, 2) px or None:
        one forward pass where the model has the ``tag`` signature, else ``serving_default`` and ``beam_centre``."""
        import tensorflow as tf

        if self._tag_signature is None:
            scores, decisions = self(counts)
            return scores, decisions, self.beam_centre(counts)
        if self._views_here > 1:
            scores, outputs = self._averaged(counts, lambda views: self._tag_signature(images=views))
            return scores, (scores >= self.thresholds).astype(np.int32), outputs["beam_centre"].numpy()[:len(counts)]
        outputs = self._tag_signature(images=tf.constant(counts, tf.float32))
        scores = outputs["probabilities"].numpy()
        return scores, (scores >= self.thresholds).astype(np.int32), outputs["beam_centre"].numpy()

    def _averaged(self, counts: np.ndarray, call) -> tuple[np.ndarray, dict]:
        """Probabilities (B, A) averaged over ``self.views`` views of (B, H, W) ``counts``, and the outputs of
        the first call, whose first B rows are the plain frames'. Views of one shape go in one call."""
        import tensorflow as tf

        total, first = 0.0, None
        for group in dihedral_views(counts, self.views):
            outputs = call(tf.constant(np.concatenate(group), tf.float32))
            probabilities = outputs if isinstance(outputs, tf.Tensor) else outputs["probabilities"]
            total = total + probabilities.numpy().reshape(len(group), len(counts), -1).sum(axis=0)
            first = outputs if first is None else first
        return (total / self.views).astype(np.float32), first

    def beam_centre(self, counts: np.ndarray) -> np.ndarray | None:
        """(B, H, W) float32 counts → (B, 2) float32 estimated beam centre (x, y) px, or None without the head."""
        import tensorflow as tf

        if self._beam_signature is None:
            return None
        return self._beam_signature(images=tf.constant(counts, tf.float32))["beam_centre"].numpy()


def dihedral_views(counts: np.ndarray, views: int) -> list[list[np.ndarray]]:
    """(B, H, W) frames → ``views`` of them (1, 4 or 8), grouped by shape: [[plain, left–right flip, up–down
    flip, 180° turn], [the same four transposed]] (each (B, H, W), then (B, W, H)), cut to ``views``.

    The networks are trained on flips and quarter turns of whole images and every attribute is unchanged by
    them, so averaging the probabilities over these views removes what one orientation gets wrong by chance
    (measured on the outside set of ``bench external``: README, *Test-time views*).
    """
    flips = [counts, counts[:, :, ::-1], counts[:, ::-1, :], counts[:, ::-1, ::-1]]
    groups = [flips[:views]]
    if views > 4:
        groups.append([np.swapaxes(view, 1, 2) for view in flips[:views - 4]])
    return groups  # _averaged concatenates each group: that one copy makes the views contiguous


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
    """One frame's outcome: scores and decisions (A,), or the reason it failed.

    ``frame`` is the frame number (0 for a one-frame file) or None when the whole file failed;
    ``stacked``: the file holds a stack of frames (named ``file#frame``); ``header``: the file's
    beam centre, wavelength and distance where it states them; ``thumbnail``: PNG bytes of what the
    model sees (only when a contact sheet is asked for).
    """

    path: Path
    scores: np.ndarray | None = None
    decisions: np.ndarray | None = None
    error: str | None = None
    beam_xy: np.ndarray | None = None  # (2,) estimated beam centre (x, y) px, when the model has the head
    shape: tuple[int, int] | None = None  # (height, width) px of the image
    frame: int | None = 0
    stacked: bool = False
    header: dict = field(default_factory=dict)
    thumbnail: bytes | None = None

    @property
    def name(self) -> str:
        """``file`` or ``file#frame`` (a frame of a stack)."""
        return f"{self.path}#{self.frame}" if self.stacked and self.frame is not None else str(self.path)

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
    """Yield (path, counts or None, reason or None) of one-frame files in order while ``workers`` threads read
    ahead (``bench predict``'s reading rate; ``predict`` itself reads frames with :class:`FrameReader`).

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


# --------------------------------------------------------------------------- frames read ahead
@dataclass
class OpenedFile:
    """What an opener made of one listed item: the source and the frame numbers to read, or the reason."""

    path: Path
    source: FrameSource | None = None
    numbers: list[int] = field(default_factory=list)
    reason: str | None = None
    stat: tuple[int, int] | None = None  # (size, mtime_ns) when opened (watch: was it still changing?)


@dataclass
class FrameRead:
    """One frame as read: counts, or the reason it could not be read (``frame`` None: the whole file)."""

    path: Path
    frame: int | None
    counts: np.ndarray | None
    reason: str | None
    stacked: bool = False
    header: dict = field(default_factory=dict)
    thumbnail: bytes | None = None
    last_of_file: bool = True
    stat: tuple[int, int] | None = None


def open_all_frames(h5_path: str | None = None) -> Callable[[Path], OpenedFile]:
    """The opener of ``predict``: every frame of every file."""

    def opener(path: Path) -> OpenedFile:
        try:
            source = open_frames(path, h5_path)
        except UnreadableImageError as e:
            return OpenedFile(path, reason=e.reason)
        return OpenedFile(path, source, source.frame_numbers)

    return opener


_END = object()


class FrameReader:
    """Frames of a stream of files, read ahead by a pool of threads, handed out in order.

    A feeder thread takes the items one by one (a list for ``predict``; a blocking stream of
    completed files for ``watch``), opens each with ``opener`` and submits one read per frame to
    ``workers`` threads; at most ``lookahead`` frames are being read or waiting (memory is bounded
    whatever the files hold). Each source is closed once its last frame is read.

    Args:
        items: what to open, in order.
        opener: item → :class:`OpenedFile` (or None to skip it).
        thumbnail_size: also make each frame's thumbnail PNG (contact sheet), this many px a side.
        thumbnail_limit: at most this many thumbnails (the first frames).
    """

    def __init__(self, items: Iterable, opener: Callable[[object], OpenedFile | None], workers: int = 2,
                 lookahead: int = 8, thumbnail_size: int | None = None, thumbnail_limit: int | None = None):
        self._items = items
        self._opener = opener
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self._head: deque = deque()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[int, list] = {}  # id(source) → [source, frames still to read]
        self._thumbnail_size = thumbnail_size
        self._thumbnails_left = thumbnail_limit if thumbnail_limit is not None else float("inf")
        self._finished = False
        self._thread = threading.Thread(target=self._feed, name="open-files", daemon=True)
        self._thread.start()

    # ---- feeder thread
    def _feed(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    break
                opened = self._opener(item)
                if opened is None:
                    continue
                if opened.source is None:
                    done: Future = Future()
                    done.set_result(FrameRead(opened.path, None, None, opened.reason or "unreadable",
                                              stat=opened.stat))
                    self._put(done)
                    continue
                source, numbers = opened.source, list(opened.numbers)
                if not numbers:
                    source.close()
                    continue
                with self._lock:
                    self._open[id(source)] = [source, len(numbers)]
                for k, number in enumerate(numbers):
                    if self._stop.is_set():
                        break
                    thumbnail = self._thumbnail_size is not None and self._thumbnails_left > 0
                    self._thumbnails_left -= thumbnail
                    self._put(self._pool.submit(self._read, source, number, k == len(numbers) - 1, thumbnail,
                                                opened.stat))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            failed: Future = Future()
            failed.set_exception(e)
            self._put(failed)
        finally:
            self._put(_END, force=True)

    def _put(self, item, force: bool = False) -> None:
        while True:
            if self._stop.is_set() and not force:
                return
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    # ---- reader threads
    def _read(self, source: FrameSource, number: int, last: bool, thumbnail: bool, stat) -> FrameRead:
        counts, reason, frame = None, None, number
        try:
            counts = source.read(number)
        except UnreadableImageError as e:
            reason, frame = e.reason, e.frame if source.stacked else None
        except MemoryError:
            reason = "unreadable (too large for memory)"
        except Exception as e:  # noqa: BLE001 - one bad frame must never stop the others
            reason = f"unreadable ({type(e).__name__}: {e})"
        finally:
            self._release(source)
        png = None
        if thumbnail and counts is not None:
            from xrayscatter.contact_sheet import thumbnail_png

            try:
                png = thumbnail_png(counts, self._thumbnail_size)
            except Exception:  # noqa: BLE001 - a picture is never worth a lost result
                png = None
        return FrameRead(source.path, frame, counts, reason, source.stacked, source.header, png, last, stat)

    def _release(self, source: FrameSource) -> None:
        with self._lock:
            entry = self._open.get(id(source))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._open[id(source)]
        source.close()

    # ---- consumer (the model's thread)
    def _fill_head(self, timeout: float | None) -> bool:
        if self._head:
            return True
        if self._finished:
            return False
        try:
            self._head.append(self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait())
            return True
        except queue.Empty:
            return False

    def ready(self) -> bool:
        """The next frame is read (``get`` will not wait)."""
        if not self._fill_head(0):
            return False
        head = self._head[0]
        return head is _END or head.done()

    def get(self, timeout: float | None = None) -> FrameRead | None:
        """The next frame in order; None if none came within ``timeout`` s (or the stream ended: see ``finished``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._fill_head(timeout):
            return None
        head = self._head[0]
        if head is _END:
            self._head.popleft()
            self._finished = True
            return None
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = head.result(timeout=remaining)
        except TimeoutError:
            return None
        self._head.popleft()
        return result

    @property
    def finished(self) -> bool:
        """Every item was opened and every frame handed out."""
        return self._finished

    def __iter__(self) -> Iterator[FrameRead]:
        while True:
            read = self.get()
            if read is None and self._finished:
                return
            if read is not None:
                yield read

    def close(self) -> None:
        """Stop opening and reading (frames not yet handed out are dropped) and close every open file."""
        self._stop.set()
        while True:  # unblock the feeder
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            sources = [entry[0] for entry in self._open.values()]
            self._open.clear()
        for source in sources:
            source.close()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tag_frames(model: "TaggingModel", reads: list[FrameRead], power_of_two: bool = False) -> list[ImageResult]:
    """Run the model on frames already read (one forward pass per frame shape); one result per read, in order.

    Args:
        power_of_two: split each shape's frames into batches of 16, 8, 4, 2, 1 (13 → 8 + 4 + 1). The first
            forward pass of every new batch size builds its kernels (0.3–4 s on a busy 2-core machine); batches
            of whatever size is ready (``watch``) would pay that again and again, these five sizes pay it once.

    A failed forward pass is reported on each of its frames; the other shapes go on.
    """
    results = [ImageResult(r.path, error=r.reason, frame=r.frame, stacked=r.stacked, header=dict(r.header or {}),
                           thumbnail=r.thumbnail) for r in reads]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, read in enumerate(reads):
        if read.counts is not None:
            groups.setdefault(read.counts.shape, []).append(i)
    for indices in groups.values():
        while indices:
            size = 1 << (len(indices).bit_length() - 1) if power_of_two else len(indices)
            run_batch(model, [(i, reads[i].counts) for i in indices[:size]], results)
            indices = indices[size:]
    return results


def warm_up(model: "TaggingModel", shape: tuple[int, int] = (64, 64), batch_sizes=(1,)) -> None:
    """Run what ``tag_frames`` calls once per batch size on zeros (the first call builds the kernels)."""
    for size in batch_sizes:
        model.tag(np.zeros((size, *shape), np.float32))


def run_batch(model: "TaggingModel", batch: list[tuple[int, np.ndarray]], results: list[ImageResult]) -> None:
    """One forward pass on same-shape frames; fills ``results[i]`` (scores, decisions, beam centre, shape)."""
    indices = [i for i, _ in batch]
    stack = np.stack([counts for _, counts in batch])
    try:
        scores, decisions, beams = model.tag(stack)
    except Exception as e:  # noqa: BLE001 - a failed batch is reported per frame, the others go on
        for i in indices:
            results[i].error = f"prediction failed ({type(e).__name__}: {str(e).splitlines()[0]})"
        return
    for row, i in enumerate(indices):
        results[i].scores, results[i].decisions = scores[row], decisions[row]
        results[i].shape = stack.shape[1:]
        if beams is not None:
            results[i].beam_xy = beams[row]


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
    directory,
    model: str | Path | TaggingModel | None = None,
    output: str | Path | None = None,
    recursive: bool = False,
    glob: str | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    quiet: bool = False,
    h5_path: str | None = None,
    html: str | Path | None = None,
    views: int | None = None,
) -> list[tuple[Path, str]]:
    """Tag every frame of every detector file of a folder; print a table; optionally write CSV/JSON Lines and HTML.

    Args:
        directory: a folder of detector files, or a list of folders, files and patterns as typed on a command
            line (see :func:`xrayscatter.readers.list_input_files`); data files that a listed Eiger master
            links to are read through the master, once.
        model: SavedModel folder or model folder of versions; None → :func:`default_model` (the one
            the stored held-out scores favour; printed with the reason); or a loaded :class:`TaggingModel`.
        output: ``.csv`` or ``.jsonl`` file, one row per frame (``file``, ``frame``; failed ones have an
            ``error``), every attribute's score and 0/1 decision, the header's beam centre, wavelength and
            distance where files state them; written atomically.
        recursive, glob: which files (see ``list_detector_files``).
        batch_size: frames per forward pass.
        workers: reading threads (default: min(4, CPUs)).
        quiet: no table or progress bar (benchmarks).
        h5_path: the data set holding the frames in HDF5 files (default: the Eiger/NeXus layout).
        html: also write the contact sheet (:mod:`xrayscatter.contact_sheet`), a self-contained page.
        views: average the probabilities over 1, 4 or 8 flipped and turned views of each frame (that many
            forward passes; see :func:`dihedral_views`); None: the views the model was exported with. Ignored
            when ``model`` is a loaded TaggingModel.

    Returns:
        The failures, [(path or "path#frame", reason)], in order (empty when all were tagged).

    Raises:
        XrayscatterError: folder missing or without images, model missing or unusable,
            bad output name or batch size. Nothing is written then.
    """
    if batch_size < 1:
        raise XrayscatterError(f"--batch-size must be ≥ 1, got {batch_size}")
    output_format = _output_format(output) if output is not None else None
    if html is not None and Path(html).suffix.lower() not in (".html", ".htm"):
        raise XrayscatterError(f"{html}: the contact sheet is an .html file")
    inputs = [directory] if isinstance(directory, (str, Path)) else list(directory)
    named = " ".join(map(str, inputs))  # what the user gave, for messages and titles
    base = Path(inputs[0]) if len(inputs) == 1 and Path(inputs[0]).is_dir() else Path(".")  # names shown relative to it
    paths = list_input_files(inputs, recursive=recursive, glob=glob)
    ours = {Path(p).resolve() for p in (output, html) if p is not None}
    if ours:  # a previous run's output inside the folder is not an image to tag
        paths = [p for p in paths if p.resolve() not in ours]
        if not paths:
            raise XrayscatterError(f"{named}: no detector images besides the output file {output or html}")
    paths = drop_linked_data_files(paths)
    if model is None:
        path, reason = default_model()
        if not quiet:
            from rich.console import Console

            Console(stderr=True).print(f"model {path}: {reason}", highlight=False)
        model = path
    tagging_model = model if isinstance(model, TaggingModel) else TaggingModel(resolve_model_dir(model), views)

    started = time.perf_counter()
    thumbnail_size = None
    if html is not None:
        from xrayscatter.contact_sheet import thumbnail_size_for

        thumbnail_size = thumbnail_size_for(tagging_model)
    results = run_predictions(tagging_model, paths, batch_size=batch_size,
                              workers=workers or _default_workers(), show_progress=not quiet, h5_path=h5_path,
                              thumbnail_size=thumbnail_size)
    seconds = time.perf_counter() - started

    if output is not None:
        write_predictions(results, tagging_model, Path(output), output_format)
    if html is not None:
        write_html(results, tagging_model, Path(html), title=f"xrayscatter predict {named}")
    if not quiet:
        print_summary(results, tagging_model, base, seconds, output, html)
    return [(r.name, r.error) for r in results if r.error is not None]


def write_html(results: list[ImageResult], model: TaggingModel, path: Path, title: str,
               newest_first: bool = False) -> dict:
    """The contact sheet of ``results`` (see :func:`xrayscatter.contact_sheet.write_contact_sheet`)."""
    from xrayscatter.contact_sheet import MAX_THUMBNAILS, write_contact_sheet

    tagged = sum(r.error is None for r in results)
    return write_contact_sheet(
        path, results, model.attributes, model.thresholds, score_name=model.score_name, title=title,
        subtitle=f"{tagged} frame(s) tagged, {len(results) - tagged} unreadable · model {model.path}",
        newest_first=newest_first, max_thumbnails=MAX_THUMBNAILS)


def run_predictions(model: TaggingModel, paths: list[Path], batch_size: int = 16, workers: int = 2,
                    show_progress: bool = True, h5_path: str | None = None,
                    thumbnail_size: int | None = None) -> list[ImageResult]:
    """Read and tag every frame of ``paths``; one :class:`ImageResult` per frame (one per file for one-frame
    files, and one for a file that cannot be opened), in file and frame order.

    Reader threads decode the next frames while this thread runs the model (TF releases the
    GIL). The model runs here rather than in a thread of its own: on a small CPU a third
    busy stage only steals cores from TF's intra-op threads (measured slower).

    Args:
        h5_path: the data set of the frames in HDF5 files (default: the Eiger/NeXus layout).
        thumbnail_size: also keep a thumbnail of the first frames (contact sheet), this many px a side.
    """
    from rich.console import Console

    from xrayscatter.contact_sheet import MAX_THUMBNAILS

    reuse_freed_memory_for_frames()
    results: list[ImageResult] = []
    waiting: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}  # same-shape frames, not yet a batch

    progress = progress_bar("predict", fields=("rate",), console=Console(stderr=True), disable=not show_progress,
                            transient=True)
    started = time.perf_counter()
    done = 0

    def run(batch: list[tuple[int, np.ndarray]]) -> None:
        nonlocal done
        run_batch(model, batch, results)
        done += len(batch)
        progress.update(task, rate=f"{done / (time.perf_counter() - started):.1f} frames/s")

    with progress:
        task = progress.add_task("", total=len(paths), rate="– frames/s")
        lookahead = 2 * batch_size + workers
        with FrameReader(paths, open_all_frames(h5_path), workers, lookahead, thumbnail_size,
                         MAX_THUMBNAILS if thumbnail_size else None) as reader:
            for read in reader:
                index = len(results)
                results.append(ImageResult(read.path, error=read.reason, frame=read.frame, stacked=read.stacked,
                                           header=dict(read.header or {}), thumbnail=read.thumbnail))
                if read.last_of_file:
                    progress.advance(task)
                if read.counts is None:
                    continue
                group = waiting.setdefault(read.counts.shape, [])
                group.append((index, read.counts))
                if len(group) == batch_size:
                    run(waiting.pop(read.counts.shape))
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
    """One flat dict per frame: file, frame (empty when the whole file failed), error, tags, (beam_x, beam_y,
    beam_on_image when the model estimates the beam centre), (header_beam_x, header_beam_y, wavelength_angstrom,
    distance_m when a file states them), then ``<slug>_<score name>`` and ``<slug>_decision``."""
    with_header = [name for name in HEADER_FIELDS if any(name in (r.header or {}) for r in results)]
    rows = []
    for result in results:
        row = {"file": str(result.path), "frame": "" if result.frame is None else result.frame,
               "error": result.error or "", "tags": ""}
        if result.error is None:
            row["tags"] = ";".join(n for n, d in zip(model.attributes, result.decisions) if d)
        if model.has_beam_centre:
            ok = result.beam_xy is not None
            row["beam_x"] = f"{result.beam_xy[0]:.1f}" if ok else ""
            row["beam_y"] = f"{result.beam_xy[1]:.1f}" if ok else ""
            row["beam_on_image"] = int(result.beam_on_image) if ok else ""
        for name in with_header:
            value = (result.header or {}).get(name)
            row[f"header_{name}" if name.startswith("beam") else name] = "" if value is None else f"{value:.6g}"
        for i, name in enumerate(model.attributes):
            ok = result.error is None
            row[f"{slug(name)}_{model.score_name}"] = f"{result.scores[i]:.6g}" if ok else ""
            row[f"{slug(name)}_decision"] = int(result.decisions[i]) if ok else ""
        rows.append(row)
    return rows


def prediction_record(result: ImageResult, model: TaggingModel) -> dict:
    """One JSON-able dict per frame: file, frame, error, (stacked: true for a frame of a multi-frame file), tags,
    {name: score}, {name: 0/1}, header, beam_centre."""
    key = "probabilities" if model.score_name == "probability" else "scores"
    record = {"file": str(result.path), "frame": result.frame, "error": result.error}
    if result.stacked:
        record["stacked"] = True  # one frame of a multi-frame file (named file#frame)
    if result.error is None:
        record.update({
            "tags": [n for n, d in zip(model.attributes, result.decisions) if d],
            key: {n: round(float(s), 6) for n, s in zip(model.attributes, result.scores)},
            "decisions": {n: int(d) for n, d in zip(model.attributes, result.decisions)},
        })
        if result.beam_xy is not None:
            record["beam_centre"] = {"x": round(float(result.beam_xy[0]), 2), "y": round(float(result.beam_xy[1]), 2),
                                     "on_image": result.beam_on_image}
    if result.header:
        record["header"] = {k: round(float(v), 6) for k, v in result.header.items()}
    return record


def prediction_records(results: list[ImageResult], model: TaggingModel) -> list[dict]:
    """:func:`prediction_record` of every result."""
    return [prediction_record(result, model) for result in results]


def write_predictions(results: list[ImageResult], model: TaggingModel, output: Path, output_format: str) -> Path:
    """Write CSV or JSON Lines to ``output`` atomically (temporary name in the same folder, then rename)."""
    buffer = io.StringIO(newline="")
    if output_format == "csv":
        rows = prediction_rows(results, model)
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["file", "frame", "error", "tags"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for record in prediction_records(results, model):
            buffer.write(json.dumps(record) + "\n")
    return write_atomically(output, buffer.getvalue())


def print_summary(results: list[ImageResult], model: TaggingModel, directory: Path, seconds: float,
                  output: str | Path | None, html: str | Path | None = None) -> None:
    """Terminal table (file or file#frame, tags, top attributes) on stdout, failures with reasons, one summary line."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tagged = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]

    def name(result: ImageResult) -> str:
        try:
            shown = str(result.path.relative_to(directory))
        except ValueError:
            shown = str(result.path)
        return f"{shown}#{result.frame}" if result.stacked and result.frame is not None else shown

    if tagged:
        table = Table(title=f"{len(tagged)} frame(s) tagged by {model.path}")
        table.add_column("file", overflow="fold")
        table.add_column("tags (yes)", overflow="fold")
        table.add_column(f"top {TOP_ATTRIBUTES} ({model.score_name})", overflow="fold")
        for result in tagged[:TABLE_ROWS]:
            order = np.argsort(-result.scores)[:TOP_ATTRIBUTES]
            top = ", ".join(f"{model.attributes[i]} {result.scores[i]:.2f}" for i in order)
            tags = ", ".join(n for n, d in zip(model.attributes, result.decisions) if d) or "–"
            table.add_row(name(result), tags, top)
        console.print(table)
        if len(tagged) > TABLE_ROWS:
            console.print(f"… and {len(tagged) - TABLE_ROWS} more (all rows are in --output)")
    if failed:
        table = Table(title=f"{len(failed)} file(s) or frame(s) not tagged", title_style="bold red")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for result in failed:
            table.add_row(name(result), result.error)
        console.print(table)
    rate = len(tagged) / seconds if seconds > 0 else float("nan")
    files = len({r.path for r in results})
    line = (f"{len(tagged)} tagged, {len(failed)} failed in {seconds:.1f} s ({rate:.1f} frames/s; "
            f"{len(results)} frame(s) of {files} file(s))")
    if output is not None:
        line += f"; wrote {output}"
    if html is not None:
        line += f"; contact sheet {html}"
    console.print(line, highlight=False)
