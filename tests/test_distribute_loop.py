"""The custom multi-worker loop through the command line: every recipe of the README's "Scaling out".

Worker processes on 127.0.0.1, each with its own cluster environment (``tests/helpers.py``):

* ``xrayscatter train autoencoder`` with ``TF_CONFIG`` and as a Slurm step;
* ``xrayscatter train resnet`` with ``TF_CONFIG``, one worker killed with SIGKILL mid-run: the survivor
  exits saying how to resume, and the job started again — as the two tasks of a Slurm job step (Slurm's
  environment variables, as ``srun`` sets them) — resumes at the last backup, with export by the chief only.

(``tests/test_train.py`` runs the library entry itself under ``TF_CONFIG``.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import (finish, free_port_pair, free_ports, kill_when, latest_backup_step, redirect, slurm_env, start,
                     tf_config_env, write_pipeline)
from xrayscatter.distribute.loop import naming_lost_workers
from xrayscatter.errors import XrayscatterError

TIMEOUT = 300  # seconds for one launch of two workers (they take ~15 s on an idle 2-core machine)


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


@pytest.mark.parametrize("cluster", ["tf_config", "slurm"])
def test_cli_trains_the_autoencoder_on_two_workers(cluster, smoke_dataset, tmp_path):
    config = redirect(smoke_dataset, tmp_path)
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
    assert report["training"]["route"] == "loop"
    assert np.isfinite(report["reconstruction_error"]["rmse"]["mean"])


def test_a_worker_killed_mid_run_and_restarted_resumes_from_the_last_backup(smoke_dataset, tmp_path):
    """The README's plain-shell recipe (`xrayscatter train resnet` with TF_CONFIG) and its fault tolerance."""
    total = 8  # the kill comes at step 3 or a little later: 8 leaves room and trains (and validates) little more
    config = redirect(smoke_dataset, tmp_path)
    # One step per epoch: a backup after every step.
    config = dataclasses.replace(config, resnet=dataclasses.replace(config.resnet, epochs=total, steps_per_epoch=1))
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")
    backup = tmp_path / "logs" / "resnet" / "backup"
    command = [sys.executable, "-m", "xrayscatter", "train", "resnet", "--pipeline", str(pipeline)]

    ports = free_ports(2)
    workers = [start(command, tf_config_env(index, ports), tmp_path) for index in range(2)]
    try:
        kill_when(workers[1], lambda: latest_backup_step(backup) >= 3, timeout=TIMEOUT)
        assert workers[1].returncode == -signal.SIGKILL
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

    # The job is started again, this time as the two tasks of a Slurm job step (Slurm's variables, as ``srun``
    # sets them; the backup does not care which cluster wrote it): it resumes at the last backup.
    port = free_port_pair()
    outputs = finish([start(command, slurm_env(rank, 2, port), tmp_path) for rank in range(2)])
    chief, other = cli_summaries(outputs)
    for index, summary in enumerate((chief, other)):
        assert summary["network"] == "resnet" and int(summary["index"]) == index
        assert (int(summary["first"]), int(summary["last"]), int(summary["total"])) == (killed_at, total, total)
        assert summary["replicas"] == "2"  # one CPU replica on each of the two workers
    assert (chief["role"], other["role"]) == ("chief", "worker")
    assert chief["sha"] == other["sha"]
    # Only the chief exports (one version, with its hold-out report); the schedule is complete, so its backup is gone.
    assert chief["export"] and other["export"] is None
    versions = sorted((tmp_path / "saved_models" / "resnet").iterdir())
    assert [v.name for v in versions] == ["1"] and (versions[0] / "saved_model.pb").is_file()
    assert (tmp_path / "reports" / config.name / "resnet_holdout.json").is_file()
    assert not backup.exists()  # a complete schedule removes its backup
    # The killed worker's temporary checkpoint folder was cleared by its successor.
    assert not [p for p in backup.parent.iterdir() if p.name.startswith(".backup-")]


def test_a_lost_worker_becomes_one_line_naming_the_backup_step():
    import tensorflow as tf

    with pytest.raises(XrayscatterError, match=r"lost at step 8 \(Collective ops is aborted by: peer down\).*"
                                                r"resumes from the backup at step 6"):
        with naming_lost_workers(lambda: (7, 6)):
            raise tf.errors.UnavailableError(None, None, "first line\nCollective ops is aborted by: peer down")
