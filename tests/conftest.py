"""Shared fixtures. The smoke data set is simulated once per test session (seconds).

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
