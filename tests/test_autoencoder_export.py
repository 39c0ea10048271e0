"""The autoencoder SavedModel: contract signatures on raw counts, served without xrayscatter."""

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

from helpers import detector_counts, export_tiny_autoencoder, slow_reference_spm, tiny_autoencoder_config
from xrayscatter.normalization import normalize_counts

SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")
CODE = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained autoencoder with peaked code logits, exported twice (versions 1 and 2)."""
    config = tiny_autoencoder_config(code_size=CODE, scales=(64, 96), spm_stride=16, spm_levels=(1, 2, 4))
    root = tmp_path_factory.mktemp("saved_models") / "autoencoder"
    first, _ = export_tiny_autoencoder(root, config, seed=3, peaked=True)
    second, model = export_tiny_autoencoder(root, config, seed=3, peaked=True)
    return {"config": config, "model": model, "root": root, "path": second, "first": first}


def _patches(n: int = 5) -> np.ndarray:
    counts = detector_counts(1, 32 * n, 32)[0]  # raw counts, with a −1 gap column and a NaN
    return counts.reshape(n, 32, 32).astype(np.float32)


def test_published_as_next_integer_version_without_temporaries(exported):
    assert exported["first"].name == "1" and exported["path"].name == "2"
    assert sorted(p.name for p in exported["root"].iterdir()) == ["1", "2"]
    meta = json.loads((exported["path"] / "assets.extra" / "metadata.json").read_text())
    assert meta["feature_dim"] == 21 * CODE and meta["scales"] == [64, 96]
    assert [level["cells_per_side"] for level in meta["spm_layout"]] == [1, 2, 4]
    assert "log1p" in meta["normalization"] and "each pyramid level therefore sums to 1" in meta["spm_normalization"]
    assert meta["model"] == "autoencoder" and meta["format_version"] == 1 and meta["pipeline"] == "smoke"
    assert {"xrayscatter", "tensorflow", "keras"} <= set(meta["versions"]) and meta["created"]


def test_features_spm_equals_slow_reference(exported):
    loaded = tf.saved_model.load(str(exported["path"]))
    counts = detector_counts(2, 70, 90, seed=5)
    served = loaded.signatures["features_spm"](images=tf.constant(counts))["features"].numpy()
    ae = exported["config"].autoencoder
    reference = slow_reference_spm(exported["model"].get_layer("encoder"), counts, ae.scales, ae.spm_stride,
                                   ae.spm_levels)
    assert served.shape == (2, 21 * CODE)
    np.testing.assert_allclose(served, reference, atol=2e-6)


def test_encode_and_reconstruct_take_raw_counts(exported):
    loaded = tf.saved_model.load(str(exported["path"]))
    patches = _patches()
    assignments = loaded.signatures["encode"](patches=tf.constant(patches))["assignments"].numpy()
    reconstructions = loaded.signatures["reconstruct"](patches=tf.constant(patches))["reconstructions"].numpy()
    normalised = normalize_counts(patches).numpy()
    encoder = exported["model"].get_layer("encoder")
    np.testing.assert_allclose(assignments, tf.nn.softmax(encoder(normalised[..., None])).numpy(), atol=1e-6)
    np.testing.assert_allclose(assignments.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reconstructions, exported["model"](normalised).numpy(), atol=1e-6)
    assert reconstructions.shape == (5, 32, 32)


@pytest.mark.parametrize("signature, input_key, output_key", [
    ("features_spm", "images", "features"),
    ("encode", "patches", "assignments"),
    ("reconstruct", "patches", "reconstructions"),
])
def test_signature_runs_under_saved_model_cli(exported, tmp_path, signature, input_key, output_key):
    """The session-based loader of TF Serving, through saved_model_cli run."""
    inputs = detector_counts(2, 64, 80, seed=9) if signature == "features_spm" else _patches(3)
    np.save(tmp_path / "inputs.npy", inputs)
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [str(SAVED_MODEL_CLI), "run", "--dir", str(exported["path"]), "--tag_set", "serve",
         "--signature_def", signature, "--inputs", f"{input_key}={tmp_path / 'inputs.npy'}",
         "--outdir", str(out_dir)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    from_cli = np.load(out_dir / f"{output_key}.npy")
    loaded = tf.saved_model.load(str(exported["path"]))
    from_python = loaded.signatures[signature](**{input_key: tf.constant(inputs)})[output_key].numpy()
    np.testing.assert_allclose(from_cli, from_python, atol=1e-6)


def test_loads_in_a_process_that_never_imports_xrayscatter(exported, tmp_path):
    counts = detector_counts(1, 64, 64, seed=11)
    np.save(tmp_path / "counts.npy", counts)
    expected = tf.saved_model.load(str(exported["path"])).signatures["features_spm"](
        images=tf.constant(counts))["features"].numpy()
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(exported["path"])!r})
        meta = json.loads(loaded.metadata_json[0].numpy().decode())
        assert meta["feature_dim"] == int(loaded.feature_dim[0].numpy()) == {21 * CODE}
        assert "log1p" in loaded.normalization[0].numpy().decode()
        assert len(json.loads(loaded.spm_layout_json[0].numpy().decode())) == 3
        assert set(loaded.signatures) >= {{"features_spm", "encode", "reconstruct", "serving_default"}}
        counts = np.load({str(tmp_path / "counts.npy")!r})
        features = loaded.signatures["features_spm"](images=tf.constant(counts))["features"].numpy()
        np.testing.assert_allclose(features, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
        assert not any(name.startswith("xrayscatter") for name in sys.modules), "xrayscatter was imported"
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                            cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
