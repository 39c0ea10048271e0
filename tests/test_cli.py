"""The command line: help texts, one-line errors, simulate and preview end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_readme_job_array_recipe_runs_as_written_at_smoke_size(tmp_path):
    """The README's "Simulation across a job array" shell blocks, run verbatim (sbatch emulated: one run of the
    task script per array index) in a folder whose pipelines/default.toml is the smoke pipeline (32 images)."""
    import os
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Simulation across a job array"):readme.index("## Why not tensorflow-io")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    task_script = next(b for b in blocks if "$SLURM_ARRAY_TASK_ID" in b)
    submit = next(b for b in blocks if "sbatch --array" in b).splitlines()
    array = re.fullmatch(r"sbatch --array=0-\$\(\( \$\((.+)\) - 1 \)\) (\S+)", submit[0].strip())
    assert array, submit[0]
    (tmp_path / "pipelines").mkdir()
    # The smoke pipeline at a third of its images: one shard per split, each array task a process of its own.
    smoke = (REPO / "pipelines" / "smoke.toml").read_text()
    assert "\nnum_images = 96\n" in smoke
    (tmp_path / "pipelines" / "default.toml").write_text(smoke.replace("\nnum_images = 96\n", "\nnum_images = 32\n"))
    (tmp_path / array.group(2)).write_text(task_script)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def shell(command: str, **extra) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    count = int(shell(array.group(1)))
    assert count == 3  # one shard per split
    for task in range(count):
        shell(f"bash {array.group(2)}", SLURM_ARRAY_TASK_ID=str(task))
    for line in submit[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            shell(line)
    manifest = tmp_path / "tfrecords" / "smoke" / "manifest.json"
    assert manifest.is_file()
    assert len(list((tmp_path / "tfrecords" / "smoke").glob("smoke-*.tfrecord-*"))) == count
