"""The convolutional patch autoencoder (Wang et al., WACV 2017, Fig. 5).

    patch (P, P, 1) ─► encoder ─► code logits (code_size) ─► softmax ─► decoder ─► reconstruction (P, P)

The softmax output is the patch's soft assignment to ``code_size`` clusters; it is the
feature the spatial pyramid pools (``xrayscatter.autoencoder.spm``). Inputs are normalised patches
(``xrayscatter.normalization.normalize_counts``), reconstructions are in the same units.

The encoder uses only ``valid`` convolutions whose receptive field is exactly one patch:

    P = 32:  conv 4×4/2 → 15 · conv 3×3/2 → 7 · conv 3×3/2 → 3 · conv 3×3 (code_size) → 1

so applied to a whole image it gives, at every output position, exactly the code of the
P × P patch under it, on a grid of stride ``P / 4`` px (8 px for P = 32). That is what
makes the SPM features a few convolutions over the whole image instead of a loop over
patches (:func:`encode_grid`).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers


def encoder_stride(patch_size: int) -> int:
    """Distance (px) between neighbouring codes when the encoder runs over a whole image."""
    return patch_size // 4


def _check_patch_size(patch_size: int) -> int:
    depth = int(round(math.log2(patch_size))) - 2  # stride-2 convolutions in the encoder
    if patch_size < 16 or 2 ** (depth + 2) != patch_size:
        raise ValueError(f"patch_size must be a power of two ≥ 16. Received: patch_size={patch_size}")
    return depth


def build_encoder(patch_size: int = 32, code_size: int = 1024, base_filters: int = 32,
                  name: str = "encoder") -> keras.Model:
    """Patches (B, P, P, 1) float32 normalised → code logits (B, code_size) float32.

    Every convolution is ``valid`` and the receptive field of the last one is exactly
    P × P, so the same layers accept images of any size ≥ P (see :func:`encode_grid`).
    """
    depth = _check_patch_size(patch_size)
    patches = keras.Input((patch_size, patch_size, 1), name="patches")
    x = patches
    for i in range(depth):
        kernel = 4 if i == 0 else 3  # 4×4/2 on P px leaves P/2 − 1, then 3×3/2 halves (rounding down) down to 3
        x = layers.Conv2D(base_filters * 2 ** i, kernel, strides=2, padding="valid", activation="relu",
                          name=f"conv{i + 1}")(x)
    x = layers.Conv2D(code_size, 3, padding="valid", name="code_logits")(x)  # 3 × 3 → 1 × 1
    logits = layers.Reshape((code_size,), name="flatten_code")(x)
    return keras.Model(patches, logits, name=name)


def build_decoder(patch_size: int = 32, code_size: int = 1024, base_filters: int = 32,
                  name: str = "decoder") -> keras.Model:
    """Soft assignments (B, code_size) float32 → reconstructed patches (B, P, P) float32, normalised units.

    Mirrors the encoder: a dense layer to a 4 × 4 map as wide as the encoder's widest
    layer, then stride-2 transposed convolutions that halve the width as they double the
    size (the 32 × 32 layer has base_filters / 2 channels: the decoder's cost is in its
    large maps, so they are kept thin), and a linear 1-channel output.
    """
    depth = _check_patch_size(patch_size)
    widest = base_filters * 2 ** (depth - 1)
    code = keras.Input((code_size,), name="assignments")
    x = layers.Dense(4 * 4 * widest, activation="relu", name="dense")(code)
    x = layers.Reshape((4, 4, widest), name="to_map")(x)
    for i in reversed(range(depth)):
        x = layers.Conv2DTranspose(max(1, base_filters * 2 ** i // 2), 4, strides=2, padding="same",
                                   activation="relu", name=f"deconv{i + 1}")(x)
    x = layers.Conv2D(1, 3, padding="same", name="pixels")(x)
    reconstruction = layers.Reshape((patch_size, patch_size), name="reconstruction")(x)
    return keras.Model(code, reconstruction, name=name)


def build_autoencoder(patch_size: int = 32, code_size: int = 1024, base_filters: int = 32) -> keras.Model:
    """Normalised patches (B, P, P) float32 → reconstructions (B, P, P) float32.

    The returned model has ``encoder`` and ``decoder`` sub-models as layers
    (``model.get_layer("encoder")``); the softmax between them is the soft assignment.
    """
    encoder = build_encoder(patch_size, code_size, base_filters)
    decoder = build_decoder(patch_size, code_size, base_filters)
    patches = keras.Input((patch_size, patch_size), name="patches")
    x = layers.Reshape((patch_size, patch_size, 1), name="add_channel")(patches)
    assignments = layers.Softmax(name="assignments")(encoder(x))
    reconstruction = decoder(assignments)
    return keras.Model(patches, reconstruction, name="patch_autoencoder")


def build_autoencoder_from_config(config) -> keras.Model:
    """The autoencoder of a pipeline's ``[autoencoder]`` table (``AutoencoderConfig``)."""
    return build_autoencoder(config.patch_size, config.code_size, config.base_filters)


def encode_patches(encoder: keras.Model, patches: tf.Tensor) -> tf.Tensor:
    """Normalised patches (B, P, P) float32 → soft assignments (B, code_size) float32 (rows sum to 1)."""
    return tf.nn.softmax(encoder(patches[..., None]), axis=-1)


def encode_grid(encoder: keras.Model, images: tf.Tensor, stride: int) -> tf.Tensor:
    """Encode every P × P patch of a dense grid at once, fully convolutionally.

    Args:
        encoder: from :func:`build_encoder`.
        images: (B, S, S, 1) float32 normalised, S ≥ P.
        stride: grid stride in px, a multiple of :func:`encoder_stride` (8 for P = 32).

    Returns:
        (B, G, G, code_size) float32 soft assignments, G = (S − P) // stride + 1;
        entry [b, i, j] is the assignment of the patch whose top-left corner is
        (i · stride, j · stride), equal to ``encode_patches`` on that patch.
    """
    patch_size = encoder.input_shape[1]
    step = encoder_stride(patch_size)
    if stride % step:
        raise ValueError(f"stride must be a multiple of {step} px for patch_size {patch_size}. "
                         f"Received: stride={stride}")
    convs = [layer for layer in encoder.layers if isinstance(layer, layers.Conv2D)]
    x = images
    for layer in convs[:-1]:
        x = layer(x)
    head = convs[-1]
    # The head is the only layer whose output positions are kept: striding it by stride/step
    # skips the grid positions we do not want instead of computing and discarding them.
    logits = tf.nn.conv2d(x, head.kernel, strides=stride // step, padding="VALID") + head.bias
    return tf.nn.softmax(logits, axis=-1)
