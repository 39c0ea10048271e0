"""bench simulate at tiny size: generator and whole simulate-run path, 1 and 2 processes, where the time goes."""

from __future__ import annotations

from helpers import smoke_pipeline


def test_bench_simulate_reports_both_paths_speedups_and_stages(tmp_path):
    from xrayscatter.benchmarks.simulate import bench_simulate

    result = bench_simulate(smoke_pipeline(), [32], seconds=0.05, processes=2, json_path=tmp_path / "simulate.json")
    (row,) = result["rows"]
    for path in ("generator", "write"):
        for key in (f"{path}_1", f"{path}_2", f"{path}_speedup", f"{path}_speedup_cpu", f"{path}_per_core_2",
                    f"{path}_cores_2"):
            assert row[key] > 0, key
    assert set(row["stages_s"]) == {"generator", "image PNG", "mask PNG", "resized", "whole record"}
    names = [r["name"] for r in result["ratios"]]
    assert names == ["simulate run speed-up 1 → 2 processes at 32²"]  # no per-core target at 32²
    assert result["ratios"][0]["target"] == 1.9 and (tmp_path / "simulate.json").is_file()
