"""Beamstop shadows: circular disc (held by an arm, a wire or nothing), linear bar, wedge.

Shapes are defined in *native* detector pixels around the beam centre and evaluated at any
points (the binned image's pixel centres, or a fixed sampling of the native detector), so a
run's beamstop is the same physical object whatever the image size. Each function returns
an *opacity* in [0, 1] (1 = fully blocked) with the shape's edges anti-aliased by the part
of each pixel they cover: a wire thinner than a binned pixel dims a line of pixels instead of
vanishing or appearing dashed. The penumbra of a stop some distance in front of the
detector is a Gaussian blur (:func:`blur_opacity`). Transmission = 1 − opacity·(1 − leak).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

BEAMSTOPS = ("circular", "linear", "wedge", "none")
HOLDERS = ("arm", "wire", "none")  # what holds a circular stop


def pixel_coords(shape, beam_xy) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of an (H, W) image relative to the beam: x (1, W), y (H, 1) float32 px."""
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5 - np.float32(beam_xy[1])
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5 - np.float32(beam_xy[0])
    return x, y


def _band(d, half: float):
    """Covered fraction of a unit pixel whose centre lies at signed distance ``d`` from the axis of a
    band of half-width ``half``: the overlap of [d − ½, d + ½] with [−half, half]."""
    return np.clip(np.minimum(d + 0.5, half) - np.maximum(d - 0.5, -half), 0.0, 1.0)


def disc(x, y, radius: float):
    """Anti-aliased disc of ``radius`` px at the origin (a disc smaller than a pixel covers πR²)."""
    r = np.sqrt(x * x + y * y)
    return _band(r, radius) * min(1.0, np.pi * radius / 2)


def bar(x, y, angle: float, half_width: float, start: float | None = 0.0):
    """Anti-aliased bar of ``half_width`` px along azimuth ``angle`` (0 = up, clockwise) from
    ``start`` px beyond the origin to infinity; ``start=None``: the whole line through the origin."""
    ux, uy = np.float32(np.sin(angle)), np.float32(-np.cos(angle))
    across = -x * uy + y * ux
    cover = _band(across, half_width)  # a bar thinner than a pixel covers 2·half_width of it
    if start is not None:
        along = x * ux + y * uy
        cover = cover * np.clip(along - start + 0.5, 0.0, 1.0)
    return cover


def circular_beamstop(x, y, radius: float, holder: str, arm_angle: float, arm_half_width: float):
    """Disc of ``radius`` px at the beam; ``holder`` "arm" or "wire" (a bar of ``arm_half_width``
    from the beam out along ``arm_angle``) or "none" (a stop glued on a window)."""
    out = disc(x, y, radius)
    if holder != "none":
        out = np.maximum(out, bar(x, y, arm_angle, arm_half_width))
    return out


def linear_beamstop(x, y, angle: float, half_width: float, tip_radius: float, through: bool = False):
    """Bar of ``half_width`` px from just past the beam (rounded tip of ``tip_radius``) out along
    ``angle``; ``through``: a bar crossing the whole detector through the beam."""
    if through:
        return bar(x, y, angle, half_width, start=None)
    return np.maximum(disc(x, y, tip_radius), bar(x, y, angle, half_width))


def wedge_beamstop(x, y, angle: float, half_angle: float, apex_offset: float):
    """Sector of ``half_angle`` (rad) opening along ``angle``, apex ``apex_offset`` px behind the
    beam so that the beam itself is covered; anti-aliased by the signed distance to its edges."""
    ux, uy = np.float32(np.sin(angle)), np.float32(-np.cos(angle))
    xa, ya = x + apex_offset * ux, y + apex_offset * uy  # coordinates relative to the apex
    along = xa * ux + ya * uy
    across = np.abs(-xa * uy + ya * ux)
    inside = along * np.float32(np.sin(half_angle)) - across * np.float32(np.cos(half_angle))
    return np.clip(inside + 0.5, 0.0, 1.0)


def opacity(beamstop: dict, x, y, native_px_per_unit: float = 1.0) -> np.ndarray:
    """Unblurred opacity of the run's beamstop (sizes in native pixels in ``beamstop``) at points
    ``x``, ``y`` relative to the beam, in units of ``native_px_per_unit`` native pixels
    (1 for native coordinates, the binning factor for a binned image)."""
    s = 1.0 / native_px_per_unit
    kind = beamstop["kind"]
    if kind == "circular":
        out = circular_beamstop(x, y, beamstop["radius_px"] * s, beamstop["holder"], beamstop["arm_angle"],
                                beamstop["arm_half_width_px"] * s)
    elif kind == "linear":
        out = linear_beamstop(x, y, beamstop["angle"], beamstop["half_width_px"] * s, beamstop["tip_radius_px"] * s,
                              beamstop["through"])
    elif kind == "wedge":
        out = wedge_beamstop(x, y, beamstop["angle"], beamstop["half_angle"], beamstop["apex_offset_px"] * s)
    else:
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), dtype=np.float32)
    return np.broadcast_to(out, np.broadcast_shapes(np.shape(x), np.shape(y))).astype(np.float32)


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
    return edge_shadow_at(x, y, side, depth, angle)


def edge_shadow_at(x, y, side: int, depth: float, angle: float) -> np.ndarray:
    """:func:`edge_shadow` at fractional detector coordinates ``x``, ``y`` in [0, 1]."""
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
