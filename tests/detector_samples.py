"""Detector files shared by test_readers, test_predict and test_serving (not a test module).

Real-format detector files written the way beamline software writes them (tifffile,
fabio, Pillow, numpy) and every kind of bad file. The tiny SavedModels are ``helpers.py``'s
(``shared_saved_models`` is named here too: ``tests/test_external.py`` imports it from here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage
from PIL import Image

from helpers import shared_saved_models  # noqa: F401  (tests/test_external.py imports it from here)

RNG = np.random.default_rng(0)


def pilatus_like(height: int = 40, width: int = 52, seed: int = 0) -> np.ndarray:
    """(H, W) int32 counts with a −1 module-gap row and a −2 bad pixel, as Pilatus TIFF/CBF store them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - height / 3, xx - width / 2)
    counts = rng.poisson(5 + 400 * np.exp(-radius / 6)).astype(np.int32)  # a diffuse central peak
    counts[height // 2, :] = -1
    counts[3, 5] = -2
    return counts


def expected_counts(stored: np.ndarray) -> np.ndarray:
    """What read_detector_image returns for a stored integer/float array: float32, negative → NaN."""
    counts = stored.astype(np.float32)
    counts[~np.isfinite(counts) | (counts < 0)] = np.nan
    return counts


def write_good_files(folder: Path) -> dict[str, np.ndarray]:
    """Readable detector files of every format and two sizes → {file name: expected counts}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    pilatus = pilatus_like(40, 52, seed=1)
    tifffile.imwrite(folder / "pilatus_0001.tif", pilatus)
    written["pilatus_0001.tif"] = pilatus
    pilatus_cbf = pilatus_like(40, 52, seed=2)
    CbfImage(data=pilatus_cbf).write(str(folder / "pilatus_0002.cbf"))
    written["pilatus_0002.cbf"] = pilatus_cbf
    ccd = pilatus_like(48, 48, seed=3).clip(0).astype(np.uint16)
    tifffile.imwrite(folder / "ccd_0001.tiff", ccd)
    written["ccd_0001.tiff"] = ccd
    edf = pilatus_like(48, 48, seed=4).astype(np.float32).clip(0) * 0.5
    EdfImage(data=edf).write(str(folder / "esrf_0001.edf"))
    written["esrf_0001.edf"] = edf
    png16 = pilatus_like(48, 48, seed=5).clip(0).astype(np.uint16)
    Image.fromarray(png16).save(folder / "frame16.png")
    written["frame16.png"] = png16
    png8 = pilatus_like(40, 52, seed=6).clip(0, 255).astype(np.uint8)
    Image.fromarray(png8).save(folder / "frame8.png")
    written["frame8.png"] = png8
    processed = pilatus_like(40, 52, seed=7).astype(np.float32) / 3.0
    processed[0, :4] = np.nan
    np.save(folder / "processed.npy", processed)
    written["processed.npy"] = processed
    return {name: expected_counts(array) for name, array in written.items()}


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def write_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of unusable file → {file name: the reason its message must start with}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = RNG.integers(1, 100, size=(32, 32)).astype(np.uint16)
    bad = {}

    def tif(name, data, reason, **kw):
        tifffile.imwrite(folder / name, data, **kw)
        bad[name] = reason

    (folder / "empty.tif").write_bytes(b"")
    bad["empty.tif"] = "empty"
    (folder / "notes.tif").write_text("exposure 1 s, sample 7\n")
    bad["notes.tif"] = "not an image"
    (folder / "photo.png").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # JPEG bytes
    bad["photo.png"] = "not an image"
    (folder / "garbage.edf").write_bytes(b"\x00\x01garbage" * 20)
    bad["garbage.edf"] = "not an image"
    np.save(folder / "names.npy", np.array(["a", "b"]))
    bad["names.npy"] = "not an image"

    tifffile.imwrite(folder / "trunc.tif", good)
    _truncate(folder / "trunc.tif")
    bad["trunc.tif"] = "truncated"
    tifffile.imwrite(folder / "trunc_zlib.tif", RNG.integers(0, 60000, (64, 64)).astype(np.uint16),
                     compression="zlib")
    _truncate(folder / "trunc_zlib.tif")
    bad["trunc_zlib.tif"] = "truncated"
    Image.fromarray(RNG.integers(0, 60000, (64, 64)).astype(np.uint16)).save(folder / "trunc.png")
    _truncate(folder / "trunc.png")
    bad["trunc.png"] = "truncated"
    np.save(folder / "trunc.npy", good)
    _truncate(folder / "trunc.npy")
    bad["trunc.npy"] = "truncated"
    EdfImage(data=good.astype(np.float32)).write(str(folder / "trunc.edf"))
    _truncate(folder / "trunc.edf", 0.8)
    bad["trunc.edf"] = "truncated"
    CbfImage(data=pilatus_like(64, 64) * 1000).write(str(folder / "trunc.cbf"))
    _truncate(folder / "trunc.cbf", 0.8)
    bad["trunc.cbf"] = "truncated"

    tif("stack.tif", np.stack([good] * 3), "multi-frame", photometric="minisblack")
    edf = EdfImage(data=good.astype(np.float32))
    edf.append_frame(data=good.astype(np.float32))
    edf.write(str(folder / "two_frames.edf"))
    bad["two_frames.edf"] = "multi-frame"
    np.save(folder / "stack.npy", np.stack([good] * 5))
    bad["stack.npy"] = "multi-frame"

    tif("colour.tif", RNG.integers(0, 255, (32, 32, 3)).astype(np.uint8), "RGB", photometric="rgb")
    Image.fromarray(RNG.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(folder / "colour.png")
    bad["colour.png"] = "RGB"
    np.save(folder / "rgba.npy", np.ones((32, 32, 4)))
    bad["rgba.npy"] = "RGB"

    tif("tiny.tif", good[:8, :30], "too small")
    tif("zero.tif", np.zeros((32, 32), np.uint16), "all zero")
    gaps_and_zeros = np.zeros((32, 32), np.int32)
    gaps_and_zeros[::4] = -1
    tif("zero_with_gaps.tif", gaps_and_zeros, "all zero")
    tif("nan.tif", np.full((32, 32), np.nan, np.float32), "all NaN")
    tif("all_gaps.tif", np.full((32, 32), -1, np.int32), "all NaN")
    return bad
