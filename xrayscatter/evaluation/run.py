"""``xrayscatter evaluate``: features → leave-one-run-out SVMs → report → attribute SavedModel.

    data (synthetic TFRecords, or a folder with labels.csv)
      → features of every feature set (SavedModel signatures, cached) and of the baselines (cached)
      → per feature set: leave-one-run-out one-vs-all LinearSVCs, AP per fold and attribute
        (and the hierarchical mode when evaluate.hierarchical)
      → on synthetic data, the ResNet's own outputs on the test split (the paper's Table 3 row)
      → SVMs of evaluate.export_feature_set trained on every image → saved_models/attributes/<version>/
      → reports/<name>/ (report.md, report.html, metrics.json, figures/)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation.baselines import baseline_features
from xrayscatter.evaluation.datasets import EvaluationData, load_evaluation_data
from xrayscatter.evaluation.export_attributes import export_attribute_model, fit_deployable_svms
from xrayscatter.evaluation.features import (DEFAULT_FEATURE_SETS_FOR_EXPORT, FeatureCache, feature_sets,
                                             model_fingerprint, newest_model_version, signature_outputs)
from xrayscatter.evaluation.protocol import COMBINATION_TEXT, CrossValidation, leave_one_run_out, summarize
from xrayscatter.evaluation.report import FEATURE_LABELS, ReportData, report_versions, write_report
from xrayscatter.evaluation.svm import LIBLINEAR_TOLERANCE
from xrayscatter.files import progress_bar
from xrayscatter.metrics import HOLDOUT_AP_RULE, average_precisions, mean_average_precision


def run_evaluation(config, data_dir: str | Path | None = None, report_name: str | None = None,
                   console: Console | None = None, export: bool | None = None) -> Path:
    """Evaluate the pipeline's features and baselines; write the report; export the attribute model.

    Args:
        config: the PipelineConfig.
        data_dir: a folder of detector images with labels.csv (default: ``evaluate.real_data_dir``,
            else the pipeline's synthetic TFRecords).
        report_name: folder name under ``evaluate.report_dir`` (default: the pipeline name).
        export: export the attribute model (``evaluate.export_feature_set``) to ``saved_models/attributes/``;
            None: for the pipeline's own simulated data, not for a folder of labelled files (a model trained
            on one user's folder should not become a default by surprise).

    Returns:
        The report folder.

    Raises:
        XrayscatterError: missing data set, labels.csv or SavedModel; a bad configuration.
    """
    ev = config.evaluate
    console = console or Console(stderr=True)
    threads = ev.threads or os.cpu_count() or 1
    timing: dict[str, float] = {}
    start = time.perf_counter()

    data = load_evaluation_data(config, data_dir)
    timing["load_data_s"] = time.perf_counter() - start
    for item in data.skipped:
        console.print(f"[yellow]skipped[/] {item['name']}: {item['reason']}")
    if data.unlisted_files:
        console.print(f"[yellow]{len(data.unlisted_files)} detector file(s) in {data.location} are not in "
                      f"labels.csv and were ignored[/]")
    console.print(f"evaluating {len(data)} images of {len(data.run_names)} runs, {len(data.attributes)} attributes "
                  f"({data.source}: {data.location})")
    hierarchical = ev.hierarchical and data.has_grouping(ev.hierarchy_attribute)
    if ev.hierarchical and not hierarchical:
        console.print(f"[yellow]hierarchical mode skipped[/]: '{ev.hierarchy_attribute}' is neither a label column nor "
                      f"a grouping of {data.location}; flat evaluation only")
    group = data.group_labels(ev.hierarchy_attribute) if hierarchical else None
    export_model = bool(ev.export_feature_set) and (data.source == "synthetic" if export is None else export)
    cache = FeatureCache(ev.cache_dir)

    with progress_bar("", elapsed=True, console=console, transient=True) as progress:
        step = time.perf_counter()
        matrices = feature_sets(ev.feature_sets, data, config, cache, progress)
        for name in ev.baselines:
            matrices[name] = baseline_features(name, data, config, cache, threads, progress)
        timing["features_s"] = time.perf_counter() - step
        _check_svm_memory(matrices, config)

        task = progress.add_task("leave-one-run-out SVMs", total=len(matrices) * len(data.run_names))
        results: dict[str, CrossValidation] = {}
        for name, matrix in matrices.items():
            progress.update(task, description=f"leave-one-run-out SVMs: {name}")
            results[name] = leave_one_run_out(matrix.values, matrix.block_sizes, data.labels, data.runs,
                                              ev.svm_c_grid, ev.inner_folds, threads, group_labels=group,
                                              on_fold_done=lambda: progress.advance(task))
        timing["svm_s"] = sum(r.seconds for r in results.values())

        uses_resnet = any("resnet" in s.split("+") for s in ev.feature_sets)
        holdout, holdout_rows, holdout_probabilities = (network_holdout(data, config, cache, progress) if uses_resnet
                                                        else (None, None, None))

        exported = None
        if export_model:
            step = time.perf_counter()
            exported = _export(matrices, results, data, config, threads, holdout, holdout_rows, holdout_probabilities)
            timing["export_s"] = time.perf_counter() - step

    metrics = {
        "name": report_name or config.name,
        "dataset": data.summary(),
        "protocol": _protocol(config, data, hierarchical),
        "feature_sets": {name: _feature_metrics(matrices[name], result, data)
                         for name, result in results.items()},
        "network_holdout": holdout,
        "export": exported if export_model else (
            {"skipped": "not asked for: a folder's evaluation exports its attribute model with --export"}
            if ev.export_feature_set else None),
        "config": config.to_dict(),
        "versions": report_versions(),
    }
    if hierarchical:
        metrics["hierarchical"] = {
            name: {**summarize(r.hierarchical.fold_ap, r.hierarchical.fold_status, r.hierarchical.scores,
                               data.labels, data.runs, data.attributes),
                   "group_accuracy": _nanmean(r.group_accuracy), "group_majority_rate": _nanmean(r.group_majority),
                   "group_classifier_folds": int(np.sum(r.group_classifier_used)),
                   "folds": int(np.sum(~np.isnan(r.group_accuracy)))}
            for name, r in results.items()}
    gallery_set = next((s for s in (ev.export_feature_set, *ev.feature_sets, *matrices) if s in results), None)
    timing["total_before_report_s"] = time.perf_counter() - start
    metrics["timing"] = timing
    report = write_report(ReportData(
        name=metrics["name"], metrics=metrics, attributes=data.attributes, labels=data.labels, names=data.names,
        run_names=[data.run_names[r] for r in data.runs], scores={n: r.scores for n, r in results.items()},
        gallery_feature_set=gallery_set, image_loader=data.image, gallery_size=ev.gallery_size),
        ev.report_dir)
    _print_summary(console, metrics, report)
    return report


SVM_MEMORY_LIMIT_BYTES = 16 << 30


def _check_svm_memory(matrices: dict, config) -> None:
    """Refuse a problem whose SVM matrices cannot fit: the Gram route holds images² float64 values,
    the direct route images × dims (a few copies of each)."""
    for name, matrix in matrices.items():
        images, dims = matrix.values.shape
        needed = 3 * 8 * images * min(images, dims)
        if needed > SVM_MEMORY_LIMIT_BYTES:
            raise XrayscatterError(
                f"{config.source or 'config'}: evaluating {images} images of {dims}-d '{name}' features needs about "
                f"{needed / 2**30:.0f} GiB for the SVMs; set evaluate.max_images (e.g. 3000, XMD's size)")


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _protocol(config, data: EvaluationData, hierarchical: bool) -> dict:
    ev = config.evaluate
    return {
        "folds": len(data.run_names),
        "fold_runs": data.run_names,
        "combination": COMBINATION_TEXT,
        "svm": (f"One LinearSVC per attribute (squared hinge, L2, dual='auto', tol={LIBLINEAR_TOLERANCE}); features "
                "standardised on the fold's training images, each block weighted by 1/sqrt(its width); C from "
                f"{sorted(ev.svm_c_grid)} per attribute and fold by pooled held-out AP of a {ev.inner_folds}-fold "
                "GroupKFold over the fold's training runs (ties: smaller C; no measurable AP: the grid's middle). "
                "Unknown labels are left out of training and of AP. Large feature sets are trained through the "
                "exact Gram-matrix (Cholesky) form of the same problem."),
        "svm_c_grid": sorted(ev.svm_c_grid),
        "inner_folds": ev.inner_folds,
        "hierarchical": hierarchical,
        "hierarchy_attribute": ev.hierarchy_attribute if hierarchical else None,
        "hierarchical_skipped": (f"'{ev.hierarchy_attribute}' is neither a label column nor a grouping of this data set"
                                 if ev.hierarchical and not hierarchical else None),
    }


def _feature_metrics(matrix, result: CrossValidation, data: EvaluationData) -> dict:
    summary = summarize(result.fold_ap, result.fold_status, result.scores, data.labels, data.runs, data.attributes)
    chosen, counts = np.unique(result.chosen_c[~np.isnan(result.chosen_c)], return_counts=True)
    summary.update({
        "label": FEATURE_LABELS.get(matrix.name, matrix.name),
        "dims": int(matrix.values.shape[1]),
        "block_sizes": list(matrix.block_sizes),
        "sources": matrix.sources,
        "from_cache": matrix.from_cache,
        "feature_seconds": matrix.seconds,
        "svm_seconds": result.seconds,
        "unconverged_fits": result.unconverged,
        "chosen_c_counts": {f"{c:g}": int(n) for c, n in zip(chosen, counts)},
        "folds": {
            "runs": data.run_names,
            "ap": [[None if np.isnan(v) else float(v) for v in row] for row in result.fold_ap],
            "status": [list(row) for row in result.fold_status],
        },
    })
    return summary


def network_holdout(data: EvaluationData, config, cache: FeatureCache, progress=None):
    """The ResNet's own sigmoid outputs on the test split, AP per attribute (the paper's Table 3 row).

    Only for synthetic data labelled with the network's 17 attributes; the hold-out AP rule of
    :mod:`xrayscatter.metrics` (an attribute whose test labels hold one class only has no AP).

    Returns:
        (summary dict, (n,) rows of ``data`` it scored, (n, 17) probabilities), or (None, None, None).
    """
    if data.source != "synthetic" or tuple(data.attributes) != ATTRIBUTES:
        return None, None, None
    rows = np.array([i for i, s in enumerate(data.splits) if s == "test"], dtype=np.int64)
    path = newest_model_version(config.resnet.output_dir, "resnet")
    if len(rows) == 0:
        return {"map": None, "model": str(path), "note": "no test-split image among the evaluated ones"}, None, None
    description = {"model": "resnet", "signature": "serving_default", "model_files": model_fingerprint(path),
                   "images": data.content_hash, "rows": FeatureCache.key({"rows": rows.tolist()})}
    cache_path = cache.path("resnet-probabilities", f"v{path.name}", cache.key(description))
    probabilities = cache.load(cache_path, len(rows))
    if probabilities is None:
        probabilities = signature_outputs(path, "serving_default", "probabilities", data,
                                          config.evaluate.feature_batch_size, rows, progress,
                                          "ResNet outputs (test split)")
        cache.save(cache_path, probabilities, description)
    ap = average_precisions(data.labels[rows], probabilities)
    per_attribute = {name: (float(ap[a]) if np.isfinite(ap[a]) else None) for a, name in enumerate(data.attributes)}
    summary = {"map": mean_average_precision(ap), "num_images": int(len(rows)),
               "num_attributes": int(np.isfinite(ap).sum()), "model": str(path), "per_attribute": per_attribute,
               "ap_rule": HOLDOUT_AP_RULE}
    return summary, rows, probabilities


HOLDOUT_COMPARISON_MEASURE = ("mAP over the evaluated test-split images, each attribute's AP pooled over all of them: "
                              "the attribute model's leave-one-run-out scores (each image scored by SVMs that never saw "
                              "its run) against the ResNet's own probabilities")


def holdout_comparison(feature_set: str, result: CrossValidation, holdout: dict | None, rows, probabilities,
                       labels: np.ndarray) -> dict | None:
    """The attribute model against the ResNet's own outputs on the same held-out images (``predict`` reads
    it to choose its default model), or None where the ResNet was not scored (real data, no test images)."""
    if holdout is None or rows is None:
        return None
    ours = mean_average_precision(average_precisions(labels[rows], result.scores[rows]))
    theirs = mean_average_precision(average_precisions(labels[rows], probabilities))
    return {"attributes_model_mAP": ours, "resnet_mAP": theirs, "feature_set": feature_set,
            "resnet_saved_model": holdout["model"], "num_images": int(len(rows)), "measure": HOLDOUT_COMPARISON_MEASURE,
            "better": None if ours is None or theirs is None else ("attributes" if ours > theirs else "resnet")}


def _export(matrices: dict, results: dict, data: EvaluationData, config, threads: int, holdout: dict | None,
            holdout_rows, holdout_probabilities) -> dict:
    """Train the export feature set's SVMs on every image and write saved_models/attributes/<version>/,
    with its held-out comparison against the ResNet."""
    ev = config.evaluate
    name = ev.export_feature_set
    if name not in matrices:
        name = next((n for n in DEFAULT_FEATURE_SETS_FOR_EXPORT if n in matrices), None)
    if name is None:
        return {"skipped": f"no SavedModel feature set evaluated (export_feature_set = '{ev.export_feature_set}')"}
    matrix = matrices[name]
    comparison = holdout_comparison(name, results[name], holdout, holdout_rows, holdout_probabilities, data.labels)
    svms = fit_deployable_svms(matrix.values, matrix.block_sizes, data.labels, data.runs, ev.svm_c_grid,
                               ev.inner_folds, threads)
    path = export_attribute_model(matrix, svms, data.attributes, config, data.summary(),
                                  extra_metadata={"holdout_comparison": comparison} if comparison else None)
    return {"path": str(path), "feature_set": name, "attributes": len(data.attributes),
            "thresholds": {a: float(t) for a, t in zip(data.attributes, svms.thresholds)},
            "svm_c": {a: float(c) for a, c in zip(data.attributes, svms.c)}, "holdout_comparison": comparison}


def _print_summary(console: Console, metrics: dict, report: Path) -> None:
    table = Table(title=f"mAP (%) — {metrics['dataset']['num_images']} images, {metrics['dataset']['num_runs']} runs")
    for column in ("feature set", "headline", "all attributes (Table 4)", "≥ 2 runs (Table 5)", "strict", "SVM s"):
        table.add_column(column, justify="left" if column == "feature set" else "right")
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, s in metrics["feature_sets"].items():
        table.add_row(name, fmt(s.get("map_headline")), fmt(s["map_paper"]), fmt(s["map_table5"]), fmt(s["map_strict"]),
                      f"{s['svm_seconds']:.1f}")
    console.print(table)
    if metrics.get("hierarchical"):
        for name, s in metrics["hierarchical"].items():
            flat = metrics["feature_sets"][name]["map_paper"]
            console.print(f"hierarchical {name}: {fmt(s['map_paper'])} (flat {fmt(flat)})")
    if metrics.get("network_holdout") and metrics["network_holdout"].get("map") is not None:
        console.print(f"ResNet's own outputs on the test split: mAP {fmt(metrics['network_holdout']['map'])}")
    if metrics.get("export") and "path" in metrics["export"]:
        console.print(f"attribute model: {metrics['export']['path']}")
        comparison = metrics["export"].get("holdout_comparison")
        if comparison and comparison["better"]:
            console.print(f"held-out mAP on the same {comparison['num_images']} images: attribute model "
                          f"{fmt(comparison['attributes_model_mAP'])}, ResNet {fmt(comparison['resnet_mAP'])} → "
                          f"'predict' uses the {'attribute model' if comparison['better'] == 'attributes' else 'ResNet'}")
        elif comparison is None:
            console.print("no held-out comparison with the ResNet (no test split): 'predict' keeps the ResNet")
    elif metrics.get("export") and "skipped" in metrics["export"]:
        console.print(f"attribute model not exported ({metrics['export']['skipped']}); 'predict' keeps its default")
    console.print(f"report: {report / 'report.html'}")
