"""The ResNet's SavedModel: its signatures and metadata on the export base of ``saved_model.py``.

``saved_models/resnet/<version>/`` serves, each on raw detector counts ``images`` float32
(batch, height, width) of any size (normalisation, padding to a square and resizing are in the graph;
docs/CONTRACTS.md):

=================  =========================================================
serving_default    ``probabilities`` float32 (batch, 17)
features_15crop    ``features`` float32 (batch, 2048·w), the paper's 15-crop mean
features           ``features`` float32 (batch, 2048·w), image resized to the input
=================  =========================================================

Besides the shared constants (``metadata_json``, ``normalization``) it carries ``attribute_names``
((17,) strings) and ``input_size`` (int32), each a one-element list: ``loaded.attribute_names[0]``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.normalization import to_model_input
from xrayscatter.resnet.features import fifteen_crop_features, fifteen_crop_scales, plain_features
from xrayscatter.resnet.model import feature_size
from xrayscatter.saved_model import KerasExport

SIGNATURES = {
    "serving_default": "images float32 (batch, height, width) raw counts → probabilities float32 (batch, 17)",
    "features_15crop": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                       "mean over 15 crops (3 scales × 5 crops)",
    "features": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                "image resized to the input size",
}


class ResNetExport(KerasExport):
    """The classifier (probabilities) and its backbone (15-crop and plain features).

    Args:
        classifier: (B, S, S, 1) normalised → (B, 17) probabilities, built on ``backbone``; plain float32
            models built outside any distribution strategy (``ResNetTask.plain_copy``).
        backbone: (B, S, S, 1) normalised → (B, F) features.
        config, output_dir, extra_metadata: see :class:`xrayscatter.saved_model.SavedModelExport`.
    """

    model = "resnet"

    def __init__(self, classifier: keras.Model, backbone: keras.Model, config, output_dir=None,
                 extra_metadata: dict | None = None):
        super().__init__(config, output_dir, extra_metadata)
        self.classifier = classifier
        self.backbone = backbone
        self.input_size = config.resnet.input_size

    def model_metadata(self) -> dict:
        size = self.input_size
        return {
            "architecture": "ResNet-50 (keras.applications layout), 1 input channel, sigmoid head",
            "attributes": list(ATTRIBUTES),
            "input_size": size,
            "width_multiplier": self.config.resnet.width_multiplier,
            "feature_size": feature_size(self.config.resnet.width_multiplier),
            "preprocessing": "normalise, pad to a centred square with 0, bilinear antialiased resize",
            "fifteen_crop": {"scales": list(fifteen_crop_scales(size)), "crop": size,
                             "crops": "centre, top-left, top-right, bottom-left, bottom-right"},
            "signatures": SIGNATURES,
        }

    def constants(self, metadata: dict) -> dict:
        return {**super().constants(metadata), "attribute_names": list(metadata["attributes"]),
                "input_size": int(self.input_size)}

    def tracked(self):
        return self.classifier

    def signatures(self) -> list:
        classifier, backbone, size = self.classifier, self.backbone, self.input_size
        images = [tf.TensorSpec((None, None, None), tf.float32, name="images")]

        def serving_default(images):
            return {"probabilities": classifier(to_model_input(images, size), training=False)}

        def features_15crop(images):
            return {"features": fifteen_crop_features(backbone, images, size)}

        def features(images):
            return {"features": plain_features(backbone, images, size)}

        return [("serving_default", serving_default, images), ("features_15crop", features_15crop, images),
                ("features", features, images)]


def export_resnet(classifier: keras.Model, backbone: keras.Model, config, extra_metadata: dict | None = None,
                  output_dir: str | Path | None = None) -> Path:
    """Export a trained ResNet to ``<output_dir or config.resnet.output_dir>/<next version>/``; returns that folder."""
    return ResNetExport(classifier, backbone, config, output_dir, extra_metadata).export()
