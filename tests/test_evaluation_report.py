"""Reports: the paper's tables, AP gaps, the disagreement gallery, and the atomically written folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from xrayscatter.evaluation import report as reports
from xrayscatter.evaluation.protocol import COMBINATION_TEXT, leave_one_run_out, summarize

ATTRIBUTES = ("Ring", "Halo", "Rare")


def _report_data(name="test-report", with_images=True):
    rng = np.random.default_rng(0)
    runs = np.repeat(np.arange(4), 10)
    latent = rng.standard_normal((40, 3))
    labels = np.column_stack([latent[:, 0] > 0, latent[:, 1] > 0.5, np.zeros(40)]).astype(float)
    labels[runs == 2, 2] = 1.0  # only in one run
    labels[:3, 1] = np.nan
    sets, scores = {}, {}
    for k, name_ in enumerate(("lbpphog", "resnet")):
        features = latent * (1 + k) + rng.standard_normal((40, 3)) * 2
        result = leave_one_run_out(np.hstack([features, rng.standard_normal((40, 5))]), (8,), labels, runs, (1.0,))
        summary = summarize(result.fold_ap, result.fold_status, result.scores, labels, runs, ATTRIBUTES)
        summary.update(dims=8, block_sizes=[8], sources=[{"model": name_}], from_cache=False, feature_seconds=0.0,
                       svm_seconds=result.seconds)
        sets[name_] = summary
        scores[name_] = result.scores
    metrics = {
        "dataset": {"source": "synthetic", "location": "/data", "num_images": 40, "num_runs": 4, "num_attributes": 3,
                    "skipped_items": [{"name": "x.tif", "reason": "unreadable"}], "skipped": 1},
        "protocol": {"combination": COMBINATION_TEXT, "svm": "LinearSVC per attribute"},
        "feature_sets": sets,
        "network_holdout": {"map": 0.5, "num_images": 10, "num_attributes": 3, "model": "m/1"},
        "config": {"name": "x"},
    }
    images = rng.poisson(5, (40, 16, 16)).astype(np.float32)
    return reports.ReportData(name=name, metrics=metrics, attributes=ATTRIBUTES, labels=labels,
                              names=[f"img{i:02d}.tif" for i in range(40)],
                              run_names=[f"run{r}" for r in runs], scores=scores, gallery_feature_set="resnet",
                              image_loader=(lambda i: images[i]) if with_images else None, gallery_size=2)


def test_paper_tables_put_the_papers_numbers_beside_the_measured_ones():
    data = _report_data()
    tables = reports.paper_tables(data.metrics)
    table4 = {r["feature_set"]: r for r in tables["table4"]}
    assert table4["lbpphog"]["paper"] == 51.5 and table4["resnet"]["paper"] == 59.5
    assert table4["resnet"]["measured"] == pytest.approx(100 * data.metrics["feature_sets"]["resnet"]["map_paper"],
                                                         abs=0.01)
    table5 = {r["feature_set"]: r for r in tables["table5"]}
    assert table5["resnet"]["paper"] == 59.03
    assert table5["resnet"]["attributes"] == 2  # "Rare" is in one run only
    table3 = {r["method"]: r for r in tables["table3"]}
    assert any(r["paper"] == 77.1 and r["measured"] == 50.0 for r in table3.values())


def test_ap_gap_is_the_difference_of_attribute_aps():
    metrics = _report_data().metrics
    gaps = reports.ap_gaps(metrics)
    resnet = metrics["feature_sets"]["resnet"]["per_attribute"]
    lbp = metrics["feature_sets"]["lbpphog"]["per_attribute"]
    assert gaps["resnet"]["Ring"] == pytest.approx(resnet["Ring"]["ap_paper"] - lbp["Ring"]["ap_paper"])
    assert reports.ap_gaps({"feature_sets": {"resnet": metrics["feature_sets"]["resnet"]}}) == {}


def test_disagreements_are_top_scoring_negatives_and_lowest_scoring_positives():
    scores = np.array([[0.9], [0.1], [0.8], [-0.5], [np.nan]])
    labels = np.array([[0.0], [0.0], [1.0], [1.0], [0.0]])
    out = reports.disagreements(scores, labels, list("abcde"), ["r"] * 5, ("Ring",), count=1)
    assert out["Ring"]["top_scoring_negatives"][0]["file"] == "a"
    assert out["Ring"]["lowest_scoring_positives"][0]["file"] == "d"


def test_report_folder_is_complete_self_contained_and_replaced_atomically(tmp_path):
    path = reports.write_report(_report_data(), tmp_path)
    assert path == tmp_path / "test-report"
    assert {p.name for p in path.iterdir()} == {"report.md", "report.html", "metrics.json", "figures"}
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["tables"]) >= {"table3", "table4", "table5"}
    assert "Ring" in metrics["ap_gap_vs_lbpphog"]["resnet"]
    assert len(metrics["disagreements"]["attributes"]["Ring"]["top_scoring_negatives"]) == 2
    assert metrics["versions"]["python"] and "numpy" in metrics["versions"]
    markdown = (path / "report.md").read_text()
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (path / figure).is_file()
    assert "figures/ap_gap_resnet.png" in markdown and "figures/disagreements_000_ring.png" in markdown
    assert "x.tif" in markdown and "How fold APs are combined" in markdown
    html = (path / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "59.5" in html  # the paper's figure beside the measured one

    # Writing again replaces this report's files and keeps the training stages' reports beside them;
    # nothing temporary is left behind.
    (path / "resnet_holdout.md").write_text("hold-out AP")
    (path / "figures" / "stale.png").write_bytes(b"old")
    reports.write_report(_report_data(with_images=False), tmp_path)
    assert (path / "resnet_holdout.md").read_text() == "hold-out AP"
    assert "resnet_holdout.md" in (path / "report.md").read_text()
    assert not (path / "figures" / "stale.png").exists()
    assert not (path / "figures" / "disagreements_000_ring.png").exists()  # no images: gallery listed only
    assert [p.name for p in tmp_path.iterdir()] == ["test-report"]
    assert not any(p.name.startswith(".") for p in path.iterdir())
