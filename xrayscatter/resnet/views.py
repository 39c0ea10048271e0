"""Test-time views in the graph: the network on a frame's flips and quarter turns, its probabilities averaged.

Every attribute is unchanged by a flip or a quarter turn of the detector image, and the network trains on
them (``data.augment``), so averaging its probabilities over a frame's views takes away what one
orientation gets wrong by chance (README, *Test-time views*: on the outside set of ``bench external``,
4 views +0.011 mean ROC AUC and +0.024 mAP over one). Here the views are taken of the network's inputs,
after the frame has been normalised and resized once, and all views of a batch go through the network in
one call; ``resnet.views`` sets how many the exported SavedModel averages (``export.py``), and the export
chooses its thresholds on the same averaged validation probabilities.

View order (view-major, as :func:`views_of_inputs` stacks them): the frame, its left–right flip, its
up–down flip, its 180° turn, then the same four transposed; 1, 4 or 8 views take the first that many.

The beam centre is estimated in every view too: each estimate is mapped back to the frame and the
per-coordinate median taken (robust to one view's heatmap picking the wrong blob; README, *Test-time views*:
median error on the hold-out 3.4 → 2.3 px of 256 with 4 views).
"""

from __future__ import annotations

import tensorflow as tf


def views_of_square(square: tf.Tensor, views: int) -> tf.Tensor:
    """(B, N, N, C) square images → (views·B, N, N, C), view-major (rows k·B … k·B + B − 1 hold view k)."""
    flips = [square, tf.reverse(square, [2]), tf.reverse(square, [1]), tf.reverse(square, [1, 2])]
    out = flips[:min(views, 4)] + [tf.transpose(view, [0, 2, 1, 3]) for view in flips[:max(views - 4, 0)]]
    return tf.concat(out, axis=0)


def views_of_point(point: tf.Tensor, views: int) -> tf.Tensor:
    """(B, 2) points (x, y) as fractions of the square's side → the same points in each view, (views·B, 2)
    view-major (NaN stays NaN: the network's own estimate of the beam centre, as at inference)."""
    x, y = point[:, 0], point[:, 1]
    flips = [(x, y), (1.0 - x, y), (x, 1.0 - y), (1.0 - x, 1.0 - y)]
    out = flips[:min(views, 4)] + [(b, a) for a, b in flips[:max(views - 4, 0)]]
    return tf.concat([tf.stack(pair, axis=1) for pair in out], axis=0)


def views_of_inputs(inputs, views: int):
    """The network's inputs for B frames (a (B, S, S, C) tensor, or a dict of ``image``, ``detail`` squares and
    the ``centre`` point) → the same for their ``views`` views, views·B rows, view-major."""
    if views == 1:
        return inputs
    if not isinstance(inputs, dict):
        return views_of_square(inputs, views)
    return {name: views_of_point(value, views) if name == "centre" else views_of_square(value, views)
            for name, value in inputs.items()}


def points_from_views(points: tf.Tensor, views: int) -> tf.Tensor:
    """(views·B, 2) points (x, y) as fractions of the side, each in its view (view-major) → (views, B, 2), each
    mapped back to the frame: the inverse of :func:`views_of_point` (a flip is its own inverse; a transposed
    view is swapped back before its flip is undone)."""
    batch = tf.shape(points)[0] // views
    back = []
    for k in range(views):
        point = points[k * batch:(k + 1) * batch]
        if k >= 4:
            point = tf.reverse(point, [1])
        x, y = point[:, 0], point[:, 1]
        if k % 4 in (1, 3):
            x = 1.0 - x
        if k % 4 in (2, 3):
            y = 1.0 - y
        back.append(tf.stack([x, y], axis=1))
    return tf.stack(back)


def median_over_views(points: tf.Tensor, views: int) -> tf.Tensor:
    """(views·B, 2) beam-centre estimates, one per view (view-major) → (B, 2) in the frame: per coordinate, the
    median of the estimates mapped back (the mean of the middle two for an even count)."""
    ordered = tf.sort(points_from_views(tf.cast(points, tf.float32), views), axis=0)
    middle = views // 2
    return ordered[middle] if views % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def combine_views(outputs, views: int):
    """The network's outputs on views·B rows (view-major) → its outputs for the B frames: the attribute
    probabilities averaged over the views, the beam centre (``beam``) the median of the views' estimates
    mapped back to the frame (:func:`median_over_views`); any other output (``beam_coarse``) that of the
    first view, the frame as it is."""
    if views == 1:
        return outputs

    def average(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        return tf.reduce_mean(tf.reshape(probabilities, (views, -1, probabilities.shape[-1])), axis=0)

    if not isinstance(outputs, dict):
        return average(outputs)
    batch = tf.shape(outputs["attributes"])[0] // views
    combine = {"attributes": average, "beam": lambda points: median_over_views(points, views)}
    return {name: combine[name](value) if name in combine else value[:batch] for name, value in outputs.items()}


def on_views(classifier, inputs, views: int):
    """``classifier`` on ``views`` views of ``inputs`` in one call → its outputs for the frames (probabilities
    averaged over the views, the beam centre their median; see :func:`combine_views`)."""
    return combine_views(classifier(views_of_inputs(inputs, views), training=False), views)
