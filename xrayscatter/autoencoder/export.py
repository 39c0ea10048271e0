"""Export the patch autoencoder as a self-contained SavedModel.

``saved_models/autoencoder/<version>/`` serves three signatures, all on raw detector counts
(normalisation is inside the graph; see docs/CONTRACTS.md):

=============  ================================  ===============================================
signature      input                             output
=============  ================================  ===============================================
features_spm   ``images`` (B, H, W) float32      ``features`` (B, cells · code) float32
encode         ``patches`` (B, P, P) float32     ``assignments`` (B, code) float32, rows sum to 1
reconstruct    ``patches`` (B, P, P) float32     ``reconstructions`` (B, P, P) float32, normalised
=============  ================================  ===============================================

``serving_default`` is an alias of ``features_spm`` (TF Serving needs one).

What a user needs to interpret the outputs travels inside: ``assets.extra/metadata.json``
and, readable after ``tf.saved_model.load`` without this package, the string variables
``metadata_json``, ``normalization``, ``spm_normalization`` and ``spm_layout_json`` and the
int32 ``patch_size``, ``code_size``, ``feature_dim`` (each a one-element list, as in
``xrayscatter.export``: ``loaded.metadata_json[0].numpy().decode()``).

The archive is written with ``keras.export.ExportArchive``, whose SavedModels also run
under the session-based loader of ``saved_model_cli run`` and TF Serving (Keras 3 models
passed straight to ``tf.saved_model.save`` do not, keras#20095).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import keras
import tensorflow as tf

import xrayscatter
from xrayscatter.export import publish_saved_model
from xrayscatter.models.autoencoder import encode_patches
from xrayscatter.normalization import NORMALIZATION_DESCRIPTION, normalize_counts
from xrayscatter.spm import SPM_NORMALIZATION_DESCRIPTION, num_cells, spm_features, spm_layout

METADATA_FORMAT_VERSION = 1


def autoencoder_metadata(config, extra: dict | None = None) -> dict:
    """Everything needed to use the exported model without the pipeline file."""
    ae = config.autoencoder
    cells = num_cells(ae.spm_levels)
    meta = {
        "format_version": METADATA_FORMAT_VERSION,
        "model": "autoencoder",
        "pipeline": config.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": {
            "features_spm": {"inputs": {"images": "float32 (batch, height, width) raw detector counts"},
                             "outputs": {"features": f"float32 (batch, {cells * ae.code_size})"}},
            "encode": {"inputs": {"patches": f"float32 (batch, {ae.patch_size}, {ae.patch_size}) raw counts"},
                       "outputs": {"assignments": f"float32 (batch, {ae.code_size}), softmax, rows sum to 1"}},
            "reconstruct": {"inputs": {"patches": f"float32 (batch, {ae.patch_size}, {ae.patch_size}) raw counts"},
                            "outputs": {"reconstructions": f"float32 (batch, {ae.patch_size}, {ae.patch_size}), "
                                                           "normalised units"}},
        },
        "patch_size": ae.patch_size,
        "code_size": ae.code_size,
        "scales": list(ae.scales),
        "spm_stride": ae.spm_stride,
        "spm_levels": list(ae.spm_levels),
        "spm_cells": cells,
        "feature_dim": cells * ae.code_size,
        "spm_layout": spm_layout(ae.spm_levels, ae.code_size),
        "spm_feature_index": "cell * code_size + cluster; cells level by level, row-major within a level",
        "normalization": NORMALIZATION_DESCRIPTION,
        "image_preprocessing": "normalise, pad to square with 0 (centred), resize bilinear with antialias "
                               "to each scale",
        "spm_normalization": SPM_NORMALIZATION_DESCRIPTION,
        "config": config.to_dict(),
        "versions": {"xrayscatter": xrayscatter.__version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__},
    }
    meta.update(extra or {})
    return meta


def build_export_archive(autoencoder: keras.Model, config, metadata: dict) -> keras.export.ExportArchive:
    """The three signatures of the contract, on raw counts, plus the metadata strings."""
    ae = config.autoencoder
    encoder = autoencoder.get_layer("encoder")
    patch_spec = tf.TensorSpec((None, ae.patch_size, ae.patch_size), tf.float32, name="patches")

    def features_spm(images):
        return {"features": spm_features(encoder, images, ae.scales, ae.spm_stride, ae.spm_levels)}

    def encode(patches):
        return {"assignments": encode_patches(encoder, normalize_counts(patches))}

    def reconstruct(patches):
        return {"reconstructions": autoencoder(normalize_counts(patches), training=False)}

    archive = keras.export.ExportArchive()
    archive.track(autoencoder)
    # The first endpoint also becomes serving_default.
    archive.add_endpoint("features_spm", features_spm,
                         input_signature=[tf.TensorSpec((None, None, None), tf.float32, name="images")])
    archive.add_endpoint("encode", encode, input_signature=[patch_spec])
    archive.add_endpoint("reconstruct", reconstruct, input_signature=[patch_spec])
    strings = {
        "metadata_json": json.dumps(metadata, sort_keys=True),
        "normalization": NORMALIZATION_DESCRIPTION,
        "spm_normalization": SPM_NORMALIZATION_DESCRIPTION,
        "spm_layout_json": json.dumps(metadata["spm_layout"]),
    }
    for name, text in strings.items():
        archive.add_variable_collection(name, [tf.Variable(text, trainable=False, name=name)])
    for name in ("patch_size", "code_size", "feature_dim"):
        archive.add_variable_collection(
            name, [tf.Variable(metadata[name], trainable=False, dtype=tf.int32, name=name)])
    return archive


def export_autoencoder(autoencoder: keras.Model, config, extra_metadata: dict | None = None,
                       output_dir: str | Path | None = None) -> Path:
    """Export to ``<output_dir or config.autoencoder.output_dir>/<next version>/``; returns that folder.

    ``autoencoder`` must be a plain model built outside any distribution strategy (training
    copies its weights into one), so the archive holds ordinary variables.
    """
    metadata = autoencoder_metadata(config, extra_metadata)
    archive = build_export_archive(autoencoder, config, metadata)
    return publish_saved_model(lambda path: archive.write_out(str(path), verbose=False),
                               output_dir or config.autoencoder.output_dir, metadata)
