"""Test-time views in the graph (resnet/views.py): the eight symmetries of the square, points moved with them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.resnet.views import (combine_views, median_over_views, points_from_views, views_of_inputs,
                                      views_of_point, views_of_square)


def test_eight_views_are_the_eight_symmetries_of_the_square_view_major():
    square = np.random.default_rng(0).random((2, 5, 5, 3)).astype(np.float32)
    views = views_of_square(tf.constant(square), 8).numpy()
    assert views.shape == (16, 5, 5, 3)
    np.testing.assert_array_equal(views[:2], square)  # view 0: the frames as they are
    np.testing.assert_array_equal(views[2:4], square[:, :, ::-1])  # left–right
    np.testing.assert_array_equal(views[6:8], np.rot90(square, 2, axes=(1, 2)))  # 180°
    np.testing.assert_array_equal(views[8:10], np.swapaxes(square, 1, 2))  # transpose
    assert len({views[k * 2].tobytes() for k in range(8)}) == 8
    np.testing.assert_array_equal(views_of_square(tf.constant(square), 4).numpy(), views[:8])


@pytest.mark.parametrize("views", [4, 8])
def test_a_point_moves_with_its_image_in_every_view(views):
    side, row, column = 9, 2, 6
    square = np.zeros((1, side, side, 1), np.float32)
    square[0, row, column, 0] = 1.0
    point = tf.constant([[(column + 0.5) / side, (row + 0.5) / side]], tf.float32)  # (x, y) fractions
    images = views_of_square(tf.constant(square), views).numpy()
    points = views_of_point(point, views).numpy()
    for image, (x, y) in zip(images, points):
        r, c = np.unravel_index(np.argmax(image[..., 0]), (side, side))
        np.testing.assert_allclose([x, y], [(c + 0.5) / side, (r + 0.5) / side], atol=1e-6)
    nan = views_of_point(tf.fill((3, 2), float("nan")), views).numpy()
    assert nan.shape == (3 * views, 2) and np.isnan(nan).all()  # the network's own estimate stays its own


def test_inputs_of_every_kind_get_the_same_views_and_outputs_combine_probabilities_and_beam():
    rng = np.random.default_rng(1)
    inputs = {"image": tf.constant(rng.random((2, 4, 4, 3)), tf.float32),
              "detail": tf.constant(rng.random((2, 8, 8, 3)), tf.float32), "centre": tf.fill((2, 2), float("nan"))}
    viewed = views_of_inputs(inputs, 4)
    assert {k: v.shape[0] for k, v in viewed.items()} == {"image": 8, "detail": 8, "centre": 8}
    np.testing.assert_array_equal(viewed["detail"][2:4], inputs["detail"].numpy()[:, :, ::-1])
    assert views_of_inputs(inputs, 1) is inputs

    probabilities = rng.random((8, 17)).astype(np.float32)
    beam = rng.random((8, 2)).astype(np.float32)
    out = combine_views({"attributes": tf.constant(probabilities), "beam": tf.constant(beam)}, 4)
    np.testing.assert_allclose(out["attributes"].numpy(), probabilities.reshape(4, 2, 17).mean(axis=0), rtol=1e-6)
    # the beam: per coordinate the median of the 4 views' estimates mapped back (lr: x → 1 − x; ud: y → 1 − y)
    back = beam.reshape(4, 2, 2).copy()
    back[[1, 3], :, 0] = 1.0 - back[[1, 3], :, 0]
    back[[2, 3], :, 1] = 1.0 - back[[2, 3], :, 1]
    back = np.sort(back, axis=0)
    np.testing.assert_allclose(out["beam"].numpy(), 0.5 * (back[1] + back[2]), rtol=1e-6)
    np.testing.assert_allclose(combine_views(tf.constant(probabilities), 4).numpy(),
                               probabilities.reshape(4, 2, 17).mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("views", [4, 8])
def test_points_mapped_back_from_every_view_are_the_frame_points(views):
    """points_from_views undoes views_of_point in every view, the transposed ones too; the median of
    estimates that agree once mapped back is that point."""
    points = tf.constant(np.random.default_rng(3).random((3, 2)), tf.float32)
    seen = views_of_point(points, views)
    assert not np.allclose(seen.numpy()[3:6], points.numpy())  # the views move the points
    back = points_from_views(seen, views)
    np.testing.assert_allclose(back.numpy(), np.broadcast_to(points.numpy(), (views, 3, 2)), atol=1e-6)
    np.testing.assert_allclose(median_over_views(seen, views).numpy(), points.numpy(), atol=1e-6)
