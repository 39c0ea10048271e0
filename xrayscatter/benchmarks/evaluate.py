"""``xrayscatter bench evaluate``: the leave-one-run-out SVM stage of ``evaluate`` at XMD's size.

XMD (the paper's real data set) has 2,832 images in 13 runs with 98 attributes. The bench runs what
``xrayscatter evaluate -p pipelines/paper.toml`` runs after feature extraction, with that file's
settings: its C grid and inner folds, the hierarchical mode (a group SVM on ``hierarchy_attribute``,
then SVMs per predicted group), for every feature set and baseline it lists, each at its real width
(ResNet 2048 · width, autoencoder 21 cells × code, their concatenation as two blocks, bag of words
21 × codebook, LBP + PHOG 840). Feature extraction is excluded: a synthetic feature matrix of each
width stands in (a low-rank signal shared with the labels plus noise, runs shifted against each
other, prevalences from 1 % to 40 %, 18 % of attributes confined to one run as in XMD, 5 % unknown
labels; the group is constant within a run, as SAXS / WAXS is in XMD).

With ``folds`` < 13 only the first folds run and the whole is estimated as their time × 13 / folds
(said so in the output). Target: the whole SVM stage under 10 minutes on 2 cores.

Then the same settings on real features: the default pipeline's (ResNet, autoencoder, baselines from
its trained SavedModels on its test split, through the evaluation's feature cache) when a trained
default model exists; a clear line says it is skipped otherwise.

Side by side (``compare``), on one attribute of the first fold: LinearSVC on the raw rows versus the
same LinearSVC through the fold's Gram-matrix factor (what the evaluation does), with the largest
difference of their decision values.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from xrayscatter.benchmarks import Ratio, finish, print_conditions, results_table
from xrayscatter.evaluation.protocol import leave_one_run_out, summarize
from xrayscatter.evaluation.svm import LIBLINEAR_MAX_ITER, LIBLINEAR_TOLERANCE, FoldSpace, fit_linear_svms

TARGET_SECONDS = 600.0
SINGLE_RUN_FRACTION = 18 / 98  # XMD: 18 of 98 attributes occur in one run only
UNKNOWN_FRACTION = 0.05


def synthetic_signal(images: int, attributes: int, runs: int, seed: int = 0,
                     latent: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared signal: latent factors (images, latent) float32, labels (images, attributes) float32
    1/0/NaN and runs (images,) int64."""
    rng = np.random.default_rng(seed)
    run = np.sort(rng.integers(0, runs, images))
    run[:runs] = np.arange(runs)  # every run present
    run = np.sort(run)
    factors = rng.standard_normal((images, latent)).astype(np.float32) + 0.5 * rng.standard_normal(
        (runs, latent)).astype(np.float32)[run]
    labels = np.zeros((images, attributes), dtype=np.float32)
    for a in range(attributes):
        logit = factors @ rng.standard_normal(latent).astype(np.float32) * (3.0 / math.sqrt(latent))
        prevalence = float(np.exp(rng.uniform(np.log(0.01), np.log(0.4))))
        labels[:, a] = logit > np.quantile(logit, 1 - prevalence)
        if rng.random() < SINGLE_RUN_FRACTION:
            labels[run != rng.integers(runs), a] = 0.0
    labels[rng.random(labels.shape) < UNKNOWN_FRACTION] = np.nan
    return factors, labels, run.astype(np.int64)


def synthetic_features(factors: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """(images, dims) float32 features carrying the factors' signal plus unit noise."""
    rng = np.random.default_rng(seed)
    latent = factors.shape[1]
    loadings = rng.standard_normal((latent, dims)).astype(np.float32) / math.sqrt(latent)
    features = factors @ loadings
    features += rng.standard_normal(features.shape, dtype=np.float32)
    return features


def synthetic_problem(images: int, dims: int, attributes: int, runs: int, seed: int = 0,
                      latent: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (images, dims) float32, labels (images, attributes) float32 1/0/NaN, runs (images,) int64."""
    factors, labels, run = synthetic_signal(images, attributes, runs, seed, latent)
    return synthetic_features(factors, dims, seed + 1), labels, run


def _side_by_side(features: np.ndarray, labels: np.ndarray, runs: np.ndarray) -> dict:
    """One fold, one attribute: raw-rows LinearSVC vs the Gram-factor route."""
    from sklearn.svm import LinearSVC

    train, test = np.flatnonzero(runs != 0), np.flatnonzero(runs == 0)
    column = int(np.argmax(np.nansum(labels[train], axis=0)))  # the most frequent attribute: both classes
    known = ~np.isnan(labels[train, column])
    start = time.perf_counter()
    space = FoldSpace(features, (features.shape[1],), train)
    design = space.design(train, test)
    prepare = time.perf_counter() - start
    start = time.perf_counter()
    models = fit_linear_svms(design.fit, labels[train][:, [column]], np.array([1.0]))
    gram_fit = time.perf_counter() - start
    start = time.perf_counter()
    standardized = space.standardizer.transform(features)
    raw = LinearSVC(C=1.0, dual="auto", tol=LIBLINEAR_TOLERANCE, max_iter=LIBLINEAR_MAX_ITER)
    raw.fit(standardized[train][known], labels[train, column][known] > 0.5)
    raw_fit = time.perf_counter() - start
    difference = np.abs(models.decision(design.apply)[:, 0] - raw.decision_function(standardized[test])).max()
    return {"raw_fit_s": raw_fit, "gram_fit_s": gram_fit, "gram_prepare_s": prepare,
            "max_decision_difference": float(difference)}


class _EnoughFolds(Exception):
    """Raised from the fold callback to stop after the folds asked for."""


def feature_widths(config) -> dict[str, tuple[int, ...]]:
    """Block widths of every feature set and baseline of ``config.evaluate`` at their real sizes."""
    from xrayscatter.autoencoder.spm import num_cells
    from xrayscatter.evaluation.baselines import num_pyramid_cells
    from xrayscatter.resnet.model import feature_size

    single = {"resnet": feature_size(config.resnet.width_multiplier),
              "autoencoder": num_cells(config.autoencoder.spm_levels) * config.autoencoder.code_size}
    out = {}
    for name in config.evaluate.feature_sets:
        out[name] = tuple(single[part] for part in name.split("+"))
    for name in config.evaluate.baselines:
        out[name] = ((num_pyramid_cells() * config.evaluate.bow_codebook_size,) if name == "bow"
                     else (LBPPHOG_DIMS,))
    return out


LBPPHOG_DIMS = 840  # baselines.py: 21 cells × (10 + 18 LBP bins) + 21 × 12 PHOG bins


PROFILED = ("__init__", "design", "choose_c", "fit_linear_svms", "decision", "_hierarchical_scores",
            "fold_average_precision")


def evaluation_profile(profiler, top: int = 8) -> list[dict]:
    """Cumulative seconds of the evaluation's own stages (``evaluation/svm.py``, ``protocol.py``) in a profile."""
    import pstats

    entries = []
    for (filename, line, function), (_, calls, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if "evaluation" in filename and function in PROFILED:
            entries.append({"function": f"{Path(filename).name}:{line}({function})", "calls": calls,
                            "cumulative_s": cumulative})
    return sorted(entries, key=lambda e: -e["cumulative_s"])[:top]


def _run_folds(features, blocks, labels, runs, group, ev, threads, folds: int, console, profile: bool = False) -> dict:
    """``leave_one_run_out`` with the settings of ``ev``; stopped after ``folds`` folds (estimate) if fewer.
    With ``profile``, also where the time went (cProfile of the evaluation's stages)."""
    import cProfile

    num_runs = int(runs.max()) + 1
    profiler = cProfile.Profile() if profile else None
    times, cpu_start, start = [], time.process_time(), time.perf_counter()

    def fold_done():
        times.append(time.perf_counter() - start)
        if len(times) >= folds < num_runs:
            raise _EnoughFolds

    result = None
    if profiler is not None:
        profiler.enable()
    try:
        result = leave_one_run_out(features, blocks, labels, runs, ev.svm_c_grid, ev.inner_folds, threads,
                                   group_labels=group if ev.hierarchical else None, on_fold_done=fold_done)
    except _EnoughFolds:
        pass
    finally:
        if profiler is not None:
            profiler.disable()
    cpu = time.process_time() - cpu_start
    measured = times[-1]
    out = {"folds_run": len(times), "folds": num_runs, "measured_s": measured, "cpu_s": cpu,
           "seconds": measured * num_runs / len(times), "estimated": len(times) < num_runs}
    if profiler is not None:
        out["profile"] = evaluation_profile(profiler)
    if result is not None:
        summary = summarize(result.fold_ap, result.fold_status, result.scores, labels, runs,
                            tuple(f"a{i}" for i in range(labels.shape[1])))
        out.update(map_paper=summary["map_paper"], unconverged_fits=result.unconverged)
    return out


def synthetic_sets(images: int, attributes: int, runs: int, seed: int):
    """A maker of each set's features (blocks made once, on one shared signal), labels, runs and groups."""
    factors, labels, run = synthetic_signal(images, attributes, runs, seed)
    group = np.random.default_rng(seed).random(runs)[run] < 0.6  # constant within a run, as SAXS / WAXS in XMD
    made: dict[tuple[int, int], np.ndarray] = {}

    def features(blocks: tuple[int, ...]) -> np.ndarray:
        parts = []
        for i, width in enumerate(blocks):
            if (width, i) not in made:
                made[(width, i)] = synthetic_features(factors, width, seed + 1 + 7 * i + width)
            parts.append(made[(width, i)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    return features, labels, run, group.astype(np.float64)


def bench_evaluate(config, images: int = 2832, attributes: int = 98, runs: int = 13, folds: int = 0,
                   threads: int = 0, seed: int = 0, compare: bool = True, real_pipeline: str | None = None,
                   json_path: str | Path | None = None, console: Console | None = None) -> dict:
    """Time the paper's leave-one-run-out SVM stage on XMD-sized synthetic features (and on real ones).

    Args:
        config: the pipeline whose ``[evaluate]`` settings and feature widths are used (``pipelines/paper.toml``).
        folds: run only this many of the ``runs`` folds and estimate the whole (0: all).
        real_pipeline: also on this pipeline's real features when its trained models exist (None: no).

    Returns:
        dict with per-set ``sets`` (seconds, estimated or not, CPU), ``seconds`` (all sets),
        ``real`` (the same on real features, or the reason it was skipped), ``ratios``.
    """
    console = console or Console()
    started = print_conditions(console, "evaluate")
    ev = config.evaluate
    threads = threads or os.cpu_count() or 1
    folds = folds or runs
    widths = feature_widths(config)
    console.print(f"pipeline {config.name}: C grid {list(ev.svm_c_grid)}, {ev.inner_folds} inner folds, hierarchical "
                  f"{'on (' + ev.hierarchy_attribute + ')' if ev.hierarchical else 'off'}; {images} images, "
                  f"{attributes} attributes, {runs} runs, {threads} threads; sets "
                  + ", ".join(f"{n} {'+'.join(str(w) for w in b)}-d" for n, b in widths.items()), highlight=False)
    make, labels, run, group = synthetic_sets(images, attributes, runs, seed)
    sets, comparison = {}, {}
    for name, blocks in widths.items():
        with console.status(f"{name}: {sum(blocks)}-d, leave-one-run-out ({folds} of {runs} folds)"):
            features = make(blocks)
            if compare and not comparison and len(blocks) == max(len(b) for b in widths.values()):
                comparison = _side_by_side(features, labels, run)
            largest = sum(blocks) == max(sum(b) for b in widths.values())  # profiled: where the time goes
            sets[name] = {"dims": int(sum(blocks)), **_run_folds(features, blocks, labels, run, group, ev, threads,
                                                                  folds, console, profile=largest)}
        del features
        s = sets[name]
        console.print(f"  {name}: {s['seconds']:.0f} s{' (estimated from ' + str(s['folds_run']) + ' folds)' if s['estimated'] else ''}"
                      f", {s['cpu_s'] / max(s['measured_s'], 1e-9):.2f} cores busy", highlight=False)
    total = sum(s["seconds"] for s in sets.values())
    estimated = any(s["estimated"] for s in sets.values())
    rows = [(name, f"{s['dims']:,}", f"{s['seconds']:.1f}", "yes" if s["estimated"] else "no",
             f"{s['cpu_s'] / max(s['measured_s'], 1e-9):.2f}",
             f"{100 * s['map_paper']:.1f}" if s.get("map_paper") is not None else "–") for name, s in sets.items()]
    rows.append(("all sets (the SVM stage of evaluate)", "", f"{total:.1f}", "yes" if estimated else "no", "", ""))
    console.print(results_table(
        f"leave-one-run-out SVM stage at XMD size, settings of pipeline {config.name} (synthetic features)",
        ("feature set", "dims", "seconds", f"estimated from {folds} folds", "cores busy", "mAP %"), rows))
    profiled = next((n for n, st in sets.items() if st.get("profile")), None)
    if profiled and total > TARGET_SECONDS:
        console.print(results_table(
            f"where the time goes: {profiled}, {sets[profiled]['folds_run']} fold(s) (cProfile; __init__ = the "
            f"fold's standardised Gram matrix and its factor, choose_c = the inner C search)",
            ("function", "calls", "cumulative s"),
            [(e["function"], str(e["calls"]), f"{e['cumulative_s']:.1f}") for e in sets[profiled]["profile"]]))
    if comparison:
        console.print(f"one fit on raw rows {comparison['raw_fit_s']:.2f} s vs through the Gram factor "
                      f"{comparison['gram_fit_s']:.2f} s (+ {comparison['gram_prepare_s']:.1f} s per fold for K "
                      f"and its Cholesky): {comparison['raw_fit_s'] / max(comparison['gram_fit_s'], 1e-9):.0f}×; "
                      f"max |decision difference| {comparison['max_decision_difference']:.2e}", highlight=False)
    real = bench_real_features(real_pipeline, ev, threads, folds, console) if real_pipeline else {
        "skipped": "not asked for"}
    ratios = [Ratio("evaluate", f"SVM stage of evaluate -p {config.name} at XMD size, all {len(sets)} sets"
                    + (" (estimated)" if estimated else ""), total, TARGET_SECONDS, at_most=True, unit=" s",
                    note=f"synthetic features; {folds} of {runs} folds timed" if estimated else "synthetic features")]
    if real.get("seconds") is not None:
        ratios.append(Ratio("evaluate", f"the same settings on the real features of {real['pipeline']}",
                            real["seconds"], TARGET_SECONDS, at_most=True, unit=" s",
                            note=f"{real['images']} images, {real['runs']} runs"))
    else:
        ratios.append(Ratio("evaluate", f"the same settings on real features ({real_pipeline or 'none'})", None,
                            TARGET_SECONDS, at_most=True, unit=" s", note=real.get("skipped", "")))
    result = {"pipeline": config.name, "images": images, "attributes": attributes, "runs": runs, "threads": threads,
              "c_grid": list(ev.svm_c_grid), "inner_folds": ev.inner_folds, "hierarchical": ev.hierarchical,
              "folds_timed": folds, "sets": sets, "seconds": total, "estimated": estimated, "comparison": comparison,
              "real": real}
    return finish(console, result, ratios, json_path, started)


def bench_real_features(pipeline: str, ev, threads: int, folds: int, console: Console) -> dict:
    """The SVM stage with ``ev``'s settings on ``pipeline``'s real features, if its trained models exist."""
    from xrayscatter.config import load_config
    from xrayscatter.dataset import dataset_dir
    from xrayscatter.evaluation.baselines import baseline_features
    from xrayscatter.evaluation.datasets import load_evaluation_data
    from xrayscatter.evaluation.features import FeatureCache, feature_sets
    from xrayscatter.saved_model import newest_version

    config = load_config(pipeline)
    needed = {part for name in config.evaluate.feature_sets for part in name.split("+")}
    folders = {"resnet": config.resnet.output_dir, "autoencoder": config.autoencoder.output_dir}
    missing = [f"{folders[m]}" for m in sorted(needed) if newest_version(folders[m]) is None]
    if not dataset_dir(config).is_dir():
        missing.append(str(dataset_dir(config)))
    if missing:
        reason = f"skipped: no trained {config.name} model or data set ({', '.join(missing)} missing)"
        console.print(f"real features of {pipeline}: {reason}", highlight=False)
        return {"pipeline": config.name, "skipped": reason}
    with console.status(f"real features of {pipeline} (feature cache {config.evaluate.cache_dir})"):
        data = load_evaluation_data(config)
        cache = FeatureCache(config.evaluate.cache_dir)
        matrices = feature_sets(config.evaluate.feature_sets, data, config, cache)
        for name in config.evaluate.baselines:
            matrices[name] = baseline_features(name, data, config, cache, threads)
    group = data.group_labels(ev.hierarchy_attribute) if ev.hierarchical else None
    sets = {}
    for name, matrix in matrices.items():
        with console.status(f"real {name}: leave-one-run-out"):
            sets[name] = {"dims": int(matrix.values.shape[1]),
                          **_run_folds(matrix.values, matrix.block_sizes, data.labels, data.runs, group, ev, threads,
                                       folds, console)}
    total = sum(s["seconds"] for s in sets.values())
    console.print(results_table(f"the same settings on the real features of {pipeline}: {len(data)} images, "
                                f"{len(data.run_names)} runs, {len(data.attributes)} attributes",
                                ("feature set", "dims", "seconds", "mAP %"),
                                [(n, f"{s['dims']:,}", f"{s['seconds']:.1f}",
                                  f"{100 * s['map_paper']:.1f}" if s.get("map_paper") is not None else "–")
                                 for n, s in sets.items()] + [("all sets", "", f"{total:.1f}", "")]))
    return {"pipeline": config.name, "images": len(data), "runs": len(data.run_names), "sets": sets, "seconds": total}
