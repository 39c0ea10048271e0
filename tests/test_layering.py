"""Data flows down: a module imports only modules on its own floor or below (README, "The code, one place per stage").

Read from the source (every import, also the lazy ones inside functions), so a new upward import fails here
rather than in a maintainer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xrayscatter"

# The README's module table, ground floor first. A package (simulate/, resnet/ ...) is one unit: its modules
# import each other freely. The package root (xrayscatter/__init__.py) holds only the version.
FLOORS = (
    ("errors", "attributes", "config", "tf_runtime"),
    ("schema", "normalization", "readers"),
    ("files", "provenance"),
    ("dataset",),
    ("saved_model", "metrics"),
    ("simulate",),
    ("distribute",),
    ("base_task",),
    ("resnet", "autoencoder"),
    ("train",),
    ("evaluation",),
    ("predict", "serving", "contact_sheet", "watch"),
    ("benchmarks",),
    ("cli", "__main__"),
)
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str | None:
    """``xrayscatter.resnet.model`` → ``resnet``; the package root → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__init__" else None


def imports_of(path: Path) -> set[str]:
    """Every ``xrayscatter…`` module a source file imports (absolute imports; the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("xrayscatter"):
            found.add(node.module)
            if node.module == "xrayscatter":  # from xrayscatter import resnet
                found.update(f"xrayscatter.{alias.name}" for alias in node.names if alias.name != "__version__")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("xrayscatter"))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; write it absolute so that this check sees it")
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_floor():
    units = {unit_of("xrayscatter." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in SOURCES}
    assert units - {None} <= set(FLOOR), f"add to FLOORS (and to the README's module table): {sorted(units - {None} - set(FLOOR))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_one_above_it(path):
    me = unit_of("xrayscatter." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    if me is None:
        return
    upward = sorted(target for target in imports_of(path)
                    if (other := unit_of(target)) is not None and other != me and FLOOR.get(other, -1) > FLOOR[me])
    assert not upward, f"{path.relative_to(PACKAGE)} (floor {FLOOR[me]}) imports from above: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    source = tmp_path / "writer.py"
    source.write_text("def f():\n    from xrayscatter.resnet.data import stored_view_size\n")
    assert imports_of(source) == {"xrayscatter.resnet.data"}
    assert FLOOR[unit_of("xrayscatter.resnet.data")] > FLOOR[unit_of("xrayscatter.simulate.writer")]
