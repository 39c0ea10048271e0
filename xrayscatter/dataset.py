"""A simulated data set on disk: its folder, manifest, shards and split sizes (the one owner, like a TFDS builder).

Layout (``simulate/writer.py`` writes it, everything else reads it through this module)::

    <simulate.output_dir>/<simulate.dataset>/
        <dataset>-<split>.tfrecord-<i:05d>-of-<n:05d>     split in train, val, test
        shard_index/<shard file name>.json                 per-shard summary (written before the shard)
        manifest.json                                      what the data set holds (docs/CONTRACTS.md)

The manifest is the list of shards: a split's shards are the ones it names, in order, and each must be
present. A split's size is counted from its shards' record frames (:func:`count_records` reads 12
bytes per record), which also finds a truncated shard before any training starts; a shard corrupt
inside is found when TensorFlow fails on it, and :func:`naming_bad_shards` turns that failure into an
``XrayscatterError`` naming the file.

TensorFlow is imported only by the functions that decode records, so the simulator's worker
processes can use the names here without loading it.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

from xrayscatter.errors import XrayscatterError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
INDEX_DIR = "shard_index"
# TFRecord framing: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data.
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


def dataset_dir(config) -> Path:
    """``<simulate.output_dir>/<simulate.dataset>``: the data set folder of a pipeline."""
    return Path(config.simulate.output_dir) / config.simulate.dataset


def shard_name(dataset: str, split: str, index: int, count: int) -> str:
    """``<dataset>-<split>.tfrecord-<index:05d>-of-<count:05d>`` (TFDS style)."""
    return f"{dataset}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def _simulate_hint(config) -> str:
    pipeline = config.source or "<pipeline>"
    return (f"run 'xrayscatter simulate run --pipeline {pipeline}' first (after a job array: "
            f"'xrayscatter simulate finalize --pipeline {pipeline}')")


def read_manifest(config) -> dict:
    """The data set's ``manifest.json``.

    Raises:
        XrayscatterError: the data set has not been simulated (or not finalised), or the file is not JSON.
    """
    folder = dataset_dir(config)
    path = folder / MANIFEST
    if not path.is_file():
        raise XrayscatterError(f"{folder}: no simulated data set here (manifest.json missing); {_simulate_hint(config)}")
    try:
        manifest = json.loads(path.read_text())
        manifest["splits"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise XrayscatterError(f"{path}: not a data set manifest ({type(e).__name__}: {e})") from None
    return manifest


def shard_paths(config, split: str, required: bool = True) -> list[str]:
    """The shard paths of one split, as the manifest lists them (sorted by shard number).

    Args:
        required: raise when the split has no shard; otherwise return ``[]``.

    Raises:
        XrayscatterError: unknown split, no data set, a split without shards (when ``required``),
            or a listed shard missing.
    """
    if split not in SPLITS:
        raise XrayscatterError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    folder = dataset_dir(config)
    names = read_manifest(config)["splits"].get(split, {}).get("files", [])
    if not names:
        if not required:
            return []
        raise XrayscatterError(f"{folder}: no '{split}' shards ({config.simulate.dataset}-{split}.tfrecord-*) "
                               f"in {MANIFEST}; {_simulate_hint(config)}")
    paths = [folder / name for name in sorted(names)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise XrayscatterError(f"{folder}: shard(s) listed in {MANIFEST} are missing: {', '.join(missing[:3])}")
    return [str(p) for p in paths]


def count_records(path: str | Path) -> int:
    """Number of records in a TFRecord file, walking its frames (reads 12 bytes per record).

    Raises:
        XrayscatterError: the file is missing, unreadable, or ends inside a record.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            count = 0
            while True:
                start = f.tell()
                header = f.read(_HEADER_BYTES)
                if not header:
                    return count
                if len(header) < _HEADER_BYTES:
                    raise XrayscatterError(f"{path}: truncated TFRecord shard (record {count} at byte {start} "
                                           f"has an incomplete header)")
                (length,) = struct.unpack("<Q", header[:8])
                end = start + _HEADER_BYTES + length + _FOOTER_BYTES
                if end > size:
                    raise XrayscatterError(f"{path}: truncated or corrupt TFRecord shard (record {count} at byte "
                                           f"{start} needs {end} bytes, the file has {size})")
                f.seek(end)
                count += 1
    except OSError as e:
        raise XrayscatterError(f"{path}: cannot read TFRecord shard ({e.strerror or e})") from None


def split_size(config, split: str) -> int:
    """Images in a split (0 for a split without shards), counted from its shards' record frames.

    Raises:
        XrayscatterError: no data set, a listed shard missing or truncated (naming it).
    """
    return sum(count_records(p) for p in shard_paths(config, split, required=False))


def read_records(paths: list[str], shuffle: bool = False, seed: int | None = None, cycle_length: int = 16):
    """Serialized records of shards, read in parallel (``tf.data``): in file order, or files shuffled.

    Args:
        shuffle: shuffle the files every pass and interleave non-deterministically (training).
        seed: the file shuffle's seed (None: random).
        cycle_length: shards read at once (at most their number).
    """
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(list(paths))
    if shuffle:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), cycle_length),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)


def find_bad_shard(paths: list[str]) -> tuple[str, str] | None:
    """Read and decode every record of every shard; the first failing shard and why, or None.

    Slow (decodes everything): called only after TensorFlow has failed on the data.
    """
    import tensorflow as tf

    from xrayscatter.schema import parse_example

    for path in paths:
        try:
            count_records(path)
            for record in tf.data.TFRecordDataset(path).map(parse_example):
                del record
        except XrayscatterError as e:
            return path, str(e).split(": ", 1)[-1]
        except tf.errors.OpError as e:
            return path, e.message.strip().splitlines()[0]
    return None


@contextlib.contextmanager
def naming_bad_shards(paths: list[str]):
    """Turn a TensorFlow data error raised inside the block into an XrayscatterError naming the shard.

    Errors that no shard explains (a bug, not the data) are re-raised unchanged.
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        bad = find_bad_shard(paths)
        if bad is None:
            raise
        path, reason = bad
        raise XrayscatterError(f"{path}: corrupt or truncated TFRecord shard ({reason})") from error
