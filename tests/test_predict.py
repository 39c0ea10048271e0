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
from helpers import export_tiny_resnet, shared_saved_models, tiny_resnet_config
from xrayscatter.attributes import ATTRIBUTES, slug
from xrayscatter.cli import main
from xrayscatter.errors import XrayscatterError
from xrayscatter.predict import (ImageResult, TaggingModel, default_model, dihedral_views, predict_directory,
                                 resolve_model_dir)


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    """saved_models/resnet/1/ of a tiny untrained ResNet (three channels, beam-centre head, beam-region branch)."""
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
    with output.open() as f:
        header = next(csv.reader(f))
    assert header[:7] == ["file", "frame", "error", "tags", "beam_x", "beam_y", "beam_on_image"]  # the model has the head
    rows = list(csv.DictReader(output.open()))
    stack_rows = [(r["file"], r["frame"]) for r in rows if r["file"] in {str(folder / n) for n in stacks}]
    assert sorted(stack_rows) == sorted((str(folder / n), str(k)) for n, count in stacks.items() for k in range(count))
    rows = {r["file"]: r for r in rows}
    assert set(rows) == {str(folder / n) for n in list(good) + list(bad) + list(stacks)}
    for name in good:
        row = rows[str(folder / name)]
        assert row["error"] == ""
        height, width = good[name].shape
        x, y = float(row["beam_x"]), float(row["beam_y"])
        assert row["beam_on_image"] == str(int(0 <= x < width and 0 <= y < height))
        probabilities = [float(row[f"{slug(a)}_probability"]) for a in ATTRIBUTES]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert [int(row[f"{slug(a)}_decision"]) for a in ATTRIBUTES] == [int(p >= 0.5) for p in probabilities]
    for name, reason in bad.items():
        row = rows[str(folder / name)]
        assert row["error"].startswith(reason) and row["bcc_probability"] == "" and row["frame"] == ""
        assert row["beam_x"] == row["beam_y"] == row["beam_on_image"] == ""
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
        # The beam centre (x, y) px of this image, as the model's beam_centre signature gives it alone.
        beam = tagging_model.beam_centre(counts[None])
        assert beam.shape == (1, 2)
        assert record["beam_centre"]["x"] == pytest.approx(float(beam[0, 0]), abs=0.01)
        assert record["beam_centre"]["y"] == pytest.approx(float(beam[0, 1]), abs=0.01)
        height, width = counts.shape
        assert record["beam_centre"]["on_image"] == bool(0 <= beam[0, 0] < width and 0 <= beam[0, 1] < height)


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


def test_dihedral_views_are_the_flips_then_their_transposes():
    counts = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    assert [len(g) for g in dihedral_views(counts, 1)] == [1]
    assert [len(g) for g in dihedral_views(counts, 4)] == [4]
    flips, turned = dihedral_views(counts, 8)
    assert [v.shape for v in flips] == [(2, 3, 5)] * 4 and [v.shape for v in turned] == [(2, 5, 3)] * 4
    np.testing.assert_array_equal(flips[1], counts[:, :, ::-1])
    np.testing.assert_array_equal(flips[3], np.rot90(counts, 2, axes=(1, 2)))
    # the eight are the eight symmetries of the square: no two alike on a frame without symmetry
    square = np.random.default_rng(0).random((1, 4, 4))
    views = [v.tobytes() for group in dihedral_views(square, 8) for v in group]
    assert len(set(views)) == 8


@pytest.mark.parametrize("views", [4, 8])
def test_views_average_the_probabilities_of_the_flipped_frames(resnet_dir, tagging_model, views):
    counts = np.random.default_rng(1).poisson(30.0, (2, 40, 56)).astype(np.float32)
    counts[:, 10:14, :] = -1  # a module gap, missing in every view
    averaged = TaggingModel(resnet_dir, views=views)

    scores, decisions, beam = averaged.tag(counts)

    each = [tagging_model.tag(view)[0] for group in dihedral_views(counts, views) for view in group]
    np.testing.assert_allclose(scores, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(decisions, (scores >= averaged.thresholds).astype(np.int32))
    np.testing.assert_allclose(beam, tagging_model.tag(counts)[2], rtol=1e-5, atol=1e-4)  # the plain frame's
    np.testing.assert_allclose(averaged(counts)[0], scores, rtol=1e-5, atol=1e-6)  # serving_default alike


@pytest.fixture(scope="module")
def four_view_dir(tmp_path_factory):
    """A tiny ResNet exported with ``resnet.views = 4``: it averages the four views inside its graph."""
    return export_tiny_resnet(tmp_path_factory.mktemp("views") / "resnet", tiny_resnet_config(views=4),
                              trained_statistics=True)


def test_a_model_exported_with_views_averages_them_in_its_graph(four_view_dir):
    counts = np.random.default_rng(2).poisson(30.0, (2, 40, 56)).astype(np.float32)
    counts[:, :, 20:24] = -1  # a module gap
    model = TaggingModel(four_view_dir)
    one = TaggingModel(four_view_dir, views=1)  # the model's one_view signature
    assert model.views == model.model_views == 4 and one.views == 1

    scores, decisions, beam = model.tag(counts)

    # the graph's views (of the resized inputs) give what the four flipped frames give one by one
    each = [one.tag(view)[0] for group in dihedral_views(counts, 4) for view in group]
    assert np.ptp(each, axis=0).max() > 1e-4  # the views differ: the average is not trivially any one of them
    np.testing.assert_allclose(scores, np.mean(each, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(decisions, (scores >= model.thresholds).astype(np.int32))
    # the beam centre: per coordinate, the median (mean of the middle two) of the four views' estimates, each
    # mapped back to the frame (pixel centres: x → W − x under a left–right flip, y → H − y under an up–down one)
    height, width = counts.shape[1:]
    back = []
    for k, view in enumerate(dihedral_views(counts, 4)[0]):
        x, y = one.tag(view)[2].T
        back.append(np.stack([width - x if k in (1, 3) else x, height - y if k in (2, 3) else y], axis=1))
    back = np.sort(back, axis=0)
    assert np.ptp(back, axis=0).max() > 1e-2  # the views' estimates differ: the median is not any one of them
    np.testing.assert_allclose(beam, 0.5 * (back[1] + back[2]), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(model(counts)[0], scores, rtol=1e-5, atol=1e-6)  # serving_default alike
    # more views than the graph's: averaged here, over its one-view signature
    eight = [one.tag(view)[0] for group in dihedral_views(counts, 8) for view in group]
    np.testing.assert_allclose(TaggingModel(four_view_dir, views=8).tag(counts)[0], np.mean(eight, axis=0),
                               rtol=1e-5, atol=1e-6)


def test_views_from_the_command_line_and_a_bad_count_named(tmp_path, resnet_dir, capsys):
    folder = tmp_path / "images"
    good = write_good_files(folder)
    output = tmp_path / "tags.jsonl"
    code, out, err = run_cli(["predict", str(folder), "--model", str(resnet_dir), "--views", "4", "--output",
                              str(output)], capsys)
    assert code == 0, err
    averaged = TaggingModel(resnet_dir, views=4)
    records = {r["file"]: r for r in map(json.loads, output.read_text().splitlines())}
    name, counts = next(iter(good.items()))
    got = np.array([records[str(folder / name)]["probabilities"][a] for a in ATTRIBUTES], np.float32)
    np.testing.assert_allclose(got, averaged.tag(counts[None])[0][0], rtol=1e-5, atol=1e-6)

    code, out, err = run_cli(["predict", str(folder), "--model", str(resnet_dir), "--views", "3"], capsys)
    assert code == 2 and "--views must be one of 1, 4, 8, got 3" in out + err


def _version(folder, comparison: dict | None = None) -> None:
    """A stand-in SavedModel version folder, with an attribute model's held-out comparison if given."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    if comparison is not None:
        (folder / "assets.extra").mkdir()
        (folder / "assets.extra" / "metadata.json").write_text(json.dumps({"holdout_comparison": comparison}))


def test_an_explicit_model_folder_resolves_to_its_newest_version(tmp_path):
    root = tmp_path / "saved_models"
    for version in ("1", "2", "10", ".tmp-export-9"):
        _version(root / "resnet" / version)
    assert resolve_model_dir(root=root) == root / "resnet" / "10"
    assert default_model(root) == (root / "resnet" / "10", "ResNet")
    assert resolve_model_dir(root / "resnet") == root / "resnet" / "10"
    assert resolve_model_dir(root / "resnet" / "2") == root / "resnet" / "2"
    with pytest.raises(XrayscatterError, match="no trained model found"):
        resolve_model_dir(root=tmp_path / "elsewhere")


def test_default_model_is_the_attribute_model_only_when_it_scored_higher_against_the_newest_resnet(tmp_path,
                                                                                                  monkeypatch):
    root = tmp_path / "saved_models"
    for version in ("1", "2"):
        _version(root / "resnet" / version)
    newest = root / "resnet" / "2"

    def with_comparison(version: str, ours, theirs, against) -> tuple:
        folder = root / "attributes" / version
        _version(folder, {"attributes_model_mAP": ours, "resnet_mAP": theirs, "resnet_saved_model": against,
                          "better": "attributes" if ours > theirs else "resnet"})
        path, reason = default_model(root)
        assert resolve_model_dir(root=root) == path
        return path, reason

    _version(root / "attributes" / "1")  # no comparison (an attribute model from before it was stored)
    assert default_model(root) == (newest, "ResNet (the attribute model has no held-out comparison with this ResNet)")

    path, reason = with_comparison("2", 0.62, 0.55, str(newest))
    assert path == root / "attributes" / "2"
    assert reason == "attribute model: held-out mAP 62.0 % vs the ResNet's 55.0 % on the same images"

    path, reason = with_comparison("3", 0.50, 0.55, str(newest))  # the newest attribute model is worse
    assert path == newest and reason == "ResNet: held-out mAP 55.0 % vs the attribute model's 50.0 % on the same images"

    path, _ = with_comparison("4", 0.55, 0.55, str(newest))  # a tie: the ResNet
    assert path == newest

    path, reason = with_comparison("5", 0.90, 0.55, str(root / "resnet" / "1"))  # compared with an older ResNet
    assert path == newest and "no held-out comparison with this ResNet" in reason

    _version(root / "attributes" / "6", {"attributes_model_mAP": None, "resnet_mAP": 0.5,
                                         "resnet_saved_model": str(newest)})
    assert default_model(root)[0] == newest  # nothing measured

    # The evaluation stores the ResNet's path as the pipeline names it (relative to the project folder).
    monkeypatch.chdir(tmp_path)
    path, _ = with_comparison("7", 0.62, 0.55, "saved_models/resnet/2")
    assert path == root / "attributes" / "7"
    path, _ = with_comparison("8", 0.62, 0.55, "other/saved_models/resnet/2")
    assert path == newest


def test_default_model_without_a_resnet_is_the_attribute_model(tmp_path):
    root = tmp_path / "saved_models"
    _version(root / "attributes" / "1")
    assert default_model(root) == (root / "attributes" / "1", "attribute model (no ResNet found)")
    _version(root / "attributes" / "2", {"attributes_model_mAP": 0.3, "resnet_mAP": 0.5,
                                         "resnet_saved_model": "saved_models/resnet/1"})
    assert default_model(root) == (root / "attributes" / "2", "attribute model (no ResNet found)")


def test_beam_on_image_is_measured_against_the_image_it_came_from():
    def result(x, y):
        return ImageResult(path=None, beam_xy=np.array([x, y], np.float32), shape=(10, 20))

    assert result(0.0, 0.0).beam_on_image and result(19.9, 9.9).beam_on_image
    assert not result(20.0, 5.0).beam_on_image and not result(5.0, -0.1).beam_on_image
    assert not result(5.0, 10.0).beam_on_image  # x is the column (of 20), y the row (of 10)
    assert result(15.0, 5.0).beam_on_image
    assert ImageResult(path=None).beam_on_image is None


# --------------------------------------------------------------------------- frames, headers, the contact sheet
def _series_folder(folder):
    """An Eiger series (5 frames in data files of 2), a 3-frame EDF, a 2-page TIFF and a CBF with a mini-header."""
    import tifffile
    from fabio.cbfimage import CbfImage
    from fabio.edfimage import EdfImage

    from detector_samples import eiger_frames, pilatus_like, write_eiger_series

    write_eiger_series(folder, "series", eiger_frames(5), per_file=2)
    stack = np.stack([pilatus_like(40, 52, seed=s).clip(0).astype(np.float32) for s in range(3)])
    edf = EdfImage(data=stack[0])
    edf.append_frame(data=stack[1])
    edf.append_frame(data=stack[2])
    edf.write(str(folder / "scan.edf"))
    tifffile.imwrite(folder / "pages.tif", stack[:2].astype(np.int32), photometric="minisblack")
    CbfImage(data=pilatus_like(), header={"_array_data.header_contents": "# Wavelength 0.9537 A\r\n"
                                          "# Detector_distance 0.25 m\r\n# Beam_xy (26.00, 13.50) pixels\r\n"}).write(
        str(folder / "single.cbf"))
    return stack


def test_every_frame_is_one_row_with_its_number_and_header(tmp_path, tagging_model):
    folder = tmp_path / "run42"
    folder.mkdir()
    stack = _series_folder(folder)
    output = tmp_path / "tags.jsonl"

    assert predict_directory(folder, model=tagging_model, output=output, batch_size=4, quiet=True) == []

    records = [json.loads(line) for line in output.read_text().splitlines()]
    keys = [(r["file"].rsplit("/", 1)[1], r["frame"]) for r in records]
    assert keys == [("pages.tif", 0), ("pages.tif", 1), ("scan.edf", 0), ("scan.edf", 1), ("scan.edf", 2),
                    ("series_master.h5", 0), ("series_master.h5", 1), ("series_master.h5", 2),
                    ("series_master.h5", 3), ("series_master.h5", 4), ("single.cbf", 0)]
    by_key = dict(zip(keys, records))
    assert by_key[("single.cbf", 0)]["header"] == {"beam_x": 26.0, "beam_y": 13.5, "wavelength_angstrom": 0.9537,
                                                   "distance_m": 0.25}
    assert by_key[("series_master.h5", 3)]["header"]["beam_x"] == 20.5
    alone, _ = tagging_model(stack[2][None])
    got = [by_key[("scan.edf", 2)]["probabilities"][a] for a in ATTRIBUTES]
    np.testing.assert_allclose(got, alone[0], rtol=1e-4, atol=1e-5)

    csv_output = tmp_path / "tags.csv"
    predict_directory(folder, model=tagging_model, output=csv_output, quiet=True)
    rows = list(csv.DictReader(csv_output.open()))
    assert [r["frame"] for r in rows] == [str(k) for _, k in keys]
    assert rows[-1]["header_beam_x"] == "26" and rows[-1]["wavelength_angstrom"] == "0.9537"


def test_a_bad_frame_is_named_file_hash_frame_and_the_rest_is_tagged(tmp_path, resnet_dir, capsys):
    import h5py

    from detector_samples import corrupt_hdf5_frame, eiger_frames, write_eiger_series

    folder = tmp_path / "bad"
    write_eiger_series(folder, "s", eiger_frames(4), per_file=4)
    corrupt_hdf5_frame(folder / "s_data_000001.h5", 2)
    stack = np.ones((3, 20, 20), np.float32)
    stack[1] = np.nan
    with h5py.File(folder / "stack.h5", "w") as f:
        f["images"] = stack
        f["other"] = stack
    output = tmp_path / "out.csv"

    code, out, err = run_cli(["predict", str(folder), "--model", str(resnet_dir), "-o", str(output),
                              "--h5-path", "/images"], capsys)

    assert code == 1, err
    assert "s_master.h5#2" in out and "stack.h5#1" in out and "all NaN" in out
    rows = {(r["file"].rsplit("/", 1)[1], r["frame"]): r for r in csv.DictReader(output.open())}
    assert sorted(rows) == [("s_master.h5", "0"), ("s_master.h5", "1"), ("s_master.h5", "2"), ("s_master.h5", "3"),
                            ("stack.h5", "0"), ("stack.h5", "1"), ("stack.h5", "2")]
    failed = sorted(k for k, r in rows.items() if r["error"])
    assert failed == [("s_master.h5", "2"), ("stack.h5", "1")]
    assert "5 tagged, 2 failed" in out


def _page_data(path):
    import re

    text = path.read_text()
    return text, json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text,
                                      re.S).group(1))


def test_html_contact_sheet_is_self_contained_with_one_row_per_frame(tmp_path, resnet_dir, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    _series_folder(folder)
    (folder / "broken.tif").write_text("no")
    page = tmp_path / "sheet.html"

    code, out, err = run_cli(["predict", str(folder), "--model", str(resnet_dir), "--html", str(page)], capsys)

    assert code == 1, err
    text, data = _page_data(page)
    assert len(data["rows"]) == data["total"] == 12  # 11 frames and the unreadable file
    assert len(data["images"]) == 11 and data["attributes"] == list(ATTRIBUTES)
    for forbidden in ("http://", "https://", "<link", "src=\"//", "@import"):
        assert forbidden not in text, forbidden
    assert [r[2] for r in data["rows"] if r[1].endswith("series_master.h5")] == ["0", "1", "2", "3", "4"]
    assert any(r[3].startswith("not an image") for r in data["rows"] if r[1].endswith("broken.tif"))
    import base64

    thumbnail = base64.b64decode(next(iter(data["images"].values())))
    assert thumbnail[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sheet.html"]  # written atomically, no leftovers


def test_html_caps_thumbnails_and_rows_to_stay_under_its_size(tmp_path, tagging_model):
    from xrayscatter.contact_sheet import write_contact_sheet
    from xrayscatter.predict import ImageResult

    png = (b"\x89PNG" + bytes(3000))
    results = [ImageResult(tmp_path / f"f{i:03d}.tif", scores=np.full(17, 0.3, np.float32),
                           decisions=np.zeros(17, np.int32), thumbnail=png) for i in range(300)]
    kw = dict(attributes=ATTRIBUTES, thresholds=[0.5] * 17)

    info = write_contact_sheet(tmp_path / "a.html", results, max_thumbnails=10, **kw)
    assert info["thumbnails"] == 10 and info["rows"] == 300
    text, data = _page_data(tmp_path / "a.html")
    assert sorted(map(int, data["images"])) == list(range(10)) and "thumbnails for 10 of 300" in text

    info = write_contact_sheet(tmp_path / "b.html", results, max_bytes=200_000, newest_first=True, **kw)
    assert info["bytes"] < 200_000 and 0 < info["thumbnails"] < 300 and info["rows"] == 300
    _, data = _page_data(tmp_path / "b.html")
    assert max(map(int, data["images"])) == 299  # the newest frames keep their pictures

    info = write_contact_sheet(tmp_path / "c.html", results, max_bytes=60_000, **kw)
    assert info["bytes"] < 60_000 and info["rows"] < 300
    _, data = _page_data(tmp_path / "c.html")
    assert data["rows"][0][0] == 0 and data["total"] == 300


def test_files_patterns_and_folders_as_users_type_them(tmp_path, tagging_model, monkeypatch):
    import tifffile

    from xrayscatter.readers import list_input_files

    run = tmp_path / "run42"
    run.mkdir()
    counts = np.random.default_rng(0).poisson(20, (40, 40)).astype(np.int32)
    for name in ("a.tif", "b.tif", "c.tif"):
        tifffile.imwrite(run / name, counts)
    single = tmp_path / "sample_0001.tif"
    tifffile.imwrite(single, counts)
    monkeypatch.chdir(tmp_path)

    # an unexpanded pattern, a file, and a folder that repeats a file: each file once, in the order given
    files = list_input_files(["run42/b*.tif", "sample_0001.tif", "run42"])
    assert [str(p) for p in files] == ["run42/b.tif", "sample_0001.tif", "run42/a.tif", "run42/c.tif"]
    with pytest.raises(XrayscatterError, match="nothing_\\*.h5: no file matches"):
        list_input_files(["nothing_*.h5"])
    with pytest.raises(XrayscatterError, match="missing.tif: file or folder not found"):
        list_input_files(["missing.tif"])

    output = tmp_path / "tags.jsonl"
    assert predict_directory(["run42/*.tif", "sample_0001.tif"], model=tagging_model, output=output, quiet=True) == []
    assert [json.loads(line)["file"].split("/")[-1] for line in output.read_text().splitlines()] == [
        "a.tif", "b.tif", "c.tif", "sample_0001.tif"]
