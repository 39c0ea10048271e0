"""Reading real detector files: every format as beamlines write it, every way a file can be bad."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage
from PIL import Image

from detector_samples import pilatus_like, write_bad_files, write_good_files
from xrayscatter.errors import XrayscatterError
from xrayscatter.readers import UnreadableImageError, list_detector_files, read_detector_image

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- good files
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.float32, np.float64])
def test_tiff_of_every_detector_dtype_reads_as_float32_counts(tmp_path, dtype):
    counts = RNG.integers(0, 200, size=(33, 47)).astype(dtype)
    tifffile.imwrite(tmp_path / "frame.tif", counts)
    image = read_detector_image(tmp_path / "frame.tif")
    assert image.dtype == np.float32 and image.shape == (33, 47)
    np.testing.assert_array_equal(image, counts.astype(np.float32))


def test_pilatus_int32_tiff_gaps_and_bad_pixels_become_nan(tmp_path):
    counts = pilatus_like()
    tifffile.imwrite(tmp_path / "pilatus.tif", counts)
    image = read_detector_image(tmp_path / "pilatus.tif")
    assert np.isnan(image[20]).all() and np.isnan(image[3, 5])
    assert np.isnan(image).sum() == 52 + 1
    valid = counts >= 0
    np.testing.assert_array_equal(image[valid], counts[valid].astype(np.float32))


def test_float_tiff_nan_inf_and_negative_pixels_become_nan(tmp_path):
    counts = RNG.uniform(0, 100, size=(32, 32)).astype(np.float32)
    counts[0, 0], counts[1, 1], counts[2, 2] = np.nan, np.inf, -3.5
    tifffile.imwrite(tmp_path / "processed.tiff", counts)
    image = read_detector_image(tmp_path / "processed.tiff")
    assert np.isnan(image).sum() == 3
    assert np.isnan([image[0, 0], image[1, 1], image[2, 2]]).all()


def test_eiger_uint32_all_ones_marker_is_missing(tmp_path):
    counts = RNG.integers(0, 1000, size=(32, 40)).astype(np.uint32)
    counts[:, 10] = np.iinfo(np.uint32).max
    tifffile.imwrite(tmp_path / "eiger.tif", counts)
    image = read_detector_image(tmp_path / "eiger.tif")
    assert np.isnan(image[:, 10]).all() and np.isnan(image).sum() == 32


def test_cbf_written_by_fabio_keeps_pilatus_gaps_as_nan(tmp_path):
    counts = pilatus_like()
    CbfImage(data=counts).write(str(tmp_path / "pilatus.cbf"))
    image = read_detector_image(tmp_path / "pilatus.cbf")
    assert image.shape == counts.shape
    np.testing.assert_array_equal(np.isnan(image), counts < 0)
    np.testing.assert_array_equal(image[counts >= 0], counts[counts >= 0])


def test_edf_written_by_fabio_and_its_dummy_value_is_missing(tmp_path):
    counts = RNG.uniform(0, 50, size=(36, 30)).astype(np.float32)
    EdfImage(data=counts).write(str(tmp_path / "plain.edf"))
    np.testing.assert_array_equal(read_detector_image(tmp_path / "plain.edf"), counts)

    counts[5:8, :] = -10.0  # ESRF "Dummy" convention: masked pixels hold the dummy value
    EdfImage(data=counts, header={"Dummy": "-10", "DDummy": "0.1"}).write(str(tmp_path / "dummy.edf"))
    image = read_detector_image(tmp_path / "dummy.edf")
    assert np.isnan(image[5:8]).all() and np.isnan(image).sum() == 3 * 30


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_8_and_16_bit(tmp_path, dtype):
    counts = RNG.integers(0, np.iinfo(dtype).max, size=(24, 40)).astype(dtype)
    Image.fromarray(counts).save(tmp_path / "frame.png")
    image = read_detector_image(tmp_path / "frame.png")
    np.testing.assert_array_equal(image, counts.astype(np.float32))


def test_npy_and_single_frame_stack_of_one(tmp_path):
    counts = RNG.uniform(0, 10, size=(1, 20, 30))
    np.save(tmp_path / "stack_of_one.npy", counts)
    image = read_detector_image(tmp_path / "stack_of_one.npy")
    assert image.shape == (20, 30) and image.dtype == np.float32


def test_every_format_written_by_beamline_software_reads_as_expected(tmp_path):
    expected = write_good_files(tmp_path)
    for name, counts in expected.items():
        np.testing.assert_array_equal(read_detector_image(tmp_path / name), counts, err_msg=name)


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    counts = RNG.integers(1, 60000, size=(32, 32)).astype(np.uint16)
    Image.fromarray(counts).save(tmp_path / "really_png.png")
    (tmp_path / "named.tif").write_bytes((tmp_path / "really_png.png").read_bytes())
    np.testing.assert_array_equal(read_detector_image(tmp_path / "named.tif"), counts)


# --------------------------------------------------------------------------- bad files
def test_every_kind_of_bad_file_is_rejected_with_its_name_and_reason(tmp_path):
    bad = write_bad_files(tmp_path)
    assert len(bad) == 22
    for name, reason in bad.items():
        with pytest.raises(UnreadableImageError) as info:
            read_detector_image(tmp_path / name)
        error = info.value
        assert isinstance(error, XrayscatterError)
        assert str(error).startswith(f"{tmp_path / name}: "), str(error)
        assert error.reason.startswith(reason), f"{name}: expected '{reason}', got '{error.reason}'"


def test_missing_file_and_folder_are_unreadable(tmp_path):
    for path in (tmp_path / "gone.tif", tmp_path):
        with pytest.raises(UnreadableImageError, match="unreadable"):
            read_detector_image(path)


# --------------------------------------------------------------------------- listing
def test_list_detector_files_sorted_by_suffix_skipping_hidden(tmp_path):
    for name in ["b.tif", "a.EDF", "c.cbf", "d.png", "e.npy", "f.tiff", "notes.txt", "labels.csv", ".hidden.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.tif").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "h.tif").write_bytes(b"x")

    names = [p.name for p in list_detector_files(tmp_path)]
    assert names == ["a.EDF", "b.tif", "c.cbf", "d.png", "e.npy", "f.tiff"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_detector_files(tmp_path, recursive=True)][-1] \
        == "sub/g.tif"
    assert len(list_detector_files(tmp_path, recursive=True)) == 7
    assert [p.name for p in list_detector_files(tmp_path, glob="*.t*")] == ["b.tif", "f.tiff", "notes.txt"]
    assert [p.name for p in list_detector_files(tmp_path, recursive=True, glob="g*")] == ["g.tif"]


def test_list_detector_files_missing_or_empty_folder_says_why(tmp_path):
    with pytest.raises(XrayscatterError, match="folder not found"):
        list_detector_files(tmp_path / "nowhere")
    with pytest.raises(XrayscatterError, match="no detector images"):
        list_detector_files(tmp_path)
    (tmp_path / "labels.csv").write_text("file\n")
    with pytest.raises(XrayscatterError, match="labels.csv.*--glob"):
        list_detector_files(tmp_path)
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "a.tif").write_bytes(b"x")
    assert len(list_detector_files(tmp_path, recursive=True)) == 1
    with pytest.raises(XrayscatterError, match="no detector images"):
        list_detector_files(tmp_path, glob="*.edf")
