"""What made an output: the configuration, the time and the package versions.

Every output describes itself (the manifest beside the shards, the metadata inside each SavedModel,
every report), with the same three fields built here::

    {"pipeline": "default", "config": {...}, "created": "2026-11-24T10:00:00+00:00",
     "versions": {"xrayscatter": "0.1.0", "tensorflow": "2.21.0", "keras": "3.15.1"}}

Versions are the installed distributions' (``importlib.metadata``): reading them imports nothing.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform

from xrayscatter import __version__

# Distribution names of the packages whose import names differ.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "skimage": "scikit-image"}
MODEL_PACKAGES = ("tensorflow", "keras")  # what a SavedModel's numbers depend on


def package_versions(packages=MODEL_PACKAGES, *, python: bool = False, system: bool = False,
                     extra: dict | None = None) -> dict:
    """``{"xrayscatter": …, <package>: <installed version>, …}``; packages not installed are left out.

    Args:
        packages: import names (``sklearn`` is looked up as ``scikit-learn``).
        python: add ``"python"``; system: add ``"platform"``.
        extra: more entries (e.g. the simulator's version).
    """
    out = {"xrayscatter": __version__}
    if python:
        out["python"] = platform.python_version()
    if system:
        out["platform"] = platform.platform()
    for name in packages:
        try:
            out[name] = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            continue
    out.update(extra or {})
    return out


def created_now() -> str:
    """UTC time to the second, ISO 8601 (``2026-11-24T10:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(config, packages=MODEL_PACKAGES) -> dict:
    """``pipeline``, ``config``, ``created`` and ``versions`` of an output made from ``config``."""
    return {"pipeline": config.name, "config": config.to_dict(), "created": created_now(),
            "versions": package_versions(packages)}
