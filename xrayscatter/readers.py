"""Real detector files → (H, W) float32 counts with NaN for missing pixels.

Beamlines write TIFF (Pilatus: int32 with −1 in module gaps and −2 on bad pixels;
CCDs and MarCCD: uint16; processed frames: float32), EDF (ESRF) and CBF
(Pilatus/Dectris), sometimes PNG or NumPy arrays. One reader handles them all and
decides the format from the file's first bytes (the magic number), not its name,
so a ``.tif`` holding PNG bytes is still read and a text file named ``.tif`` is
reported as "not an image".

Missing pixels become NaN here: negative values (Pilatus gaps −1, bad pixels −2),
NaN and ±inf, the EDF ``Dummy`` value when the header sets one, and the all-ones
word of 32-bit unsigned frames (Eiger marks gaps and dead pixels with 2³² − 1).
The model's in-graph :func:`xrayscatter.normalization.normalize_counts` maps NaN
to 0, the value simulated gaps are stored with, so training and prediction treat
missing pixels the same way.

Every rejection raises :class:`UnreadableImageError` (an ``XrayscatterError``)
with the message ``"<path>: <reason>"``; the reason begins with one of
``unreadable``, ``empty``, ``truncated``, ``not an image``, ``multi-frame``,
``RGB``, ``too small``, ``all zero``, ``all NaN``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from xrayscatter.errors import XrayscatterError

# File name endings listed by default (case-insensitive); ``--glob`` lists any name.
# .mccd is MarCCD's TIFF.
DETECTOR_SUFFIXES = (".tif", ".tiff", ".mccd", ".edf", ".cbf", ".png", ".npy")
MIN_SIDE = 16  # px; smaller frames carry no usable scattering pattern
EIGER_UINT32_MISSING = np.iinfo(np.uint32).max  # Eiger gap/dead-pixel marker in 32-bit frames

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"  # CIF binary section marker (CBF spec)
_OTHER_MAGICS = {  # common files that are not detector images, for a precise reason
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"%PDF": "PDF",
    b"PK\x03\x04": "ZIP (or .npz)",
    b"\x89HDF": "HDF5 (multi-frame container; export single frames)",
    b"\x1f\x8b": "gzip-compressed data",
}


class _DropFabioTruncationNoise(logging.Filter):
    """fabio logs an error for a short EDF data block and zero-pads it; we reject the file instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Data stream is incomplete" not in record.getMessage()


logging.getLogger("fabio.edfimage").addFilter(_DropFabioTruncationNoise())


class UnreadableImageError(XrayscatterError):
    """A detector file that cannot be used; ``path`` and ``reason`` kept separately."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class _Reject(Exception):
    """Internal: a format reader's reason; turned into UnreadableImageError with the path."""


# --------------------------------------------------------------------------- listing
def list_detector_files(directory: str | Path, recursive: bool = False, glob: str | None = None) -> list[Path]:
    """The detector files of a folder, sorted by path.

    Args:
        directory: the folder.
        recursive: also list files in subfolders.
        glob: a pattern for the file names (e.g. ``"*_saxs_*.tif"``); when given,
            every matching file is listed whatever its ending (and reading it
            reports the ones that are not images). Without it, files ending in
            one of ``DETECTOR_SUFFIXES`` are listed.

    Hidden files and folders (names starting with ".") are skipped.

    Raises:
        XrayscatterError: the folder is missing, is not a folder, or lists no file.
    """
    directory = Path(directory)
    if not directory.exists():
        raise XrayscatterError(f"{directory}: folder not found")
    if not directory.is_dir():
        raise XrayscatterError(f"{directory}: not a folder (give the folder that holds the images)")
    if glob:
        candidates = directory.rglob(glob) if recursive else directory.glob(glob)
    else:
        candidates = directory.rglob("*") if recursive else directory.iterdir()
    files, others = [], []
    for path in candidates:
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if glob or _has_detector_suffix(path):
            files.append(path)
        else:
            others.append(path)
    if not files:
        where = "in it or its subfolders" if recursive else "in it"
        wanted = f"matching '{glob}'" if glob else "ending in " + ", ".join(DETECTOR_SUFFIXES)
        hint = ""
        if others:
            hint = f"; {len(others)} other file(s), e.g. '{sorted(others)[0].name}' (use --glob to include them)"
        elif not recursive and not glob and any(p.is_dir() for p in directory.iterdir()):
            hint = "; it has subfolders (use --recursive)"
        raise XrayscatterError(f"{directory}: no detector images {where} (looked for files {wanted}){hint}")
    return sorted(files, key=lambda p: str(p))


def _has_detector_suffix(path: Path) -> bool:
    return path.suffix.lower() in DETECTOR_SUFFIXES


# --------------------------------------------------------------------------- reading
def read_detector_image(path: str | Path) -> np.ndarray:
    """Read one detector frame.

    Args:
        path: a TIFF (uint8/uint16/int32/uint32/float32/float64, one page, grayscale),
            EDF or CBF (one frame, via fabio), PNG (8- or 16-bit grayscale) or NPY
            (2-D numeric array) file.

    Returns:
        (H, W) float32 detector counts; missing pixels (negative, NaN, ±inf, EDF
        ``Dummy``, uint32 all-ones) are NaN.

    Raises:
        UnreadableImageError: message ``"<path>: <reason>"``; see the module docstring.
    """
    path = Path(path)
    try:
        raw = _read_raw(path)
        return _as_counts(raw)
    except _Reject as e:
        raise UnreadableImageError(path, str(e)) from None


def _read_raw(path: Path) -> np.ndarray:
    """Dispatch on the file's magic number → the stored array (any dtype, any shape)."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise _Reject("unreadable (a folder, not a file)")
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise _Reject("unreadable (file not found)") from None
    except OSError as e:
        raise _Reject(f"unreadable ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise _Reject("empty (0 bytes)")

    if head.startswith(_TIFF_MAGICS):
        return _read_tiff(path, size)
    if head.startswith(_PNG_MAGIC):
        return _read_png(path)
    if head.startswith(_NPY_MAGIC):
        return _read_npy(path)
    if head.lstrip().startswith(b"{"):
        return _read_edf(path)
    if head.startswith(b"###") and b"CBF" in head[:16]:
        return _read_cbf(path, size)
    suffix = path.suffix.lower()
    if suffix in (".edf", ".cbf"):  # let fabio judge unusual headers of its own formats
        return _read_edf(path) if suffix == ".edf" else _read_cbf(path, size)
    for magic, name in _OTHER_MAGICS.items():
        if head.startswith(magic):
            raise _Reject(f"not an image (a {name} file; expected TIFF, EDF, CBF, PNG or NPY)")
    if not _looks_binary(head):
        raise _Reject("not an image (a text file; expected TIFF, EDF, CBF, PNG or NPY)")
    raise _Reject("not an image (unknown file format; expected TIFF, EDF, CBF, PNG or NPY)")


def _looks_binary(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in head


def _read_tiff(path: Path, file_size: int) -> np.ndarray:
    import tifffile

    colour = {tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.PALETTE, tifffile.PHOTOMETRIC.YCBCR,
              tifffile.PHOTOMETRIC.SEPARATED, tifffile.PHOTOMETRIC.CIELAB}
    try:
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages
            frames = len(pages)
            if frames > 1:  # reduced-resolution previews are not frames
                frames = sum(1 for p in pages if not getattr(p, "is_reduced", False))
            if frames > 1:
                raise _Reject(f"multi-frame ({frames} frames in one TIFF; save one frame per file)")
            page = pages[0]
            if page.samplesperpixel > 1 or page.photometric in colour:
                raise _Reject(f"RGB (colour TIFF, {page.photometric.name}, {page.samplesperpixel} samples per "
                              "pixel; detector images have one)")
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
            if end > file_size:
                raise _Reject(f"truncated (TIFF image data ends at byte {end}, the file has {file_size})")
            return page.asarray()
    except _Reject:
        raise
    except tifffile.TiffFileError as e:
        raise _Reject(f"truncated (corrupt TIFF structure: {e})") from None
    except ValueError as e:
        if "failed to read" in str(e):
            raise _Reject(f"truncated (TIFF: {e})") from None
        raise _Reject(f"unreadable (TIFF: {e})") from None
    except Exception as e:  # noqa: BLE001 - codec errors come in many types; all mean "cannot decode"
        raise _Reject(f"unreadable (TIFF: {type(e).__name__}: {e})") from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib; tifffile cannot read PNG

    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise _Reject(f"multi-frame ({image.n_frames} frames in an animated PNG)")
            if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                raise _Reject(f"RGB (colour PNG, mode {image.mode}; detector images are grayscale)")
            image.load()
            return np.asarray(image)
    except _Reject:
        raise
    except OSError as e:
        if "truncated" in str(e):
            raise _Reject("truncated (PNG data ends early)") from None
        raise _Reject(f"unreadable (PNG: {e})") from None
    except Exception as e:  # noqa: BLE001
        raise _Reject(f"unreadable (PNG: {type(e).__name__}: {e})") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        message = str(e)
        if "Failed to read all data" in message or "not fully written" in message:
            raise _Reject("truncated (NPY data ends early)") from None
        if "allow_pickle" in message:
            raise _Reject("not an image (NPY of Python objects)") from None
        raise _Reject(f"unreadable (NPY: {message})") from None
    except (EOFError, OSError) as e:
        raise _Reject(f"truncated (NPY: {e})") from None
    if array.dtype.names is not None:
        raise _Reject(f"not an image (NPY of records, fields {array.dtype.names})")
    return array


def _read_edf(path: Path) -> np.ndarray:
    import fabio

    try:
        image = fabio.open(str(path))
        if image.nframes > 1:
            raise _Reject(f"multi-frame ({image.nframes} frames in one EDF; save one frame per file)")
        if getattr(image, "incomplete_file", False):
            raise _Reject("truncated (EDF data block shorter than its header says)")
        data = np.asarray(image.data)
        header = dict(image.header)
    except _Reject:
        raise
    except Exception as e:  # noqa: BLE001 - fabio raises IOError/ValueError/AssertionError for bad files
        raise _Reject(f"not an image (not a valid EDF file: {type(e).__name__}: {e})") from None
    return _apply_edf_dummy(data, header)


def _apply_edf_dummy(data: np.ndarray, header: dict) -> np.ndarray:
    """ESRF convention: pixels equal to ``Dummy`` (± ``DDummy``) are masked; Dummy = 0 means none."""
    try:
        dummy = float(header.get("Dummy", 0))
        ddummy = float(header.get("DDummy", 0))
    except ValueError:
        return data
    if dummy == 0:
        return data
    data = data.astype(np.float32)
    data[np.abs(data - dummy) <= ddummy] = np.nan
    return data


def _read_cbf(path: Path, file_size: int) -> np.ndarray:
    import fabio

    declared = _cbf_declared_binary_size(path)
    if declared is not None and declared[0] + declared[1] > file_size:
        raise _Reject(f"truncated (CBF binary section needs {declared[1]} bytes, the file has "
                      f"{file_size - declared[0]} after the header)")
    try:
        image = fabio.open(str(path))
        if image.nframes > 1:
            raise _Reject(f"multi-frame ({image.nframes} frames in one CBF)")
        return np.asarray(image.data)
    except _Reject:
        raise
    except Exception as e:  # noqa: BLE001 - fabio raises AssertionError on checksum mismatch, etc.
        raise _Reject(f"not an image (not a valid CBF file: {type(e).__name__}: {e})") from None


def _cbf_declared_binary_size(path: Path) -> tuple[int, int] | None:
    """(offset of the binary data, X-Binary-Size) from a CBF header, or None if not found."""
    with open(path, "rb") as f:
        head = f.read(65536)  # CBF headers are a few kB
    start = head.find(_CBF_BINARY_START)
    match = re.search(rb"X-Binary-Size:\s*(\d+)", head)
    if start < 0 or match is None:
        return None
    return start + len(_CBF_BINARY_START), int(match.group(1))


# --------------------------------------------------------------------------- checks
def _as_counts(raw: np.ndarray) -> np.ndarray:
    """Stored array → (H, W) float32 with NaN for missing pixels, or _Reject with the reason."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "uif":
        raise _Reject(f"not an image (array of dtype {raw.dtype}; expected integer or float counts)")
    if raw.ndim == 3 and raw.shape[0] == 1:  # one frame stored as a stack of one
        raw = raw[0]
    elif raw.ndim == 3 and raw.shape[-1] == 1:  # one channel stored explicitly
        raw = raw[..., 0]
    if raw.ndim == 3:
        if raw.shape[-1] in (3, 4):
            raise _Reject(f"RGB (array of shape {raw.shape}; detector images are one channel)")
        raise _Reject(f"multi-frame (array of shape {raw.shape}; save one frame per file)")
    if raw.ndim != 2:
        raise _Reject(f"not an image (array of shape {raw.shape}; expected 2-D)")
    height, width = raw.shape
    if min(height, width) < MIN_SIDE:
        raise _Reject(f"too small ({height} × {width} px; need at least {MIN_SIDE} px a side)")

    counts = raw.astype(np.float32)  # float64 beyond float32 range → inf → missing below
    # The mask is computed only where missing values can exist (detector frames are large:
    # this function is most of the reading time).
    if raw.dtype.kind == "f":
        missing = ~np.isfinite(counts)
        missing |= counts < 0
    elif raw.dtype.kind == "i":
        missing = raw < 0
    elif raw.dtype == np.uint32:
        missing = raw == EIGER_UINT32_MISSING
    else:  # uint8 / uint16: every value is a count
        missing = None
    if missing is not None and missing.any():
        if missing.all():
            raise _Reject("all NaN (every pixel missing: NaN, negative or masked)")
        counts[missing] = np.nan  # boolean indexing: fast for the sparse gaps of real detectors
    has_counts = raw.max() > 0 if raw.dtype.kind in "iu" else (counts > 0).any()  # NaN > 0 is False
    if not has_counts:
        raise _Reject("all zero (no counts in any pixel)")
    return counts
