"""The ResNet's SavedModel: its signatures and metadata on the export base of ``saved_model.py``.

``saved_models/resnet/<version>/`` serves, each on raw detector counts ``images`` float32
(batch, height, width) of any size (normalisation, padding to a square and resizing are in the graph;
docs/CONTRACTS.md):

=================  =========================================================
serving_default    ``probabilities`` float32 (batch, 17)
features_15crop    ``features`` float32 (batch, 2048·w), the paper's 15-crop mean
features           ``features`` float32 (batch, 2048·w), image resized to the input
beam_centre        ``beam_centre`` float32 (batch, 2): (x, y) px of the input image, pixel
                   centres at index + 0.5 (models with the beam-centre head; meaningful
                   when the beam is on the image, see the Beam Off Image probability)
tag                ``probabilities`` and ``beam_centre`` from one forward pass (models with
                   the beam-centre head): what ``predict`` and ``watch`` call
one_view           what ``tag`` (or, without the head, ``serving_default``) gives, from the
                   frame as it is only (models exported with ``resnet.views`` > 1)
=================  =========================================================

The probabilities of ``serving_default`` and ``tag`` are averaged over ``resnet.views`` flipped and
turned views of each frame (``views.py``; metadata ``views``), all views in one batched forward pass
after the frame is resized; the beam centre is the median of the views' estimates mapped back to the
frame. The stored thresholds were chosen on the same averaged validation probabilities.

Besides the shared constants (``metadata_json``, ``normalization``) it carries ``attribute_names``
((17,) strings) and ``input_size`` (int32), each a one-element list: ``loaded.attribute_names[0]``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.resnet.centre import tagging_outputs
from xrayscatter.resnet.data import inputs_from_counts
from xrayscatter.resnet.features import fifteen_crop_features, fifteen_crop_scales, plain_features
from xrayscatter.resnet.model import attribute_probabilities, feature_size, layout_name
from xrayscatter.saved_model import KerasExport

SIGNATURES = {
    "serving_default": "images float32 (batch, height, width) raw counts → probabilities float32 (batch, 17)",
    "features_15crop": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                       "mean over 15 crops (3 scales × 5 crops)",
    "features": "images float32 (batch, height, width) raw counts → features float32 (batch, F), "
                "image resized to the input size",
    "beam_centre": "images float32 (batch, height, width) raw counts → beam_centre float32 (batch, 2): (x, y) px "
                   "of the image, pixel centres at index + 0.5 (meaningful when the beam is on the image: see the "
                   "Beam Off Image probability)",
    "tag": "images float32 (batch, height, width) raw counts → probabilities float32 (batch, 17) and beam_centre "
           "float32 (batch, 2) from one forward pass",
    "one_view": "what tag (without the beam-centre head: serving_default) gives, from the frame as it is, not "
                "averaged over views",
}


class ResNetExport(KerasExport):
    """The classifier (probabilities) and its backbone (15-crop and plain features).

    Args:
        classifier: (B, S, S, C) input channels → (B, 17) probabilities, or ``{"attributes", "beam"}`` with
            the beam-centre head, built on ``backbone``; plain float32 models built outside any
            distribution strategy (``ResNetTask.plain_copy``).
        backbone: (B, S, S, C) input channels → (B, F) features.
        config, output_dir, extra_metadata: see :class:`xrayscatter.saved_model.SavedModelExport`.
    """

    model = "resnet"

    def __init__(self, classifier: keras.Model, backbone: keras.Model, config, output_dir=None,
                 extra_metadata: dict | None = None):
        super().__init__(config, output_dir, extra_metadata)
        self.classifier = classifier
        self.backbone = backbone
        self.input_size = config.resnet.input_size
        self.settings = config.resnet
        self.channels = tuple(config.resnet.input_channels)
        self.beam_head = isinstance(classifier.output, dict)
        self.views = config.resnet.views
        self.symmetry_centre = self.beam_head and self.settings.symmetry_centre

    def model_metadata(self) -> dict:
        size = self.input_size
        heads = "sigmoid attribute head and beam-centre head" if self.beam_head else "sigmoid head"
        if self.beam_head and self.settings.detail_size:
            heads += (f", beam-region branch ({self.settings.detail_window:g} of the image around the estimated beam "
                      f"centre, from {self.settings.detail_size} px, at {self.settings.detail_crop} px)")
            if self.settings.profile_bins:
                heads += f", radial-profile branch ({self.settings.profile_bins} log-spaced rings about that centre)"
        if self.symmetry_centre:
            heads += "; the beam centre it gives refined by its input image's radial symmetry"
        return {
            "architecture": f"{layout_name(self.settings.blocks)} (keras.applications layout), "
                            f"{len(self.channels)} input channel(s), {heads}",
            "attributes": list(ATTRIBUTES),
            "input_size": size,
            "input_channels": list(self.channels),
            "width_multiplier": self.config.resnet.width_multiplier,
            "blocks": list(self.settings.blocks),
            "feature_size": feature_size(self.config.resnet.width_multiplier),
            "preprocessing": "normalise, pad to a centred square (missing), bilinear antialiased resize, input "
                             "channels (xrayscatter/normalization.py)",
            "fifteen_crop": {"scales": list(fifteen_crop_scales(size)), "crop": size,
                             "crops": "centre, top-left, top-right, bottom-left, bottom-right"},
            "views": self.views,
            "symmetry_centre": self.symmetry_centre,
            "signatures": {k: v for k, v in SIGNATURES.items() if k in self.signature_names()},
        }

    def signature_names(self) -> tuple[str, ...]:
        names = ("serving_default", "features_15crop", "features")
        names += ("beam_centre", "tag") if self.beam_head else ()
        return names + (("one_view",) if self.views > 1 else ())

    def constants(self, metadata: dict) -> dict:
        return {**super().constants(metadata), "attribute_names": list(metadata["attributes"]),
                "input_size": int(self.input_size)}

    def tracked(self):
        return self.classifier

    def signatures(self) -> list:
        classifier, backbone, size, channels = self.classifier, self.backbone, self.input_size, self.channels
        settings = self.settings
        images = [tf.TensorSpec((None, None, None), tf.float32, name="images")]

        def outputs_on(images, views):
            return tagging_outputs(classifier, inputs_from_counts(images, settings), views, settings.input_channels,
                                   self.symmetry_centre)

        @tf.function(input_signature=images, autograph=False)
        def forward(images):
            """The classifier on raw counts (its probabilities averaged over ``resnet.views`` views), traced once:
            the signatures below call it rather than trace it again."""
            return outputs_on(images, self.views)

        @tf.function(input_signature=images, autograph=False)
        def forward_one_view(images):
            return outputs_on(images, 1)

        def serving_default(images):
            return {"probabilities": attribute_probabilities(forward(images))}

        def features_15crop(images):
            return {"features": fifteen_crop_features(backbone, images, size, channels)}

        def features(images):
            return {"features": plain_features(backbone, images, size, channels)}

        def beam_centre(images):
            return {"beam_centre": beam_in_pixels(forward(images)["beam"], images)}

        def tagged(outputs, images):
            return {"probabilities": outputs["attributes"], "beam_centre": beam_in_pixels(outputs["beam"], images)}

        def tag(images):  # one forward pass for both: two signatures would run the network twice
            return tagged(forward(images), images)

        def one_view(images):
            outputs = forward_one_view(images)
            return tagged(outputs, images) if self.beam_head else {"probabilities": outputs}

        functions = {"serving_default": serving_default, "features_15crop": features_15crop, "features": features,
                     "beam_centre": beam_centre, "tag": tag, "one_view": one_view}
        return [(name, functions[name], images) for name in self.signature_names()]


def beam_in_pixels(fraction: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """(B, 2) beam centre as fractions of the padded square's side → (x, y) px of the (B, H, W) input images."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    side = tf.maximum(height, width)
    offset = tf.cast(tf.stack([(side - width) // 2, (side - height) // 2]), tf.float32)
    return fraction * tf.cast(side, tf.float32) - offset


def export_resnet(classifier: keras.Model, backbone: keras.Model, config, extra_metadata: dict | None = None,
                  output_dir: str | Path | None = None) -> Path:
    """Export a trained ResNet to ``<output_dir or config.resnet.output_dir>/<next version>/``; returns that folder."""
    return ResNetExport(classifier, backbone, config, output_dir, extra_metadata).export()
