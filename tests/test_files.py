"""Atomic writes (fsync + rename, nothing half-written visible) and the one progress bar."""

from __future__ import annotations

import os

import pytest

from xrayscatter.errors import XrayscatterError
from xrayscatter.files import atomic_path, progress_bar, temporary_name, write_atomically


def test_write_atomically_text_and_bytes_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert write_atomically(target, "é\n") == target  # the folder is created
    assert target.read_bytes() == "é\n".encode()
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            assert temporary == temporary_name(target) and temporary.name == f".table.csv.tmp-{os.getpid()}"
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_writer_choosing_its_format_by_suffix_gets_one(tmp_path):
    with atomic_path(tmp_path / "grid.png", suffix=".png") as temporary:
        assert temporary.suffix == ".png"
        temporary.write_bytes(b"png")
    assert (tmp_path / "grid.png").read_bytes() == b"png"


def test_unwritable_target_is_a_clear_error(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(XrayscatterError, match="blocker/out.txt: cannot write"):
        write_atomically(tmp_path / "blocker" / "out.txt", "x")


def test_progress_bar_has_the_shared_columns_and_named_fields(capsys):
    bar = progress_bar("simulate", fields=("unit",), elapsed=True)
    names = [type(c).__name__ for c in bar.columns]
    assert names == ["TextColumn", "BarColumn", "MofNCompleteColumn", "TextColumn", "TimeElapsedColumn",
                     "TimeRemainingColumn"]
    with progress_bar("quiet", disable=True) as quiet:
        task = quiet.add_task("x", total=3)
        quiet.advance(task, 3)
    assert capsys.readouterr().out == ""
