"""`xrayscatter predict DIR/`: every readable file tagged, every bad one named with its reason."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from detector_samples import write_bad_files, write_good_files

# Files write_bad_files makes that read_detector_image rejects as "multi-frame" and predict tags frame by frame.
MULTI_FRAME_BAD_FILES = {"stack.tif": 3, "two_frames.edf": 2, "stack.npy": 5}
from helpers import shared_saved_models
from xrayscatter.attributes import ATTRIBUTES, slug
from xrayscatter.cli import main
from xrayscatter.errors import XrayscatterError
from xrayscatter.predict import TaggingModel, predict_directory, resolve_model_dir


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    """saved_models/resnet/1/ of a tiny untrained ResNet."""
    return shared_saved_models(tmp_path_factory, ["resnet"]) / "resnet" / "1"


@pytest.fixture(scope="module")
def tagging_model(resnet_dir):
    return TaggingModel(resnet_dir)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: whole file names and reasons on one line


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_bad_input_never_stops_the_batch(tmp_path, resnet_dir, capsys):
    folder = tmp_path / "beamline"
    good = write_good_files(folder)
    bad = write_bad_files(folder)
    stacks = {name: frames for name, frames in MULTI_FRAME_BAD_FILES.items() if bad.pop(name) == "multi-frame"}
    output = tmp_path / "tags.csv"

    code, out, err = run_cli(["predict", str(folder), "--model", str(resnet_dir), "--output", str(output),
                              "--batch-size", "2"], capsys)

    assert code == 1, err
    assert "Traceback" not in out + err
    for name, reason in bad.items():
        line = next((l for l in out.splitlines() if f" {name} " in l), None)
        assert line is not None and reason in line, f"{name} not reported with '{reason}'"
    rows = list(csv.DictReader(output.open()))
    stack_rows = [(r["file"], r["frame"]) for r in rows if r["file"] in {str(folder / n) for n in stacks}]
    assert sorted(stack_rows) == sorted((str(folder / n), str(k)) for n, count in stacks.items() for k in range(count))
    rows = {r["file"]: r for r in rows}
    assert set(rows) == {str(folder / n) for n in list(good) + list(bad) + list(stacks)}
    for name in good:
        row = rows[str(folder / name)]
        assert row["error"] == ""
        probabilities = [float(row[f"{slug(a)}_probability"]) for a in ATTRIBUTES]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert [int(row[f"{slug(a)}_decision"]) for a in ATTRIBUTES] == [int(p >= 0.5) for p in probabilities]
    for name, reason in bad.items():
        row = rows[str(folder / name)]
        assert row["error"].startswith(reason) and row["bcc_probability"] == "" and row["frame"] == ""
    assert f"{len(good) + sum(stacks.values())} tagged, {len(bad)} failed" in out


def test_predictions_equal_the_model_on_each_image_alone(tmp_path, tagging_model):
    """Batching by shape (two sizes here, odd batch size) must not mix images up."""
    folder = tmp_path / "mixed"
    good = write_good_files(folder)
    output = tmp_path / "tags.jsonl"

    failures = predict_directory(folder, model=tagging_model, output=output, batch_size=3, quiet=True)

    assert failures == []
    records = {r["file"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert len(records) == len(good)
    for name, counts in good.items():
        alone, _ = tagging_model(counts[None])
        record = records[str(folder / name)]
        assert record["error"] is None
        got = np.array([record["probabilities"][a] for a in ATTRIBUTES], np.float32)
        np.testing.assert_allclose(got, alone[0], rtol=1e-5, atol=1e-6, err_msg=name)
        assert record["tags"] == [a for a in ATTRIBUTES if record["decisions"][a]]


def test_decisions_use_the_thresholds_stored_in_the_model(tmp_path, resnet_dir):
    model_dir = tmp_path / "resnet" / "7"
    shutil.copytree(resnet_dir, model_dir)
    metadata_file = model_dir / "assets.extra" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    thresholds = [0.0] * 8 + [1.01] * 9  # first 8 attributes always yes, the others never
    metadata["thresholds"] = thresholds
    metadata_file.write_text(json.dumps(metadata))
    folder = tmp_path / "images"
    write_good_files(folder)
    output = tmp_path / "out.jsonl"

    assert predict_directory(folder, model=tmp_path / "resnet", output=output, quiet=True) == []

    for record in map(json.loads, output.read_text().splitlines()):
        assert [record["decisions"][a] for a in ATTRIBUTES] == [1] * 8 + [0] * 9


def test_glob_and_recursive_choose_the_files(tmp_path, tagging_model):
    expected = write_good_files(tmp_path / "run1")
    write_good_files(tmp_path / "run1" / "sub")
    output = tmp_path / "out.csv"

    predict_directory(tmp_path / "run1", model=tagging_model, output=output, glob="*.tif*", quiet=True)
    files = [r["file"] for r in csv.DictReader(output.open())]
    assert files == sorted(str(tmp_path / "run1" / n) for n in expected if ".tif" in n)

    predict_directory(tmp_path / "run1", model=tagging_model, output=output, recursive=True, quiet=True)
    assert len(list(csv.DictReader(output.open()))) == 2 * len(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "run1"]  # no temporary file left

    inside = tmp_path / "run1" / "tags.csv"  # a second run must not read its own earlier output
    for _ in range(2):
        assert predict_directory(tmp_path / "run1", model=tagging_model, output=inside, glob="*", quiet=True) == []


def test_empty_folder_and_missing_model_exit_2_with_a_clear_message(tmp_path, resnet_dir, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["predict", str(tmp_path / "empty"), "--model", str(resnet_dir)], capsys)
    assert code == 2 and "no detector images" in err and "Traceback" not in err

    write_good_files(tmp_path / "images")
    code, out, err = run_cli(["predict", str(tmp_path / "images"), "--model", str(tmp_path / "nope")], capsys)
    assert code == 2 and "nope: model folder not found" in err and "Traceback" not in err

    code, out, err = run_cli(["predict", str(tmp_path / "missing_dir"), "--model", str(resnet_dir)], capsys)
    assert code == 2 and "folder not found" in err

    code, out, err = run_cli(["predict", str(tmp_path / "images"), "--model", str(resnet_dir),
                              "--output", str(tmp_path / "tags.xlsx")], capsys)
    assert code == 2 and "use .csv or .jsonl" in err and not (tmp_path / "tags.xlsx").exists()


def test_all_files_read_exit_0(tmp_path, resnet_dir, capsys):
    write_good_files(tmp_path / "images")
    code, out, err = run_cli(["predict", str(tmp_path / "images"), "--model", str(resnet_dir)], capsys)
    assert code == 0, err
    assert "pilatus_0002.cbf" in out and "7 tagged, 0 failed" in out


def test_default_model_is_the_newest_version_attributes_before_resnet(tmp_path, monkeypatch):
    root = tmp_path / "saved_models"
    for version in ("1", "2", "10", ".tmp-export-9"):
        (root / "resnet" / version).mkdir(parents=True)
        (root / "resnet" / version / "saved_model.pb").write_bytes(b"")
    assert resolve_model_dir(root=root) == root / "resnet" / "10"
    assert resolve_model_dir(root / "resnet") == root / "resnet" / "10"
    assert resolve_model_dir(root / "resnet" / "2") == root / "resnet" / "2"
    (root / "attributes" / "3").mkdir(parents=True)
    (root / "attributes" / "3" / "saved_model.pb").write_bytes(b"")
    assert resolve_model_dir(root=root) == root / "attributes" / "3"
    with pytest.raises(XrayscatterError, match="no trained model found"):
        resolve_model_dir(root=tmp_path / "elsewhere")
