"""TF Serving readiness: the exported SavedModels as the session-based loader sees them, and client requests.

No model server binary is available here; ``saved_model_cli`` loads SavedModels with the
same TF1 session loader (``tf.compat.v1.saved_model.loader.load``) that TF Serving uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.python.tools import saved_model_cli
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.config import model_server_config_pb2

from detector_samples import pilatus_like, write_good_files
from helpers import shared_saved_models
from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.cli import main
from xrayscatter.predict import predict_directory
from xrayscatter.serving import (MISSING_VALUE, make_predict_request, models_config_text, request_counts,
                                 rest_request_body, write_models_config)

SAVED_MODEL_CLI = str(Path(sys.executable).parent / "saved_model_cli")
RESNET_FEATURES = 256  # 2048 · width 0.125
AE_CODE, AE_CELLS, PATCH = 8, 21, 32

# docs/CONTRACTS.md: signature → (input name, input shape, {output name: (dtype, shape)}); -1 = any.
DOCUMENTED = {
    "resnet": {
        "serving_default": ("images", (-1, -1, -1), {"probabilities": ("DT_FLOAT", (-1, len(ATTRIBUTES)))}),
        "features_15crop": ("images", (-1, -1, -1), {"features": ("DT_FLOAT", (-1, RESNET_FEATURES))}),
        "features": ("images", (-1, -1, -1), {"features": ("DT_FLOAT", (-1, RESNET_FEATURES))}),
        "beam_centre": ("images", (-1, -1, -1), {"beam_centre": ("DT_FLOAT", (-1, 2))}),  # the default network's head
        "tag": ("images", (-1, -1, -1), {"probabilities": ("DT_FLOAT", (-1, len(ATTRIBUTES))),
                                         "beam_centre": ("DT_FLOAT", (-1, 2))}),  # both from one pass
    },
    "attributes": {
        "serving_default": ("images", (-1, -1, -1), {"scores": ("DT_FLOAT", (-1, len(ATTRIBUTES))),
                                                     "decisions": ("DT_INT32", (-1, len(ATTRIBUTES)))}),
    },
    "autoencoder": {
        "features_spm": ("images", (-1, -1, -1), {"features": ("DT_FLOAT", (-1, AE_CELLS * AE_CODE))}),
        "serving_default": ("images", (-1, -1, -1), {"features": ("DT_FLOAT", (-1, AE_CELLS * AE_CODE))}),
        "encode": ("patches", (-1, PATCH, PATCH), {"assignments": ("DT_FLOAT", (-1, AE_CODE))}),
        "reconstruct": ("patches", (-1, PATCH, PATCH), {"reconstructions": ("DT_FLOAT", (-1, PATCH, PATCH))}),
    },
}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> Path:
    """A saved_models/ folder as the project writes it: resnet/1/, autoencoder/1/, attributes/1/."""
    return shared_saved_models(tmp_path_factory, ["resnet", "autoencoder", "attributes"])


def cli_command(*args: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([SAVED_MODEL_CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.fixture(scope="module")
def cli_runs(saved_models, tmp_path_factory) -> dict:
    """The ``saved_model_cli`` binary on every model, side by side (each process mostly imports TF).

    {model: {"show": parsed ``show --all``, "run": folder of ``run --signature_def serving_default``
    outputs, "input": the images fed}}.
    """
    work = tmp_path_factory.mktemp("saved_model_cli")
    images = sample_input("images", (-1, -1, -1))
    np.save(work / "images.npy", images)
    processes = {}
    for model in DOCUMENTED:
        version = str(saved_models / model / "1")
        processes[model, "show"] = cli_command("show", "--all", "--dir", version)
        processes[model, "run"] = cli_command("run", "--dir", version, "--tag_set", "serve",
                                              "--signature_def", "serving_default",
                                              "--inputs", f"images={work / 'images.npy'}",
                                              "--outdir", str(work / model), "--overwrite")
    results = {model: {"run": work / model, "input": images} for model in DOCUMENTED}
    for (model, kind), process in processes.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"saved_model_cli {kind} {model}: {err[-2000:]}"
        if kind == "show":
            results[model]["show"] = parse_signatures(out)
    return results


def parse_signatures(show_all: str) -> dict:
    """``saved_model_cli show --all`` text → {signature: {"inputs"/"outputs": {name: (dtype, shape)}, "method"}}."""
    signatures = {}
    blocks = re.split(r"^signature_def\['([^']+)'\]:\s*$", show_all, flags=re.M)
    for name, block in zip(blocks[1::2], blocks[2::2]):
        if name.startswith("__"):  # __saved_model_init_op: restores variables, not callable
            continue
        block = block.split("Concrete Functions:")[0]
        entry = {"inputs": {}, "outputs": {}, "method": re.search(r"Method name is: (\S+)", block).group(1)}
        for kind, key, dtype, shape in re.findall(
                r"(inputs|outputs)\['([^']+)'\] tensor_info:\s+dtype: (\w+)\s+shape: \(([^)]*)\)", block):
            entry[kind][key] = (dtype, tuple(int(d) for d in shape.replace(" ", "").split(",") if d))
        signatures[name] = entry
    return signatures


def sample_input(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A batch of two for an input: images (2, 48, 40) raw counts with NaN and −1 gaps, or patches."""
    if name == "patches":
        return np.stack([pilatus_like(PATCH, PATCH, seed=s) for s in (1, 2)]).astype(np.float32)
    images = np.stack([pilatus_like(48, 40, seed=s) for s in (1, 2)]).astype(np.float32)
    images[0, 0, :5] = np.nan
    return images


@pytest.mark.parametrize("model", sorted(DOCUMENTED))
def test_saved_model_cli_show_lists_the_documented_signatures(saved_models, cli_runs, model):
    version = saved_models / model / "1"
    signatures = cli_runs[model]["show"]
    for name, (input_name, input_shape, outputs) in DOCUMENTED[model].items():
        assert name in signatures, f"{model}: no signature {name} in {sorted(signatures)}"
        signature = signatures[name]
        assert signature["inputs"] == {input_name: ("DT_FLOAT", input_shape)}, (model, name)
        assert signature["outputs"] == outputs, (model, name)
        assert signature["method"] == "tensorflow/serving/predict"
    assert (version / "assets.extra" / "metadata.json").is_file()


@pytest.mark.parametrize("model", sorted(DOCUMENTED))
def test_saved_model_cli_run_runs_every_signature_like_tf_serving(saved_models, cli_runs, model, tmp_path):
    """The session-based loader runs each signature and gives the numbers of tf.saved_model.load.

    ``serving_default`` through the ``saved_model_cli run`` binary; the other signatures through
    ``run_saved_model_with_feed_dict``, the function that binary calls, in this process.
    """
    version = saved_models / model / "1"
    signatures = cli_runs[model]["show"]
    loaded = tf.saved_model.load(str(version))
    assert set(loaded.signatures) == set(signatures)
    for name, signature in signatures.items():
        ((input_name, (_dtype, shape)),) = signature["inputs"].items()
        if name == "serving_default":
            batch, outdir = cli_runs[model]["input"], cli_runs[model]["run"]
        else:
            batch, outdir = sample_input(input_name, shape), tmp_path / name
            saved_model_cli.run_saved_model_with_feed_dict(str(version), "serve", name, {input_name: batch},
                                                           str(outdir), overwrite_flag=True)
        expected = loaded.signatures[name](**{input_name: tf.constant(batch)})
        for output_name, (_dtype, output_shape) in signature["outputs"].items():
            served = np.load(outdir / f"{output_name}.npy")
            assert served.shape[0] == 2 and served.shape[1:] == output_shape[1:], (name, output_name)
            assert np.isfinite(served).all(), (name, output_name)
            np.testing.assert_allclose(served, expected[output_name].numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{model} {name} {output_name}")


def test_predict_request_carries_the_documented_input(tmp_path):
    folder = tmp_path / "images"
    expected = write_good_files(folder)
    request = make_predict_request(folder / "pilatus_0001.tif", model_name="resnet", version=3)

    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # what goes over gRPC
    assert request.model_spec.name == "resnet"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 3
    assert list(request.inputs) == ["images"]
    tensor = request.inputs["images"]
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [1, 40, 52]
    sent = tf.make_ndarray(tensor)
    counts = expected["pilatus_0001.tif"]
    np.testing.assert_array_equal(sent[0], np.where(np.isnan(counts), MISSING_VALUE, counts))

    patches = make_predict_request(np.ones((4, PATCH, PATCH)), model_name="autoencoder", signature_name="encode")
    assert list(patches.inputs) == ["patches"]
    assert [d.size for d in patches.inputs["patches"].tensor_shape.dim] == [4, PATCH, PATCH]


def test_rest_body_from_serve_request_gives_the_numbers_of_predict(tmp_path, saved_models, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    folder = tmp_path / "images"
    write_good_files(folder)
    model_dir = saved_models / "resnet" / "1"
    output = tmp_path / "tags.jsonl"
    assert predict_directory(folder, model=model_dir, output=output, quiet=True) == []
    predicted = {r["file"]: r for r in map(json.loads, output.read_text().splitlines())}
    serving_default = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    for name in ("pilatus_0001.tif", "esrf_0001.edf", "processed.npy"):  # int, float, NaN pixels
        with pytest.raises(SystemExit) as exit_info:
            main(["serve-request", str(folder / name)])
        assert exit_info.value.code == 0
        body = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
        assert body["signature_name"] == "serving_default" and list(body["inputs"]) == ["images"]
        images = np.array(body["inputs"]["images"], np.float32)
        np.testing.assert_array_equal(images, request_counts(folder / name))
        served = serving_default(images=tf.constant(images))["probabilities"].numpy()[0]
        from_predict = np.array([predicted[str(folder / name)]["probabilities"][a] for a in ATTRIBUTES])
        np.testing.assert_allclose(served, from_predict, rtol=1e-5, atol=1e-6, err_msg=name)


def test_rest_body_keeps_fractional_counts_exact(tmp_path):
    counts = np.random.default_rng(1).uniform(0, 5, (20, 24)).astype(np.float32)
    np.save(tmp_path / "f.npy", counts)
    body = json.loads(rest_request_body(tmp_path / "f.npy", signature_name="features"))
    assert body["signature_name"] == "features"
    np.testing.assert_array_equal(np.array(body["inputs"]["images"], np.float32)[0], counts)


def test_models_config_is_a_valid_model_server_config_for_every_model(saved_models, tmp_path):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(models_config_text(), config)
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ("resnet", "/models/resnet", "tensorflow"),
        ("autoencoder", "/models/autoencoder", "tensorflow"),
        ("attributes", "/models/attributes", "tensorflow"),
    ]
    written = write_models_config(saved_models, tmp_path / "models.config")
    config = text_format.Parse(written.read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in config.model_config_list.config] == ["resnet", "autoencoder", "attributes"]


def _project_folder(saved_models: Path, root: Path, comparison: dict | None) -> Path:
    """A project folder holding a copy of ``saved_models/`` (resnet/1, autoencoder/1, attributes/1), the attribute
    model's metadata given a held-out comparison against the ResNet as ``evaluate`` stores it (None: none)."""
    import shutil

    project = root / "project"
    shutil.copytree(saved_models, project / "saved_models", symlinks=True)
    metadata_file = project / "saved_models" / "attributes" / "1" / "assets.extra" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata.pop("holdout_comparison", None)
    if comparison is not None:
        metadata["holdout_comparison"] = comparison
    metadata_file.write_text(json.dumps(metadata))
    return project


def _predict_without_model(project: Path, images: Path, output: Path, capsys, monkeypatch) -> str:
    """``xrayscatter predict IMAGES --output OUTPUT`` in the project folder; what it says on stderr."""
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(images), "--output", str(output)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, out + err
    return " ".join(err.split())


def test_predict_uses_the_attribute_model_by_default_when_it_scored_higher_and_its_own_decisions(
        saved_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    write_good_files(tmp_path / "images")
    project = _project_folder(saved_models, tmp_path, {
        "attributes_model_mAP": 0.7, "resnet_mAP": 0.6, "resnet_saved_model": "saved_models/resnet/1",
        "better": "attributes"})
    output = tmp_path / "tags.jsonl"

    said = _predict_without_model(project, tmp_path / "images", output, capsys, monkeypatch)

    assert "model saved_models/attributes/1: attribute model: held-out mAP 70.0 % vs the ResNet's 60.0 %" in said
    tagger = tf.saved_model.load(str(saved_models / "attributes" / "1")).signatures["serving_default"]
    for record in map(json.loads, output.read_text().splitlines()):
        assert set(record) == {"file", "frame", "error", "tags", "scores", "decisions"}  # no beam centre: SVMs only
        counts = request_counts(record["file"])
        served = tagger(images=tf.constant(counts))
        np.testing.assert_allclose([record["scores"][a] for a in ATTRIBUTES], served["scores"].numpy()[0],
                                   rtol=1e-4, atol=1e-4)
        assert [record["decisions"][a] for a in ATTRIBUTES] == served["decisions"].numpy()[0].tolist()


@pytest.mark.parametrize("comparison", [None, {"attributes_model_mAP": 0.5, "resnet_mAP": 0.6,
                                               "resnet_saved_model": "saved_models/resnet/1", "better": "resnet"}])
def test_predict_uses_the_resnet_by_default_otherwise_with_its_beam_centre(saved_models, tmp_path, capsys,
                                                                           monkeypatch, comparison):
    monkeypatch.setenv("COLUMNS", "250")
    write_good_files(tmp_path / "images")
    project = _project_folder(saved_models, tmp_path, comparison)
    output = tmp_path / "tags.jsonl"

    said = _predict_without_model(project, tmp_path / "images", output, capsys, monkeypatch)

    reason = ("ResNet: held-out mAP 60.0 % vs the attribute model's 50.0 %" if comparison else
              "ResNet (the attribute model has no held-out comparison with this ResNet)")
    assert f"model saved_models/resnet/1: {reason}" in said
    beam_centre = tf.saved_model.load(str(saved_models / "resnet" / "1")).signatures["beam_centre"]
    for record in map(json.loads, output.read_text().splitlines()):
        assert set(record) == {"file", "frame", "error", "tags", "probabilities", "decisions", "beam_centre"}
        counts = request_counts(record["file"])
        served = beam_centre(images=tf.constant(counts))["beam_centre"].numpy()[0]
        assert [record["beam_centre"]["x"], record["beam_centre"]["y"]] == pytest.approx(served.tolist(), abs=0.01)
