"""The ResNet builder is keras.applications.ResNet50 at width 1, and narrows cleanly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xrayscatter.attributes import NUM_ATTRIBUTES
from xrayscatter.resnet.model import build_backbone, build_classifier, feature_size, first_conv_kernel


def _structure(model: keras.Model) -> list[tuple]:
    """(class, name, output shape, parameter count) of every layer, in order."""
    return [(type(layer).__name__, layer.name, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers[1:]]  # [0] is the input layer, named differently


def test_width_one_is_keras_applications_resnet50_layer_for_layer():
    reference = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(64, 64, 1))
    ours = build_backbone(64, 1.0)
    assert ours.count_params() == reference.count_params() == 23_581_440
    assert _structure(ours) == _structure(reference)
    assert ours.output.shape == (None, 2048)


@pytest.mark.parametrize("width, features", [(0.5, 1024), (0.25, 512), (0.125, 256)])
def test_narrow_network_keeps_the_block_layout(width, features):
    model = build_backbone(32, width)
    names = [layer.name for layer in model.layers]
    assert sum(name.endswith("_add") for name in names) == 3 + 4 + 6 + 3
    assert model.output.shape == (None, features) and feature_size(width) == features
    assert first_conv_kernel(model).shape == (7, 7, 1, int(64 * width))


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
