"""Detector geometry: energy, distance, pixels and beam centre → q and χ per pixel.

Conventions (physics.md): λ[Å] = 12.3984 / E[keV], k = 2π/λ; a pixel at distance r
(metres) from the beam centre on a flat detector normal to the beam at distance d has
2θ = arctan(r / d) and q = 2k·sin θ (Å⁻¹). χ = atan2(x − x0, −(y − y0)), so χ = 0 points
up (towards row 0) and grows clockwise. Pixel centres sit at index + 0.5.

A detector may be tilted: rotated by ``tilt_x`` about the horizontal axis and then by
``tilt_y`` about the vertical axis, both through the point where the direct beam meets it
(the beam centre). A pixel at detector offset (X, Y) then sits at
p = (0, 0, d) + R_y(tilt_y)·R_x(tilt_x)·(X, Y, 0) from the sample, 2θ is the angle between p
and the beam, and rings become ellipses (or hyperbolae for a detector swung far out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HC_KEV_ANGSTROM = 12.398419843  # h·c in keV·Å (CODATA 2018)


@dataclass(frozen=True)
class DetectorModel:
    """A real detector's native layout.

    Module sizes and gaps from the manufacturers' data sheets (as pyFAI's detector
    definitions use them): Pilatus module 487 × 195 px (w × h), gaps 7 px between
    module columns and 17 px between module rows, 172 µm pixels (DECTRIS PILATUS
    data sheets; pyFAI ``Pilatus*``); Eiger module 1030 × 514 px, gaps 10 px (columns)
    and 37 px (rows), 75 µm pixels (DECTRIS EIGER X data sheets; pyFAI ``Eiger*``).

    ``active`` is the light-sensitive area: ``"rect"`` (the whole array) or ``"circle"``
    (an image plate or a round fibre-optic taper: pixels outside the inscribed circle of
    diameter ``circle_diameter_px`` see nothing and are stored as 0). ``tiles`` = (nx, ny)
    fibre-optic tapers bonded side by side in a tiled CCD: the seams between them are not
    dead but respond less (a faint cross-hatch in flat images).
    """

    name: str
    width: int  # native pixels
    height: int
    pixel_size_m: float
    module_width: int = 0  # 0 → no modules (CCD, image plate)
    module_height: int = 0
    gap_x: int = 0
    gap_y: int = 0
    kind: str = "pixel"  # "pixel" (photon counting, no read noise), "ccd" (dark offset, read noise) or "plate"
    max_count: int = 1_048_575  # 20-bit Pilatus counter; 65535 for 16-bit CCDs
    active: str = "rect"
    circle_diameter_px: float = 0.0
    tiles: tuple[int, int] = (1, 1)


def _pilatus(name: str, modules_x: int, modules_y: int) -> DetectorModel:
    return DetectorModel(name, 487 * modules_x + 7 * (modules_x - 1), 195 * modules_y + 17 * (modules_y - 1),
                         172e-6, 487, 195, 7, 17, "pixel", 1_048_575)


def _eiger(name: str, modules_x: int, modules_y: int) -> DetectorModel:
    return DetectorModel(name, 1030 * modules_x + 10 * (modules_x - 1), 514 * modules_y + 37 * (modules_y - 1),
                         75e-6, 1030, 514, 10, 37, "pixel", 4_294_967_295)


DETECTORS: dict[str, DetectorModel] = {
    d.name: d
    for d in (
        _pilatus("Pilatus100K", 1, 1),   # 487 × 195
        _pilatus("Pilatus300K", 1, 3),   # 487 × 619
        _pilatus("Pilatus1M", 2, 5),     # 981 × 1043
        _pilatus("Pilatus2M", 3, 8),     # 1475 × 1679
        _pilatus("Pilatus6M", 5, 12),    # 2463 × 2527
        _eiger("Eiger500K", 1, 1),       # 1030 × 514
        _eiger("Eiger1M", 1, 2),         # 1030 × 1065
        _eiger("Eiger4M", 2, 4),         # 2070 × 2167
        _eiger("Eiger9M", 3, 6),         # 3110 × 3269
        _eiger("Eiger16M", 4, 8),        # 4150 × 4371
        # MarCCD 165: one round fibre-optic taper, 2048² at 79 µm (2 × 2 binned), active area the inscribed
        # circle of 161.8 mm (pyFAI "mar165": 4096² at 39.5 µm with that circle masked)
        DetectorModel("MarCCD165", 2048, 2048, 79e-6, kind="ccd", max_count=65535, active="circle",
                      circle_diameter_px=2048.0),
        DetectorModel("PhotonicScience", 1042, 1042, 101.7e-6, kind="ccd", max_count=65535),
        # Rayonix MX225: 3 × 3 tiled tapers, 225 mm square, 3072² at 73.242 µm (Rayonix data sheet;
        # pyFAI "RayonixMx225")
        DetectorModel("Rayonix-MX225", 3072, 3072, 73.242e-6, kind="ccd", max_count=65535, tiles=(3, 3)),
        # ADSC Quantum 210: 2 × 2 tiled tapers, 210 mm square, 4096² at 51 µm (ADSC data sheet; pyFAI "ADSC_Q210")
        DetectorModel("ADSC-Q210", 4096, 4096, 51e-6, kind="ccd", max_count=65535, tiles=(2, 2)),
        # Mar345 image plate: 345 mm diameter circular plate read at 100 µm, 3450² (marresearch data sheet;
        # pyFAI "Mar345" masks the same inscribed circle)
        DetectorModel("Mar345", 3450, 3450, 100e-6, kind="plate", max_count=65535, active="circle",
                      circle_diameter_px=3450.0),
    )
}


def wavelength_angstrom(energy_kev: float) -> float:
    """X-ray wavelength (Å) from photon energy (keV)."""
    return HC_KEV_ANGSTROM / energy_kev


@dataclass(frozen=True)
class Geometry:
    """A binned detector image and its scattering geometry.

    Attributes:
        energy_kev: photon energy (keV).
        distance_m: sample–detector distance (m).
        pixel_size_m: size of one (binned) image pixel (m).
        height, width: image shape (px).
        beam_x, beam_y: beam centre (px, column and row, pixel centres at index + 0.5);
            may lie outside the image.
        tilt_x, tilt_y: detector tilts (rad) about the horizontal and vertical axes.
    """

    energy_kev: float
    distance_m: float
    pixel_size_m: float
    height: int
    width: int
    beam_x: float
    beam_y: float
    tilt_x: float = 0.0
    tilt_y: float = 0.0

    @property
    def wavelength(self) -> float:
        return wavelength_angstrom(self.energy_kev)

    @property
    def k(self) -> float:
        """Wave number 2π/λ (Å⁻¹)."""
        return 2 * np.pi / self.wavelength

    def radius_px_map(self) -> np.ndarray:
        """(H, W) float32 distance of each pixel centre from the beam centre (px), in the detector plane."""
        y = np.arange(self.height, dtype=np.float32)[:, None] + 0.5 - self.beam_y
        x = np.arange(self.width, dtype=np.float32)[None, :] + 0.5 - self.beam_x
        return np.sqrt(x * x + y * y)

    def q_from_radius_px(self, radius_px) -> np.ndarray:
        """Radius on the detector (px) → q (Å⁻¹), for an untilted detector."""
        two_theta = np.arctan(np.asarray(radius_px, dtype=np.float64) * self.pixel_size_m / self.distance_m)
        return 2 * self.k * np.sin(two_theta / 2)

    def radius_px_from_q(self, q) -> np.ndarray:
        """q (Å⁻¹) → radius on an untilted detector (px); NaN where 2θ ≥ 90°."""
        s = np.asarray(q, dtype=np.float64) / (2 * self.k)
        with np.errstate(invalid="ignore"):
            two_theta = 2 * np.arcsin(np.where(s < 1, s, np.nan))
            r = np.where(two_theta < np.pi / 2, np.tan(two_theta) * self.distance_m / self.pixel_size_m, np.nan)
        return r

    def lab_vectors(self, x: np.ndarray | None = None, y: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(px, py, pz): lab coordinates (m) of each pixel centre, z along the beam; (H, W) float32.

        With ``x``, ``y`` (continuous pixel coordinates, column and row, broadcastable arrays,
        pixel centres at index + 0.5) the same for those points instead.
        """
        if x is None:
            x = np.arange(self.width, dtype=np.float32)[None, :] + 0.5
            y = np.arange(self.height, dtype=np.float32)[:, None] + 0.5
        dtype = np.result_type(np.asarray(x).dtype, np.float32)
        xm = ((np.asarray(x, dtype=dtype) - dtype.type(self.beam_x)) * dtype.type(self.pixel_size_m))
        ym = ((np.asarray(y, dtype=dtype) - dtype.type(self.beam_y)) * dtype.type(self.pixel_size_m))
        ca, sa = dtype.type(np.cos(self.tilt_x)), dtype.type(np.sin(self.tilt_x))
        cb, sb = dtype.type(np.cos(self.tilt_y)), dtype.type(np.sin(self.tilt_y))
        px = xm * cb + ym * (sa * sb)
        py = np.broadcast_to(ym * ca, px.shape)
        pz = dtype.type(self.distance_m) - xm * sb + ym * (sa * cb)
        return px, py, pz

    def two_theta_map(self) -> np.ndarray:
        """(H, W) float32 scattering angle 2θ (rad)."""
        px, py, pz = self.lab_vectors()
        return np.arctan2(np.sqrt(px * px + py * py), pz).astype(np.float32)

    def q_map(self) -> np.ndarray:
        """(H, W) float32 |q| of each pixel centre (Å⁻¹)."""
        return (2 * self.k * np.sin(self.two_theta_map() / 2)).astype(np.float32)

    def q_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """|q| (Å⁻¹, float64) at continuous pixel coordinates (column ``x``, row ``y``)."""
        px, py, pz = self.lab_vectors(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        two_theta = np.arctan2(np.sqrt(px * px + py * py), pz)
        return 2 * self.k * np.sin(two_theta / 2)

    def pixel_from_angles(self, two_theta, chi) -> tuple[np.ndarray, np.ndarray]:
        """Where the ray scattered by (2θ, χ) meets the (tilted) detector plane.

        Args:
            two_theta, chi: broadcastable arrays (rad), χ from up, clockwise (as :meth:`chi_map`).
        Returns:
            (x, y) continuous pixel coordinates (column, row; pixel centres at index + 0.5),
            float64, NaN where the ray runs away from the detector plane.
        """
        two_theta, chi = np.broadcast_arrays(np.asarray(two_theta, dtype=np.float64), np.asarray(chi, dtype=np.float64))
        s = np.sin(two_theta)
        u = np.stack([s * np.sin(chi), -s * np.cos(chi), np.cos(two_theta)], axis=-1)
        ca, sa, cb, sb = np.cos(self.tilt_x), np.sin(self.tilt_x), np.cos(self.tilt_y), np.sin(self.tilt_y)
        normal = np.array([ca * sb, -sa, ca * cb])  # R_y(tilt_y)·R_x(tilt_x)·e_z
        e_x = np.array([cb, 0.0, -sb])  # detector column direction in the lab
        e_y = np.array([sa * sb, ca, sa * cb])  # detector row direction
        u_n = u @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(u_n > 1e-9, self.distance_m * normal[2] / u_n, np.nan)
        p = u * t[..., None] - np.array([0.0, 0.0, self.distance_m])
        return p @ e_x / self.pixel_size_m + self.beam_x, p @ e_y / self.pixel_size_m + self.beam_y

    def dq_dr(self, q) -> np.ndarray:
        """dq/dr (Å⁻¹ per metre on the detector) at ``q`` for an untilted detector:
        q = 2k·sin θ and r = d·tan 2θ give dq/dr = k·cos θ·cos² 2θ / d."""
        theta = np.arcsin(np.clip(np.asarray(q, dtype=np.float64) / (2 * self.k), 0.0, 1.0))
        return self.k * np.cos(theta) * np.cos(2 * theta) ** 2 / self.distance_m

    def chi_map(self) -> np.ndarray:
        """(H, W) float32 azimuth χ (radians, 0 = up, clockwise positive)."""
        px, py, _ = self.lab_vectors()
        return np.arctan2(px, -py).astype(np.float32)

    def solid_angle_map(self) -> np.ndarray:
        """(H, W) float32 solid angle of each pixel relative to the pixel at the beam centre:
        (n·p)/|p|³ normalised, n the detector normal (cos³ 2θ for an untilted detector)."""
        px, py, pz = self.lab_vectors()
        ca, sa, cb, sb = np.cos(self.tilt_x), np.sin(self.tilt_x), np.cos(self.tilt_y), np.sin(self.tilt_y)
        n_dot_p = px * (ca * sb) - py * sa + pz * (ca * cb)
        norm = np.sqrt(px * px + py * py + pz * pz)
        return (n_dot_p * self.distance_m**2 / (norm**3 * ca * cb)).astype(np.float32)

    def beam_on_image(self) -> bool:
        return 0.0 <= self.beam_x < self.width and 0.0 <= self.beam_y < self.height

    def q_range(self) -> tuple[float, float]:
        """(q at the image pixel nearest the beam, q at the farthest corner) in Å⁻¹."""
        cx = np.clip(self.beam_x, 0.5, self.width - 0.5)
        cy = np.clip(self.beam_y, 0.5, self.height - 0.5)
        near = np.hypot(cx - self.beam_x, cy - self.beam_y)
        corners = [(0, 0), (self.width, 0), (0, self.height), (self.width, self.height)]
        far = max(np.hypot(x - self.beam_x, y - self.beam_y) for x, y in corners)
        return float(self.q_from_radius_px(near)), float(self.q_from_radius_px(far))

    def to_dict(self) -> dict:
        return {
            "energy_kev": round(self.energy_kev, 6), "distance_m": round(self.distance_m, 6),
            "pixel_size_m": round(self.pixel_size_m, 9), "height": self.height, "width": self.width,
            "beam_x": round(self.beam_x, 3), "beam_y": round(self.beam_y, 3),
            "tilt_x": round(self.tilt_x, 6), "tilt_y": round(self.tilt_y, 6),
            "wavelength_angstrom": round(self.wavelength, 6),
        }


def module_gap_mask(detector: DetectorModel, height: int, width: int) -> np.ndarray:
    """(H, W) bool, True on pixels that lie in an inter-module gap of ``detector`` binned to H × W.

    Native gap edges are scaled to the binned grid and rounded; every gap stays at least
    one binned pixel wide (binned reductions keep the gaps as masked lines).
    """
    mask = np.zeros((height, width), dtype=bool)
    if not detector.module_width:
        return mask
    for axis, (native, module, gap, n_bin) in enumerate(
        ((detector.height, detector.module_height, detector.gap_y, height),
         (detector.width, detector.module_width, detector.gap_x, width))
    ):
        scale = n_bin / native
        starts = np.arange(module, native, module + gap)
        for start in starts:
            lo = start * scale
            hi = (start + gap) * scale
            i0 = int(round(lo))
            i1 = max(i0 + 1, int(round(hi)))
            i0, i1 = max(0, i0), min(n_bin, i1)
            if axis == 0:
                mask[i0:i1, :] = True
            else:
                mask[:, i0:i1] = True
    return mask


def sensitive_at(detector: DetectorModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where native continuous coordinates (column ``x``, row ``y``, native pixels, unrotated
    layout) fall on a light-sensitive pixel: inside the array and its active circle, not in a gap."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    ok = (x >= 0) & (x < detector.width) & (y >= 0) & (y < detector.height)
    if detector.module_width:
        ok &= np.mod(x, detector.module_width + detector.gap_x) < detector.module_width
        ok &= np.mod(y, detector.module_height + detector.gap_y) < detector.module_height
    if detector.active == "circle":
        radius = detector.circle_diameter_px / 2
        ok &= (x - detector.width / 2) ** 2 + (y - detector.height / 2) ** 2 <= radius * radius
    return ok


def active_area_mask(detector: DetectorModel, height: int, width: int) -> np.ndarray:
    """(H, W) bool, True inside the active area of ``detector`` binned to H × W (all True for a
    rectangular array; the inscribed circle of an image plate or round taper otherwise)."""
    if detector.active != "circle":
        return np.ones((height, width), dtype=bool)
    y = (np.arange(height) + 0.5)[:, None] * (detector.height / height) - detector.height / 2
    x = (np.arange(width) + 0.5)[None, :] * (detector.width / width) - detector.width / 2
    radius = detector.circle_diameter_px / 2
    return x * x + y * y <= radius * radius


def taper_seams(detector: DetectorModel, height: int, width: int, seam_native_px: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how much of each binned pixel lies on a seam between the
    fibre-optic tapers of a tiled CCD (seams ``seam_native_px`` native pixels wide)."""
    out = np.zeros((height, width), dtype=np.float32)
    nx, ny = detector.tiles
    for n_tiles, native, n_bin, axis in ((nx, detector.width, width, 1), (ny, detector.height, height, 0)):
        if n_tiles <= 1:
            continue
        bin_px = native / n_bin
        centres = (np.arange(n_bin) + 0.5) * bin_px
        cover = np.zeros(n_bin)
        for k in range(1, n_tiles):
            seam = k * native / n_tiles
            lo = np.maximum(centres - bin_px / 2, seam - seam_native_px / 2)
            hi = np.minimum(centres + bin_px / 2, seam + seam_native_px / 2)
            cover += np.clip(hi - lo, 0, None) / bin_px
        cover = np.clip(cover, 0, 1).astype(np.float32)
        out = np.maximum(out, cover[None, :] if axis == 1 else cover[:, None])
    return out
