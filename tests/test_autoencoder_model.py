"""The patch autoencoder: patches to codes and back, the receptive field of one patch."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.autoencoder.model import build_autoencoder, encoder_stride


def test_model_maps_patches_to_code_and_back():
    model = build_autoencoder(patch_size=32, code_size=24, base_filters=4)
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    patches = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert encoder(patches[..., None]).shape == (3, 24)
    assert decoder(np.eye(24, dtype=np.float32)[:2]).shape == (2, 32, 32)
    assert model(patches).shape == (3, 32, 32)
    assert encoder_stride(32) == 8


def test_patch_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        build_autoencoder(patch_size=24, code_size=8, base_filters=4)
