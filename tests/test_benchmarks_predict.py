"""bench predict at tiny size: forward (as predict runs it) vs end to end per model; a missing model is skipped."""

from __future__ import annotations

from helpers import export_tiny_resnet, tiny_resnet_config


def test_bench_predict_measures_each_model_and_skips_a_missing_one(tmp_path):
    from xrayscatter.benchmarks.predict import TARGET_RATIO, bench_predict

    # The tests' tiny ResNet with the paper's network: one input channel, no beam-centre head.
    model = export_tiny_resnet(tmp_path / "resnet", tiny_resnet_config(paper=True)).parent
    result = bench_predict([model, tmp_path / "no-model"], images=4, size=64, batch_size=2, workers=1,
                           json_path=tmp_path / "predict.json")
    (row,) = result["models"]
    for key in ("forward", "end_to_end", "reading", "ratio"):
        assert row[key] > 0, key
    if row["ratio"] < TARGET_RATIO:
        assert row["profile"] and {"function", "calls", "cumulative_s"} <= set(row["profile"][0])
    measured, skipped = result["ratios"]  # in the order the models were given
    assert measured["target"] == 0.9 and skipped["verdict"] == "skipped" and "no-model" in skipped["name"]
