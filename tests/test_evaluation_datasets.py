"""The labelled images an evaluation runs on: whole runs, the synthetic splits, labels.csv."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xrayscatter.errors import XrayscatterError
from xrayscatter.evaluation.datasets import load_folder_dataset, load_synthetic_dataset, read_labels_csv, \
    select_whole_runs


def test_select_whole_runs_never_splits_a_run():
    sizes = [("a", 8), ("b", 8), ("c", 5), ("d", 8)]
    assert select_whole_runs(sizes, 0) == {"a", "b", "c", "d"}
    assert select_whole_runs(sizes, 20) == {"a", "b"}
    assert select_whole_runs(sizes, 21) == {"a", "b", "c"}


def test_synthetic_dataset_takes_whole_runs_test_split_first(smoke_dataset):
    config = dataclasses.replace(smoke_dataset, evaluate=dataclasses.replace(smoke_dataset.evaluate, max_images=40))
    data = load_synthetic_dataset(config)
    assert len(data) == 40 and len(data.run_names) == 5
    assert data.splits[:16] == ["test"] * 16  # the smoke test split holds 2 runs of 8
    assert np.bincount(data.runs).tolist() == [8] * 5
    assert set(data.groups) == {"SAXS", "WAXS"}
    assert data.labels.shape == (40, 17) and not np.isnan(data.labels).any()
    full = load_synthetic_dataset(smoke_dataset)
    assert len(full) == 96 and full.content_hash != data.content_hash


def test_labels_csv_bad_rows_are_reported_by_name(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "filename,run,Ring,Thin film\n"
        "a.npy,r1,1,0\n"
        "b.npy,r1,yes,0\n"  # bad label
        "c.npy,,1,0\n"  # no run
        "a.npy,r2,1,1\n"  # listed twice
        "d.npy,r2,1\n"  # missing cell
        "e.npy,r2,,1\n")
    attributes, rows, skipped = read_labels_csv(tmp_path / "labels.csv")
    assert attributes == ("Ring", "Thin film")
    assert [r[0] for r in rows] == ["a.npy", "e.npy"]
    assert np.isnan(rows[1][2][0]) and rows[1][2][1] == 1.0
    assert [s["name"] for s in skipped] == ["b.npy", "c.npy", "a.npy", "labels.csv row 6"]
    (tmp_path / "bad.csv").write_text("file,run,Ring\n")
    with pytest.raises(XrayscatterError, match="filename"):
        read_labels_csv(tmp_path / "bad.csv")


def test_folder_without_two_runs_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((32, 32), np.float32))
    (tmp_path / "labels.csv").write_text("filename,run,Ring\na.npy,r1,1\n")
    with pytest.raises(XrayscatterError, match="at least 2 runs"):
        load_folder_dataset(tmp_path)
