"""Multi-frame files and HDF5: Eiger/NeXus masters with linked data files, stacks, masks, headers, bad frames."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage

from detector_samples import (EIGER_HEADER, corrupt_hdf5_frame, eiger_frames, expected_counts, expected_eiger_counts,
                              write_eiger_series)
from xrayscatter.readers import (UnreadableImageError, drop_linked_data_files, iter_frames, list_detector_files,
                                 open_frames, read_detector_image)

RNG = np.random.default_rng(1)


def frames_of(path, **kw):
    return [(f.number, f.counts, f.reason) for f in iter_frames(path, **kw)]


# --------------------------------------------------------------------------- Eiger / NeXus
@pytest.mark.parametrize("compression", ["bitshuffle", "gzip"])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint16])
def test_eiger_master_reads_every_frame_of_its_data_files_with_mask_and_gap_words(tmp_path, compression, dtype):
    frames = eiger_frames(7, dtype=dtype)
    mask = np.zeros(frames.shape[1:], np.uint32)
    mask[3, 4], mask[10, :3] = 1, 8  # a dead pixel, noisy pixels
    master = write_eiger_series(tmp_path, "run1", frames, per_file=3, compression=compression, mask=mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1_data_000001.h5", "run1_data_000002.h5",
                                                         "run1_data_000003.h5", "run1_master.h5"]

    read = frames_of(master)

    assert [n for n, _, _ in read] == list(range(7))
    expected = expected_eiger_counts(frames, mask)
    for number, counts, reason in read:
        assert reason is None
        np.testing.assert_array_equal(counts, expected[number])
    assert np.isnan(read[0][1][20]).all() and np.isnan(read[0][1][3, 4]) and np.isnan(read[0][1][10, :3]).all()
    with open_frames(master) as source:
        assert source.header == pytest.approx(EIGER_HEADER)
        assert [p.name for p in source.linked_files] == [f"run1_data_00000{k}.h5" for k in (1, 2, 3)]


def test_a_data_file_alone_reads_its_own_frames_and_a_listing_reads_it_through_its_master(tmp_path):
    frames = eiger_frames(5)
    write_eiger_series(tmp_path, "s", frames, per_file=2)
    alone = frames_of(tmp_path / "s_data_000002.h5")
    assert [n for n, _, _ in alone] == [0, 1]
    np.testing.assert_array_equal(alone[1][1], expected_eiger_counts(frames)[3])

    listed = list_detector_files(tmp_path)
    assert len(listed) == 4
    assert [p.name for p in drop_linked_data_files(listed)] == ["s_master.h5"]
    write_eiger_series(tmp_path / "other", "t", frames, per_file=5)  # data files of a master not listed stay
    orphan = [tmp_path / "other" / "t_data_000001.h5"]
    assert drop_linked_data_files(orphan) == orphan


def test_corrupt_chunk_missing_and_truncated_data_files_are_named_per_frame_and_the_rest_is_read(tmp_path):
    frames = eiger_frames(9)
    master = write_eiger_series(tmp_path, "bad", frames, per_file=3, missing_data_files=(2,))
    corrupt_hdf5_frame(tmp_path / "bad_data_000001.h5", 1)
    data3 = tmp_path / "bad_data_000003.h5"
    data3.write_bytes(data3.read_bytes()[: data3.stat().st_size // 2])

    read = frames_of(master)

    reasons = {n: r for n, _, r in read if r is not None}
    assert [n for n, c, _ in read if c is not None] == [0, 2]
    assert reasons[1].startswith("unreadable (corrupt or undecodable compressed frame")
    assert reasons[3] == "unreadable (linked data file bad_data_000002.h5 not found)"
    assert reasons[4].startswith("truncated (HDF5") and "bad_data_000003.h5" in reasons[4]
    with pytest.raises(UnreadableImageError) as info:
        with open_frames(master) as source:
            source.read(1)
    assert str(info.value).startswith(f"{master}#1: unreadable")


def test_truncated_and_corrupt_hdf5_files_are_named(tmp_path):
    write_eiger_series(tmp_path, "x", eiger_frames(2), per_file=2)
    data = (tmp_path / "x_data_000001.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 3])
    (tmp_path / "corrupt.h5").write_bytes(data[:8] + bytes(RNG.integers(0, 256, 4000, dtype=np.uint8)))
    for name, reason in (("truncated.h5", "truncated"), ("corrupt.h5", "unreadable")):
        [(number, counts, got)] = frames_of(tmp_path / name)
        assert number is None and counts is None and got.startswith(reason), got
        with pytest.raises(UnreadableImageError, match=f"^{tmp_path / name}: {reason}"):
            read_detector_image(tmp_path / name)


def test_plain_hdf5_with_a_data_set_path_nexus_default_and_ambiguity(tmp_path):
    stack = RNG.uniform(0, 100, (4, 20, 24)).astype(np.float32)
    stack[2] = np.nan  # a frame of NaN
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["measurement/images"] = stack
        f["measurement/dark"] = np.ones((20, 24), np.float32)
    read = frames_of(tmp_path / "plain.h5", h5_path="/measurement/images")
    assert [n for n, _, _ in read] == [0, 1, 2, 3]
    assert read[2][2].startswith("all NaN") and read[3][2] is None
    np.testing.assert_array_equal(read[3][1], stack[3])
    np.testing.assert_array_equal(frames_of(tmp_path / "plain.h5", h5_path="/measurement/dark")[0][1],
                                  np.ones((20, 24), np.float32))
    [(_, _, reason)] = frames_of(tmp_path / "plain.h5")
    assert "several image data sets: /measurement/dark, /measurement/images" in reason and "--h5-path" in reason
    [(_, _, reason)] = frames_of(tmp_path / "plain.h5", h5_path="/nope")
    assert reason.startswith("not an image (no data set '/nope'")

    with h5py.File(tmp_path / "nexus.nxs", "w") as f:  # NeXus: root → entry → NXdata → signal
        f.attrs["default"] = "scan"
        f["scan/plot/counts"] = stack[:2]
        f["scan/plot/other"] = stack[:2]
        f["scan"].attrs["default"] = "plot"
        f["scan/plot"].attrs["signal"] = "counts"
    assert [n for n, c, _ in frames_of(tmp_path / "nexus.nxs")] == [0, 1]
    one = tmp_path / "one.h5"
    with h5py.File(one, "w") as f:
        f["entry/data/data"] = stack[3]
    np.testing.assert_array_equal(read_detector_image(one), stack[3])
    with pytest.raises(UnreadableImageError, match="multi-frame \\(2 frames in one HDF5"):
        read_detector_image(tmp_path / "nexus.nxs")


# --------------------------------------------------------------------------- stacks of other formats
def test_multi_frame_edf_tiff_and_npy_give_one_frame_each_in_order(tmp_path):
    stack = RNG.integers(0, 500, (3, 20, 30)).astype(np.float32)
    edf = EdfImage(data=stack[0], header={"Center_1": "12.5", "Center_2": "7", "WaveLength": "1.2e-10",
                                          "SampleDistance": "3.1"})
    edf.append_frame(data=stack[1])
    masked = stack[2].copy()
    masked[0, :5] = -7  # this frame's Dummy
    edf.append_frame(data=masked, header={"Dummy": "-7", "DDummy": "0.1"})
    edf.write(str(tmp_path / "series.edf"))
    tifffile.imwrite(tmp_path / "series.tif", stack.astype(np.int32), photometric="minisblack")
    np.save(tmp_path / "series.npy", stack)

    for name in ("series.edf", "series.tif", "series.npy"):
        read = frames_of(tmp_path / name)
        assert [n for n, _, _ in read] == [0, 1, 2], name
        np.testing.assert_array_equal(read[1][1], stack[1], err_msg=name)
    edf_frames = frames_of(tmp_path / "series.edf")
    assert np.isnan(edf_frames[2][1][0, :5]).all() and not np.isnan(edf_frames[2][1][1]).any()
    with open_frames(tmp_path / "series.edf") as source:
        assert source.header == pytest.approx({"beam_x": 12.5, "beam_y": 7.0, "wavelength_angstrom": 1.2,
                                               "distance_m": 3.1})


def test_a_truncated_last_frame_and_a_nan_frame_are_named_the_others_read(tmp_path):
    stack = RNG.integers(1, 500, (3, 32, 32)).astype(np.float32)
    edf = EdfImage(data=stack[0])
    for frame in stack[1:]:
        edf.append_frame(data=frame)
    edf.write(str(tmp_path / "cut.edf"))
    data = (tmp_path / "cut.edf").read_bytes()
    (tmp_path / "cut.edf").write_bytes(data[: len(data) - 2000])
    read = frames_of(tmp_path / "cut.edf")
    assert [r is None for _, _, r in read] == [True, True, False] and read[2][2].startswith("truncated")

    stack[1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack, photometric="minisblack")
    read = frames_of(tmp_path / "nan.tif")
    assert [r for _, _, r in read][1].startswith("all NaN") and read[0][2] is None and read[2][2] is None


def test_headers_from_cbf_and_tiff_mini_headers(tmp_path):
    counts = expected_counts(np.full((20, 20), 3, np.int32))
    mini = "# Detector: PILATUS 1M\r\n# Wavelength 1.0332 A\r\n# Detector_distance 0.25000 m\r\n" \
           "# Beam_xy (487.00, 619.50) pixels\r\n"
    CbfImage(data=np.full((20, 20), 3, np.int32), header={"_array_data.header_convention": "PILATUS_1.2",
                                                          "_array_data.header_contents": mini}).write(
        str(tmp_path / "p.cbf"))
    tifffile.imwrite(tmp_path / "p.tif", np.full((20, 20), 3, np.int32), description=mini)
    for name in ("p.cbf", "p.tif"):
        with open_frames(tmp_path / name) as source:
            assert source.header == pytest.approx({"beam_x": 487.0, "beam_y": 619.5, "wavelength_angstrom": 1.0332,
                                                   "distance_m": 0.25}), name
            np.testing.assert_array_equal(source.read(0), counts)
