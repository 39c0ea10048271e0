"""Evaluation reports: ``reports/<name>/report.md``, a self-contained ``report.html`` and ``metrics.json``.

What a report holds (Wang et al., WACV 2017, as this run measured it):

* Tables 3, 4 and 5 with the paper's figures beside the measured ones;
* per-attribute AP of every feature set; precision–recall curves (Fig. 8); the AP gap of each
  deep feature set against lbpphog per attribute (Fig. 9); a disagreement gallery per attribute
  (Fig. 10: the top-scoring negatives and the lowest-scoring positives, listed by file so a person
  can re-check those labels);
* the protocol (how fold APs are combined), the configuration, the data set summary and the
  package versions.

The report is assembled from one list of blocks rendered twice (Markdown with PNG files beside it,
HTML with the same PNGs embedded), so the two never disagree. Nothing half-written is visible: the
figures folder is written under a temporary name and renamed into place, each file atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from xrayscatter.attributes import slug
from xrayscatter.files import write_atomically
from xrayscatter.provenance import package_versions

# The paper's numbers (mAP, %), Wang et al., WACV 2017.
PAPER_TABLE3 = {"bow": 67.1, "resnet": 77.1}  # synthetic hold-out, 17 attributes
PAPER_TABLE4 = {"lbpphog": 51.5, "resnet": 59.5, "autoencoder": 57.9, "resnet+autoencoder": 61.1}  # XMD, 98
PAPER_TABLE4_HIERARCHICAL = {"lbpphog": 55.5}  # Kiapour et al.'s SAXS/WAXS-first classifier
PAPER_TABLE5 = {"resnet": 59.03, "autoencoder": 56.00, "resnet+autoencoder": 59.95}  # XMD, 80 attributes in ≥ 2 runs
FEATURE_LABELS = {
    "bow": "k-means + Bag-of-Words + Spatial Pyramid",
    "lbpphog": "lbpphog (Kiapour et al.)",
    "resnet": "Residual network",
    "autoencoder": "Patch autoencoder",
    "resnet+autoencoder": "Residual network + Patch autoencoder",
}
DEEP_FEATURE_SETS = ("resnet", "autoencoder", "resnet+autoencoder")
PR_CURVES_PER_FIGURE = 20
FIGURES = "figures"
OWN_FILES = ("report.md", "report.html", "metrics.json", FIGURES)
VERSIONED_PACKAGES = ("numpy", "scipy", "sklearn", "skimage", "tensorflow", "keras", "matplotlib", "fabio",
                      "tifffile")


@dataclass
class ReportData:
    """Everything a report shows.

    Attributes:
        name: report name (folder under the report root).
        metrics: JSON-able results: ``dataset`` (summary), ``protocol``, ``feature_sets``
            ({name: protocol.summarize(...) + extras}), optionally ``hierarchical``, ``network_holdout``,
            ``export``, plus ``config`` and ``timing``.
        attributes: A attribute names.
        labels: (N, A) float 1 / 0 / NaN.
        names: N image names (files).
        run_names: name of each image's run, N entries.
        scores: {feature set: (N, A) out-of-fold decision values}.
        gallery_feature_set: the feature set whose scores pick the disagreement gallery.
        image_loader: index → (H, W) raw counts, for gallery thumbnails (None: list only).
        gallery_size: images per gallery row.
    """

    name: str
    metrics: dict
    attributes: tuple[str, ...]
    labels: np.ndarray
    names: list[str]
    run_names: list[str]
    scores: dict[str, np.ndarray]
    gallery_feature_set: str | None = None
    image_loader: Callable[[int], np.ndarray] | None = None
    gallery_size: int = 4
    figures: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- numbers
def report_versions() -> dict:
    """Python, platform and the versions of the packages the numbers depend on."""
    return package_versions(VERSIONED_PACKAGES, python=True, system=True)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def paper_tables(metrics: dict) -> dict:
    """Tables 3, 4, 5 as measured (percent), with the paper's figures beside them."""
    sets = metrics.get("feature_sets", {})
    hier = metrics.get("hierarchical", {})
    synthetic = metrics.get("dataset", {}).get("source") == "synthetic"
    table3 = []
    if synthetic:
        for name in ("bow", "resnet"):
            if name in sets:
                table3.append({"method": FEATURE_LABELS[name] + " (linear SVM, leave-one-run-out)",
                               "feature_set": name, "measured": _pct(sets[name]["map_paper"]),
                               "measured_strict": _pct(sets[name]["map_strict"]), "paper": PAPER_TABLE3[name]})
        holdout = metrics.get("network_holdout")
        if holdout and holdout.get("map") is not None:
            table3.append({"method": "Residual network (its own sigmoid outputs, test split)",
                           "feature_set": "resnet", "measured": _pct(holdout["map"]), "measured_strict": None,
                           "paper": PAPER_TABLE3["resnet"]})
    table4, table5 = [], []
    for name in ("lbpphog", "bow", "resnet", "autoencoder", "resnet+autoencoder"):
        if name not in sets:
            continue
        s = sets[name]
        table4.append({"feature": FEATURE_LABELS[name], "feature_set": name, "measured": _pct(s["map_paper"]),
                       "measured_hierarchical": _pct(hier[name]["map_paper"]) if name in hier else None,
                       "paper": PAPER_TABLE4.get(name), "paper_hierarchical": PAPER_TABLE4_HIERARCHICAL.get(name),
                       "attributes": s["num_attributes_evaluable"]})
        table5.append({"feature": FEATURE_LABELS[name], "feature_set": name, "measured": _pct(s["map_table5"]),
                       "measured_strict": _pct(s["map_strict"]),
                       "measured_hierarchical": _pct(hier[name]["map_table5"]) if name in hier else None,
                       "paper": PAPER_TABLE5.get(name), "attributes": s["num_attributes_table5"]})
    return {"unit": "percent mAP", "table3": table3, "table4": table4, "table5": table5,
            "table3_note": "17 attributes, synthetic hold-out" if synthetic else
            "Table 3 is the synthetic data set's; this run evaluated a labelled folder",
            "table4_note": "98 attributes of XMD (2,832 images, 13 runs)",
            "table5_note": "the 80 XMD attributes present in at least two runs"}


def ap_gaps(metrics: dict, baseline: str = "lbpphog") -> dict:
    """{deep feature set: {attribute: AP − AP(baseline)}} of the paper-convention attribute APs."""
    sets = metrics.get("feature_sets", {})
    if baseline not in sets:
        return {}
    base = sets[baseline]["per_attribute"]
    out = {}
    for name in DEEP_FEATURE_SETS:
        if name not in sets:
            continue
        gaps = {}
        for attribute, values in sets[name]["per_attribute"].items():
            a, b = values["ap_paper"], base[attribute]["ap_paper"]
            if a is not None and b is not None:
                gaps[attribute] = a - b
        out[name] = gaps
    return out


def disagreements(scores: np.ndarray, labels: np.ndarray, names: list[str], run_names: list[str],
                  attributes: tuple[str, ...], count: int) -> dict:
    """Per attribute: the ``count`` top-scoring negatives and lowest-scoring positives (Fig. 10).

    Returns:
        {attribute: {"top_scoring_negatives": [{"index", "file", "run", "score"}], "lowest_scoring_positives": [...]}}
    """
    out = {}
    for a, attribute in enumerate(attributes):
        s, y = scores[:, a], labels[:, a]
        ok = ~np.isnan(s) & ~np.isnan(y)
        negatives = np.flatnonzero(ok & (y <= 0.5))
        positives = np.flatnonzero(ok & (y > 0.5))
        if len(negatives) == 0 or len(positives) == 0:
            continue
        top_neg = negatives[np.argsort(-s[negatives], kind="stable")[:count]]
        low_pos = positives[np.argsort(s[positives], kind="stable")[:count]]
        entry = lambda i: {"index": int(i), "file": names[i], "run": run_names[i], "score": float(s[i])}  # noqa: E731
        out[attribute] = {"top_scoring_negatives": [entry(i) for i in top_neg],
                          "lowest_scoring_positives": [entry(i) for i in low_pos]}
    return out


# --------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=figure.dpi)
    return buffer.getvalue()


def pr_curve_figures(scores: dict[str, np.ndarray], labels: np.ndarray, attributes: tuple[str, ...]) -> list[bytes]:
    """Fig. 8: precision–recall per attribute (pooled out-of-fold scores), one line per feature set."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    evaluable = [a for a in range(len(attributes))
                 if 0 < np.nansum(labels[:, a] > 0.5) < np.sum(~np.isnan(labels[:, a]))]
    pages = []
    for start in range(0, len(evaluable), PR_CURVES_PER_FIGURE):
        chunk = evaluable[start:start + PR_CURVES_PER_FIGURE]
        cols = min(5, len(chunk))
        rows = (len(chunk) + cols - 1) // cols
        figure = _new_figure(3.0 * cols, 2.8 * rows)
        for k, a in enumerate(chunk):
            axis = figure.add_subplot(rows, cols, k + 1)
            for name, values in scores.items():
                ok = ~np.isnan(values[:, a]) & ~np.isnan(labels[:, a])
                y = labels[ok, a] > 0.5
                if y.sum() == 0 or y.sum() == y.size:
                    continue
                precision, recall, _ = precision_recall_curve(y, values[ok, a])
                ap = average_precision_score(y, values[ok, a])
                axis.step(recall, precision, where="post", label=f"{name} {100 * ap:.0f}", linewidth=1.2)
            if not axis.lines:
                axis.text(0.5, 0.5, "no scored positives", ha="center", va="center", fontsize=8, color="grey")
            axis.set_title(attributes[a], fontsize=9)
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1.02)
            axis.tick_params(labelsize=7)
            if axis.lines:
                axis.legend(fontsize=6, loc="lower left")
            if k % cols == 0:
                axis.set_ylabel("precision", fontsize=8)
            if k >= len(chunk) - cols:
                axis.set_xlabel("recall", fontsize=8)
        figure.tight_layout()
        pages.append(_png(figure))
    return pages


def ap_gap_figure(gaps: dict[str, float], feature_set: str, baseline: str = "lbpphog") -> bytes:
    """Fig. 9: AP(feature set) − AP(baseline) per attribute, sorted."""
    items = sorted(gaps.items(), key=lambda kv: kv[1])
    figure = _new_figure(7.0, max(2.5, 0.22 * len(items) + 1.0))
    axis = figure.add_subplot(1, 1, 1)
    values = [100 * v for _, v in items]
    axis.barh(range(len(items)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    axis.set_yticks(range(len(items)))
    axis.set_yticklabels([k for k, _ in items], fontsize=7)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_xlabel(f"AP gap (percentage points): {feature_set} − {baseline}")
    figure.tight_layout()
    return _png(figure)


def _display(counts: np.ndarray) -> np.ndarray:
    """Raw counts → log-scaled values as the models see them (missing pixels 0)."""
    counts = np.where(np.isfinite(counts) & (counts >= 0), counts, 0.0)
    return np.log1p(counts) / np.log1p(65535.0)


def gallery_figure(attribute: str, entry: dict, image_loader: Callable[[int], np.ndarray]) -> bytes:
    """Fig. 10 for one attribute: top-scoring negatives (top row), lowest-scoring positives (bottom)."""
    rows = (("top-scoring negatives", entry["top_scoring_negatives"]),
            ("lowest-scoring positives", entry["lowest_scoring_positives"]))
    cols = max(len(r[1]) for r in rows)
    figure = _new_figure(1.7 * cols, 4.0, dpi=72)
    for r, (title, items) in enumerate(rows):
        for c, item in enumerate(items):
            axis = figure.add_subplot(2, cols, r * cols + c + 1)
            shown = _display(image_loader(item["index"]))
            low, high = np.percentile(shown, [1, 99.5])
            axis.imshow(shown, cmap="magma", vmin=low, vmax=max(high, low + 1e-6))
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{item['score']:+.2f}", fontsize=8)
            axis.set_xlabel(_short(item["file"]), fontsize=6)
            if c == 0:
                axis.set_ylabel(title, fontsize=8)
    figure.suptitle(attribute, fontsize=10)
    figure.tight_layout()
    return _png(figure)


def _short(text: str, length: int = 28) -> str:
    return text if len(text) <= length else "…" + text[-(length - 1):]


# --------------------------------------------------------------------------- document
def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _paper(value) -> str:
    """The paper's figure as printed there (59.03 stays 59.03)."""
    return "–" if value is None else f"{value:g}"


def build_blocks(data: ReportData, tables: dict, gaps: dict, gallery: dict, figure_names: dict,
                 other_files: list[str] = ()) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows), ("figure", file, caption),
    ("pre", text)."""
    m = data.metrics
    ds = m["dataset"]
    blocks: list[tuple] = [("h1", f"Evaluation report: {data.name}")]
    blocks.append(("p", f"{ds['num_images']} images in {ds['num_runs']} runs ({ds['source']} data, {ds['location']}), "
                        f"{ds['num_attributes']} attributes; {len(m['feature_sets'])} feature sets evaluated with "
                        "one-vs-all linear SVMs (scikit-learn LinearSVC / LIBLINEAR) and leave-one-run-out "
                        "cross-validation. Numbers are mAP in percent."))
    blocks.append(("h2", "Headline: mean AP that says something about every attribute"))
    blocks.append(("table", ["Feature", "headline", "pooled", "paper's convention", "attributes"],
                   [[FEATURE_LABELS.get(name, name), _fmt(_pct(s.get("map_headline"))), _fmt(_pct(s.get("map_pooled"))),
                     _fmt(_pct(s["map_paper"])), str(s["num_attributes_evaluable"])]
                    for name, s in m["feature_sets"].items()]))
    constant = next(iter(m["feature_sets"].values()), {}).get("constant_within_runs", [])
    blocks.append(("p", "Headline: the paper's fold convention, except for the attributes that are constant within "
                        "every run (" + (", ".join(constant) or "none here") + "), which take their pooled AP "
                        "(all out-of-fold scores ranked together): under the convention a held-out run is all "
                        "positive or all negative for them, so their fold APs are 1 or unmeasurable whatever the "
                        "features do. Pooled: every attribute's pooled AP."))
    blocks.append(("h2", "Table 3: mean AP on the synthetic data set"))
    if tables["table3"]:
        blocks.append(("table", ["Method", "measured", "measured (strict)", "paper"],
                       [[r["method"], _fmt(r["measured"]), _fmt(r["measured_strict"]), _paper(r["paper"])]
                        for r in tables["table3"]]))
        blocks.append(("p", "The paper's 77.1 is its ResNet's own outputs on a synthetic hold-out and its 67.1 a "
                            "bag-of-words SVM; here both feature sets are also scored leave-one-run-out. "
                            + _holdout_text(m)))
    elif ds["source"] == "synthetic":
        blocks.append(("p", "Neither the bow baseline nor the resnet feature set was evaluated."))
    else:
        blocks.append(("p", tables["table3_note"] + "."))
    blocks.append(("h2", "Table 4: mean AP over all attributes (paper's fold convention)"))
    blocks.append(("table", ["Feature", "measured", "hierarchical", "paper", "paper hierarchical", "attributes"],
                   [[r["feature"], _fmt(r["measured"]), _fmt(r["measured_hierarchical"]), _paper(r["paper"]),
                     _paper(r["paper_hierarchical"]), str(r["attributes"])] for r in tables["table4"]]))
    blocks.append(("p", f"Paper: {tables['table4_note']}."))
    if m.get("hierarchical"):
        proto = m["protocol"]
        blocks.append(("p", f"Hierarchical mode: a first SVM predicts '{proto.get('hierarchy_attribute')}' for each "
                            "held-out image, then SVMs trained on the training images of the predicted group score "
                            "it; a fold uses its group SVM only when the SVM's inner cross-validation beats always "
                            "answering the training runs' more common group, and falls back to that group otherwise. "
                            "Group accuracy on held-out runs (majority rate of the training runs; folds that used "
                            "the SVM): "
                            + ", ".join(f"{k} {100 * v['group_accuracy']:.1f}% ({100 * v['group_majority_rate']:.1f}%; "
                                        f"{v.get('group_classifier_folds', '?')} of {v.get('folds', '?')})"
                                        for k, v in m["hierarchical"].items()
                                        if v.get("group_accuracy") is not None and v.get("group_majority_rate") is not None)
                            + "."))
    blocks.append(("h2", "Table 5: mean AP over attributes present in at least two runs"))
    blocks.append(("table", ["Feature", "measured", "measured (strict)", "hierarchical", "paper", "attributes"],
                   [[r["feature"], _fmt(r["measured"]), _fmt(r["measured_strict"]), _fmt(r["measured_hierarchical"]),
                     _paper(r["paper"]), str(r["attributes"])] for r in tables["table5"]]))
    blocks.append(("p", f"Paper: {tables['table5_note']}."))
    blocks.append(("h2", "How fold APs are combined"))
    blocks.append(("p", m["protocol"]["combination"]))
    blocks.append(("p", m["protocol"]["svm"]))

    blocks.append(("h2", "Per-attribute AP"))
    sets = list(m["feature_sets"])
    rows = []
    for attribute in data.attributes:
        first = m["feature_sets"][sets[0]]["per_attribute"][attribute]
        row = [attribute, str(first["positives"]), str(first["runs_with_positive"]),
               "yes" if first["in_table5"] else "", "yes" if first.get("constant_within_runs") else ""]
        row += [_fmt(_pct(m["feature_sets"][s]["per_attribute"][attribute]["ap_paper"])) for s in sets]
        row += [_fmt(_pct(m["feature_sets"][s]["per_attribute"][attribute].get("ap_pooled"))) for s in sets]
        rows.append(row)
    blocks.append(("table", ["Attribute", "positives", "runs with +", "Table 5", "constant within runs"]
                   + [f"{s} (convention)" for s in sets] + [f"{s} (pooled)" for s in sets], rows))
    blocks.append(("p", "AP in percent, by the paper's fold convention and pooled over all out-of-fold scores; "
                        "'–': the attribute has no positive or no negative label in the data set. For an attribute "
                        "constant within runs the convention's AP is near 100 by construction: read its pooled AP."))

    blocks.append(("h2", "Precision–recall curves (Fig. 8)"))
    for file in figure_names.get("pr", []):
        blocks.append(("figure", file, "Precision–recall from pooled out-of-fold scores; legend: feature set and "
                                        "pooled AP."))
    blocks.append(("h2", "AP gap against lbpphog (Fig. 9)"))
    if gaps:
        for name, file in figure_names.get("gap", {}).items():
            blocks.append(("figure", file, f"AP({name}) − AP(lbpphog) per attribute; positive: the deep features "
                                           "do better."))
    else:
        blocks.append(("p", "lbpphog was not evaluated (evaluate.baselines), so there is no gap to show."))

    blocks.append(("h2", "Disagreements with the labels (Fig. 10)"))
    if gallery:
        blocks.append(("p", f"Scores of the '{data.gallery_feature_set}' SVMs (out-of-fold). Top-scoring negatives "
                            "may be missing tags; lowest-scoring positives may be wrong tags or unusual images."))
        for attribute, entry in gallery.items():
            blocks.append(("h3", attribute))
            table_rows = [["top-scoring negative", e["file"], e["run"], f"{e['score']:+.3f}"]
                          for e in entry["top_scoring_negatives"]]
            table_rows += [["lowest-scoring positive", e["file"], e["run"], f"{e['score']:+.3f}"]
                           for e in entry["lowest_scoring_positives"]]
            blocks.append(("table", ["kind", "file", "run", "score"], table_rows))
            if attribute in figure_names.get("gallery", {}):
                blocks.append(("figure", figure_names["gallery"][attribute], f"{attribute}: top row negatives, "
                                                                             "bottom row positives."))
    else:
        blocks.append(("p", "No attribute has both positive and negative labels with scores."))

    if other_files:
        blocks.append(("h2", "Other reports of this pipeline"))
        blocks.append(("p", "In this folder: " + ", ".join(other_files) + "."))
    blocks.append(("h2", "Data set"))
    shown = {k: v for k, v in ds.items() if k not in ("skipped_items", "positives", "attributes")}
    blocks.append(("pre", json.dumps(shown, indent=2)))
    if ds.get("skipped_items"):
        blocks.append(("p", f"{len(ds['skipped_items'])} row(s) or file(s) skipped:"))
        blocks.append(("table", ["name", "reason"], [[s["name"], s["reason"]] for s in ds["skipped_items"]]))
    blocks.append(("h2", "Features"))
    blocks.append(("table", ["feature set", "dims", "blocks", "from cache", "feature s", "SVM s", "source"],
                   [[n, str(v["dims"]), str(v["block_sizes"]), "yes" if v["from_cache"] else "no",
                     f"{v['feature_seconds']:.1f}", f"{v['svm_seconds']:.1f}",
                     "; ".join(_source_text(s) for s in v["sources"])] for n, v in m["feature_sets"].items()]))
    if m.get("export"):
        blocks.append(("h2", "Attribute SavedModel"))
        blocks.append(("pre", json.dumps(m["export"], indent=2)))
    blocks.append(("h2", "Configuration"))
    blocks.append(("pre", json.dumps(m["config"], indent=2)))
    blocks.append(("h2", "Versions and timing"))
    blocks.append(("pre", json.dumps({"versions": m["versions"], "timing": m.get("timing", {})}, indent=2)))
    return blocks


def _holdout_text(metrics: dict) -> str:
    holdout = metrics.get("network_holdout")
    if not holdout:
        return ""
    if holdout.get("map") is None:
        return f"The network's own outputs could not be scored: {holdout.get('note', '')}"
    return (f"The network's own row scores {holdout['num_images']} test-split images from "
            f"{holdout['model']} over {holdout['num_attributes']} attributes.")


def _source_text(source: dict) -> str:
    if "signature" in source:
        return f"{source['model']} v{source['version']} {source['signature']}"
    return source.get("model", "")


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "pre":
            out.append("```\n" + block[1] + "\n```")
        elif kind == "figure":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*")
        elif kind == "table":
            header, rows = block[1], block[2]
            escape = lambda t: str(t).replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], title: str, figures: dict[str, bytes]) -> str:
    """Self-contained HTML: figures embedded as base64 PNG data URIs."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "figure":
            data = base64.b64encode(figures[block[1]]).decode()
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.8em}"
             "figcaption{font-size:0.85em;color:#555}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- writing
def write_report(data: ReportData, report_root: str | Path) -> Path:
    """Write report.md, report.html, metrics.json and figures/ into ``<report_root>/<name>/``.

    Each appears atomically (written under a temporary name, then renamed); other files in the
    folder, such as the training stages' reports, are kept and linked from the report.

    ``data.metrics`` gains ``tables``, ``ap_gap_vs_lbpphog``, ``disagreements`` and ``versions``.
    Returns the report folder.
    """
    metrics = data.metrics
    metrics.setdefault("versions", report_versions())
    tables = paper_tables(metrics)
    gaps = ap_gaps(metrics)
    gallery = {}
    if data.gallery_feature_set in data.scores:
        gallery = disagreements(data.scores[data.gallery_feature_set], data.labels, data.names, data.run_names,
                                data.attributes, data.gallery_size)
    metrics["tables"] = tables
    metrics["ap_gap_vs_lbpphog"] = gaps
    metrics["disagreements"] = {"feature_set": data.gallery_feature_set, "attributes": gallery}

    figures: dict[str, bytes] = {}
    names: dict = {"pr": [], "gap": {}, "gallery": {}}
    for k, png in enumerate(pr_curve_figures(data.scores, data.labels, data.attributes)):
        file = f"figures/pr_curves_{k + 1}.png"
        figures[file] = png
        names["pr"].append(file)
    for name, values in gaps.items():
        if values:
            file = f"figures/ap_gap_{slug(name)}.png"
            figures[file] = ap_gap_figure(values, name)
            names["gap"][name] = file
    if data.image_loader is not None:
        for attribute, entry in gallery.items():
            # the attribute's position keeps names distinct when two attributes slug alike
            file = f"figures/disagreements_{data.attributes.index(attribute):03d}_{slug(attribute)}.png"
            figures[file] = gallery_figure(attribute, entry, data.image_loader)
            names["gallery"][attribute] = file

    root = Path(report_root)
    final = root / data.name
    final.mkdir(parents=True, exist_ok=True)
    other_files = sorted(p.name for p in final.iterdir() if p.name not in OWN_FILES and not p.name.startswith(".")
                         and p.suffix in (".md", ".html", ".json"))
    blocks = build_blocks(data, tables, gaps, gallery, names, other_files)
    # The folder is shared with the training stages' reports (resnet_holdout.md, autoencoder.md):
    # only this report's own files are replaced, each atomically, figures/ first, metrics.json last.
    temporary = final / f".{FIGURES}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        for file, png in figures.items():
            (temporary / Path(file).name).write_bytes(png)
        _replace_folder(temporary, final / FIGURES)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    write_atomically(final / "report.md", render_markdown(blocks))
    write_atomically(final / "report.html", render_html(blocks, f"xrayscatter evaluation: {data.name}", figures))
    write_atomically(final / "metrics.json", json.dumps(metrics, indent=2, sort_keys=False, default=_json_default)
                     + "\n")
    return final


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _replace_folder(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``; an existing report is moved aside first and removed after."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(new, final)
    except OSError:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
