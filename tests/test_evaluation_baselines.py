"""Hand-crafted baselines: pyramid cells, bag of words, lbpphog, and that they learn what they should."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.evaluation import baselines
from xrayscatter.evaluation.features import FeatureCache
from xrayscatter.evaluation.protocol import leave_one_run_out, summarize


def _ring_images(count: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the images carry a bright ring (labels 1), all carry noise and a diffuse centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    radius = np.hypot(yy, xx)
    labels = (np.arange(count) % 2).astype(float)
    images = []
    for label in labels:
        counts = 200.0 / (1 + (radius / 6) ** 2) * rng.uniform(0.5, 2)
        if label:
            counts += 300.0 * np.exp(-0.5 * ((radius - rng.uniform(14, 24)) / 1.2) ** 2)
        images.append(rng.poisson(counts + 2).astype(np.float32))
    return np.stack(images), labels


def test_pyramid_cells_number_the_21_cells_level_by_level():
    rows = np.array([0, 63, 0, 40])
    cols = np.array([0, 63, 63, 10])
    cells = baselines.pyramid_cells(rows, cols, 64)
    assert cells.shape == (3, 4)
    assert cells[0].tolist() == [0, 0, 0, 0]
    assert cells[1].tolist() == [1, 4, 2, 3]  # 2×2 cells are 1..4
    assert cells[2].tolist() == [5, 20, 8, 5 + 2 * 4 + 0]  # 4×4 cells are 5..20
    assert baselines.num_pyramid_cells() == 21


def test_preprocess_uses_the_shared_log_normalisation():
    counts = np.full((1, 32, 32), 65535.0, np.float32)
    counts[0, 0, 0] = -1.0  # a missing pixel
    out = baselines.preprocess(counts, 32)
    assert out.shape == (1, 32, 32)
    assert out[0, 16, 16] == pytest.approx(1.0, abs=1e-5)
    assert out.min() >= 0.0


def test_lbpphog_histograms_are_normalised_per_cell_and_level():
    images, _ = _ring_images(1)
    vector = baselines.lbpphog_vector(baselines.preprocess(images, 64)[0])
    assert vector.shape == (840,)
    lbp8 = vector[:21 * 10].reshape(21, 10)
    lbp16 = vector[21 * 10:21 * 28].reshape(21, 18)
    np.testing.assert_allclose(lbp8.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(lbp16.sum(axis=1), 1.0, atol=1e-5)
    phog = vector[21 * 28:]
    level_sums = [phog[:12].sum(), phog[12:60].sum(), phog[60:].sum()]
    np.testing.assert_allclose(level_sums, 1.0, atol=1e-3)  # skimage adds eps = 1e-5 to the L1 norm


def test_bow_word_histograms_sum_to_one_per_level():
    images, _ = _ring_images(6)
    preprocessed = baselines.preprocess(images, 64)
    features = baselines.bow_features(preprocessed, codebook_size=16, seed=1)
    assert features.shape == (6, 21 * 16)
    per_cell = features.reshape(6, 21, 16).sum(axis=2)
    np.testing.assert_allclose(per_cell[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(per_cell[:, 1:5].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(per_cell[:, 5:].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(features, baselines.bow_features(preprocessed, codebook_size=16, seed=1))


def test_bow_descriptor_has_daisy_and_intensity_dims():
    image = baselines.preprocess(_ring_images(1)[0], 64)[0]
    descriptors, rows, cols = baselines.bow_descriptors(image)
    assert descriptors.shape[1] == 104 + 2
    assert len(rows) == len(cols) == len(descriptors)
    assert rows.min() >= baselines.DAISY["radius"] and rows.max() < 64


@pytest.mark.parametrize("name", ["bow", "lbpphog"])
def test_baselines_tell_rings_from_no_rings_across_runs(name):
    images, labels = _ring_images(48)
    preprocessed = baselines.preprocess(images, 64)
    features = baselines.bow_features(preprocessed, 32, seed=0) if name == "bow" \
        else baselines.lbpphog_features(preprocessed)
    runs = np.repeat(np.arange(4), 12)
    result = leave_one_run_out(features, (features.shape[1],), labels[:, None], runs, (0.1, 1.0))
    summary = summarize(result.fold_ap, result.fold_status, result.scores, labels[:, None], runs, ("Ring",))
    assert summary["map_strict"] > 0.85


def test_baseline_features_are_cached(smoke_dataset, tmp_path):
    import dataclasses

    from xrayscatter.evaluation.datasets import load_synthetic_dataset

    config = dataclasses.replace(smoke_dataset, evaluate=dataclasses.replace(
        smoke_dataset.evaluate, baseline_image_size=48, max_images=24))
    data = load_synthetic_dataset(config)
    cache = FeatureCache(tmp_path)
    first = baselines.baseline_features("lbpphog", data, config, cache)
    second = baselines.baseline_features("lbpphog", data, config, cache)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.values, second.values)
    assert first.values.shape == (24, 840)
