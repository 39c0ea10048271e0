"""The ResNet's tf.data input pipelines over the sharded TFRecords of one split.

    shard list (dataset.py) ─► (per-worker shard) ─► shuffle files (train) ─► parallel interleave
    ─► parse + decode 16-bit PNG ─► normalise, pad square, resize (in graph) ─► cache (optional)
    ─► shuffle + repeat + augment (train) ─► batch ─► (tf.data service, train, optional) ─► prefetch

Every stage runs with ``AUTOTUNE`` parallelism; training reads in non-deterministic
order (faster), evaluation in a fixed order (so predictions line up with labels).
:func:`make_dataset` has the ``input_context`` argument that
``strategy.distribute_datasets_from_function`` passes: it batches per replica and
shards the files per input pipeline (worker).

Elements are ``(images, labels)``: (b, S, S, 1) float32 normalised images and
(b, 17) float32 multi-hot labels, S = ``config.resnet.input_size``.
"""

from __future__ import annotations

import tensorflow as tf

from xrayscatter.dataset import count_records, read_records, shard_paths
from xrayscatter.distribute.strategy import share_of_files
from xrayscatter.normalization import to_model_input
from xrayscatter.schema import FEATURE_SPEC, parse_example

# Training crops come from the image resized to 256/224 of the input size: the
# smallest scale of the paper's 15-crop feature.
TRAIN_RESIZE_FACTOR = 256 / 224


# --------------------------------------------------------------------------- pipeline
def train_load_size(input_size: int) -> int:
    """Side (px) of the resized image that training crops come from."""
    return int(round(input_size * TRAIN_RESIZE_FACTOR))


def shard_records(paths: list[str], training: bool, input_context) -> tf.data.Dataset:
    """Serialized records of this input pipeline's share of the shards, read in parallel (shuffled when training)."""
    return share_of_files(paths, input_context, lambda files: read_records(files, shuffle=training))


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
    by the tf.data service workers of that dispatcher (:mod:`xrayscatter.distribute.data_service`).

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

    dataset = shard_records(paths, training, input_context)
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
        from xrayscatter.distribute.data_service import distribute

        dataset = distribute(dataset, settings.data_service)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_label_dataset(config, split: str, paths: list[str] | None = None) -> tf.data.Dataset:
    """(17,) float32 labels of a split, in the order of ``make_dataset(config, split, training=False)``.

    Parses only the labels (no image decoding), so it is cheap.
    """
    paths = shard_paths(config, split) if paths is None else list(paths)
    spec = {"labels": FEATURE_SPEC["labels"]}
    records = shard_records(paths, training=False, input_context=None)
    records = records.apply(tf.data.experimental.assert_cardinality(sum(count_records(p) for p in paths)))
    return records.map(lambda r: tf.cast(tf.io.parse_single_example(r, spec)["labels"], tf.float32),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

