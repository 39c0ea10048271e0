"""What the autoencoder's training shows: the error distribution and the paper's Figs. 6 and 7."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.autoencoder.report import error_statistics, figure6_selection, prototype_grid, reconstruction_strip


def test_figure6_picks_patches_from_lowest_to_highest_error():
    errors = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    assert figure6_selection(errors, columns=3).tolist() == [1, 0, 2]  # 0.1, 0.5, 0.9: ranks 0, 2, 4


def test_error_statistics_are_given_in_rmse_and_l2():
    rmse = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    stats = error_statistics(rmse, patch_size=32)
    assert stats["patches"] == 4 and "log1p" in stats["definition"]
    assert stats["rmse"]["min"] == pytest.approx(0.1) and stats["rmse"]["max"] == pytest.approx(0.4)
    assert stats["l2"]["mean"] == pytest.approx(32 * stats["rmse"]["mean"])


def test_figures_are_grey_images_of_patches_with_gaps():
    rng = np.random.default_rng(0)
    patches, recon = rng.random((12, 32, 32)), rng.random((12, 32, 32))
    strip = reconstruction_strip(patches, recon, rng.random(12))
    assert strip.dtype == np.uint8 and strip.shape == (2 * 32 + 2, 10 * 32 + 9 * 2)  # 10 columns, 2 px gaps
    grid = prototype_grid(rng.random((20, 32, 32)), per_row=16)
    assert grid.shape == (2 * 32 + 2, 16 * 32 + 15 * 2) and (grid[-32:, -32:] == 255).all()  # padded white
