"""The tag rules: which of the 17 attributes an image shows, decided from what was rendered.

All rules live here. They read the *expected* counts of each part of the image (after the
beamstop shadow, module gaps and geometric factors, before counting noise), so a feature that
was simulated but hidden (behind the beamstop, off the detector, buried in background or in
the noise) is not tagged.

A ring peak is *visible* when, at its crest, it adds at least ``RING_SIGMA`` standard
deviations of the counting noise of everything else and at least ``RING_CONTRAST`` of
everything else's level there, over at least ``min_pixels`` unmasked pixels. Two visible
peaks closer than ``RESOLUTION`` × their width count as one (not resolved).

| attribute         | rule |
|-------------------|------|
| Beam Off Image    | beam centre outside the image |
| Circ./Linear/Wedge Beamstop | that beamstop shades (opacity ≥ 0.5) ≥ ``min_pixels``/8 px of the image, and its shadow is visibly darker: the counts it removes (median over the shadow) are ≥ ``BEAMSTOP_CONTRAST`` of the unshaded level and ≥ ``RING_SIGMA`` × the counting noise of the difference averaged over ``EYE_PIXELS`` px |
| Ring              | ≥ 1 visible ring (lattice, ad-hoc, Debye cluster, or a spotty ring traced by ≥ ``SPOTS_FOR_A_RING`` visible spots) |
| Many rings        | > 4 visible resolved rings in the image |
| BCC / FCC         | a BCC / FCC Bravais lattice (FCC includes diamond cubic; powder, spotty, oriented, or Debye cluster) with ≥ 2 visible resolved rings |
| Higher orders     | a module shows a visible ring and a visible ring at an integer multiple of its q (2nd+ order) |
| Polycrystalline   | spotty rings: ≥ ``SPOTS_FOR_POLYCRYSTALLINE`` separate visible grain spots |
| Halo              | a halo crest passes the ring test (with its own broad width) |
| Structure factor  | an S(q) correlation peak (S_max ≥ 1.12, a local maximum of P·S) that is a visible crest of the radial profile (prominence ≥ 3σ over ``EYE_PIXELS``, ≥ 0.1 × its base, ≥ 2 counts) between 0.4 and 1.2 × q of the S maximum, and that loses half its prominence when S is set to 1 |
| Diffuse low-q     | ≥ ``diffuse_pixels`` px (0.2 % of the image) where the low-q diffuse part (sample, plus air scattering rising towards the beam, which looks the same) is ≥ 10 counts, ≥ 3σ noise of the rest and ≥ 0.5 × the rest |
| Diffuse high-q    | the same for the high-q diffuse part |
| Strong scattering | sample part: max > 1000 counts or mean > 5 counts over unshaded pixels |
| Weak scattering   | not strong, and sample part: max < 10 counts, or its 99th percentile below the mean background |
| High background   | the background floor (median over open pixels) is ≥ ``HIGH_BACKGROUND_MIN`` counts and ≥ ``HIGH_BACKGROUND_RATIO`` × the sample's 99th percentile: judged against the sample's signal, as a person does, not by absolute counts (a 1,500-count floor under 10⁵-count rings is not high background; 150 counts under a weak sample is) |

``min_pixels`` = max(4, 400 · H·W / 1024²): the reference generator's 400 px on a 1024² frame,
scaled with the image area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xrayscatter.attributes import ATTRIBUTES
from xrayscatter.simulate.lattices import RingPeak, is_higher_order

RING_SIGMA = 3.0
RING_CONTRAST = 0.1
RING_MIN_COUNTS = 2.0
RESOLUTION = 0.75
DIFFUSE_MIN_COUNTS = 10.0
PROFILE_MIN_PIXELS = 3  # open pixels a radial bin needs to read a level from
SF_CREST_SHIFT_BINS = 2  # how far (radial bins) the crest may move when S(q) is set to 1
DIFFUSE_AREA = 0.002  # fraction of the image a diffuse feature must cover (see SceneForTags.diffuse_pixels)
STRONG_MAX, STRONG_MEAN = 1000.0, 5.0
WEAK_MAX = 10.0
HIGH_BACKGROUND_MIN = 50.0  # counts per pixel: a floor of a few tens of counts under a weak sample is a short exposure, not a high background
HIGH_BACKGROUND_RATIO = 0.3  # floor ≥ 30 % of the sample's brightest 1 %: features stand < ~3× above it
BEAMSTOP_CONTRAST = 0.25  # a shadow at least 25 % darker than its surroundings
EYE_PIXELS = 25  # a person judges an extended shape by its average over ~5 × 5 pixels, not pixel by pixel
STRUCTURE_FACTOR_MIN_PEAK = 1.12
SPOTS_FOR_A_RING = 8  # separate grain spots needed before a spotty ring counts as a ring
SPOTS_FOR_POLYCRYSTALLINE = 5  # a spotty ring reads as one when several grains trace it (3 spots could be anything)


@dataclass
class RingEvidence:
    """A ring peak scaled to counts, with where it came from."""

    peak: RingPeak
    crest_counts: float  # at the crest of the 1-D profile, before beamstop and geometric factor
    crest_factor: float  # angular crest (arcs), 1 when isotropic
    module: int  # index of the module in the image
    lattice: str  # "BCC", "FCC", ..., "LAM" for ad-hoc orders, "" when not a lattice
    role: str  # "ring", "spots" or "halo"


@dataclass
class SceneForTags:
    """What the rules read; built by the generator."""

    shape: tuple[int, int]
    open_mask: np.ndarray  # (H, W) bool: unmasked and not behind the beamstop
    q_bin: np.ndarray  # (H, W) int32
    bin_edges: np.ndarray
    geometric_factor: np.ndarray  # (H, W)
    total: np.ndarray  # (H, W) expected counts of everything (after transmission, gaps)
    sample: np.ndarray  # (H, W) sample part
    background: np.ndarray  # (H, W) background part
    roles: dict[str, np.ndarray]  # role → (H, W) expected counts ("air": the background's air scattering)
    piece_images: list[np.ndarray]  # per ring/spots/halo piece, aligned with ring evidence pieces
    rings: list[tuple[int, RingEvidence]]  # (piece index, evidence)
    structure_factor: list[dict] = field(default_factory=list)  # {"q", "s_max", "bump", "piece"}
    beam_on_image: bool = True
    beamstop_kind: str = "none"
    beamstop_shadow: np.ndarray | None = None  # (H, W) counts the beamstop removed (unshaded − shaded)
    beamstop_opacity: np.ndarray | None = None  # (H, W) in [0, 1]
    noise_variance: float = 0.0  # extra per-pixel variance (CCD read noise²), added to the Poisson variance
    # radial-bin labels, pixel counts and mean geometric factors: they depend on the run's maps only, so
    # the generator passes one dict per run (RunMaps.tag_bins) and every image of the run reuses them
    bins_cache: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)  # this scene's own per-bin sums

    @property
    def min_pixels(self) -> float:
        return max(4.0, 400.0 * self.shape[0] * self.shape[1] / 1024**2)

    @property
    def diffuse_pixels(self) -> float:
        """Area a smooth feature must cover to be seen as diffuse scattering rather than the glow of
        a spot: ``DIFFUSE_AREA`` of the image (≈ 2,100 px on a 1024² frame, a disc of ~26 px radius)."""
        return max(self.min_pixels, DIFFUSE_AREA * self.shape[0] * self.shape[1])


def _bin_sums(scene: SceneForTags, image: np.ndarray) -> np.ndarray:
    """(B,) float64 sum of ``image`` over the open pixels of each radial bin."""
    cache = scene.bins_cache
    if "labels" not in cache:  # closed pixels go to an extra bin, dropped: no boolean gather per image
        n_bins = len(scene.bin_edges) - 1
        cache["labels"] = np.where(scene.open_mask, scene.q_bin, n_bins).ravel().astype(np.intp)
    return np.bincount(cache["labels"], weights=image.ravel(), minlength=len(scene.bin_edges))[:-1]


def _bin_stats(scene: SceneForTags, image: np.ndarray | None = None, sums: np.ndarray | None = None):
    """Per radial bin over open pixels: (pixel count, mean of ``image`` (or of the per-bin ``sums`` of
    one), mean geometric factor). Counts and geometric factors are computed once per run."""
    cache = scene.bins_cache
    if "count" not in cache:
        count = _bin_sums(scene, np.ones(scene.shape, np.float32))
        with np.errstate(invalid="ignore", divide="ignore"):
            cache["count"] = count
            cache["gf_mean"] = np.where(count > 0, _bin_sums(scene, scene.geometric_factor) / count, 0.0)
    count = cache["count"]
    total = _bin_sums(scene, image) if sums is None else sums
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, np.where(count > 0, total / count, 0.0), cache["gf_mean"]


def _total_sums(scene: SceneForTags) -> np.ndarray:
    """Per-bin sums of everything (``total``), once per scene: the rest of a piece is total − piece, bin by bin."""
    if "total" not in scene._cache:
        scene._cache["total"] = _bin_sums(scene, scene.total)
    return scene._cache["total"]


def visible_rings(scene: SceneForTags) -> list[RingEvidence]:
    """Every ring-like peak (rings, spotty rings, halos) that passes the visibility test."""
    out = []
    edges = scene.bin_edges
    bin_width = edges[1] - edges[0]
    cache: dict[int, tuple] = {}
    for piece_index, ev in scene.rings:
        if piece_index not in cache:
            cache[piece_index] = _bin_stats(
                scene, sums=_total_sums(scene) - _bin_sums(scene, scene.piece_images[piece_index]))
        count, rest_mean, gf_mean = cache[piece_index]
        b = int(np.searchsorted(edges, ev.peak.q, side="right") - 1)
        if not 0 <= b < len(count) or count[b] == 0:
            continue
        rest = rest_mean[b]
        if ev.role == "spots":
            # A spotty ring reads as a ring only when enough separate grain spots trace it.
            img = scene.piece_images[piece_index]
            reach = max(ev.peak.fwhm, 2 * bin_width)
            lo = np.searchsorted(edges, ev.peak.q - reach, side="right") - 1
            hi = np.searchsorted(edges, ev.peak.q + reach, side="right") - 1
            near = scene.open_mask & (scene.q_bin >= lo) & (scene.q_bin <= hi)
            if count_visible_spots(scene, img, near) >= SPOTS_FOR_A_RING:
                out.append(ev)
            continue
        crest = ev.crest_counts * ev.crest_factor * gf_mean[b]
        n_pixels = count[b] * min(1.0, ev.peak.fwhm / bin_width) / ev.crest_factor
        if (crest >= RING_SIGMA * np.sqrt(rest + 1.0 + scene.noise_variance) and crest >= RING_CONTRAST * rest
                and crest >= RING_MIN_COUNTS and n_pixels >= min(scene.min_pixels, 12)):
            out.append(ev)
    return out


def count_visible_spots(scene: SceneForTags, spots: np.ndarray, where: np.ndarray) -> int:
    """Number of separate visible spots (connected groups of visible spot pixels) inside ``where``."""
    from scipy.ndimage import label

    rest = scene.total - spots
    visible = (where & (spots >= RING_SIGMA * np.sqrt(rest + 1 + scene.noise_variance))
               & (spots >= 2 * RING_CONTRAST * rest) & (spots >= RING_MIN_COUNTS))
    if not visible.any():
        return 0
    return int(label(visible)[1])


def resolved_count(peaks: list[RingEvidence]) -> int:
    """Number of distinct rings after merging peaks closer than RESOLUTION × width."""
    items = sorted((p.peak.q, p.peak.fwhm) for p in peaks)
    n, last_q, last_w = 0, -np.inf, 0.0
    for q, w in items:
        if q - last_q > RESOLUTION * max(w, last_w):
            n += 1
            last_q, last_w = q, w
    return n


def _beamstop_visible(scene: SceneForTags) -> bool:
    """The shadow must be there (opacity ≥ 0.5 on enough pixels) *and* visibly dark against its
    surroundings: the counts it removes are a clear fraction of the unshaded level and stand above
    the counting noise of shaded and unshaded pixels averaged over a patch of ``EYE_PIXELS``
    (an extended shadow at 1–2 counts per pixel is plain to see; one pixel of it is not)."""
    shaded = (scene.beamstop_opacity >= 0.5) & (scene.total > -1)  # gaps included: they still show the outline
    n = int(shaded.sum())
    if n < max(3.0, scene.min_pixels / 8):
        return False
    removed = float(np.median(scene.beamstop_shadow[shaded]))
    left = float(np.median(scene.total[shaded]))
    unshaded = left + removed
    patch = min(n, EYE_PIXELS)
    noise = np.sqrt((left + unshaded + 1.0 + 2 * scene.noise_variance) / patch)
    return removed >= BEAMSTOP_CONTRAST * unshaded and removed >= RING_SIGMA * noise


def _diffuse_visible(scene: SceneForTags, *roles: str) -> bool:
    """Smooth scattering of these roles (summed) stands out of the rest on ≥ ``diffuse_pixels`` px."""
    present = [scene.roles[r] for r in roles if r in scene.roles]
    if not present:
        return False
    part = np.sum(present, axis=0)
    rest = scene.total - part
    ok = (scene.open_mask & (part >= DIFFUSE_MIN_COUNTS) & (part >= RING_SIGMA * np.sqrt(rest + 1 + scene.noise_variance))
          & (part >= 0.5 * rest))
    return int(ok.sum()) >= scene.diffuse_pixels


def _valid_profile(scene: SceneForTags, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The radial profile (mean counts per open pixel) of per-bin ``sums`` on the bins with enough
    open pixels to read a level from: (bin indices, their means)."""
    count, mean, _ = _bin_stats(scene, sums=sums)
    valid = np.flatnonzero(count >= PROFILE_MIN_PIXELS)
    return valid, mean[valid]


def _crests(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a 1-D profile: (indices, prominences)."""
    from scipy.signal import find_peaks

    peaks, props = find_peaks(profile, prominence=0)
    return peaks, props["prominences"]


def _structure_factor_visible(scene: SceneForTags, sf: dict) -> bool:
    """The correlation peak as a person reads it: a visible crest of the image's radial profile between
    0.4 and 1.2 × the q of the S(q) maximum, and S(q) is what makes it (with S set to 1 the crest
    loses at least half its prominence; a form-factor fringe or a ring there would not).

    ``sf``: {"q": Å⁻¹ of the S(q) maximum, "s_max", "bump": P·S has a local maximum near it,
    "piece": index of the P·S image, "s_of_q": (q grid Å⁻¹, S(q))}.
    """
    if sf["s_max"] < STRUCTURE_FACTOR_MIN_PEAK or not sf["bump"]:
        return False
    centres = 0.5 * (scene.bin_edges[:-1] + scene.bin_edges[1:])
    total_sums = _total_sums(scene)
    bins, profile = _valid_profile(scene, total_sums)
    peaks, prominences = _crests(profile)
    inside = (centres[bins][peaks] >= 0.4 * sf["q"]) & (centres[bins][peaks] <= 1.2 * sf["q"])
    if not inside.any():
        return False
    k = int(np.argmax(np.where(inside, prominences, -1.0)))
    crest, prominence = int(peaks[k]), float(prominences[k])
    base = profile[crest] - prominence
    if not (prominence >= RING_SIGMA * np.sqrt((base + 1.0 + scene.noise_variance) / EYE_PIXELS)
            and prominence >= RING_CONTRAST * base and prominence >= RING_MIN_COUNTS):
        return False
    own_sums = _bin_sums(scene, scene.piece_images[sf["piece"]])
    s_at_bins = np.interp(centres, *sf["s_of_q"])
    _, without_s = _valid_profile(scene, total_sums - own_sums + own_sums / np.maximum(s_at_bins, 1e-6))
    peaks_1, prominences_1 = _crests(without_s)
    near = np.abs(peaks_1 - crest) <= SF_CREST_SHIFT_BINS
    return not near.any() or float(prominences_1[near].max()) < 0.5 * prominence


def decide_tags(scene: SceneForTags) -> tuple[list[str], dict]:
    """Apply every rule. Returns (tags in ATTRIBUTES order, evidence dict for the record)."""
    tags: set[str] = set()
    evidence: dict = {}
    if not scene.beam_on_image:
        tags.add("Beam Off Image")
    if scene.beamstop_kind != "none" and _beamstop_visible(scene):
        tags.add({"circular": "Circ. Beamstop", "linear": "Linear beamstop", "wedge": "Wedge beamstop"}[scene.beamstop_kind])

    visible = visible_rings(scene)
    rings = [v for v in visible if v.role in ("ring", "spots")]
    halos = [v for v in visible if v.role == "halo"]
    n_resolved = resolved_count(rings)
    evidence["visible_rings"] = [round(v.peak.q, 6) for v in rings]
    evidence["resolved_rings"] = n_resolved
    if rings:
        tags.add("Ring")
    if n_resolved > 4:
        tags.add("Many rings")
    if halos:
        tags.add("Halo")
    by_module: dict[int, list[RingEvidence]] = {}
    for v in rings:
        by_module.setdefault(v.module, []).append(v)
    for peaks in by_module.values():
        lattice = peaks[0].lattice
        if lattice in ("BCC", "FCC") and resolved_count(peaks) >= 2:
            tags.add(lattice)
        families = {}
        for p in peaks:
            families.setdefault(p.peak.family, set()).add(p.peak.n)
        for family, ns in families.items():
            kind = "LAM" if family.startswith("adhoc") else lattice
            if kind and any(is_higher_order(kind, a, b) for a in ns for b in ns if b > a):
                tags.add("Higher orders")
    spot_img = scene.roles.get("spots")
    if spot_img is not None:
        n_spots = count_visible_spots(scene, spot_img, scene.open_mask)
        evidence["visible_spots"] = n_spots
        if n_spots >= SPOTS_FOR_POLYCRYSTALLINE:
            tags.add("Polycrystalline")

    if any(_structure_factor_visible(scene, sf) for sf in scene.structure_factor):
        tags.add("Structure factor")

    if _diffuse_visible(scene, "diffuse_low", "air"):
        tags.add("Diffuse low-q")
    if _diffuse_visible(scene, "diffuse_high"):
        tags.add("Diffuse high-q")

    open_sample = scene.sample[scene.open_mask]
    open_bg = scene.background[scene.open_mask]
    if open_sample.size:
        s_max, s_mean = float(open_sample.max()), float(open_sample.mean())
        s_p99 = float(np.percentile(open_sample, 99))
        bg_mean, bg_max, bg_median = float(open_bg.mean()), float(open_bg.max()), float(np.median(open_bg))
        evidence.update(sample_max=round(s_max, 3), sample_mean=round(s_mean, 4), sample_p99=round(s_p99, 4),
                        background_mean=round(bg_mean, 4), background_max=round(bg_max, 3),
                        background_median=round(bg_median, 4))
        if s_max > STRONG_MAX or s_mean > STRONG_MEAN:
            tags.add("Strong scattering")
        elif s_max < WEAK_MAX or s_p99 < bg_mean:  # strong and weak exclude each other
            tags.add("Weak scattering")
        if bg_median >= HIGH_BACKGROUND_MIN and bg_median >= HIGH_BACKGROUND_RATIO * s_p99:
            tags.add("High background")
    return [a for a in ATTRIBUTES if a in tags], evidence
