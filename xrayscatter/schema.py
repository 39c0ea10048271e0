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
=============  ===========  ==========================================================

Masked pixels (module gaps, dead pixels) are stored as 0 counts, as 16-bit detector
files store them.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from xrayscatter.attributes import NUM_ATTRIBUTES

SCHEMA_VERSION = 1

FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "labels": tf.io.FixedLenFeature([NUM_ATTRIBUTES], tf.int64),
    "run_id": tf.io.FixedLenFeature([], tf.int64),
    "image_id": tf.io.FixedLenFeature([], tf.int64),
    "params": tf.io.FixedLenFeature([], tf.string),
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
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def encode_png_uint16(counts: np.ndarray) -> bytes:
    """(H, W) counts → 16-bit PNG bytes. Values are clipped to [0, 65535] first."""
    counts = np.clip(np.nan_to_num(counts, nan=0.0), 0, 65535).astype(np.uint16)
    return tf.io.encode_png(counts[:, :, None], compression=6).numpy()


def serialize_example(counts: np.ndarray, labels, run_id: int, image_id: int, params: dict) -> bytes:
    """One image and its record → serialized ``tf.train.Example`` bytes (deterministic)."""
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
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict:
    """Serialized Example (scalar string tensor) → dict with ``image`` as (H, W) float32 counts.

    Graph-compatible (use inside ``tf.data.Dataset.map``).
    """
    record = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    image = tf.io.decode_png(record["image"], channels=1, dtype=tf.uint16)
    record["image"] = tf.cast(image[:, :, 0], tf.float32)
    record["labels"] = tf.cast(record["labels"], tf.float32)
    return record


def parse_example_numpy(serialized: bytes) -> dict:
    """Eager helper: serialized Example → numpy arrays and the decoded params dict."""
    record = parse_example(tf.constant(serialized))
    out = {k: v.numpy() for k, v in record.items()}
    out["params"] = json.loads(out["params"].decode())
    return out
