"""The simulator's physics against closed forms and independent references (sasmodels, pyFAI)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xrayscatter.simulate import debye, form_factors, lattices, structure_factors, texture
from xrayscatter.simulate.geometry import DETECTORS, Geometry, module_gap_mask, wavelength_angstrom

os.environ.setdefault("SAS_OPENCL", "none")  # sasmodels: compiled C kernels, no GPU probing


def _sasmodels(name: str, q: np.ndarray, **pars) -> np.ndarray:
    from sasmodels.core import load_model
    from sasmodels.direct_model import call_kernel

    model = load_model(name)
    return call_kernel(model.make_kernel([q]), pars)


# --------------------------------------------------------------------------- closed forms
def test_wavelength_of_13_5_kev():
    assert wavelength_angstrom(13.5) == pytest.approx(0.91840, abs=1e-4)


def test_geometry_q_at_known_radius():
    g = Geometry(13.5, 5.0, 172e-6, 100, 100, 50.0, 50.0)
    r_px = 1000.0
    two_theta = np.arctan(r_px * 172e-6 / 5.0)
    expected = 4 * np.pi / g.wavelength * np.sin(two_theta / 2)
    assert g.q_from_radius_px(r_px) == pytest.approx(expected, rel=1e-12)
    assert g.radius_px_from_q(expected) == pytest.approx(r_px, rel=1e-9)


def test_chi_is_zero_up_and_clockwise():
    g = Geometry(12.0, 1.0, 1e-4, 5, 5, 2.5, 2.5)
    chi = g.chi_map()
    assert chi[0, 2] == pytest.approx(0.0, abs=1e-6)  # straight up
    assert chi[2, 4] == pytest.approx(np.pi / 2, abs=1e-6)  # right


def test_sphere_first_minimum_at_4_493():
    x = np.linspace(4.3, 4.7, 4001)
    p = form_factors.sphere_form_factor(x, 1.0)
    assert x[np.argmin(p)] == pytest.approx(4.4934, abs=2e-4)


def test_percus_yevick_forward_value():
    for phi in (0.1, 0.3, 0.45):
        s0 = structure_factors.structure_factor_percus_yevick(np.array([1e-4, 1e-3]), 50.0, phi)
        assert s0[0] == pytest.approx((1 - phi) ** 4 / (1 + 2 * phi) ** 2, rel=1e-6)


def test_percus_yevick_peak_near_qR_3():
    q = np.linspace(0.001, 0.2, 4000)
    s = structure_factors.structure_factor_percus_yevick(q, 50.0, 0.35)
    assert 2.8 < q[np.argmax(s)] * 50.0 < 3.8


def test_bcc_rings_follow_sqrt_even_sequence():
    refl = lattices.reflections("BCC", 3.0)
    assert [r.n for r in refl[:9]] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert [r.multiplicity for r in refl[:9]] == [12, 6, 24, 12, 24, 8, 48, 6, 36]
    assert np.allclose([r.ratio for r in refl[:4]], [1, np.sqrt(2), np.sqrt(3), 2])


def test_fcc_reflections_and_multiplicities():
    refl = lattices.reflections("FCC", 3.5)
    assert [r.n for r in refl[:10]] == [3, 4, 8, 11, 12, 16, 19, 20, 24, 27]
    assert [r.multiplicity for r in refl[:9]] == [8, 6, 12, 24, 8, 6, 24, 24, 24]
    assert refl[9].multiplicity == 32  # (333) and (511) coincide at N = 27
    assert np.allclose([r.ratio for r in refl[:4]], [1, 1.1547, 1.63299, 1.91485], atol=1e-4)


def test_hexagonal_and_lamellar_sequences():
    assert np.allclose([r.ratio for r in lattices.reflections("HEX", 3.0)[:5]], [1, np.sqrt(3), 2, np.sqrt(7), 3])
    assert [r.ratio for r in lattices.reflections("LAM", 4.0)] == [1, 2, 3, 4]


def test_higher_order_detection():
    assert lattices.is_higher_order("BCC", 2, 8)  # (110) → (220)
    assert not lattices.is_higher_order("BCC", 2, 4)
    assert lattices.is_higher_order("FCC", 3, 12)  # (111) → (222)
    assert lattices.is_higher_order("LAM", 1, 3)


def test_debye_formula_matches_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.normal(scale=20.0, size=(60, 3))
    q = np.linspace(0.01, 0.5, 50)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    brute = np.array([np.sum(np.sinc(qq * d / np.pi)) for qq in q]) / len(pos)
    fast = debye.debye_intensity(q, pos, bin_width=0.01)
    assert np.allclose(fast, brute, rtol=2e-3)


def test_wrapped_cauchy_has_mean_one():
    chi = np.linspace(-np.pi, np.pi, 20001)[:-1]
    for eta in (0.1, 0.5, 0.9):
        w = texture.wrapped_cauchy_arcs(chi, 2, eta, 0.3)
        assert w.mean() == pytest.approx(1.0, rel=1e-4)
        assert w.max() == pytest.approx(texture.arc_crest_factor(eta), rel=1e-3)


# --------------------------------------------------------------------------- sasmodels
def test_sphere_matches_sasmodels():
    q = np.linspace(0.002, 0.4, 400)
    ref = _sasmodels("sphere", q, radius=50.0, scale=1.0, background=0.0)
    ours = form_factors.sphere_form_factor(q, 50.0)
    # sasmodels gives absolute units (scale·V·Δρ²·P); compare shapes
    assert np.allclose(ours, ref / ref[0] * ours[0], rtol=2e-3, atol=1e-9)


def test_polydisperse_sphere_matches_sasmodels_schulz():
    q = np.linspace(0.002, 0.3, 300)
    ref = _sasmodels("sphere", q, radius=50.0, radius_pd=0.1, radius_pd_type="schulz", radius_pd_n=200,
                     radius_pd_nsigma=6, scale=1.0, background=0.0)
    ours = form_factors.polydisperse_sphere_form_factor(q, 50.0, 0.1)
    ratio = ours / (ref / ref[0] * ours[0])
    # the minima are where numerical weights matter most; shapes agree within a few percent
    assert np.all(np.abs(ratio - 1) < 0.05)


@pytest.mark.parametrize("phi", [0.1, 0.3, 0.45])
def test_percus_yevick_matches_sasmodels_hardsphere(phi):
    q = np.linspace(0.001, 0.3, 500)
    ref = _sasmodels("hardsphere", q, radius_effective=40.0, volfraction=phi, scale=1.0, background=0.0)
    ours = structure_factors.structure_factor_percus_yevick(q, 40.0, phi)
    assert np.allclose(ours, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("lattice,model", [("BCC", "bcc_paracrystal"), ("FCC", "fcc_paracrystal")])
def test_lattice_peaks_match_sasmodels_paracrystal(lattice, model):
    from scipy.signal import find_peaks

    dnn = 200.0
    # nearest-neighbour distance → cubic lattice constant: BCC a = 2·dnn/√3, FCC a = √2·dnn
    a = 2 * dnn / np.sqrt(3) if lattice == "BCC" else np.sqrt(2) * dnn
    q = np.linspace(0.01, 0.09, 1600)
    radius = 30.0  # small spheres: the form factor hardly modulates the first peaks
    iq = _sasmodels(model, q, dnn=dnn, d_factor=0.01, radius=radius, scale=1.0, background=0.0)
    z = iq / form_factors.sphere_form_factor(q, radius)
    found, _ = find_peaks(np.log(z), prominence=0.2)
    q_first = 2 * np.pi * np.sqrt(lattices.first_peak_n(lattice)) / a
    expected = [q_first * r.ratio for r in lattices.reflections(lattice, 4.0) if q_first * r.ratio < q[-1] * 0.98]
    assert len(found) >= 3
    for qe in expected[:3]:
        nearest = q[found][np.argmin(np.abs(q[found] - qe))]
        assert nearest == pytest.approx(qe, rel=0.01)


# --------------------------------------------------------------------------- pyFAI
def _render_powder_image(geometry: Geometry, lattice: str, q_first: float):
    q_map = geometry.q_map()
    grid = np.linspace(q_map.min(), q_map.max(), 4000)
    peaks, _, rings = lattices.powder_profile(grid, lattice, q_first, fwhm_0=0.0015, fwhm_growth=0.0,
                                              debye_waller_sigma=0.0, max_ratio=2.5)
    return np.interp(q_map, grid, peaks).astype(np.float32), rings


@pytest.mark.parametrize("lattice", ["BCC", "FCC"])
def test_rendered_rings_found_by_pyfai_azimuthal_integration(lattice):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    from scipy.signal import find_peaks

    g = Geometry(13.5, 2.0, 172e-6, 256, 300, 140.3, 120.7)
    image, rings = _render_powder_image(g, lattice, q_first=0.03)
    ai = AzimuthalIntegrator(dist=g.distance_m, poni1=g.beam_y * g.pixel_size_m, poni2=g.beam_x * g.pixel_size_m,
                             pixel1=g.pixel_size_m, pixel2=g.pixel_size_m, wavelength=g.wavelength * 1e-10)
    npt = 600
    result = ai.integrate1d(image, npt, unit="q_A^-1", correctSolidAngle=False, method=("no", "histogram", "cython"))
    q_bins, intensity = result.radial, result.intensity
    bin_width = q_bins[1] - q_bins[0]
    found, _ = find_peaks(intensity, prominence=intensity.max() * 0.02)
    q_max_full_circle = g.q_from_radius_px(min(g.beam_x, g.beam_y, g.width - g.beam_x, g.height - g.beam_y))
    for ring in rings:
        if ring.q > q_max_full_circle:
            continue
        nearest = q_bins[found][np.argmin(np.abs(q_bins[found] - ring.q))]
        assert abs(nearest - ring.q) <= bin_width, (ring, nearest)


def test_pilatus_gap_mask_matches_pyfai_detector():
    from pyFAI.detectors import detector_factory

    for name in ("Pilatus1M", "Pilatus300K"):
        ours = module_gap_mask(DETECTORS[name], DETECTORS[name].height, DETECTORS[name].width)
        theirs = detector_factory(name).calc_mask().astype(bool)
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)


def test_diamond_removes_200_and_222_from_fcc():
    ns = [r.n for r in lattices.reflections("DIA", 3.0)]
    assert ns[:5] == [3, 8, 11, 16, 19]  # Si: (111), (220), (311), (400), (331)
    assert lattices.BRAVAIS["DIA"] == "FCC"


def test_hcp_first_rings_follow_ideal_c_over_a():
    refl = lattices.reflections("HCP", 1.5)
    assert [r.hkl for r in refl[:3]] == [(1, 0, 0), (0, 0, 2), (1, 0, 1)]
    assert np.allclose([r.ratio for r in refl[:3]], [1.0, 1.0607, 1.1319], atol=1e-3)
    assert [r.multiplicity for r in refl[:3]] == [6, 2, 12]


# --------------------------------------------------------------------------- form factor per lattice
def test_cylinder_cross_section_first_zero_at_3_832():
    x = np.linspace(3.6, 4.0, 4001)
    p = form_factors.cylinder_cross_section(x, 1.0)
    assert x[np.argmin(p)] == pytest.approx(3.8317, abs=2e-4)
    assert form_factors.cylinder_cross_section(np.array([0.0, 1e-6]), 50.0) == pytest.approx([1.0, 1.0])


def test_long_cylinder_powder_matches_sasmodels_cylinder():
    """sasmodels' orientation-averaged cylinder at L ≫ R is π/(qL)·(2J₁(qR)/qR)², away from the zeros
    of J₁ (which the exact average fills in)."""
    from scipy.special import jn_zeros

    q = np.linspace(0.01, 0.5, 400)
    radius, length = 40.0, 20000.0
    ref = _sasmodels("cylinder", q, radius=radius, length=length, scale=1.0, background=0.0)
    ours = form_factors.long_cylinder_powder(q, radius, length)
    far_from_zeros = np.min(np.abs(q[:, None] * radius - jn_zeros(1, 10)[None]), axis=1) > 0.3
    ratio = (ref / ours)[far_from_zeros]
    assert np.all(np.abs(ratio / np.median(ratio) - 1) < 0.02)


def test_slab_over_q_squared_matches_sasmodels_lamellar():
    q = np.linspace(0.005, 0.6, 500)
    ref = _sasmodels("lamellar", q, thickness=30.0, scale=1.0, background=0.0)
    ours = form_factors.slab_form_factor(q, 30.0) / q**2
    assert np.allclose(ours / ours[0], ref / ref[0], rtol=1e-6)
    assert form_factors.slab_form_factor(np.array([2 * np.pi / 30.0]), 30.0)[0] == pytest.approx(0.0, abs=1e-20)


def test_lattice_module_uses_the_form_factor_of_its_objects():
    """HEX rings are weighted by the cylinder cross-section, LAM rings by the slab factor, 3-D
    lattices by spheres (SAXS) or atoms (WAXS): ring area = Σ|F|²·P(q_hkl)/q² (no Debye–Waller)."""
    from xrayscatter.simulate.modules import _site_factor

    q = np.linspace(1e-3, 0.5, 4000)
    expected_kind = {("SAXS", "HEX"): "cylinder", ("SAXS", "LAM"): "slab", ("SAXS", "BCC"): "sphere",
                     ("WAXS", "FCC"): "atomic", ("WAXS", "HEX"): "cylinder", ("WAXS", "LAM"): "slab"}
    for (mode, lattice), kind in expected_kind.items():
        a = 300.0 if mode == "SAXS" else 3.6
        d_nn = lattices.nearest_neighbour_distance(lattice, a)
        grid = q if mode == "SAXS" else q * 20
        ff, _, record = _site_factor(np.random.default_rng(1), grid, mode, lattice, a, d_nn)
        assert record["form_factor"] == kind
        if kind == "cylinder":
            assert np.allclose(ff, form_factors.polydisperse_cylinder_cross_section(grid, record["radius"],
                                                                                    record["polydispersity"]),
                               rtol=1e-3, atol=1e-6)  # the record rounds the radius
        if kind == "slab":
            assert record["thickness"] < a
            assert np.allclose(ff, form_factors.slab_form_factor(grid, record["thickness"]), rtol=1e-3, atol=1e-6)
        q1 = lattices.first_peak_q(lattice, a)
        _, _, rings = lattices.powder_profile(grid, lattice, q1, fwhm_0=q1 * 0.01, fwhm_growth=0.0,
                                              debye_waller_sigma=0.0, form_factor=ff, max_ratio=3.0)
        for ring, refl in zip(rings, lattices.reflections(lattice, 3.0)):
            assert ring.area == pytest.approx(refl.weight * np.interp(ring.q, grid, ff) / ring.q**2, rel=1e-9)


# --------------------------------------------------------------------------- atoms and real crystals
def _pyfai_calibrant(name: str) -> list[tuple[float, tuple[int, ...], float | None]]:
    """(d spacing Å, hkl, relative intensity or None) rows of a pyFAI calibrant file."""
    import importlib.resources

    rows = []
    text = (importlib.resources.files("pyFAI") / "resources" / "calibration" / f"{name}.D").read_text()
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        d, rest = line.split("#", 1)
        hkl = tuple(int(v) for v in rest[rest.index("(") + 1:rest.index(")")].split())
        tail = rest[rest.index(")") + 1:].split()
        rows.append((float(d), hkl, float(tail[1]) if len(tail) > 1 else None))
    return rows


def test_atomic_form_factors_start_at_the_atomic_number():
    for element, z in form_factors.ATOMIC_NUMBER.items():
        assert form_factors.atomic_form_factor(np.zeros(1), element)[0] == pytest.approx(z, abs=0.06)
        f = form_factors.atomic_form_factor(np.linspace(0, 12, 50), element)
        assert np.all(np.diff(f) < 0)


@pytest.mark.parametrize("name,lattice,a", [("Au", "FCC", 4.0782), ("Al", "FCC", 4.0495), ("Si", "DIA", 5.4312),
                                            ("LaB6", "SC", 4.1568), ("AgBh", "LAM", 58.38)])
def test_ring_positions_match_pyfai_calibrants(name, lattice, a):
    """Our reflection sequences at the calibrants' lattice constants give pyFAI's d spacings, in order."""
    rows = _pyfai_calibrant(name)
    d_ref = sorted({round(d, 5) for d, _, _ in rows}, reverse=True)[:8]
    q1 = lattices.first_peak_q(lattice, a)
    d_ours = [2 * np.pi / (q1 * r.ratio) for r in lattices.reflections(lattice, 6.0)][:8]
    n = min(len(d_ours), len(d_ref))
    assert n >= 6
    assert np.allclose(d_ours[:n], d_ref[:n], rtol=2e-4)


@pytest.mark.parametrize("element,a,b_factor", [("Al", 4.0495, 0.6), ("Au", 4.0782, 1.0)])
def test_fcc_ring_intensities_match_pyfai_calibrant_tables(element, a, b_factor):
    """The calibrants' relative intensities (Cu Kα, unpolarised tube) are reproduced by our ring
    areas — multiplicity × (f/f₀)² × Debye–Waller / q² — converted to 2θ (÷ k cos θ) and times the
    polarisation factor (1 + cos² 2θ)/2, with the tables' Debye–Waller B (Å²)."""
    rows = [r for r in _pyfai_calibrant(element) if r[2] is not None]
    wavelength = 1.5406
    k = 2 * np.pi / wavelength
    q1 = lattices.first_peak_q("FCC", a)
    sigma = np.sqrt(b_factor / (8 * np.pi**2))  # B = 8π²⟨u²⟩ and DW = exp(−⟨u²⟩ q²)
    q_grid = np.linspace(0.01, 8.0, 8000)
    ff = form_factors.atomic_form_factor_squared(q_grid, element)
    _, _, rings = lattices.powder_profile(q_grid, "FCC", q1, fwhm_0=1e-3, fwhm_growth=0.0,
                                          debye_waller_sigma=sigma, form_factor=ff, max_ratio=2.0)
    ours = []
    for ring in rings[:len(rows)]:
        theta = np.arcsin(ring.q / (2 * k))
        ours.append(ring.area / (k * np.cos(theta)) * (1 + np.cos(2 * theta) ** 2) / 2)
    ours = 100 * np.array(ours) / ours[0]
    assert np.allclose(ours, [r[2] for r in rows], rtol=5e-3, atol=0.05)


@pytest.mark.parametrize("shape", ["gaussian", "lorentzian", "pseudo-voigt"])
def test_pixel_integrated_peaks_keep_their_area(shape):
    """A pixel records the average of the ring over its q span: areas are kept, a ring much narrower
    than a pixel becomes a one-pixel box, and a box of zero width is the bare peak."""
    q = np.linspace(0.0, 2.0, 200001)
    for fwhm, box in ((0.01, 0.002), (0.001, 0.02), (0.01, 0.0)):
        peak = lattices.pixel_integrated_peak(q, 1.0, fwhm, shape, box)
        area = np.trapezoid(peak, q)
        assert area == pytest.approx(np.trapezoid(lattices.peak_shape(q, 1.0, fwhm, shape), q), rel=1e-4)
    narrow = lattices.pixel_integrated_peak(np.array([1.0]), 1.0, 1e-4, "gaussian", 0.02)[0]
    assert narrow == pytest.approx(1 / 0.02, rel=1e-3)
    bare = lattices.pixel_integrated_peak(q, 1.0, 0.01, shape, 0.0)
    assert np.array_equal(bare, lattices.peak_shape(q, 1.0, 0.01, shape))
