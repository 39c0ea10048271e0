"""tf.data input pipelines over the sharded TFRecords of one split.

    shard list ─► (per-worker shard) ─► shuffle files (train) ─► parallel interleave
    ─► parse + decode 16-bit PNG ─► normalise, pad square, resize (in graph) ─► cache (optional)
    ─► shuffle + repeat + augment (train) ─► batch ─► (tf.data service, train, optional) ─► prefetch

Every stage runs with ``AUTOTUNE`` parallelism; training reads in non-deterministic
order (faster), evaluation in a fixed order (so predictions line up with labels).
:func:`make_dataset` has the ``input_context`` argument that
``strategy.distribute_datasets_from_function`` passes: it batches per replica and
shards the files per input pipeline (worker).

Elements are ``(images, labels)``: (b, S, S, 1) float32 normalised images and
(b, 17) float32 multi-hot labels, S = ``config.resnet.input_size``.

A truncated shard is found before reading starts (:func:`count_records` walks the
record frames); a shard corrupt inside is found when TensorFlow fails on it, and
:func:`naming_bad_shards` turns that failure into an ``XrayscatterError`` naming the file.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import tensorflow as tf

from xrayscatter.errors import XrayscatterError
from xrayscatter.normalization import to_model_input
from xrayscatter.schema import FEATURE_SPEC, parse_example

SPLITS = ("train", "val", "test")
# Training crops come from the image resized to 256/224 of the input size: the
# smallest scale of the paper's 15-crop feature.
TRAIN_RESIZE_FACTOR = 256 / 224
# TFRecord framing: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data.
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


# --------------------------------------------------------------------------- files
def dataset_dir(config) -> Path:
    """``<simulate.output_dir>/<simulate.dataset>``: the data set folder."""
    return Path(config.simulate.output_dir) / config.simulate.dataset


def shard_paths(config, split: str) -> list[str]:
    """Sorted shard paths of a split.

    Raises:
        XrayscatterError: unknown split, or the data set folder has no shard of it.
    """
    from xrayscatter.simulate.writer import split_files

    if split not in SPLITS:
        raise XrayscatterError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    folder = dataset_dir(config)
    paths = split_files(folder, split)
    if not paths:
        raise XrayscatterError(
            f"{folder}: no '{split}' shards ({config.simulate.dataset}-{split}.tfrecord-*); "
            f"run 'xrayscatter simulate run --pipeline {config.source or '<pipeline>'}' first")
    return paths


def count_records(path: str) -> int:
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
    """Images in a split, counted from the shards' record frames (also checks them for truncation)."""
    return sum(count_records(p) for p in shard_paths(config, split))


def find_bad_shard(paths: list[str]) -> tuple[str, str] | None:
    """Read and decode every record of every shard; the first failing shard and why, or None.

    Slow (decodes everything): called only after TensorFlow has failed on the data.
    """
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
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        bad = find_bad_shard(paths)
        if bad is None:
            raise
        path, reason = bad
        raise XrayscatterError(f"{path}: corrupt or truncated TFRecord shard ({reason})") from error


# --------------------------------------------------------------------------- pipeline
def train_load_size(input_size: int) -> int:
    """Side (px) of the resized image that training crops come from."""
    return int(round(input_size * TRAIN_RESIZE_FACTOR))


def _records(paths: list[str], training: bool, input_context) -> tf.data.Dataset:
    """Serialized records of the shards, sharded per input pipeline, interleaved in parallel."""
    files = tf.data.Dataset.from_tensor_slices(paths)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    shard_by_file = pipelines > 1 and len(paths) >= pipelines
    if shard_by_file:
        files = files.shard(pipelines, input_context.input_pipeline_id)
    if training:
        files = files.shuffle(len(paths), reshuffle_each_iteration=True)
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(paths), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )
    if pipelines > 1 and not shard_by_file:  # fewer files than workers: every worker reads all, keeps its share
        records = records.shard(pipelines, input_context.input_pipeline_id)
    return records


def augment(image: tf.Tensor, size: int) -> tf.Tensor:
    """(L, L, 1) → (size, size, 1): random crop, then one of the 8 flips/rotations of the square.

    Scattering patterns have no preferred orientation on the detector and every
    attribute survives a flip or a quarter turn; intensities are left alone because
    several attributes (strong/weak scattering, high background) are about them.
    """
    image = tf.image.random_crop(image, (size, size, 1))
    image = tf.image.random_flip_left_right(image)
    return tf.image.rot90(image, k=tf.random.uniform((), 0, 4, dtype=tf.int32))


def make_dataset(config, split: str, training: bool, input_context: tf.distribute.InputContext | None = None,
                 *, cache: bool | None = None, augmentation: bool | None = None,
                 paths: list[str] | None = None) -> tf.data.Dataset:
    """The input pipeline of one split.

    Args:
        config: PipelineConfig (``resnet`` section: input_size, batch_size (global),
            shuffle_buffer, cache, augment).
        split: "train", "val" or "test".
        training: shuffle, repeat forever, augment, drop the last partial batch, read
            in non-deterministic order. Otherwise one deterministic pass.
        input_context: from ``distribute_datasets_from_function``; batches per replica
            and shards the files per input pipeline. None: global batch, all files.
        cache: cache decoded, resized images in memory (default ``config.resnet.cache``).
        augmentation: random crops and flips when training (default ``config.resnet.augment``).
        paths: shard paths (default: the split's shards in the data set folder).

    With ``config.resnet.data_service`` set, the training pipeline (``training=True``) is run
    by the tf.data service workers of that dispatcher (:mod:`xrayscatter.data_service`).

    Returns:
        Dataset of (images (b, S, S, 1) float32, labels (b, 17) float32).
    """
    settings = config.resnet
    paths = shard_paths(config, split) if paths is None else list(paths)
    cache = settings.cache if cache is None else cache
    augmentation = training and (settings.augment if augmentation is None else augmentation)
    size = settings.input_size
    load_size = train_load_size(size) if augmentation else size
    batch_size = (input_context.get_per_replica_batch_size(settings.batch_size)
                  if input_context is not None else settings.batch_size)

    def decode(serialized):
        record = parse_example(serialized)
        image = to_model_input(record["image"][None], load_size)[0]
        return image, record["labels"]

    dataset = _records(paths, training, input_context)
    if not training and input_context is None:
        # A known length lets Keras size its progress and predict loops without running dry.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(sum(count_records(p) for p in paths)))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(settings.shuffle_buffer, reshuffle_each_iteration=True).repeat()
        if augmentation:
            dataset = dataset.map(lambda image, labels: (augment(image, size), labels),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.batch(batch_size, drop_remainder=training,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training and settings.data_service:
        # Everything above (read, decode, cache, shuffle, augment, batch) runs on the tf.data
        # service workers; only the prefetch below runs here. Training only: evaluation and
        # prediction need one pass in file order (predictions line up with make_label_dataset)
        # with a known length, which parallel-epoch service jobs do not give, and they are a
        # small share of the decoding work.
        from xrayscatter.data_service import distribute

        dataset = distribute(dataset, settings.data_service)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_label_dataset(config, split: str, paths: list[str] | None = None) -> tf.data.Dataset:
    """(17,) float32 labels of a split, in the order of ``make_dataset(config, split, training=False)``.

    Parses only the labels (no image decoding), so it is cheap.
    """
    paths = shard_paths(config, split) if paths is None else list(paths)
    spec = {"labels": FEATURE_SPEC["labels"]}
    records = _records(paths, training=False, input_context=None)
    records = records.apply(tf.data.experimental.assert_cardinality(sum(count_records(p) for p in paths)))
    return records.map(lambda r: tf.cast(tf.io.parse_single_example(r, spec)["labels"], tf.float32),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

