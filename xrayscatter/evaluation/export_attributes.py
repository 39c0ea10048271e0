"""The trained linear SVMs as a servable SavedModel: raw image → every attribute's score and decision.

``saved_models/attributes/<version>/`` has one signature::

    serving_default: images float32 (batch, height, width) raw counts
                     → scores float32 (batch, A), decisions int32 (batch, A)

composed of the feature models' own signatures (``features_15crop`` of the ResNet, ``features_spm``
of the autoencoder, re-saved inside, so the folder is self-contained), the per-block L2
normalisation of the combined set, the standardisation, and the linear layer:

    z = (x − mean) · scale,   scores = z W + b,   decisions = scores ≥ thresholds

The SVMs are trained on every image of the evaluated data set with C chosen per attribute by a
GroupKFold over its runs; each attribute's threshold maximises F1 on the held-out decision values
of that inner validation (not on the training images themselves), so it travels as data, not code.
Attribute names, thresholds and the provenance are in ``assets.extra/metadata.json`` and in the
string variables ``metadata_json`` and ``normalization`` (the export base's constants,
``loaded.metadata_json[0]``) and ``attribute_names``. No pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation.features import FeatureMatrix
from xrayscatter.evaluation.svm import FoldSpace, choose_c, fit_linear_svms
from xrayscatter.metrics import best_f1_thresholds
from xrayscatter.saved_model import SavedModelExport, constant_variables


@dataclass(frozen=True)
class DeployableSVMs:
    """Linear SVMs trained on every image, in the standardised feature space.

    Attributes:
        mean, scale: (D,) float64, the standardisation (``z = (x − mean) · scale``).
        weights: (D, A) float64; bias: (A,) float64, so that ``scores = z @ weights + bias``.
        thresholds: (A,) float64 decision thresholds on the scores.
        c: (A,) chosen C; trained: (A,) bool (False: one class only, the score is a constant ±1).
        inner_ap: (A,) float, held-out AP of the inner validation at the chosen C (NaN: not measurable).
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    thresholds: np.ndarray
    c: np.ndarray
    trained: np.ndarray
    inner_ap: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n, D) features (per-block normalised as the feature set is) → (n, A) float64 scores."""
        return ((features.astype(np.float64) - self.mean) * self.scale) @ self.weights + self.bias


def fit_deployable_svms(features: np.ndarray, block_sizes: tuple[int, ...], labels: np.ndarray, runs: np.ndarray,
                        c_grid: tuple[float, ...], inner_folds: int, threads: int = 1) -> DeployableSVMs:
    """Train the SVMs to serve: all images, C and thresholds from an inner GroupKFold over the runs."""
    labels = np.asarray(labels, dtype=np.float64)
    rows = np.arange(len(features))
    space = FoldSpace(features, block_sizes, rows)
    selection = choose_c(space, rows, labels, runs, c_grid, inner_folds, threads)
    design = space.design(rows, rows[:0])
    models = fit_linear_svms(design.fit, labels, selection.c, threads)
    weights = space.primal_weights(design, models.coef).T  # (D, A)
    bias = models.intercept.copy()
    # One class only: a constant score on the right side of the threshold 0.
    bias[~models.trained] = np.where(models.constant[~models.trained] > 0.5, 1.0, -1.0)
    weights[:, ~models.trained] = 0.0
    thresholds = best_f1_thresholds(labels, selection.inner_scores, default=0.0)  # 0: the SVM's own margin
    thresholds[~models.trained] = 0.0
    picked = np.searchsorted(np.sort(np.asarray(c_grid, dtype=np.float64)), selection.c)
    inner_ap = np.array([selection.inner_ap[min(i, selection.inner_ap.shape[0] - 1), a]
                         for a, i in enumerate(picked)])
    return DeployableSVMs(space.standardizer.mean, space.standardizer.scale, weights, bias, thresholds,
                          selection.c, models.trained, inner_ap)


class AttributesExport(SavedModelExport):
    """The SVMs of one feature set on top of the feature models' own signatures.

    Args:
        feature_matrix: the feature set the SVMs were trained on (its sources name the SavedModels).
        svms: the trained SVMs.
        attributes: A attribute names.
        data_summary: the evaluated data set's summary (``EvaluationData.summary()``).

    Raises:
        XrayscatterError: the feature set is a hand-crafted baseline (not a TF graph).
    """

    model = "attributes"

    def __init__(self, feature_matrix: FeatureMatrix, svms: DeployableSVMs, attributes: tuple[str, ...], config,
                 data_summary: dict, output_dir: str | Path | None = None, extra_metadata: dict | None = None):
        super().__init__(config, output_dir, extra_metadata)
        self.sources = [s for s in feature_matrix.sources if "signature" in s]
        if len(self.sources) != len(feature_matrix.block_sizes):
            raise XrayscatterError(f"feature set '{feature_matrix.name}' has no SavedModel signature to export "
                                   "(only resnet, autoencoder and resnet+autoencoder can be served)")
        self.feature_matrix, self.svms, self.attributes, self.data_summary = (feature_matrix, svms, attributes,
                                                                              data_summary)

    def default_output_dir(self) -> str:
        return self.config.evaluate.attributes_output_dir

    def model_metadata(self) -> dict:
        """What a user (and ``xrayscatter predict``) needs to read the outputs."""
        matrix, svms, count = self.feature_matrix, self.svms, len(self.attributes)
        return {
            "signatures": {"serving_default": {
                "inputs": {"images": "float32 (batch, height, width) raw detector counts"},
                "outputs": {"scores": f"float32 (batch, {count}) linear SVM decision values",
                            "decisions": f"int32 (batch, {count}) 1 where score >= threshold"}}},
            "attributes": list(self.attributes),
            "thresholds": [float(t) for t in svms.thresholds],
            "threshold_rule": "per attribute, the score maximising F1 on held-out decision values of an inner "
                              "GroupKFold over the training runs",
            "svm_c": [float(c) for c in svms.c],
            "trained": [bool(t) for t in svms.trained],
            "inner_validation_ap": [None if np.isnan(v) else float(v) for v in svms.inner_ap],
            "feature_set": matrix.name,
            "feature_sources": [{k: v for k, v in s.items() if k != "cache_file"} for s in matrix.sources],
            "block_sizes": list(matrix.block_sizes),
            "block_normalization": "each block's rows L2-normalised before concatenation"
            if len(matrix.block_sizes) > 1 else "none",
            "standardization": "z = (x - mean) * scale, scale = 1 / (std * sqrt(block width)), fitted on all images",
            "training_data": {k: self.data_summary[k] for k in ("source", "location", "num_images", "num_runs",
                                                                "content_hash") if k in self.data_summary},
        }

    def write(self, path: Path, metadata: dict) -> None:
        import tensorflow as tf

        module = _tagger_module(self.sources, len(self.sources) > 1, self.svms, self.attributes,
                                self.constants(metadata))
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})


def _tagger_module(sources: list[dict], normalize_blocks: bool, svms: DeployableSVMs, attributes: tuple[str, ...],
                   constants: dict):
    """A tf.Module whose ``serve`` composes the feature signatures and the linear layer."""
    import tensorflow as tf

    class AttributeTagger(tf.Module):
        """Raw detector counts → attribute scores and decisions (see the module docstring)."""

        def __init__(self):
            super().__init__(name="attribute_tagger")
            self.feature_models = [tf.saved_model.load(s["path"]) for s in sources]
            self.signature_names = [s["signature"] for s in sources]
            self.normalize_blocks = normalize_blocks
            self.mean = tf.Variable(svms.mean.astype(np.float32), trainable=False, name="mean")
            self.scale = tf.Variable(svms.scale.astype(np.float32), trainable=False, name="scale")
            self.weights = tf.Variable(svms.weights.astype(np.float32), trainable=False, name="weights")
            self.bias = tf.Variable(svms.bias.astype(np.float32), trainable=False, name="bias")
            self.thresholds = tf.Variable(svms.thresholds.astype(np.float32), trainable=False, name="thresholds")
            self.attribute_names = tf.Variable(list(attributes), trainable=False, name="attribute_names")
            for name, variables in constant_variables(constants).items():
                setattr(self, name, variables)

        @tf.function(input_signature=[tf.TensorSpec((None, None, None), tf.float32, name="images")])
        def serve(self, images):
            blocks = []
            for model, signature in zip(self.feature_models, self.signature_names):
                block = model.signatures[signature](images=images)["features"]
                if self.normalize_blocks:
                    block = tf.math.l2_normalize(block, axis=1)
                blocks.append(block)
            x = tf.concat(blocks, axis=1) if len(blocks) > 1 else blocks[0]
            scores = tf.matmul((x - self.mean) * self.scale, self.weights) + self.bias
            return {"scores": scores, "decisions": tf.cast(scores >= self.thresholds, tf.int32)}

    return AttributeTagger()


def export_attribute_model(feature_matrix: FeatureMatrix, svms: DeployableSVMs, attributes: tuple[str, ...], config,
                           data_summary: dict, output_dir: str | Path | None = None,
                           extra_metadata: dict | None = None) -> Path:
    """Write ``<output_dir or evaluate.attributes_output_dir>/<next version>/``; returns that folder.

    Args:
        extra_metadata: more metadata, e.g. ``holdout_comparison`` (the evaluation's held-out mAP of this
            model and of the ResNet's own outputs on the same images, which ``predict`` reads to choose
            its default model).

    Raises:
        XrayscatterError: the feature set is a hand-crafted baseline (not a TF graph).
    """
    return AttributesExport(feature_matrix, svms, attributes, config, data_summary, output_dir,
                            extra_metadata).export()
