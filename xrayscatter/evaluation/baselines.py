"""The paper's hand-crafted baselines, evaluated on the same folds as the deep features.

Both start from the one normalisation every stage uses
(:func:`xrayscatter.normalization.to_model_input`: log-scaled counts, missing pixels 0, padded
square, resized to ``evaluate.baseline_image_size``), so they see what the networks see.

``bow`` — bag of words with a spatial pyramid (the paper's Table 3, 67.1; Lazebnik et al. 2006):
    dense DAISY descriptors (``skimage.feature.daisy``: gradient-orientation histograms on
    rings around each grid point, 8 orientations, 2 rings × 6 histograms + centre = 104 dims)
    plus the local mean and standard deviation of the log counts (gradients alone cannot tell
    weak from strong scattering or a high background); a ``MiniBatchKMeans`` codebook of
    ``bow_codebook_size`` words fitted on a sample of descriptors of the evaluated images
    (unsupervised: labels are never used, as the autoencoder never sees them either); hard
    assignment; word histograms in the cells of a 1×1, 2×2, 4×4 pyramid, each level's
    histograms normalised by the number of descriptors → 21·k dims.

``lbpphog`` — Kiapour et al., WACV 2014 (51.5 on XMD):
    uniform local-binary-pattern histograms (``skimage.feature.local_binary_pattern``, P=8/R=1
    and P=16/R=2: 10 + 18 bins) in the same 21 pyramid cells, each cell's histogram summing to 1,
    plus the pyramid histogram of oriented gradients (``skimage.feature.hog``, 12 unsigned
    orientations, magnitude-weighted votes, 1×1, 2×2, 4×4 cells, each level L1-normalised as
    one block) → 21·28 + 21·12 = 840 dims.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.ndimage import uniform_filter
from skimage.feature import daisy, hog, local_binary_pattern
from threadpoolctl import threadpool_limits

from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation.features import FeatureCache, FeatureMatrix

BASELINES = ("bow", "lbpphog")
PYRAMID_LEVELS = (1, 2, 4)  # cells per side: 1 + 4 + 16 = 21 cells
DAISY = {"step": 6, "radius": 8, "rings": 2, "histograms": 6, "orientations": 8}
DESCRIPTORS_PER_IMAGE_FOR_CODEBOOK = 100
CODEBOOK_SAMPLE_LIMIT = 60_000
LBP_SETTINGS = ((8, 1), (16, 2))  # (points P, radius R); uniform patterns have P + 2 values
HOG_ORIENTATIONS = 12


def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W) raw counts → (B, size, size) float32 in [0, ~1], the networks' normalisation."""
    import tensorflow as tf

    from xrayscatter.normalization import to_model_input

    return to_model_input(tf.constant(images, tf.float32), size).numpy()[..., 0]


def pyramid_cells(rows: np.ndarray, cols: np.ndarray, size: int, levels=PYRAMID_LEVELS) -> np.ndarray:
    """Cell index of each point at each pyramid level.

    Args:
        rows, cols: (P,) pixel coordinates in [0, size).

    Returns:
        (len(levels), P) int64; at a level of n cells per side, cell = row_cell · n + col_cell,
        offset so that the cells of all levels are numbered 0 … 20 consecutively.
    """
    out, offset = [], 0
    for n in levels:
        r = np.minimum((rows * n) // size, n - 1)
        c = np.minimum((cols * n) // size, n - 1)
        out.append(offset + r * n + c)
        offset += n * n
    return np.stack(out).astype(np.int64)


def num_pyramid_cells(levels=PYRAMID_LEVELS) -> int:
    return sum(n * n for n in levels)


# --------------------------------------------------------------------------- bag of words
def bow_descriptors(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense local descriptors of one preprocessed image.

    Args:
        image: (S, S) float32 normalised log counts.

    Returns:
        descriptors (P, 106) float32 (DAISY 104 + local mean + local std), and the (P,) rows and
        cols of their centres in pixels.
    """
    grid = daisy(image, **DAISY)  # (gy, gx, 104); centres at radius + step · k
    gy, gx = grid.shape[:2]
    rows = DAISY["radius"] + DAISY["step"] * np.arange(gy)
    cols = DAISY["radius"] + DAISY["step"] * np.arange(gx)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    window = 2 * DAISY["radius"] + 1
    local_mean = uniform_filter(image, window, mode="nearest")
    local_sq = uniform_filter(image * image, window, mode="nearest")
    local_std = np.sqrt(np.maximum(local_sq - local_mean ** 2, 0.0))
    descriptors = np.concatenate([grid.reshape(gy * gx, -1), local_mean[rr, cc].reshape(-1, 1),
                                  local_std[rr, cc].reshape(-1, 1)], axis=1).astype(np.float32)
    return descriptors, rr.ravel(), cc.ravel()


def spm_word_histograms(words: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int,
                        codebook_size: int) -> np.ndarray:
    """Visual-word histograms of the 21 pyramid cells → (21 · k,) float32, each level summing to 1."""
    cells = pyramid_cells(rows, cols, size)
    hist = np.zeros((num_pyramid_cells(), codebook_size), dtype=np.float64)
    for level_cells in cells:
        np.add.at(hist, (level_cells, words), 1.0)
    hist /= max(len(words), 1)
    return hist.ravel().astype(np.float32)


def bow_features(preprocessed: np.ndarray, codebook_size: int, seed: int, threads: int = 1,
                 on_image_done=None) -> np.ndarray:
    """(N, S, S) preprocessed images → (N, 21 · k) float32 spatial-pyramid bag-of-words features."""
    from sklearn.cluster import MiniBatchKMeans

    size = preprocessed.shape[1]
    described = _map(lambda image: bow_descriptors(image), preprocessed, threads, on_image_done)
    rng = np.random.default_rng(seed)
    per_image = max(1, min(DESCRIPTORS_PER_IMAGE_FOR_CODEBOOK, CODEBOOK_SAMPLE_LIMIT // max(len(described), 1)))
    sample = np.concatenate([d[rng.choice(len(d), min(per_image, len(d)), replace=False)] for d, _, _ in described])
    if len(sample) < codebook_size:
        raise XrayscatterError(f"bag of words: only {len(sample)} descriptors for a codebook of {codebook_size} "
                               "words; lower evaluate.bow_codebook_size")
    # One thread: k-means' OpenMP threads slow it down 10× or more when the cores are shared.
    with threadpool_limits(1):
        kmeans = MiniBatchKMeans(n_clusters=codebook_size, batch_size=4096, n_init=1, random_state=seed)
        kmeans.fit(sample)
        words = kmeans.predict(np.concatenate([d for d, _, _ in described]))
    ends = np.cumsum([len(d) for d, _, _ in described])
    return np.stack([spm_word_histograms(w, r, c, size, codebook_size)
                     for w, (_, r, c) in zip(np.split(words, ends[:-1]), described)])


# --------------------------------------------------------------------------- lbpphog
def lbpphog_vector(image: np.ndarray) -> np.ndarray:
    """One preprocessed (S, S) image → (840,) float32: pyramid LBP histograms + PHOG."""
    size = image.shape[0]
    grey = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)  # LBP compares integer grey levels
    rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cells = pyramid_cells(rr.ravel(), cc.ravel(), size)
    parts = []
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(grey, points, radius, method="uniform").astype(np.int64).ravel()
        bins = points + 2
        hist = np.zeros((num_pyramid_cells(), bins))
        for level_cells in cells:
            np.add.at(hist, (level_cells, codes), 1.0)
        hist /= hist.sum(axis=1, keepdims=True)
        parts.append(hist.ravel())
    for n in PYRAMID_LEVELS:
        cell = size // n
        parts.append(hog(image[:cell * n, :cell * n], orientations=HOG_ORIENTATIONS, pixels_per_cell=(cell, cell),
                         cells_per_block=(n, n), block_norm="L1", feature_vector=True))
    return np.concatenate(parts).astype(np.float32)


def lbpphog_features(preprocessed: np.ndarray, threads: int = 1, on_image_done=None) -> np.ndarray:
    """(N, S, S) preprocessed images → (N, 840) float32."""
    return np.stack(_map(lbpphog_vector, preprocessed, threads, on_image_done))


def _map(function, images: np.ndarray, threads: int, on_image_done) -> list:
    """``function`` over images, in order; skimage's loops release the GIL for much of their work."""
    def run(image):
        out = function(image)
        if on_image_done is not None:
            on_image_done()
        return out

    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(run, images))
    return [run(image) for image in images]


# --------------------------------------------------------------------------- cached entry point
def baseline_features(name: str, data, config, cache: FeatureCache, threads: int = 1, progress=None) -> FeatureMatrix:
    """Features of baseline ``name`` for every image, from the cache if possible."""
    if name not in BASELINES:
        raise XrayscatterError(f"{config.source or 'config'}: unknown evaluate.baselines entry '{name}' "
                               f"(known: {', '.join(BASELINES)})")
    ev = config.evaluate
    size = ev.baseline_image_size
    settings = {"baseline": name, "image_size": size, "pyramid": list(PYRAMID_LEVELS)}
    if name == "bow":
        settings.update(daisy=DAISY, codebook_size=ev.bow_codebook_size, seed=config.seed,
                        per_image=DESCRIPTORS_PER_IMAGE_FOR_CODEBOOK, sample_limit=CODEBOOK_SAMPLE_LIMIT)
    else:
        settings.update(lbp=[list(s) for s in LBP_SETTINGS], hog_orientations=HOG_ORIENTATIONS)
    description = {**settings, "images": data.content_hash, "num_images": len(data)}
    cache_path = cache.path(name, f"s{size}", cache.key(description))
    source = {"model": name, "settings": settings, "cache_file": str(cache_path)}
    values = cache.load(cache_path, len(data))
    if values is not None:
        return FeatureMatrix(name, values, (values.shape[1],), [source], from_cache=True)

    start = time.perf_counter()
    task = progress.add_task(f"{name} baseline", total=2 * len(data)) if progress is not None else None

    def advance():
        if task is not None:
            progress.advance(task)

    preprocessed = np.zeros((len(data), size, size), dtype=np.float32)
    for indices, batch in data.batches(ev.feature_batch_size):
        preprocessed[indices] = preprocess(batch, size)
        for _ in indices:
            advance()
    if name == "bow":
        values = bow_features(preprocessed, ev.bow_codebook_size, config.seed, threads, advance)
    else:
        values = lbpphog_features(preprocessed, threads, advance)
    if task is not None:
        progress.remove_task(task)
    cache.save(cache_path, values, description)
    return FeatureMatrix(name, values, (values.shape[1],), [source], seconds=time.perf_counter() - start)
