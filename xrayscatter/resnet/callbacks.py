"""What the ResNet's ``fit`` shows after every epoch: validation AP per attribute and TensorBoard figures.

* :class:`ValidationMetrics`: predictions on the validation split → ``val_loss``, ``val_mAP`` and
  ``val_AP_<attribute>`` in the epoch's logs (so the CSV log, TensorBoard and the best checkpoint see them);
* :class:`TensorBoardFigures`: a grid of validation inputs with their true and predicted tags, PR curves
  per attribute (PR-curves dashboard) and the first convolution's filters (cf. the paper's Fig. 4).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES, slug
from xrayscatter.dataset import naming_bad_shards
from xrayscatter.metrics import average_precisions, mean_average_precision
from xrayscatter.resnet.data import make_dataset, make_label_dataset
from xrayscatter.resnet.model import BACKBONE_NAME, attribute_probabilities, first_conv_kernel

_EPSILON = 1e-7  # keras.backend.epsilon(), the clipping of binary cross-entropy


def summed_binary_crossentropy_numpy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ResNet's loss (Σ over attributes of binary cross-entropy), mean over images, in numpy."""
    p = np.clip(probabilities.astype(np.float64), _EPSILON, 1 - _EPSILON)
    return float(np.mean(np.sum(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)), axis=1)))


class ValidationMetrics(keras.callbacks.Callback):
    """After each epoch: predictions on the validation split → ``val_loss``, ``val_mAP``, ``val_AP_<attribute>``.

    Must come before the TensorBoard and CSV callbacks, which then see these values. ``val_mAP`` is
    the mean over the attributes with a measurable AP (:mod:`xrayscatter.metrics`).

    Args:
        config: the PipelineConfig.
        paths: the validation shards.
        evaluation_model: the training model → the model that predicts (default: itself). The ResNet
            task passes a copy with batch-norm statistics recomputed for the epoch's weights, the
            same as the export, so that the score tracks the weights, not the trailing statistics.
    """

    def __init__(self, config, paths: list[str], evaluation_model=None):
        super().__init__()
        self.paths = paths
        self.evaluation_model = evaluation_model or (lambda model: model)
        self.images = make_dataset(config, "val", training=False, paths=paths).map(lambda x, y: x)
        self.labels = np.stack([y.numpy() for y in make_label_dataset(config, "val", paths=paths)])
        self.probabilities: np.ndarray | None = None
        self.history: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        model = self.evaluation_model(self.model)
        with naming_bad_shards(self.paths):
            outputs = model.predict(self.images, verbose=0)
        self.probabilities = np.asarray(attribute_probabilities(outputs), np.float32)
        ap = average_precisions(self.labels, self.probabilities)
        mean_ap = mean_average_precision(ap)
        mean_ap = float("nan") if mean_ap is None else mean_ap
        self.history.append(mean_ap)
        if logs is not None:
            logs["val_loss"] = summed_binary_crossentropy_numpy(self.labels, self.probabilities)
            logs["val_mAP"] = mean_ap
            for name, value in zip(ATTRIBUTES, ap):
                logs[f"val_AP_{slug(name)}"] = float(value)


class TensorBoardFigures(keras.callbacks.Callback):
    """Per epoch, into ``<run>/validation``: a grid of validation inputs with their tags,
    PR curves per attribute (PR-curves dashboard) and the first convolution's filters (cf. the paper's Fig. 4)."""

    def __init__(self, log_dir: Path, validation: ValidationMetrics, grid_size: int = 16):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir / "validation"))
        self.validation = validation
        batches = [x["image"] if isinstance(x, dict) else x for x in validation.images.take(grid_size)]
        self.grid_images = np.concatenate([x.numpy() for x in batches])[:grid_size]

    def on_epoch_end(self, epoch, logs=None):
        from tensorboard.plugins.pr_curve import summary as pr_summary

        probabilities = self.validation.probabilities
        labels = self.validation.labels
        with self.writer.as_default(step=epoch):
            n = len(self.grid_images)
            tf.summary.image("inputs_with_tags", input_grid_png(self.grid_images, labels[:n], probabilities[:n])[None],
                             description="validation inputs (normalised); true tags, predicted tags (p > 0.5)")
            kernel = first_conv_kernel(self.model.get_layer(BACKBONE_NAME))
            tf.summary.image("conv1_filters", filter_grid(kernel)[None],
                             description="first-layer 7×7 filters, each scaled to its own range")
            for a, name in enumerate(ATTRIBUTES):
                if labels[:, a].any():
                    proto = pr_summary.pb(f"pr_curve/{slug(name)}", labels[:, a].astype(bool),
                                          probabilities[:, a], num_thresholds=101, display_name=name)
                    tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=epoch)
        self.writer.flush()


def input_grid_png(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> tf.Tensor:
    """(n, S, S, C) input channels (the first is shown) with true and predicted tags → (H, W, 4) uint8 RGBA image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    columns = min(4, n)
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i, :, :, 0], cmap="viridis", vmin=0, vmax=max(float(images[i].max()), 1e-6))
        truth = [ATTRIBUTES[a] for a in np.flatnonzero(labels[i] > 0.5)]
        predicted = [ATTRIBUTES[a] for a in np.flatnonzero(probabilities[i] > 0.5)]
        ax.set_title("true: " + ", ".join(truth) + "\npred: " + ", ".join(predicted), fontsize=6, wrap=True)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return tf.io.decode_png(buffer.getvalue(), channels=4)


def filter_grid(kernel: np.ndarray, zoom: int = 4) -> tf.Tensor:
    """(k, k, C, F) conv kernel → (H, W, 1) uint8 tiles of the first input channel, each min–max scaled."""
    k, _, _, count = kernel.shape
    columns = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    tile = k * zoom + 2
    grid = np.zeros((rows * tile, columns * tile), np.uint8)
    for f in range(count):
        w = kernel[:, :, 0, f]
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
        w = np.kron(w, np.ones((zoom, zoom)))
        r, c = divmod(f, columns)
        grid[r * tile + 1:r * tile + 1 + k * zoom, c * tile + 1:c * tile + 1 + k * zoom] = (255 * w).astype(np.uint8)
    return tf.constant(grid[:, :, None])
