"""TF Serving of the project's SavedModels: request bodies, gRPC requests, ``models.config``.

The SavedModels need no Python to serve (``saved_models/<model>/<integer version>/``,
inputs are raw detector counts, normalisation is in the graph), so this module only
builds what a client sends:

* :func:`rest_request_body` — the JSON body of ``POST /v1/models/<model>:predict`` for one
  detector file (``xrayscatter serve-request FILE | curl -d @- ...``);
* :func:`make_predict_request` — the same request as a ``tensorflow_serving.apis``
  ``PredictRequest`` proto for the gRPC ``PredictionService/Predict``;
* :func:`models_config_text` / :func:`write_models_config` — the ``--model_config_file``
  that serves every project model from one ``tensorflow/serving`` container.

Missing pixels (NaN after :func:`xrayscatter.readers.read_detector_image`) are sent as −1:
the model's in-graph normalisation treats every negative value as missing, exactly like
NaN, and −1 keeps the JSON strict (NaN is not JSON, though TF Serving would parse it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xrayscatter.errors import XrayscatterError
from xrayscatter.readers import read_detector_image

PROJECT_MODELS = ("resnet", "autoencoder", "attributes")
MISSING_VALUE = -1.0  # negative counts are missing for normalize_counts, like NaN
# Signatures whose input is a batch of patches rather than whole images (docs/CONTRACTS.md).
PATCH_SIGNATURES = ("encode", "reconstruct")
# Largest integer a float32 holds exactly; TF Serving rejects larger JSON integers for DT_FLOAT.
FLOAT32_EXACT_INT = 2**24 - 1


def input_name(signature_name: str) -> str:
    """The input tensor name of a project signature: ``patches`` for encode/reconstruct, else ``images``."""
    return "patches" if signature_name in PATCH_SIGNATURES else "images"


def request_counts(path: str | Path) -> np.ndarray:
    """A detector file → (1, H, W) float32 counts as sent to TF Serving (missing pixels −1).

    Raises:
        UnreadableImageError: the file cannot be read (message names it and the reason).
    """
    counts = read_detector_image(path)
    counts = np.where(np.isnan(counts), np.float32(MISSING_VALUE), counts)
    return counts[None].astype(np.float32)


def _json_numbers(batch: np.ndarray) -> list:
    """Nested lists of numbers that TF Serving converts back to exactly these float32 values.

    Whole counts (the usual case) are written as integers, which keeps the body small
    ("17" rather than "17.0"); anything else as the float32 value's exact decimal.
    """
    if np.all(batch == np.round(batch)) and np.abs(batch).max(initial=0) <= FLOAT32_EXACT_INT:
        return batch.astype(np.int64).tolist()
    return batch.astype(np.float64).tolist()


def rest_request_body(path: str | Path, signature_name: str = "serving_default") -> str:
    """The TF Serving REST ``:predict`` JSON body for one detector file.

    Columnar format with the input named: ``{"signature_name": ..., "inputs": {"images":
    [[[c00, c01, ...], ...]]}}`` — a batch of one (1, H, W) float32 raw counts.
    TF Serving answers ``{"outputs": [[p_0, ..., p_16]]}`` (a signature with one output)
    or ``{"outputs": {"name": ..., ...}}`` (several).

    Raises:
        UnreadableImageError: the file cannot be read.
    """
    batch = request_counts(path)
    body = {"signature_name": signature_name, "inputs": {input_name(signature_name): _json_numbers(batch)}}
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def make_predict_request(path_or_counts, model_name: str = "resnet", signature_name: str = "serving_default",
                         version: int | None = None):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` for the gRPC Predict call.

    Args:
        path_or_counts: a detector file, or counts as (H, W) or (B, H, W) float32
            (NaN or negative = missing).
        model_name: the name in ``models.config`` (``resnet``, ``autoencoder``, ``attributes``).
        signature_name: e.g. ``serving_default``, ``features``, ``features_15crop``.
        version: a model version number; None → the newest the server has loaded.

    Returns:
        The request; its input ``images`` (``patches`` for encode/reconstruct) is a DT_FLOAT
        tensor of shape (B, H, W).
    """
    from xrayscatter.tf_runtime import import_tensorflow

    tf = import_tensorflow()  # before tensorflow_serving, which imports TensorFlow noisily
    from tensorflow_serving.apis import predict_pb2

    if isinstance(path_or_counts, (str, Path)):
        batch = request_counts(path_or_counts)
    else:
        batch = np.asarray(path_or_counts, np.float32)
        if batch.ndim == 2:
            batch = batch[None]
        if batch.ndim != 3:
            raise ValueError(f"counts must be (H, W) or (B, H, W). Received: shape={batch.shape}")
        batch = np.where(np.isnan(batch), np.float32(MISSING_VALUE), batch)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[input_name(signature_name)].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.float32))
    return request


def models_config_text(model_names=PROJECT_MODELS, base_path: str = "/models") -> str:
    """A TF Serving ``--model_config_file`` (protobuf text format) serving each model by name.

    Each model ``name`` is read from ``<base_path>/<name>/<integer version>/``; TF Serving
    loads the newest version and picks up new ones as they appear.
    """
    entries = []
    for name in model_names:
        entries.append(
            "  config {\n"
            f"    name: \"{name}\"\n"
            f"    base_path: \"{base_path.rstrip('/')}/{name}\"\n"
            "    model_platform: \"tensorflow\"\n"
            "  }\n"
        )
    return "model_config_list {\n" + "".join(entries) + "}\n"


def served_models(saved_models_dir: str | Path = "saved_models") -> list[str]:
    """The project models present under ``saved_models_dir`` (with at least one integer version)."""
    from xrayscatter.saved_model import newest_version

    return [name for name in PROJECT_MODELS if newest_version(Path(saved_models_dir) / name) is not None]


def write_models_config(saved_models_dir: str | Path = "saved_models", output: str | Path | None = None,
                        base_path: str = "/models") -> Path:
    """Write ``models.config`` for the project models present in ``saved_models_dir`` (atomically).

    Args:
        saved_models_dir: the folder mounted into the container at ``base_path``.
        output: the file (default ``<saved_models_dir>/models.config``).
        base_path: where the container sees ``saved_models_dir``.

    Raises:
        XrayscatterError: no exported model in ``saved_models_dir``.
    """
    from xrayscatter.files import write_atomically

    names = served_models(saved_models_dir)
    if not names:
        raise XrayscatterError(f"{saved_models_dir}: no exported model (looked for "
                               f"{', '.join(PROJECT_MODELS)} with integer version folders)")
    output = Path(output) if output is not None else Path(saved_models_dir) / "models.config"
    return write_atomically(output, models_config_text(names, base_path))
