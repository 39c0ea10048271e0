"""tf.data service: a dispatcher and a worker started through the CLI on 127.0.0.1, training input read through them.

The training pipeline read through the service yields one epoch of exactly the images and
labels of the local pipeline; the dispatcher's journal (``--work-dir``) shows that the
service was used (and the local pipeline leaves it alone); two training steps run on it.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import numpy as np
import tensorflow as tf

from helpers import free_ports
from xrayscatter.config import config_from_dict, parse_address, replace
from xrayscatter.dataset import split_size
from xrayscatter.distribute.data_service import distribute, worker_hostname
from xrayscatter.errors import XrayscatterError
from xrayscatter.resnet.data import make_dataset

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


@dataclass
class Service:
    address: str  # the dispatcher's host:port
    work_dir: Path  # the dispatcher's journal folder
    lines: dict  # first stdout line of each server


def _start(args: list[str], port: int, log: Path, processes: list) -> str:
    """Start `xrayscatter <args>` (kept in `processes`), wait until it accepts connections on port; its first line."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "xrayscatter", *args], env=ENV, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
    processes.append(process)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"{args[:2]} exited: {log.read_text()[-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, f"{args[:2]} does not listen on {port}: {log.read_text()[-3000:]}"
            time.sleep(0.2)
    return process.stdout.readline().strip()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`xrayscatter data-service dispatcher` and `... worker` on 127.0.0.1, terminated after the tests."""
    root = tmp_path_factory.mktemp("data_service")
    dispatcher_port, worker_port = free_ports(2)
    processes = []
    try:
        lines = {
            "dispatcher": _start(["data-service", "dispatcher", "--port", str(dispatcher_port),
                                  "--work-dir", str(root / "dispatcher")], dispatcher_port,
                                 root / "dispatcher.log", processes),
            "worker": _start(["data-service", "worker", "--dispatcher", f"127.0.0.1:{dispatcher_port}",
                              "--port", str(worker_port), "--worker-address", "127.0.0.1"], worker_port,
                             root / "worker.log", processes),
        }
        # Ready when the dispatcher has journaled the worker under the address it was given
        # (registration is asynchronous; later journal sizes must not include it).
        registered, deadline = f"127.0.0.1:{worker_port}".encode(), time.monotonic() + 60
        while not any(registered in p.read_bytes() for p in (root / "dispatcher").rglob("*") if p.is_file()):
            assert time.monotonic() < deadline, f"the worker did not register: {(root / 'worker.log').read_text()}"
            time.sleep(0.2)
        yield Service(f"127.0.0.1:{dispatcher_port}", root / "dispatcher", lines)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


def _journal_bytes(work_dir: Path) -> int:
    """Bytes the dispatcher has written to its work folder (it journals datasets and jobs before replying)."""
    return sum(p.stat().st_size for p in work_dir.rglob("*") if p.is_file())


def _elements(dataset: tf.data.Dataset, count: int) -> list[tuple[str, list[np.ndarray]]]:
    """The first `count` (inputs, targets) elements, batches taken apart: (SHA-256 of the labels, the arrays).

    Images are compared to a tolerance, not bit for bit: the same float graph run in the worker's process
    and in this one may differ in the last bits."""
    out = []
    for element in dataset.unbatch().take(count).as_numpy_iterator():
        arrays = [np.asarray(a) for a in tf.nest.flatten(element)]
        labels = element[1]["attributes"] if isinstance(element[1], dict) else element[1]
        out.append((hashlib.sha256(np.asarray(labels).tobytes()).hexdigest(), arrays))
    return out


def _matched(remote, local) -> tuple[float, set[int]]:
    """Pair each remote element with the local one of the same labels and nearest arrays: the largest difference
    over the pairs (inf where one has no partner) and the local elements paired."""
    def distance(arrays, other):
        return max(float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
                   if a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) else np.inf
                   for a, b in zip(arrays, other))

    worst, used = 0.0, set()
    for key, arrays in remote:
        candidates = [j for j, (other_key, _) in enumerate(local) if other_key == key]
        if not candidates:
            return np.inf, used
        best = min(candidates, key=lambda j: distance(arrays, local[j][1]))
        worst = max(worst, distance(arrays, local[best][1]))
        used.add(best)
    return worst, used


def test_servers_say_where_they_listen(service):
    port = service.address.split(":")[1]
    assert f"listening on port {port}" in service.lines["dispatcher"]
    assert "registered as 127.0.0.1:" in service.lines["worker"] and service.address in service.lines["worker"]


def test_training_pipeline_through_the_service_yields_the_local_epoch(smoke_dataset, service):
    # No random crop, and every module gap shown missing: the same elements wherever the pipeline runs.
    local_config = replace(smoke_dataset, "resnet", augment=False, gaps_missing_fraction=1.0)
    service_config = replace(local_config, "resnet", data_service=f"grpc://{service.address}")
    images = split_size(smoke_dataset, "train")
    assert images % smoke_dataset.resnet.batch_size == 0  # whole batches: one epoch is `images` elements

    journal = _journal_bytes(service.work_dir)
    # Two epochs' worth from each: shuffled files read in parallel may hand out the next epoch's first elements
    # before the last of this one, so an epoch boundary is not a fixed position in either stream.
    local = _elements(make_dataset(local_config, "train", training=True), 2 * images)
    assert _journal_bytes(service.work_dir) == journal  # the local pipeline does not touch the service
    remote = _elements(make_dataset(service_config, "train", training=True), 2 * images)
    assert _journal_bytes(service.work_dir) > journal  # the dispatcher registered the pipeline and a job

    # Locally, two epochs hold each of the split's images (and nothing else).
    unique = list({hashlib.sha256(b"".join(a.tobytes() for a in arrays)).digest(): (key, arrays)
                   for key, arrays in local}.values())
    assert len(unique) == images
    # Every element the service yields is one of them (decoded on the worker, equal to float rounding), and
    # every one of them comes through the service.
    assert len(remote) == 2 * images
    worst, used = _matched(remote, unique)
    assert worst < 1e-4, f"largest difference between paired elements: {worst}"
    assert used == set(range(images))


def test_unreachable_or_malformed_service_is_a_clear_error(smoke_dataset, tmp_path):
    (port,) = free_ports(1)
    with pytest.raises(XrayscatterError, match=f"resnet.data_service.*no tf.data service dispatcher.*127.0.0.1:{port}"):
        distribute(tf.data.Dataset.range(3), f"127.0.0.1:{port}", connect_timeout=1)
    bad = replace(smoke_dataset, "resnet", data_service="127.0.0.1")
    with pytest.raises(XrayscatterError, match="resnet.data_service.*host:port"):
        make_dataset(bad, "train", training=True)
    make_dataset(bad, "val", training=False)  # evaluation stays local: the key is not used
    with pytest.raises(XrayscatterError, match=r"x\.toml.*resnet\.data_service"):
        config_from_dict({"resnet": {"data_service": "grpc://host:port"}}, "x.toml")
    assert config_from_dict({"resnet": {"data_service": "grpc://host:5050"}}).resnet.data_service


def test_two_training_steps_read_through_the_service(smoke_dataset, service):
    # The pieces of train("resnet") that touch the input (strategy, the task's inputs, the compiled
    # classifier, fit); the whole function (validation, export) would take 35 s more here.
    from xrayscatter.distribute.strategy import make_strategy
    from xrayscatter.resnet.task import ResNetTask
    from xrayscatter.train import build_training_model

    config = replace(smoke_dataset, "resnet", data_service=service.address)
    strategy = make_strategy()
    task = ResNetTask(config)
    classifier, _ = build_training_model(task, strategy, total_steps=2, compile_for_fit=True)
    journal = _journal_bytes(service.work_dir)
    history = classifier.fit(strategy.distribute_datasets_from_function(task.build_inputs), epochs=1,
                             steps_per_epoch=2, shuffle=False, verbose=0)
    assert _journal_bytes(service.work_dir) > journal
    assert math.isfinite(history.history["loss"][-1])


def test_addresses_are_host_and_port():
    assert parse_address("grpc://dispatcher-host:5050") == ("dispatcher-host", 5050)
    assert parse_address("[::1]:5050") == ("[::1]", 5050)
    for bad in ("host", "host:0", "host:70000", "http://host:1"):
        with pytest.raises(XrayscatterError, match="host:port"):
            parse_address(bad)
    assert worker_hostname("10.0.0.7") == "10.0.0.7"
    with pytest.raises(XrayscatterError, match="--worker-address"):
        worker_hostname("host:5051")
