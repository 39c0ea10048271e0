"""The patch autoencoder's SavedModel: its signatures and metadata on the export base of ``saved_model.py``.

``saved_models/autoencoder/<version>/`` serves three signatures, all on raw detector counts
(normalisation is inside the graph; see docs/CONTRACTS.md):

=============  ================================  ===============================================
signature      input                             output
=============  ================================  ===============================================
features_spm   ``images`` (B, H, W) float32      ``features`` (B, cells · code) float32
encode         ``patches`` (B, P, P) float32     ``assignments`` (B, code) float32, rows sum to 1
reconstruct    ``patches`` (B, P, P) float32     ``reconstructions`` (B, P, P) float32, normalised
=============  ================================  ===============================================

``serving_default`` is an alias of ``features_spm`` (TF Serving needs one). Besides the shared constants
(``metadata_json``, ``normalization``) it carries ``spm_normalization`` and ``spm_layout_json`` (strings)
and ``patch_size``, ``code_size``, ``feature_dim`` (int32), each a one-element list:
``loaded.feature_dim[0].numpy()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from xrayscatter.autoencoder.model import encode_patches
from xrayscatter.autoencoder.spm import SPM_NORMALIZATION_DESCRIPTION, num_cells, spm_features, spm_layout
from xrayscatter.normalization import normalize_counts
from xrayscatter.saved_model import KerasExport


class AutoencoderExport(KerasExport):
    """The trained autoencoder: SPM features of whole images, codes and reconstructions of patches.

    Args:
        autoencoder: a plain model built outside any distribution strategy (training copies its weights
            into one), so the archive holds ordinary variables.
        config, output_dir, extra_metadata: see :class:`xrayscatter.saved_model.SavedModelExport`.
    """

    model = "autoencoder"

    def __init__(self, autoencoder: keras.Model, config, output_dir=None, extra_metadata: dict | None = None):
        super().__init__(config, output_dir, extra_metadata)
        self.autoencoder = autoencoder

    def model_metadata(self) -> dict:
        ae = self.config.autoencoder
        cells = num_cells(ae.spm_levels)
        patch = f"float32 (batch, {ae.patch_size}, {ae.patch_size})"
        return {
            "signatures": {
                "features_spm": {"inputs": {"images": "float32 (batch, height, width) raw detector counts"},
                                 "outputs": {"features": f"float32 (batch, {cells * ae.code_size})"}},
                "encode": {"inputs": {"patches": f"{patch} raw counts"},
                           "outputs": {"assignments": f"float32 (batch, {ae.code_size}), softmax, rows sum to 1"}},
                "reconstruct": {"inputs": {"patches": f"{patch} raw counts"},
                                "outputs": {"reconstructions": f"{patch}, normalised units"}},
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
            "image_preprocessing": "normalise, pad to square with 0 (centred), resize bilinear with antialias "
                                   "to each scale",
            "spm_normalization": SPM_NORMALIZATION_DESCRIPTION,
        }

    def constants(self, metadata: dict) -> dict:
        return {**super().constants(metadata), "spm_normalization": SPM_NORMALIZATION_DESCRIPTION,
                "spm_layout_json": json.dumps(metadata["spm_layout"]),
                **{name: int(metadata[name]) for name in ("patch_size", "code_size", "feature_dim")}}

    def tracked(self):
        return self.autoencoder

    def signatures(self) -> list:
        ae = self.config.autoencoder
        autoencoder = self.autoencoder
        encoder = autoencoder.get_layer("encoder")
        images = [tf.TensorSpec((None, None, None), tf.float32, name="images")]
        patches = [tf.TensorSpec((None, ae.patch_size, ae.patch_size), tf.float32, name="patches")]

        def features_spm(images):
            return {"features": spm_features(encoder, images, ae.scales, ae.spm_stride, ae.spm_levels)}

        def encode(patches):
            return {"assignments": encode_patches(encoder, normalize_counts(patches))}

        def reconstruct(patches):
            return {"reconstructions": autoencoder(normalize_counts(patches), training=False)}

        # The first endpoint also becomes serving_default.
        return [("features_spm", features_spm, images), ("encode", encode, patches),
                ("reconstruct", reconstruct, patches)]


def export_autoencoder(autoencoder: keras.Model, config, extra_metadata: dict | None = None,
                       output_dir: str | Path | None = None) -> Path:
    """Export to ``<output_dir or config.autoencoder.output_dir>/<next version>/``; returns that folder."""
    return AutoencoderExport(autoencoder, config, output_dir, extra_metadata).export()
