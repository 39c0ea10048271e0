"""The benchmarks' own work folder: data sets and models they make themselves (``make bench`` on a fresh clone).

Everything goes under one folder (default ``reports/bench/work``): a bench never reads or writes a
user's ``tfrecords/<dataset>``, ``saved_models/`` or ``logs/``. What it makes is kept, so a second
run reuses it (the simulator resumes complete shards; a model folder with a version is reused).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

DEFAULT_WORK_DIR = Path("reports/bench/work")
SMOKE_PIPELINE = "pipelines/smoke.toml"


def redirected(config, work_dir: str | Path, name: str | None = None):
    """``config`` with every output (data set, SavedModels, logs, reports, feature cache) under ``work_dir``.

    Args:
        name: the data set's and the model folders' name (default the pipeline's name).
    """
    root = Path(work_dir)
    name = name or config.name
    models = root / "saved_models" / name
    return dataclasses.replace(
        config,
        simulate=dataclasses.replace(config.simulate, output_dir=str(root / "tfrecords"), dataset=name),
        resnet=dataclasses.replace(config.resnet, output_dir=str(models / "resnet"),
                                   log_dir=str(root / "logs" / name / "resnet")),
        autoencoder=dataclasses.replace(config.autoencoder, output_dir=str(models / "autoencoder"),
                                        log_dir=str(root / "logs" / name / "autoencoder")),
        evaluate=dataclasses.replace(config.evaluate, report_dir=str(root / "reports"),
                                     cache_dir=str(root / "cache" / name),
                                     attributes_output_dir=str(models / "attributes")),
    )


def bench_dataset(config, work_dir: str | Path, name: str, images: int, images_per_run: int = 8,
                  shard_size: int | None = None, processes: int = 0, progress: bool = False):
    """A train-only data set of ``images`` images with the pipeline's image settings, simulated into
    ``work_dir`` by the real writer (resumes when it exists). Returns its config."""
    from xrayscatter.simulate.writer import simulate_dataset

    config = redirected(config, work_dir, name)
    config = dataclasses.replace(config, simulate=dataclasses.replace(
        config.simulate, num_images=images, images_per_run=images_per_run, val_fraction=0.0, test_fraction=0.0,
        shard_size=shard_size or max(1, -(-images // 4))))
    simulate_dataset(config, processes=processes, progress=progress)
    return config


def smoke_model(work_dir: str | Path = DEFAULT_WORK_DIR, pipeline: str = SMOKE_PIPELINE, console=None) -> Path:
    """The smoke pipeline's data set and trained ResNet SavedModel under ``work_dir`` (made when missing).

    Returns:
        The ResNet model folder (``<work_dir>/saved_models/smoke/resnet``), which holds version folders.
    """
    from xrayscatter.config import load_config
    from xrayscatter.saved_model import newest_version
    from xrayscatter.simulate.writer import simulate_dataset

    config = redirected(load_config(pipeline), work_dir)
    folder = Path(config.resnet.output_dir)
    if newest_version(folder) is not None:
        return folder
    from xrayscatter.train import train

    if console is not None:
        console.print(f"making the smoke data set and ResNet under {Path(work_dir)} (once)")
    simulate_dataset(config, progress=False)
    train("resnet", config)
    return folder
