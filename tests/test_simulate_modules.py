"""Scattering modules draw physical sizes for the run's mode (SAXS or WAXS) and put them where the
detector sees them."""

from __future__ import annotations

import numpy as np
import pytest

from xrayscatter.simulate import lattices, modules
from xrayscatter.simulate.runs import run_maps


def _maps(mode: str, count: int = 10, image_size: int = 32):
    saxs_fraction = 1.0 if mode == "SAXS" else 0.0
    return [run_maps(41, run_id, image_size, saxs_fraction) for run_id in range(count)]


def _records(module, mode: str, draws_per_run: int = 30) -> list[dict]:
    out = []
    for maps in _maps(mode):
        for j in range(draws_per_run):
            result = module(np.random.default_rng([maps.params["run_id"], j]), maps, maps.visible_q)
            if result is not None:
                out.append({**result[0], "_window": maps.visible_q})
    return out


def test_waxs_lattices_have_physical_nearest_neighbour_spacing():
    records = _records(modules.lattice_module, "WAXS")
    assert len(records) > 150
    for r in records:
        nn = lattices.nearest_neighbour_distance(r["lattice"], r["a"])
        assert r["d_nn"] == pytest.approx(nn, rel=1e-3)
        _, lo, hi = modules.WAXS_LATTICES[r["lattice"]]
        assert 2.3 <= lo * (1 - 1e-4) <= nn <= hi * (1 + 1e-4), r
        assert r["form_factor"] in ("atomic", "molecular", "cylinder", "slab")  # never nanometre spheres
    assert min(r["d_nn"] for r in records) >= 2.3


def test_saxs_lattices_are_superlattices_and_mesophases_of_tens_to_hundreds_of_angstrom():
    records = _records(modules.lattice_module, "SAXS")
    assert len(records) > 150
    for r in records:
        _, lo, hi = modules.SAXS_LATTICES[r["lattice"]]
        assert lo * (1 - 1e-4) <= r["d_nn"] <= hi * (1 + 1e-4), r
        if r["form_factor"] == "sphere":  # particles do not overlap their neighbours
            assert 10.0 <= r["radius"] <= min(500.0, r["d_nn"] / 2 + 1e-3)
        elif r["form_factor"] == "cylinder":
            assert r["lattice"] == "HEX" and r["radius"] < r["a"] / 2
        else:
            assert r["form_factor"] == "slab" and r["lattice"] == "LAM" and r["thickness"] < r["a"]


def test_first_ring_lands_in_the_visible_window():
    for mode in ("SAXS", "WAXS"):
        for r in _records(modules.lattice_module, mode, draws_per_run=10):
            lo, hi = modules._sub_window(r["_window"], 0.0, 0.7)
            assert lo * (1 - 1e-4) <= r["q_first"] <= hi * (1 + 1e-4)


@pytest.mark.parametrize("mode,lo,hi", [("SAXS", 10.0, 500.0), ("WAXS", 3.5, 60.0)])
def test_sphere_radii_are_physical_for_the_mode(mode, lo, hi):
    records = _records(modules.sphere_module, mode)
    assert len(records) > 100
    radii = np.array([r["radius"] for r in records])
    assert radii.min() >= lo * (1 - 1e-4) and radii.max() <= hi * (1 + 1e-4)
    particles = [r["particle_radius"] for r in _records(modules.debye_module, mode, 6) if "particle_radius" in r]
    assert particles and lo * (1 - 1e-4) <= min(particles) and max(particles) <= hi * (1 + 1e-4)


def test_waxs_debye_clusters_are_atoms_on_metal_lattices():
    records = [r for r in _records(modules.debye_module, "WAXS", 4) if r["arrangement"] == "cluster"]
    assert records
    for r in records:
        assert "element" in r and 2.45 * (1 - 1e-4) <= r["d_nn"] <= 4.7 * (1 + 1e-4)


def test_waxs_halos_sit_where_amorphous_matter_scatters():
    records = _records(modules.halo_module, "WAXS")
    assert len(records) > 100
    for r in records:
        _, lo, hi = modules.HALOS["WAXS"][r["kind"]]
        assert lo * (1 - 1e-4) <= r["q0"] <= hi * (1 + 1e-4)
    kinds = [r["kind"] for r in records]
    assert max(set(kinds), key=kinds.count) == "polymer/organic"
    saxs = _records(modules.halo_module, "SAXS", 10)
    assert all(2 * np.pi / 1000 <= r["q0"] <= 2 * np.pi / 30 for r in saxs)


def test_pick_visible_is_rejection_sampling_from_the_physical_prior():
    """Choosing a class ∝ weight × visible fraction and a size log-uniformly in the visible part is
    the same distribution as drawing from the prior and redrawing until visible."""
    options = {"a": (1.0, 1.0, 10.0), "b": (2.0, 5.0, 50.0), "c": (1.0, 20.0, 40.0)}
    window = (2.0, 8.0)
    rng = np.random.default_rng(0)
    picks = [modules._pick_visible(rng, options, window) for _ in range(20000)]
    share_a = np.mean([p[0] == "a" for p in picks])
    # rejection: P(a) ∝ 1·log(8/2)/log(10), P(b) ∝ 2·log(8/5)/log(10), c never visible
    fa, fb = np.log(4) / np.log(10), 2 * np.log(1.6) / np.log(10)
    assert share_a == pytest.approx(fa / (fa + fb), abs=0.015)
    assert all(p[0] != "c" and window[0] <= p[1] <= window[1] for p in picks)
    assert modules._pick_visible(rng, {"c": (1.0, 20.0, 40.0)}, window) is None
