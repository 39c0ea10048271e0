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

import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from xrayscatter import schema
from xrayscatter.errors import XrayscatterError
from xrayscatter.normalization import to_model_input

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- image sources
def dataset_dir(config) -> Path:
    """The simulated data set folder of a pipeline: ``<simulate.output_dir>/<simulate.dataset>``."""
    return Path(config.simulate.output_dir) / config.simulate.dataset


def read_manifest(config) -> dict:
    """The simulated data set's manifest.json (docs/CONTRACTS.md).

    Raises:
        XrayscatterError: the data set has not been simulated (or not finalised).
    """
    folder = dataset_dir(config)
    path = folder / "manifest.json"
    if not path.is_file():
        raise XrayscatterError(f"{folder}: no simulated data set here (manifest.json missing); "
                               f"run 'xrayscatter simulate run --pipeline {config.source or '<pipeline>'}' first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise XrayscatterError(f"{path}: not valid JSON ({e})") from None


def tfrecord_files(config, split: str) -> list[str]:
    """Shard paths of one split of the pipeline's simulated data set, as listed in its manifest.

    Raises:
        XrayscatterError: the data set is missing, the split is empty or a shard is missing.
    """
    folder = dataset_dir(config)
    names = read_manifest(config).get("splits", {}).get(split, {}).get("files", [])
    if not names:
        raise XrayscatterError(f"{folder}: split '{split}' has no shards in manifest.json")
    files = [folder / name for name in sorted(names)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise XrayscatterError(f"{folder}: shard(s) listed in manifest.json are missing: {', '.join(missing[:3])}")
    return [str(f) for f in files]


def tfrecord_split_size(config, split: str) -> int:
    """Number of images in a split (0 when the split is absent), from the manifest."""
    return int(read_manifest(config).get("splits", {}).get(split, {}).get("num_images", 0))


def tfrecord_images(files: list[str], shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Shards → dataset of raw counts, (H, W) float32 per element."""
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                                  num_parallel_calls=AUTOTUNE, deterministic=not shuffle_files)
    return records.map(lambda r: schema.parse_example(r)["image"], num_parallel_calls=AUTOTUNE)


def share_of_input_pipeline(files: list, context, make_images) -> tf.data.Dataset:
    """This input pipeline's share of an image stream (multi-worker training), or all of it.

    Args:
        files: the sorted file list (shards or detector images).
        context: ``tf.distribute.InputContext`` or None (a single pipeline reads everything).
        make_images: files → dataset of images.

    With at least as many files as input pipelines each pipeline reads its own files
    (the FILE auto-shard policy: no image is decoded twice); with fewer, every pipeline
    reads all of them and keeps every n-th image.
    """
    pipelines = context.num_input_pipelines if context is not None else 1
    if pipelines <= 1:
        return make_images(files)
    if len(files) >= pipelines:
        return make_images(files[context.input_pipeline_id::pipelines])
    return make_images(files).shard(pipelines, context.input_pipeline_id)


def list_image_files(directory: str | Path) -> list[Path]:
    """Detector image files directly in ``directory`` (sorted).

    Raises:
        XrayscatterError: the folder is missing or holds no detector images.
    """
    from xrayscatter.readers import list_detector_files

    return list_detector_files(directory)


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
    from xrayscatter.readers import read_detector_image

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
    from xrayscatter.readers import read_detector_image

    readable = []
    for path in files:
        try:
            read_detector_image(path)
            readable.append(path)
        except XrayscatterError as e:
            log.warning("skipping %s", e)
    return readable


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
