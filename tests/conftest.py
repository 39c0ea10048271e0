"""Shared fixtures. The smoke data set is simulated once per test session (seconds).

``make test`` runs the files in two pytest-xdist processes (``-n 2 --dist loadgroup``): each file is
one group (its module fixtures are made once), except the files whose tests start several TensorFlow
processes at once, which share one group so that no two of them compete for the two cores together.

Helpers that are not fixtures (redirected configurations, pipeline files, tiny exported models,
processes killed on a condition, free ports) are in ``tests/helpers.py``.
"""

from __future__ import annotations

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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, one scheduling group per test file (and one for all multi-process files).

    First among the hooks: pytest-xdist's own reads the groups to give each test its ``@group`` node-id
    suffix, and ran before this one without ``tryfirst`` (tests/test_xdist_groups.py checks the suffix)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.path.stem
        item.add_marker(pytest.mark.xdist_group("multiprocess" if module in _MULTIPROCESS_FILES else module))
