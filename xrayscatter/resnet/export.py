"""SavedModel export of the ResNet, and the shared "publish a new integer version" helper.

Layout (as TF Serving expects)::

    saved_models/resnet/<version>/        version = 1, 2, 3 … (newest = largest)
        saved_model.pb, variables/
        assets.extra/metadata.json        attributes, input size, normalisation, thresholds, config

Signatures (docs/CONTRACTS.md), each on raw detector counts ``images`` float32
(batch, height, width) of any size; normalisation, padding to a square and resizing
are in the graph:

=================  =========================================================
serving_default    ``probabilities`` float32 (batch, 17)
features_15crop    ``features`` float32 (batch, 2048·w), the paper's 15-crop mean
features           ``features`` float32 (batch, 2048·w), image resized to the input
=================  =========================================================

The model is written with ``keras.export.ExportArchive`` and explicitly named
inputs: a Keras 3 model saved with plain ``tf.saved_model.save`` loads in Python but
not in the session-based loader of TF Serving and ``saved_model_cli run``
("Could not find variable", keras#20095, tensorflow/serving#2250).
Non-batched metadata stays out of the signature outputs (TF Serving's row format
needs the batch dimension first); it travels as ``assets.extra/metadata.json`` and as
string variables readable after ``tf.saved_model.load``::

    loaded.metadata_json[0].numpy()      # the same JSON as assets.extra/metadata.json
    loaded.attribute_names[0].numpy()    # (17,) bytes
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from xrayscatter import __version__
from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.errors import XrayscatterError
from xrayscatter.features import fifteen_crop_features, fifteen_crop_scales, plain_features
from xrayscatter.normalization import NORMALIZATION_DESCRIPTION, to_model_input

METADATA_FILE = Path("assets.extra") / "metadata.json"

SIGNATURES = {
    "serving_default": "images float32 (batch, height, width) raw counts → probabilities float32 (batch, 17)",
    "features_15crop": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                       "mean over 15 crops (3 scales × 5 crops)",
    "features": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                "image resized to the input size",
}


# --------------------------------------------------------------------------- versions
def saved_model_versions(base_dir: str | Path) -> list[int]:
    """The integer version folders under ``base_dir``, ascending (empty if none)."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit())


def latest_saved_model(base_dir: str | Path) -> Path:
    """``base_dir/<largest version>``.

    Raises:
        XrayscatterError: there is no version folder.
    """
    versions = saved_model_versions(base_dir)
    if not versions:
        raise XrayscatterError(f"{base_dir}: no SavedModel version folder (train a model first)")
    return Path(base_dir) / str(versions[-1])


def publish_saved_model(write: Callable[[Path], None], base_dir: str | Path,
                        metadata: dict | None = None) -> Path:
    """Write a SavedModel to a temporary folder, add its metadata, rename it to ``base_dir/<next version>``.

    Args:
        write: ``write(path)`` writes the SavedModel into the not yet existing folder ``path``
            (e.g. ``lambda p: archive.write_out(str(p), verbose=False)``).
        base_dir: the model's folder, e.g. ``saved_models/resnet``.
        metadata: JSON-able dict written to ``<version>/assets.extra/metadata.json``
            (None: write nothing; ``write`` may have written it).

    Returns:
        The published folder ``base_dir/<version>``.

    A reader (TF Serving polls the folder) never sees a half-written version: the
    temporary folder's name is not an integer and the rename is atomic. Two exports at
    once cannot take the same number: a rename onto an existing version fails and the
    next number is tried.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    temporary = base_dir / f".tmp-export-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write(temporary)
        if metadata is not None:
            target = temporary / METADATA_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        for _attempt in range(100):
            versions = saved_model_versions(base_dir)
            final = base_dir / str((versions[-1] if versions else 0) + 1)
            try:
                os.rename(temporary, final)  # fails if `final` exists and is not empty
                return final
            except OSError:
                if not final.exists():
                    raise
        raise XrayscatterError(f"{base_dir}: could not find a free version number")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def read_metadata(model_dir: str | Path) -> dict:
    """``<model_dir>/assets.extra/metadata.json`` as a dict.

    Raises:
        XrayscatterError: the file is missing or not JSON.
    """
    path = Path(model_dir) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XrayscatterError(f"{path}: missing (not a SavedModel written by xrayscatter)") from None
    except json.JSONDecodeError as e:
        raise XrayscatterError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- ResNet
def resnet_metadata(config, extra: dict | None = None) -> dict:
    """What travels with a ResNet SavedModel: vocabulary, input, normalisation, configuration."""
    from xrayscatter.models.resnet import feature_size

    size = config.resnet.input_size
    metadata = {
        "model": "resnet",
        "architecture": "ResNet-50 (keras.applications layout), 1 input channel, sigmoid head",
        "attributes": list(ATTRIBUTES),
        "input_size": size,
        "width_multiplier": config.resnet.width_multiplier,
        "feature_size": feature_size(config.resnet.width_multiplier),
        "normalization": NORMALIZATION_DESCRIPTION,
        "preprocessing": "normalise, pad to a centred square with 0, bilinear antialiased resize",
        "fifteen_crop": {"scales": list(fifteen_crop_scales(size)), "crop": size,
                         "crops": "centre, top-left, top-right, bottom-left, bottom-right"},
        "signatures": SIGNATURES,
        "pipeline": config.name,
        "config": config.to_dict(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"xrayscatter": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    metadata.update(extra or {})
    return metadata


def build_resnet_archive(classifier: keras.Model, backbone: keras.Model, input_size: int,
                         metadata: dict) -> keras.export.ExportArchive:
    """An ExportArchive with the three signatures of docs/CONTRACTS.md and the metadata strings.

    Args:
        classifier: (B, S, S, 1) normalised → (B, 17) probabilities, built on ``backbone``.
        backbone: (B, S, S, 1) normalised → (B, F) features.
        input_size: S (px).
    """
    images = tf.TensorSpec((None, None, None), tf.float32, name="images")

    def serving_default(images):
        return {"probabilities": classifier(to_model_input(images, input_size), training=False)}

    def features_15crop(images):
        return {"features": fifteen_crop_features(backbone, images, input_size)}

    def features(images):
        return {"features": plain_features(backbone, images, input_size)}

    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint("serving_default", serving_default, input_signature=[images])
    archive.add_endpoint("features_15crop", features_15crop, input_signature=[images])
    archive.add_endpoint("features", features, input_signature=[images])
    strings = {
        "metadata_json": tf.constant(json.dumps(metadata, sort_keys=True)),
        "normalization": tf.constant(NORMALIZATION_DESCRIPTION),
        "attribute_names": tf.constant(metadata["attributes"]),
    }
    for name, value in strings.items():
        archive.add_variable_collection(name, [tf.Variable(value, trainable=False, name=name)])
    archive.add_variable_collection(
        "input_size", [tf.Variable(input_size, trainable=False, dtype=tf.int32, name="input_size")])
    return archive


def export_resnet(classifier: keras.Model, backbone: keras.Model, config,
                  extra_metadata: dict | None = None, output_dir: str | Path | None = None) -> Path:
    """Export a trained ResNet to ``<output_dir or config.resnet.output_dir>/<next version>/``.

    The models must be plain float32 models built outside any distribution strategy
    (training copies its weights into such a pair, see ``training.export_copy``).

    Returns:
        The published version folder.
    """
    metadata = resnet_metadata(config, extra_metadata)
    archive = build_resnet_archive(classifier, backbone, config.resnet.input_size, metadata)
    return publish_saved_model(lambda path: archive.write_out(str(path), verbose=False),
                               output_dir or config.resnet.output_dir, metadata)
