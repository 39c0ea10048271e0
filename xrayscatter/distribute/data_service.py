"""Optional tf.data service: the training input pipeline decoded and augmented on other CPU hosts.

When the GPUs of a training host outrun its CPUs (PNG decoding, resizing and augmentation
of large detector images), ``tf.data.experimental.service`` moves that work to CPU-only
hosts::

    dispatcher (one, any host)  ◄── registers ──  workers (CPU hosts; run the pipeline)
          ▲                                           │ batches over gRPC
          └──── training process: registers its pipeline, reads batches ◄┘

Everything here is a thin layer over TensorFlow's own servers and ``distribute``
transformation (no home-made service): :func:`start_dispatcher`, :func:`start_worker`
(what ``xrayscatter data-service dispatcher|worker`` run) and :func:`distribute`, which
``resnet.data.make_dataset`` applies to the training pipeline when ``resnet.data_service``
names a dispatcher. The workers read the shard files themselves: the data set folder
must be visible at the same path on every worker host.

Addresses are read by ``config.parse_address`` (pipeline files are validated with it).
"""

from __future__ import annotations

import re
import socket
import time

from xrayscatter.config import DATA_SERVICE_KEY as CONFIG_KEY
from xrayscatter.config import parse_address
from xrayscatter.errors import XrayscatterError

# How long :func:`distribute` waits for the dispatcher's port before giving up. TensorFlow
# itself retries forever, and its retry messages are hidden by TF_CPP_MIN_LOG_LEVEL=2, so
# a mistyped address would look like a silent hang; the wait still allows starting the
# dispatcher and the training job at the same time.
CONNECT_TIMEOUT_S = 60.0

_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*)$")


def start_dispatcher(port: int, work_dir: str | None = None):
    """Start a tf.data service dispatcher listening on ``port`` of every interface (0: any free port).

    Args:
        port: TCP port.
        work_dir: folder for the dispatcher's journal (fault-tolerant mode): registered datasets
            and jobs are written there before each reply, so a restarted dispatcher with the
            same folder carries on. None: state in memory only.

    Returns:
        the started ``tf.data.experimental.service.DispatchServer`` (``.join()`` blocks, ``.target``
        is ``grpc://localhost:<port>``).
    """
    import tensorflow as tf

    _check_port(port, "--port")
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=str(work_dir) if work_dir else None, fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, worker_address: str | None = None):
    """Start a tf.data service worker that registers with ``dispatcher`` and runs the pipelines it is given.

    Args:
        dispatcher: the dispatcher's ``host:port`` or ``grpc://host:port``.
        port: TCP port the worker listens on (0: any free port).
        worker_address: host name (or IP) under which training processes reach this worker; the
            worker registers ``<worker_address>:<port>`` with the dispatcher. Default: this
            machine's host name (TensorFlow's own default, ``localhost``, only works on one host).

    Returns:
        the started ``tf.data.experimental.service.WorkerServer`` (``.join()`` blocks).
    """
    import tensorflow as tf

    host, dispatcher_port = parse_address(dispatcher, "--dispatcher")
    _check_port(port, "--port")
    worker_host = worker_hostname(worker_address)
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{host}:{dispatcher_port}", port=port,
        worker_address=f"{worker_host}:%port%")  # TensorFlow puts the bound port in place of %port%
    return tf.data.experimental.service.WorkerServer(config)


def worker_hostname(worker_address: str | None = None) -> str:
    """The host part a worker registers: ``worker_address`` checked, or this machine's host name.

    Raises:
        XrayscatterError: not a host name or IP address (e.g. it has a port).
    """
    host = socket.gethostname() if worker_address is None else worker_address.strip()
    if not _HOST.match(host):
        raise XrayscatterError(f"--worker-address must be a host name or IP address (no port), got {worker_address!r}")
    return host


def distribute(dataset, address: str, connect_timeout: float = CONNECT_TIMEOUT_S):
    """``dataset`` run by the tf.data service workers of the dispatcher at ``address``; read over gRPC.

    Every transformation of ``dataset`` runs on the workers, so it must be serialisable
    (graph ops only, no ``py_function``); the workers open the files it reads themselves.

    Raises:
        XrayscatterError: malformed address, or nothing listens there within ``connect_timeout`` s.
    """
    import tensorflow as tf

    host, port = parse_address(address)
    _wait_for(host.strip("[]"), port, connect_timeout)
    # ShardingPolicy.OFF ("parallel epochs"): every service worker runs the whole dataset it is
    # given. That dataset is already this training worker's share (make_dataset shards the files
    # per input pipeline before it gets here), shuffled and repeated forever, so one service
    # worker streams what the local pipeline would; with several, the trainer gets several
    # independently shuffled streams of its share interleaved (the known trade of parallel
    # epochs: an image can come twice before another comes once); workers can join or restart
    # at any time. DYNAMIC would split the data again between service workers through the
    # dispatcher (a second sharding on top of the per-training-worker one); the static policies
    # need a fixed worker list in the dispatcher's config and trainers on the workers' hosts.
    # No job_name: every iterator gets its own job, so training workers (whose shares differ)
    # never read from one job.
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.OFF, service=f"grpc://{host}:{port}"))


def _check_port(port: int, name: str) -> None:
    if not 0 <= port <= 65535:
        raise XrayscatterError(f"{name} must be a TCP port in 0–65535, got {port}")


def _wait_for(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; XrayscatterError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, timeout))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise XrayscatterError(
                    f"key '{CONFIG_KEY}': no tf.data service dispatcher answers at {host}:{port} "
                    f"({e.strerror or e}; waited {timeout:.0f} s); start one with "
                    f"'xrayscatter data-service dispatcher --port {port}'") from None
            time.sleep(0.5)
