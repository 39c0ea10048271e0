"""Live tagging of a folder as a detector writes into it: ``xrayscatter watch DIR/``.

Every new frame is tagged as soon as its file is complete and appended to a JSON Lines file, one
line per frame, written whole and at once (``os.write`` of the full line on a file opened for
appending: a reader — or a watcher killed at any moment — never sees half a line).

When is a file complete?
    * when the writer closes it and it has not changed since (inotify's close-after-write, through
      ``watchdog``), or a file was renamed into the folder;
    * otherwise when its size and modification time have not changed for ``settle`` seconds (network
      file systems, where inotify sees nothing, are watched by polling: ``--poll``, chosen by
      itself for NFS, CIFS, Lustre, GPFS… mounts);
    * a file that reads as truncated, empty or corrupt while it is younger than a few seconds, or that
      changes while it is read, is tried again later rather than reported; only a file that stays
      unreadable is reported (``file: reason`` or ``file#frame: reason``) and the watch goes on;
    * multi-frame files are read again when they grow: only frames not yet tagged are tagged (an HDF5
      stack whose frame count grew, an Eiger master whose next data file arrived).

Eiger series: data files (``<prefix>_data_000001.h5``…) are read through their master (frames
numbered over the whole series), once: a data file is routed to the master that links it, or to the
``<prefix>_master.h5`` beside it; a data file without a master is read on its own after
``master_wait`` seconds.

Restart: the output is read first; what it holds (``file``, ``frame``) is never tagged again, and what
arrived while the watch was down is picked up. A half-written last line (a watcher killed by the
machine going down in the middle of a write) is cut off and its frame tagged again.

Stop: Ctrl-C or SIGTERM (or ``stop`` set, for a thread) stops after the current batch: every line
written is whole; frames read but not yet tagged are tagged on the next start.

``--port`` serves on 127.0.0.1 ``GET /last?n=20`` (the last results, newest last) and ``GET /status``
(counts, rate, what is pending) as JSON, for a beamline control system (e.g. a Bluesky callback).

The work is done by :class:`FolderWatch` (which tests and ``bench watch`` run in a thread with a stop
event); the CLI only parses arguments (:func:`watch_directory`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator

from xrayscatter.errors import XrayscatterError
from xrayscatter.predict import (FrameRead, FrameReader, ImageResult, OpenedFile, TaggingModel, default_model,
                                 prediction_record, resolve_model_dir, reuse_freed_memory_for_frames, tag_frames,
                                 warm_up, write_html)
from xrayscatter.readers import (DETECTOR_SUFFIXES, EIGER_DATA_FILE, HDF5_SUFFIXES, UnreadableImageError,
                                 open_frames)

DEFAULT_OUTPUT = "tags.jsonl"  # in the watched folder unless --output says otherwise
SETTLE_SECONDS = 1.0
POLL_SECONDS = 1.0
MASTER_WAIT_SECONDS = 30.0
RESCAN_SECONDS = 30.0  # a full look at the folder now and then, for events a file system did not send
HTML_EVERY_SECONDS = 15.0
HISTORY = 1000  # results kept for GET /last
HTML_ROWS = 20000  # newest results kept for the contact sheet
NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph",
                        "fuse.sshfs", "fuse.glusterfs", "glusterfs", "9p", "afs", "panfs", "wekafs", "fuse.dcfs"}
_LINE_START = re.compile(r'^\{"file": ("(?:[^"\\]|\\.)*"), "frame": (null|-?\d+)')


def now_iso() -> str:
    """UTC time with milliseconds, as written in every output line (``time``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the output, read back
@dataclass
class Previous:
    """What an existing output holds: frames done per file, its last records, its line count, the files with
    several frames (looked at again after a restart: more frames may have come)."""

    done: dict[Path, set]
    records: deque
    lines: int
    cut_bytes: int = 0
    stacked: set = None


def read_previous_output(output: Path, history: int = HISTORY) -> Previous:
    """Read an output a previous watch (or ``predict -o x.jsonl``) wrote; cut a half-written last line off.

    ``done[file]`` holds the frame numbers written (None: the whole file was reported unreadable).
    """
    done: dict[Path, set] = {}
    stacked: set = set()
    records: deque = deque(maxlen=history)
    if not output.exists():
        return Previous(done, records, 0, 0, stacked)
    data = output.read_bytes()
    cut = 0
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        cut = len(data) - keep
        os.truncate(output, keep)
        data = data[:keep]
    lines = data.splitlines()
    tail_from = max(0, len(lines) - history)
    for i, raw in enumerate(lines):
        text = raw.decode("utf-8", "replace")
        match = _LINE_START.match(text)
        if match is not None and i < tail_from:
            file, frame = json.loads(match.group(1)), json.loads(match.group(2))
        else:
            try:
                record = json.loads(text)
                file, frame = record["file"], record.get("frame", 0)
            except (ValueError, KeyError, TypeError):
                continue
            if i >= tail_from:
                records.append(record)
        done.setdefault(Path(file), set()).add(frame)
        if '"stacked": true' in text:
            stacked.add(Path(file))
    return Previous(done, records, len(lines), cut, stacked)


# --------------------------------------------------------------------------- which files are complete
class _State:
    __slots__ = ("stat", "changed", "closed", "closed_stat", "retry_at", "dirty")

    def __init__(self, stat, changed: float, dirty: bool = True):
        self.stat = stat
        self.changed = changed
        self.closed = False
        self.closed_stat = None
        self.retry_at = 0.0
        self.dirty = dirty


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Tracker:
    """Decides when files are complete and which frames are new; hands complete files to the reader.

    Everything but :meth:`post` and :meth:`maybe_incomplete` runs in the reader's feeder thread
    (:meth:`stream` is the reader's stream of items and :meth:`opener` opens them).

    Args:
        directory: the watched folder (absolute).
        exclude: files never tagged (the output, the contact sheet).
        done: frames already in the output, per file (updated as frames are claimed).
    """

    def __init__(self, directory: Path, *, recursive: bool = False, glob: str | None = None,
                 exclude: set[Path] = frozenset(), done: dict[Path, set] | None = None, h5_path: str | None = None,
                 settle: float = SETTLE_SECONDS, master_wait: float = MASTER_WAIT_SECONDS,
                 rescan: float = RESCAN_SECONDS, stacked: set | None = None):
        self.directory = directory
        self.recursive = recursive
        self.glob = glob
        self.exclude = {Path(p) for p in exclude}
        self.done = done if done is not None else {}
        self.stacked = stacked or set()  # multi-frame files: opened again at start (frames may have been added)
        self.h5_path = h5_path
        self.settle = settle
        self.error_settle = max(2.0, 2 * settle)  # a young file that reads badly is tried again until this old
        self.master_wait = master_wait
        self.rescan = rescan
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.files: dict[Path, _State] = {}
        self.masters: dict[Path, Path] = {}  # data file → the master that links it
        self._forced: dict[Path, None] = {}
        self._dirty: dict[Path, None] = {}  # files that changed and are not yet complete (insertion order)
        self._read_links: dict[Path, tuple] = {}  # data file → (stat, first, count): all its frames claimed

    # ---- from any thread
    def post(self, kind: str, path: Path, frame: int | None = None) -> None:
        """Report an event: ``changed``, ``closed`` (after writing), ``moved`` (renamed in), ``deleted``, ``retry``."""
        self.events.put((kind, Path(path), frame))

    def wanted(self, path: Path) -> bool:
        """Is ``path`` a file this watch tags (suffix or glob, not hidden, not excluded, depth)?"""
        try:
            relative = path.relative_to(self.directory)
        except ValueError:
            return False
        if any(part.startswith(".") for part in relative.parts) or path in self.exclude:
            return False
        if not self.recursive and len(relative.parts) != 1:
            return False
        if self.glob:
            return fnmatch(path.name, self.glob)
        return path.suffix.lower() in DETECTOR_SUFFIXES

    def maybe_incomplete(self, path: Path, stat_when_opened) -> bool:
        """A read failed: was the file perhaps still being written (changed since, or young)?"""
        now = _stat(path)
        if now is None:
            return True  # gone: nothing to report
        if stat_when_opened is not None and now != tuple(stat_when_opened):
            return True
        return time.time() - now[1] / 1e9 < self.error_settle

    @property
    def pending(self) -> int:
        """Files seen changing and not yet complete (or waiting to be tried again)."""
        return len(self._dirty)

    def _mark(self, path: Path, state: _State) -> None:
        state.dirty = True
        self._dirty[path] = None

    # ---- the feeder thread
    def stream(self, stop: threading.Event) -> Iterator[Path]:
        """Complete files, in the order they became complete, until ``stop`` is set."""
        self._scan(initial=True)
        next_rescan = time.monotonic() + self.rescan
        while not stop.is_set():
            self._drain(timeout=0.05 if self._forced or self._dirty else 0.5)
            if time.monotonic() >= next_rescan:
                self._scan(initial=False)
                next_rescan = time.monotonic() + self.rescan
            for path in self._ready():
                if stop.is_set():
                    return
                yield path

    def _scan(self, initial: bool) -> None:
        """Look at every file: new or changed ones become candidates (at start: all not in the output)."""
        now, wall = time.monotonic(), time.time()
        paths = self.directory.rglob("*") if self.recursive else self.directory.iterdir()
        found = []
        for path in paths:
            if path.is_file() and self.wanted(path):
                found.append(path)
        for path in sorted(found, key=str):
            stat = _stat(path)
            if stat is None:
                continue
            state = self.files.get(path)
            if state is None:
                age = max(0.0, wall - stat[1] / 1e9)
                skip = (initial and self.done.get(path) and path not in self.stacked
                        and path.suffix.lower() not in HDF5_SUFFIXES)
                state = self.files[path] = _State(stat, now - age, dirty=False)
                if not skip:
                    self._mark(path, state)
            elif state.stat != stat:
                state.stat, state.changed, state.closed = stat, now, False
                self._mark(path, state)

    def _drain(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._apply(*event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _apply(self, kind: str, path: Path, frame) -> None:
        now = time.monotonic()
        if kind == "deleted":
            self.files.pop(path, None)
            self._dirty.pop(path, None)
            return
        if kind == "retry":
            for target, (_, first, count) in list(self._read_links.items()):
                if self.masters.get(target) == path and frame is not None and first <= frame < first + count:
                    del self._read_links[target]  # that data file is to be opened again
            claimed = self.done.get(path)
            if claimed is not None:
                claimed.discard(frame)
                if frame is None:
                    claimed.discard(0)
            state = self.files.setdefault(path, _State(_stat(path), now))
            self._mark(path, state)
            state.retry_at = now + max(0.25, self.settle / 2)
            return
        if not self.wanted(path):
            return
        state = self.files.get(path)
        if state is None:
            state = self.files[path] = _State(None, now)
        self._mark(path, state)
        if kind in ("closed", "moved"):
            state.closed, state.closed_stat = True, None
        else:
            state.closed = False
            state.changed = now

    def _ready(self) -> list[Path]:
        """Files complete now (forced ones — masters whose data file arrived — first)."""
        ready = list(self._forced)
        self._forced.clear()
        now = time.monotonic()
        for path in list(self._dirty):
            state = self.files.get(path)
            if state is None:
                del self._dirty[path]
                continue
            if now < state.retry_at or path in ready:
                continue
            stat = _stat(path)
            if stat is None:
                del self.files[path], self._dirty[path]
                continue
            if stat != state.stat:
                state.stat = stat
                if not state.closed:
                    state.changed = now
            if state.closed and state.closed_stat is None:
                state.closed_stat = stat
            if state.closed and state.closed_stat != stat:
                state.closed, state.changed = False, now
            if state.closed or now - state.changed >= self.settle:
                state.dirty = False
                del self._dirty[path]
                ready.append(path)
        return ready

    def _later(self, path: Path, seconds: float) -> None:
        state = self.files.setdefault(path, _State(_stat(path), time.monotonic()))
        self._mark(path, state)
        state.retry_at = time.monotonic() + seconds

    def _master_of(self, path: Path) -> Path | None:
        master = self.masters.get(path)
        if master is not None:
            return master
        match = EIGER_DATA_FILE.match(path.name)
        if match is None:
            return None
        for suffix in (path.suffix, ".h5", ".hdf5", ".nxs"):
            candidate = path.with_name(f"{match.group('prefix')}_master{suffix}")
            if candidate.is_file():
                return candidate
        return None

    def _link_ready(self, path: Path) -> bool:
        """For a master being opened: is its linked data file ``path`` complete?"""
        state = self.files.get(path)
        if state is not None:
            return not state.dirty
        stat = _stat(path)
        if stat is None:
            return False
        if time.time() - stat[1] / 1e9 >= self.settle:
            return True
        self._mark(path, self.files.setdefault(path, _State(stat, time.monotonic())))  # routed to its master when complete
        return False

    def opener(self, path: Path) -> OpenedFile | None:
        """Open a complete file; None when there is nothing (yet) to read in it."""
        stat = _stat(path)
        if stat is None:
            return None
        master = self._master_of(path)
        if master is not None and master != path:
            self.masters[path] = master
            self._forced[master] = None  # its frames are read through the master
            return None
        if EIGER_DATA_FILE.match(path.name) and time.time() - stat[1] / 1e9 < self.master_wait:
            self._later(path, self.master_wait)  # a master may still come
            return None
        known = {target: (first, count) for target, (stat_then, first, count) in self._read_links.items()
                 if self.masters.get(target) == path and _stat(target) == stat_then}
        try:
            source = open_frames(path, self.h5_path, link_ready=self._link_ready, known_links=known)
        except UnreadableImageError as e:
            if self.maybe_incomplete(path, stat):
                self._later(path, max(0.25, self.settle / 2))
                return None
            claimed = self.done.setdefault(path, set())
            if None in claimed:
                return None  # reported before (and unchanged since)
            claimed.add(None)
            return OpenedFile(path, reason=e.reason, stat=stat)
        for linked in source.linked_files:
            self.masters[linked] = path
        claimed = self.done.setdefault(path, set())
        claimed.discard(None)
        numbers = [n for n in source.frame_numbers if n not in claimed]
        claimed.update(numbers)
        for target, (first, count) in getattr(source, "link_blocks", {}).items():
            if target not in known and all(n in claimed for n in range(first, first + count)):
                self._read_links[target] = (_stat(target), first, count)  # not opened again for the next data file
        if not numbers:
            source.close()
            return None
        return OpenedFile(path, source, numbers, stat=stat)


# --------------------------------------------------------------------------- file-system events
def _network_file_system(path: Path) -> str | None:
    """The type of the network file system ``path`` is on (from /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind if kind in NETWORK_FILE_SYSTEMS else None


def start_observer(directory: Path, tracker: Tracker, recursive: bool, poll: float | None):
    """A running watchdog observer posting the folder's events to ``tracker``; (observer, description).

    Args:
        poll: seconds between polls (watchdog's PollingObserver); None → inotify (or the platform's
            native events), polling by itself on a network file system or where native events fail.
    """
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.is_directory:
                return
            kind = event.event_type
            if kind == "moved":  # a rename: complete at once (with full events, src or dest may be "", outside)
                if event.src_path:
                    tracker.post("deleted", Path(os.fsdecode(event.src_path)))
                if event.dest_path:
                    tracker.post("moved", Path(os.fsdecode(event.dest_path)))
            elif kind in ("created", "modified"):
                tracker.post("changed", Path(os.fsdecode(event.src_path)))
            elif kind == "closed":
                tracker.post("closed", Path(os.fsdecode(event.src_path)))
            elif kind == "deleted":
                tracker.post("deleted", Path(os.fsdecode(event.src_path)))

    network = _network_file_system(directory)
    if poll is None and network is None:
        try:
            try:  # Linux: a file renamed in from outside the folder is a move (complete), not a new file
                from watchdog.observers.inotify import InotifyObserver

                observer = InotifyObserver(generate_full_events=True)
            except ImportError:
                observer = Observer()
            observer.schedule(Handler(), str(directory), recursive=recursive)
            observer.start()
            return observer, f"file-system events ({type(observer).__name__.replace('Observer', '').lower()})"
        except OSError as e:  # e.g. the inotify watch limit
            poll, reason = POLL_SECONDS, f"events unavailable ({e.strerror or e})"
    else:
        reason = f"{network} file system" if poll is None else "--poll"
        poll = poll or POLL_SECONDS
    observer = PollingObserver(timeout=poll)
    observer.schedule(Handler(), str(directory), recursive=recursive)
    observer.start()
    return observer, f"polling every {poll:g} s ({reason})"


# --------------------------------------------------------------------------- the HTTP endpoint
def start_http(watch: "FolderWatch", port: int):
    """Serve ``GET /last?n=N`` and ``GET /status`` as JSON on 127.0.0.1:``port`` (0: any free port)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            status = 200
            if url.path == "/last":
                try:
                    n = int(query.get("n", ["20"])[0])
                except ValueError:
                    n = -1
                if n < 1:
                    status, body = 400, {"error": "n must be a positive integer"}
                else:
                    body = {"results": watch.last(n)}
            elif url.path == "/status":
                body = watch.status()
            elif url.path == "/":
                body = {"endpoints": {"/last?n=20": "the last n results (newest last), as in the output file",
                                      "/status": "counts, rate, pending files, output, model"}}
            else:
                status, body = 404, {"error": f"no such endpoint: {url.path} (try /last?n=20 or /status)"}
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: the terminal shows tags
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Api)
    except OSError as e:
        raise XrayscatterError(f"--port {port}: cannot serve on 127.0.0.1 ({e.strerror or e})") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    return server


# --------------------------------------------------------------------------- the watch
class FolderWatch:
    """Tag every frame written into ``directory`` until stopped.

    Args:
        directory: the folder the detector writes into.
        model: SavedModel folder, model folder of versions, loaded :class:`TaggingModel`, or None (the default
            model of ``predict``).
        output: the JSON Lines file (default ``<directory>/tags.jsonl``); read first to resume.
        recursive, glob: which files (as ``predict``).
        h5_path: the data set of the frames in HDF5 files (default: the Eiger/NeXus layout).
        batch_size: frames per forward pass when that many are read and waiting (a backlog); fewer go one by one
            (a batch never waits to fill).
        workers: reader threads.
        settle: seconds a file's size must stay unchanged when no close event says it is complete.
        poll: poll every this many seconds instead of file-system events (network file systems);
            None: events, polling by itself where they are not available.
        port: serve ``/last`` and ``/status`` on 127.0.0.1 (0: a free port, see :attr:`port`).
        html: also keep a contact sheet of the newest frames up to date (every ``html_every`` s and at the end).
        quiet: print nothing (tests, benchmarks).
        on_result: called with each output record once its line is written (benchmarks).
        master_wait: seconds an Eiger data file waits for its master before it is read alone.
        views: average the probabilities over 1, 4 or 8 flipped and turned views of each frame (one forward
            pass each; :class:`xrayscatter.predict.TaggingModel`); None: the views the model was exported with.
    """

    def __init__(self, directory: str | Path, model: str | Path | TaggingModel | None = None,
                 output: str | Path | None = None, *, recursive: bool = False, glob: str | None = None,
                 h5_path: str | None = None, batch_size: int = 16, workers: int = 2,
                 settle: float = SETTLE_SECONDS, poll: float | None = None, port: int | None = None,
                 html: str | Path | None = None, html_every: float = HTML_EVERY_SECONDS, history: int = HISTORY,
                 quiet: bool = False, on_result: Callable[[dict], None] | None = None,
                 master_wait: float = MASTER_WAIT_SECONDS, views: int | None = None):
        directory = Path(directory)
        if not directory.is_dir():
            raise XrayscatterError(f"{directory}: {'not a folder' if directory.exists() else 'folder not found'}")
        if batch_size < 1:
            raise XrayscatterError(f"--batch-size must be ≥ 1, got {batch_size}")
        if settle < 0 or (poll is not None and poll <= 0):
            raise XrayscatterError("--settle must be ≥ 0 and --poll > 0 seconds")
        self.directory = directory.resolve()
        self.output = Path(output).resolve() if output is not None else self.directory / DEFAULT_OUTPUT
        if self.output.suffix.lower() not in (".jsonl", ".ndjson"):
            raise XrayscatterError(f"{output}: watch appends JSON Lines (use a .jsonl file)")
        self.html = Path(html).resolve() if html is not None else None
        if self.html is not None and self.html.suffix.lower() not in (".html", ".htm"):
            raise XrayscatterError(f"{html}: the contact sheet is an .html file")
        self.recursive, self.glob, self.h5_path = recursive, glob, h5_path
        self.batch_size, self.workers, self.settle, self.poll = batch_size, max(1, workers), settle, poll
        self.requested_port, self.port = port, None
        self.html_every, self.history, self.quiet, self.on_result = html_every, history, quiet, on_result
        self.master_wait = master_wait
        if model is None:
            path, reason = default_model()
            self._model_reason = reason
            model = path
        else:
            self._model_reason = ""
        self.model = model if isinstance(model, TaggingModel) else TaggingModel(resolve_model_dir(model), views)
        self.tagged = self.failed = 0
        self.lines = 0
        self.started = None
        self.last_time = None
        self.watching = ""
        self._recent = deque(maxlen=max(1, history))
        self._times: deque = deque(maxlen=600)
        self._lock = threading.Lock()
        self._html_results: deque = deque(maxlen=HTML_ROWS)
        self._html_thread: threading.Thread | None = None
        self.tracker: Tracker | None = None
        self._reader: FrameReader | None = None

    # ---- for the HTTP endpoint (any thread)
    def last(self, n: int) -> list[dict]:
        with self._lock:
            return list(self._recent)[-n:]

    def status(self) -> dict:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._times if now - t <= 60]
            rate = len(recent) / min(60.0, max(1e-9, now - recent[0])) if len(recent) > 1 else 0.0
            return {"directory": str(self.directory), "output": str(self.output), "model": str(self.model.path),
                    "watching": self.watching, "started": self.started, "tagged": self.tagged,
                    "failed": self.failed, "lines": self.lines, "last_time": self.last_time,
                    "frames_per_second": round(rate, 2),
                    "pending_files": self.tracker.pending if self.tracker is not None else 0}

    # ---- the loop
    def run(self, stop: threading.Event | None = None) -> dict:
        """Watch until ``stop`` is set (or Ctrl-C / SIGTERM in the main thread); returns the session's counts."""
        stop = stop or threading.Event()
        restore = self._handle_signals(stop)
        reuse_freed_memory_for_frames()
        previous = read_previous_output(self.output, self.history)
        self.lines = previous.lines
        self._recent.extend(previous.records)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.tracker = Tracker(self.directory, recursive=self.recursive, glob=self.glob,
                               exclude={self.output} | ({self.html} if self.html else set()), done=previous.done,
                               h5_path=self.h5_path, settle=self.settle, master_wait=self.master_wait,
                               stacked=previous.stacked)
        observer = server = None
        try:
            observer, self.watching = start_observer(self.directory, self.tracker, self.recursive, self.poll)
            if self.requested_port is not None:
                server = start_http(self, self.requested_port)
                self.port = server.server_address[1]
            self.started = now_iso()
            self._banner(previous)
            from xrayscatter.contact_sheet import thumbnail_size_for

            thumbnails = thumbnail_size_for(self.model) if self.html is not None else None
            self._reader = FrameReader(self.tracker.stream(stop), self.tracker.opener, self.workers,
                                       lookahead=2 * self.batch_size + self.workers, thumbnail_size=thumbnails)
            warm_up(self.model)  # the first forward pass builds the graph's kernels (seconds): not on the first frame
            self._loop(stop, descriptor)
        finally:
            stop.set()
            if self._reader is not None:
                self._reader.close()
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            if server is not None:
                server.shutdown()
                server.server_close()
            try:
                os.fsync(descriptor)
            except OSError:
                pass
            os.close(descriptor)
            if self._html_thread is not None:
                self._html_thread.join()
            if self.html is not None and self._html_results:
                self._write_html()
            restore()
        summary = {"tagged": self.tagged, "failed": self.failed, "lines": self.lines, "output": str(self.output)}
        if not self.quiet:
            print(f"stopped: {self.tagged} frame(s) tagged, {self.failed} unreadable in this session; "
                  f"{self.lines} line(s) in {self.output}" + (f"; contact sheet {self.html}" if self.html else ""),
                  flush=True)
        return summary

    def _loop(self, stop: threading.Event, descriptor: int) -> None:
        """Tag whatever is read, at once: a batch never waits to fill. A backlog (``batch_size`` frames read
        and waiting) is worked off in full batches, the fastest per frame; short of that, frames go one by one,
        so that each line is written as soon as its own pass is done. The frames of an Eiger data file arrive
        together; on a CPU, whose passes cost about the same per frame at any batch size (the default model:
        61–70 ms a 1024² frame at batches of 1 to 16), ten of them batched as 8 + 2 had their lines after 8 and
        10 frames' passes, one by one after 1, 2, …, 10 (`bench watch`: median latency 0.70 → 0.48 s). On an
        accelerator a rate that single frames cannot follow builds the backlog that turns full batches on.
        (Batches are of 1, 2, 4, 8 or 16 frames: each size builds its kernels once.)"""
        reader = self._reader
        next_html = time.monotonic() + self.html_every
        carry: list[FrameRead] = []
        while not stop.is_set():
            first = None if carry else reader.get(timeout=0.2)
            if first is None and not carry:
                if reader.finished:
                    break
            else:
                batch = carry + ([first] if first is not None else [])
                while len(batch) < self.batch_size and reader.ready():
                    read = reader.get(timeout=0)
                    if read is None:
                        break
                    batch.append(read)
                take = 1 << (len(batch).bit_length() - 1) if len(batch) >= self.batch_size else 1
                batch, carry = batch[:take], batch[take:]
                batch = [read for read in batch if not self._try_again_later(read)]
                for result in tag_frames(self.model, batch, power_of_two=True):
                    self._emit(result, descriptor)
            if self.html is not None and time.monotonic() >= next_html:
                next_html = time.monotonic() + self.html_every
                self._write_html_in_background()

    def _try_again_later(self, read: FrameRead) -> bool:
        if read.reason is None or not self.tracker.maybe_incomplete(read.path, read.stat):
            return False
        self.tracker.post("retry", read.path, read.frame)
        return True

    def _emit(self, result: ImageResult, descriptor: int) -> None:
        record = prediction_record(result, self.model)
        record["time"] = now_iso()
        line = (json.dumps(record) + "\n").encode("utf-8")
        written = 0
        while written < len(line):
            written += os.write(descriptor, line[written:])
        with self._lock:
            self.lines += 1
            if result.error is None:
                self.tagged += 1
            else:
                self.failed += 1
            self.last_time = record["time"]
            self._recent.append(record)
            self._times.append(time.monotonic())
        if self.html is not None:
            with self._lock:
                self._html_results.append(result)
        if not self.quiet:
            self._print(result)
        if self.on_result is not None:
            self.on_result(record)

    def _print(self, result: ImageResult) -> None:
        try:
            shown = str(result.path.relative_to(self.directory))
        except ValueError:
            shown = str(result.path)
        if result.stacked and result.frame is not None:
            shown += f"#{result.frame}"
        if result.error is not None:
            text = f"unreadable: {result.error}"
        else:
            order = sorted(range(len(self.model.attributes)), key=lambda i: -result.scores[i])
            tags = [f"{self.model.attributes[i]} {result.scores[i]:.2f}" for i in order if result.decisions[i]]
            text = ", ".join(tags) if tags else "–"
        print(f"{self.lines:>8}  {shown}  {text}", flush=True)

    def _write_html(self) -> None:
        with self._lock:
            results = list(self._html_results)
        write_html(results, self.model, self.html, title=f"xrayscatter watch {self.directory}", newest_first=True)

    def _write_html_in_background(self) -> None:
        if self._html_thread is not None and self._html_thread.is_alive():
            return
        self._html_thread = threading.Thread(target=self._write_html, name="html", daemon=True)
        self._html_thread.start()

    def _banner(self, previous: Previous) -> None:
        if self.quiet:
            return
        lines = [f"watching {self.directory} ({self.watching}); model {self.model.path}"
                 + (f" ({self._model_reason})" if self._model_reason else "")]
        resumed = f"; {previous.lines} line(s) there already: not tagged again" if previous.lines else ""
        lines.append(f"output {self.output}{resumed}")
        if previous.cut_bytes:
            lines.append(f"cut a half-written last line ({previous.cut_bytes} bytes) off {self.output}; its frame "
                         "is tagged again")
        if self.port is not None:
            lines.append(f"results on http://127.0.0.1:{self.port}/last?n=20 and /status")
        lines.append("Ctrl-C stops (every line written is whole)")
        print("\n".join(lines), flush=True)

    def _handle_signals(self, stop: threading.Event) -> Callable[[], None]:
        """Ctrl-C and SIGTERM set ``stop`` (a second Ctrl-C interrupts at once); only in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            stop.set()

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


def watch_directory(directory: str | Path, model: str | Path | None = None, output: str | Path | None = None,
                    **options) -> dict:
    """``xrayscatter watch``: :class:`FolderWatch` (``options`` are its keyword arguments) run until stopped."""
    return FolderWatch(directory, model, output, **options).run()
