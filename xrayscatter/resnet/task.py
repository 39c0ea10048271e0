"""The ResNet's training task: the one place that builds its model, inputs, loss, metrics and optimizer.

    inputs     resnet/data.make_dataset of the train split (per replica, this worker's shards)
    model      resnet/model backbone + sigmoid head; mixed_float16 when ``resnet.mixed_precision``
    loss       Σ over the 17 attributes of binary cross-entropy, per image
    optimizer  AdamW, linear warm-up over 5 % of the steps then cosine decay to 1 % of the peak,
               decoupled weight decay ``resnet.weight_decay`` (biases and batch-norm parameters
               excluded); wrapped in a LossScaleOptimizer under mixed precision
    metrics    streaming area under the PR curve per attribute, averaged (``pr_auc``)
    fit        validation AP per attribute and mAP every epoch, TensorBoard figures, the best
               ``val_mAP`` checkpoint (``<run>/best.weights.h5``), restored after training
    export     hold-out AP on the test split → reports/<pipeline>/resnet_holdout.{json,md};
               best-F1 thresholds on the validation split; saved_models/resnet/<version>/

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
from xrayscatter.metrics import average_precisions, best_f1_thresholds, mean_average_precision
from xrayscatter.resnet.callbacks import TensorBoardFigures, ValidationMetrics
from xrayscatter.resnet.data import make_dataset
from xrayscatter.resnet.export import export_resnet
from xrayscatter.resnet.model import BACKBONE_NAME, build_backbone, build_classifier
from xrayscatter.resnet.report import percent, predict_split, write_holdout_report

BEST_WEIGHTS = "best.weights.h5"
THRESHOLDS_RULE = "per attribute, the best-F1 threshold on the validation split (0.5 when it cannot choose)"


def summed_binary_crossentropy(y_true, y_pred):
    """(B, A) labels, (B, A) probabilities → (B,) Σ over attributes of binary cross-entropy."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    return keras.ops.sum(keras.ops.binary_crossentropy(y_true, y_pred), axis=-1)


def learning_rate_schedule(config, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over 5 % of the steps to ``resnet.learning_rate``, then cosine decay to 1 % of it."""
    peak = config.resnet.learning_rate
    warmup = max(1, total_steps // 20)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10, decay_steps=max(1, total_steps - warmup), alpha=0.01,
        warmup_target=peak, warmup_steps=warmup)


class ResNetTask(Task):
    """The multi-label ResNet-50 on the simulated TFRecords (``[resnet]`` of the pipeline)."""

    name = "resnet"
    section = "resnet"

    def __init__(self, config):
        super().__init__(config)
        self.train_paths = shard_paths(config, "train")  # a missing data set fails here, by name

    def steps_per_epoch(self) -> int:
        # Walk every shard's record frames now: a truncated file fails here, by name, not hours later.
        train_images, _, _ = (split_size(self.config, split) for split in ("train", "val", "test"))
        return self.settings.steps_per_epoch or max(1, train_images // self.settings.batch_size)

    @property
    def jit_compile(self) -> bool:
        return bool(self.settings.xla)

    # ------------------------------------------------------------------ builders
    def build_model(self) -> keras.Model:
        """Backbone + sigmoid head, (B, S, S, 1) normalised images → (B, 17) probabilities."""
        previous = keras.config.dtype_policy()
        if self.settings.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        try:
            return build_classifier(build_backbone(self.settings.input_size, self.settings.width_multiplier))
        finally:
            keras.config.set_dtype_policy(previous)

    def build_optimizer(self, model: keras.Model, total_steps: int):
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate_schedule(self.config, total_steps),
                                           weight_decay=self.settings.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        if self.settings.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def build_inputs(self, input_context=None):
        return make_dataset(self.config, "train", training=True, input_context=input_context)

    def per_example_loss(self, targets, outputs):
        return summed_binary_crossentropy(targets, outputs)

    def build_metrics(self) -> list:
        # Streaming area under the PR curve per attribute, averaged: the training-set mAP estimate.
        return [keras.metrics.AUC(curve="PR", multi_label=True, num_labels=NUM_ATTRIBUTES, name="pr_auc")]

    def input_errors(self):
        return naming_bad_shards(self.train_paths)

    # ------------------------------------------------------------------ fit route
    def fit_callbacks(self, model, run_dir: Path, resumed: bool) -> list:
        validation = ValidationMetrics(self.config, shard_paths(self.config, "val"))
        best = keras.callbacks.ModelCheckpoint(
            str(run_dir / BEST_WEIGHTS), monitor="val_mAP", mode="max", save_best_only=True, save_weights_only=True,
            initial_value_threshold=best_logged(run_dir / TRAINING_LOG, "val_mAP") if resumed else None)
        return [validation, TensorBoardFigures(run_dir, validation), best]

    # ------------------------------------------------------------------ after training
    def after_training(self, model, run_dir: Path, record: dict) -> dict:
        """After ``fit``, back to the weights of the best validation mAP (the loop route does not validate)."""
        best = run_dir / BEST_WEIGHTS
        if record["route"] == "fit" and best.is_file():
            model.load_weights(str(best))
        return {"best_val_mAP": best_logged(run_dir / TRAINING_LOG, "val_mAP") if record["route"] == "fit" else None}

    def plain_copy(self, model: keras.Model) -> tuple[keras.Model, keras.Model]:
        """A float32 (classifier, backbone) pair outside any strategy, holding ``model``'s weights."""
        backbone = build_backbone(self.settings.input_size, self.settings.width_multiplier)
        copy = build_classifier(backbone)
        copy.set_weights(model.get_weights())
        return copy, copy.get_layer(BACKBONE_NAME)

    def export(self, model, record: dict) -> dict:
        """Hold-out AP on the test split, best-F1 thresholds on val, SavedModel; one line on stderr.

        Returns ``holdout_mAP``, ``holdout_ap`` (per attribute; None where not measurable), ``saved_model``,
        ``report_json``, ``report_md``.
        """
        classifier, backbone = self.plain_copy(model)
        val_probabilities, val_labels = predict_split(classifier, self.config, "val")
        test_probabilities, test_labels = predict_split(classifier, self.config, "test")
        ap = average_precisions(test_labels, test_probabilities)
        present = np.isfinite(ap)
        holdout_map = mean_average_precision(ap)
        json_path, md_path = write_holdout_report(self.config, ap, test_labels, {"training": record})
        thresholds = best_f1_thresholds(val_labels, val_probabilities, default=0.5)
        saved = export_resnet(classifier, backbone, self.config, {
            "thresholds": dict(zip(ATTRIBUTES, (float(t) for t in thresholds))),
            "thresholds_rule": THRESHOLDS_RULE,
            "holdout": {"mAP": holdout_map, "split": "test", "num_images": int(len(test_labels))},
            "training": record,
        })
        Console(stderr=True).print(
            f"hold-out mAP {percent(holdout_map)} % ({int(present.sum())} attributes, {len(test_labels)} test "
            f"images) → {md_path}; SavedModel {saved}")
        return {"holdout_mAP": holdout_map,
                "holdout_ap": {name: (float(ap[a]) if present[a] else None) for a, name in enumerate(ATTRIBUTES)},
                "saved_model": str(saved), "report_json": str(json_path), "report_md": str(md_path)}
