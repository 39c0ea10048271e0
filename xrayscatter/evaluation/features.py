"""Image features for the SVMs, from the SavedModels' signatures, cached on disk.

=======================  ==================================================================
feature set              what
=======================  ==================================================================
``resnet``               ``features_15crop`` of ``saved_models/resnet/<newest>/`` (2048·w)
``autoencoder``          ``features_spm`` of ``saved_models/autoencoder/<newest>/`` (21·code)
``resnet+autoencoder``   both, each row L2-normalised per block, then concatenated
=======================  ==================================================================

Per-block normalisation: the SPM block sums soft assignments over every patch of the image,
so its scale grows with the image area, while the ResNet block is an average; dividing each
block by its own L2 norm makes both scale-free before they meet. The SVM stage then
standardises every feature and weights each block by 1/sqrt(its width)
(:mod:`xrayscatter.evaluation.svm`), so neither block dominates by having more dims.

Cache: ``<evaluate.cache_dir>/<kind>-v<version>-<key>.npz`` where the key hashes the model's
files (``saved_model.pb``, variable index), the signature and the data set's image content, so a
second ``evaluate`` on the same images and models reads the features instead of recomputing them,
and a retrained model or a changed image never reuses stale ones. npz only (no pickle).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrayscatter.errors import XrayscatterError
from xrayscatter.files import atomic_path
from xrayscatter.saved_model import latest_saved_model

FEATURE_SETS = ("resnet", "autoencoder", "resnet+autoencoder")
DEFAULT_FEATURE_SETS_FOR_EXPORT = ("resnet+autoencoder", "resnet", "autoencoder")  # preference order
# feature set → (model, signature); the model's folder is config.<model>.output_dir
MODEL_SIGNATURES = {"resnet": ("resnet", "features_15crop"), "autoencoder": ("autoencoder", "features_spm")}
_TRAIN_COMMAND = {"resnet": "xrayscatter train resnet", "autoencoder": "xrayscatter train autoencoder"}


@dataclass
class FeatureMatrix:
    """One feature set's features of every image.

    Attributes:
        name: feature set name.
        values: (N, D) float32.
        block_sizes: widths of the concatenated blocks (one block for a single source).
        sources: what produced each block ({"model", "path", "version", "signature", ...}).
        from_cache: whether every block was read from the cache.
        seconds: time spent computing (0 when cached).
    """

    name: str
    values: np.ndarray
    block_sizes: tuple[int, ...]
    sources: list[dict] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------- models
def newest_model_version(model_dir: str | Path, model: str) -> Path:
    """The newest SavedModel version of ``model`` (``saved_model.latest_saved_model``).

    Raises:
        XrayscatterError: none there (says which command makes one).
    """
    return latest_saved_model(model_dir, f"run '{_TRAIN_COMMAND.get(model, 'train')}' first, or drop the feature "
                                         "set from evaluate.feature_sets")


def model_fingerprint(path: str | Path) -> str:
    """sha256 hex of a SavedModel's graph and variable index (changes whenever the model does)."""
    path = Path(path)
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "variables/variables.index"):
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- cache
class FeatureCache:
    """npz files of feature matrices, keyed by what produced them and the images they describe."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(description: dict) -> str:
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()

    def path(self, kind: str, tag: str, key: str) -> Path:
        return self.directory / f"{kind}-{tag}-{key[:20]}.npz"

    def load(self, path: Path, num_images: int) -> np.ndarray | None:
        """The cached (num_images, D) float32 matrix, or None if absent or unreadable."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                values = archive["values"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache file is recomputed and overwritten
        return values if values.ndim == 2 and values.shape[0] == num_images else None

    def save(self, path: Path, values: np.ndarray, description: dict) -> None:
        """Write atomically (``files.atomic_path``)."""
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            np.savez(f, values=values.astype(np.float32), description=np.array(json.dumps(description)))


# --------------------------------------------------------------------------- extraction
def signature_outputs(model_path: Path, signature: str, output_key: str, data, batch_size: int,
                      indices: np.ndarray | None = None, progress=None, description: str = "") -> np.ndarray:
    """Run a SavedModel signature (input ``images`` raw counts) over the data set's images.

    Args:
        model_path: SavedModel folder.
        signature: signature name, e.g. ``features_15crop``.
        output_key: the output to keep, e.g. ``features``.
        data: an :class:`~xrayscatter.evaluation.datasets.EvaluationData`.
        batch_size: images per call (consecutive images of equal shape are batched).
        indices: which images (default all), in this order.
        progress: a ``rich.progress.Progress`` to show a bar in, or None.

    Returns:
        (n, D) float32.

    Raises:
        XrayscatterError: the SavedModel lacks the signature or the output.
    """
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_path))
    except Exception as e:  # noqa: BLE001 - TF raises many types for a broken SavedModel
        raise XrayscatterError(f"{model_path}: cannot load the SavedModel ({type(e).__name__}: {e})") from None
    if signature not in loaded.signatures:
        raise XrayscatterError(f"{model_path}: no '{signature}' signature (it has {sorted(loaded.signatures)})")
    function = loaded.signatures[signature]
    if output_key not in function.structured_outputs:
        raise XrayscatterError(f"{model_path}: signature '{signature}' has no output '{output_key}' "
                               f"(it has {sorted(function.structured_outputs)})")
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    task = progress.add_task(description or f"{model_path.parent.name}/{signature}", total=len(indices)) \
        if progress is not None else None
    rows: list[np.ndarray] = []
    for _, batch in data.batches(batch_size, indices):
        rows.append(function(images=tf.constant(batch, tf.float32))[output_key].numpy().astype(np.float32))
        if task is not None:
            progress.advance(task, len(batch))
    if task is not None:
        progress.remove_task(task)
    return np.concatenate(rows, axis=0)


def model_features(feature_set: str, data, config, cache: FeatureCache, progress=None) -> FeatureMatrix:
    """Features of one model's signature (``resnet`` or ``autoencoder``), from the cache if possible."""
    import time

    model, signature = MODEL_SIGNATURES[feature_set]
    path = newest_model_version(getattr(config, model).output_dir, model)
    description = {"model": model, "signature": signature, "model_files": model_fingerprint(path),
                   "images": data.content_hash, "num_images": len(data)}
    cache_path = cache.path(feature_set, f"v{path.name}", cache.key(description))
    source = {"model": model, "path": str(path), "version": int(path.name), "signature": signature,
              "cache_file": str(cache_path)}
    values = cache.load(cache_path, len(data))
    if values is not None:
        return FeatureMatrix(feature_set, values, (values.shape[1],), [source], from_cache=True)
    start = time.perf_counter()
    values = signature_outputs(path, signature, "features", data, config.evaluate.feature_batch_size,
                               progress=progress, description=f"{feature_set} features ({signature})")
    if not np.all(np.isfinite(values)):
        raise XrayscatterError(f"{path}: signature '{signature}' returned non-finite features")
    cache.save(cache_path, values, description)
    return FeatureMatrix(feature_set, values, (values.shape[1],), [source],
                         seconds=time.perf_counter() - start)


def l2_normalize_rows(values: np.ndarray) -> np.ndarray:
    """(N, D) → (N, D) float32 with unit-L2 rows (all-zero rows stay zero)."""
    norms = np.linalg.norm(values.astype(np.float64), axis=1, keepdims=True)
    return (values / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def concatenate_blocks(name: str, parts: list[FeatureMatrix]) -> FeatureMatrix:
    """Each part's rows L2-normalised, then side by side; block sizes kept for the SVM's weighting."""
    values = np.concatenate([l2_normalize_rows(p.values) for p in parts], axis=1)
    return FeatureMatrix(name, values, tuple(p.values.shape[1] for p in parts),
                         [s for p in parts for s in p.sources], from_cache=all(p.from_cache for p in parts),
                         seconds=sum(p.seconds for p in parts))


def feature_sets(names, data, config, cache: FeatureCache, progress=None) -> dict[str, FeatureMatrix]:
    """The requested feature sets (each model's signature is run at most once)."""
    unknown = [n for n in names if n not in FEATURE_SETS]
    if unknown:
        raise XrayscatterError(f"{config.source or 'config'}: unknown evaluate.feature_sets {unknown} "
                               f"(known: {', '.join(FEATURE_SETS)})")
    single: dict[str, FeatureMatrix] = {}
    for name in names:
        for part in name.split("+"):
            if part not in single:
                single[part] = model_features(part, data, config, cache, progress)
    out = {}
    for name in names:
        parts = name.split("+")
        out[name] = single[name] if len(parts) == 1 else concatenate_blocks(name, [single[p] for p in parts])
    return out
