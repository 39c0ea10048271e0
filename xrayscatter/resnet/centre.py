"""The beam centre refined by the image's own radial symmetry, in the graph.

Powder rings, halos, form-factor oscillations and diffuse scattering are all (nearly) functions of the distance
from the direct beam alone; about the true centre a ring falls into one radial bin, about a centre a pixel off it
spreads over two or three. So of the candidate centres near the network's estimate, the one about which the
image's azimuthal means explain most of its variation is the better centre:

    score(c) = Σ_r S_r(c)² / W_r(c),   S_r = Σ_{pixels in ring r about c} w·v,   W_r = Σ w

(v the log counts, w the measured fraction: gaps and masked pixels weigh nothing; the rings are ``bin_width``
px wide). For a fixed set of pixels Σ w·v² is fixed, so maximising the score minimises the weighted variance
left within the rings. The search is a pattern search from the estimate: a grid of 5 × 5 candidates 3 px (of a
256-px image) apart, then 3 × 3 about the best at 1.5, 0.75 and 0.375 px (52 scores per image, at most 9.4 px from
the estimate), and a move is kept only where it explains clearly more (``MIN_GAIN``). It sharpens an estimate that
is a few pixels off; it cannot move one that picked the wrong spot altogether (README, *The ResNet*, measured on the
hold-out and on ``bench external``'s files).
"""

from __future__ import annotations

import math

import tensorflow as tf

from xrayscatter.resnet.views import on_views

# (step as a fraction of the image side, half-width in steps) per stage of the pattern search: 3, 1.5, 0.75 and
# 0.375 px of a 256-px image, at most 9.4 px (3.7 % of the side) from the estimate
SEARCH_STAGES = ((3 / 256, 2), (1.5 / 256, 1), (0.75 / 256, 1), (0.375 / 256, 1))
# the least fraction of the within-ring variation a move must take away (README, *The ResNet*: measured)
MIN_GAIN = 0.05


def radial_symmetry_score(values: tf.Tensor, weights: tf.Tensor, centres: tf.Tensor,
                          bin_width: float = 1.0) -> tf.Tensor:
    """How much of each image's variation its azimuthal means about each candidate centre explain.

    Args:
        values: (B, N, N) float32, e.g. log counts.
        weights: (B, N, N) float32 ≥ 0, how much each pixel counts (0: not measured).
        centres: (B, K, 2) candidate centres (x, y) in px of the N-px image, pixel centres at index + 0.5.
        bin_width: ring width in px.

    Returns:
        (B, K) float32 scores Σ_r S_r² / W_r (larger: more radially symmetric about that centre).
    """
    values = tf.convert_to_tensor(values, tf.float32)
    weights = tf.convert_to_tensor(weights, tf.float32)
    size = tf.shape(values)[1]
    batch = tf.shape(values)[0]
    bins = tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * math.sqrt(2.0) / bin_width), tf.int32) + 2
    grid = tf.range(tf.cast(size, tf.float32)) + 0.5
    weighted = weights * values

    def one_candidate(centre):  # centre (B, 2) → (B,)
        dx = grid[None, None, :] - centre[:, 0, None, None]
        dy = grid[None, :, None] - centre[:, 1, None, None]
        ring = tf.minimum(tf.cast(tf.sqrt(dx * dx + dy * dy) / bin_width, tf.int32), bins - 1)  # (B, N, N)
        ids = ring + bins * tf.range(batch)[:, None, None]
        sums = tf.math.unsorted_segment_sum(weighted, ids, batch * bins)
        totals = tf.math.unsorted_segment_sum(weights, ids, batch * bins)
        return tf.reduce_sum(tf.reshape(tf.math.divide_no_nan(sums * sums, totals), (batch, bins)), axis=1)

    scores = tf.map_fn(one_candidate, tf.transpose(tf.cast(centres, tf.float32), [1, 0, 2]),
                       fn_output_signature=tf.TensorSpec((None,), tf.float32), parallel_iterations=1)
    return tf.transpose(scores)  # (B, K)


def _grid(step: float, half_width: int) -> tf.Tensor:
    """(K, 2) offsets (x, y) of a (2·half_width + 1)² grid ``step`` apart, the zero offset first."""
    offsets = [(0.0, 0.0)] + [(i * step, j * step) for j in range(-half_width, half_width + 1)
                              for i in range(-half_width, half_width + 1) if (i, j) != (0, 0)]
    return tf.constant(offsets, tf.float32)


def refine_centre(values: tf.Tensor, weights: tf.Tensor, centre: tf.Tensor, stages=SEARCH_STAGES,
                  bin_width: float = 1.0, min_gain: float = MIN_GAIN) -> tf.Tensor:
    """The centre near ``centre`` about which the image is most radially symmetric (a pattern search).

    Args:
        values, weights: (B, N, N) float32, as :func:`radial_symmetry_score`.
        centre: (B, 2) the starting estimate (x, y) as fractions of N; NaN rows stay NaN.
        stages: (step as a fraction of N, half-width in steps) of each search stage.
        min_gain: the move is kept only where it takes away at least this fraction of the variation left within
            the rings about the start: an image with little radial structure (weak scattering, a blank) scores
            about the same everywhere and would wander on its noise.

    Returns:
        (B, 2) float32 centres (x, y) as fractions of N: the refined one, or the start where the gain is short.
    """
    values = tf.cast(values, tf.float32)
    weights = tf.cast(weights, tf.float32)
    size = tf.cast(tf.shape(values)[1], tf.float32)
    centre = tf.cast(centre, tf.float32)
    known = tf.reduce_all(tf.math.is_finite(centre), axis=1, keepdims=True)
    best = tf.where(known, centre, 0.5) * size  # px
    start_score = best_score = None
    for step, half_width in stages:
        candidates = best[:, None, :] + _grid(step, half_width)[None] * size  # (B, K, 2) px, the current best first
        scores = radial_symmetry_score(values, weights, candidates, bin_width)
        start_score = scores[:, 0] if start_score is None else start_score
        pick = tf.argmax(scores, axis=1, output_type=tf.int32)  # ties: the first, i.e. stay
        best = tf.gather(candidates, pick, batch_dims=1)
        best_score = tf.gather(scores, pick, batch_dims=1)
    left = tf.reduce_sum(weights * values * values, axis=[1, 2]) - start_score  # Σ w v² − score: within-ring
    gain = tf.math.divide_no_nan(best_score - start_score, left)
    moved = known & (gain >= min_gain)[:, None]
    return tf.where(moved, best / size, centre)


def with_symmetry_centre(outputs: dict, inputs, channels) -> dict:
    """The network's outputs for B frames with ``beam`` refined on the frames' input image (:func:`refine_centre`)
    and the network's own estimate kept as ``beam_network``.

    Args:
        outputs: the network's outputs (``beam`` (B, 2), (x, y) as fractions of the padded square's side), e.g.
            combined over views (``views.on_views``).
        inputs: its inputs for the same frames: the (B, S, S, C) input channels, or a dict holding them as
            ``image`` (the network's input size: 128 px in the default, where the search costs a quarter of
            what it costs on the 256-px detail image, for the same tags and a centre as good on the outside set).
        channels: the names of the C channels (``resnet.input_channels``): the values are ``filled`` (else
            ``log``), the weights ``valid`` (else 1).
    """
    channels = list(channels)
    image = tf.cast(inputs["image"] if isinstance(inputs, dict) else inputs, tf.float32)
    values = image[..., channels.index("filled" if "filled" in channels else "log")]
    weights = image[..., channels.index("valid")] if "valid" in channels else tf.ones_like(values)
    return {**outputs, "beam": refine_centre(values, weights, outputs["beam"]), "beam_network": outputs["beam"]}


def tagging_outputs(model, inputs, views: int, channels, symmetry_centre: bool) -> dict:
    """The network's outputs for B frames as the export gives them (and the hold-out report measures them): its
    probabilities averaged over ``views`` views (``views.on_views``; 1: the frame as it is), and with
    ``symmetry_centre`` the beam centre refined on the input image (:func:`with_symmetry_centre`)."""
    outputs = on_views(model, inputs, views)
    return with_symmetry_centre(outputs, inputs, channels) if symmetry_centre else outputs
