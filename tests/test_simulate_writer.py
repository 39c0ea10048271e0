"""Sharded TFRecords: layout, schema round trip, determinism across processes, kill and resume."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import kill_when, write_pipeline
from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.dataset import SPLITS, dataset_dir, shard_paths
from xrayscatter.simulate.generator import simulate_image_from_config
from xrayscatter.simulate.writer import parse_shard_range, plan_shards


def _shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if ".tfrecord-" in p.name}


def _with_output(config, directory: Path, **sim_changes):
    return dataclasses.replace(config, simulate=dataclasses.replace(config.simulate, output_dir=str(directory), **sim_changes))


def test_layout_and_manifest(smoke_dataset):
    config = smoke_dataset
    folder = dataset_dir(config)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["attributes"] == list(ATTRIBUTES)
    assert set(manifest["versions"]) == {"xrayscatter", "python", "simulator", "numpy", "scipy", "tensorflow"}
    total = sum(manifest["splits"][s]["num_images"] for s in SPLITS)
    assert total == config.simulate.num_images
    runs = [set(manifest["splits"][s]["runs"]) for s in SPLITS]
    assert not (runs[0] & runs[1]) and not (runs[0] & runs[2]) and not (runs[1] & runs[2])  # split by run
    for split in SPLITS:
        files = shard_paths(config, split)
        assert [Path(f).name for f in files] == manifest["splits"][split]["files"]
        n = len(files)
        assert all(Path(f).name.endswith(f"-of-{n:05d}") for f in files)
    assert not list(folder.glob(".*tmp*"))


def test_schema_round_trip(smoke_dataset):
    import tensorflow as tf

    from xrayscatter.schema import parse_example_numpy

    config = smoke_dataset
    first = shard_paths(config, "train")[0]
    records = list(tf.data.TFRecordDataset(first).take(3).as_numpy_iterator())
    for raw in records:
        rec = parse_example_numpy(raw)
        again = simulate_image_from_config(config.simulate, config.seed, int(rec["image_id"]))
        assert np.array_equal(rec["image"], again.counts)
        assert rec["labels"].tolist() == again.labels
        assert int(rec["run_id"]) == again.run_id
        assert rec["params"] == json.loads(json.dumps(again.params))
        assert (int(rec["height"]), int(rec["width"])) == again.counts.shape
        # Schema v2: the light-sensitive pixels and the beam centre the simulator placed.
        np.testing.assert_array_equal(rec["mask"], again.valid.astype(np.float32))
        np.testing.assert_array_equal(rec["beam"], np.float32(again.beam_xy))
    assert any(parse_example_numpy(raw)["mask"].min() == 0.0 for raw in tf.data.TFRecordDataset(
        shard_paths(config, "train")).as_numpy_iterator())  # some images have module gaps


def test_two_processes_write_the_same_bytes(smoke_dataset, tmp_path):
    from xrayscatter.simulate.writer import simulate_dataset

    config = _with_output(smoke_dataset, tmp_path)
    simulate_dataset(config, processes=2, progress=False)
    assert _shard_bytes(dataset_dir(config)) == _shard_bytes(dataset_dir(smoke_dataset))


def test_job_array_shard_ranges_union_equals_single_run(smoke_dataset, tmp_path):
    """Two disjoint shard ranges written by two processes, then finalize → same bytes as one run."""
    from xrayscatter.simulate.writer import finalize_dataset

    config = _with_output(smoke_dataset, tmp_path)
    n = len(plan_shards(config))
    toml = _one_process_pipeline(config, tmp_path / "pipe.toml")
    procs = [subprocess.Popen([sys.executable, "-m", "xrayscatter", "simulate", "run", "-p", str(toml), "--shards", r,
                               "--processes", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for r in (f"0-{n // 2 - 1}", f"{n // 2}-{n - 1}")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    finalize_dataset(config)
    assert _shard_bytes(dataset_dir(config)) == _shard_bytes(dataset_dir(smoke_dataset))
    ours = json.loads((dataset_dir(config) / "manifest.json").read_text())
    ref = json.loads((dataset_dir(smoke_dataset) / "manifest.json").read_text())
    assert ours["splits"] == ref["splits"]


def test_finalize_names_missing_shards(smoke_dataset, tmp_path):
    from xrayscatter.errors import XrayscatterError
    from xrayscatter.simulate.writer import finalize_dataset, simulate_dataset

    config = _with_output(smoke_dataset, tmp_path)
    simulate_dataset(config, shard_selection=[0], processes=1, progress=False)
    with pytest.raises(XrayscatterError, match="shards missing"):
        finalize_dataset(config)


def test_parse_shard_range():
    assert parse_shard_range("3") == [3]
    assert parse_shard_range("0-3,7") == [0, 1, 2, 3, 7]


def _one_process_pipeline(config, path: Path) -> Path:
    """The pipeline file of ``config`` with one simulation process (shards written one after another)."""
    return write_pipeline(_with_output(config, Path(config.simulate.output_dir), processes=1), path)


def test_killed_run_resumes_to_identical_bytes(smoke_dataset, tmp_path):
    """SIGKILL a simulate run after its first shard, start it again: same bytes as an uninterrupted run."""
    config = _with_output(smoke_dataset, tmp_path)
    toml = _one_process_pipeline(config, tmp_path / "pipe.toml")
    folder = dataset_dir(config)
    cmd = [sys.executable, "-m", "xrayscatter", "simulate", "run", "-p", str(toml)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: folder.is_dir() and any(".tfrecord-" in p.name and not p.name.startswith(".")
                                                   for p in folder.iterdir()), timeout=240)
    complete = [p for p in folder.iterdir() if ".tfrecord-" in p.name and not p.name.startswith(".")]
    reference = _shard_bytes(dataset_dir(smoke_dataset))
    assert 1 <= len(complete) < len(reference), "the kill should land mid-run"
    for p in complete:  # whatever is visible is complete
        assert p.read_bytes() == reference[p.name]
    assert not (folder / "manifest.json").exists()
    result = subprocess.run(cmd, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert _shard_bytes(folder) == reference
    assert not list(folder.glob(".*tmp*"))


def test_workers_keep_freed_memory_where_glibc_allows_it():
    """The writer's allocator settings take on Linux (glibc's mallopt accepts them) and are harmless to repeat."""
    from xrayscatter.simulate.writer import keep_freed_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt is Linux's")
    assert keep_freed_memory() is True and keep_freed_memory() is True
