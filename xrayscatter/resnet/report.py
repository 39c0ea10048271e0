"""The ResNet's hold-out report after training: AP per attribute on the test split.

``<report_dir>/<pipeline>/resnet_holdout.{json,md}``, beside the paper's figure (Wang et al., WACV 2017,
Table 3). The AP rule is :mod:`xrayscatter.metrics`'s: an attribute whose test labels hold one class only
has no AP and is left out of the mAP.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.dataset import naming_bad_shards, shard_paths
from xrayscatter.files import write_atomically
from xrayscatter.metrics import HOLDOUT_AP_RULE, mean_average_precision
from xrayscatter.resnet.centre import tagging_outputs
from xrayscatter.resnet.data import make_beam_dataset, make_dataset, make_label_dataset
from xrayscatter.resnet.model import attribute_probabilities, layout_name

PAPER_HOLDOUT_MAP = 77.1  # Wang et al., WACV 2017, Table 3: ResNet-50 on the synthetic hold-out


def predict_split(model: keras.Model, config, split: str, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) probabilities (averaged over ``views`` views of each image) and (N, A) labels of a whole split,
    in the same order."""
    outputs, labels = predict_split_outputs(model, config, split, views)
    return np.asarray(attribute_probabilities(outputs), np.float32), labels


def predict_split_outputs(model: keras.Model, config, split: str,
                          views: int = 1) -> tuple[dict | np.ndarray, np.ndarray]:
    """The model's outputs on a whole split (its dict of (N, ·) arrays, or the (N, A) probabilities) and the
    (N, A) labels, in the same order. ``views`` > 1: the probabilities averaged over that many flipped and
    turned views of each image, as the exported model gives them (``views.on_views``); with
    ``resnet.symmetry_centre`` the beam centre refined as the export refines it (``beam_network``: before)."""
    paths = shard_paths(config, split)
    images = make_dataset(config, split, training=False, paths=paths).map(lambda x, y: x)
    symmetry = config.resnet.symmetry_centre and isinstance(model.output, dict)
    with naming_bad_shards(paths):
        if views == 1 and not symmetry:
            outputs = model.predict(images, verbose=0)
        else:
            forward = tf.function(lambda inputs: tagging_outputs(model, inputs, views, config.resnet.input_channels,
                                                                 symmetry), autograph=False)
            batches = [forward(inputs) for inputs in images]
            outputs = ({name: np.concatenate([b[name].numpy() for b in batches]) for name in batches[0]}
                       if isinstance(batches[0], dict) else np.concatenate([b.numpy() for b in batches]))
        labels = np.stack([y.numpy() for y in make_label_dataset(config, split, paths=paths)])
    return outputs, labels


def beam_centre_errors(outputs: dict, config, split: str) -> dict:
    """How far the beam-centre estimates of a split lie from the truth, for images whose beam is on the image.

    Args:
        outputs: the network's outputs on the split (``predict_split_outputs``): ``beam`` (N, 2) and, with
            ``resnet.beam_refine``, ``beam_coarse`` (N, 2), with ``resnet.symmetry_centre``, ``beam_network``
            (N, 2), (x, y) as fractions of the padded square's side.

    Returns:
        ``{"images", "side_px", "<output>": {"median_px", "p90_px", "within_2px"}}``: distances in px of the
        stored image (``simulate.image_size``); ``within_2px`` is the fraction of images within 2 px.
    """
    truth = np.stack([b.numpy() for b in make_beam_dataset(config, split)])
    on_image = np.all(np.isfinite(truth) & (truth >= 0) & (truth <= 1), axis=1)
    side = int(config.simulate.image_size)
    result = {"images": int(on_image.sum()), "side_px": side}
    for name in ("beam", "beam_network", "beam_coarse"):
        if name in outputs and on_image.any():
            distance = np.hypot(*(np.asarray(outputs[name])[on_image] - truth[on_image]).T) * side
            result[name] = {"median_px": float(np.median(distance)), "p90_px": float(np.percentile(distance, 90)),
                            "within_2px": float(np.mean(distance <= 2.0))}
    return result


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def write_holdout_report(config, ap: np.ndarray, labels: np.ndarray, extra: dict,
                         decisions: dict | None = None, beam_centre: dict | None = None) -> tuple[Path, Path]:
    """Per-attribute AP and mAP on the test split → ``<report_dir>/<pipeline>/resnet_holdout.{json,md}``.

    Args:
        ap: (A,) AP per attribute, NaN where not measurable.
        labels: (N, A) test labels.
        extra: more entries of the JSON record (the training record).
        decisions: per attribute, the exported decision threshold, the rule that chose it on the
            validation split, and the precision and recall it gives on the test split.
    """
    folder = Path(config.evaluate.report_dir) / config.name
    present = np.isfinite(ap)
    mean_ap = mean_average_precision(ap)
    positives = labels.sum(axis=0).astype(int)
    record = {
        "pipeline": config.name,
        "model": "resnet",
        "split": "test",
        "num_images": int(len(labels)),
        "mAP": mean_ap,
        "num_attributes_in_mean": int(present.sum()),
        "ap_rule": HOLDOUT_AP_RULE,
        "attributes": {name: {"ap": float(ap[a]) if present[a] else None, "positives": int(positives[a]),
                              **((decisions or {}).get(name, {}))}
                       for a, name in enumerate(ATTRIBUTES)},
        "paper_mAP": PAPER_HOLDOUT_MAP,
        **({"beam_centre": beam_centre} if beam_centre else {}),
        "config": config.to_dict(),
        **extra,
    }
    json_path = write_atomically(folder / "resnet_holdout.json",
                                 json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    lines = [
        f"# ResNet hold-out AP — pipeline `{config.name}`",
        "",
        f"Test split: {len(labels)} images. Network: {layout_name(config.resnet.blocks)} layout, "
        f"input {config.resnet.input_size} px, "
        f"width × {config.resnet.width_multiplier:g}. mAP over the {int(present.sum())} attributes whose test "
        "labels hold both positives and negatives."
        + (f" Probabilities averaged over {config.resnet.views} flipped and turned views of each image, as the "
           "exported model gives them (`resnet.views`)." if config.resnet.views > 1 else ""),
        "",
        "| features | mAP (%) |",
        "|---|---|",
        f"| ResNet-50, paper (Wang et al. 2017, Table 3; 100,000 images, 224 px) | {PAPER_HOLDOUT_MAP:.1f} |",
        f"| ResNet, this run | {percent(mean_ap)} |",
        "",
    ]
    if decisions:
        lines += ["Decision thresholds are chosen on the validation split (the rule column); precision and "
                  "recall are those the threshold gives on the test split.", "",
                  "| attribute | positives | AP (%) | threshold | rule | precision (%) | recall (%) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {positives[a]} | {percent(float(ap[a]) if present[a] else None)} | "
                  f"{decisions[name]['threshold']:.2f} | {decisions[name]['rule']} | "
                  f"{percent(decisions[name]['precision'])} | {percent(decisions[name]['recall'])} |"
                  for a, name in enumerate(ATTRIBUTES)]
    else:
        lines += ["| attribute | positives | AP (%) |", "|---|---|---|"]
        lines += [f"| {name} | {positives[a]} | {percent(float(ap[a]) if present[a] else None)} |"
                  for a, name in enumerate(ATTRIBUTES)]
    if beam_centre and "beam" in beam_centre:
        lines += ["", f"Beam centre, {beam_centre['images']} test images whose beam is on the image (px of the "
                  f"{beam_centre['side_px']}-px image):", "",
                  "| estimate | median error | 90th percentile | within 2 px (%) |", "|---|---|---|---|"]
        exported = ("refined by radial symmetry (`beam_centre` signature)" if "beam_network" in beam_centre
                    else "the network's (`beam_centre` signature)")
        for name, label in (("beam", exported),
                            ("beam_network", "the network's own, before the radial-symmetry refinement"),
                            ("beam_coarse", "coarse (backbone)")):
            if name in beam_centre:
                e = beam_centre[name]
                lines.append(f"| {label} | {e['median_px']:.1f} | {e['p90_px']:.1f} | {percent(e['within_2px'])} |")
    md_path = write_atomically(folder / "resnet_holdout.md", "\n".join(lines) + "\n")
    return json_path, md_path
