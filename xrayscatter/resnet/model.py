"""ResNet-50 (He et al. 2016; Wang et al., WACV 2017, Table 1) for single-channel detector images.

    image (S, S, 1) ─► conv1 7×7/2 ─► max pool 3×3/2 ─► conv2_x (3 blocks) ─► conv3_x (4)
                    ─► conv4_x (6) ─► conv5_x (3) ─► global average pool ─► feature (2048·w)
    feature ─► Dense(17, sigmoid, float32) ─► attribute probabilities

:func:`build_backbone` with ``width_multiplier=1`` builds exactly
``keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
input_shape=(S, S, 1))``: the same layers, names, shapes and parameter count (the tests
check it). It is re-built here rather than called because the CPU default needs a
narrower network: ``width_multiplier`` scales every convolution's filter count and
keeps the block layout (3, 4, 6, 3 bottlenecks), so the network stays a ResNet-50.
"""

from __future__ import annotations

import keras
from keras import layers

from xrayscatter.attributes import NUM_ATTRIBUTES

# Bottleneck widths and block counts of ResNet-50 (He et al. 2016, Table 1).
STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
STEM_FILTERS = 64
EXPANSION = 4  # a bottleneck's output has 4× its inner width
BN_EPSILON = 1.001e-5  # as keras.applications.resnet
BACKBONE_NAME = "resnet50"  # the backbone's layer name inside the classifier


def scaled(filters: int, width_multiplier: float) -> int:
    """Filter count of a layer at a width multiplier (at least 1)."""
    return max(1, int(round(filters * width_multiplier)))


def feature_size(width_multiplier: float) -> int:
    """Length of the pooled feature: 2048 at width 1."""
    return EXPANSION * scaled(STAGES[-1][1], width_multiplier)


def _bottleneck(x, filters: int, stride: int, conv_shortcut: bool, name: str):
    """One ResNet v1 bottleneck block, the layer names of keras.applications.resnet."""
    if conv_shortcut:
        shortcut = layers.Conv2D(EXPANSION * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="SAME", name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(EXPANSION * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build_backbone(input_size: int, width_multiplier: float = 1.0, channels: int = 1,
                   name: str = BACKBONE_NAME) -> keras.Model:
    """The ResNet-50 feature extractor.

    Args:
        input_size: S, the side of the square input (px), ≥ 32.
        width_multiplier: scales every layer's filter count; 1.0 is ResNet-50.
        channels: input channels (1 for detector images).

    Returns:
        A functional model: (B, S, S, channels) float32 normalised image →
        (B, 2048·width_multiplier) float32 globally average-pooled feature.
    """
    if input_size < 32:
        raise ValueError(f"input_size must be ≥ 32. Received: input_size={input_size}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0. Received: width_multiplier={width_multiplier}")
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(inputs)
    x = layers.Conv2D(scaled(STEM_FILTERS, width_multiplier), 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, filters, blocks, stride in STAGES:
        width = scaled(filters, width_multiplier)
        x = _bottleneck(x, width, stride, conv_shortcut=True, name=f"{stage}_block1")
        for i in range(2, blocks + 1):
            x = _bottleneck(x, width, 1, conv_shortcut=False, name=f"{stage}_block{i}")
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, features, name=name)


def build_classifier(backbone: keras.Model, num_attributes: int = NUM_ATTRIBUTES) -> keras.Model:
    """Backbone + sigmoid head: (B, S, S, 1) normalised image → (B, num_attributes) probabilities.

    The head is kept in float32 under a ``mixed_float16`` policy so that the
    probabilities and the loss are computed in full precision.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    features = backbone(inputs)
    probabilities = layers.Dense(num_attributes, activation="sigmoid", dtype="float32",
                                 name="attributes")(features)
    return keras.Model(inputs, probabilities, name="resnet_attributes")


def first_conv_kernel(backbone: keras.Model):
    """The stem's 7×7 kernel, (7, 7, channels, filters) float32 — the paper's Fig. 4 filters."""
    return keras.ops.convert_to_numpy(backbone.get_layer("conv1_conv").kernel)
