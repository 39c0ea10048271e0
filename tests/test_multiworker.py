"""Multi-worker training: two worker processes on 127.0.0.1, each with its own TF_CONFIG.

Proves the route around keras#20585 (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy):
the custom loop of ``xrayscatter.multiworker`` trains the smoke pipeline on two workers,
both take part, both end with identical weights, and a second launch resumes from the
shared backup.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_pipeline(config, path: Path) -> Path:
    """A PipelineConfig → pipeline TOML file (the workers load it like a user's file)."""
    table = config.to_dict()
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for section, values in table.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def launch_workers(pipeline: Path, steps: int, out_dir: Path, tag: str) -> list[tuple[dict, list[np.ndarray]]]:
    """Start two workers (`python -m xrayscatter.multiworker`), wait, return each one's result and weights."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        weights = out_dir / f"{tag}-worker{index}.npz"
        command = [sys.executable, "-m", "xrayscatter.multiworker", "--pipeline", str(pipeline),
                   "--steps", str(steps), "--no-export", "--weights-out", str(weights)]
        processes.append((subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True), weights))
    results = []
    for process, weights in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-3000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
        with np.load(weights) as arrays:
            results.append((json.loads(line[len("RESULT "):]), [arrays[k] for k in sorted(arrays, key=lambda k: int(k.split("_")[1]))]))
    return results


def test_two_workers_train_together_identically_and_resume_from_backup(smoke_dataset, tmp_path):
    import dataclasses

    config = dataclasses.replace(smoke_dataset, resnet=dataclasses.replace(
        smoke_dataset.resnet, log_dir=str(tmp_path / "logs"), output_dir=str(tmp_path / "saved_models")))
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")

    first = launch_workers(pipeline, steps=2, out_dir=tmp_path, tag="first")
    for index, (result, _weights) in enumerate(first):
        assert (result["task_type"], result["task_id"]) == ("worker", index)
        assert result["workers"] == 2 and result["replicas"] == 2  # one CPU replica per worker
        assert result["initial_step"] == 0 and result["steps_run"] == 2 and result["final_step"] == 2
        assert all(np.isfinite(result["losses"]))
    assert first[0][0]["chief"] and not first[1][0]["chief"]
    # The loss is all-reduced: both workers saw the same global mean every step.
    np.testing.assert_allclose(first[0][0]["losses"], first[1][0]["losses"], rtol=1e-6)
    # Identical weights on both workers, and training moved them.
    assert first[0][0]["weights_sha256"] == first[1][0]["weights_sha256"]
    for a, b in zip(first[0][1], first[1][1]):
        np.testing.assert_array_equal(a, b)

    # Only the chief's backup is kept in the shared folder; the other worker's temporary folder is gone.
    logs = tmp_path / "logs"
    assert (logs / "multiworker-backup" / "checkpoint").is_file()
    assert not [p for p in logs.iterdir() if p.name.startswith(".multiworker-backup-")]
    assert list((logs / "multiworker" / "train").glob("events.out.tfevents.*"))  # chief's TensorBoard

    # A new launch (as after a killed job) resumes at step 2 from the shared backup.
    second = launch_workers(pipeline, steps=4, out_dir=tmp_path, tag="second")
    for result, _weights in second:
        assert result["initial_step"] == 2 and result["steps_run"] == 2 and result["final_step"] == 4
    assert second[0][0]["weights_sha256"] == second[1][0]["weights_sha256"]
    assert second[0][0]["weights_sha256"] != first[0][0]["weights_sha256"]
    changed = [not np.array_equal(a, b) for a, b in zip(first[0][1], second[0][1])]
    assert sum(changed) > len(changed) // 2
