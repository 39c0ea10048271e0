"""Benchmarks: rates measured side by side in one run, printed as tables (never timed assertions).

Every bench prints the conditions it ran under (:func:`conditions`: cores, load average, memory)
and returns a dict whose ``ratios`` are :class:`Ratio` rows (value, target, pass / short).
``xrayscatter bench report`` gathers the JSON files that ``--json`` writes into one table,
``reports/bench/bench.md`` and ``bench.json`` (``make bench``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def results_table(title: str, columns: tuple[str, ...], rows: list[tuple], first_left: bool = True):
    """A rich table of measurements: numbers right-aligned, the first column (the measurement's name) left.

    Args:
        first_left: left-align the first column; False: every column right-aligned.
    """
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if first_left and i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- conditions
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> tuple[float | None, float | None]:
    """(total, available) GiB from /proc/meminfo (None where absent)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (round(int(fields["MemTotal"].split()[0]) / 2**20, 1),
                round(int(fields["MemAvailable"].split()[0]) / 2**20, 1))
    except (OSError, KeyError, ValueError):
        return None, None


def conditions() -> dict:
    """What a measurement ran under: cores this process may use, the load average (runnable processes,
    1/5/15 min: above the core count, other work shares the cores), CPU model, memory, versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    total, available = _memory_gib()
    versions = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["tensorflow"] = version("tensorflow")  # without importing it (seconds)
    except Exception:  # noqa: BLE001 - PackageNotFoundError or a broken install: the conditions still print
        pass
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "epoch": time.time(), "cores": cores, "load_average": load,
            "busy": bool(load and load[0] > 0.5 * (cores or 1)), "cpu": _cpu_model(), "memory_gib": total,
            "memory_available_gib": available, "versions": versions}


def conditions_line(c: dict | None = None) -> str:
    """One line for a console or a report: cores, load average, whether the cores were shared."""
    c = c or conditions()
    load = "/".join(f"{x:.2f}" for x in c["load_average"]) if c.get("load_average") else "unknown"
    note = "other work shares the cores: rates are low" if c.get("busy") else "quiet"
    return (f"{c['cores']} cores ({c['cpu']}), load average {load} (1/5/15 min; {note}), "
            f"{c.get('memory_available_gib')} of {c.get('memory_gib')} GiB free, TensorFlow "
            f"{c['versions'].get('tensorflow', '?')}, {c['time']}")


def print_conditions(console, bench: str) -> dict:
    """Print and return the conditions at the start of a bench."""
    c = conditions()
    console.print(f"[bold]bench {bench}[/] under: {conditions_line(c)}", highlight=False)
    return c


# --------------------------------------------------------------------------- ratios against targets
@dataclass
class Ratio:
    """One measured ratio (or rate) and its target: ``value ≥ target`` (or ≤ with ``at_most``)."""

    bench: str
    name: str
    value: float | None
    target: float
    at_most: bool = False
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "skipped"
        ok = self.value <= self.target if self.at_most else self.value >= self.target
        return "pass" if ok else "short"

    def target_text(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {self.target:g}{self.unit}"

    def value_text(self) -> str:
        if self.value is None:
            return "–"
        digits = 2 if abs(self.value) < 10 else 1 if abs(self.value) < 1000 else 0
        return f"{self.value:.{digits}f}{self.unit}"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict, "target_text": self.target_text()}


def ratios_table(ratios: list[Ratio], title: str = "ratios against their targets"):
    """The rich table of :class:`Ratio` rows."""
    return results_table(title, ("bench", "ratio", "value", "target", "", "note"), [
        (r.bench, r.name, r.value_text(), r.target_text(), r.verdict, r.note) for r in ratios])


def finish(console, result: dict, ratios: list[Ratio], json_path: str | Path | None,
           conditions_at_start: dict) -> dict:
    """Print the ratio rows, attach them and the conditions to ``result``, write ``json_path`` if given."""
    console.print(ratios_table(ratios, f"bench {ratios[0].bench if ratios else ''}: ratios against their targets"))
    result = {**result, "ratios": [r.to_dict() for r in ratios], "conditions": conditions_at_start,
              "conditions_after": conditions()}
    if json_path is not None:
        write_json(json_path, result)
    return result


def write_json(path: str | Path, value) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
