"""The ResNet builder is keras.applications.ResNet50 at width 1, and narrows cleanly; the beam-centre head,
the beam-region branch, the feature extractor and batch-norm recalibration."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.attributes import NUM_ATTRIBUTES
from xrayscatter.resnet.model import (BACKBONE_NAME, BeamWindow, FusedBatchNormalization, RadialProfile, SoftArgmax2D, attribute_probabilities,
                                      batch_norm_layers, beam_map_layer, build_backbone, build_classifier, build_network,
                                      feature_extractor, feature_size, first_conv_kernel, layout_name,
                                      recalibrate_batch_norm,
                                      sample_window)


def _structure(model: keras.Model) -> list[tuple]:
    """(class, name, output shape, parameter count) of every layer, in order."""
    def kind(layer):  # our batch norm is Keras's, computed by the fused kernel
        return "BatchNormalization" if isinstance(layer, keras.layers.BatchNormalization) else type(layer).__name__

    return [(kind(layer), layer.name, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers[1:]]  # [0] is the input layer, named differently


def test_width_one_is_keras_applications_resnet50_layer_for_layer():
    reference = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(64, 64, 1))
    ours = build_backbone(64, 1.0)
    assert ours.count_params() == reference.count_params() == 23_581_440
    assert _structure(ours) == _structure(reference)
    assert ours.output.shape == (None, 2048)


@pytest.mark.parametrize("options", [{}, {"center": False}, {"scale": False, "momentum": 0.0}])
def test_fused_batch_norm_computes_what_keras_batch_norm_computes(options):
    """Outputs, input gradients and moving statistics in training, and outputs at inference, equal Keras's own
    layer's (to float32 rounding): the fused kernel is a faster way to the same numbers."""
    x = tf.random.stateless_normal((8, 6, 5, 7), seed=(1, 2)) * 3.0 + 1.0
    stock = keras.layers.BatchNormalization(epsilon=1.001e-5, **options)
    fused = FusedBatchNormalization(epsilon=1.001e-5, **options)
    for layer in (stock, fused):
        layer.build(x.shape)
        if layer.scale:
            layer.gamma.assign(np.linspace(0.5, 1.5, 7, dtype="float32"))
        if layer.center:
            layer.beta.assign(np.linspace(-0.3, 0.3, 7, dtype="float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out_stock, out_fused = stock(x, training=True), fused(x, training=True)
        loss_stock, loss_fused = tf.reduce_sum(out_stock ** 3), tf.reduce_sum(out_fused ** 3)
    np.testing.assert_allclose(out_fused, out_stock, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss_fused, x), tape.gradient(loss_stock, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, stock.moving_mean, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, stock.moving_variance, rtol=1e-5)  # Keras's biased variance
    np.testing.assert_allclose(fused(x, training=False), stock(x, training=False), atol=1e-5)


def test_fused_batch_norm_under_mixed_precision_keeps_the_compute_dtype():
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    out = layer(tf.ones((2, 4, 4, 3), tf.bfloat16) * tf.range(3, dtype=tf.bfloat16), training=True)
    assert out.dtype == tf.bfloat16 and layer.moving_mean.dtype == "float32"
    np.testing.assert_allclose(layer.moving_mean, [0.0, 0.01, 0.02], atol=1e-6)  # momentum 0.99


@pytest.mark.parametrize("width, features", [(0.5, 1024), (0.25, 512), (0.125, 256)])
def test_narrow_network_keeps_the_block_layout(width, features):
    model = build_backbone(32, width)
    names = [layer.name for layer in model.layers]
    assert sum(name.endswith("_add") for name in names) == 3 + 4 + 6 + 3
    assert model.output.shape == (None, features) and feature_size(width) == features
    assert first_conv_kernel(model).shape == (7, 7, 1, int(64 * width))


def test_fewer_blocks_keep_the_stages_names_and_the_beam_map_stride():
    """The smoke pipeline's 1-1-1-1 layout: the same stages, strides and names, one bottleneck each."""
    model = build_backbone(64, 0.125, blocks=(1, 1, 1, 1))
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.endswith("_add")] == [f"conv{s}_block1_add" for s in (2, 3, 4, 5)]
    assert model.output.shape == (None, feature_size(0.125))
    assert tuple(model.get_layer(beam_map_layer((1, 1, 1, 1))).output.shape) == (None, 8, 8, 64)  # stride 8
    assert beam_map_layer() == "conv3_block4_out" and layout_name() == "ResNet-50"
    assert layout_name((1, 1, 1, 1)) == "ResNet 1-1-1-1"
    network = build_network(64, 0.125, 3, beam_head=True, blocks=(1, 1, 1, 1))
    assert set(network.output) == {"attributes", "beam"}


def test_classifier_outputs_probabilities_in_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        classifier = build_classifier(build_backbone(32, 0.125))
    finally:
        keras.config.set_dtype_policy(previous)
    image = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    assert keras.backend.standardize_dtype(classifier.layers[1](image).dtype) == "float16"  # the backbone
    out = classifier(image)
    assert tuple(out.shape) == (2, NUM_ATTRIBUTES) and keras.backend.standardize_dtype(out.dtype) == "float32"
    out = keras.ops.convert_to_numpy(out)
    assert np.all((out > 0) & (out < 1))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="input_size"):
        build_backbone(16)
    with pytest.raises(ValueError, match="width_multiplier"):
        build_backbone(32, 0.0)
    for blocks in ((3, 4, 6), (3, 0, 6, 3)):
        with pytest.raises(ValueError, match="blocks"):
            build_backbone(32, 0.125, blocks=blocks)


# --------------------------------------------------------------------------- heads and branches
def test_soft_argmax_finds_a_peak_as_fractions_of_the_map():
    logits = np.zeros((3, 6, 10, 1), np.float32)
    logits[0, 2, 7] = 60.0  # row 2, column 7
    logits[1, 5, 0] = 60.0
    out = keras.ops.convert_to_numpy(SoftArgmax2D()(logits))
    assert out.shape == (3, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [7.5 / 10, 2.5 / 6], atol=1e-5)  # (x, y), pixel centres at index + 0.5
    np.testing.assert_allclose(out[1], [0.5 / 10, 5.5 / 6], atol=1e-5)
    np.testing.assert_allclose(out[2], [0.5, 0.5], atol=1e-6)  # a flat map: its centre
    two = np.zeros((1, 6, 10, 1), np.float32)
    two[0, 1, 2] = two[0, 3, 6] = 60.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(SoftArgmax2D()(two))[0], [4.5 / 10, 2.5 / 6], atol=1e-5)


def test_sample_window_copies_pixels_at_scale_one_and_is_zero_outside():
    rng = np.random.default_rng(0)
    images = rng.random((2, 20, 20, 3)).astype(np.float32)
    crop = 6
    # Windows of 6 px (0.3 of 20) whose top-left pixels are (row 4, column 9) and (row −2, column 16).
    tops, lefts = np.array([4, -2]), np.array([9, 16])
    centres = np.stack([(lefts + crop / 2) / 20, (tops + crop / 2) / 20], axis=1).astype(np.float32)
    out = sample_window(tf.constant(images), tf.constant(centres), crop / 20, crop).numpy()
    assert out.shape == (2, crop, crop, 3)
    np.testing.assert_allclose(out[0], images[0, 4:10, 9:15], atol=1e-5)  # an exact copy (to float32 coordinate rounding)
    np.testing.assert_allclose(out[1, 2:, :4], images[1, 0:4, 16:20], atol=1e-5)
    np.testing.assert_array_equal(out[1, :2], 0.0)  # above the image
    np.testing.assert_array_equal(out[1, :, 4:], 0.0)  # right of it
    # Half a pixel off: the mean of two neighbours (bilinear).
    shifted = centres[:1] + np.float32([0.5 / 20, 0.0])
    half = sample_window(tf.constant(images[:1]), tf.constant(shifted), crop / 20, crop).numpy()
    np.testing.assert_allclose(half[0], (images[0, 4:10, 9:15] + images[0, 4:10, 10:16]) / 2, atol=1e-5)
    # The whole image at its own size: the identity.
    whole = sample_window(tf.constant(images), tf.constant([[0.5, 0.5]] * 2), 1.0, 20).numpy()
    np.testing.assert_allclose(whole, images, atol=1e-5)


def test_beam_window_uses_the_given_centre_or_else_the_estimate():
    images = np.random.default_rng(1).random((3, 16, 16, 2)).astype(np.float32)
    given = np.array([[0.25, 0.5], [np.nan, np.nan], [0.75, 0.25]], np.float32)
    estimate = np.array([[0.5, 0.5], [0.3125, 0.6875], [0.5, 0.5]], np.float32)
    layer = BeamWindow(crop=4, window=0.25)
    out = keras.ops.convert_to_numpy(layer(images, given, estimate))
    used = np.where(np.isfinite(given), given, estimate)
    np.testing.assert_allclose(out, sample_window(tf.constant(images), tf.constant(used), 0.25, 4).numpy(), atol=1e-6)
    np.testing.assert_allclose(out[1], images[1, 9:13, 3:7], atol=1e-5)  # the estimate's window, exactly
    np.testing.assert_allclose(out[0], images[0, 6:10, 2:6], atol=1e-5)  # the given one's
    assert layer.compute_output_shape((None, 16, 16, 2)) == (None, 4, 4, 2)
    assert BeamWindow.from_config(layer.get_config()).get_config() == layer.get_config()


def _profile_by_hand(image: np.ndarray, centre, bins: int) -> np.ndarray:
    """Mean of each channel of one (D, D, C) image per log-radius ring, written with NumPy masks."""
    size = image.shape[0]
    rows, columns = np.mgrid[0:size, 0:size] + 0.5
    radius = np.hypot(columns - centre[0] * size, rows - centre[1] * size)
    ring = np.clip((np.log(np.maximum(radius, 1.0)) / np.log(1.5 * size) * bins).astype(int), 0, bins - 1)
    return np.array([[image[ring == k][:, c].mean() if (ring == k).any() else 0.0 for c in range(image.shape[-1])]
                     for k in range(bins)])


def test_radial_profile_is_the_ring_mean_about_the_given_centre_or_else_the_estimate():
    images = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
    given = np.array([[0.3, 0.6], [np.nan, np.nan]], np.float32)
    estimate = np.array([[0.9, 0.9], [0.5, 0.25]], np.float32)
    layer = RadialProfile(12)
    out = keras.ops.convert_to_numpy(layer(images, given, estimate))
    assert out.shape == (2, 12, 3)
    np.testing.assert_allclose(out[0], _profile_by_hand(images[0], (0.3, 0.6), 12), atol=1e-5)
    np.testing.assert_allclose(out[1], _profile_by_hand(images[1], (0.5, 0.25), 12), atol=1e-5)
    # A ring pattern about the centre is flat along each ring: its profile is the pattern.
    rows, columns = np.mgrid[0:40, 0:40] + 0.5
    rings = np.cos(np.hypot(columns - 20, rows - 20))[None, :, :, None].astype(np.float32)
    flat = keras.ops.convert_to_numpy(RadialProfile(12)(rings, np.array([[0.5, 0.5]], np.float32),
                                                        np.zeros((1, 2), np.float32)))
    assert flat.shape == (1, 12, 1) and np.ptp(flat) > 0.5
    assert RadialProfile.from_config(layer.get_config()).get_config() == layer.get_config()


def test_network_with_the_radial_profile_reads_it_from_the_detail_image():
    network = build_network(32, 0.125, 3, beam_head=True, detail_size=48, detail_crop=16, profile_bins=16)
    assert network.get_layer("radial_profile").bins == 16 and network.get_layer("profile_branch")
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((2, 32, 32, 3), dtype=np.float32),
              "detail": rng.random((2, 48, 48, 3), dtype=np.float32),
              "centre": np.array([[0.5, 0.4], [np.nan, np.nan]], np.float32)}
    first = keras.ops.convert_to_numpy(network(inputs, training=False)["attributes"])
    # Another given centre changes the profile (and the window), so the probabilities.
    moved = dict(inputs, centre=np.array([[0.1, 0.9], [np.nan, np.nan]], np.float32))
    second = keras.ops.convert_to_numpy(network(moved, training=False)["attributes"])
    assert first.shape == (2, NUM_ATTRIBUTES) and not np.allclose(first[0], second[0])
    np.testing.assert_allclose(first[1], second[1], atol=1e-6)  # the estimate, both times
    with pytest.raises(ValueError, match="profile"):
        build_network(32, 0.125, 3, beam_head=True, detail_size=0, profile_bins=16)


@pytest.mark.parametrize("detail_size", [0, 48])
def test_network_with_the_beam_head_outputs_attributes_and_beam_centre(detail_size):
    network = build_network(32, 0.125, 3, beam_head=True, detail_size=detail_size, detail_crop=16)
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((2, 32, 32, 3), dtype=np.float32)}
    if detail_size:
        inputs.update(detail=rng.random((2, 48, 48, 3), dtype=np.float32),
                      centre=np.array([[0.5, 0.4], [np.nan, np.nan]], np.float32))
    assert set(network.input) == set(inputs)
    out = network(inputs, training=False)
    assert set(out) == {"attributes", "beam"}
    attributes, beam = (keras.ops.convert_to_numpy(out[k]) for k in ("attributes", "beam"))
    assert attributes.shape == (2, NUM_ATTRIBUTES) and np.all((attributes > 0) & (attributes < 1))
    assert beam.shape == (2, 2) and np.all((beam > 0) & (beam < 1))  # a soft-argmax over the map: inside
    assert first_conv_kernel(network.get_layer(BACKBONE_NAME)).shape == (7, 7, 3, 8)
    names = {layer.name for layer in network.layers}
    assert ("detail_branch" in names) == bool(detail_size) and ("beam_window" in names) == bool(detail_size)
    if detail_size:  # the branch changes the attributes, not the beam estimate
        other = dict(inputs, detail=inputs["detail"][::-1])
        moved = network(other, training=False)
        assert not np.allclose(keras.ops.convert_to_numpy(moved["attributes"]), attributes)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(moved["beam"]), beam, atol=1e-6)


def test_network_without_the_head_is_the_papers_classifier():
    network = build_network(32, 0.125, 1)
    reference = build_classifier(build_backbone(32, 0.125))
    assert network.count_params() == reference.count_params()
    assert tuple(network.output.shape) == (None, NUM_ATTRIBUTES)
    with pytest.raises(ValueError, match="detail branch needs the beam head"):
        build_network(32, 0.125, 1, detail_size=64)


@pytest.mark.parametrize("beam_head", [False, True])
def test_feature_extractor_gives_the_pooled_features_the_attribute_head_reads(beam_head):
    network = build_network(32, 0.125, 2, beam_head=beam_head)
    features = feature_extractor(network)
    image = np.random.default_rng(2).random((3, 32, 32, 2), dtype=np.float32)
    pooled = keras.ops.convert_to_numpy(features(image, training=False))
    assert pooled.shape == (3, feature_size(0.125)) and tuple(features.output.shape) == (None, 256)
    head = network.get_layer("attributes")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.weights)
    out = network({"image": image} if beam_head else image, training=False)
    probabilities = keras.ops.convert_to_numpy(attribute_probabilities(out))
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-(pooled @ kernel + bias))), rtol=1e-4, atol=1e-6)


def test_recalibrated_moving_statistics_are_the_average_batch_statistics():
    network = build_network(32, 0.125, 3, beam_head=True, detail_size=32, detail_crop=16)
    rng = np.random.default_rng(3)
    batches = [{"image": rng.gamma(2.0, 0.2, (4, 32, 32, 3)).astype(np.float32),
                "detail": rng.random((4, 32, 32, 3), dtype=np.float32),
                "centre": np.full((4, 2), np.nan, np.float32)} for _ in range(3)]
    layers = batch_norm_layers(network)
    assert len(layers) == 53 + 5  # the backbone's and the detail branch's
    before = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in layers]

    assert recalibrate_batch_norm(network, batches) == 3

    trunk = network.get_layer(BACKBONE_NAME)
    conv1 = keras.Model(trunk.input, trunk.get_layer("conv1_conv").output)  # what conv1_bn normalises
    outputs = [keras.ops.convert_to_numpy(conv1(b["image"])) for b in batches]
    bn = trunk.get_layer("conv1_bn")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean),
                               np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0), rtol=1e-3, atol=1e-6)
    assert all(layer.momentum == 0.99 for layer in layers)  # put back
    changed = [not np.allclose(b, keras.ops.convert_to_numpy(layer.moving_mean)) for b, layer in zip(before, layers)]
    assert all(changed)
    assert recalibrate_batch_norm(network, []) == 0


def test_one_xla_compiled_training_step_of_the_full_network():
    from xrayscatter.resnet.task import beam_centre_error, summed_binary_crossentropy

    network = build_network(32, 0.125, 3, beam_head=True, detail_size=32, detail_crop=16)
    network.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True,
                    loss={"attributes": summed_binary_crossentropy, "beam": beam_centre_error})
    rng = np.random.default_rng(4)
    inputs = {"image": rng.random((4, 32, 32, 3), dtype=np.float32), "detail": rng.random((4, 32, 32, 3), dtype=np.float32),
              "centre": np.array([[0.5, 0.5], [np.nan, np.nan], [0.2, 0.7], [np.nan, np.nan]], np.float32)}
    targets = {"attributes": (rng.random((4, NUM_ATTRIBUTES)) < 0.3).astype(np.float32),
               "beam": np.array([[0.5, 0.5], [np.nan, np.nan], [0.2, 0.7], [1.3, 0.5]], np.float32)}
    before = keras.ops.convert_to_numpy(network.get_layer("beam_map_logits").kernel)
    losses = network.train_on_batch(inputs, targets)
    assert np.isfinite(np.asarray(losses)).all()
    assert not np.allclose(before, keras.ops.convert_to_numpy(network.get_layer("beam_map_logits").kernel))


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # by design: the refined centre trains the fine head only
def test_the_refined_beam_centre_lies_in_the_window_and_only_the_fine_head_learns_from_it():
    from xrayscatter.resnet.task import beam_centre_error, summed_binary_crossentropy

    window = 0.25
    network = build_network(32, 0.125, 3, beam_head=True, detail_size=64, detail_crop=32, detail_window=window,
                            profile_bins=8, beam_refine=True)
    rng = np.random.default_rng(5)
    given = np.array([[0.3, 0.6], [np.nan, np.nan], [0.8, 0.2], [np.nan, np.nan]], np.float32)
    inputs = {"image": rng.random((4, 32, 32, 3), dtype=np.float32), "detail": rng.random((4, 64, 64, 3), dtype=np.float32),
              "centre": given}
    out = {k: keras.ops.convert_to_numpy(v) for k, v in network(inputs, training=False).items()}
    assert set(out) == {"attributes", "beam", "beam_coarse"}
    # The window sits at the given centre, or at the coarse estimate where none is given; the refined centre is
    # a soft-argmax over the window's 8 × 8 cells: inside it, by at most half a window less half a cell.
    placed = np.where(np.isfinite(given), given, out["beam_coarse"])
    limit = window / 2 - window / 16
    assert np.all(np.abs(out["beam"] - placed) <= limit + 1e-6)
    # The refined centre reads the detail; the coarse one does not.
    other = network(dict(inputs, detail=inputs["detail"][::-1].copy()), training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(other["beam_coarse"]), out["beam_coarse"], atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(other["beam"])[[0, 2]], out["beam"][[0, 2]])
    # Trained on the refined centre alone, the fine head moves and the coarse head does not: no gradient reaches
    # the window's placement.
    network.compile(optimizer=keras.optimizers.SGD(0.1), loss={"beam": beam_centre_error})
    targets = {"beam": np.clip(placed + 0.05, 0, 1).astype(np.float32)}
    fine_before = keras.ops.convert_to_numpy(network.get_layer("detail_branch").get_layer("detail_branch_beam_logits").kernel)
    coarse_before = keras.ops.convert_to_numpy(network.get_layer("beam_map_logits").kernel)
    network.train_on_batch(inputs, targets)
    assert not np.allclose(fine_before, keras.ops.convert_to_numpy(
        network.get_layer("detail_branch").get_layer("detail_branch_beam_logits").kernel))
    np.testing.assert_array_equal(coarse_before, keras.ops.convert_to_numpy(network.get_layer("beam_map_logits").kernel))
    with pytest.raises(ValueError, match="beam-region branch"):
        build_network(32, 0.125, 3, beam_head=True, detail_size=0, beam_refine=True)
