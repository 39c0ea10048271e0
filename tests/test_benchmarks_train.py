"""bench train at tiny size: the four rates (pipeline alone, in memory, fed with the cache off and on)."""

from __future__ import annotations

from helpers import redirect, smoke_pipeline


def test_bench_train_measures_fed_rates_with_the_cache_off_and_on(tmp_path):
    from xrayscatter.benchmarks.train import bench_train

    config = redirect(smoke_pipeline(), tmp_path / "outputs")
    result = bench_train(config, work_dir=tmp_path / "work", images=16, seconds=0.3, warmup=1,
                         json_path=tmp_path / "train.json")
    for key in ("pipeline_alone", "in_memory", "fed_cache_off", "fed_cache_on", "fed_over_memory",
                "cached_over_memory", "pipeline_over_training"):
        assert result[key] > 0, key
    # With the cache on the fit stops within the first pass: every image it trained on was decoded.
    assert 0 < result["consumed_cache_on"] <= 16 and result["cache_on_regime"].startswith("every image")
    assert [r["name"].split(",")[0] for r in result["ratios"]] == [
        "fed (cache off) / in memory", "pipeline alone / training", "fed (cache on"]
    # The bench's data set is its own, in the work folder; the user's folders are untouched.
    assert (tmp_path / "work" / "tfrecords" / "bench-train-smoke" / "manifest.json").is_file()
    assert not (tmp_path / "outputs" / "tfrecords").exists()
