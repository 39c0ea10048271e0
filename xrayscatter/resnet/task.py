"""The ResNet's training task: the one place that builds its model, inputs, loss, metrics and optimizer.

    inputs     resnet/data.make_dataset of the train split (per replica, this worker's shards):
               ``resnet.input_channels``, gaps shown missing or as 0 counts, crops, flips, rotations
    model      resnet/model backbone + sigmoid head (+ the beam-centre head when
               ``resnet.beam_centre_weight`` > 0); with ``resnet.mixed_precision``, mixed_float16 on
               GPUs and mixed_bfloat16 on CPUs with native bfloat16 (``ResNetTask.precision_policy``)
    loss       Σ over the 17 attributes of binary cross-entropy, per image, + beam_centre_weight ×
               the beam centre's mean absolute error (in image sides; records without one add 0), for the
               coarse and the refined estimate alike with ``resnet.beam_refine``
    optimizer  AdamW, linear warm-up over 5 % of the steps then cosine decay to 1 % of the peak,
               decoupled weight decay ``resnet.weight_decay`` (biases and batch-norm parameters
               excluded), an exponential moving average of the weights when ``resnet.weight_averaging``;
               wrapped in a LossScaleOptimizer under mixed_float16
    metrics    streaming area under the PR curve per attribute, averaged (``pr_auc``)
    fit        validation AP per attribute and mAP every epoch, TensorBoard figures
    export     the final weights (not a best-epoch pick: a stable schedule makes the last epoch the
               one to ship), batch-norm statistics recomputed over ``resnet.batch_norm_images``
               training images; hold-out AP on the test split → reports/<pipeline>/resnet_holdout.{json,md};
               thresholds for a stated precision on the validation split, with their test precision
               and recall; saved_models/resnet/<version>/

:func:`xrayscatter.train.train` runs it (``train("resnet", config)``) with ``fit`` or the multi-worker loop.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from rich.console import Console

from xrayscatter.attributes import ATTRIBUTES, NUM_ATTRIBUTES
from xrayscatter.base_task import TRAINING_LOG, Task, best_logged
from xrayscatter.dataset import naming_bad_shards, shard_paths, split_size
from xrayscatter.metrics import average_precisions, mean_average_precision, precision_recall_at, precision_thresholds
from xrayscatter.resnet.callbacks import TensorBoardFigures, ValidationMetrics
from xrayscatter.resnet.data import make_dataset
from xrayscatter.resnet.export import export_resnet
from xrayscatter.resnet.model import attribute_probabilities, build_network, feature_extractor, recalibrate_batch_norm
from xrayscatter.resnet.report import (beam_centre_errors, percent, predict_split, predict_split_outputs,
                                       write_holdout_report)

CALIBRATION_BATCH = 64


def thresholds_rule(precision: float, floor: float) -> str:
    return (f"per attribute on the validation split: the lowest threshold ≥ {floor:g} with precision ≥ {precision:g}; "
            f"where none reaches it, the best-F1 threshold ≥ {floor:g}; {max(0.5, floor):g} where the split cannot choose")


def cpu_has_bfloat16() -> bool:
    """Whether this machine's CPU computes in bfloat16 natively (Linux: AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def summed_binary_crossentropy(y_true, y_pred):
    """(B, A) labels, (B, A) probabilities → (B,) Σ over attributes of binary cross-entropy."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    return keras.ops.sum(keras.ops.binary_crossentropy(y_true, y_pred), axis=-1)


def beam_centre_error(y_true, y_pred):
    """(B, 2) true and estimated beam centres (fractions of the image side; NaN: unknown) → (B,) |Δx| + |Δy|
    for beams on the image, 0 elsewhere (the heatmap can only point inside; "off" is an attribute)."""
    y_true = keras.ops.cast(y_true, "float32")
    on_image = keras.ops.all(keras.ops.isfinite(y_true) & (y_true >= 0.0) & (y_true <= 1.0), axis=-1)
    error = keras.ops.sum(keras.ops.abs(keras.ops.where(keras.ops.isfinite(y_true), y_true, 0.0)
                                        - keras.ops.cast(y_pred, "float32")), axis=-1)
    return keras.ops.where(on_image, error, 0.0)


def learning_rate_schedule(config, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over 5 % of the steps to ``resnet.learning_rate``, then cosine decay to 1 % of it."""
    peak = config.resnet.learning_rate
    warmup = max(1, total_steps // 20)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10, decay_steps=max(1, total_steps - warmup), alpha=0.01,
        warmup_target=peak, warmup_steps=warmup)


def centre_summary(beam_centre: dict | None) -> str:
    """", beam centre median 1.2 px" (of the stored image) for the console line, or ""."""
    if not beam_centre or "beam" not in beam_centre:
        return ""
    return f", beam centre median {beam_centre['beam']['median_px']:.1f} px of {beam_centre['side_px']}"


class ResNetTask(Task):
    """The multi-label ResNet-50 on the simulated TFRecords (``[resnet]`` of the pipeline)."""

    name = "resnet"
    section = "resnet"

    def __init__(self, config):
        super().__init__(config)
        self.train_paths = shard_paths(config, "train")  # a missing data set fails here, by name
        self._evaluation_model: keras.Model | None = None  # built by the first evaluation_copy
        self._averaging_optimizer = None  # the optimizer keeping the weights' moving average (weight_averaging)

    def steps_per_epoch(self) -> int:
        # Walk every shard's record frames now: a truncated file fails here, by name, not hours later.
        train_images, _, _ = (split_size(self.config, split) for split in ("train", "val", "test"))
        return self.settings.steps_per_epoch or max(1, train_images // self.settings.batch_size)

    @property
    def jit_compile(self) -> bool:
        return bool(self.settings.xla)

    @property
    def beam_head(self) -> bool:
        return self.settings.beam_centre_weight > 0

    @property
    def beam_refine(self) -> bool:
        return self.beam_head and bool(self.settings.detail_size) and self.settings.beam_refine

    # ------------------------------------------------------------------ builders
    def _classifier(self) -> keras.Model:
        settings = self.settings
        return build_network(settings.input_size, settings.width_multiplier, len(settings.input_channels),
                             beam_head=self.beam_head, detail_size=settings.detail_size if self.beam_head else 0,
                             detail_crop=settings.detail_crop, detail_window=settings.detail_window,
                             profile_bins=settings.profile_bins if self.beam_head else 0,
                             beam_refine=self.beam_refine, blocks=settings.blocks)

    @property
    def precision_policy(self) -> str:
        """The Keras dtype policy of training: ``float32``, or with ``resnet.mixed_precision`` ``mixed_float16``
        on GPUs and ``mixed_bfloat16`` on CPUs that compute in bfloat16 natively (AVX-512 BF16 or AMX:
        measured 1.9× the float32 training rate on the development machine's 2 cores)."""
        if not self.settings.mixed_precision:
            return "float32"
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"

    def build_model(self) -> keras.Model:
        """Backbone + heads: (B, S, S, C) input channels → (B, 17) probabilities (and the beam centre)."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision_policy)
        try:
            return self._classifier()
        finally:
            keras.config.set_dtype_policy(previous)

    def build_optimizer(self, model: keras.Model, total_steps: int):
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(self.config, total_steps),
                                           weight_decay=self.settings.weight_decay,
                                           use_ema=self.settings.weight_averaging,
                                           ema_momentum=self.settings.averaging_momentum)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        self._averaging_optimizer = optimizer if self.settings.weight_averaging else None
        if self.precision_policy == "mixed_float16":  # bfloat16 has float32's range: no loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def build_inputs(self, input_context=None):
        return make_dataset(self.config, "train", training=True, input_context=input_context)

    def _beam_loss(self, targets, outputs):
        return self.settings.beam_centre_weight * beam_centre_error(targets, outputs)

    def per_example_loss(self, targets, outputs):
        if not self.beam_head:
            return summed_binary_crossentropy(targets, outputs)
        loss = (summed_binary_crossentropy(targets["attributes"], outputs["attributes"])
                + self._beam_loss(targets["beam"], outputs["beam"]))
        if self.beam_refine:
            loss += self._beam_loss(targets["beam_coarse"], outputs["beam_coarse"])
        return loss

    def compile_loss(self):
        if not self.beam_head:
            return self.per_example_loss
        losses = {"attributes": summed_binary_crossentropy, "beam": self._beam_loss}
        return {**losses, "beam_coarse": self._beam_loss} if self.beam_refine else losses

    def build_metrics(self):
        # Streaming area under the PR curve per attribute, averaged: the training-set mAP estimate.
        pr_auc = [keras.metrics.AUC(curve="PR", multi_label=True, num_labels=NUM_ATTRIBUTES, name="pr_auc")]
        return {"attributes": pr_auc} if self.beam_head else pr_auc

    def input_errors(self):
        return naming_bad_shards(self.train_paths)

    # ------------------------------------------------------------------ fit route
    def fit_callbacks(self, model, run_dir: Path, resumed: bool) -> list:
        validation = ValidationMetrics(self.config, shard_paths(self.config, "val"),
                                       evaluation_model=self.evaluation_copy)
        return [validation, TensorBoardFigures(run_dir, validation)]

    # ------------------------------------------------------------------ after training
    def after_training(self, model, run_dir: Path, record: dict) -> dict:
        """The weights to ship are the final ones (their moving average with ``resnet.weight_averaging``)."""
        if self._averaging_optimizer is not None:  # both routes: the average replaces the weights
            self._averaging_optimizer.finalize_variable_values(model.trainable_variables)
        logged = record["route"] == "fit"
        return {"best_val_mAP": best_logged(run_dir / TRAINING_LOG, "val_mAP") if logged else None,
                "final_val_mAP": (record.get("history", {}).get("val_mAP") or [None])[-1] if logged else None}

    def plain_copy(self, model: keras.Model) -> tuple[keras.Model, keras.Model]:
        """A float32 (classifier, backbone) pair outside any strategy, holding ``model``'s weights."""
        copy = self._classifier()
        copy.set_weights(model.get_weights())
        return copy, feature_extractor(copy)

    def calibration_batches(self) -> list:
        """``resnet.batch_norm_images`` training images as the network sees them at evaluation (no augmentation),
        in batches of ``CALIBRATION_BATCH`` (made once)."""
        if not hasattr(self, "_calibration"):
            count = self.settings.batch_norm_images
            images = make_dataset(self.config, "train", training=False, paths=self.train_paths).map(lambda x, y: x)
            images = images.unbatch().take(count).batch(CALIBRATION_BATCH)
            with naming_bad_shards(self.train_paths):
                self._calibration = [batch for batch in images] if count else []
        return self._calibration

    def evaluation_copy(self, model: keras.Model) -> keras.Model:
        """A plain copy of ``model`` whose batch-norm statistics are recomputed for its weights
        (:func:`resnet.model.recalibrate_batch_norm`); what validation, the hold-out report and the export use.

        The copy is built once per task and given the weights again at each call: validation after every
        epoch then reuses its traced calibration and prediction functions instead of tracing a new
        50-layer graph three times an epoch.
        """
        if self._evaluation_model is None:
            self._evaluation_model, _ = self.plain_copy(model)
        else:
            self._evaluation_model.set_weights(model.get_weights())
        # resnet.weight_averaging: validate what will be exported, the average (Keras keeps it aligned with
        # the trainable variables, which the copy has in the same order).
        averages = getattr(self._averaging_optimizer, "_model_variables_moving_average", None)
        for variable, average in zip(self._evaluation_model.trainable_variables, averages or []):
            if average is not None:
                variable.assign(average)
        recalibrate_batch_norm(self._evaluation_model, self.calibration_batches())
        return self._evaluation_model

    def export(self, model, record: dict) -> dict:
        """Hold-out AP on the test split, thresholds on val, SavedModel; one line on stderr.

        Returns ``holdout_mAP``, ``holdout_ap`` (per attribute; None where not measurable), ``saved_model``,
        ``report_json``, ``report_md``.
        """
        classifier = self.evaluation_copy(model)
        backbone = feature_extractor(classifier)
        views = self.settings.views  # what the SavedModel will average over: its thresholds are chosen on that
        val_probabilities, val_labels = predict_split(classifier, self.config, "val", views)
        test_outputs, test_labels = predict_split_outputs(classifier, self.config, "test", views)
        test_probabilities = np.asarray(attribute_probabilities(test_outputs), np.float32)
        beam_centre = beam_centre_errors(test_outputs, self.config, "test") if self.beam_head else None
        ap = average_precisions(test_labels, test_probabilities)
        present = np.isfinite(ap)
        holdout_map = mean_average_precision(ap)
        precision, floor = self.settings.threshold_precision, self.settings.threshold_floor
        thresholds, rules = precision_thresholds(val_labels, val_probabilities, precision, floor)
        test_precision, test_recall = precision_recall_at(test_labels, test_probabilities, thresholds)
        decisions = {name: {"threshold": float(thresholds[a]), "rule": rules[a],
                            "precision": None if np.isnan(test_precision[a]) else float(test_precision[a]),
                            "recall": None if np.isnan(test_recall[a]) else float(test_recall[a])}
                     for a, name in enumerate(ATTRIBUTES)}
        json_path, md_path = write_holdout_report(self.config, ap, test_labels, {"training": record}, decisions,
                                                  beam_centre)
        saved = export_resnet(classifier, backbone, self.config, {
            "thresholds": dict(zip(ATTRIBUTES, (float(t) for t in thresholds))),
            "thresholds_rule": thresholds_rule(precision, floor),
            "holdout": {"mAP": holdout_map, "split": "test", "num_images": int(len(test_labels)), "views": views,
                        "ap": {name: (float(ap[a]) if present[a] else None) for a, name in enumerate(ATTRIBUTES)},
                        "decisions": decisions},
            "training": record,
        })
        Console(stderr=True).print(
            f"hold-out mAP {percent(holdout_map)} % ({int(present.sum())} attributes, {len(test_labels)} test "
            f"images){centre_summary(beam_centre)} → {md_path}; SavedModel {saved}")
        return {"holdout_mAP": holdout_map,
                "holdout_ap": {name: (float(ap[a]) if present[a] else None) for a, name in enumerate(ATTRIBUTES)},
                "saved_model": str(saved), "report_json": str(json_path), "report_md": str(md_path)}
