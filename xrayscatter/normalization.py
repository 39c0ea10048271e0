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

from xrayscatter.config import INPUT_CHANNELS

LOG_COUNT_SCALE = math.log1p(65535.0)
NORMALIZATION_DESCRIPTION = (
    "x = log1p(max(counts, 0)) / log1p(65535); negative, NaN and inf pixels are missing → 0"
)
# The input channels a network can be given (resnet.input_channels), each (B, S, S) after
# padding to a square and resizing:
#   log       x above, missing pixels 0 (the single channel of the first models)
#   filled    x with missing pixels filled by their neighbours' mean: the resized x divided by the
#             resized valid fraction (normalised convolution), 0 where nothing is measured
#   contrast  filled, stretched per image between its 2nd and 99.9th percentile over measured
#             pixels: what a person sees on a log display scaled to the image, whatever the counts
#   valid     fraction of measured pixels (1 measured, 0 module gap, masked or padding), so
#             that gaps and masks are not mistaken for beamstop shadows
CONTRAST_PERCENTILES = (2.0, 99.9)


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


def measured(counts: tf.Tensor) -> tf.Tensor:
    """Raw counts (any shape) → float32 1 where the pixel was measured (finite and ≥ 0), else 0."""
    counts = tf.cast(counts, tf.float32)
    return tf.cast(tf.math.is_finite(counts) & (counts >= 0.0), tf.float32)


def resize_square(images: tf.Tensor, size: int) -> tf.Tensor:
    """(B, N, N, C) → (B, size, size, C), bilinear, antialiased when shrinking.

    Growing, the antialiasing kernel gives the plain bilinear result (to 1e-7) at six
    times the cost, so it is used only when N > size (N is known only at run time).
    """
    return tf.cond(tf.shape(images)[1] > size,
                   lambda: tf.image.resize(images, (size, size), method="bilinear", antialias=True),
                   lambda: tf.image.resize(images, (size, size), method="bilinear", antialias=False))


def square_log_and_valid(counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W) raw counts → ((B, S, S, 1) log-scaled counts with missing 0, (B, S, S, 1) measured 1/0),
    padded to a centred square (padding is missing)."""
    return pad_to_square(normalize_counts(counts)[..., None]), pad_to_square(measured(counts)[..., None])


def _percentile_over(values: tf.Tensor, where: tf.Tensor, percent: float) -> tf.Tensor:
    """(B, N) values, (B, N) bool → (B,) the ``percent`` percentile of each row's selected values
    (nearest rank; 0 for a row with none).

    Only the values between the rank and the near end are ordered (``tf.math.top_k`` of the smallest or the
    largest few): the same value a full sort gives, at a fifth of its time for the contrast channel's 2nd and
    99.9th percentiles of a 256² image.
    """
    count = tf.reduce_sum(tf.cast(where, tf.int32), axis=1)
    rank = tf.cast(tf.math.floor(tf.cast(tf.maximum(count - 1, 0), tf.float32) * percent / 100.0), tf.int32)
    if percent <= 50.0:  # the rank-th smallest is the last of the (rank + 1) smallest
        smallest = -tf.math.top_k(tf.where(where, -values, -float("inf")), tf.reduce_max(rank) + 1).values
        picked = tf.gather(smallest, rank, batch_dims=1)
    else:  # the rank-th smallest is the (count − rank)-th largest
        from_top = tf.maximum(count - rank, 1)
        largest = tf.math.top_k(tf.where(where, values, -float("inf")), tf.reduce_max(from_top)).values
        picked = tf.gather(largest, from_top - 1, batch_dims=1)
    return tf.where(count > 0, picked, 0.0)


def contrast_range(filled: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, S, S, 1) filled log counts and measured fraction → ((B, 1, 1, 1), (B, 1, 1, 1)): the contrast
    channel's stretch, the ``CONTRAST_PERCENTILES`` of each image's measured pixels."""
    flat = tf.reshape(filled, (tf.shape(filled)[0], -1))
    where = tf.reshape(valid, tf.shape(flat)) > 0.5
    low, high = (_percentile_over(flat, where, p)[:, None, None, None] for p in CONTRAST_PERCENTILES)
    return low, high


def resized_parts(log_square: tf.Tensor, valid_square: tf.Tensor, size: int) -> dict:
    """Padded square (B, N, N, 1) log counts and measured fraction → ``log``, ``filled`` and ``valid``, each
    (B, size, size, 1), and ``seen`` (1 where anything was measured): what the input channels are made of."""
    # one resize of both: the same per-channel result in one kernel call
    log, valid = tf.split(resize_square(tf.concat([log_square, valid_square], axis=-1), size), 2, axis=-1)
    seen = tf.cast(valid > 0.05, tf.float32)
    filled = tf.math.divide_no_nan(log, tf.maximum(valid, 0.05)) * seen
    return {"log": log, "filled": filled, "valid": valid, "seen": seen}


def channels_from_parts(parts: dict, channels, stretch: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """:func:`resized_parts` → (B, size, size, len(channels)). ``stretch``: the contrast channel's (low, high),
    each (B, 1, 1, 1), where the caller has them already (:func:`contrast_range` of the same frames at another
    size: the 15-crop feature's three scales share the smallest one's); None: this size's own."""
    unknown = [c for c in channels if c not in INPUT_CHANNELS]
    if unknown or not channels:
        raise ValueError(f"channels must be a non-empty list of {INPUT_CHANNELS}. Received: channels={list(channels)}")
    out = dict(parts)
    if "contrast" in channels:
        low, high = contrast_range(parts["filled"], parts["valid"]) if stretch is None else stretch
        stretched = (parts["filled"] - low) / tf.maximum(high - low, 1e-3)
        out["contrast"] = tf.clip_by_value(stretched, 0.0, 1.0) * parts["seen"]
    return tf.concat([out[c] for c in channels], axis=-1)


def channels_from_square(log_square: tf.Tensor, valid_square: tf.Tensor, size: int, channels) -> tf.Tensor:
    """Padded square (B, N, N, 1) log counts and measured fraction → (B, size, size, len(channels)).

    See ``INPUT_CHANNELS`` for what each channel is.
    """
    return channels_from_parts(resized_parts(log_square, valid_square, size), channels)


def model_input(counts: tf.Tensor, size: int, channels=("log",)) -> tf.Tensor:
    """(B, H, W) raw counts → (B, size, size, len(channels)): padded square, resized, the channels asked for.

    ``model_input(counts, size, ("log",))`` equals :func:`to_model_input`.
    """
    log_square, valid_square = square_log_and_valid(counts)
    return channels_from_square(log_square, valid_square, size, tuple(channels))
