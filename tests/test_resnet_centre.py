"""The beam centre refined by radial symmetry (xrayscatter/resnet/centre.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import powder_counts
from xrayscatter.resnet.centre import SEARCH_STAGES, radial_symmetry_score, refine_centre, with_symmetry_centre

SIZE = 64
# the search of a 256-px image scaled to these 64-px test images: steps of 2, 1, ½ and ¼ px, at most 4.75 px away
STAGES = ((2 / SIZE, 2), (1 / SIZE, 1), (0.5 / SIZE, 1), (0.25 / SIZE, 1))


def _score_numpy(values: np.ndarray, weights: np.ndarray, centre, bin_width: float) -> float:
    """Σ_r S_r² / W_r with np.bincount: the score written out independently."""
    y, x = np.mgrid[0:values.shape[0], 0:values.shape[1]] + 0.5
    ring = (np.hypot(x - centre[0], y - centre[1]) / bin_width).astype(int).ravel()
    sums = np.bincount(ring, (weights * values).ravel())
    totals = np.bincount(ring, weights.ravel())
    kept = totals > 0
    return float(np.sum(sums[kept] ** 2 / totals[kept]))


def _rings(centre, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(N, N) log counts of a powder pattern about ``centre`` (x, y) px."""
    return np.log1p(powder_counts([centre], (size, size), seed=seed)[0])


@pytest.mark.parametrize("bin_width", [1.0, 0.5])
def test_the_score_is_the_azimuthal_means_sum_of_squares(bin_width):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(2, 20, 20)).astype(np.float32)
    weights = (rng.uniform(size=(2, 20, 20)) > 0.2).astype(np.float32)
    centres = rng.uniform(2, 18, size=(2, 3, 2)).astype(np.float32)
    scores = radial_symmetry_score(values, weights, centres, bin_width).numpy()
    expected = [[_score_numpy(values[b], weights[b], centres[b, k], bin_width) for k in range(3)] for b in range(2)]
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_a_powder_pattern_is_centred_to_a_fraction_of_a_pixel_from_three_pixels_off():
    truth = np.array([[30.3, 33.8], [36.6, 27.1], [29.0, 30.0]])
    images = np.stack([_rings(c, seed=i) for i, c in enumerate(truth)])
    weights = np.ones_like(images)
    weights[:, 40:43, :] = 0.0  # a module gap: not measured, whatever it holds
    images[:, 40:43, :] = 0.0
    start = truth + np.array([[3.0, -2.0], [-2.5, -2.5], [0.0, 3.5]])
    refined = refine_centre(images, weights, (start / SIZE).astype(np.float32), STAGES).numpy() * SIZE
    errors = np.hypot(*(refined - truth).T)
    assert np.all(errors < 0.5), errors
    assert np.all(np.hypot(*(start - truth).T) > 2.9)


def test_nan_rows_stay_nan_and_an_image_without_structure_keeps_its_estimate():
    images = np.stack([np.full((SIZE, SIZE), 2.0, np.float32), _rings((31.0, 33.0))])
    start = np.array([[0.4, 0.6], [np.nan, np.nan]], np.float32)
    refined = refine_centre(images, np.ones_like(images), start, STAGES).numpy()
    np.testing.assert_array_equal(refined[0], start[0])  # a constant scores the same everywhere: no move
    assert np.all(np.isnan(refined[1]))


def test_a_move_is_kept_only_where_it_explains_enough_more_and_never_beyond_the_search():
    truth = np.array([31.0, 32.0])
    image = _rings(truth)[None]
    start = ((truth + [2.5, 0.0]) / SIZE)[None].astype(np.float32)
    moved = refine_centre(image, np.ones_like(image), start, STAGES).numpy()
    assert not np.allclose(moved, start)
    kept = refine_centre(image, np.ones_like(image), start, STAGES, min_gain=10.0).numpy()  # no move explains 10 × more
    np.testing.assert_array_equal(kept, start)
    far = ((truth + [20.0, 0.0]) / SIZE)[None].astype(np.float32)
    for stages in (STAGES, SEARCH_STAGES):
        reach = sum(step * half for step, half in stages)  # as a fraction of the side
        shift = np.abs(refine_centre(image, np.ones_like(image), far, stages).numpy() - far)
        assert np.all(shift <= reach + 1e-6)


def test_it_runs_in_a_traced_graph_with_unknown_batch_and_size():
    refine = tf.function(refine_centre, input_signature=[tf.TensorSpec((None, None, None), tf.float32)] * 2
                         + [tf.TensorSpec((None, 2), tf.float32)])
    image = _rings((30.0, 34.0))[None]
    refined = refine(image, np.ones_like(image), np.array([[32.0 / SIZE, 32.0 / SIZE]], np.float32)).numpy() * SIZE
    assert np.hypot(*(refined[0] - [30.0, 34.0])) < 0.5  # the default search reaches 2.3 px of 64


def test_the_networks_outputs_get_the_refined_centre_and_keep_their_own():
    frames = powder_counts([(30.0, 33.0)])
    image = np.stack([np.log1p(frames), np.ones_like(frames)], axis=-1)  # channels: filled, valid
    estimate = np.array([[31.5 / SIZE, 32.0 / SIZE]], np.float32)
    outputs = {"attributes": np.zeros((1, 17), np.float32), "beam": estimate}
    result = with_symmetry_centre(outputs, {"image": image, "detail": image[:, ::2, ::2]}, ["filled", "valid"])
    np.testing.assert_array_equal(result["beam_network"], estimate)
    np.testing.assert_allclose(result["beam"], refine_centre(image[..., 0], image[..., 1], estimate), atol=1e-6)
    assert np.hypot(*(result["beam"].numpy()[0] * SIZE - [30.0, 33.0])) < 0.5


def test_the_setting_needs_the_beam_head_and_a_log_channel():
    from helpers import tiny_resnet_config

    from xrayscatter.config import config_from_dict
    from xrayscatter.errors import XrayscatterError

    table = json.loads(json.dumps(tiny_resnet_config(symmetry_centre=True).to_dict()))  # as TOML gives it: lists
    assert config_from_dict(table).resnet.symmetry_centre
    for change in ({"beam_centre_weight": 0.0, "detail_size": 0, "profile_bins": 0},
                   {"input_channels": ["contrast", "valid"]}):
        with pytest.raises(XrayscatterError, match="resnet.symmetry_centre"):
            config_from_dict({**table, "resnet": {**table["resnet"], **change}})
