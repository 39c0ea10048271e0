"""Shared fixtures. The smoke data set is simulated once per test session (seconds).

``make test`` runs the files in two pytest-xdist processes (``-n 2 --dist loadgroup``): each file is
one group (its module fixtures are made once), except the files whose tests start several TensorFlow
processes at once, which share one group so that no two of them compete for the two cores together.

Helpers that are not fixtures (redirected configurations, pipeline files, tiny exported models,
processes killed on a condition, free ports) are in ``tests/helpers.py``.
"""

from __future__ import annotations

import collections
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import redirect, smoke_pipeline  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def smoke_config(tmp_path_factory):
    """The smoke pipeline with every output folder (data set included) redirected into a temporary folder."""
    return redirect(smoke_pipeline(), tmp_path_factory.mktemp("smoke"), data=True)


@pytest.fixture(scope="session")
def smoke_dataset(smoke_config):
    """The smoke pipeline's TFRecords (96 images of ≤ 64 px, 8 per run), simulated once.

    Returns the PipelineConfig whose simulate.output_dir points at them:
    ``dataset.dataset_dir(cfg)`` is the data set folder.
    """
    from xrayscatter.simulate.writer import simulate_dataset

    simulate_dataset(smoke_config, processes=1, progress=False)
    return smoke_config


# Files whose tests launch several TensorFlow processes together (multi-worker training, tf.data service).
_MULTIPROCESS_FILES = {"test_distribute_loop", "test_distribute_data_service", "test_train"}


# The xdist groups that take longest, longest first (seconds of test time in `make test` on the 2-core AVX2
# machine, read from the "time by test group" table this file prints). pytest-xdist would start the groups with the
# most tests first (the Makefile turns that off: --no-loadscope-reorder); started in this order, the last groups
# to start are short ones, so neither process idles for minutes while the other finishes a long file.
# A group not listed starts after these, in file order.
LONGEST_GROUPS = ("multiprocess", "test_resnet_task", "test_evaluation_run")


def _group(item) -> str:
    module = item.path.stem
    return "multiprocess" if module in _MULTIPROCESS_FILES else module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, one scheduling group per test file (and one for all multi-process files), the
    longest groups first.

    First among the hooks: pytest-xdist's own reads the groups to give each test its ``@group`` node-id
    suffix, and ran before this one without ``tryfirst`` (tests/test_xdist_groups.py checks the suffix)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    rank = {name: index for index, name in enumerate(LONGEST_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: a file's tests keep their order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


# Where the time of a run goes, per group and per process: the "time by test group" table at the end of the run.
_GROUP_SECONDS: dict[str, float] = collections.defaultdict(float)
_PROCESS_SECONDS: dict[str, float] = collections.defaultdict(float)


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    group = nodeid.rsplit("@", 1)[1] if "@" in nodeid else nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    _GROUP_SECONDS[group] += report.duration
    node = getattr(report, "node", None)  # set by pytest-xdist's controller: the process that ran the test
    _PROCESS_SECONDS[node.gateway.id if node is not None else "main"] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _GROUP_SECONDS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time by test group")
    busy = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(_PROCESS_SECONDS.items()))
    write(f"test time per process: {busy}")
    for group, seconds in sorted(_GROUP_SECONDS.items(), key=lambda pair: -pair[1])[:15]:
        write(f"{seconds:8.1f} s  {group}")
