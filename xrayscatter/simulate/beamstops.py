"""Beamstop shadows: circular disc with a support arm, linear bar, wedge.

Each function returns an (H, W) float32 *opacity* in [0, 1] (1 = fully blocked) with the
edge blurred by a Gaussian (penumbra of a beamstop a few mm in front of the detector).
Transmission = 1 − opacity·(1 − leak).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

BEAMSTOPS = ("circular", "linear", "wedge", "none")


def _coords(shape, beam_xy):
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5 - beam_xy[1]
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5 - beam_xy[0]
    return x, y


def _bar(x, y, angle: float, half_width: float, start: float = 0.0) -> np.ndarray:
    """Points within ``half_width`` of the ray from the beam at azimuth ``angle`` (0 = up, clockwise),
    beyond ``start`` px along it."""
    ux, uy = np.sin(angle), -np.cos(angle)
    along = x * ux + y * uy
    across = np.abs(-x * uy + y * ux)
    return (across <= half_width) & (along >= start)


def circular_beamstop(shape, beam_xy, radius: float, arm_angle: float, arm_half_width: float) -> np.ndarray:
    """Disc of ``radius`` px at the beam, held by an arm of ``arm_half_width`` px to the image edge."""
    x, y = _coords(shape, beam_xy)
    return ((x * x + y * y <= radius * radius) | _bar(x, y, arm_angle, arm_half_width)).astype(np.float32)


def linear_beamstop(shape, beam_xy, angle: float, half_width: float, tip_radius: float) -> np.ndarray:
    """Bar of ``half_width`` px from beyond the beam (rounded tip of ``tip_radius``) to the image edge."""
    x, y = _coords(shape, beam_xy)
    return ((x * x + y * y <= tip_radius * tip_radius) | _bar(x, y, angle, half_width)).astype(np.float32)


def wedge_beamstop(shape, beam_xy, angle: float, half_angle: float, apex_offset: float) -> np.ndarray:
    """Sector of ``half_angle`` (rad) opening along ``angle``, apex ``apex_offset`` px behind the
    beam so that the beam itself is covered."""
    x, y = _coords(shape, beam_xy)
    ux, uy = np.sin(angle), -np.cos(angle)
    xa, ya = x + apex_offset * ux, y + apex_offset * uy  # coordinates relative to the apex
    along = xa * ux + ya * uy
    across = np.abs(-xa * uy + ya * ux)
    return ((along > 0) & (across <= along * np.tan(half_angle))).astype(np.float32)


def blur_opacity(opacity: np.ndarray, sigma_px: float) -> np.ndarray:
    """Soft edge (penumbra) of width ``sigma_px``."""
    if sigma_px <= 0.05:
        return opacity
    return np.clip(gaussian_filter(opacity, sigma_px, mode="nearest"), 0.0, 1.0).astype(np.float32)


def edge_shadow(shape, side: int, depth: float, angle: float) -> np.ndarray:
    """Opacity of something upstream shading one edge (0 top, 1 right, 2 bottom, 3 left) of the
    detector to ``depth`` (fraction of the image), its edge tilted by ``angle`` (rad). Not a beamstop."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    t = np.float32(np.tan(angle))
    if side == 0:
        inside = y < depth + t * (x - 0.5)
    elif side == 1:
        inside = x > 1 - depth + t * (y - 0.5)
    elif side == 2:
        inside = y > 1 - depth + t * (x - 0.5)
    else:
        inside = x < depth + t * (y - 0.5)
    return inside.astype(np.float32)
