"""Every tag rule of ``simulate/tags.py`` on hand-built scenes: a feature that is there is tagged;
one hidden behind the beamstop, off the detector or below the noise is not."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.simulate.lattices import RingPeak
from xrayscatter.simulate.tags import RingEvidence, SceneForTags, decide_tags

SIZE = 96
Q_PER_PX = 0.01  # Å⁻¹ per pixel of radius: a flat detector at small angles


class Scene:
    """A SceneForTags built piece by piece: a flat background, then rings, diffuse parts, a beamstop."""

    def __init__(self, background: float = 1.0, beam=(SIZE / 2, SIZE / 2)):
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        self.beam = beam
        self.radius = np.hypot(xx - beam[0], yy - beam[1]).astype(np.float32)
        self.q = self.radius * Q_PER_PX
        self.bin_edges = np.linspace(0.0, float(self.q.max()) * 1.000001, 65)
        self.background = np.full((SIZE, SIZE), background, np.float32)
        self.sample = np.zeros((SIZE, SIZE), np.float32)
        self.roles: dict[str, np.ndarray] = {}
        self.pieces: list[np.ndarray] = []
        self.rings: list[tuple[int, RingEvidence]] = []
        self.structure_factor: list[dict] = []
        self.opacity = np.zeros((SIZE, SIZE), np.float32)
        self.open_mask = np.ones((SIZE, SIZE), bool)
        self.kind = "none"

    def _add(self, role: str, image: np.ndarray) -> int:
        image = image.astype(np.float32)
        self.sample += image
        self.roles[role] = self.roles.get(role, 0) + image
        self.pieces.append(image)
        return len(self.pieces) - 1

    def ring(self, radius_px: float, height: float, lattice: str = "", family: str = "adhoc:0", n: float = 1,
             role: str = "ring", module: int = 0, width_px: float = 1.5) -> None:
        """A Gaussian ring of ``height`` counts at its crest."""
        image = height * np.exp(-0.5 * ((self.radius - radius_px) / width_px) ** 2)
        piece = self._add(role, image)
        peak = RingPeak(radius_px * Q_PER_PX, 2.355 * width_px * Q_PER_PX, height, n, family, len(self.rings))
        self.rings.append((piece, RingEvidence(peak, height, 1.0, module, lattice, "halo" if role == "halo" else role)))

    def diffuse(self, role: str, level: float, decay_px: float) -> int:
        """Smooth scattering falling off from the beam: ``level`` counts at the beam, e-fold over ``decay_px``."""
        return self._add(role, level * np.exp(-self.radius / decay_px))

    def spots(self, centres, height: float = 200.0) -> None:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        image = sum(height * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0) for x, y in centres)
        self._add("spots", image)

    def beamstop(self, kind: str, radius_px: float = 8.0) -> None:
        """A fully opaque disc (circular), a bar from the beam down (linear) or a sector (wedge)."""
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        dx, dy = xx - self.beam[0], yy - self.beam[1]
        if kind == "circular":
            shade = self.radius <= radius_px
        elif kind == "linear":
            shade = (np.abs(dx) <= radius_px / 2) & (dy >= -radius_px / 2)
        else:
            shade = (dy > 0) & (np.abs(dx) <= dy * np.tan(np.radians(15)))
        self.opacity = shade.astype(np.float32)
        self.open_mask = ~shade
        self.kind = kind

    def hide(self, mask: np.ndarray) -> None:
        """Pixels that a detector gap or the frame edge takes away."""
        self.open_mask = self.open_mask & ~mask

    def tags(self, noise_variance: float = 0.0, beam_on_image: bool = True, bins_cache: dict | None = None) -> list[str]:
        transmission = 1.0 - self.opacity
        q_bin = np.clip(np.searchsorted(self.bin_edges, self.q, side="right") - 1, 0, len(self.bin_edges) - 2)
        sample = self.sample * transmission
        background = self.background * transmission
        scene = SceneForTags(
            shape=(SIZE, SIZE), open_mask=self.open_mask, q_bin=q_bin.astype(np.int32), bin_edges=self.bin_edges,
            geometric_factor=transmission, total=sample + background, sample=sample, background=background,
            roles={k: v * transmission for k, v in self.roles.items()},
            piece_images=[p * transmission for p in self.pieces], rings=self.rings,
            structure_factor=self.structure_factor, beam_on_image=beam_on_image, beamstop_kind=self.kind,
            beamstop_shadow=(self.sample + self.background) * self.opacity, beamstop_opacity=self.opacity,
            noise_variance=noise_variance, bins_cache={} if bins_cache is None else bins_cache)
        return decide_tags(scene)[0]


# --------------------------------------------------------------------------- rings
def test_images_of_a_run_share_its_radial_bins_and_get_the_tags_they_get_alone():
    """The generator hands every image of a run one ``bins_cache`` (bin labels, pixel counts, geometric
    factors depend on the run's maps only): filled by one image, it gives the next the same tags as a fresh one."""
    first, second = Scene(background=2.0), Scene(background=2.0)
    first.ring(20, 60.0, lattice="FCC", family="lattice:FCC", n=3)
    first.ring(23.1, 60.0, lattice="FCC", family="lattice:FCC", n=4)
    second.ring(30, 1.0)  # below the noise: no ring
    second.diffuse("diffuse_low", 400.0, 6.0)
    shared: dict = {}
    assert first.tags(bins_cache=shared) == first.tags() and {"labels", "count", "gf_mean"} <= set(shared)
    assert second.tags(bins_cache=shared) == second.tags()
    assert "FCC" in first.tags() and "Ring" not in second.tags() and "Diffuse low-q" in second.tags()


def test_a_bright_ring_is_a_ring():
    s = Scene(background=1.0)
    s.ring(25, height=100)
    assert "Ring" in s.tags()


def test_a_ring_below_the_counting_noise_is_not_a_ring():
    s = Scene(background=1000.0)
    s.ring(25, height=20)  # 20 counts on 1000 ± 32
    assert "Ring" not in s.tags()


def test_a_ring_behind_the_beamstop_is_not_a_ring():
    s = Scene(background=1.0)
    s.ring(5, height=100)
    s.beamstop("circular", radius_px=9)
    assert "Ring" not in s.tags()


def test_a_ring_off_the_detector_is_not_a_ring():
    s = Scene(background=1.0)
    s.ring(200, height=100)  # beyond the farthest corner (68 px)
    assert "Ring" not in s.tags()


def test_a_ring_on_masked_pixels_is_not_a_ring():
    s = Scene(background=1.0)
    s.ring(25, height=100)
    s.hide(np.abs(s.radius - 25) < 6)
    assert "Ring" not in s.tags()


def test_five_resolved_rings_are_many_rings_and_five_merged_are_not():
    many = Scene()
    for r in (12, 20, 28, 36, 44):
        many.ring(r, height=100)
    assert {"Ring", "Many rings"} <= set(many.tags())
    merged = Scene()
    for r in (20, 20.3, 20.6, 20.9, 21.2):  # closer than the resolution: one ring
        merged.ring(r, height=100)
    assert "Many rings" not in merged.tags()


@pytest.mark.parametrize("lattice", ["BCC", "FCC"])
def test_a_lattice_is_named_from_two_resolved_rings_not_one(lattice):
    two = Scene()
    two.ring(15, 100, lattice=lattice, family=f"lattice:{lattice}", n=2)
    two.ring(21.2, 100, lattice=lattice, family=f"lattice:{lattice}", n=4)
    assert lattice in two.tags()
    one = Scene()
    one.ring(15, 100, lattice=lattice, family=f"lattice:{lattice}", n=2)
    assert lattice not in one.tags() and "Ring" in one.tags()


def test_higher_orders_need_the_second_order_visible():
    both = Scene()
    both.ring(10, 100, lattice="LAM", family="adhoc:0", n=1)
    both.ring(20, 30, lattice="LAM", family="adhoc:0", n=2)
    assert "Higher orders" in both.tags()
    faint = Scene(background=1000.0)
    faint.ring(10, 2000, lattice="LAM", family="adhoc:0", n=1)
    faint.ring(20, 10, lattice="LAM", family="adhoc:0", n=2)  # buried in the noise of 1000 counts
    assert "Higher orders" not in faint.tags()


def test_a_broad_visible_halo_is_a_halo_not_a_ring():
    s = Scene()
    s.ring(30, 50, role="halo", family="halo", width_px=8)
    tags = s.tags()
    assert "Halo" in tags and "Ring" not in tags


def _structure_factor_scene(form: np.ndarray, s_max: float, background: float = 1.0) -> Scene:
    """A scene of P(q)·S(q) with S a bump of height ``s_max`` − 1 at 25 px; ``form`` is P on the pixels."""
    scene = Scene(background=background)
    q_grid = np.linspace(0.0, 1.0, 400)
    s_grid = 1.0 + (s_max - 1.0) * np.exp(-0.5 * ((q_grid - 25 * Q_PER_PX) / (4 * Q_PER_PX)) ** 2)
    piece = scene._add("diffuse_low", form * np.interp(scene.q, q_grid, s_grid))
    scene.structure_factor.append({"q": 25 * Q_PER_PX, "s_max": s_max, "bump": True, "piece": piece,
                                   "s_of_q": (q_grid, s_grid)})
    return scene


def test_structure_factor_is_a_visible_crest_that_s_of_q_makes():
    falling = Scene().radius
    form = 40.0 * np.exp(-falling / 60.0)
    assert "Structure factor" in _structure_factor_scene(form, 1.6).tags()
    # S(q) too flat, or its crest buried in a bright background: no correlation peak to see
    assert "Structure factor" not in _structure_factor_scene(form, 1.05).tags()
    assert "Structure factor" not in _structure_factor_scene(form, 1.6, 5e4).tags()


def test_a_crest_of_the_form_factor_under_a_weak_s_of_q_is_not_a_structure_factor():
    """The crest at 25 px is a form-factor fringe: with S set to 1 it keeps its prominence."""
    radius = Scene().radius
    fringe = 40.0 * np.exp(-radius / 30.0) + 30.0 * np.exp(-0.5 * ((radius - 25.0) / 2.0) ** 2)
    assert "Structure factor" not in _structure_factor_scene(fringe, 1.15).tags()


def test_polycrystalline_needs_several_separate_grain_spots():
    ring_of_spots = Scene(background=1.0)
    angles = np.linspace(0, 2 * np.pi, 7, endpoint=False)
    ring_of_spots.spots([(48 + 30 * np.cos(a), 48 + 30 * np.sin(a)) for a in angles])
    assert "Polycrystalline" in ring_of_spots.tags()
    two = Scene(background=1.0)
    two.spots([(20, 20), (70, 70)])
    assert "Polycrystalline" not in two.tags()


# --------------------------------------------------------------------------- instrument
@pytest.mark.parametrize("kind,attribute", [("circular", "Circ. Beamstop"), ("linear", "Linear beamstop"),
                                            ("wedge", "Wedge beamstop")])
def test_a_beamstop_is_tagged_when_its_shadow_is_visible(kind, attribute):
    s = Scene(background=20.0)
    s.beamstop(kind)
    assert attribute in s.tags()


def test_an_extended_shadow_at_one_count_per_pixel_is_visible():
    s = Scene(background=1.2)  # each pixel 1.2 ± 1.1: one pixel says little, a patch is plain
    s.beamstop("linear")
    assert "Linear beamstop" in s.tags()


def test_a_beamstop_shadow_below_the_noise_is_not_tagged():
    s = Scene(background=0.02)  # an almost empty frame: a shadow on nothing cannot be seen
    s.beamstop("circular")
    assert "Circ. Beamstop" not in s.tags()


def test_a_beamstop_under_read_noise_is_not_tagged():
    s = Scene(background=3.0)
    s.beamstop("circular")
    assert "Circ. Beamstop" not in s.tags(noise_variance=40.0**2)  # CCD read noise 40 counts


def test_beam_off_image_is_tagged_from_the_geometry():
    s = Scene(background=5.0)
    s.ring(30, 100)
    assert "Beam Off Image" in s.tags(beam_on_image=False)
    assert "Beam Off Image" not in s.tags(beam_on_image=True)


# --------------------------------------------------------------------------- diffuse and levels
def test_diffuse_low_q_needs_a_visible_area():
    s = Scene(background=1.0)
    s.diffuse("diffuse_low", 500.0, 12.0)
    assert "Diffuse low-q" in s.tags()
    speck = Scene(background=1.0)
    speck.diffuse("diffuse_low", 500.0, 0.5)  # the glow of a spot, a few pixels across
    assert "Diffuse low-q" not in speck.tags()


def test_diffuse_low_q_hidden_behind_the_beamstop_is_not_tagged():
    s = Scene(background=1.0)
    s.diffuse("diffuse_low", 500.0, 3.0)
    s.beamstop("circular", radius_px=14)
    assert "Diffuse low-q" not in s.tags()


def test_air_scattering_rising_towards_the_beam_reads_as_diffuse_low_q():
    s = Scene(background=1.0)
    s.roles["air"] = (300.0 * np.exp(-s.radius / 12.0)).astype(np.float32)
    s.background = s.background + s.roles["air"]
    assert "Diffuse low-q" in s.tags()


def test_diffuse_high_q_is_read_like_diffuse_low_q():
    s = Scene(background=1.0)
    s._add("diffuse_high", 100.0 * (s.radius / s.radius.max()) ** 2)
    assert "Diffuse high-q" in s.tags()
    weak = Scene(background=1000.0)
    weak._add("diffuse_high", 5.0 * (weak.radius / weak.radius.max()) ** 2)
    assert "Diffuse high-q" not in weak.tags()


def test_high_background_is_judged_against_the_sample():
    floor_under_weak_sample = Scene(background=150.0)
    floor_under_weak_sample.diffuse("diffuse_low", 30.0, 10.0)
    assert "High background" in floor_under_weak_sample.tags()
    floor_under_bright_rings = Scene(background=1500.0)
    floor_under_bright_rings.ring(20, 1e5)
    floor_under_bright_rings.ring(35, 1e5)
    assert "High background" not in floor_under_bright_rings.tags()
    dark_floor = Scene(background=2.0)
    assert "High background" not in dark_floor.tags()


def test_strong_and_weak_scattering_exclude_each_other():
    strong = Scene(background=1.0)
    strong.ring(25, 5000)
    tags = strong.tags()
    assert "Strong scattering" in tags and "Weak scattering" not in tags
    weak = Scene(background=1.0)
    weak.ring(25, 5)
    tags = weak.tags()
    assert "Weak scattering" in tags and "Strong scattering" not in tags
    buried = Scene(background=50.0)  # a sample below the mean background is weak, however many counts
    buried.diffuse("diffuse_low", 40.0, 5.0)
    assert "Weak scattering" in buried.tags()
