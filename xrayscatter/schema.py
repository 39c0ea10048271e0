"""The TFRecord Example schema: the one place that says what a record holds.

Each record is one detector image with its tags:

=============  ===========  ==========================================================
key            type         meaning
=============  ===========  ==========================================================
image          bytes        lossless 16-bit grayscale PNG of the counts (uint16)
height         int64        image rows (px)
width          int64        image columns (px)
labels         int64 × 17   multi-hot over ``attributes.ATTRIBUTES``
run_id         int64        measurement run (shared geometry, detector, beamstop)
image_id       int64        global image index (with the seed, determines the image)
params         bytes        JSON: the full simulation record of the image
mask           bytes        8-bit PNG, 1 where the detector is light-sensitive, 0 in module gaps
                            and outside the active area (v2; absent → all sensitive)
beam           float × 2    beam centre (x, y) in px of the stored image, pixel centres at
                            index + 0.5; may lie outside it (v2; absent → NaN, unknown)
resized        bytes        16-bit 3-channel PNG: the image as the training input pipeline first
                            makes it, at the side it needs (v3; optional, see below)
=============  ===========  ==========================================================

Masked pixels (module gaps, outside a plate's disc) are stored as 0 counts, as 16-bit
detector files store them; ``mask`` says which they are, so that training can show them
either way (0 counts, or missing as Pilatus files mark them), and ``beam`` is the target of
the ResNet's beam-centre head. Version 1 records (without them) still parse.

``resized`` (v3, optional) spares the training input pipeline the decoding and shrinking of a
large image: the centred padded square resized (bilinear, antialiased) to R px, where R is the
side training makes its input channels at (``config.stored_view_size``), as three 16-bit
channels (``RESIZED_SCALE``): log counts (``normalization.normalize_counts``), the measured
fraction with the module gaps missing, and the measured fraction with the gaps as 0 counts
(padding only). Input channels made from these at R px equal those made from the full image up to
the 16-bit rounding (the resize is linear); channels at another side would not (a second resize blurs),
so a pipeline reads the feature only when every image it makes (with the beam-region branch, the image
and the detail) is R px, and none is stored for a training that makes its image and detail at two sides.
Written only when the image is larger than R; records without it (v1, v2, or small images) are decoded
in full.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from xrayscatter.attributes import NUM_ATTRIBUTES

SCHEMA_VERSION = 3
NO_BEAM = (float("nan"), float("nan"))

FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "labels": tf.io.FixedLenFeature([NUM_ATTRIBUTES], tf.int64),
    "run_id": tf.io.FixedLenFeature([], tf.int64),
    "image_id": tf.io.FixedLenFeature([], tf.int64),
    "params": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "beam": tf.io.FixedLenFeature([2], tf.float32, default_value=list(NO_BEAM)),
    "resized": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
# The resized channels (in [0, 1]) as 16-bit integers: log counts × 65535; the measured fractions × 2**15,
# which keeps k / 2**n fractions (0.5 at a gap's edge) exact, so thresholds on them select the same pixels.
RESIZED_SCALE = (65535.0, 32768.0, 32768.0)

SCHEMA_DESCRIPTION = {
    "version": SCHEMA_VERSION,
    "image": "PNG, 16-bit grayscale, counts (uint16); masked pixels = 0",
    "height": "int64, px",
    "width": "int64, px",
    "labels": f"int64[{NUM_ATTRIBUTES}], multi-hot in manifest 'attributes' order",
    "run_id": "int64",
    "image_id": "int64",
    "params": "JSON string, simulation record",
    "mask": "PNG, 8-bit, 1 = light-sensitive pixel, 0 = module gap / outside the active area (optional)",
    "beam": "float32[2], beam centre (x, y) px in the stored image, pixel centres at index + 0.5 (optional)",
    "resized": "PNG, 16-bit, 3 channels / (65535, 32768, 32768): log counts, measured fraction with gaps missing, with gaps "
               "as counts; centred padded square resized to the training pipeline's side (optional)",
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


# zlib level of every PNG written: level 1 encodes a 1024² 16-bit detector image ~10× faster than level 6
# (88 vs 866 ms measured here) for files ~9 % larger; decoding is the same. The writer's time was mostly this.
PNG_COMPRESSION = 1


def encode_png_uint16(counts: np.ndarray) -> bytes:
    """(H, W) counts → 16-bit PNG bytes. Values are clipped to [0, 65535] first."""
    counts = np.clip(np.nan_to_num(counts, nan=0.0), 0, 65535).astype(np.uint16)
    return tf.io.encode_png(counts[:, :, None], compression=PNG_COMPRESSION).numpy()


def encode_resized(counts: np.ndarray, mask: np.ndarray | None, size: int) -> bytes:
    """(H, W) counts and light-sensitive mask → the ``resized`` feature at ``size`` px (16-bit PNG, 3 channels)."""
    counts = np.clip(np.nan_to_num(np.asarray(counts, np.float32), nan=0.0), 0, 65535).astype(np.uint16)
    sensitive = np.ones(counts.shape, bool) if mask is None else np.asarray(mask, bool)
    return _encode_resized_graph(counts, sensitive, tf.constant(size, tf.int32)).numpy()


@tf.function(input_signature=[tf.TensorSpec((None, None), tf.uint16), tf.TensorSpec((None, None), tf.bool),
                              tf.TensorSpec((), tf.int32)])
def _encode_resized_graph(counts, sensitive, size):
    """The TensorFlow half of :func:`encode_resized`, traced once (any image shape and side)."""
    from xrayscatter.normalization import pad_to_square, resize_square, square_log_and_valid

    log_square, _ = square_log_and_valid(tf.cast(counts, tf.float32)[None])
    gaps_missing = pad_to_square(tf.cast(sensitive, tf.float32)[None, :, :, None])
    gaps_counted = pad_to_square(tf.ones(tf.concat([[1], tf.shape(counts), [1]], axis=0), tf.float32))
    # The three channels as a batch of three: interleaving them at full size costs more than the resize.
    resized = resize_square(tf.concat([log_square, gaps_missing, gaps_counted], axis=0), size)  # (3, s, s, 1)
    resized = tf.transpose(resized[:, :, :, 0], (1, 2, 0))
    levels = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 1.0) * tf.constant(RESIZED_SCALE)), tf.uint16)
    return tf.io.encode_png(levels, compression=PNG_COMPRESSION)


def resized_side(resized: tf.Tensor) -> tf.Tensor:
    """Side (px) of a ``resized`` feature from its PNG header (int32 scalar; 0 when the record has none)."""
    def width():  # the IHDR chunk's big-endian width (bytes 16-19 of a PNG)
        digits = tf.cast(tf.io.decode_raw(tf.strings.substr(resized, 16, 4), tf.uint8, fixed_length=4), tf.int32)
        return ((digits[0] * 256 + digits[1]) * 256 + digits[2]) * 256 + digits[3]

    return tf.cond(tf.strings.length(resized) > 24, width, lambda: tf.constant(0, tf.int32))


def decode_resized(resized: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A ``resized`` feature of side ``size`` → (size, size, 1) float32 each: log counts, measured fraction
    with the gaps missing, and with the gaps as counts (graph code)."""
    image = tf.io.decode_png(resized, channels=3, dtype=tf.uint16)
    image = tf.ensure_shape(tf.cast(image, tf.float32) / tf.constant(RESIZED_SCALE), (size, size, 3))
    return image[:, :, 0:1], image[:, :, 1:2], image[:, :, 2:3]


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) bool light-sensitive mask → 8-bit PNG bytes (1 sensitive, 0 not)."""
    return tf.io.encode_png(np.asarray(mask, np.uint8)[:, :, None], compression=PNG_COMPRESSION).numpy()


def serialize_example(counts: np.ndarray, labels, run_id: int, image_id: int, params: dict,
                      mask: np.ndarray | None = None, beam_xy=None, resized_size: int = 0,
                      mask_png: bytes | None = None) -> bytes:
    """One image and its record → serialized ``tf.train.Example`` bytes (deterministic).

    Args:
        mask: (H, W) bool, True where the detector is light-sensitive (None: not stored).
        beam_xy: beam centre (x, y) in px of the image (None: not stored).
        resized_size: store the ``resized`` feature at this side (px) when the image is larger
            (0: never).
        mask_png: ``encode_mask(mask)``, when the caller has it already (a run's images share their mask).
    """
    height, width = counts.shape
    if len(labels) != NUM_ATTRIBUTES:
        raise ValueError(f"labels must have {NUM_ATTRIBUTES} entries. Received: len(labels)={len(labels)}")
    feature = {
        "image": _bytes(encode_png_uint16(counts)),
        "height": _ints([height]),
        "width": _ints([width]),
        "labels": _ints(labels),
        "run_id": _ints([run_id]),
        "image_id": _ints([image_id]),
        "params": _bytes(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()),
    }
    if mask is not None:
        if mask.shape != counts.shape:
            raise ValueError(f"mask must have the image's shape {counts.shape}. Received: mask.shape={mask.shape}")
        feature["mask"] = _bytes(encode_mask(mask) if mask_png is None else mask_png)
    if beam_xy is not None:
        feature["beam"] = _floats(beam_xy)
    if resized_size and resized_size < max(height, width):
        feature["resized"] = _bytes(encode_resized(counts, mask, resized_size))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def decode_image_and_mask(record: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """A parsed record's ``image`` and ``mask`` PNGs → (H, W) float32 counts and (H, W) float32 1 / 0."""
    image = tf.cast(tf.io.decode_png(record["image"], channels=1, dtype=tf.uint16)[:, :, 0], tf.float32)
    mask = tf.cond(tf.strings.length(record["mask"]) > 0,
                   lambda: tf.cast(tf.io.decode_png(record["mask"], channels=1)[:, :, 0], tf.float32),
                   lambda: tf.ones_like(image))
    return image, mask


def parse_example(serialized: tf.Tensor, decode: bool = True) -> dict:
    """Serialized Example (scalar string tensor) → dict with ``image`` as (H, W) float32 counts,
    ``mask`` (H, W) float32 1 / 0 (all 1 when the record has none) and ``beam`` (2,) float32.

    Args:
        decode: False: leave ``image`` and ``mask`` as PNG bytes (see :func:`decode_image_and_mask`).

    Graph-compatible (use inside ``tf.data.Dataset.map``).
    """
    record = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    record["labels"] = tf.cast(record["labels"], tf.float32)
    if decode:
        record["image"], record["mask"] = decode_image_and_mask(record)
    return record


def parse_example_numpy(serialized: bytes) -> dict:
    """Eager helper: serialized Example → numpy arrays and the decoded params dict."""
    record = parse_example(tf.constant(serialized))
    out = {k: v.numpy() for k, v in record.items()}
    out["params"] = json.loads(out["params"].decode())
    return out
