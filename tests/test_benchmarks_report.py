"""bench report: one table of every ratio against its target, from the benches' JSON files; the CLI commands."""

from __future__ import annotations

import json
import subprocess
import sys


def _result(bench, *ratios):
    from xrayscatter.benchmarks import Ratio, conditions

    return {"ratios": [Ratio(bench, *r).to_dict() for r in ratios], "conditions": conditions()}


def test_report_has_one_row_per_ratio_with_verdicts_and_conditions(tmp_path):
    from xrayscatter.benchmarks.report import write_report

    (tmp_path / "predict.json").write_text(json.dumps(_result("predict", ("end to end / forward", 0.95, 0.9))))
    (tmp_path / "simulate.json").write_text(json.dumps(_result(
        "simulate", ("speed-up", 1.5, 1.9), ("per core", None, 10.0))))
    (tmp_path / "evaluate.json").write_text(json.dumps(_result("evaluate", ("seconds", 700.0, 600.0, True, " s"))))
    md, js = write_report(tmp_path)
    table = [line for line in md.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in table] == ["| simulate", "| simulate", "| evaluate", "| predict"]
    assert [line.split(" | ")[4] for line in table] == ["short", "skipped", "short", "pass"]
    assert "≤ 600 s" in table[2] and "700.0 s" in table[2]
    report = json.loads(js.read_text())
    assert report["counts"] == {"pass": 1, "short": 2, "skipped": 1} and set(report["conditions"]) == {
        "simulate", "evaluate", "predict"}
    assert "load average" in md.read_text()


def test_ratio_verdicts():
    from xrayscatter.benchmarks import Ratio

    assert Ratio("b", "r", 1.0, 1.0).verdict == "pass" and Ratio("b", "r", 0.9, 1.0).verdict == "short"
    assert Ratio("b", "r", 12.0, 16, at_most=True).verdict == "pass"
    assert Ratio("b", "r", None, 1.0).verdict == "skipped" and Ratio("b", "r", 12.0, 16, True).target_text() == "≤ 16"


def test_cli_lists_every_bench_and_writes_the_report(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "xrayscatter", "bench", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    for command in ("simulate", "input", "train", "features", "evaluate", "predict", "prepare", "report"):
        assert command in help_text
    (tmp_path / "train.json").write_text(json.dumps(_result("train", ("fed / in memory", 0.5, 0.9))))
    result = subprocess.run([sys.executable, "-m", "xrayscatter", "bench", "report", "--folder", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| train | fed / in memory | 0.50 | ≥ 0.9 | short |" in result.stdout
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.json").is_file()


def test_work_folder_redirects_every_output(tmp_path):
    from helpers import smoke_pipeline
    from xrayscatter.benchmarks.work import redirected

    config = redirected(smoke_pipeline(), tmp_path, "bench-x")
    for path in (config.simulate.output_dir, config.resnet.output_dir, config.resnet.log_dir,
                 config.autoencoder.output_dir, config.evaluate.report_dir, config.evaluate.cache_dir,
                 config.evaluate.attributes_output_dir):
        assert str(path).startswith(str(tmp_path)), path
    assert config.simulate.dataset == "bench-x"
