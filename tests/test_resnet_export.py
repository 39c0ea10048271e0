"""ResNet SavedModel: signatures on raw counts, 15-crop by hand, metadata inside, plain TF and saved_model_cli;
for the paper's network (one channel, attributes) and the default one (three channels, beam-centre head,
beam-region branch), whose ``beam_centre`` signature maps the network's estimate back to the input's pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import export_tiny_resnet, tiny_resnet, tiny_resnet_config
from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.resnet.centre import with_symmetry_centre
from xrayscatter.normalization import (channels_from_parts, model_input, normalize_counts, pad_to_square, resized_parts,
                                       square_log_and_valid, to_model_input)
from xrayscatter.resnet.features import fifteen_crop_scales
from xrayscatter.saved_model import METADATA_FILE

SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")
INPUT_SIZE = 32
SIGNATURES = {"serving_default": "probabilities", "features_15crop": "features", "features": "features"}
BEAM_SIGNATURES = {**SIGNATURES, "beam_centre": "beam_centre"}


@pytest.fixture(scope="module", params=["paper", "beam"])
def exported(request, tmp_path_factory):
    """(kind, config, SavedModel folder, network, feature extractor) of a tiny ResNet with non-trivial batch-norm
    statistics: the paper's network, or the default one with the beam-centre head, the beam-region branch and the
    beam centre refined by radial symmetry."""
    # the beam network as the default exports it: the beam centre refined by radial symmetry (resnet/centre.py)
    config = tiny_resnet_config(paper=request.param == "paper", symmetry_centre=request.param == "beam")
    # As if trained: the export must carry the moving statistics.
    path = export_tiny_resnet(tmp_path_factory.mktemp("saved_models") / "resnet", config, {"note": "test"},
                              trained_statistics=True, seed=3)
    network, features = tiny_resnet(config, seed=3, trained_statistics=True)  # the same weights
    return request.param, config, path, network, features


def signatures_of(exported) -> dict:
    return BEAM_SIGNATURES if exported[0] == "beam" else SIGNATURES


@pytest.fixture(scope="module")
def counts():
    """Two raw detector frames, not square, with masked (negative, NaN) pixels."""
    rng = np.random.default_rng(5)
    images = rng.gamma(1.0, 300.0, size=(2, 41, 57)).astype(np.float32)
    images[:, :, 20:23] = -1.0  # a module gap
    images[0, 3, 4] = np.nan
    return images


def _padding_offset(counts: np.ndarray) -> np.ndarray:
    """(x, y) px that centring the image in its padded square adds, and the square's side."""
    height, width = counts.shape[1:]
    side = max(height, width)
    return np.array([(side - width) // 2, (side - height) // 2], np.float32), side


def expected_outputs(exported, counts) -> dict:
    """What each signature must return, computed directly with the Keras models."""
    kind, config, _, network, features = exported
    if kind == "paper":
        x = to_model_input(tf.constant(counts), INPUT_SIZE)  # the first models' input, channel for channel
        return {"serving_default": network(x, training=False).numpy(),
                "features": features(x, training=False).numpy(),
                "features_15crop": _fifteen_crop_by_hand(features, counts, ("log",))}
    channels = config.resnet.input_channels
    x = model_input(tf.constant(counts), INPUT_SIZE, channels)
    detail = model_input(tf.constant(counts), config.resnet.detail_size, channels)
    inputs = {"image": x, "detail": detail, "centre": tf.fill((len(counts), 2), np.nan)}
    out = with_symmetry_centre(network(inputs, training=False), inputs, channels)
    offset, side = _padding_offset(counts)
    return {"serving_default": out["attributes"].numpy(),
            "beam_centre": out["beam"].numpy() * side - offset,
            "features": features(x, training=False).numpy(),
            "features_15crop": _fifteen_crop_by_hand(features, counts, channels)}


@pytest.fixture(scope="module")
def expected(exported, counts) -> dict:
    return expected_outputs(exported, counts)


def _fifteen_crop_by_hand(backbone, counts, channels) -> np.ndarray:
    """15 separate forward passes of explicitly sliced crops of the channels made at each scale, averaged."""
    if channels == ("log",):  # the first models' resize, written out
        square = pad_to_square(normalize_counts(tf.constant(counts))[..., None])
        resize = lambda scale: tf.image.resize(square, (scale, scale), method="bilinear", antialias=True)  # noqa: E731
    else:  # the channels at each scale, the contrast stretched by the smallest scale's percentiles (nearest rank)
        log_square, valid_square = square_log_and_valid(tf.constant(counts))
        parts = {scale: resized_parts(log_square, valid_square, scale) for scale in fifteen_crop_scales(INPUT_SIZE)}
        smallest = parts[min(parts)]
        low, high = [], []
        for filled, valid in zip(smallest["filled"].numpy(), smallest["valid"].numpy()):
            values = np.sort(filled[valid > 0.5])
            low.append(values[int((values.size - 1) * 2.0 / 100)])
            high.append(values[int((values.size - 1) * 99.9 / 100)])
        stretch = (np.array(low, np.float32)[:, None, None, None], np.array(high, np.float32)[:, None, None, None])
        resize = lambda scale: channels_from_parts(parts[scale], channels, stretch)  # noqa: E731
    features = []
    for scale in fifteen_crop_scales(INPUT_SIZE):
        resized = resize(scale).numpy()
        far, mid = scale - INPUT_SIZE, (scale - INPUT_SIZE) // 2
        for top, left in ((mid, mid), (0, 0), (0, far), (far, 0), (far, far)):
            crop = resized[:, top:top + INPUT_SIZE, left:left + INPUT_SIZE, :]
            features.append(backbone(crop, training=False).numpy())
    assert len(features) == 15
    return np.mean(features, axis=0)


def test_signatures_on_raw_counts_equal_the_keras_models(exported, counts, expected):
    path = exported[2]
    assert fifteen_crop_scales(224) == (256, 384, 512) and fifteen_crop_scales(INPUT_SIZE) == (37, 55, 73)
    loaded = tf.saved_model.load(str(path))
    beam = exported[0] == "beam"
    # beam_centre and tag only with the head
    assert set(loaded.signatures) == set(signatures_of(exported)) | ({"tag"} if beam else set())
    for signature, output in signatures_of(exported).items():
        result = loaded.signatures[signature](images=tf.constant(counts))
        assert list(result) == [output]
        np.testing.assert_allclose(result[output].numpy(), expected[signature], rtol=1e-4, atol=1e-5,
                                   err_msg=signature)
    if beam:  # tag: both from one pass, as the two signatures give them
        result = loaded.signatures["tag"](images=tf.constant(counts))
        assert sorted(result) == ["beam_centre", "probabilities"]
        np.testing.assert_allclose(result["probabilities"].numpy(), expected["serving_default"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result["beam_centre"].numpy(), expected["beam_centre"], rtol=1e-4, atol=1e-4)
    assert expected["features_15crop"].shape == (2, 256)
    # The 15-crop mean is not just the plain feature.
    assert not np.allclose(expected["features_15crop"], expected["features"], atol=1e-4)


def test_beam_centre_is_in_pixels_of_the_input_image_whichever_side_is_longer(exported, counts):
    kind, _, path, network, _ = exported
    loaded = tf.saved_model.load(str(path))
    if kind == "paper":
        assert "beam_centre" not in loaded.signatures
        return
    for images in (counts, np.ascontiguousarray(counts.transpose(0, 2, 1))):  # wide (padded above), tall (left)
        offset, side = _padding_offset(images)
        assert offset.max() == 8 and offset.min() == 0
        served = loaded.signatures["beam_centre"](images=tf.constant(images))["beam_centre"].numpy()
        fraction = expected_outputs(exported, images)["beam_centre"]
        np.testing.assert_allclose(served, fraction, rtol=1e-4, atol=1e-3)
        # Back to fractions of the padded square: inside it (a soft-argmax over the heatmap).
        square = (served + offset) / side
        assert served.shape == (2, 2) and ((square > 0) & (square < 1)).all()


def test_metadata_travels_inside_the_saved_model(exported):
    kind, config, path, _, _ = exported
    metadata = json.loads((path / METADATA_FILE).read_text())
    assert metadata["attributes"] == list(ATTRIBUTES)
    assert metadata["input_size"] == INPUT_SIZE and metadata["feature_size"] == 256
    assert metadata["input_channels"] == (["log"] if kind == "paper" else ["filled", "contrast", "valid"])
    assert ("beam_centre" in metadata["signatures"]) == (kind == "beam")
    assert ("beam-region branch" in metadata["architecture"]) == (kind == "beam")
    assert "log1p" in metadata["normalization"] and metadata["note"] == "test"
    assert metadata["config"]["resnet"]["input_size"] == INPUT_SIZE
    assert metadata["config"]["resnet"]["input_channels"] == metadata["input_channels"]
    assert metadata["model"] == "resnet" and metadata["format_version"] == 1 and metadata["created"]
    assert {"xrayscatter", "tensorflow", "keras"} <= set(metadata["versions"])
    loaded = tf.saved_model.load(str(path))
    assert json.loads(loaded.metadata_json[0].numpy()) == metadata
    assert loaded.normalization[0].numpy().decode() == metadata["normalization"]
    assert [n.decode() for n in loaded.attribute_names[0].numpy()] == list(ATTRIBUTES)
    assert int(loaded.input_size[0].numpy()) == INPUT_SIZE


def test_plain_tensorflow_process_loads_and_calls_every_signature(exported, counts, expected, tmp_path):
    path = exported[2]
    signatures = signatures_of(exported)
    np.save(tmp_path / "images.npy", counts)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load({str(path)!r})
        images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))
        for name in {list(signatures)!r}:
            for key, value in model.signatures[name](images=images).items():
                np.save({str(tmp_path)!r} + f"/{{name}}.npy", value.numpy())
        assert not any(m.startswith("xrayscatter") for m in sys.modules), "xrayscatter was imported"
        print(len(model.attribute_names[0].numpy()))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "17"
    for signature in signatures:
        np.testing.assert_allclose(np.load(tmp_path / f"{signature}.npy"), expected[signature],
                                   rtol=1e-4, atol=1e-5, err_msg=signature)


def test_saved_model_cli_runs_every_signature_in_the_session_loader(exported, counts, expected, tmp_path):
    if exported[0] != "paper":
        pytest.skip("the session loader runs the default network's signatures in tests/test_serving.py")
    path = exported[2]
    np.save(tmp_path / "images.npy", counts)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = {signature: subprocess.Popen(
        [str(SAVED_MODEL_CLI), "run", "--dir", str(path), "--tag_set", "serve", "--signature_def", signature,
         "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / signature), "--overwrite"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for signature in SIGNATURES}
    for signature, process in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        result = np.load(tmp_path / signature / f"{SIGNATURES[signature]}.npy")
        np.testing.assert_allclose(result, expected[signature], rtol=1e-4, atol=1e-5, err_msg=signature)

    shown = subprocess.run([str(SAVED_MODEL_CLI), "show", "--all", "--dir", str(path)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    for signature, output in SIGNATURES.items():
        assert f"signature_def['{signature}']" in shown.stdout
    assert "outputs['probabilities']" in shown.stdout and "inputs['images']" in shown.stdout
    assert "shape: (-1, 17)" in shown.stdout and "shape: (-1, 256)" in shown.stdout

