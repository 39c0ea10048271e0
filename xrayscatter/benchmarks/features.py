"""`xrayscatter bench features`: the 15-crop feature against 15 plain forward passes (and SPM).

The 15-crop feature of B images is one batched pass over 15·B crops plus the in-graph
normalisation, three resizes and the cropping. Its ideal rate is the network's plain
forward rate divided by 15; the ratio of the two says what the extra graph work costs.
Both are measured in the same run, as ``tf.function``s on the same backbone (weights do
not change the speed, so an untrained network of the configured shape is used: its input
channels are ``resnet.input_channels``, as the exported ``features_15crop`` signature runs it):

* 15-crop — ``features.fifteen_crop_features`` on B raw frames of ``simulate.image_size`` px;
* plain  — the backbone on 15·B already made ``input_size`` input channels;
* crops alone — ``features.fifteen_crops``: normalisation, the three resizes, the input channels
  at each scale (the contrast channel's percentiles order the smallest scale's pixels) and the cropping, without
  the network: where the time beyond the ideal goes,

measured in alternating rounds so that a change of load on shared cores favours none.

Target: 15-crop features/s ≥ 0.95 × (plain passes/s ÷ 15).
The SPM part comes from ``benchmarks/features_spm.py`` when that module is present.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import tensorflow as tf

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table
from xrayscatter.resnet.features import NUM_CROPS, fifteen_crop_features, fifteen_crops

TARGET_RATIO = 0.95


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


def bench_fifteen_crop(config, images: int = 4, seconds: float = 10.0, console=None) -> dict:
    """Measure and print 15-crop features/s against plain forward passes/s ÷ 15, and the crops alone.

    Returns:
        dict with ``fifteen_crop`` (features/s), ``plain_passes`` (passes/s), ``ideal`` (= plain_passes / 15),
        ``ratio`` (= fifteen_crop / ideal), ``crops_alone`` (images/s of the graph before the network) and
        ``crops_share`` (its share of a 15-crop feature's time).
    """
    from rich.console import Console

    from xrayscatter.resnet.model import build_backbone

    size = config.resnet.input_size
    frame = config.simulate.image_size
    channels = tuple(config.resnet.input_channels)
    backbone = build_backbone(size, config.resnet.width_multiplier, len(channels), blocks=config.resnet.blocks)
    rng = np.random.default_rng(0)
    counts = tf.constant(rng.gamma(1.0, 200.0, size=(images, frame, frame)).astype(np.float32))
    crops = tf.constant(rng.random((NUM_CROPS * images, size, size, len(channels)), dtype=np.float32))

    fifteen = tf.function(lambda x: fifteen_crop_features(backbone, x, size, channels), autograph=False)
    plain = tf.function(lambda x: backbone(x, training=False), autograph=False)
    crops_only = tf.function(lambda x: fifteen_crops(x, size, channels), autograph=False)
    cases = [(fifteen, counts, images), (plain, crops, NUM_CROPS * images), (crops_only, counts, images)]
    without_contrast = tuple(c for c in channels if c != "contrast")
    if "contrast" in channels and without_contrast:  # its percentiles order the pixels of the smallest scale
        without = tf.function(lambda x: fifteen_crops(x, size, without_contrast), autograph=False)
        cases.append((without, counts, images))
    console = console or Console()
    with console.status("15-crop features, plain forward passes and the crops alone, alternating"):
        fifteen_rate, plain_rate, crops_rate, *rest = _interleaved_rates(cases, seconds)
    result = {"fifteen_crop": fifteen_rate, "plain_passes": plain_rate, "ideal": plain_rate / NUM_CROPS,
              "ratio": fifteen_rate / (plain_rate / NUM_CROPS), "crops_alone": crops_rate,
              "crops_share": (1 / crops_rate) / (1 / fifteen_rate), "channels": list(channels)}
    if rest:  # the contrast channel's share of a feature's time
        result["contrast_share"] = max(0.0, 1 / crops_rate - 1 / rest[0]) / (1 / fifteen_rate)

    console.print(results_table(
        f"15-crop features, pipeline {config.name}: input {size} px, width × {config.resnet.width_multiplier:g}, "
        f"{len(channels)} channels ({', '.join(channels)}), {frame}-px frames, {images} per call",
        ("measurement", "rate", "target"), [
            ("15-crop features (one batched pass)", f"{fifteen_rate:.2f} features/s", ""),
            ("plain forward passes", f"{plain_rate:.1f} passes/s", ""),
            ("ideal 15-crop rate (plain / 15)", f"{result['ideal']:.2f} features/s", ""),
            ("15-crop / ideal", f"{result['ratio']:.2f}", f"≥ {TARGET_RATIO:g}"),
            ("the 15 crops alone (no network)", f"{crops_rate:.1f} images/s",
             f"{100 * result['crops_share']:.0f} % of a feature's time"),
            *([("  of which the contrast channel (percentiles, taken at the smallest scale)", "",
                f"{100 * result['contrast_share']:.0f} % of a feature's time")] if rest else [])]))
    return result


def bench_features(config, seconds: float = 10.0, json_path=None) -> dict:
    """The 15-crop benchmark, then the SPM one if ``xrayscatter.benchmarks.features_spm`` exists."""
    from rich.console import Console

    console = Console()
    started = print_conditions(console, "features")
    fifteen = bench_fifteen_crop(config, seconds=seconds, console=console)
    result = {"pipeline": config.name, "fifteen_crop": fifteen}
    ratios = [Ratio("features", f"15-crop / ideal (plain passes ÷ 15), pipeline {config.name}", fifteen["ratio"],
                    TARGET_RATIO, note=f"the crops before the network take {100 * fifteen['crops_share']:.0f} % "
                                       f"of a feature's time" + (f", the contrast channel {100 * fifteen['contrast_share']:.0f} %"
                                                                 if "contrast_share" in fifteen else ""))]
    if importlib.util.find_spec("xrayscatter.benchmarks.features_spm") is not None:
        from xrayscatter.benchmarks.features_spm import bench_spm_features

        # no target of its own: printed, not a ratio row; at most 3 s a case, less when the caller asks for less
        result["spm"] = bench_spm_features(config, seconds=min(seconds, 3.0))
    return finish(console, result, ratios, json_path, started)
