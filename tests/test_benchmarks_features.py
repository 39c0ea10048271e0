"""bench features at tiny size: 15-crop vs plain passes with the configured input channels, and SPM."""

from __future__ import annotations

from helpers import smoke_pipeline


def test_bench_features_reports_the_ratio_and_where_the_time_goes(tmp_path):
    from xrayscatter.benchmarks.features import TARGET_RATIO, bench_features

    config = smoke_pipeline()
    result = bench_features(config, seconds=0.2, json_path=tmp_path / "features.json")
    fifteen = result["fifteen_crop"]
    assert fifteen["channels"] == list(config.resnet.input_channels)
    for key in ("fifteen_crop", "plain_passes", "ideal", "ratio", "crops_alone", "crops_share"):
        assert fifteen[key] > 0, key
    assert fifteen["contrast_share"] >= 0  # the smoke pipeline's channels include contrast
    assert result["spm"]["max_abs_difference"] < 1e-4
    (ratio,) = result["ratios"]
    assert ratio["target"] == TARGET_RATIO == 0.95 and (tmp_path / "features.json").is_file()
