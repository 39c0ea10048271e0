"""What several test modules need (not a test module): one place, like keras-hub's ``test_case.py``.

* configurations: :func:`redirect` (every output of a pipeline under a temporary folder),
  :func:`write_pipeline` (a PipelineConfig as the TOML file a user would write);
* the two ResNet configurations: :func:`paper_network` (one channel, attributes only) and the default
  (three channels, beam-centre head, beam-region branch), tiny: :func:`tiny_resnet_config`, :func:`tiny_resnet`;
* tiny SavedModels exported by the project's own export code: :func:`export_tiny_resnet`,
  :func:`export_tiny_autoencoder`, :func:`export_tiny_attributes` and :func:`shared_saved_models`
  (one saved_models/ folder per session);
* processes: :func:`python_script` (a Python snippet in a fresh process), :func:`start` / :func:`finish`
  (commands with their own environment, e.g. cluster workers), :func:`kill_when` (SIGKILL a process once a
  condition holds, within N seconds), :func:`free_ports` / :func:`free_port_pair`, :func:`tf_config_env` /
  :func:`slurm_env`, :func:`latest_backup_step`;
* a feature matrix with a linear signal for the SVM tests: :func:`svm_problem`;
* detector-like arrays and the explicit SPM reference: :func:`detector_counts`, :func:`peaked_encoder`,
  :func:`slow_reference_spm`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMOKE_PIPELINE = REPO / "pipelines" / "smoke.toml"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


# --------------------------------------------------------------------------- configurations
def smoke_pipeline():
    """The shipped smoke pipeline, as loaded from its file."""
    from xrayscatter.config import load_config

    return load_config(SMOKE_PIPELINE)


def redirect(config, root: str | Path, data: bool = False):
    """``config`` with every output (SavedModels, logs, reports, feature cache) under ``root``.

    Args:
        data: also the simulated data set (``<root>/tfrecords``).
    """
    root = Path(root)
    simulate = (dataclasses.replace(config.simulate, output_dir=str(root / "tfrecords")) if data
                else config.simulate)
    return dataclasses.replace(
        config,
        simulate=simulate,
        resnet=dataclasses.replace(config.resnet, output_dir=str(root / "saved_models" / "resnet"),
                                   log_dir=str(root / "logs" / "resnet")),
        autoencoder=dataclasses.replace(config.autoencoder, output_dir=str(root / "saved_models" / "autoencoder"),
                                        log_dir=str(root / "logs" / "autoencoder")),
        evaluate=dataclasses.replace(config.evaluate, report_dir=str(root / "reports"),
                                     cache_dir=str(root / "cache" / "features"),
                                     attributes_output_dir=str(root / "saved_models" / "attributes")),
    )


def copy_dataset(config, root: str | Path):
    """The data set of ``config`` copied under ``root``, and a config pointing there (to damage it safely)."""
    import shutil

    from xrayscatter.dataset import dataset_dir

    shutil.copytree(dataset_dir(config), Path(root) / config.simulate.dataset)
    return dataclasses.replace(config, simulate=dataclasses.replace(config.simulate, output_dir=str(root)))


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


def write_pipeline(config, path: str | Path) -> Path:
    """A PipelineConfig → pipeline TOML file (processes load it like a user's file)."""
    path = Path(path)
    table = config.to_dict()
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for section, values in table.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- tiny SavedModels
def paper_network(config):
    """``config`` with the paper's inputs and outputs: one input channel (log counts), attribute outputs only
    (no beam-centre head, no beam-region branch). The depth stays ``config``'s (the smoke pipeline's: one block
    per stage); the test that trains the paper's network sets ResNet-50's."""
    from xrayscatter.config import replace

    return replace(config, "resnet", input_channels=("log",), beam_centre_weight=0.0, detail_size=0)


def tiny_resnet_config(paper: bool = False, **changes):
    """The smoke pipeline at 32 px input, width 0.125: its network (three channels, beam-centre head and
    beam-region branch from 64 px at 32 px) or, ``paper=True``, :func:`paper_network`."""
    from xrayscatter.config import replace

    config = replace(smoke_pipeline(), "resnet", **{"input_size": 32, "width_multiplier": 0.125, **changes})
    return paper_network(config) if paper else config


def build_resnet(settings):
    """The network of a ``[resnet]`` section, as the training task builds it."""
    from xrayscatter.resnet.model import build_network

    head = settings.beam_centre_weight > 0
    return build_network(settings.input_size, settings.width_multiplier, len(settings.input_channels),
                         beam_head=head, detail_size=settings.detail_size if head else 0,
                         detail_crop=settings.detail_crop, detail_window=settings.detail_window,
                         profile_bins=settings.profile_bins if head else 0, blocks=settings.blocks)


def tiny_resnet(config=None, seed: int = 0, trained_statistics: bool = False):
    """(network, feature extractor) of an untrained narrow ResNet-50 of ``config`` (default
    :func:`tiny_resnet_config`); optionally with random batch-norm statistics (as if trained: an export
    must carry them)."""
    import keras

    from xrayscatter.resnet.model import batch_norm_layers, feature_extractor

    config = config or tiny_resnet_config()
    keras.utils.set_random_seed(seed)
    network = build_resnet(config.resnet)
    if trained_statistics:
        rng = np.random.default_rng(seed)
        for layer in batch_norm_layers(network):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return network, feature_extractor(network)


def export_tiny_resnet(output_dir: str | Path, config=None, extra_metadata: dict | None = None,
                       trained_statistics: bool = False, seed: int = 0) -> Path:
    """An untrained narrow ResNet-50 exported by ``resnet.export.export_resnet``.

    Args:
        config: its pipeline (default :func:`tiny_resnet_config`: with the beam-centre head).
    """
    from xrayscatter.resnet.export import export_resnet

    config = config or tiny_resnet_config()
    network, features = tiny_resnet(config, seed, trained_statistics)
    return export_resnet(network, features, config, extra_metadata, output_dir=output_dir)


def tiny_autoencoder_config(**changes):
    """The smoke pipeline with a tiny autoencoder (32 px patches, code 8, scale 64, unless changed)."""
    from xrayscatter.config import replace

    return replace(smoke_pipeline(), "autoencoder", **{"code_size": 8, "base_filters": 4, "scales": (64,), **changes})


def export_tiny_autoencoder(output_dir: str | Path, config=None, seed: int = 0, peaked: bool = False):
    """An untrained patch autoencoder exported by ``autoencoder.export.export_autoencoder``; returns (folder, model).

    Args:
        config: its pipeline (default :func:`tiny_autoencoder_config`).
        peaked: code logits × 40, far from uniform assignments (so pooling mistakes show).
    """
    import keras

    from xrayscatter.autoencoder.export import export_autoencoder
    from xrayscatter.autoencoder.model import build_autoencoder_from_config

    config = config or tiny_autoencoder_config()
    keras.utils.set_random_seed(seed)
    model = build_autoencoder_from_config(config.autoencoder)
    if peaked:
        head = model.get_layer("encoder").get_layer("code_logits")
        head.kernel.assign(head.kernel * 40.0)
    return export_autoencoder(model, config, output_dir=output_dir), model


def export_tiny_attributes(output_dir: Path, resnet_dir: Path, autoencoder_dir: Path) -> Path:
    """The attribute SavedModel on resnet (features_15crop) + autoencoder (features_spm) features.

    Linear SVM parameters are fixed numbers (any trained values take the same export path).
    """
    from xrayscatter.attributes import ATTRIBUTES
    from xrayscatter.evaluation.export_attributes import DeployableSVMs, export_attribute_model
    from xrayscatter.evaluation.features import FeatureMatrix

    blocks = (256, 168)  # 2048 · 0.125; 21 SPM cells · code 8
    dims, count = sum(blocks), len(ATTRIBUTES)
    rng = np.random.default_rng(3)
    svms = DeployableSVMs(mean=np.zeros(dims), scale=np.ones(dims), weights=rng.normal(size=(dims, count)),
                          bias=rng.normal(size=count), thresholds=np.zeros(count), c=np.ones(count),
                          trained=np.ones(count, bool), inner_ap=np.full(count, np.nan))
    sources = [{"model": "resnet", "path": str(resnet_dir), "signature": "features_15crop"},
               {"model": "autoencoder", "path": str(autoencoder_dir), "signature": "features_spm"}]
    matrix = FeatureMatrix("resnet+autoencoder", np.zeros((0, dims), np.float32), blocks, sources)
    return export_attribute_model(matrix, svms, ATTRIBUTES, smoke_pipeline(), {"source": "test"},
                                  output_dir=output_dir)


_SHARED_ROOTS: dict[str, Path] = {}


def shared_saved_models(tmp_path_factory, models=("resnet",)) -> Path:
    """One saved_models/ folder per test session, exporting each model the first time it is asked for.

    Exporting a ResNet traces three signatures of a 50-layer graph; test modules share them.
    """
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SHARED_ROOTS:
        _SHARED_ROOTS[key] = tmp_path_factory.mktemp("shared") / "saved_models"
    root = _SHARED_ROOTS[key]
    wanted = set(models) | ({"resnet", "autoencoder"} if "attributes" in models else set())
    for name in ("resnet", "autoencoder", "attributes"):
        if name not in wanted or (root / name / "1").is_dir():
            continue
        if name == "resnet":
            export_tiny_resnet(root / "resnet")
        elif name == "autoencoder":
            export_tiny_autoencoder(root / "autoencoder")
        else:
            export_tiny_attributes(root / "attributes", root / "resnet" / "1", root / "autoencoder" / "1")
    return root


# --------------------------------------------------------------------------- processes
def python_script(code: str, *args: str, cwd: str | Path | None = None, timeout: float = 600,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh process (TensorFlow devices are set before TF starts there)."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def last_json_line(stdout: str) -> dict:
    """The last line of a process's output, as JSON (what the snippets print)."""
    return json.loads(stdout.strip().splitlines()[-1])


def start(command: list[str], extra_env: dict, cwd: str | Path, stdout=subprocess.PIPE) -> subprocess.Popen:
    """A command in its own environment: no inherited cluster variables, no GPU, quiet TensorFlow, plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra_env)
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True)


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process; stdout of each (fails with the stderr of one that failed)."""
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (checked every ``poll`` s), and wait for it.

    Fails if the process ends by itself first or ``ready()`` does not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the process ended before the kill"
            assert time.monotonic() < deadline, f"not ready to kill within {timeout} s"
            time.sleep(poll)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)


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


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (Slurm tasks on one node use port_base + local rank)."""
    for _ in range(50):
        (port,) = free_ports(1)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def tf_config_env(index: int, ports: list[int]) -> dict:
    """``TF_CONFIG`` of worker ``index`` of a cluster of workers on 127.0.0.1 at ``ports``."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}


def slurm_env(rank: int, tasks: int, port: int) -> dict:
    """What ``srun --ntasks=<tasks>`` sets for task ``rank``, all tasks on this one node."""
    return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": str(tasks), "XRAYSCATTER_PORT": str(port)}


def latest_backup_step(backup: Path) -> int:
    """The global step of the newest checkpoint in a training backup folder (0 if none)."""
    text = (backup / "checkpoint").read_text() if (backup / "checkpoint").is_file() else ""
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.MULTILINE)
    return int(match.group(1)) if match else 0


# --------------------------------------------------------------------------- feature matrices
def svm_problem(num_images=120, dims=500, runs=6, seed=0):
    """Features with a linear signal, labels for 3 attributes, run codes."""
    rng = np.random.default_rng(seed)
    run = np.repeat(np.arange(runs), num_images // runs)
    latent = rng.standard_normal((num_images, 4))
    features = (latent @ rng.standard_normal((4, dims)) + rng.standard_normal((num_images, dims))).astype(np.float32)
    features *= rng.uniform(0.1, 10, dims).astype(np.float32)  # very different feature scales
    labels = np.column_stack([latent[:, 0] > 0.3, latent[:, 1] > 0.8, rng.random(num_images) < 0.3]).astype(float)
    return features, labels, run


# --------------------------------------------------------------------------- detector-like arrays
def detector_counts(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(B, H, W) float32 raw counts over four decades with a ring, a Pilatus-style gap (−1) and a NaN pixel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    out = []
    for _ in range(batch):
        r = np.hypot(yy - rng.uniform(0, height), xx - rng.uniform(0, width))
        image = 5e3 * np.exp(-r / 9) + 800 * np.exp(-((r - rng.uniform(15, 30)) / 2.5) ** 2)
        image = rng.poisson(image + 3).astype(np.float32)
        image[:, width // 3] = -1
        image[2, 3] = np.nan
        out.append(image)
    return np.stack(out)


def powder_counts(centres, shape=(64, 64), spacing: float = 11.0, seed: int = 0) -> np.ndarray:
    """(B, H, W) float32 Poisson counts of a powder pattern about each (x, y) px centre (pixel centres at index
    + 0.5): four sharp rings at FCC's first ratios of ``spacing`` px on a decaying background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    out = []
    for cx, cy in centres:
        r = np.hypot(x - cx, y - cy)
        intensity = 200.0 * np.exp(-r / 15.0) + 5.0
        for ratio in (1.0, np.sqrt(4 / 3), np.sqrt(8 / 3), np.sqrt(11 / 3)):
            intensity += 80.0 * np.exp(-0.5 * ((r - spacing * ratio) / 0.8) ** 2)
        out.append(rng.poisson(intensity).astype(np.float32))
    return np.stack(out)


def peaked_encoder(code_size: int = 16, base_filters: int = 4, seed: int = 0, patch_size: int = 32):
    """A random encoder whose code logits are large, so the softmax is far from uniform
    (a uniform assignment would make every pooling rule look right)."""
    import keras

    from xrayscatter.autoencoder.model import build_encoder

    keras.utils.set_random_seed(seed)
    encoder = build_encoder(patch_size, code_size, base_filters)
    head = encoder.get_layer("code_logits")
    head.kernel.assign(head.kernel * 40.0)
    return encoder


def slow_reference_spm(encoder, counts: np.ndarray, scales, stride: int, levels) -> np.ndarray:
    """The SPM feature by definition: a Python loop over every patch and every pyramid cell.

    Only the resize (``to_model_input``) and the per-patch encoder are shared with the library; grid
    positions, patch cutting, softmax, cell membership, sum pooling, normalisation and layout are
    written out here in numpy.
    """
    import tensorflow as tf

    from xrayscatter.normalization import to_model_input

    patch = encoder.input_shape[1]
    code_size = encoder.output_shape[-1]
    batch = counts.shape[0]
    features = np.zeros((batch, sum(n * n for n in levels), code_size), np.float64)
    total = 0
    for size in scales:
        image = to_model_input(tf.constant(counts), size).numpy()[..., 0]  # (B, s, s)
        for top in range(0, size - patch + 1, stride):
            for left in range(0, size - patch + 1, stride):
                window = image[:, top:top + patch, left:left + patch, None]
                logits = encoder(window).numpy().astype(np.float64)
                soft = np.exp(logits - logits.max(axis=1, keepdims=True))
                soft /= soft.sum(axis=1, keepdims=True)
                total += 1
                centre_y, centre_x = top + patch / 2, left + patch / 2
                first_cell = 0
                for cells in levels:
                    for row in range(cells):
                        for col in range(cells):
                            inside_y = row * size / cells <= centre_y < (row + 1) * size / cells
                            inside_x = col * size / cells <= centre_x < (col + 1) * size / cells
                            if inside_y and inside_x:
                                features[:, first_cell + row * cells + col] += soft
                    first_cell += cells * cells
    return (features / total).reshape(batch, -1)
