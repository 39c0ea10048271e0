"""ResNet image features: the paper's 15-crop feature and the plain one.

15-crop (Wang et al., WACV 2017, Sec. 4.1): resize the image to three scales,
256, 384 and 512 px for a 224-px network (``× input_size / 224`` otherwise), take five
``input_size`` crops at each scale (centre and the four corners), run all 15 crops
through the network in one batched pass and average the 15 pooled features.

Both functions are graph code (used inside the SavedModel signatures) and take raw
detector counts; the normalisation is ``xrayscatter.normalization``'s.
"""

from __future__ import annotations

import tensorflow as tf

from xrayscatter.normalization import (channels_from_parts, contrast_range, model_input, resized_parts,
                                       square_log_and_valid)

PAPER_INPUT_SIZE = 224
PAPER_SCALES = (256, 384, 512)
NUM_CROPS = 5 * len(PAPER_SCALES)


def fifteen_crop_scales(input_size: int) -> tuple[int, ...]:
    """Side (px) of the three resized images: (256, 384, 512) × input_size / 224, rounded."""
    return tuple(int(round(s * input_size / PAPER_INPUT_SIZE)) for s in PAPER_SCALES)


def five_crops(images: tf.Tensor, crop: int) -> tf.Tensor:
    """(B, N, N, C) → (5·B, crop, crop, C): centre, top-left, top-right, bottom-left, bottom-right.

    Crop-major order: rows ``k·B … k·B + B − 1`` hold crop ``k`` of every image.
    """
    size = tf.shape(images)[1]
    far = size - crop
    centre = far // 2
    corners = ((centre, centre), (0, 0), (0, far), (far, 0), (far, far))
    crops = tf.concat([images[:, top:top + crop, left:left + crop, :] for top, left in corners], axis=0)
    # Tensor offsets lose the static crop size; the backbone wants it back.
    return tf.ensure_shape(crops, (None, crop, crop, images.shape[-1]))


def fifteen_crops(counts: tf.Tensor, input_size: int, channels=("log",)) -> tf.Tensor:
    """(B, H, W) raw counts → (15·B, input_size, input_size, C) crops of the input channels.

    The channels are made at each scale, then cropped (as in training: channels of the whole resized
    image, then a crop). The contrast channel's stretch (percentiles of the measured pixels) is taken once,
    at the smallest scale, and shared by the three: the same image's percentiles at three sizes differ by
    interpolation only, and ordering the pixels of the two larger ones was a twentieth of a feature's time
    (``bench features``). Order: scale-major, then crop (as :func:`five_crops`), then image.
    """
    log_square, valid_square = square_log_and_valid(counts)
    scales = fifteen_crop_scales(input_size)
    parts = [resized_parts(log_square, valid_square, scale) for scale in scales]
    # the scales ascend: parts[0] is the smallest
    stretch = contrast_range(parts[0]["filled"], parts[0]["valid"]) if "contrast" in channels else None
    return tf.concat([five_crops(channels_from_parts(p, channels, stretch), input_size) for p in parts], axis=0)


def fifteen_crop_features(backbone, counts: tf.Tensor, input_size: int, channels=("log",)) -> tf.Tensor:
    """(B, H, W) raw counts → (B, F) float32: the mean of the 15 crops' pooled features.

    Args:
        backbone: (n, S, S, C) → (n, F) feature model (``resnet.model.build_backbone``).
        input_size: S (px), the backbone's input side.
        channels: the backbone's input channels (``normalization.INPUT_CHANNELS``).
    """
    batch = tf.shape(counts)[0]
    features = tf.cast(backbone(fifteen_crops(counts, input_size, channels), training=False), tf.float32)
    features = tf.reshape(features, (NUM_CROPS, batch, features.shape[-1]))  # static F: the signature shows (-1, F)
    return tf.reduce_mean(features, axis=0)


def plain_features(backbone, counts: tf.Tensor, input_size: int, channels=("log",)) -> tf.Tensor:
    """(B, H, W) raw counts → (B, F) float32 feature of the image resized to the input size."""
    return tf.cast(backbone(model_input(counts, input_size, channels), training=False), tf.float32)
