"""Shared fixtures. The smoke data set is simulated once per test session (seconds)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SMOKE_PIPELINE = REPO / "pipelines" / "smoke.toml"


@pytest.fixture(scope="session")
def smoke_config(tmp_path_factory):
    """The smoke pipeline with every output folder redirected into a temporary folder."""
    from xrayscatter.config import load_config

    root = tmp_path_factory.mktemp("smoke")
    config = load_config(SMOKE_PIPELINE)
    config = dataclasses.replace(
        config,
        simulate=dataclasses.replace(config.simulate, output_dir=str(root / "tfrecords")),
        resnet=dataclasses.replace(config.resnet, output_dir=str(root / "saved_models" / "resnet"),
                                   log_dir=str(root / "logs" / "resnet")),
        autoencoder=dataclasses.replace(config.autoencoder, output_dir=str(root / "saved_models" / "autoencoder"),
                                        log_dir=str(root / "logs" / "autoencoder")),
        evaluate=dataclasses.replace(config.evaluate, report_dir=str(root / "reports"),
                                     cache_dir=str(root / "cache" / "features")),
    )
    return config


@pytest.fixture(scope="session")
def smoke_dataset(smoke_config):
    """The smoke pipeline's TFRecords (96 images of ≤ 64 px, 8 per run), simulated once.

    Returns the PipelineConfig whose simulate.output_dir points at them:
    ``Path(cfg.simulate.output_dir) / cfg.simulate.dataset`` is the data set folder.
    """
    from xrayscatter.simulate.writer import simulate_dataset

    simulate_dataset(smoke_config, processes=1, progress=False)
    return smoke_config
