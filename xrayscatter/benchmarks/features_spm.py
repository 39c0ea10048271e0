"""SPM features/s: the dense-grid (fully convolutional) path against a per-patch loop.

Both paths compute the same 21 · code features of the same image with the same encoder:

- *dense grid*: ``spm.spm_features`` in a ``tf.function`` — per scale, the encoder's
  convolutions run once over the whole image and the pyramid is two small matrix
  products (one image, and a batch of images);
- *per-patch loop*: the straightforward way — for every scale and grid position cut the
  32 × 32 patch, encode it alone (a compiled ``tf.function`` call, so the loop is not
  charged for eager overhead), add its soft assignment to the cells holding its centre.

The encoder is untrained (speed does not depend on the weights). The maximum difference
between the two results is printed as a check that they compute the same thing.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.autoencoder.model import build_encoder
from xrayscatter.autoencoder.spm import grid_size, num_cells, patch_cells, spm_features
from xrayscatter.benchmarks import results_table
from xrayscatter.normalization import to_model_input


def benchmark_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) float32 raw counts: a SAXS-like decaying centre with a ring and Poisson noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    image = 2e4 * np.exp(-r / (size / 20)) + 3e3 * np.exp(-((r - size / 4) / (size / 100)) ** 2) + 10
    return rng.poisson(image).astype(np.float32)


def per_patch_loop_features(encode_one, counts: np.ndarray, scales, patch_size: int, stride: int, levels,
                            code_size: int) -> np.ndarray:
    """SPM features of one image by a Python loop over patches: (H, W) counts → (cells · K,)."""
    features = np.zeros((num_cells(levels), code_size), np.float32)
    total = 0
    for size in scales:
        image = to_model_input(tf.constant(counts[None]), size)[0]  # (s, s, 1)
        cells = [patch_cells(size, patch_size, stride, n) for n in levels]
        for i in range(grid_size(size, patch_size, stride)):
            for j in range(grid_size(size, patch_size, stride)):
                patch = image[None, i * stride:i * stride + patch_size, j * stride:j * stride + patch_size]
                soft = encode_one(patch).numpy()[0]
                first = 0
                for n, level_cells in zip(levels, cells):
                    features[first + level_cells[i] * n + level_cells[j]] += soft
                    first += n * n
                total += 1
    return (features / total).reshape(-1)


def _rate(run, min_seconds: float, min_repeats: int = 2) -> tuple[float, int]:
    """Seconds per call of ``run()`` (after one warm-up call) and how many calls were timed."""
    run()
    repeats, start = 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - start < min_seconds:
        run()
        repeats += 1
    return (time.perf_counter() - start) / repeats, repeats


def bench_spm_features(config, seconds: float = 3.0, batch_size: int = 8) -> dict:
    """Print and return SPM features/s (dense grid, 1 image and a batch) and the per-patch loop's.

    Args:
        config: ``PipelineConfig``: image size from ``[simulate]``, encoder and pyramid from ``[autoencoder]``.
        seconds: minimum measuring time per case.
        batch_size: images per call in the batched dense-grid case.
    """
    from rich.console import Console

    ae = config.autoencoder
    size = config.simulate.image_size
    keras.utils.set_random_seed(config.seed)
    encoder = build_encoder(ae.patch_size, ae.code_size, ae.base_filters)
    counts = benchmark_image(size, config.seed)
    patches = sum(grid_size(s, ae.patch_size, ae.spm_stride) ** 2 for s in ae.scales)

    dense = tf.function(lambda images: spm_features(encoder, images, ae.scales, ae.spm_stride, ae.spm_levels),
                        autograph=False)
    one = tf.constant(counts[None])
    batch = tf.constant(np.repeat(counts[None], batch_size, axis=0))
    encode_one = tf.function(lambda patch: tf.nn.softmax(encoder(patch), axis=-1), autograph=False)

    fast_features = dense(one).numpy()[0]
    loop_features = per_patch_loop_features(encode_one, counts, ae.scales, ae.patch_size, ae.spm_stride,
                                            ae.spm_levels, ae.code_size)
    difference = float(np.abs(fast_features - loop_features).max())

    loop_s, loop_n = _rate(lambda: per_patch_loop_features(encode_one, counts, ae.scales, ae.patch_size,
                                                           ae.spm_stride, ae.spm_levels, ae.code_size),
                           seconds, min_repeats=1)
    one_s, one_n = _rate(lambda: dense(one).numpy(), seconds)
    batch_s, batch_n = _rate(lambda: dense(batch).numpy(), seconds)
    rows = [
        {"method": "per-patch loop", "images_per_call": 1, "seconds_per_image": loop_s, "timed_calls": loop_n},
        {"method": "dense grid", "images_per_call": 1, "seconds_per_image": one_s, "timed_calls": one_n},
        {"method": "dense grid", "images_per_call": batch_size, "seconds_per_image": batch_s / batch_size,
         "timed_calls": batch_n},
    ]
    for row in rows:
        row["images_per_second"] = 1.0 / row["seconds_per_image"]
        row["patches_per_second"] = patches / row["seconds_per_image"]
        row["speedup_over_loop"] = loop_s / row["seconds_per_image"]

    table = results_table(
        f"SPM features ({num_cells(ae.spm_levels)} × {ae.code_size} = {num_cells(ae.spm_levels) * ae.code_size:,}-d) "
        f"of a {size} × {size} image: scales {list(ae.scales)}, stride {ae.spm_stride} px, {patches} patches per image",
        ("method", "images/call", "features/s (images/s)", "patches/s", "ms/image", "speed-up vs loop"),
        [(row["method"], str(row["images_per_call"]), f"{row['images_per_second']:.2f}",
          f"{row['patches_per_second']:,.0f}", f"{1000 * row['seconds_per_image']:.1f}",
          f"{row['speedup_over_loop']:.1f}×") for row in rows], first_left=False)
    console = Console()
    console.print(table)
    console.print(f"max |dense grid − per-patch loop| = {difference:.2e} (same features)")
    return {"image_size": size, "patches_per_image": patches, "feature_dim": num_cells(ae.spm_levels) * ae.code_size,
            "max_abs_difference": difference, "rows": rows}
