"""A PNG grid of simulated images in log-scale false colour with their tags (the paper's Fig. 1–2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrayscatter.config import PipelineConfig
from xrayscatter.files import atomic_path
from xrayscatter.simulate.generator import simulate_image_from_config


def log_display(counts: np.ndarray) -> np.ndarray:
    """Counts → log10(1 + counts) for display; masked (0) pixels stay dark."""
    return np.log10(1.0 + np.clip(counts, 0, None))


def write_preview(config: PipelineConfig, output: str | Path | None = None, count: int = 24, start: int = 0,
                  columns: int = 6) -> Path:
    """Simulate images ``start … start+count−1`` and draw them with their tags.

    Returns:
        The PNG path (default ``<report_dir>/<pipeline name>/preview.png``), written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output) if output else Path(config.evaluate.report_dir) / config.name / "preview.png"
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k >= count:
            continue
        image = simulate_image_from_config(config.simulate, config.seed, start + k)
        run = image.params["run"]
        ax.imshow(log_display(image.counts), cmap="inferno", interpolation="nearest")
        modules = ",".join(m["module"] + (f":{m['lattice']}" if "lattice" in m else "") for m in image.params["image"]["modules"])
        ax.set_title(f"#{image.image_id} run {image.run_id} {run['mode']} {run['detector']['name']}\n{modules}\n"
                     + "\n".join(", ".join(image.tags[i:i + 3]) for i in range(0, len(image.tags), 3)), fontsize=6.5)
    fig.tight_layout()
    with atomic_path(output, suffix=".png") as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)
    return output
