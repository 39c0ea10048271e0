"""The labelled images an evaluation runs on, grouped by measurement run.

Two sources, one result (:class:`EvaluationData`):

* the synthetic TFRecords of a pipeline (``tfrecords/<dataset>/``, every split): the 17 tags,
  all known, plus the run's geometry mode (SAXS / WAXS) as a grouping label for the
  hierarchical mode;
* a user's folder of detector images (TIFF, EDF, CBF, PNG, NPY) with ``labels.csv``::

      filename,run,Ring,Peaks: Isotropic,Thin film
      a001.tif,run03,1,0,
      a002.edf,run03,0,,1

  ``filename`` (relative to the folder), ``run``, then one column per attribute holding 1, 0,
  or empty for unknown; any attribute vocabulary. Bad rows and unreadable files are
  reported by name and skipped; the summary counts them.

``max_images`` keeps whole runs only (a run split between folds would leak). Synthetic
images the ResNet never trained on come first: the test split's runs, then val, then train.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from xrayscatter.errors import XrayscatterError

LABELS_FILE = "labels.csv"
SPLIT_PREFERENCE = ("test", "val", "train")  # images the networks never trained on first
IN_MEMORY_BUDGET_BYTES = 2 << 30  # real images beyond this are re-read from disk when needed
_TRUE = {"1", "1.0"}
_FALSE = {"0", "0.0"}


@dataclass
class EvaluationData:
    """Images, labels and runs of one evaluation.

    Attributes:
        source: ``"synthetic"`` or ``"folder"``.
        location: the data set folder.
        attributes: A attribute names (label columns).
        names: N image names: the file name relative to the folder, or ``<shard>#image_id=<id>``.
        runs: (N,) int64 run codes in [0, R).
        run_names: R run names (``run_codes[i]`` is run ``run_names[i]``).
        labels: (N, A) float32, 1 / 0 / NaN (unknown).
        groups: grouping labels that are not evaluated attributes, {name: (N,) float32 1 / 0 / NaN}
            (synthetic data: ``SAXS`` and ``WAXS`` from the run's geometry).
        splits: (N,) split name per image for synthetic data, else empty.
        content_hash: sha256 hex of the images (and of nothing that does not change features).
        skipped: [{"name", "reason"}] rows or files left out.
        unlisted_files: detector files in the folder that ``labels.csv`` does not name.
        excluded_runs: runs left out by ``max_images``.
        shapes: N image shapes (H, W).
    """

    source: str
    location: str
    attributes: tuple[str, ...]
    names: list[str]
    runs: np.ndarray
    run_names: list[str]
    labels: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    content_hash: str = ""
    skipped: list[dict] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)
    excluded_runs: int = 0
    shapes: list[tuple[int, int]] = field(default_factory=list)
    _images: list = field(default_factory=list, repr=False)  # np.ndarray (in memory) or Path (re-read)

    def __len__(self) -> int:
        return len(self.names)

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as (H, W) float32 raw counts (NaN = missing pixel)."""
        item = self._images[index]
        if isinstance(item, Path):
            from xrayscatter.readers import read_detector_image

            return read_detector_image(item)
        return item.astype(np.float32)

    def batches(self, batch_size: int, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Consecutive images of equal shape, at most ``batch_size`` at a time.

        Args:
            batch_size: images per batch.
            indices: which images, in this order (default all).

        Yields:
            (indices (B,) int64, images (B, H, W) float32 raw counts).
        """
        chosen, images = [], []
        for i in (range(len(self)) if indices is None else indices):
            image = self.image(int(i))
            if images and (image.shape != images[0].shape or len(images) == batch_size):
                yield np.array(chosen, dtype=np.int64), np.stack(images)
                chosen, images = [], []
            chosen.append(int(i))
            images.append(image)
        if images:
            yield np.array(chosen, dtype=np.int64), np.stack(images)

    def has_grouping(self, name: str) -> bool:
        """Whether ``name`` is a label column or a ``groups`` entry (what :meth:`group_labels` can give)."""
        return name in self.attributes or name in self.groups

    def group_labels(self, name: str) -> np.ndarray:
        """(N,) float32 1 / 0 / NaN of a grouping attribute: a label column or a ``groups`` entry."""
        if name in self.attributes:
            return self.labels[:, self.attributes.index(name)]
        if name in self.groups:
            return self.groups[name]
        known = sorted(set(self.attributes) | set(self.groups))
        raise XrayscatterError(f"{self.location}: hierarchy attribute '{name}' is neither a label column nor a "
                               f"grouping of this data set (available: {', '.join(known)})")

    def summary(self) -> dict:
        """JSON-able description for reports."""
        known = ~np.isnan(self.labels)
        per_run = np.bincount(self.runs, minlength=len(self.run_names))
        out = {
            "source": self.source,
            "location": self.location,
            "num_images": len(self),
            "num_runs": len(self.run_names),
            "images_per_run": {"min": int(per_run.min()), "max": int(per_run.max()),
                               "mean": float(per_run.mean())},
            "num_attributes": len(self.attributes),
            "attributes": list(self.attributes),
            "positives": {a: int((known[:, i] & (self.labels[:, i] > 0.5)).sum())
                          for i, a in enumerate(self.attributes)},
            "unknown_labels": int((~known).sum()),
            "image_shapes": [list(s) for s in sorted(set(self.shapes))],
            "content_hash": self.content_hash,
            "skipped": len(self.skipped),
            "skipped_items": self.skipped,
            "unlisted_files": len(self.unlisted_files),
            "excluded_runs_by_max_images": self.excluded_runs,
        }
        if self.splits:
            out["images_per_split"] = {s: self.splits.count(s) for s in SPLIT_PREFERENCE if s in self.splits}
        for name, values in self.groups.items():
            out[f"group_{name}"] = int(np.nansum(values))
        return out


def select_whole_runs(run_sizes: list[tuple[object, int]], max_images: int) -> set:
    """Runs to keep, in the given order, so that the total stays ≤ ``max_images`` (0: all).

    A run that does not fit is skipped and later (smaller) runs are still tried.
    """
    if max_images <= 0:
        return {run for run, _ in run_sizes}
    chosen, total = set(), 0
    for run, size in run_sizes:
        if total + size <= max_images:
            chosen.add(run)
            total += size
    return chosen


# --------------------------------------------------------------------------- synthetic TFRecords
def load_synthetic_dataset(config) -> EvaluationData:
    """Every split of the pipeline's TFRecords, as whole runs, up to ``evaluate.max_images`` images.

    Raises:
        XrayscatterError: no ``manifest.json`` (not simulated yet), or a shard listed there is missing.
    """
    import tensorflow as tf

    from xrayscatter.dataset import SPLITS, dataset_dir, read_manifest, shard_paths
    from xrayscatter.schema import FEATURE_SPEC, parse_example_numpy

    directory = dataset_dir(config)
    attributes = tuple(read_manifest(config).get("attributes", ()))
    split_files = {split: [Path(p) for p in shard_paths(config, split, required=False)] for split in SPLITS}

    order = [s for s in SPLIT_PREFERENCE if s in split_files] + sorted(set(split_files) - set(SPLIT_PREFERENCE))
    run_spec = {"run_id": FEATURE_SPEC["run_id"]}
    run_sizes: dict[tuple[str, int], int] = {}
    for split in order:
        if not split_files[split]:
            continue
        dataset = tf.data.TFRecordDataset([str(p) for p in split_files[split]]).map(
            lambda s: tf.io.parse_single_example(s, run_spec)["run_id"]).batch(4096)
        for batch in dataset.as_numpy_iterator():
            for run_id in batch.tolist():
                run_sizes[(split, run_id)] = run_sizes.get((split, run_id), 0) + 1
    keep = select_whole_runs(list(run_sizes.items()), config.evaluate.max_images)
    if not keep:
        raise XrayscatterError(f"{directory}: evaluate.max_images = {config.evaluate.max_images} is smaller than "
                               "any run; raise it or set 0 (all images)")

    digest = hashlib.sha256()
    names, run_ids, labels, splits, modes, images = [], [], [], [], [], []
    for split in order:
        for path in split_files[split]:
            for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                run_id = int(tf.io.parse_single_example(serialized, run_spec)["run_id"])
                if (split, run_id) not in keep:
                    continue
                record = parse_example_numpy(serialized)
                digest.update(serialized)
                names.append(f"{path.name}#image_id={int(record['image_id'])}")
                run_ids.append(run_id)
                labels.append(record["labels"])
                splits.append(split)
                modes.append(record["params"].get("run", {}).get("mode"))
                images.append(np.asarray(record["image"]).astype(np.uint16))  # exact: PNG counts are uint16
    distinct = sorted(set(run_ids))
    code = {run: i for i, run in enumerate(distinct)}
    groups = {}
    if all(m in ("SAXS", "WAXS") for m in modes):
        saxs = np.array([m == "SAXS" for m in modes], dtype=np.float32)
        groups = {"SAXS": saxs, "WAXS": 1.0 - saxs}
    return EvaluationData(
        source="synthetic", location=str(directory), attributes=attributes, names=names,
        runs=np.array([code[r] for r in run_ids], dtype=np.int64), run_names=[f"run {r}" for r in distinct],
        labels=np.array(labels, dtype=np.float32).reshape(len(names), len(attributes)), groups=groups,
        splits=splits, content_hash=digest.hexdigest(), excluded_runs=len(run_sizes) - len(keep),
        shapes=[tuple(int(s) for s in im.shape) for im in images], _images=images)


# --------------------------------------------------------------------------- a folder with labels.csv
def parse_label_cell(text: str) -> float | None:
    """'1' → 1.0, '0' → 0.0, '' → NaN (unknown); anything else → None (a bad cell)."""
    text = text.strip().lower()
    if text == "":
        return float("nan")
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    return None


def read_labels_csv(path: Path) -> tuple[tuple[str, ...], list[tuple[str, str, list[float]]], list[dict]]:
    """Parse ``labels.csv``.

    Returns:
        (attributes, rows as (filename, run, labels), skipped rows as {"name", "reason"}).

    Raises:
        XrayscatterError: the file is missing or its header lacks ``filename``, ``run`` or attribute columns.
    """
    if not path.is_file():
        raise XrayscatterError(f"{path}: not found (a labelled folder needs labels.csv: filename, run, then one "
                               "column per attribute holding 1, 0 or empty)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise XrayscatterError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    table = [row for row in table if any(cell.strip() for cell in row)]
    if not table:
        raise XrayscatterError(f"{path}: empty")
    header = [cell.strip() for cell in table[0]]
    lowered = [h.lower() for h in header]
    if "filename" not in lowered or "run" not in lowered:
        raise XrayscatterError(f"{path}: the header must name the columns 'filename' and 'run' "
                               f"(found: {', '.join(header)})")
    file_col, run_col = lowered.index("filename"), lowered.index("run")
    attribute_cols = [i for i in range(len(header)) if i not in (file_col, run_col)]
    attributes = tuple(header[i] for i in attribute_cols)
    if not attributes:
        raise XrayscatterError(f"{path}: no attribute columns after 'filename' and 'run'")
    if any(not a for a in attributes) or len(set(attributes)) != len(attributes):
        raise XrayscatterError(f"{path}: attribute column names must be non-empty and distinct "
                               f"(found: {', '.join(repr(a) for a in attributes)})")
    rows, skipped, seen = [], [], set()
    for line_number, row in enumerate(table[1:], start=2):
        where = f"{path.name} row {line_number}"
        if len(row) != len(header):
            skipped.append({"name": where, "reason": f"{len(row)} cells, the header has {len(header)}"})
            continue
        filename, run = row[file_col].strip(), row[run_col].strip()
        if not filename:
            skipped.append({"name": where, "reason": "empty filename"})
            continue
        if not run:
            skipped.append({"name": filename, "reason": f"{where}: empty run"})
            continue
        if filename in seen:
            skipped.append({"name": filename, "reason": f"{where}: listed twice (the first row is used)"})
            continue
        values = [parse_label_cell(row[i]) for i in attribute_cols]
        bad = [(attributes[k], row[i]) for k, i in enumerate(attribute_cols) if values[k] is None]
        if bad:
            shown = "; ".join(f"'{a}' = {v!r}" for a, v in bad[:3])
            skipped.append({"name": filename, "reason": f"{where}: label must be 1, 0 or empty ({shown})"})
            continue
        seen.add(filename)
        rows.append((filename, run, values))
    return attributes, rows, skipped


def load_folder_dataset(directory: str | Path, max_images: int = 0) -> EvaluationData:
    """A folder of detector images with ``labels.csv`` (see the module docstring).

    Every listed file is read once here: files that cannot be read are skipped with the reader's
    reason. Images stay in memory up to ``IN_MEMORY_BUDGET_BYTES`` and are re-read beyond.

    Raises:
        XrayscatterError: the folder or labels.csv is missing or malformed, or fewer than 2 runs remain.
    """
    from xrayscatter.readers import DETECTOR_SUFFIXES, UnreadableImageError, read_detector_image

    directory = Path(directory)
    if not directory.is_dir():
        raise XrayscatterError(f"{directory}: folder not found")
    labels_path = directory / LABELS_FILE
    attributes, rows, skipped = read_labels_csv(labels_path)
    listed = {filename for filename, _, _ in rows}
    unlisted = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                      if p.is_file() and p.suffix.lower() in DETECTOR_SUFFIXES
                      and not any(part.startswith(".") for part in p.relative_to(directory).parts)
                      and str(p.relative_to(directory)) not in listed)

    run_order: list[str] = []
    run_sizes: dict[str, int] = {}
    for _, run, _ in rows:
        if run not in run_sizes:
            run_order.append(run)
        run_sizes[run] = run_sizes.get(run, 0) + 1
    keep = select_whole_runs([(r, run_sizes[r]) for r in sorted(run_order)], max_images)

    digest = hashlib.sha256()
    names, runs, labels, images, shapes = [], [], [], [], []
    in_memory = 0
    for filename, run, values in rows:
        if run not in keep:
            continue
        path = directory / filename
        try:
            image = read_detector_image(path)
            data = path.read_bytes()
        except UnreadableImageError as e:
            skipped.append({"name": filename, "reason": e.reason})
            continue
        except OSError as e:
            skipped.append({"name": filename, "reason": f"unreadable ({e.strerror or type(e).__name__})"})
            continue
        digest.update(filename.encode() + b"\0" + hashlib.sha256(data).digest())
        names.append(filename)
        runs.append(run)
        labels.append(values)
        shapes.append(tuple(int(s) for s in image.shape))
        if in_memory + image.nbytes <= IN_MEMORY_BUDGET_BYTES:
            images.append(image)
            in_memory += image.nbytes
        else:
            images.append(path)
    distinct = sorted(set(runs))
    if len(distinct) < 2:
        raise XrayscatterError(f"{labels_path}: leave-one-run-out needs images of at least 2 runs; "
                               f"{len(names)} readable image(s) in {len(distinct)} run(s) "
                               f"({len(skipped)} row(s) or file(s) skipped)")
    code = {run: i for i, run in enumerate(distinct)}
    return EvaluationData(
        source="folder", location=str(directory), attributes=attributes, names=names,
        runs=np.array([code[r] for r in runs], dtype=np.int64), run_names=distinct,
        labels=np.array(labels, dtype=np.float32).reshape(len(names), len(attributes)),
        content_hash=digest.hexdigest(), skipped=skipped, unlisted_files=unlisted,
        excluded_runs=len(run_sizes) - len(keep), shapes=shapes, _images=images)


def load_evaluation_data(config, data_dir: str | Path | None = None) -> EvaluationData:
    """``data_dir`` (or ``evaluate.real_data_dir``) with labels.csv if given, else the synthetic TFRecords."""
    folder = data_dir or config.evaluate.real_data_dir
    if folder:
        return load_folder_dataset(folder, config.evaluate.max_images)
    return load_synthetic_dataset(config)
