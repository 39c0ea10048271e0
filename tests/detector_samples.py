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


# --------------------------------------------------------------------------- multi-frame and HDF5 files
EIGER_HEADER = {"beam_x": 20.5, "beam_y": 17.25, "wavelength_angstrom": 1.0332, "distance_m": 2.5}


def eiger_frames(count: int, height: int = 40, width: int = 48, dtype=np.uint32, seed: int = 0) -> np.ndarray:
    """(count, H, W) counts as an Eiger writes them: a central peak, a module-gap row of the all-ones word."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - EIGER_HEADER["beam_y"], xx - EIGER_HEADER["beam_x"])
    frames = np.stack([rng.poisson(3 + (50 + 40 * i) * np.exp(-radius / 5)) for i in range(count)]).astype(dtype)
    frames[:, height // 2, :] = np.iinfo(dtype).max
    return frames


def write_eiger_series(folder: Path, prefix: str, frames: np.ndarray, per_file: int, compression: str = "bitshuffle",
                       mask: np.ndarray | None = None, missing_data_files: tuple[int, ...] = ()) -> Path:
    """An Eiger/NeXus master ``<prefix>_master.h5`` and data files ``<prefix>_data_00000k.h5`` (h5py), laid out
    as the Dectris file writer does: ``/entry/data/data_00000k`` external links to ``/entry/data/data`` of
    (n, H, W) frames in chunks of one frame (bitshuffle+LZ4 or gzip), ``image_nr_low``/``image_nr_high``
    (1-based), the pixel mask under ``detectorSpecific``, beam centre, distance and wavelength with units.

    Args:
        missing_data_files: 1-based numbers of data files linked but not written.

    Returns the master's path.
    """
    import h5py
    import hdf5plugin

    folder.mkdir(parents=True, exist_ok=True)
    master = folder / f"{prefix}_master.h5"
    count, height, width = frames.shape
    files = range(0, count, per_file)
    with h5py.File(master, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        instrument = entry.create_group("instrument")
        beam = instrument.create_group("beam")
        beam["incident_wavelength"] = EIGER_HEADER["wavelength_angstrom"]
        beam["incident_wavelength"].attrs["units"] = "angstrom"
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        for name, value, unit in (("beam_center_x", EIGER_HEADER["beam_x"], "pixel"),
                                  ("beam_center_y", EIGER_HEADER["beam_y"], "pixel"),
                                  ("detector_distance", EIGER_HEADER["distance_m"], "m"),
                                  ("count_time", 0.1, "s"), ("x_pixel_size", 75e-6, "m")):
            detector[name] = value
            detector[name].attrs["units"] = unit
        specific = detector.create_group("detectorSpecific")
        specific["nimages"] = count
        specific["ntrigger"] = 1
        specific["pixel_mask"] = (mask if mask is not None else np.zeros((height, width))).astype(np.uint32)
        specific["flatfield"] = np.ones((height, width), np.float32)
        for k, start in enumerate(files, start=1):
            name = f"{prefix}_data_{k:06d}.h5"
            data[f"data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            if k not in missing_data_files:
                write_eiger_data_file(folder, prefix, k, frames, per_file, compression)
    return master


def write_eiger_data_file(folder: Path, prefix: str, k: int, frames: np.ndarray, per_file: int,
                          compression: str = "bitshuffle") -> Path:
    """Data file ``k`` (1-based) of a series: frames (k − 1)·per_file … as the Eiger writes them."""
    import h5py
    import hdf5plugin

    filters = (hdf5plugin.Bitshuffle(nelems=0, cname="lz4") if compression == "bitshuffle"
               else {"compression": "gzip", "compression_opts": 4})
    start = (k - 1) * per_file
    block = frames[start:start + per_file]
    path = folder / f"{prefix}_data_{k:06d}.h5"
    with h5py.File(path, "w") as d:
        dataset = d.create_dataset("/entry/data/data", data=block, chunks=(1, *block.shape[1:]), **filters)
        dataset.attrs["image_nr_low"] = start + 1
        dataset.attrs["image_nr_high"] = start + len(block)
    return path


def corrupt_hdf5_frame(path: Path, frame: int, dataset: str = "/entry/data/data") -> None:
    """Overwrite the stored (compressed) chunk of one frame with noise: that frame no longer decodes."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(frame)
    data = bytearray(path.read_bytes())
    noise = np.random.default_rng(frame).integers(0, 256, info.size, dtype=np.uint8).tobytes()
    data[info.byte_offset:info.byte_offset + info.size] = noise
    path.write_bytes(bytes(data))


def expected_eiger_counts(frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """What the reader returns for Eiger frames: float32, the all-ones word and masked pixels NaN."""
    counts = frames.astype(np.float32)
    counts[frames == np.iinfo(frames.dtype).max] = np.nan
    if mask is not None:
        counts[:, mask != 0] = np.nan
    return counts
