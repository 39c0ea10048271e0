"""`xrayscatter watch`: files written by another process while it runs, slow writers, bad files, restarts, HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import ENV, REPO, kill_when, shared_saved_models
from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.errors import XrayscatterError
from xrayscatter.predict import TaggingModel
from xrayscatter.readers import read_detector_image
from xrayscatter.watch import FolderWatch, read_previous_output

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    return shared_saved_models(tmp_path_factory, ["resnet"]) / "resnet" / "1"


@pytest.fixture(scope="module")
def tagging_model(resnet_dir):
    return TaggingModel(resnet_dir)


def lines_of(output: Path) -> list[dict]:
    """The whole lines of the output (a line being written is not yet one)."""
    return [json.loads(line) for line in output.read_text().split("\n")[:-1]] if output.exists() else []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def writer(code: str) -> subprocess.Popen:
    """Another process writing into the folder (the detector)."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=TESTS, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


WRITE_FILES = """
import sys, time
from pathlib import Path
import numpy as np, tifffile
from detector_samples import eiger_frames, pilatus_like, write_eiger_series, write_good_files
folder = Path(sys.argv[1])
write_good_files(folder / "stage")  # then moved in one by one, as a file written elsewhere and renamed
for path in sorted((folder / "stage").iterdir()):
    path.rename(folder / path.name)
    time.sleep(0.05)
(folder / "stage").rmdir()
tifffile.imwrite(folder / ".slow.tmp", pilatus_like(64, 64, seed=9))
data = (folder / ".slow.tmp").read_bytes()
(folder / ".slow.tmp").unlink()
pieces = 5
for k in range(pieces):  # a slow writer: open, append a piece, close, wait
    with open(folder / "slow.tif", "ab") as f:
        f.write(data[k * len(data) // pieces:(k + 1) * len(data) // pieces])
    time.sleep(0.7)
(folder / "bad.tif").write_text("a text file, not an image")
write_eiger_series(folder, "series", eiger_frames(5), per_file=2)
print("done", flush=True)
"""


def test_watch_tags_files_another_process_writes_including_a_slow_one_and_a_bad_one(tmp_path, tagging_model):
    folder, output = tmp_path / "beamline", tmp_path / "tags.jsonl"
    folder.mkdir()
    stop = threading.Event()
    watch = FolderWatch(folder, tagging_model, output, quiet=True, settle=0.5, port=0, html=tmp_path / "live.html",
                        html_every=0.5)
    thread = threading.Thread(target=watch.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: watch.port is not None, 60, "the watch started")
        process = writer(WRITE_FILES.replace("sys.argv[1]", repr(str(folder))))
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        expected = 7 + 1 + 1 + 5  # good files, the slow one, the bad one, five Eiger frames
        wait_for(lambda: len(lines_of(output)) >= expected, 60, f"{expected} lines")
        time.sleep(1.5)  # nothing more must come

        records = lines_of(output)
        keys = [(Path(r["file"]).name, r["frame"]) for r in records]
        assert len(keys) == len(set(keys)) == expected, keys
        by_name = {k: r for k, r in zip(keys, records)}
        assert {k for k in keys if k[0].startswith("series")} == {("series_master.h5", n) for n in range(5)}
        assert not any(name.startswith("series_data") for name, _ in keys)
        assert by_name[("bad.tif", None)]["error"].startswith("not an image")
        slow = by_name[("slow.tif", 0)]
        assert slow["error"] is None  # never read half-written
        alone, _ = tagging_model(read_detector_image(folder / "slow.tif")[None])
        np.testing.assert_allclose([slow["probabilities"][a] for a in ATTRIBUTES], alone[0], rtol=1e-4, atol=1e-5)
        assert all(r["error"] is None for k, r in by_name.items() if k[0] != "bad.tif")
        assert all("time" in r for r in records)

        base = f"http://127.0.0.1:{watch.port}"
        last = json.load(urllib.request.urlopen(f"{base}/last?n=3", timeout=10))["results"]
        assert last == records[-3:]
        status = json.load(urllib.request.urlopen(f"{base}/status", timeout=10))
        assert status["tagged"] == expected - 1 and status["failed"] == 1 and status["lines"] == expected
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/nothing", timeout=10)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    page = (tmp_path / "live.html").read_text()
    assert page.count('"series_master.h5') == 0 and "series_master.h5" in page  # paths are inside the JSON rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beamline", "live.html", "tags.jsonl"]


WRITE_SERIES = """
import sys, time
from pathlib import Path
from detector_samples import eiger_frames, write_eiger_data_file, write_eiger_series
folder = Path(sys.argv[1])
frames = eiger_frames(8)
write_eiger_series(folder, "live", frames, per_file=2, missing_data_files=(2, 3, 4))  # the master comes first
for k in (2, 3, 4):
    time.sleep(0.8)
    write_eiger_data_file(folder, "live", k, frames, per_file=2)
"""


def test_an_eiger_series_is_tagged_data_file_by_data_file_through_its_master(tmp_path, tagging_model):
    folder, output = tmp_path / "eiger", tmp_path / "tags.jsonl"
    folder.mkdir()
    stop = threading.Event()
    watch = FolderWatch(folder, tagging_model, output, quiet=True, settle=0.5)
    thread = threading.Thread(target=watch.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: watch.started is not None, 60, "the watch started")
        process = writer(WRITE_SERIES.replace("sys.argv[1]", repr(str(folder))))
        assert process.wait(timeout=120) == 0, process.stderr.read()
        wait_for(lambda: len(lines_of(output)) >= 8, 60, "8 frames")
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=60)
    records = lines_of(output)
    assert [(Path(r["file"]).name, r["frame"]) for r in records] == [("live_master.h5", n) for n in range(8)]
    assert all(r["error"] is None and r["header"]["distance_m"] == 2.5 for r in records)
    assert len(watch.tracker._read_links) >= 3  # data files read once are not opened again for the next one


WRITE_TIFFS = """
import sys, time
from pathlib import Path
import tifffile
from detector_samples import pilatus_like
folder, first, count, pause = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for i in range(first, first + count):
    tifffile.imwrite(folder / f"frame_{i:03d}.tif", pilatus_like(48, 48, seed=i))
    time.sleep(pause)
"""


def start_watch(folder: Path, output: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xrayscatter", "watch", str(folder), "-o", str(output),
                             "--model", str(model), "--settle", "0.3"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_and_restarted_watch_neither_duplicates_nor_loses_a_line(tmp_path, resnet_dir):
    folder, output = tmp_path / "run", tmp_path / "tags.jsonl"
    folder.mkdir()
    watch = start_watch(folder, output, resnet_dir)
    try:
        wait_for(output.exists, 120, "the watch started")  # it opens its output before it looks at the folder
        feed = subprocess.Popen([sys.executable, "-c", WRITE_TIFFS, str(folder), "0", "8", "0.3"], cwd=TESTS, env=ENV)
        kill_when(watch, lambda: len(lines_of(output)) >= 3, timeout=120)  # SIGKILL in the middle of the run
        assert feed.wait(timeout=60) == 0
        with output.open("a") as f:  # as if the kill had hit in the middle of a line
            f.write('{"file": "' + str(folder / "frame_007.tif"))
        before = [json.loads(line) for line in output.read_text().splitlines()[:-1]]
        subprocess.run([sys.executable, "-c", WRITE_TIFFS, str(folder), "8", "3", "0"], cwd=TESTS, env=ENV,
                       check=True, timeout=60)  # arrive while the watch is down

        watch = start_watch(folder, output, resnet_dir)
        wait_for(lambda: len(lines_of(output)) >= 11, 120, "11 lines after the restart")
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    records = lines_of(output)
    names = [Path(r["file"]).name for r in records]
    assert sorted(names) == [f"frame_{i:03d}.tif" for i in range(11)]  # each once: none lost, none twice
    assert records[:len(before)] == before  # what was written before the kill is kept as it was
    assert f"{len(before)} line(s) there already" in out and "cut a half-written last line" in out
    assert "stopped:" in out and "Traceback" not in err


def test_watch_averages_the_views_asked_for(tmp_path, resnet_dir):
    folder = tmp_path / "run"
    folder.mkdir()
    assert FolderWatch(folder, resnet_dir, quiet=True).model.views == 1  # the model's own (exported with 1)
    assert FolderWatch(folder, resnet_dir, quiet=True, views=4).model.views == 4
    with pytest.raises(XrayscatterError, match="--views must be one of 1, 4, 8, got 2"):
        FolderWatch(folder, resnet_dir, quiet=True, views=2)


def test_read_previous_output_keeps_whole_lines_and_frames(tmp_path):
    output = tmp_path / "t.jsonl"
    output.write_text('{"file": "/a/x.h5", "frame": 3, "error": null, "stacked": true}\n{"file": "/a/y.tif", '
                      '"frame": null, "error": "bad"}\n{"file": "/a/z.t')
    previous = read_previous_output(output, history=1)
    assert previous.done == {Path("/a/x.h5"): {3}, Path("/a/y.tif"): {None}}
    assert previous.stacked == {Path("/a/x.h5")}
    assert previous.lines == 2 and previous.cut_bytes == len('{"file": "/a/z.t')
    assert output.read_text().endswith("}\n") and [r["file"] for r in previous.records] == ["/a/y.tif"]


def test_bench_watch_reports_latency_and_sustained_rate_at_tiny_size(tmp_path, resnet_dir):
    from xrayscatter.benchmarks.watch import bench_watch

    result = bench_watch(model=resnet_dir, rate=20, seconds=1.0, size=64, frames_per_file=4, burst=8,
                         folder=tmp_path / "bench", quiet=True)

    for kind in ("tiff", "hdf5"):
        latency = result["latency"][kind]
        assert latency["frames"] == latency["expected"] == 20
        assert 0 <= latency["median"] <= latency["p95"] <= latency["max"]
    assert result["predict_rate"] > 0 and result["drained_rate"] > 0 and result["checks"]
    held = [c for c in result["checks"] if not c["backlog_growing"]]
    assert result["sustained_rate"] == held[0]["rate"] and result["ratio"] == pytest.approx(
        held[0]["rate"] / result["predict_rate"])
    assert {"median", "p95", "backlog_growing", "rate"} <= set(result["check"])
    assert all(len(c["latencies"]) == c["frames"] and min(c["latencies"]) >= 0 for c in result["checks"])
    assert "load average" in result["load"][0]


@pytest.mark.parametrize("waiting, batches", [(5, [1, 1, 1, 1, 1]), (16, [16]), (19, [16, 1, 1, 1])])
def test_frames_go_one_by_one_unless_a_full_batch_waits(tmp_path, tagging_model, monkeypatch, waiting, batches):
    """Frames read together (an Eiger data file's) are tagged one by one, each line as soon as its pass is done;
    only a full batch's worth waiting is tagged as one batch (a backlog, worked off at the best rate per frame)."""
    from xrayscatter.predict import FrameRead

    class ReadAlready:  # every frame read before the loop looks
        def __init__(self, count: int):
            self.reads = [FrameRead(tmp_path / f"frame_{i}.tif", None, np.full((32, 32), 5.0, np.float32), None)
                          for i in range(count)]
            self.finished = False

        def ready(self) -> bool:
            return bool(self.reads)

        def get(self, timeout=None):
            if self.reads:
                return self.reads.pop(0)
            self.finished = True
            return None

    sizes, emitted = [], []
    tag = tagging_model.tag
    monkeypatch.setattr(tagging_model, "tag", lambda counts: (sizes.append(len(counts)), tag(counts))[1])
    watch = FolderWatch(tmp_path, tagging_model, quiet=True, batch_size=16)
    watch._reader = ReadAlready(waiting)
    monkeypatch.setattr(watch, "_emit", lambda result, descriptor: emitted.append(result.path.name))
    watch._loop(threading.Event(), descriptor=-1)
    assert sizes == batches
    assert emitted == [f"frame_{i}.tif" for i in range(waiting)]
