"""One normalisation of detector counts, shared by training, export and prediction.

Detector intensities span five or more decades, so every stage works on log-scaled
counts. The function lives in the TensorFlow graph: SavedModels take raw counts.

    x = log(1 + max(counts, 0)) / log(1 + 65535)

so a 16-bit detector's range maps to [0, 1] (32-bit Pilatus counts above 65535 give
values a little above 1; nothing is clipped). Missing pixels, i.e. negative values
(Pilatus module gaps are −1, bad pixels −2), NaN and ±inf, map to 0, the value of an
unexposed pixel: the same rule in training (simulated gaps are stored as 0) and in
prediction.
"""

from __future__ import annotations

import math

import tensorflow as tf

LOG_COUNT_SCALE = math.log1p(65535.0)
NORMALIZATION_DESCRIPTION = (
    "x = log1p(max(counts, 0)) / log1p(65535); negative, NaN and inf pixels are missing → 0"
)


def normalize_counts(counts: tf.Tensor) -> tf.Tensor:
    """Raw counts (any shape, any real dtype) → float32 log-scaled values, missing → 0."""
    counts = tf.cast(counts, tf.float32)
    valid = tf.math.is_finite(counts) & (counts >= 0.0)
    counts = tf.where(valid, counts, tf.zeros_like(counts))
    return tf.math.log1p(counts) / LOG_COUNT_SCALE


def pad_to_square(images: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) → (B, S, S, C), S = max(H, W), centred, padded with 0 (missing).

    Padding instead of stretching keeps rings circular, so one model serves detectors
    of any aspect ratio (Pilatus 300K is 487 × 619 px).
    """
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    size = tf.maximum(height, width)
    top = (size - height) // 2
    left = (size - width) // 2
    return tf.image.pad_to_bounding_box(images, top, left, size, size)


def to_model_input(counts: tf.Tensor, size: int) -> tf.Tensor:
    """(B, H, W) raw counts → (B, size, size, 1) normalised, padded square, resized.

    Resizing is bilinear with antialiasing, so shrinking a large frame averages
    (rather than skips) its pixels.
    """
    x = normalize_counts(counts)[..., None]
    x = pad_to_square(x)
    return tf.image.resize(x, (size, size), method="bilinear", antialias=True)
