"""The command line: help texts, one-line errors, simulate and preview end to end."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xrayscatter", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_help_lists_the_stage_commands():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("simulate", "train", "evaluate", "predict", "bench"):
        assert command in result.stdout


def test_simulate_help_explains_itself():
    result = _run("simulate", "run", "--help")
    assert result.returncode == 0
    assert "--shards" in result.stdout and "--pipeline" in result.stdout


def test_bad_pipeline_is_one_line_error():
    result = _run("simulate", "run", "-p", "does/not/exist.toml")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does/not/exist.toml" in lines[0] and "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = _run("--debug", "simulate", "run", "-p", "does/not/exist.toml")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_key_error_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[simulate]\nnum_imagez = 3\n")
    result = _run("simulate", "run", "-p", str(bad))
    assert result.returncode != 0 and "bad.toml" in result.stderr and "simulate.num_imagez" in result.stderr


def test_preview_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    result = _run("simulate", "preview", "-p", str(REPO / "pipelines" / "smoke.toml"), "-n", "4", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
