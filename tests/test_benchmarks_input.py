"""bench input at tiny size: both record layouts measured, the stored resized image gives the same inputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from helpers import smoke_pipeline


def _tiny_config():
    from xrayscatter.config import replace

    # 64-px images; training makes its image at 40 px (the augmentation's load size, 35 · 256/224) and the
    # detail at 40 px, both from one square: the writer stores that square at 40 px.
    return replace(smoke_pipeline(), "resnet", input_size=35, detail_size=40, detail_crop=16, batch_size=4)


def test_bench_input_measures_both_layouts_and_reports_cores_per_gpu(tmp_path):
    from xrayscatter.benchmarks.input import bench_input

    result = bench_input(_tiny_config(), work_dir=tmp_path, images=8, batch_size=4, seconds=0.2, processes=1,
                         json_path=tmp_path / "input.json")
    assert result["stored_side"] == 40 and result["image_size"] == 64
    for layout in ("full image", "stored resized"):
        rate = result["rates"][layout]
        assert rate["images"] > 0 and rate["images_per_cpu_s"] > 0 and rate["cores_per_gpu"] > 0
    # Same inputs either way (16-bit rounding of the stored image, float16 storage of the pipeline).
    assert result["max_difference"] < 0.02
    assert [r["verdict"] in ("pass", "short") for r in result["ratios"]] == [True] * 3
    assert result["ratios"][2]["at_most"] and result["ratios"][2]["target"] == 16
    assert (tmp_path / "input.json").is_file() and result["conditions"]["cores"] >= 1


def test_the_resized_image_is_stored_only_at_the_one_side_training_makes_its_inputs_at():
    from xrayscatter.config import load_config, replace
    from xrayscatter.resnet.data import stored_view_size

    from helpers import REPO

    # paper: the image at 256 px (224 · 256/224) and the detail at 256 px.
    assert stored_view_size(load_config(REPO / "pipelines" / "paper.toml")) == 256
    # default: the image at 146 px and the detail at 256 px, each from the full square: nothing stored.
    assert stored_view_size(load_config(REPO / "pipelines" / "default.toml")) == 0
    smoke = smoke_pipeline()
    assert stored_view_size(replace(smoke, "resnet", detail_size=0)) == 73  # no branch: the load size
    assert stored_view_size(replace(smoke, "resnet", detail_size=0, augment=False)) == 64  # the input size
    assert stored_view_size(replace(smoke, "resnet", beam_centre_weight=0.0, detail_size=0)) == 73


def test_records_with_and_without_the_resized_image_parse_and_agree(tmp_path):
    from xrayscatter.normalization import channels_from_square, model_input
    from xrayscatter.schema import decode_resized, parse_example, resized_side, serialize_example

    rng = np.random.default_rng(0)
    counts = rng.poisson(50, size=(40, 64)).astype(np.float32)  # not square: padding matters
    mask = np.ones(counts.shape, bool)
    mask[:, 20:23] = False
    counts[~mask] = 0
    labels = [0] * 17
    v2 = serialize_example(counts, labels, 0, 0, {}, mask=mask, beam_xy=(3.0, 4.0))
    v3 = serialize_example(counts, labels, 0, 0, {}, mask=mask, beam_xy=(3.0, 4.0), resized_size=32)
    small = serialize_example(counts, labels, 0, 0, {}, mask=mask, resized_size=64)  # not larger: not stored
    assert len(v3) > len(v2) and len(small) == len(serialize_example(counts, labels, 0, 0, {}, mask=mask))
    record = parse_example(tf.constant(v3))
    np.testing.assert_array_equal(record["image"].numpy(), counts)
    assert int(resized_side(record["resized"])) == 32 and int(resized_side(parse_example(tf.constant(v2))["resized"])) == 0
    channels = ("filled", "contrast", "valid")
    log, gaps_missing, gaps_counted = decode_resized(record["resized"], 32)
    for missing, valid in ((True, gaps_missing), (False, gaps_counted)):
        full = model_input(tf.where(tf.constant(mask) | (not missing), counts, -1.0)[None], 32, channels)
        stored = channels_from_square(log[None], valid[None], 32, channels)
        stored, full = stored.numpy(), full.numpy()
        # filled and valid: the 16-bit rounding; contrast: the same, stretched by the image's percentile range.
        np.testing.assert_allclose(stored[..., [0, 2]], full[..., [0, 2]], atol=2e-4)
        np.testing.assert_allclose(stored[..., 1], full[..., 1], atol=1e-2)
