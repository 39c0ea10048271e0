"""``xrayscatter bench report``: one table of every ratio against its target, from the benches' JSON files.

Each ``xrayscatter bench <name> --json <folder>/<name>.json`` leaves its result (ratios and the
conditions it ran under); this gathers them into ``<folder>/bench.md`` and ``<folder>/bench.json``:
one row per ratio (value, target, pass / short / skipped), then the conditions of every bench.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from xrayscatter.benchmarks import conditions, conditions_line, write_json

ORDER = ("simulate", "input", "train", "features", "evaluate", "predict")


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def collect(folder: str | Path) -> dict[str, dict]:
    """``{bench: result}`` of every ``<bench>.json`` in ``folder`` (in the benches' usual order)."""
    folder = Path(folder)
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem != "bench"}
    return {name: found[name] for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))}


def write_report(folder: str | Path, started: float | None = None) -> tuple[Path, Path]:
    """Write ``bench.md`` and ``bench.json`` in ``folder`` from its bench result files.

    Args:
        started: epoch seconds when the benches began (default: the earliest bench's start).
    """
    folder = Path(folder)
    results = collect(folder)
    rows = [ratio for result in results.values() for ratio in result.get("ratios", [])]
    starts = [r["conditions"]["epoch"] for r in results.values() if "epoch" in r.get("conditions", {})]
    started = started or (min(starts) if starts else None)
    elapsed = time.time() - started if started else None
    now = conditions()
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in ("pass", "short", "skipped")}

    lines = ["# Benchmarks: every ratio against its target", "",
             f"{len(rows)} ratios: {counts['pass']} pass, {counts['short']} short, {counts['skipped']} skipped"
             + (f"; all benches took {elapsed / 60:.1f} min" if elapsed else "") + ".", "",
             "| bench | ratio | value | target | | note |", "| --- | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        value = "–" if r["value"] is None else _format(r["value"], r.get("unit", ""))
        lines.append(f"| {r['bench']} | {_escape(r['name'])} | {value} | {_escape(r['target_text'])} | "
                     f"{r['verdict']} | {_escape(r.get('note', ''))} |")
    lines += ["", "## Conditions", "",
              "Rates measured on a machine whose load average exceeds its core count are low: other work shared "
              "the cores. Per-core rates from CPU time (simulate, input) are the least affected.", ""]
    for name, result in results.items():
        if "conditions" in result:
            lines.append(f"- **{name}**: {conditions_line(result['conditions'])}")
    lines.append(f"- report written: {conditions_line(now)}")
    md = folder / "bench.md"
    md.write_text("\n".join(lines) + "\n")
    js = write_json(folder / "bench.json", {"ratios": rows, "counts": counts, "elapsed_s": elapsed,
                                            "conditions": {n: r.get("conditions") for n, r in results.items()},
                                            "report_conditions": now, "results": results})
    return md, js


def _format(value: float, unit: str) -> str:
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}{unit}"
