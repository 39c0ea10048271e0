"""SavedModels on disk: integer versions, atomic publishing, metadata, the newest version, the export base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xrayscatter.errors import XrayscatterError
from xrayscatter.saved_model import (METADATA_FILE, SavedModelExport, latest_saved_model, newest_version, publish,
                                     read_metadata, versions)


def _write(folder: Path) -> None:
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"x")


def test_publish_takes_the_next_integer_version_and_never_shows_a_partial_one(tmp_path):
    base = tmp_path / "resnet"
    (base / "1").mkdir(parents=True)
    (base / "7").mkdir()
    (base / "notes").mkdir()

    first = publish(_write, base, {"model": "m"})
    second = publish(_write, base)
    assert (first.name, second.name) == ("8", "9")
    assert json.loads((first / METADATA_FILE).read_text()) == {"model": "m"}
    assert not (second / METADATA_FILE).exists()

    def failing(folder: Path) -> None:
        _write(folder)
        raise OSError("disk full")

    with pytest.raises(OSError):
        publish(failing, base)
    assert versions(base) == [1, 7, 8, 9]
    assert sorted(p.name for p in base.iterdir()) == ["1", "7", "8", "9", "notes"]


def test_newest_version_is_the_largest_integer_holding_a_saved_model(tmp_path):
    for name in ("1", "2", "10", ".tmp-export-9"):
        _write(tmp_path / name)
    (tmp_path / "11").mkdir()  # a number but no saved_model.pb: not a model
    assert versions(tmp_path) == [1, 2, 10, 11] and versions(tmp_path, complete=True) == [1, 2, 10]
    assert newest_version(tmp_path) == latest_saved_model(tmp_path) == tmp_path / "10"
    assert newest_version(tmp_path / "missing") is None


def test_no_version_is_a_clear_error_with_a_hint(tmp_path):
    with pytest.raises(XrayscatterError, match="no SavedModel version.*run 'xrayscatter train resnet'"):
        latest_saved_model(tmp_path, "run 'xrayscatter train resnet' first")


def test_read_metadata_required_or_not(tmp_path):
    with pytest.raises(XrayscatterError, match="not a SavedModel"):
        read_metadata(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert read_metadata(tmp_path, required=False) == {}  # a model from elsewhere: no metadata
    with pytest.raises(XrayscatterError, match="missing"):
        read_metadata(tmp_path)
    (tmp_path / METADATA_FILE).parent.mkdir()
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(XrayscatterError, match="unreadable model metadata"):
        read_metadata(tmp_path, required=False)
    (tmp_path / METADATA_FILE).write_text('{"attributes": ["Ring"]}')
    assert read_metadata(tmp_path) == {"attributes": ["Ring"]}


class _TinyExport(SavedModelExport):
    """An export that writes a marker file instead of a graph: the base's part alone."""

    model = "resnet"

    def model_metadata(self) -> dict:
        return {"input_size": 7, "model": "ignored"}

    def write(self, path: Path, metadata: dict) -> None:
        path.mkdir()
        (path / "saved_model.pb").write_text(json.dumps(self.constants(metadata)))


def test_export_base_shares_provenance_normalisation_and_constants(smoke_config, tmp_path):
    folder = _TinyExport(smoke_config, tmp_path / "resnet", {"thresholds": [0.5]}).export()
    metadata = read_metadata(folder)
    assert metadata["model"] == "ignored"  # a model's own fields come after the shared ones, extras last
    assert metadata["input_size"] == 7 and metadata["thresholds"] == [0.5] and metadata["format_version"] == 1
    assert metadata["pipeline"] == "smoke" and metadata["config"] == json.loads(json.dumps(smoke_config.to_dict()))
    assert "log1p" in metadata["normalization"] and metadata["created"].endswith("+00:00")
    assert {"xrayscatter", "tensorflow", "keras"} <= set(metadata["versions"])
    constants = json.loads((folder / "saved_model.pb").read_text())
    assert json.loads(constants["metadata_json"]) == metadata
    assert constants["normalization"] == metadata["normalization"]
    # The default folder is the model's section's output_dir.
    assert _TinyExport(smoke_config).output_dir == Path(smoke_config.resnet.output_dir)
