"""The patch autoencoder's training task: the one place that builds its model, inputs, loss and optimizer.

It reads like the method (paper §3.2):

1. images: the pipeline's simulated TFRecords (train split; the val split is held out), or a folder of
   real detector images (every k-th file held out, ``heldout_fraction``) — ``patches.PatchSource``;
2. patches: each image resized to every scale, ``patches_per_image`` random P × P patches;
3. model: encoder → code → softmax → decoder; loss: mean squared error per normalised patch; Adam;
4. during ``fit``: the held-out patches' loss every epoch, the paper's figures in TensorBoard (Fig. 6:
   originals above reconstructions, sorted by error; Fig. 7: decoded one-hot codes), a weights
   checkpoint per epoch (``<run>/checkpoints/``);
5. export: the reconstruction error distribution on held-out patches → ``reports/<pipeline>/autoencoder.{json,md}``
   with the two figures as PNG, and ``saved_models/autoencoder/<version>/``.

:func:`xrayscatter.train.train` runs it (``train("autoencoder", config, images_dir=...)``) with ``fit`` or
the multi-worker loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.autoencoder.export import export_autoencoder
from xrayscatter.autoencoder.model import build_autoencoder_from_config
from xrayscatter.autoencoder.patches import collect_patches, patch_dataset, patch_source
from xrayscatter.autoencoder.report import (FigureCallback, decoded_prototypes, error_statistics, figure6_selection,
                                            prototype_grid, reconstruction_errors, reconstruction_strip, write_report)
from xrayscatter.base_task import Task
from xrayscatter.errors import XrayscatterError
from xrayscatter.provenance import provenance

HELDOUT_PATCH_LIMIT = 8192  # held-out patches for validation and the error report (enough for stable percentiles)


class AutoencoderTask(Task):
    """The patch autoencoder (``[autoencoder]`` of the pipeline).

    Args:
        config: the PipelineConfig.
        images_dir: a folder of real detector images to train on instead of the simulated TFRecords
            (default: ``autoencoder.real_images_dir`` when set).

    Raises:
        XrayscatterError: no simulated data set, or an unusable image folder.
    """

    name = "autoencoder"
    section = "autoencoder"

    def __init__(self, config, images_dir: str | Path | None = None):
        super().__init__(config)
        self.source = patch_source(config, images_dir)
        self._heldout: np.ndarray | None = None

    def steps_per_epoch(self) -> int:
        ae = self.settings
        return ae.steps_per_epoch or max(1, math.ceil(self.source.num_train_images * ae.patches_per_image
                                                      / ae.batch_size))

    # ------------------------------------------------------------------ builders
    def build_model(self) -> keras.Model:
        """Normalised patches (B, P, P) → reconstructions (B, P, P)."""
        return build_autoencoder_from_config(self.settings)

    def build_optimizer(self, model, total_steps: int):
        return keras.optimizers.Adam(self.settings.learning_rate)

    def build_inputs(self, input_context=None):
        """Random patches of this input pipeline's share of the training images; a seed per input pipeline."""
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        batch_size = (input_context.get_per_replica_batch_size(self.settings.batch_size)
                      if input_context is not None else self.settings.batch_size)
        return patch_dataset(self.source.train_images(input_context), self.settings,
                             seed=self.config.seed + 1000 * pipeline, batch_size=batch_size, training=True)

    def per_example_loss(self, targets, outputs):
        """Mean squared error of each patch, (b,) float32."""
        return tf.reduce_mean(tf.math.squared_difference(tf.cast(targets, outputs.dtype), outputs), axis=[1, 2])

    # ------------------------------------------------------------------ held-out patches
    def heldout(self) -> np.ndarray:
        """(N, P, P) float32 normalised held-out patches, the same ones every call (N ≤ HELDOUT_PATCH_LIMIT).

        Raises:
            XrayscatterError: no held-out image could be read.
        """
        if self._heldout is None:
            patches = collect_patches(self.source.heldout_images(), self.settings, seed=self.config.seed + 1,
                                      limit=HELDOUT_PATCH_LIMIT)
            if len(patches) == 0:
                raise XrayscatterError(f"{self.source.description}: no held-out image could be read")
            self._heldout = patches
        return self._heldout

    def validation_data(self):
        heldout = self.heldout()
        return tf.data.Dataset.from_tensor_slices((heldout, heldout)).batch(self.settings.batch_size)

    def fit_callbacks(self, model, run_dir: Path, resumed: bool) -> list:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        return [FigureCallback(run_dir, self.heldout(), self.settings.patch_size),
                keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "epoch-{epoch:03d}.weights.h5"),
                                                save_weights_only=True)]

    # ------------------------------------------------------------------ export
    def export(self, model, record: dict) -> dict:
        """Held-out error distribution, figures, SavedModel, report files.

        Returns ``saved_model`` and ``report`` (the dict written to ``<report_dir>/<pipeline>/autoencoder.json``).
        """
        ae = self.settings
        trained = build_autoencoder_from_config(ae)  # plain variables for the export
        trained.set_weights(model.get_weights())
        heldout = self.heldout()
        recon, rmse = reconstruction_errors(trained, heldout)
        stats = error_statistics(rmse, ae.patch_size)
        pick = figure6_selection(rmse)
        strip = reconstruction_strip(heldout, recon, rmse)
        grid = prototype_grid(decoded_prototypes(trained))
        summary = {
            **provenance(self.config),
            "data": {"source": self.source.description, "train_images": self.source.num_train_images,
                     "heldout_patches": int(len(heldout)), "patches_per_image": ae.patches_per_image,
                     "scales": list(ae.scales)},
            "model": {"patch_size": ae.patch_size, "code_size": ae.code_size, "base_filters": ae.base_filters,
                      "scales": list(ae.scales), "parameters": int(trained.count_params())},
            "training": record,
            "reconstruction_error": stats,
        }
        export_dir = export_autoencoder(trained, self.config, extra_metadata={
            "reconstruction_error": {k: stats[k] for k in ("patches", "definition", "rmse")},
            "training_data": self.source.description})
        summary["export"] = str(export_dir)
        report_dir = Path(self.config.evaluate.report_dir) / self.config.name
        summary["report_files"] = write_report(report_dir, summary, strip, grid, [float(rmse[i]) for i in pick])
        return {"saved_model": str(export_dir), "report": summary}
