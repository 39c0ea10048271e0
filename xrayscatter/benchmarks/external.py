"""`xrayscatter bench external`: a trained model on detector files this project's simulator never made.

The models are meant for real beamline data, so a score on the project's own simulator is
not enough. This check writes a small set of files from an independent physics code,
**sasmodels** (SasView's model library: its own form factors, paracrystal and hard-sphere
structure factors), on other detector geometries, count levels and file formats than the
simulator's, tags them with ``predict``'s code path, and reports per attribute how well
the model's scores separate the files that have it from those that do not (ROC AUC;
0.5 is chance).

    group                 sasmodels model                 attributes it must show
    dilute_sphere         sphere (polydisperse)           –
    concentrated_sphere   sphere@hardsphere               Structure factor, Halo
    bcc                   bcc_paracrystal (powder)        Ring, Higher orders, BCC
    fcc                   fcc_paracrystal (powder)        Ring, Higher orders, FCC
    lamellar              lamellar_stack_paracrystal      Ring, Higher orders

Every file also gets a beamstop (circular with an arm, or a bar), Poisson counts with a
peak between 10² and 10⁵ counts, and one of three detectors: a Pilatus-1M-like frame
(1043 × 981 px, 172 µm, −1 in module gaps, CBF), an Eiger-1M-like frame (1065 × 1030 px,
75 µm, EDF) or a CCD (1024² px, gain and dark offset, 16-bit TIFF). The powder patterns are
I(|q|) from sasmodels' orientation average, evaluated on a fine 1-D q grid and interpolated
per pixel (q = 4π/λ · sin(θ), 2θ = atan(r / distance)).

sasmodels is in the ``dev`` extra (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xrayscatter.errors import XrayscatterError

# group → (sasmodels model, parameter sampler, attributes the images have)
GROUPS = {
    "dilute_sphere": ("sphere", lambda r: {"radius": r.uniform(25, 70), "radius_pd": 0.1, "radius_pd_n": 15},
                      ()),
    # radius_effective is sasmodels' hard-sphere radius (its default is a fixed 50 Å): a shell
    # of 0–30 % around the particle, as in a sterically stabilised suspension.
    "concentrated_sphere": ("sphere@hardsphere",
                            lambda r: (lambda radius: {"radius": radius, "radius_pd": 0.05, "radius_pd_n": 11,
                                                       "radius_effective": radius * r.uniform(1.0, 1.3),
                                                       "radius_effective_mode": 0,
                                                       "volfraction": r.uniform(0.3, 0.45)})(r.uniform(25, 60)),
                            ("Structure factor", "Halo")),
    "bcc": ("bcc_paracrystal", lambda r: {"dnn": r.uniform(150, 300), "d_factor": r.uniform(0.03, 0.07),
                                          "radius": r.uniform(30, 50)}, ("Ring", "Higher orders", "BCC")),
    "fcc": ("fcc_paracrystal", lambda r: {"dnn": r.uniform(150, 300), "d_factor": r.uniform(0.03, 0.07),
                                          "radius": r.uniform(30, 50)}, ("Ring", "Higher orders", "FCC")),
    "lamellar": ("lamellar_stack_paracrystal",
                 lambda r: {"thickness": r.uniform(20, 40), "Nlayers": 30, "d_spacing": r.uniform(100, 250),
                            "sigma_d": r.uniform(0.02, 0.08)}, ("Ring", "Higher orders")),
}
BEAMSTOP_ATTRIBUTES = {"circular": "Circ. Beamstop", "linear": "Linear beamstop"}
# name → (rows, cols, module rows, module cols, gap rows, gap cols, pixel mm, file suffix)
DETECTORS = {
    "pilatus1m": (1043, 981, 195, 487, 17, 7, 0.172, ".cbf"),
    "eiger1m": (1065, 1030, 514, 1030, 37, 10, 0.075, ".edf"),
    "ccd": (1024, 1024, 0, 0, 0, 0, 0.1, ".tif"),
}
Q_GRID_POINTS = 4000


def module_gaps(rows: int, cols: int, module_rows: int, module_cols: int, gap_rows: int, gap_cols: int) -> np.ndarray:
    """(rows, cols) bool: True in the insensitive rows and columns between detector modules."""
    mask = np.zeros((rows, cols), bool)
    if module_rows:
        for start in range(module_rows, rows, module_rows + gap_rows):
            mask[start:start + gap_rows] = True
    if module_cols:
        for start in range(module_cols, cols, module_cols + gap_cols):
            mask[:, start:start + gap_cols] = True
    return mask


def powder_intensity(model, parameters: dict, q: np.ndarray) -> np.ndarray:
    """sasmodels' orientation-averaged I(q) (cm⁻¹) at every pixel's q (Å⁻¹), via a log-spaced 1-D grid."""
    from sasmodels.direct_model import call_kernel

    q_grid = np.geomspace(q.min(), q.max(), Q_GRID_POINTS)
    kernel = model.make_kernel([q_grid])
    try:
        on_grid = call_kernel(kernel, dict(scale=1.0, background=0.0, **parameters))
    finally:
        kernel.release()
    log_i = np.interp(np.log(q), np.log(q_grid), np.log(np.maximum(on_grid, 1e-30)))
    return np.exp(log_i)


def write_external_set(folder: str | Path, per_group: int = 8, seed: int = 20261124) -> list[dict]:
    """Write ``per_group`` files per group into ``folder`` and ``truth.json``; return the truth rows.

    Each row: file name, group, sasmodels model and parameters, detector, beamstop, beam centre
    (row, column px), wavelength (Å), distance (mm), peak counts and the attributes the image has.
    """
    try:
        from sasmodels.core import load_model
    except ImportError:
        raise XrayscatterError("bench external needs sasmodels (pip install sasmodels, or the dev extra)") from None
    import fabio
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = []
    for group, (model_name, draw, attributes) in GROUPS.items():
        model = load_model(model_name)
        for i in range(per_group):
            detector = list(DETECTORS)[len(truth) % len(DETECTORS)]
            rows, cols, mod_r, mod_c, gap_r, gap_c, pixel_mm, suffix = DETECTORS[detector]
            centre_y, centre_x = rows * rng.uniform(0.35, 0.65), cols * rng.uniform(0.35, 0.65)
            yy, xx = np.mgrid[0:rows, 0:cols]
            radius_px = np.hypot(yy - centre_y, xx - centre_x)
            wavelength = rng.uniform(0.8, 1.5)
            distance = rng.uniform(2000, 6000)
            q = np.maximum(4 * np.pi / wavelength * np.sin(np.arctan(radius_px * pixel_mm / distance) / 2), 1e-4)
            parameters = draw(rng)
            intensity = powder_intensity(model, parameters, q)

            beamstop = "circular" if len(truth) % 2 == 0 else "linear"
            stop_px = rng.uniform(15, 40)
            if beamstop == "circular":  # a disc held by an arm from below
                shadow = (radius_px < stop_px) | ((np.abs(xx - centre_x) < stop_px / 4) & (yy > centre_y))
            else:  # a bar from below, ending past the direct beam
                shadow = (np.abs(xx - centre_x) < stop_px / 2) & (yy > centre_y - stop_px)
            peak_counts = 10 ** rng.uniform(2.0, 5.0)
            scale = peak_counts / intensity[~shadow & (radius_px > 1.5 * stop_px)].max()
            background = 10 ** rng.uniform(-1, 1)
            expected = intensity * scale + background
            expected[shadow] = 0.05 * background
            counts = rng.poisson(expected).astype(np.int32)

            name = f"{group}_{i:02d}{suffix}"
            if detector == "ccd":  # analogue gain and a dark offset with read noise, 16-bit
                adu = counts * 1.7 + 100 + rng.normal(0, 3, counts.shape)
                tifffile.imwrite(folder / name, np.clip(adu, 0, 65535).astype(np.uint16))
            else:
                counts[module_gaps(rows, cols, mod_r, mod_c, gap_r, gap_c)] = -1
                image = fabio.cbfimage.CbfImage(data=counts) if suffix == ".cbf" else fabio.edfimage.EdfImage(data=counts)
                image.write(str(folder / name))
            truth.append({"file": name, "group": group, "model": model_name,
                          "parameters": {k: float(v) for k, v in parameters.items()}, "detector": detector,
                          "beamstop": beamstop, "beam_centre_px": [float(centre_y), float(centre_x)],
                          "wavelength_A": wavelength, "distance_mm": distance,
                          "peak_counts": float(peak_counts),
                          "attributes": sorted(attributes + (BEAMSTOP_ATTRIBUTES[beamstop],))})
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def separation(truth: list[dict], scores: dict[str, dict[str, float]]) -> list[dict]:
    """Per checked attribute: ROC AUC of the scores for files with vs without it, and the mean scores.

    Attributes that every file has (or none) have no AUC and are left out.
    """
    from sklearn.metrics import roc_auc_score

    checked = sorted({a for row in truth for a in row["attributes"]})
    out = []
    for attribute in checked:
        has = np.array([attribute in row["attributes"] for row in truth])
        if has.all():
            continue
        values = np.array([scores[row["file"]][attribute] for row in truth])
        out.append({"attribute": attribute, "positives": int(has.sum()), "negatives": int((~has).sum()),
                    "auc": float(roc_auc_score(has, values)),
                    "mean_score_with": float(values[has].mean()), "mean_score_without": float(values[~has].mean())})
    return out


def bench_external(model: str | Path | None = None, folder: str | Path | None = None, per_group: int = 8,
                   seed: int = 20261124) -> dict:
    """Write (or reuse) the sasmodels set, tag it, print and return the per-attribute separation.

    Args:
        model: SavedModel (default: the newest under saved_models/, as ``predict``).
        folder: where the files go (default ``reports/external``); reused when its truth.json
            was written with the same ``per_group``.
        per_group: files per sasmodels group (5 groups).

    Returns:
        dict with ``model``, ``folder``, ``files``, ``mean_auc`` and ``attributes`` (one dict per
        attribute: auc, positives, mean scores); also written to ``<folder>/results.json``.
    """
    from rich.console import Console
    from rich.table import Table

    from xrayscatter.predict import TaggingModel, resolve_model_dir, run_predictions

    console = Console()
    folder = Path(folder or "reports/external")
    truth_path = folder / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else []
    if len(truth) != per_group * len(GROUPS):
        with console.status(f"writing {per_group * len(GROUPS)} detector files with sasmodels into {folder}"):
            truth = write_external_set(folder, per_group, seed)
    tagging_model = TaggingModel(resolve_model_dir(model))
    started = time.perf_counter()
    results = run_predictions(tagging_model, [folder / row["file"] for row in truth], show_progress=True)
    seconds = time.perf_counter() - started
    failed = [r for r in results if r.error is not None]
    if failed:
        raise XrayscatterError(f"{failed[0].path}: {failed[0].error}")
    scores = {r.path.name: dict(zip(tagging_model.attributes, map(float, r.scores))) for r in results}
    rows = separation(truth, scores)
    summary = {"model": str(tagging_model.path), "folder": str(folder), "files": len(truth),
               "seconds": seconds, "mean_auc": float(np.mean([r["auc"] for r in rows])), "attributes": rows}
    (folder / "results.json").write_text(json.dumps(summary, indent=1) + "\n")

    table = Table(title=f"{len(truth)} sasmodels files (CBF, EDF, TIFF; 3 detectors) tagged by {tagging_model.path}")
    for column in ("attribute", "files with / without", "ROC AUC", f"mean {tagging_model.score_name} with",
                   "without"):
        table.add_column(column, justify="right" if column != "attribute" else "left")
    for r in rows:
        table.add_row(r["attribute"], f"{r['positives']} / {r['negatives']}", f"{r['auc']:.2f}",
                      f"{r['mean_score_with']:.2f}", f"{r['mean_score_without']:.2f}")
    table.add_row("mean", "", f"{summary['mean_auc']:.2f}", "", "")
    console.print(table)
    return summary
