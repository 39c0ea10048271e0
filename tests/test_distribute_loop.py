"""Multi-worker training: worker processes on 127.0.0.1, each with its own cluster environment.

Proves the route around keras#20585 (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy)
and every recipe of the README's "Scaling out" section:

* ``python -m xrayscatter.multiworker`` with ``TF_CONFIG``: both workers take part, end with
  identical weights, and a second launch resumes from the shared backup;
* ``xrayscatter train resnet`` as the two tasks of a Slurm job step (Slurm's environment
  variables, as ``srun`` sets them), with export by the chief only;
* ``xrayscatter train autoencoder`` with ``TF_CONFIG`` and as a Slurm step;
* ``xrayscatter train resnet`` with ``TF_CONFIG``, one worker killed with SIGKILL mid-run: the
  survivor exits saying how to resume, and the job started again resumes at the last backup.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from localhost import free_port_pair, free_ports

TIMEOUT = 300  # seconds for one launch of two workers (they take ~15 s on an idle 2-core machine)


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


def isolated(config, root: Path):
    """The config with every output (logs, SavedModels, reports) under ``root``."""
    return dataclasses.replace(
        config,
        resnet=dataclasses.replace(config.resnet, log_dir=str(root / "logs" / "resnet"),
                                   output_dir=str(root / "saved_models" / "resnet")),
        autoencoder=dataclasses.replace(config.autoencoder, log_dir=str(root / "logs" / "autoencoder"),
                                        output_dir=str(root / "saved_models" / "autoencoder")),
        evaluate=dataclasses.replace(config.evaluate, report_dir=str(root / "reports")))


def tf_config_env(index: int, ports: list[int]) -> dict:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}


def slurm_env(rank: int, tasks: int, port: int) -> dict:
    """What ``srun --ntasks=<tasks>`` sets for task ``rank``, all tasks on this one node."""
    return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": str(tasks), "XRAYSCATTER_PORT": str(port)}


def start(command: list[str], extra_env: dict, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra_env)
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(processes: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; stdout of each (fails with the stderr of one that failed)."""
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def module_command(pipeline: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "xrayscatter.multiworker", "--pipeline", str(pipeline), *args]


def result_of(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def launch_workers(pipeline: Path, steps: int, out_dir: Path, tag: str) -> list[tuple[dict, list[np.ndarray]]]:
    """Start two workers (`python -m xrayscatter.multiworker`), wait, return each one's result and weights."""
    ports = free_ports(2)
    weights = [out_dir / f"{tag}-worker{index}.npz" for index in range(2)]
    processes = [start(module_command(pipeline, "--steps", str(steps), "--no-export", "--weights-out",
                                      str(weights[index])), tf_config_env(index, ports), out_dir)
                 for index in range(2)]
    results = []
    for stdout, path in zip(finish(processes), weights):
        with np.load(path) as arrays:
            ordered = sorted(arrays, key=lambda k: int(k.split("_")[1]))
            results.append((result_of(stdout), [arrays[k] for k in ordered]))
    return results


def test_two_workers_train_together_identically_and_resume_from_backup(smoke_dataset, tmp_path):
    config = isolated(smoke_dataset, tmp_path)
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
    logs = tmp_path / "logs" / "resnet"
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


SUMMARY = re.compile(r"^(?P<network>\w+): worker (?P<index>\d) of 2 \((?P<role>chief|worker)\), (?P<replicas>\d+) "
                     r"replicas, steps (?P<first>\d+)→(?P<last>\d+) of (?P<total>\d+), weights sha256 "
                     r"(?P<sha>[0-9a-f]{64})(?:, exported (?P<export>\S+))?$", re.MULTILINE)


def cli_summaries(outputs: list[str]) -> list[dict]:
    found = []
    for stdout in outputs:
        match = SUMMARY.search(stdout)
        assert match, stdout[-2000:]
        found.append(match.groupdict())
    return found


def test_cli_trains_the_resnet_as_the_two_tasks_of_a_slurm_step(smoke_dataset, tmp_path):
    config = isolated(smoke_dataset, tmp_path)
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    port = free_port_pair()
    command = [sys.executable, "-m", "xrayscatter", "train", "resnet", "--pipeline", str(pipeline)]
    outputs = finish([start(command, slurm_env(rank, 2, port), tmp_path) for rank in range(2)])

    chief, other = cli_summaries(outputs)
    total = config.resnet.epochs * config.resnet.steps_per_epoch
    for index, summary in enumerate((chief, other)):
        assert summary["network"] == "resnet" and int(summary["index"]) == index
        assert (int(summary["first"]), int(summary["last"]), int(summary["total"])) == (0, total, total)
        assert summary["replicas"] == "2"  # one CPU replica on each of the two workers
    assert (chief["role"], other["role"]) == ("chief", "worker")
    assert chief["sha"] == other["sha"]
    # Only the chief exports; the schedule is complete, so its backup is gone.
    assert chief["export"] and other["export"] is None
    versions = sorted((tmp_path / "saved_models" / "resnet").iterdir())
    assert [v.name for v in versions] == ["1"] and (versions[0] / "saved_model.pb").is_file()
    assert (tmp_path / "reports" / config.name / "resnet_holdout.json").is_file()
    assert not (tmp_path / "logs" / "resnet" / "multiworker-backup").exists()


@pytest.mark.parametrize("cluster", ["tf_config", "slurm"])
def test_cli_trains_the_autoencoder_on_two_workers(cluster, smoke_dataset, tmp_path):
    config = isolated(smoke_dataset, tmp_path)
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    if cluster == "tf_config":
        ports = free_ports(2)
        environments = [tf_config_env(index, ports) for index in range(2)]
    else:
        port = free_port_pair()
        environments = [slurm_env(rank, 2, port) for rank in range(2)]
    command = [sys.executable, "-m", "xrayscatter", "train", "autoencoder", "--pipeline", str(pipeline)]
    outputs = finish([start(command, environment, tmp_path) for environment in environments])

    chief, other = cli_summaries(outputs)
    total = config.autoencoder.epochs * config.autoencoder.steps_per_epoch
    assert chief["network"] == other["network"] == "autoencoder"
    assert (chief["role"], other["role"]) == ("chief", "worker")
    assert chief["last"] == other["last"] == str(total)
    assert chief["sha"] == other["sha"]
    assert chief["export"] and other["export"] is None
    versions = sorted((tmp_path / "saved_models" / "autoencoder").iterdir())
    assert [v.name for v in versions] == ["1"] and (versions[0] / "saved_model.pb").is_file()
    report = json.loads((tmp_path / "reports" / config.name / "autoencoder.json").read_text())
    assert report["training"]["workers"] == 2 and report["training"]["replicas"] == 2
    assert np.isfinite(report["reconstruction_error"]["rmse"]["mean"])


def latest_backup_step(backup: Path) -> int:
    text = (backup / "checkpoint").read_text() if (backup / "checkpoint").is_file() else ""
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_a_worker_killed_mid_run_and_restarted_resumes_from_the_last_backup(smoke_dataset, tmp_path):
    """The README's plain-shell recipe (`xrayscatter train resnet` with TF_CONFIG) and its fault tolerance."""
    total = 12
    config = isolated(smoke_dataset, tmp_path)
    # One step per epoch: a backup after every step.
    config = dataclasses.replace(config, resnet=dataclasses.replace(config.resnet, epochs=total, steps_per_epoch=1))
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    backup = tmp_path / "logs" / "resnet" / "multiworker-backup"
    command = [sys.executable, "-m", "xrayscatter", "train", "resnet", "--pipeline", str(pipeline)]

    ports = free_ports(2)
    workers = [start(command, tf_config_env(index, ports), tmp_path) for index in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while latest_backup_step(backup) < 3:
            assert time.monotonic() < deadline, "no backup written"
            assert all(w.poll() is None for w in workers), "a worker ended before the kill"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        try:
            workers[0].wait(timeout=120)
            survivor_code = workers[0].returncode
        except subprocess.TimeoutExpired:
            survivor_code = None
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        survivor_stderr = workers[0].communicate()[1]
        workers[1].communicate()
    killed_at = latest_backup_step(backup)
    assert 3 <= killed_at < total
    # The survivor's next all-reduce fails: it exits (no hang) with one line saying how to resume.
    assert survivor_code not in (None, 0), survivor_stderr[-3000:]
    assert f"resumes from the backup at step {killed_at}" in survivor_stderr, survivor_stderr[-3000:]

    # The job is started again (both workers, same command): it resumes at the last backup.
    ports = free_ports(2)
    outputs = finish([start(command, tf_config_env(index, ports), tmp_path) for index in range(2)])
    chief, other = cli_summaries(outputs)
    for summary in (chief, other):
        assert (int(summary["first"]), int(summary["last"]), int(summary["total"])) == (killed_at, total, total)
    assert chief["sha"] == other["sha"]
    assert chief["export"] and other["export"] is None
    assert not backup.exists()  # a complete schedule removes its backup
    # The killed worker's temporary checkpoint folder was cleared by its successor.
    assert not [p for p in backup.parent.iterdir() if p.name.startswith(".multiworker-backup-")]


@pytest.mark.parametrize("environ, kind", [
    ({}, "local"),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'}, "tf_config"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, "local"),  # one task: plain single-host training
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"}, "slurm"),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "XRAYSCATTER_CLUSTER": "local"}, "local"),
])
def test_cluster_kind_follows_the_environment(environ, kind):
    from xrayscatter.cluster import cluster_kind

    assert cluster_kind(environ) == kind


def test_slurm_resolver_gives_each_task_its_worker_address():
    from xrayscatter.cluster import slurm_resolver

    environ = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[01-02]",
               "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "XRAYSCATTER_PORT": "2000", "CUDA_VISIBLE_DEVICES": ""}
    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)  # TensorFlow's resolver reads os.environ itself
    try:
        resolver = slurm_resolver(environ)
        spec = resolver.cluster_spec().as_dict()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert spec == {"worker": ["node01:2000", "node01:2001", "node02:2000", "node02:2001"]}
    assert resolver.get_task_info() == ("worker", 3)
    assert resolver.num_accelerators() == {"GPU": 0}  # what this CPU machine has: one CPU replica
