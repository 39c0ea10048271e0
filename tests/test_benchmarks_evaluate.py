"""bench evaluate at tiny size: every feature set with the pipeline's settings; real features skipped clearly."""

from __future__ import annotations

from helpers import redirect, smoke_pipeline, write_pipeline


def test_feature_widths_are_the_real_ones_at_paper_scale():
    from xrayscatter.benchmarks.evaluate import feature_widths
    from xrayscatter.config import load_config

    from helpers import REPO

    widths = feature_widths(load_config(REPO / "pipelines" / "paper.toml"))
    assert widths == {"resnet": (2048,), "autoencoder": (21504,), "resnet+autoencoder": (2048, 21504),
                      "bow": (8400,), "lbpphog": (840,)}


def test_bench_evaluate_runs_every_set_estimates_from_folds_and_skips_missing_real_features(tmp_path):
    from xrayscatter.benchmarks.evaluate import bench_evaluate

    config = smoke_pipeline()
    absent = write_pipeline(redirect(config, tmp_path / "nothing", data=True), tmp_path / "absent.toml")
    result = bench_evaluate(config, images=48, attributes=4, runs=4, folds=2, threads=1, compare=True,
                            real_pipeline=str(absent), json_path=tmp_path / "evaluate.json")
    assert set(result["sets"]) == {"resnet", "autoencoder", "resnet+autoencoder", "bow", "lbpphog"}
    for s in result["sets"].values():
        assert s["folds_run"] == 2 and s["folds"] == 4 and s["estimated"] and s["seconds"] > 0
    assert result["c_grid"] == list(config.evaluate.svm_c_grid) and result["hierarchical"]
    profile = result["sets"]["resnet+autoencoder"]["profile"]  # the widest set is profiled
    assert {e["function"].split("(")[1].rstrip(")") for e in profile} >= {"choose_c", "fit_linear_svms"}
    assert set(result["comparison"]) == {"raw_fit_s", "gram_fit_s", "gram_prepare_s", "max_decision_difference"}
    assert result["real"]["skipped"].startswith("skipped: no trained smoke model")
    synthetic, real = result["ratios"]
    assert synthetic["at_most"] and synthetic["target"] == 600 and "(estimated)" in synthetic["name"]
    assert real["verdict"] == "skipped"


def test_bench_evaluate_all_folds_is_not_an_estimate(tmp_path):
    from xrayscatter.benchmarks.evaluate import bench_evaluate
    from xrayscatter.config import replace

    config = replace(smoke_pipeline(), "evaluate", feature_sets=("resnet",), baselines=(), hierarchical=False)
    result = bench_evaluate(config, images=30, attributes=3, runs=3, threads=1, compare=False)
    assert not result["estimated"] and result["sets"]["resnet"]["folds_run"] == 3
    assert result["sets"]["resnet"]["map_paper"] is not None and result["real"] == {"skipped": "not asked for"}
