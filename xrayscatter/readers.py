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
with the message ``"<path>: <reason>"`` (``"<path>#<frame>: <reason>"`` for one frame of
a multi-frame file); the reason begins with one of ``unreadable``, ``empty``,
``truncated``, ``not an image``, ``multi-frame``, ``RGB``, ``too small``, ``all zero``,
``all NaN``.

**Frames.** Time-resolved SAXS and pixel-array detectors write many frames per file:
multi-page TIFF, multi-frame EDF, NumPy stacks (N, H, W) and HDF5, above all the
Dectris Eiger/Eiger2 (and Jungfrau) NeXus layout: a small *master* file whose
``/entry/data/data_000001``, ``data_000002``… are external links to *data* files
holding ``/entry/data/data`` (N, H, W), compressed with bitshuffle+LZ4 or gzip
(the filters come from ``hdf5plugin``). :func:`open_frames` opens any detector file
as a :class:`FrameSource`, which lists its frame numbers and reads one frame at a
time (a 1000-frame file is never loaded at once); :func:`iter_frames` walks them.
A frame that cannot be read is named ``file#frame: reason`` and the others are
still read. In HDF5 the pixel mask ``/entry/instrument/detector/detectorSpecific/
pixel_mask`` (non-zero = gap, dead, noisy…) and the all-ones gap word of 16- and
32-bit frames (2¹⁶ − 1, 2³² − 1) are missing pixels. Frame numbers start at 0: the
position in the file, and for an Eiger master the position in the whole series
(image number − 1, from the data sets' ``image_nr_low``). :func:`read_detector_image`
stays the one-frame reader (a multi-frame file is rejected there with "multi-frame").

**Headers.** Where a file states the beam centre, wavelength and sample–detector
distance, :attr:`FrameSource.header` has them as ``beam_x``, ``beam_y`` (pixels, as
the file gives them), ``wavelength_angstrom`` and ``distance_m``: from the Pilatus
mini-header of CBF and TIFF files (``Beam_xy``, ``Wavelength``, ``Detector_distance``),
EDF ``Center_1``/``Center_2``/``WaveLength``/``SampleDistance`` and NeXus
``beam_center_x``/``beam_center_y``/``detector_distance``/``incident_wavelength``.
"""

from __future__ import annotations

import abc
import logging
import math
import re
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from xrayscatter.errors import XrayscatterError

# File name endings listed by default (case-insensitive); ``--glob`` lists any name.
# .mccd is MarCCD's TIFF.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5")
DETECTOR_SUFFIXES = (".tif", ".tiff", ".mccd", ".edf", ".cbf", ".png", ".npy") + HDF5_SUFFIXES
MIN_SIDE = 16  # px; smaller frames carry no usable scattering pattern
EIGER_UINT32_MISSING = np.iinfo(np.uint32).max  # Eiger gap/dead-pixel marker in 32-bit frames
EIGER_UINT16_MISSING = np.iinfo(np.uint16).max  # the same in 16-bit HDF5 frames
EIGER_PIXEL_MASK = "/entry/instrument/detector/detectorSpecific/pixel_mask"
EIGER_DATA_FILE = re.compile(r"^(?P<prefix>.+)_data_\d+\.(?:h5|hdf5|nxs)$", re.IGNORECASE)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"  # CIF binary section marker (CBF spec)
_OTHER_MAGICS = {  # common files that are not detector images, for a precise reason
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"%PDF": "PDF",
    b"PK\x03\x04": "ZIP (or .npz)",
    b"\x1f\x8b": "gzip-compressed data",
}


class _DropFabioTruncationNoise(logging.Filter):
    """fabio logs an error for a short EDF data block and zero-pads it; we reject the file instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Data stream is incomplete" not in record.getMessage()


logging.getLogger("fabio.edfimage").addFilter(_DropFabioTruncationNoise())


class UnreadableImageError(XrayscatterError):
    """A detector file (or one frame of it) that cannot be used; ``path``, ``frame`` and ``reason`` kept separately.

    ``frame`` is None when the whole file is unusable; the message is then ``"<path>: <reason>"``,
    else ``"<path>#<frame>: <reason>"``.
    """

    def __init__(self, path: str | Path, reason: str, frame: int | None = None):
        super().__init__(f"{path}{'' if frame is None else f'#{frame}'}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.frame = frame


class _Reject(Exception):
    """Internal: a format reader's reason; turned into UnreadableImageError with the path."""


# --------------------------------------------------------------------------- listing
def list_input_files(inputs, recursive: bool = False, glob: str | None = None) -> list[Path]:
    """The detector files named on a command line, as users type them: folders (listed by
    :func:`list_detector_files` with ``recursive`` and ``glob``), files, and patterns the shell did not
    expand (``"run42/*.h5"``, ``**`` with ``recursive``). In the order given, each file once.

    Raises:
        XrayscatterError: an input that is neither a folder, a file nor a pattern matching a file (named).
    """
    import glob as globbing

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(list_detector_files(path, recursive=recursive, glob=glob))
        elif path.is_file():
            files.append(path)
        elif any(c in str(item) for c in "*?["):
            matched = sorted(Path(m) for m in globbing.glob(str(item), recursive=recursive) if Path(m).is_file())
            if not matched:
                raise XrayscatterError(f"{item}: no file matches this pattern")
            files.extend(matched)
        else:
            raise XrayscatterError(f"{item}: file or folder not found")
    seen, unique = set(), []
    for path in files:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


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


# --------------------------------------------------------------------------- reading one image
def read_detector_image(path: str | Path) -> np.ndarray:
    """Read a one-frame detector file.

    Args:
        path: a TIFF (uint8/uint16/int32/uint32/float32/float64, one page, grayscale),
            EDF or CBF (one frame, via fabio), PNG (8- or 16-bit grayscale), NPY
            (2-D numeric array) or HDF5 file holding one frame (see :func:`open_frames`).

    Returns:
        (H, W) float32 detector counts; missing pixels (negative, NaN, ±inf, EDF
        ``Dummy``, uint32 all-ones, HDF5 pixel mask) are NaN.

    Raises:
        UnreadableImageError: message ``"<path>: <reason>"``; see the module docstring. A file
            of several frames is rejected as "multi-frame" (:func:`iter_frames` reads them).
    """
    path = Path(path)
    with open_frames(path) as source:
        numbers = source.frame_numbers
        if len(numbers) > 1:
            raise UnreadableImageError(path, f"multi-frame ({len(numbers)} frames in one {source.format}; "
                                             "'xrayscatter predict' tags every frame)")
        if not numbers:
            raise UnreadableImageError(path, f"empty (no frames in this {source.format} file)")
        return source.read(numbers[0])


# --------------------------------------------------------------------------- frames
class FrameSource(abc.ABC):
    """One detector file opened for reading frame by frame.

    Reading is thread-safe (one frame at a time per file); use it as a context manager or
    call :meth:`close`.

    Attributes:
        path: the file.
        format: ``"TIFF"``, ``"EDF"``, ``"CBF"``, ``"PNG"``, ``"NPY"`` or ``"HDF5"``.
        header: ``beam_x``, ``beam_y`` (px), ``wavelength_angstrom``, ``distance_m`` where the file states them.
        linked_files: the data files this file's frames are in (an Eiger master's), whether present or not.
        waiting_links: linked data files left out because ``link_ready`` said they are not complete yet.
        stacked: the file is a stack of frames (errors then name the frame, ``file#frame``).
    """

    format = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header: dict[str, float] = {}
        self.linked_files: tuple[Path, ...] = ()
        self.waiting_links: tuple[Path, ...] = ()
        self.stacked = False
        self._lock = threading.Lock()

    @property
    @abc.abstractmethod
    def frame_numbers(self) -> list[int]:
        """The numbers of the frames there are to read, in order."""

    def read(self, number: int) -> np.ndarray:
        """Frame ``number`` → (H, W) float32 counts with NaN for missing pixels.

        Raises:
            UnreadableImageError: ``"<path>#<number>: <reason>"`` (``"<path>: <reason>"`` for a one-frame file).
        """
        with self._lock:
            try:
                return _as_counts(self._read(number))
            except _Reject as e:
                raise UnreadableImageError(self.path, str(e), number if self.stacked else None) from None
            except MemoryError:
                raise UnreadableImageError(self.path, "unreadable (too large for memory)",
                                           number if self.stacked else None) from None

    @abc.abstractmethod
    def _read(self, number: int) -> np.ndarray:
        """Frame ``number`` as stored (raise ``_Reject`` with a reason when it cannot be read)."""

    def close(self) -> None:
        """Release the file (idempotent)."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WholeFile(FrameSource):
    """A one-frame format, read whole when its frame is asked for (CBF, PNG, 2-D NPY)."""

    def __init__(self, path: Path, fmt: str, reader: Callable[[], np.ndarray], header: dict | None = None):
        super().__init__(path)
        self.format = fmt
        self._reader = reader
        self.header = header or {}

    @property
    def frame_numbers(self) -> list[int]:
        return [0]

    def _read(self, number: int) -> np.ndarray:
        return self._reader()


def open_frames(path: str | Path, h5_path: str | None = None,
                link_ready: Callable[[Path], bool] | None = None,
                known_links: dict[Path, tuple[int, int]] | None = None) -> FrameSource:
    """Open a detector file of any supported format for reading its frames one at a time.

    Args:
        path: the file; its format comes from its first bytes (the name decides only for EDF/CBF
            headers fabio alone recognises and HDF5 files with a user block).
        h5_path: in HDF5 files, the data set holding the frames ((N, H, W) or (H, W)); files without it
            are read in the Eiger/NeXus layout if they have it. By default: the Eiger/NeXus layout
            (``/entry/data/data_*`` links or ``/entry/data/data``), the NeXus default plot, or the file's
            only image-shaped data set.
        link_ready: for an Eiger master, says whether a linked data file is complete; data files it
            says are not are left out (``waiting_links``) instead of being reported (``watch``).
        known_links: for an Eiger master, data files whose frames were all read already → (first frame, count):
            they are not opened again (their frames are listed but cannot be read: ``watch`` skips them).

    Raises:
        UnreadableImageError: the file as a whole cannot be read (the reason says why).
    """
    path = Path(path)
    try:
        size, head = _head(path)
        return _open(path, size, head, h5_path, link_ready, known_links)
    except _Reject as e:
        raise UnreadableImageError(path, str(e)) from None


class Frame:
    """One frame's outcome from :func:`iter_frames`: counts or the reason, the file's header."""

    __slots__ = ("path", "number", "counts", "reason", "header")

    def __init__(self, path: Path, number: int | None, counts: np.ndarray | None, reason: str | None,
                 header: dict):
        self.path, self.number, self.counts, self.reason, self.header = path, number, counts, reason, header

    def __repr__(self) -> str:
        what = f"{self.counts.shape}" if self.counts is not None else repr(self.reason)
        return f"Frame({self.path.name}#{self.number}, {what})"


def iter_frames(path: str | Path, h5_path: str | None = None) -> Iterator[Frame]:
    """Every frame of a file in order, one at a time; an unreadable frame is yielded with its reason.

    A file that cannot be opened gives one :class:`Frame` with ``number`` None and the reason.
    """
    path = Path(path)
    try:
        source = open_frames(path, h5_path)
    except UnreadableImageError as e:
        yield Frame(path, None, None, e.reason, {})
        return
    with source:
        for number in source.frame_numbers:
            try:
                yield Frame(path, number, source.read(number), None, source.header)
            except UnreadableImageError as e:
                yield Frame(path, number if source.stacked else None, None, e.reason, source.header)


def _head(path: Path) -> tuple[int, bytes]:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise _Reject("unreadable (a folder, not a file)")
        with open(path, "rb") as f:
            head = f.read(1024)
    except FileNotFoundError:
        raise _Reject("unreadable (file not found)") from None
    except OSError as e:
        raise _Reject(f"unreadable ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise _Reject("empty (0 bytes)")
    return size, head


def _open(path: Path, size: int, head: bytes, h5_path: str | None, link_ready, known_links=None) -> FrameSource:
    """Dispatch on the file's magic number → a FrameSource."""
    expected = "expected TIFF, EDF, CBF, PNG, NPY or HDF5"
    if head.startswith(_TIFF_MAGICS):
        return _TiffFrames(path, size)
    if head.startswith(_PNG_MAGIC):
        return _WholeFile(path, "PNG", lambda: _read_png(path))
    if head.startswith(_NPY_MAGIC):
        return _open_npy(path)
    if head.startswith(_HDF5_MAGIC) or head[512:520] == _HDF5_MAGIC:
        return _Hdf5Frames(path, h5_path, link_ready, known_links)
    if head.lstrip().startswith(b"{"):
        return _EdfFrames(path, size)
    if head.startswith(b"###") and b"CBF" in head[:16]:
        return _open_cbf(path, size)
    suffix = path.suffix.lower()
    if suffix in (".edf", ".cbf"):  # let fabio judge unusual headers of its own formats
        return _EdfFrames(path, size) if suffix == ".edf" else _open_cbf(path, size)
    if suffix in HDF5_SUFFIXES and size > 2048:  # an HDF5 superblock may sit after a user block
        return _Hdf5Frames(path, h5_path, link_ready, known_links)
    for magic, name in _OTHER_MAGICS.items():
        if head.startswith(magic):
            raise _Reject(f"not an image (a {name} file; {expected})")
    if not _looks_binary(head):
        raise _Reject(f"not an image (a text file; {expected})")
    raise _Reject(f"not an image (unknown file format; {expected})")


def _looks_binary(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in head


# --------------------------------------------------------------------------- headers
_NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_PILATUS_BEAM = re.compile(r"Beam_xy\s*\(\s*" + _NUMBER + r"\s*,\s*" + _NUMBER + r"\s*\)")
_PILATUS_WAVELENGTH = re.compile(r"Wavelength\s+" + _NUMBER + r"\s*A")
_PILATUS_DISTANCE = re.compile(r"Detector_distance\s+" + _NUMBER + r"\s*m\b")


def _pilatus_header(text: str) -> dict[str, float]:
    """Beam centre, wavelength and distance from a Pilatus mini-header (CBF ``_array_data.header_contents``,
    Pilatus TIFF ImageDescription)."""
    header = {}
    if match := _PILATUS_BEAM.search(text):
        header["beam_x"], header["beam_y"] = float(match.group(1)), float(match.group(2))
    if match := _PILATUS_WAVELENGTH.search(text):
        header["wavelength_angstrom"] = float(match.group(1))
    if match := _PILATUS_DISTANCE.search(text):
        header["distance_m"] = float(match.group(1))
    return {k: v for k, v in header.items() if math.isfinite(v)}


def _edf_geometry(header: dict) -> dict[str, float]:
    """ESRF SAXS keywords: ``Center_1``/``Center_2`` (px), ``WaveLength`` and ``SampleDistance`` (m)."""
    out = {}
    for key, name, scale in (("Center_1", "beam_x", 1.0), ("Center_2", "beam_y", 1.0),
                             ("WaveLength", "wavelength_angstrom", 1e10), ("SampleDistance", "distance_m", 1.0)):
        try:
            value = float(str(header[key]).split()[0]) * scale
        except (KeyError, ValueError, IndexError):
            continue
        if math.isfinite(value):
            out[name] = value
    return out


# --------------------------------------------------------------------------- TIFF
class _TiffFrames(FrameSource):
    """Single- or multi-page TIFF (reduced-resolution previews are not frames), one page per frame."""

    format = "TIFF"

    def __init__(self, path: Path, file_size: int):
        import tifffile

        super().__init__(path)
        self._file_size = file_size
        try:
            self._tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError as e:
            raise _Reject(f"truncated (corrupt TIFF structure: {e})") from None
        except Exception as e:  # noqa: BLE001
            raise _Reject(f"unreadable (TIFF: {type(e).__name__}: {e})") from None
        try:
            pages = list(self._tif.pages)
            self._pages = [p for p in pages if not getattr(p, "is_reduced", False)] if len(pages) > 1 else pages
            self.stacked = len(self._pages) > 1
            description = (getattr(self._pages[0], "description", "") or "") if self._pages else ""
            self.header = _pilatus_header(description) if "Beam_xy" in description or "Wavelength" in description \
                else {}
        except Exception as e:  # noqa: BLE001
            self._tif.close()
            raise _Reject(f"truncated (corrupt TIFF structure: {type(e).__name__}: {e})") from None

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(len(self._pages)))

    def _read(self, number: int) -> np.ndarray:
        return _read_tiff_page(self._pages[number], self._file_size)

    def close(self) -> None:
        self._tif.close()


def _read_tiff_page(page, file_size: int) -> np.ndarray:
    import tifffile

    colour = {tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.PALETTE, tifffile.PHOTOMETRIC.YCBCR,
              tifffile.PHOTOMETRIC.SEPARATED, tifffile.PHOTOMETRIC.CIELAB}
    try:
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


# --------------------------------------------------------------------------- PNG, NPY
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


class _NpyFrames(FrameSource):
    """An (N, H, W) NumPy stack, memory-mapped: one frame read at a time."""

    format = "NPY"

    def __init__(self, path: Path, array: np.ndarray):
        super().__init__(path)
        self._array = array
        self.stacked = True

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(self._array.shape[0]))

    def _read(self, number: int) -> np.ndarray:
        return np.array(self._array[number])

    def close(self) -> None:
        self._array = self._array[:0]


def _open_npy(path: Path) -> FrameSource:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - truncated, objects, …: the plain reader gives the reason
        array = None
    if (array is not None and array.ndim == 3 and array.shape[0] > 1 and array.shape[-1] not in (1, 3, 4)
            and array.dtype.names is None and array.dtype.kind in "uif"):
        return _NpyFrames(path, array)
    del array
    return _WholeFile(path, "NPY", lambda: _read_npy(path))


# --------------------------------------------------------------------------- EDF, CBF
class _EdfFrames(FrameSource):
    """Single- or multi-frame EDF (fabio); each frame's ``Dummy`` masks its own pixels."""

    format = "EDF"

    def __init__(self, path: Path, file_size: int):
        import fabio

        super().__init__(path)
        self._file_size = file_size
        try:
            self._image = fabio.open(str(path))
            self._count = int(self._image.nframes)
            self.header = _edf_geometry(dict(self._image.header))
        except Exception as e:  # noqa: BLE001 - fabio raises IOError/ValueError/AssertionError for bad files
            raise _Reject(f"not an image (not a valid EDF file: {type(e).__name__}: {e})") from None
        self.stacked = self._count > 1

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(self._count))

    def _read(self, number: int) -> np.ndarray:
        frames = getattr(self._image, "_frames", None)
        if frames and number < len(frames):
            start, length = getattr(frames[number], "start", None), getattr(frames[number], "blobsize", None)
            if start is not None and length is not None and start + length > self._file_size:
                raise _Reject(f"truncated (EDF data block of frame {number} ends at byte {start + length}, "
                              f"the file has {self._file_size})")
        elif getattr(self._image, "incomplete_file", False):
            raise _Reject("truncated (EDF data block shorter than its header says)")
        if number == 0 and getattr(self._image, "incomplete_file", False) and self._count == 1:
            raise _Reject("truncated (EDF data block shorter than its header says)")
        try:
            frame = self._image if number == 0 else self._image.getframe(number)
            data, header = np.asarray(frame.data), dict(frame.header)
        except Exception as e:  # noqa: BLE001
            raise _Reject(f"unreadable (EDF frame: {type(e).__name__}: {e})") from None
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


def _open_cbf(path: Path, file_size: int) -> FrameSource:
    with open(path, "rb") as f:
        head = f.read(65536)  # CBF headers are a few kB
    text = head.split(_CBF_BINARY_START, 1)[0].decode("latin-1")
    return _WholeFile(path, "CBF", lambda: _read_cbf(path, file_size, head), _pilatus_header(text))


def _read_cbf(path: Path, file_size: int, head: bytes) -> np.ndarray:
    import fabio

    declared = _cbf_declared_binary_size(head)
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


def _cbf_declared_binary_size(head: bytes) -> tuple[int, int] | None:
    """(offset of the binary data, X-Binary-Size) from a CBF header, or None if not found."""
    start = head.find(_CBF_BINARY_START)
    match = re.search(rb"X-Binary-Size:\s*(\d+)", head)
    if start < 0 or match is None:
        return None
    return start + len(_CBF_BINARY_START), int(match.group(1))


# --------------------------------------------------------------------------- HDF5 / NeXus / Eiger
def _h5py():
    """h5py with the compression filters of detector files registered (bitshuffle, LZ4, …: hdf5plugin)."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers the filters with HDF5 on import

    return h5py


def _open_h5(path: Path):
    """An HDF5 file opened read-only without file locking (a writer may hold it; locks fail on NFS)."""
    h5py = _h5py()
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise _Reject("unreadable (file not found)") from None
    except OSError as e:
        message = str(e)
        if "truncated file" in message:
            raise _Reject(f"truncated (HDF5: {message})") from None
        if "file signature not found" in message:
            raise _Reject("not an image (not a valid HDF5 file: no HDF5 signature)") from None
        raise _Reject(f"unreadable (HDF5: {message})") from None


def _h5_scalar(file, path: str, units: dict[str, float] | None = None, default_unit: str = "") -> float | None:
    """A number stored at ``path`` (first element of an array), converted by its ``units`` attribute."""
    h5py = _h5py()
    try:
        item = file.get(path)
        if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "uif" or item.size == 0:
            return None
        value = float(np.asarray(item[()]).ravel()[0])
        unit = item.attrs.get("units", default_unit)
    except Exception:  # noqa: BLE001 - a broken header field is simply absent
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1")
    if units is not None:
        factor = units.get(str(unit).strip().lower())
        if factor is None:
            return None
        value *= factor
    return value if math.isfinite(value) else None


_LENGTH_M = {"m": 1.0, "metre": 1.0, "meter": 1.0, "mm": 1e-3, "cm": 1e-2, "um": 1e-6, "µm": 1e-6}
_WAVELENGTH_A = {"angstrom": 1.0, "a": 1.0, "å": 1.0, "ang": 1.0, "nm": 10.0, "m": 1e10}


def _nexus_header(file) -> dict[str, float]:
    detector = "/entry/instrument/detector"
    header = {}
    for name, key in (("beam_center_x", "beam_x"), ("beam_center_y", "beam_y")):
        value = _h5_scalar(file, f"{detector}/{name}")
        if value is not None:
            header[key] = value
    distance = _h5_scalar(file, f"{detector}/detector_distance", _LENGTH_M, "m")
    if distance is not None:
        header["distance_m"] = distance
    for path in ("/entry/instrument/beam/incident_wavelength", "/entry/instrument/monochromator/wavelength",
                 "/entry/sample/beam/incident_wavelength"):
        wavelength = _h5_scalar(file, path, _WAVELENGTH_A, "angstrom")
        if wavelength is not None:
            header["wavelength_angstrom"] = wavelength
            break
    return header


def _is_image_dataset(item) -> bool:
    h5py = _h5py()
    return (isinstance(item, h5py.Dataset) and item.dtype.kind in "uif" and item.ndim in (2, 3)
            and min(item.shape[-2:]) >= MIN_SIDE)


def _nexus_default_signal(file):
    """The data set a NeXus file's ``default`` attributes point at (root → entry → NXdata ``signal``), or None."""
    h5py = _h5py()
    group = file
    for _ in range(4):
        name = group.attrs.get("default")
        if isinstance(name, bytes):
            name = name.decode()
        if not name or not isinstance(group.get(name), h5py.Group):
            break
        group = group[name]
    signal = group.attrs.get("signal") if group is not file else None
    if isinstance(signal, bytes):
        signal = signal.decode()
    item = group.get(signal) if signal else None
    return item if _is_image_dataset(item) else None


def _only_image_dataset(file):
    """The file's one image-shaped data set (masks and flat fields aside), or a reason to pass --h5-path."""
    found = []

    def visit(name, item):
        lowered = name.lower()
        if _is_image_dataset(item) and not any(w in lowered for w in ("mask", "flatfield", "detectorspecific")):
            found.append("/" + name)

    file.visititems(visit)
    if len(found) == 1:
        return file[found[0]]
    if not found:
        raise _Reject("not an image (no image data set in this HDF5 file; name one with --h5-path)")
    shown = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
    raise _Reject(f"not an image (several image data sets: {shown}; choose one with --h5-path)")


class _Block:
    """Consecutive frames of one data set (or the reason they cannot be read)."""

    __slots__ = ("first", "count", "dataset", "reason")

    def __init__(self, first: int, count: int, dataset=None, reason: str | None = None):
        self.first, self.count, self.dataset, self.reason = first, count, dataset, reason


class _Hdf5Frames(FrameSource):
    """HDF5: an Eiger/NeXus master with linked data files, a data file, or the data set ``h5_path``."""

    format = "HDF5"

    def __init__(self, path: Path, h5_path: str | None = None, link_ready=None, known_links=None):
        super().__init__(path)
        self.stacked = True
        self.link_blocks: dict[Path, tuple[int, int]] = {}  # linked data file → (first frame, count)
        self._known_links = known_links or {}
        self._files = [_open_h5(path)]
        self._blocks: list[_Block] = []
        self._gap_words = h5_path is None  # the all-ones gap word is an Eiger/NeXus convention
        try:
            self._setup(self._files[0], h5_path, link_ready)
        except _Reject:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file raises many kinds of errors in h5py
            self.close()
            raise _Reject(f"unreadable (HDF5: {type(e).__name__}: {e})") from None

    def _setup(self, file, h5_path, link_ready) -> None:
        h5py = _h5py()
        self.header = _nexus_header(file)
        mask = file.get(EIGER_PIXEL_MASK)
        self._mask = np.asarray(mask[()]) != 0 if isinstance(mask, h5py.Dataset) and mask.ndim == 2 else None
        if h5_path is not None and file.get(h5_path) is not None:
            self._add(file[h5_path], 0, f"'{h5_path}'", strict=True)
            return
        group = file.get("/entry/data")  # the Eiger/NeXus layout (also when --h5-path names what a master lacks)
        if isinstance(group, h5py.Group):
            names = sorted(n for n in group if re.fullmatch(r"data_\d+", n))
            if names:
                self._gap_words = True
                self._add_links(group, names, link_ready)
                return
            if isinstance(group.get("data"), h5py.Dataset):
                self._gap_words = True
                self._add(group["data"], 0, "'/entry/data/data'", strict=True)
                return
        if h5_path is not None:
            raise _Reject(f"not an image (no data set '{h5_path}' in this HDF5 file)")
        self._add(_nexus_default_signal(file) or _only_image_dataset(file), 0, "", strict=True)

    def _add(self, item, first: int, label: str, strict: bool = False) -> int:
        """Append the frames of data set ``item`` from number ``first``; returns the next number."""
        h5py = _h5py()
        reason = None
        if not isinstance(item, h5py.Dataset):
            reason = f"not an image ({label} is not a data set)"
        elif item.dtype.kind not in "uif":
            reason = f"not an image (data set {label} of dtype {item.dtype}; expected integer or float counts)"
        elif item.ndim not in (2, 3):
            reason = f"not an image (data set {label} of shape {item.shape}; expected (N, H, W) frames or (H, W))"
        if reason is not None:
            if strict:
                raise _Reject(reason)
            self._blocks.append(_Block(first, 1, reason=reason))
            return first + 1
        count = 1 if item.ndim == 2 else int(item.shape[0])
        self._blocks.append(_Block(first, count, item))
        return first + count

    def _add_links(self, group, names: list[str], link_ready) -> None:
        h5py = _h5py()
        links = [(name, group.get(name, getlink=True)) for name in names]
        targets = {name: (self.path.parent / link.filename) for name, link in links
                    if isinstance(link, h5py.ExternalLink)}
        self.linked_files = tuple(targets.values())
        number, waiting = 0, []
        for name, link in links:
            target = targets.get(name)
            if waiting or (target is not None and link_ready is not None and not link_ready(target)):
                if target is not None:
                    waiting.append(target)  # later links wait too, so frame numbers stay in order
                continue
            if target in self._known_links:  # read before: not opened again
                first, count = self._known_links[target]
                self._blocks.append(_Block(first, count, reason="unreadable (frames read before; not opened again)"))
                self.link_blocks[target] = (first, count)
                number = first + count
                continue
            if target is None:
                try:
                    dataset = group[name]
                except Exception as e:  # noqa: BLE001 - a dangling soft link
                    self._blocks.append(_Block(number, 1, reason=f"unreadable (link {name}: {e})"))
                    number += 1
                    continue
                label = f"'{group.name}/{name}'"
            else:
                where = f"linked data file {link.filename}"
                if not target.exists():
                    self._blocks.append(_Block(number, 1, reason=f"unreadable ({where} not found)"))
                    number += 1
                    continue
                try:
                    data_file = _open_h5(target)
                except _Reject as e:
                    self._blocks.append(_Block(number, 1, reason=f"{e} ({where})"))
                    number += 1
                    continue
                self._files.append(data_file)
                dataset = data_file.get(link.path)
                if dataset is None:
                    self._blocks.append(_Block(number, 1, reason=f"unreadable ({where} has no '{link.path}')"))
                    number += 1
                    continue
                label = f"'{link.path}' of {link.filename}"
            low = dataset.attrs.get("image_nr_low") if isinstance(dataset, h5py.Dataset) else None
            try:
                first = int(np.asarray(low).ravel()[0]) - 1 if low is not None else number
            except (TypeError, ValueError, IndexError):
                first = number
            number = self._add(dataset, max(first, 0), label)
            if target is not None and self._blocks[-1].reason is None:
                self.link_blocks[target] = (self._blocks[-1].first, self._blocks[-1].count)
        self.waiting_links = tuple(waiting)

    @property
    def frame_numbers(self) -> list[int]:
        numbers = []
        for block in self._blocks:
            numbers.extend(range(block.first, block.first + block.count))
        return numbers

    def _read(self, number: int) -> np.ndarray:
        for block in self._blocks:
            if block.first <= number < block.first + block.count:
                break
        else:
            raise _Reject(f"unreadable (no frame {number} in this file)")
        if block.reason is not None:
            raise _Reject(block.reason)
        try:
            dataset = block.dataset
            raw = np.asarray(dataset[()] if dataset.ndim == 2 else dataset[number - block.first])
        except OSError as e:
            message = str(e)
            if "filter" in message:
                raise _Reject(f"unreadable (corrupt or undecodable compressed frame: {message})") from None
            raise _Reject(f"unreadable (HDF5: {message})") from None
        except Exception as e:  # noqa: BLE001
            raise _Reject(f"unreadable (HDF5: {type(e).__name__}: {e})") from None
        missing = None
        if self._gap_words and raw.dtype in (np.uint16, np.uint32):
            missing = raw == np.iinfo(raw.dtype).max
        if self._mask is not None and self._mask.shape == raw.shape:
            missing = self._mask if missing is None else missing | self._mask
        if missing is not None and missing.any():
            raw = raw.astype(np.float32)
            raw[missing] = np.nan
        return raw

    def close(self) -> None:
        for file in self._files:
            try:
                file.close()
            except Exception:  # noqa: BLE001
                pass
        self._files = []


def linked_data_files(path: str | Path) -> list[Path]:
    """The data files an Eiger/NeXus master links to (``/entry/data/data_*`` external links); [] for any other file."""
    path = Path(path)
    if path.suffix.lower() not in HDF5_SUFFIXES or EIGER_DATA_FILE.match(path.name):
        return []
    try:
        file = _open_h5(path)
    except _Reject:
        return []
    h5py = _h5py()
    try:
        group = file.get("/entry/data")
        if not isinstance(group, h5py.Group):
            return []
        links = [group.get(n, getlink=True) for n in sorted(group) if re.fullmatch(r"data_\d+", n)]
        return [path.parent / link.filename for link in links if isinstance(link, h5py.ExternalLink)]
    except Exception:  # noqa: BLE001
        return []
    finally:
        file.close()


def drop_linked_data_files(paths: list[Path]) -> list[Path]:
    """``paths`` without the data files that a master file among them links to (they are read through it, once)."""
    linked = {target.resolve() for path in paths for target in linked_data_files(path)}
    if not linked:
        return list(paths)
    return [path for path in paths if path.resolve() not in linked]

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
