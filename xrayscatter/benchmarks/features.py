"""`xrayscatter bench features`: the 15-crop feature against 15 plain forward passes (and SPM).

The 15-crop feature of B images is one batched pass over 15·B crops plus the in-graph
normalisation, three resizes and the cropping. Its ideal rate is the network's plain
forward rate divided by 15; the ratio of the two says what the extra graph work costs.
Both are measured in the same run, as ``tf.function``s on the same backbone (weights do
not change the speed, so an untrained network of the configured shape is used):

* 15-crop — ``features.fifteen_crop_features`` on B raw frames of ``simulate.image_size`` px;
* plain  — the backbone on 15·B already normalised ``input_size`` images,

measured in alternating rounds so that a change of load on shared cores favours neither.

Target: 15-crop features/s ≥ 0.9 × (plain passes/s ÷ 15).
The SPM part comes from ``benchmarks/features_spm.py`` when that module is present.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import tensorflow as tf

from xrayscatter.benchmarks import results_table
from xrayscatter.resnet.features import NUM_CROPS, fifteen_crop_features


def _interleaved_rates(cases: list[tuple], seconds: float, rounds: int = 5) -> list[float]:
    """Items/s of each ``(fn, argument, items_per_call)``, measured in alternating rounds.

    Alternating (A B A B …) rather than A then B keeps a change in the machine's load
    (the cores may be shared) from favouring one case. Two untimed calls each first.
    """
    for fn, argument, _ in cases:
        for _ in range(2):
            fn(argument).numpy()
    items = [0] * len(cases)
    elapsed = [0.0] * len(cases)
    for _ in range(rounds):
        for i, (fn, argument, per_call) in enumerate(cases):
            start = time.perf_counter()
            while True:
                fn(argument).numpy()
                items[i] += per_call
                if time.perf_counter() - start >= seconds / rounds:
                    break
            elapsed[i] += time.perf_counter() - start
    return [n / t for n, t in zip(items, elapsed)]


def bench_fifteen_crop(config, images: int = 4, seconds: float = 10.0) -> dict:
    """Measure and print 15-crop features/s against plain forward passes/s ÷ 15.

    Returns:
        dict with ``fifteen_crop`` (features/s), ``plain_passes`` (passes/s),
        ``ideal`` (= plain_passes / 15) and ``ratio`` (= fifteen_crop / ideal).
    """
    from rich.console import Console

    from xrayscatter.resnet.model import build_backbone

    size = config.resnet.input_size
    frame = config.simulate.image_size
    backbone = build_backbone(size, config.resnet.width_multiplier)
    rng = np.random.default_rng(0)
    counts = tf.constant(rng.gamma(1.0, 200.0, size=(images, frame, frame)).astype(np.float32))
    crops = tf.constant(rng.random((NUM_CROPS * images, size, size, 1), dtype=np.float32))

    fifteen = tf.function(lambda x: fifteen_crop_features(backbone, x, size))
    plain = tf.function(lambda x: backbone(x, training=False))
    console = Console()
    with console.status("15-crop features and plain forward passes, alternating"):
        fifteen_rate, plain_rate = _interleaved_rates(
            [(fifteen, counts, images), (plain, crops, NUM_CROPS * images)], seconds)
    result = {"fifteen_crop": fifteen_rate, "plain_passes": plain_rate, "ideal": plain_rate / NUM_CROPS,
              "ratio": fifteen_rate / (plain_rate / NUM_CROPS)}

    console.print(results_table(
        f"15-crop features, pipeline {config.name}: input {size} px, width × {config.resnet.width_multiplier:g}, "
        f"{frame}-px frames, {images} per call", ("measurement", "rate", "target"), [
            ("15-crop features (one batched pass)", f"{fifteen_rate:.2f} features/s", ""),
            ("plain forward passes", f"{plain_rate:.1f} passes/s", ""),
            ("ideal 15-crop rate (plain / 15)", f"{result['ideal']:.2f} features/s", ""),
            ("15-crop / ideal", f"{result['ratio']:.2f}", "≥ 0.9")]))
    return result


def bench_features(config) -> dict:
    """The 15-crop benchmark, then the SPM one if ``xrayscatter.benchmarks.features_spm`` exists."""
    result = {"fifteen_crop": bench_fifteen_crop(config)}
    if importlib.util.find_spec("xrayscatter.benchmarks.features_spm") is not None:
        from xrayscatter.benchmarks.features_spm import bench_spm_features

        result["spm"] = bench_spm_features(config)
    return result
