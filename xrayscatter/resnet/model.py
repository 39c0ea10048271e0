"""ResNet-50 (He et al. 2016; Wang et al., WACV 2017, Table 1) for detector images.

    image (S, S, C) ─► conv1 7×7/2 ─► max pool 3×3/2 ─► conv2_x (3 blocks) ─► conv3_x (4)
                    ─► conv4_x (6) ─► conv5_x (3) ─► global average pool ─► feature (2048·w)
    feature ─► Dense(17, sigmoid, float32) ─► attribute probabilities

C is the number of input channels (``normalization``: log counts, contrast, measured fraction;
the paper's network has one). :func:`build_network` adds the optional beam-centre head and
beam-region branch.

:func:`build_backbone` with ``width_multiplier=1`` builds exactly
``keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
input_shape=(S, S, 1))``: the same layers, names, shapes and parameter count (the tests
check it). It is re-built here rather than called because the CPU default needs a
narrower network: ``width_multiplier`` scales every convolution's filter count and
keeps the block layout (3, 4, 6, 3 bottlenecks), so the network stays a ResNet-50.
``blocks`` changes the number of bottlenecks per stage; only the smoke pipeline, which the tests
train dozens of times, uses fewer (1, 1, 1, 1): the same code path with 4 bottlenecks instead of
16, so far less graph for Keras to trace (a smoke training run: 57 s instead of 104 s on 2 cores).
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf
from keras import layers

from xrayscatter.attributes import NUM_ATTRIBUTES

# Bottleneck widths, strides and block counts of ResNet-50 (He et al. 2016, Table 1).
STAGES = (("conv2", 64, 1), ("conv3", 128, 2), ("conv4", 256, 2), ("conv5", 512, 2))
RESNET50_BLOCKS = (3, 4, 6, 3)
STEM_FILTERS = 64
EXPANSION = 4  # a bottleneck's output has 4× its inner width
BN_EPSILON = 1.001e-5  # as keras.applications.resnet
BACKBONE_NAME = "resnet50"  # the backbone's layer name inside the classifier


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's ``BatchNormalization`` computed by TensorFlow's fused kernel (``FusedBatchNormV3``).

    The same layer, weights and numbers (4-D NHWC inputs; statistics, normalisation and moving averages
    as Keras computes them, to ~10⁻⁶), but one kernel per layer and one for its gradient where Keras 3
    builds batch norm from a dozen elementwise ops and reductions (``tf.nn.moments``, then ``x·s + o``),
    each a pass over the activation: a default training step ~4 % faster on the 2-core AVX2 machine
    (float32, batch 16; README, "The ResNet"). Masks, renormalisation and synchronised statistics fall
    back to Keras's own path.
    """

    def call(self, inputs, training=None, mask=None):
        if (mask is not None or self.renorm or self.synchronized or len(inputs.shape) != 4
                or self.axis not in (3, -1)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras does under mixed precision
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the unbiased (n / (n − 1)) variance for the moving average; Keras
            # averages the biased one, with which both normalise.
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, data_format="NHWC",
                is_training=False)
        return tf.cast(outputs, self.compute_dtype)


def beam_map_layer(blocks=RESNET50_BLOCKS) -> str:
    """The stride-8 map (the last conv3 block's output: 16 × 16 cells at 128 px) that the beam-centre heatmap reads."""
    return f"conv3_block{blocks[1]}_out"


def layout_name(blocks=RESNET50_BLOCKS) -> str:
    """How reports and SavedModel metadata name the block layout: "ResNet-50" or e.g. "ResNet 1-1-1-1"."""
    blocks = tuple(blocks)
    return "ResNet-50" if blocks == RESNET50_BLOCKS else "ResNet " + "-".join(map(str, blocks))


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
        shortcut = FusedBatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = FusedBatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="SAME", name=f"{name}_2_conv")(x)
    x = FusedBatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(EXPANSION * filters, 1, name=f"{name}_3_conv")(x)
    x = FusedBatchNormalization(axis=3, epsilon=BN_EPSILON, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build_backbone(input_size: int, width_multiplier: float = 1.0, channels: int = 1,
                   name: str = BACKBONE_NAME, blocks=RESNET50_BLOCKS) -> keras.Model:
    """The ResNet-50 feature extractor.

    Args:
        input_size: S, the side of the square input (px), ≥ 32.
        width_multiplier: scales every layer's filter count; 1.0 is ResNet-50.
        channels: input channels (1 for detector images).
        blocks: bottlenecks in conv2_x … conv5_x; (3, 4, 6, 3) is ResNet-50.

    Returns:
        A functional model: (B, S, S, channels) float32 normalised image →
        (B, 2048·width_multiplier) float32 globally average-pooled feature.
    """
    if input_size < 32:
        raise ValueError(f"input_size must be ≥ 32. Received: input_size={input_size}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0. Received: width_multiplier={width_multiplier}")
    if len(blocks) != len(STAGES) or min(blocks) < 1:
        raise ValueError(f"blocks must be {len(STAGES)} counts ≥ 1 (conv2_x … conv5_x). Received: blocks={blocks}")
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(inputs)
    x = layers.Conv2D(scaled(STEM_FILTERS, width_multiplier), 7, strides=2, name="conv1_conv")(x)
    x = FusedBatchNormalization(axis=3, epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for (stage, filters, stride), count in zip(STAGES, blocks):
        width = scaled(filters, width_multiplier)
        x = _bottleneck(x, width, stride, conv_shortcut=True, name=f"{stage}_block1")
        for i in range(2, count + 1):
            x = _bottleneck(x, width, 1, conv_shortcut=False, name=f"{stage}_block{i}")
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, features, name=name)


def build_classifier(backbone: keras.Model, num_attributes: int = NUM_ATTRIBUTES) -> keras.Model:
    """Backbone + sigmoid head: (B, S, S, C) input channels → (B, num_attributes) probabilities (the paper's network).

    The head is kept in float32 under a ``mixed_float16`` policy so that the probabilities and the
    loss are computed in full precision.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    probabilities = layers.Dense(num_attributes, activation="sigmoid", dtype="float32",
                                 name="attributes")(backbone(inputs))
    return keras.Model(inputs, probabilities, name="resnet_attributes")


class SoftArgmax2D(layers.Layer):
    """(B, H, W, 1) logits → (B, 2) float32 expected (x, y) under their softmax over the map, as fractions
    of its width and height (pixel centres at (index + 0.5) / size): a differentiable peak position."""

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        height, width = logits.shape[1], logits.shape[2]
        weights = tf.reshape(tf.nn.softmax(tf.reshape(logits, (-1, height * width)), axis=-1), (-1, height, width))
        xs = (tf.range(width, dtype=tf.float32) + 0.5) / width
        ys = (tf.range(height, dtype=tf.float32) + 0.5) / height
        return tf.stack([tf.reduce_sum(weights * xs[None, None, :], axis=[1, 2]),
                         tf.reduce_sum(weights * ys[None, :, None], axis=[1, 2])], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)


def sample_window(images: tf.Tensor, centre: tf.Tensor, window: float, crop: int) -> tf.Tensor:
    """Bilinear samples of a square window of each image: (B, D, D, C), centres (B, 2) (x, y) as fractions of D,
    window side as a fraction of D → (B, crop, crop, C), 0 outside the image.

    Written with gathers rather than ``tf.image.crop_and_resize``, which XLA cannot compile.
    """
    size = images.shape[1]
    offsets = ((tf.range(crop, dtype=tf.float32) + 0.5) / crop - 0.5) * window
    columns = (centre[:, 0:1] + offsets[None, :]) * size - 0.5  # (B, crop) pixel coordinates
    rows = (centre[:, 1:2] + offsets[None, :]) * size - 0.5

    def corners(coords):
        low = tf.floor(coords)
        frac = coords - low
        low = tf.cast(low, tf.int32)
        out = []
        for index, weight in ((low, 1.0 - frac), (low + 1, frac)):
            inside = tf.cast((index >= 0) & (index < size), tf.float32)
            out.append((tf.clip_by_value(index, 0, size - 1), weight * inside))
        return out

    result = 0.0
    for row_index, row_weight in corners(rows):
        picked_rows = tf.gather(images, row_index, axis=1, batch_dims=1)  # (B, crop, D, C)
        for column_index, column_weight in corners(columns):
            picked = tf.gather(picked_rows, column_index, axis=2, batch_dims=1)  # (B, crop, crop, C)
            result += picked * (row_weight[:, :, None, None] * column_weight[:, None, :, None])
    return result


class BeamWindow(layers.Layer):
    """The window of the detail image around the beam centre, resampled to ``crop`` × ``crop`` px.

    Inputs: detail (B, D, D, C), the centre to use (B, 2) (x, y) as fractions of the side, NaN where the
    network's own estimate (B, 2) is to be used instead (always at inference; during training for
    images whose beam is off the image). The window's side is ``window`` × D; outside the image it is 0
    (nothing measured, as padding).
    """

    def __init__(self, crop: int, window: float, **kwargs):
        super().__init__(**kwargs)
        self.crop, self.window = int(crop), float(window)

    def call(self, detail, given, estimate):
        given = tf.cast(given, tf.float32)
        centre = tf.where(tf.math.is_finite(given), given, tf.stop_gradient(tf.cast(estimate, tf.float32)))
        crops = sample_window(tf.cast(detail, tf.float32), centre, self.window, self.crop)
        return tf.cast(crops, self.compute_dtype)

    def compute_output_shape(self, detail_shape, given_shape=None, estimate_shape=None):
        return (detail_shape[0], self.crop, self.crop, detail_shape[-1])

    def get_config(self):
        return {**super().get_config(), "crop": self.crop, "window": self.window}


class RadialProfile(layers.Layer):
    """The azimuthal mean of each channel in log-spaced rings about the beam centre: (B, bins, C).

    Inputs: detail (B, D, D, C), the centre to use (B, 2) (x, y) as fractions of D, NaN where the
    network's own estimate (B, 2) is to be used instead (as :class:`BeamWindow`). Ring k holds the pixels
    at radius r with ``k = floor(bins · ln(max(r, 1)) / ln(1.5 D))`` (r in px of D: ring 0 is r < ~1 px,
    the last reaches the far corner of an image whose beam is off its edge). Rings with no pixel are 0.

    Why: powder rings, their ratios (FCC √(4/3), BCC √2, lamellar 2, hexagonal √3) and the halo of a
    structure factor are radial; about the beam centre a ring is one bin, and on log radius a lattice's
    ratios are a fixed pattern of shifts that a 1-D convolution sees anywhere. A 128-px view leaves these
    ratios a few pixels apart; the profile is taken from the detail image.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(bins)

    def call(self, detail, given, estimate):
        detail = tf.cast(detail, tf.float32)
        given = tf.cast(given, tf.float32)
        centre = tf.where(tf.math.is_finite(given), given, tf.stop_gradient(tf.cast(estimate, tf.float32)))
        size, channels = detail.shape[1], detail.shape[-1]
        coords = tf.range(size, dtype=tf.float32) + 0.5
        cx = centre[:, 0:1, None] * size
        cy = centre[:, 1:2, None] * size
        radius = tf.sqrt((coords[None, None, :] - cx) ** 2 + (coords[None, :, None] - cy) ** 2)  # (B, D, D)
        ring = tf.cast(tf.math.log(tf.maximum(radius, 1.0)) / tf.math.log(1.5 * size) * self.bins, tf.int32)
        ring = tf.clip_by_value(ring, 0, self.bins - 1)
        batch = tf.shape(detail)[0]
        segment = tf.reshape(ring + self.bins * tf.range(batch)[:, None, None], (-1,))
        sums = tf.math.unsorted_segment_sum(tf.reshape(detail, (-1, channels)), segment, batch * self.bins)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(segment, tf.float32), segment, batch * self.bins)
        profile = tf.reshape(sums / tf.maximum(counts, 1.0)[:, None], (batch, self.bins, channels))
        return tf.cast(profile, self.compute_dtype)

    def compute_output_shape(self, detail_shape, given_shape=None, estimate_shape=None):
        return (detail_shape[0], self.bins, detail_shape[-1])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def build_profile_branch(bins: int, channels: int, name: str = "profile_branch") -> keras.Model:
    """A small 1-D CNN on the radial profile: (B, bins, C) → (B, 128) max- and average-pooled features.

    Three 5-tap convolutions (32, 64, 64 filters, ReLU), the first two followed by a factor-2 max pool.
    """
    inputs = keras.Input((bins, channels), name="profile")
    x = inputs
    for i, filters in enumerate((32, 64, 64), start=1):
        x = layers.Conv1D(filters, 5, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
        if i < 3:
            x = layers.MaxPooling1D(2, name=f"{name}_pool{i}")(x)
    pooled = layers.Concatenate(name=f"{name}_pool")([layers.GlobalMaxPooling1D()(x), layers.GlobalAveragePooling1D()(x)])
    return keras.Model(inputs, pooled, name=name)


FINE_MAP_STAGE = 3  # the detail branch's convolution whose map (stride 4) the fine beam heatmap reads


def build_detail_branch(crop: int, channels: int, name: str = "detail_branch", refine: bool = False) -> keras.Model:
    """A small CNN on the beam window: (B, crop, crop, C) → (B, 192) average- and max-pooled features.

    Five 3 × 3 convolutions (16, 32, 48, 64, 96 filters, the last four with stride 2), each with batch
    normalisation and ReLU: cheap beside the backbone (a 64-px window costs ~3 % of a width-0.25
    ResNet-50 at 128 px), and at full detail where the backbone's input is coarse.

    With ``refine`` the branch also gives (B, crop/4, crop/4, 1) float32 logits of a fine beam-centre
    heatmap over the window, read from its third convolution's map (stride 4, receptive field ~27 px of
    the window) through a 3 × 3 and a 1 × 1 convolution: outputs ``[features, logits]``.
    """
    inputs = keras.Input((crop, crop, channels), name="window")
    x = inputs
    fine_map = None
    for i, (filters, stride) in enumerate(((16, 1), (32, 2), (48, 2), (64, 2), (96, 2)), start=1):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if i == FINE_MAP_STAGE:
            fine_map = x
    pooled = layers.Concatenate(name=f"{name}_pool")([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    if not refine:
        return keras.Model(inputs, pooled, name=name)
    heat = layers.Conv2D(32, 3, padding="same", activation="relu", name=f"{name}_beam_conv")(fine_map)
    heat = layers.Conv2D(1, 1, dtype="float32", name=f"{name}_beam_logits")(heat)
    return keras.Model(inputs, [pooled, heat], name=name)


class RefinedCentre(layers.Layer):
    """The beam centre refined within the beam window: (given, estimate, position in the window) → (B, 2).

    Inputs: the centre given (B, 2) (NaN → the coarse ``estimate`` (B, 2) is used, as :class:`BeamWindow`
    does), and the fine heatmap's soft-argmax (B, 2) as fractions of the window. Output: the window's
    centre + (position − ½) × ``window``, (x, y) as fractions of the image side. No gradient reaches the
    window's centre: the fine head learns where the beam is in what it sees, the coarse head on its own.
    """

    def __init__(self, window: float, **kwargs):
        super().__init__(**kwargs)
        self.window = float(window)

    def call(self, given, estimate, position):
        given = tf.cast(given, tf.float32)
        centre = tf.where(tf.math.is_finite(given), given, tf.cast(estimate, tf.float32))
        return tf.stop_gradient(centre) + (tf.cast(position, tf.float32) - 0.5) * self.window

    def compute_output_shape(self, given_shape, estimate_shape=None, position_shape=None):
        return (given_shape[0], 2)

    def get_config(self):
        return {**super().get_config(), "window": self.window}


def build_network(input_size: int, width_multiplier: float, channels: int, *, beam_head: bool = False,
                  detail_size: int = 0, detail_crop: int = 64, detail_window: float = 0.25,
                  profile_bins: int = 0, beam_refine: bool = False,
                  num_attributes: int = NUM_ATTRIBUTES, blocks=RESNET50_BLOCKS) -> keras.Model:
    """The tagging network: the ResNet-50 backbone, optionally with a beam-centre head and a beam-region branch.

    Without either it is :func:`build_classifier`. With them::

        image (S, S, C) ─► backbone ─► pooled features ───────────────────────────┐
                              └─ conv3 map (stride 8) ─► 3×3 conv ─► 1×1 ─► soft-argmax ─► beam (x, y)
        detail (D, D, C), centre (2,) ─► BeamWindow(beam) ─► detail branch ─► features ┤
                                     └─► RadialProfile(beam) ─► profile branch ─► features ┤
                                                                                   └─► Dense(17, sigmoid)

    The beam centre comes from a heatmap over the stride-8 feature map (a position is what a map
    says, and a pooled feature forgets it). The beam region — beamstop, direct beam, the strongest
    low-q scattering — is where several attributes live and where a 128-px view of a 1000-px frame
    has the fewest pixels, so the detail branch looks at a window of ``detail_window`` of the image
    around the estimated centre, taken from the image at ``detail_size`` px. With ``profile_bins`` > 0 the
    detail image's radial profile about the same centre (:class:`RadialProfile`) feeds a 1-D CNN too.

    Inputs: ``image`` (B, S, S, C); with the detail branch also ``detail`` (B, D, D, C) and ``centre``
    (B, 2) (NaN → the network's own estimate). Outputs: the (B, 17) probabilities, or with the beam head
    ``{"attributes": (B, 17), "beam": (B, 2)}`` (fractions of the image side).

    With ``beam_refine`` the detail branch also reads a fine heatmap over the beam window
    (:class:`RefinedCentre`): ``beam`` is then the refined centre, about which the radial profile is
    taken, and ``beam_coarse`` (B, 2) the backbone's estimate that placed the window.
    """
    if profile_bins and not detail_size:
        raise ValueError("the radial profile is taken from the detail image: it needs the beam-region branch. "
                         f"Received: profile_bins={profile_bins}, detail_size={detail_size}")
    if beam_refine and not detail_size:
        raise ValueError("the beam centre is refined within the beam window: it needs the beam-region branch. "
                         f"Received: beam_refine={beam_refine}, detail_size={detail_size}")
    if detail_size and not beam_head:
        raise ValueError("the detail branch needs the beam head (it looks around the estimated beam centre). "
                         f"Received: detail_size={detail_size}, beam_head={beam_head}")
    backbone = build_backbone(input_size, width_multiplier, channels, blocks=blocks)
    if not beam_head:
        return build_classifier(backbone, num_attributes)
    trunk = keras.Model(backbone.input, [backbone.output, backbone.get_layer(beam_map_layer(blocks)).output],
                        name=BACKBONE_NAME)
    image = keras.Input((input_size, input_size, channels), name="image")
    features, beam_map = trunk(image)
    heat = layers.Conv2D(32, 3, padding="same", activation="relu", name="beam_map_conv")(beam_map)
    heat = layers.Conv2D(1, 1, dtype="float32", name="beam_map_logits")(heat)
    beam = SoftArgmax2D(dtype="float32", name="beam_coarse" if beam_refine else "beam")(heat)
    inputs = {"image": image}
    outputs = {}
    if detail_size:
        detail = keras.Input((detail_size, detail_size, channels), name="detail")
        centre = keras.Input((2,), name="centre")
        window = BeamWindow(detail_crop, detail_window, name="beam_window")(detail, centre, beam)
        branch = build_detail_branch(detail_crop, channels, refine=beam_refine)
        if beam_refine:
            detail_features, fine_logits = branch(window)
            position = SoftArgmax2D(dtype="float32", name="beam_in_window")(fine_logits)
            outputs["beam_coarse"] = beam
            beam = RefinedCentre(detail_window, dtype="float32", name="beam")(centre, beam, position)
            profile_centre = (beam, beam)  # the profile about the refined centre, in training as at inference
        else:
            detail_features = branch(window)
            profile_centre = (centre, beam)
        parts = [features, detail_features]
        if profile_bins:
            profile = RadialProfile(profile_bins, name="radial_profile")(detail, *profile_centre)
            parts.append(build_profile_branch(profile_bins, channels)(profile))
        features = layers.Concatenate(name="features_and_detail")(parts)
        inputs.update(detail=detail, centre=centre)
    probabilities = layers.Dense(num_attributes, activation="sigmoid", dtype="float32", name="attributes")(features)
    return keras.Model(inputs, {"attributes": probabilities, "beam": beam, **outputs}, name="resnet_attributes")


def feature_extractor(network: keras.Model) -> keras.Model:
    """The backbone of a network as (B, S, S, C) → (B, F) pooled features (the SVMs' and 15-crop features)."""
    backbone = network.get_layer(BACKBONE_NAME)
    if len(backbone.outputs) == 1:
        return backbone
    return keras.Model(backbone.input, backbone.outputs[0], name=f"{BACKBONE_NAME}_features")


def attribute_probabilities(outputs):
    """The (B, A) probabilities of a classifier's outputs (the whole output, or its ``attributes``)."""
    return outputs["attributes"] if isinstance(outputs, dict) else outputs


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of a model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
    return found


_TRAINING_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its traced training forward


def _training_forward(model: keras.Model):
    """``model(batch, training=True)`` traced once per model (and input shape), kept as long as the model is."""
    if model not in _TRAINING_FORWARD:
        held = weakref.ref(model)  # the function must not keep its own key (the model) alive
        _TRAINING_FORWARD[model] = tf.function(lambda batch: held()(batch, training=True), autograph=False)
    return _TRAINING_FORWARD[model]


def recalibrate_batch_norm(model: keras.Model, batches) -> int:
    """Recompute every batch-norm layer's moving mean and variance as the average of its batch statistics
    over ``batches`` (model inputs, e.g. a few hundred training images), for the weights the model has now.

    During training the moving statistics trail the weights (they average batches seen with older
    weights, at momentum 0.99), so with small batches the validation score of one epoch to the next
    swings with them; recomputed for the final weights, they describe those weights. Call it on a
    model outside any distribution strategy (``ResNetTask.plain_copy``).

    Each batch runs through one traced training-mode forward pass of ``model`` with momentum 0 (the
    moving statistics become that batch's), and the averages are assigned at the end: the same numbers as
    a running mean over the batches, without running a 50-layer graph eagerly. A model calibrated again
    (validation after every epoch) reuses the trace.

    Returns:
        The number of batches used.
    """
    bn_layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in bn_layers]
    sums: list | None = None
    count = 0
    try:
        for layer in bn_layers:
            layer.momentum = 0.0
        forward = _training_forward(model)
        for count, batch in enumerate(batches, start=1):
            forward(batch)
            statistics = [(tf.identity(layer.moving_mean.value), tf.identity(layer.moving_variance.value))  # values now
                          for layer in bn_layers]
            sums = statistics if sums is None else [(m + ms, v + vs) for (m, v), (ms, vs) in zip(statistics, sums)]
    finally:
        for layer, momentum in zip(bn_layers, momenta):
            layer.momentum = momentum
    for layer, (mean_sum, variance_sum) in zip(bn_layers, sums or []):
        layer.moving_mean.assign(mean_sum / count)
        layer.moving_variance.assign(variance_sum / count)
    return count


def first_conv_kernel(backbone: keras.Model):
    """The stem's 7×7 kernel, (7, 7, channels, filters) float32 — the paper's Fig. 4 filters."""
    return keras.ops.convert_to_numpy(backbone.get_layer("conv1_conv").kernel)
