"""Writing outputs so that nothing half-written is ever visible, and the one progress bar.

Every file the project writes (shards and their summaries, the manifest, reports, figures, feature
caches, prediction tables, backups' bookkeeping) goes through :func:`atomic_path`: the content is
written to a temporary name in the same folder (``.<name>.tmp-<pid>``), flushed to the disk
(``fsync``) and renamed over the final name. A reader sees the old file or the new one, never a
part; a killed writer leaves only a hidden temporary, which the next run may remove.

Folders that appear at once (SavedModel versions, report figures) are the same idea one level up
(:mod:`xrayscatter.saved_model`, :mod:`xrayscatter.evaluation.report`).

:func:`progress_bar` is the one rich progress bar of the command line: simulation, training on
either route, evaluation and prediction all show the same columns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from xrayscatter.errors import XrayscatterError


def temporary_name(path: str | Path, suffix: str = "") -> Path:
    """``<folder>/.<name>.tmp-<pid><suffix>``: hidden, unique to this process, beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (so a rename cannot expose an empty file after a crash)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; fsynced and renamed over ``path`` on success.

    The parent folder is created. On an exception inside the block the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: the final file.
        suffix: appended to the temporary name (a writer that picks its format from the suffix).

    Example::

        with atomic_path(shard) as temporary:
            with tf.io.TFRecordWriter(str(temporary)) as writer: ...
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path, suffix)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: str | Path, content: str | bytes) -> Path:
    """Write text (UTF-8, newlines as given) or bytes to ``path`` atomically; returns ``path``.

    Raises:
        XrayscatterError: the file cannot be written (naming it and the reason).
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    try:
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
    except OSError as e:
        raise XrayscatterError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


def progress_bar(title: str, *, fields: tuple[str, ...] = (), elapsed: bool = False, console=None,
                 transient: bool = False, disable: bool = False):
    """The project's rich progress bar: ``<title> <description> ━━━━ n/N [fields] [elapsed] remaining``.

    Args:
        title: bold prefix, e.g. ``"train resnet"``.
        fields: names of extra text columns, each filled from ``add_task(..., name=value)`` /
            ``update(task, name=value)``; a field's text is shown as it is given.
        elapsed: also show the elapsed time.
        console: a ``rich.console.Console`` (default: rich's, on stdout).
        transient: remove the bar when done.
        disable: show nothing (quiet runs, benchmarks).

    Returns:
        A ``rich.progress.Progress`` (a context manager; or call ``start()``/``stop()``).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = [TextColumn(f"[bold]{title}[/] {{task.description}}" if title else "{task.description}"),
               BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in fields]
    if elapsed:
        columns.append(TimeElapsedColumn())
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient, disable=disable)
