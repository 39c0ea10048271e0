"""tf.data pipelines of random image patches for the autoencoder.

Two sources, one pipeline after the first step:

- the simulated TFRecords (``schema.parse_example``), or
- a folder of real detector images (``readers.read_detector_image``: TIFF, EDF, CBF, ...),
  which is what the paper trained this network on and what a user points it at.

Each image is normalised (``normalization.to_model_input``: log-scaled counts, padded
square, resized) to every size in ``scales``, and ``patches_per_image`` random P × P
patches are cut from it, spread evenly over the scales. Patch positions come from
stateless random ops seeded with (seed, image counter), so a pipeline is reproducible
and every epoch still sees new patches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from xrayscatter import schema
from xrayscatter.dataset import dataset_dir, read_records, shard_paths, split_size
from xrayscatter.distribute.strategy import share_of_files
from xrayscatter.errors import XrayscatterError
from xrayscatter.normalization import to_model_input
from xrayscatter.readers import list_detector_files, read_detector_image

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- image sources
def tfrecord_images(files: list[str], shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Shards → dataset of raw counts, (H, W) float32 per element."""
    records = read_records(files, shuffle=shuffle_files, seed=seed, cycle_length=4)
    return records.map(lambda r: schema.parse_example(r)["image"], num_parallel_calls=AUTOTUNE)


def split_heldout(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Sorted files → (train, held out): every k-th file, k = round(1 / fraction), is held out.

    Spreading the held-out files over the sorted list keeps them from all coming from one
    run when file names carry the run. With one file, or fraction 0, nothing is held out.
    """
    if fraction <= 0 or len(files) < 2:
        return list(files), []
    step = max(2, round(1 / fraction))
    heldout = files[step - 1::step] or files[-1:]
    return [f for f in files if f not in heldout], heldout


def _read_counts(path: bytes) -> np.ndarray:
    """numpy side of :func:`folder_images`: unreadable files become an empty image, skipped after."""
    try:
        return np.asarray(read_detector_image(Path(path.decode())), dtype=np.float32)
    except XrayscatterError as e:
        log.warning("skipping %s", e)
        return np.zeros((0, 0), np.float32)


def folder_images(files: list[Path], shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Detector image files → dataset of raw counts, (H, W) float32 per element (NaN = missing pixel).

    A file that cannot be read is logged and skipped, so one damaged frame does not stop a
    long training run (the caller checks up front that some file reads, see :func:`readable_files`).
    """
    paths = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    if shuffle:
        paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):
        counts = tf.numpy_function(_read_counts, [path], tf.float32, stateful=False)
        return tf.ensure_shape(counts, [None, None])

    images = paths.map(read, num_parallel_calls=AUTOTUNE, deterministic=not shuffle)
    return images.filter(lambda counts: tf.size(counts) > 0)


def readable_files(files: list[Path]) -> list[Path]:
    """The files that read (each is read once); the others are logged and left out."""
    readable = []
    for path in files:
        try:
            read_detector_image(path)
            readable.append(path)
        except XrayscatterError as e:
            log.warning("skipping %s", e)
    return readable


class PatchSource:
    """Where the images come from: train and held-out image streams, and how many train images.

    Attributes:
        description: one line naming the source (reports, errors).
        train_images: ``callable(input_context=None)`` → dataset of (H, W) raw counts, shuffled; with an
            input context (multi-worker training), only that input pipeline's share of the files.
        heldout_images: ``callable()`` → dataset of (H, W) raw counts, in a fixed order.
        num_train_images: images in the training stream.
    """

    def __init__(self, description: str, train_images, heldout_images, num_train_images: int):
        self.description = description
        self.train_images = train_images
        self.heldout_images = heldout_images
        self.num_train_images = num_train_images

    @classmethod
    def from_tfrecords(cls, config) -> "PatchSource":
        """The train split of the pipeline's simulated data set; held out: the val split (else test)."""
        train_files = shard_paths(config, "train")
        heldout_split = "val" if split_size(config, "val") else "test"
        heldout_files = shard_paths(config, heldout_split)
        return cls(
            description=f"simulated TFRecords {dataset_dir(config)} (train split; held out: {heldout_split} split)",
            train_images=lambda context=None: share_of_files(
                train_files, context, lambda files: tfrecord_images(files, shuffle_files=True, seed=config.seed)),
            heldout_images=lambda: tfrecord_images(heldout_files),
            num_train_images=split_size(config, "train"),
        )

    @classmethod
    def from_folder(cls, config, directory: str | Path) -> "PatchSource":
        """A folder of real detector images; every k-th file held out (``autoencoder.heldout_fraction``)."""
        files = list_detector_files(directory)
        train, heldout = split_heldout(files, config.autoencoder.heldout_fraction)
        heldout = readable_files(heldout)
        # Fail now, not after an endless wait on a stream that skips every file, if nothing reads.
        first_readable = next((f for f in train if readable_files([f])), None)
        if first_readable is None:
            raise XrayscatterError(f"{directory}: none of the {len(train)} training image(s) can be read")
        if not heldout:
            log.warning("%s: no held-out image; the reconstruction error is measured on training images",
                        directory)
            heldout = train
        return cls(
            description=f"detector images in {directory} ({len(train)} train, {len(heldout)} held out)",
            train_images=lambda context=None: share_of_files(
                train, context, lambda files: folder_images(files, shuffle=True, seed=config.seed)),
            heldout_images=lambda: folder_images(heldout),
            num_train_images=len(train),
        )


def patch_source(config, images_dir: str | Path | None = None) -> PatchSource:
    """The pipeline's TFRecords, or a folder of real images (argument, else ``autoencoder.real_images_dir``)."""
    images_dir = images_dir or config.autoencoder.real_images_dir or None
    return PatchSource.from_folder(config, images_dir) if images_dir else PatchSource.from_tfrecords(config)


# --------------------------------------------------------------------------- patches
def patches_per_scale(patches_per_image: int, num_scales: int) -> list[int]:
    """Split an image's patch budget evenly over the scales (the first scales take the remainder)."""
    base, extra = divmod(patches_per_image, num_scales)
    return [base + (i < extra) for i in range(num_scales)]


def random_patches(counts: tf.Tensor, seed: tf.Tensor, scales, patches_per_image: int,
                   patch_size: int) -> tf.Tensor:
    """One image's random patches at every scale.

    Args:
        counts: (H, W) raw counts, any real dtype.
        seed: (2,) int32/int64 stateless seed.
        scales: image sizes (px) to resize to before cutting patches.
        patches_per_image: total over all scales.
        patch_size: P.

    Returns:
        (patches_per_image, P, P) float32 normalised patches.
    """
    out = []
    for k, (size, count) in enumerate(zip(scales, patches_per_scale(patches_per_image, len(scales)))):
        if count == 0:
            continue
        image = to_model_input(counts[None], size)[0, :, :, 0]  # (size, size)
        corners = tf.random.stateless_uniform((2, count), seed=seed + k, minval=0,
                                              maxval=size - patch_size + 1, dtype=tf.int32)
        offsets = tf.range(patch_size)
        rows = corners[0][:, None] + offsets  # (count, P)
        cols = corners[1][:, None] + offsets
        strips = tf.gather(image, rows)  # (count, P, size)
        out.append(tf.gather(strips, cols, axis=2, batch_dims=1))  # (count, P, P)
    return tf.concat(out, axis=0)


def patch_dataset(images: tf.data.Dataset, ae_config, seed: int, batch_size: int,
                  training: bool, shuffle_buffer: int = 8192) -> tf.data.Dataset:
    """Images → batches of (patches, patches) pairs for ``model.fit``.

    Args:
        images: dataset of (H, W) raw counts.
        ae_config: ``AutoencoderConfig`` (scales, patches_per_image, patch_size).
        seed: base seed; image n of the stream gets stateless seed (seed, n).
        batch_size: patches per batch.
        training: repeat forever and shuffle patches across images; otherwise one
            deterministic pass (held-out evaluation), the same patches every time.

    Returns:
        Dataset of ((B, P, P), (B, P, P)) float32, inputs equal to targets.
    """
    if training:
        images = images.repeat()
    numbered = tf.data.Dataset.zip(tf.data.Dataset.counter(), images)

    def cut(index, counts):
        image_seed = tf.stack([tf.cast(seed, tf.int64), index])
        return random_patches(counts, image_seed, ae_config.scales, ae_config.patches_per_image,
                              ae_config.patch_size)

    patches = numbered.map(cut, num_parallel_calls=AUTOTUNE, deterministic=not training).unbatch()
    if training:
        patches = patches.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    patches = patches.batch(batch_size, drop_remainder=training)
    return patches.map(lambda p: (p, p), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def collect_patches(images: tf.data.Dataset, ae_config, seed: int, limit: int) -> np.ndarray:
    """The first ``limit`` deterministic patches of a finite image stream → (N, P, P) float32 array."""
    batches = patch_dataset(images, ae_config, seed, batch_size=512, training=False)
    out, total = [], 0
    for x, _ in batches:
        out.append(x.numpy())
        total += len(out[-1])
        if total >= limit:
            break
    if not out:
        return np.zeros((0, ae_config.patch_size, ae_config.patch_size), np.float32)
    return np.concatenate(out)[:limit]
