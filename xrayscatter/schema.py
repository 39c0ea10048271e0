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
=============  ===========  ==========================================================

Masked pixels (module gaps, outside a plate's disc) are stored as 0 counts, as 16-bit
detector files store them; ``mask`` says which they are, so that training can show them
either way (0 counts, or missing as Pilatus files mark them), and ``beam`` is the target of
the ResNet's beam-centre head. Version 1 records (without them) still parse.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from xrayscatter.attributes import NUM_ATTRIBUTES

SCHEMA_VERSION = 2
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
}

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
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def encode_png_uint16(counts: np.ndarray) -> bytes:
    """(H, W) counts → 16-bit PNG bytes. Values are clipped to [0, 65535] first."""
    counts = np.clip(np.nan_to_num(counts, nan=0.0), 0, 65535).astype(np.uint16)
    return tf.io.encode_png(counts[:, :, None], compression=6).numpy()


def serialize_example(counts: np.ndarray, labels, run_id: int, image_id: int, params: dict,
                      mask: np.ndarray | None = None, beam_xy=None) -> bytes:
    """One image and its record → serialized ``tf.train.Example`` bytes (deterministic).

    Args:
        mask: (H, W) bool, True where the detector is light-sensitive (None: not stored).
        beam_xy: beam centre (x, y) in px of the image (None: not stored).
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
        feature["mask"] = _bytes(tf.io.encode_png(np.asarray(mask, np.uint8)[:, :, None], compression=6).numpy())
    if beam_xy is not None:
        feature["beam"] = _floats(beam_xy)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict:
    """Serialized Example (scalar string tensor) → dict with ``image`` as (H, W) float32 counts,
    ``mask`` (H, W) float32 1 / 0 (all 1 when the record has none) and ``beam`` (2,) float32.

    Graph-compatible (use inside ``tf.data.Dataset.map``).
    """
    record = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    image = tf.io.decode_png(record["image"], channels=1, dtype=tf.uint16)
    record["image"] = tf.cast(image[:, :, 0], tf.float32)
    record["labels"] = tf.cast(record["labels"], tf.float32)
    record["mask"] = tf.cond(tf.strings.length(record["mask"]) > 0,
                             lambda: tf.cast(tf.io.decode_png(record["mask"], channels=1)[:, :, 0], tf.float32),
                             lambda: tf.ones_like(record["image"]))
    return record


def parse_example_numpy(serialized: bytes) -> dict:
    """Eager helper: serialized Example → numpy arrays and the decoded params dict."""
    record = parse_example(tf.constant(serialized))
    out = {k: v.numpy() for k, v in record.items()}
    out["params"] = json.loads(out["params"].decode())
    return out
