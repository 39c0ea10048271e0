"""Image features for the SVMs: the npz cache and the per-block normalisation of combined sets."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation.features import FeatureCache, FeatureMatrix, concatenate_blocks, newest_model_version


def test_feature_cache_round_trip_is_atomic_and_keyed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache.key({"model": "m", "images": "abc"})
    assert key != cache.key({"model": "m", "images": "abd"})
    path = cache.path("resnet", "v3", key)
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.save(path, values, {"model": "m"})
    np.testing.assert_array_equal(cache.load(path, 3), values)
    assert cache.load(path, 4) is None  # another data set size: not reused
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_concatenation_normalises_each_block():
    a = FeatureMatrix("resnet", np.array([[3.0, 4.0], [0.0, 0.0]], np.float32), (2,))
    b = FeatureMatrix("autoencoder", np.array([[10.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32), (3,))
    both = concatenate_blocks("resnet+autoencoder", [a, b])
    assert both.block_sizes == (2, 3)
    np.testing.assert_allclose(both.values, [[0.6, 0.8, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])


def test_a_feature_set_without_its_model_says_which_command_makes_it(tmp_path):
    with pytest.raises(XrayscatterError, match="no SavedModel version.*xrayscatter train autoencoder"):
        newest_model_version(tmp_path / "autoencoder", "autoencoder")
