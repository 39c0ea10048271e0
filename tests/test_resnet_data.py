"""The ResNet's tf.data pipelines over the smoke data set: order, shapes, per-replica batches, sharding,
augmentation that moves the beam centre with the image, gaps, and the inputs the SavedModel rebuilds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import paper_network, tiny_resnet_config
from xrayscatter.config import replace
from xrayscatter.dataset import read_manifest, shard_paths, split_size
from xrayscatter.errors import XrayscatterError
from xrayscatter.normalization import model_input, to_model_input
from xrayscatter.resnet.data import (BEAM_OFF, augment, beam_in_square, inputs_from_counts, labels_of_crop,
                                     make_dataset, make_label_dataset, shard_records)
from xrayscatter.schema import parse_example_numpy, serialize_example

FLOAT16 = 2e-3  # the cache of the beam-region configuration holds float16 images (values in [0, 1])


def _records(config, split: str) -> list[dict]:
    return [parse_example_numpy(r.numpy()) for p in shard_paths(config, split) for r in tf.data.TFRecordDataset(p)]


def _beam_fraction(record: dict) -> np.ndarray:
    """The record's beam centre as a fraction of its centred padded square's side, by hand."""
    height, width = record["image"].shape
    side = max(height, width)
    return (record["beam"] + np.array([(side - width) // 2, (side - height) // 2])) / side


def _off_image(fractions: np.ndarray) -> np.ndarray:
    return ~np.all((fractions >= 0) & (fractions <= 1), axis=-1)


def test_evaluation_pipeline_of_the_papers_network_reads_every_image_once_in_file_order(smoke_dataset):
    config = paper_network(smoke_dataset)
    expected = _records(config, "val")
    assert split_size(config, "val") == len(expected) == read_manifest(config)["splits"]["val"]["num_images"]

    batches = list(make_dataset(config, "val", training=False))
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    size = config.resnet.input_size
    assert images.shape == (len(expected), size, size, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, np.stack([e["labels"] for e in expected]))
    # Gaps shown missing are the 0 counts the records store: the first models' input, exactly.
    for i in (0, len(expected) - 1):
        np.testing.assert_allclose(images[i], to_model_input(expected[i]["image"][None], size)[0].numpy(), atol=1e-6)
    labels_only = np.stack([y.numpy() for y in make_label_dataset(config, "val")])
    np.testing.assert_array_equal(labels_only, labels)


def test_evaluation_inputs_are_what_the_saved_model_makes_of_the_raw_counts_with_gaps_missing(smoke_dataset):
    # Three channels, beam-centre head, beam-region branch from the 64-px images; the image at half that.
    config = replace(smoke_dataset, "resnet", input_size=32)
    settings = config.resnet
    expected = _records(config, "val")
    assert any(e["mask"].min() == 0 for e in expected)  # module gaps to show as missing

    batches = list(make_dataset(config, "val", training=False))
    inputs = {k: np.concatenate([x[k].numpy() for x, _ in batches]) for k in ("image", "detail", "centre")}
    targets = {k: np.concatenate([y[k].numpy() for _, y in batches]) for k in ("attributes", "beam")}
    size, detail, channels = settings.input_size, settings.detail_size, len(settings.input_channels)
    assert inputs["image"].shape == (len(expected), size, size, channels) and inputs["image"].dtype == np.float32
    assert inputs["detail"].shape == (len(expected), detail, detail, channels)
    assert np.isnan(inputs["centre"]).all()  # evaluation: the network's own estimate
    np.testing.assert_array_equal(targets["attributes"], np.stack([e["labels"] for e in expected]))
    np.testing.assert_allclose(targets["beam"], np.stack([_beam_fraction(e) for e in expected]), rtol=1e-6)

    for i, record in enumerate(expected):
        counts = np.where(record["mask"] > 0.5, record["image"], -1.0)[None]  # gaps missing, as Pilatus marks them
        served = inputs_from_counts(tf.constant(counts), settings)
        assert set(served) == {"image", "detail", "centre"}
        for key in ("image", "detail"):
            np.testing.assert_allclose(inputs[key][i], served[key][0].numpy(), atol=FLOAT16, err_msg=f"{i} {key}")
        # Both sizes are made from the counts (the image is not a resize of the detail).
        np.testing.assert_allclose(inputs["image"][i], model_input(counts, size, settings.input_channels)[0].numpy(),
                                   atol=FLOAT16)


def test_the_image_fills_gaps_at_its_own_scale_with_the_beam_region_branch():
    """The image and the detail are both made from the counts: a gap that the detail (at the frame's own
    size) cannot fill is filled in the half-size image, as without the branch."""
    settings = tiny_resnet_config(input_size=32).resnet  # detail 64 px
    assert settings.detail_size == 64 and settings.input_channels[0] == "filled"
    counts = np.full((1, 64, 64), 1000.0, np.float32)
    counts[0, :, 31] = -1.0
    inputs = inputs_from_counts(tf.constant(counts), settings)
    image, detail = inputs["image"].numpy()[0], inputs["detail"].numpy()[0]
    level = float(model_input(tf.ones((1, 1, 1)) * 1000.0, 1, ("log",))[0, 0, 0, 0])
    assert detail[:, 31, 0].max() == 0.0  # at full size nothing fills a gap
    np.testing.assert_allclose(image[..., 0], level, rtol=1e-5)  # filled
    assert image[:, 15, 2].max() < 0.95  # and the valid channel still shows it
    without_branch = dataclasses.replace(settings, detail_size=0)
    np.testing.assert_allclose(image, inputs_from_counts(tf.constant(counts), without_branch)["image"].numpy()[0],
                               atol=1e-6)


def test_training_pipeline_batches_per_replica_repeats_and_stays_in_range(smoke_dataset):
    config = smoke_dataset
    settings = config.resnet
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    per_replica = settings.batch_size // 2
    train_images = split_size(config, "train")
    steps = 2 * train_images // per_replica  # two passes: the dataset must repeat
    channels = len(settings.input_channels)
    count = 0
    for inputs, targets in make_dataset(config, "train", training=True, input_context=context).take(steps):
        assert inputs["image"].shape == (per_replica, settings.input_size, settings.input_size, channels)
        assert inputs["detail"].shape == (per_replica, settings.detail_size, settings.detail_size, channels)
        assert inputs["centre"].shape == (per_replica, 2)
        assert targets["attributes"].shape == (per_replica, 17) and targets["beam"].shape == (per_replica, 2)
        for key in ("image", "detail"):
            assert 0.0 <= float(tf.reduce_min(inputs[key])) and float(tf.reduce_max(inputs[key])) <= 1.5
        count += 1
    assert count == steps

    paper = paper_network(config)
    for images, labels in make_dataset(paper, "train", training=True, input_context=context).take(2):
        assert images.shape == (per_replica, settings.input_size, settings.input_size, 1)
        assert labels.shape == (per_replica, 17)


def test_training_shows_gaps_missing_or_as_zero_counts(smoke_dataset):
    config = dataclasses.replace(smoke_dataset, resnet=dataclasses.replace(
        paper_network(smoke_dataset).resnet, input_channels=("valid",), augment=False, cache=False))
    records = _records(config, "train")
    assert {max(r["image"].shape) for r in records} == {config.resnet.input_size}  # no resizing: pixels counted exactly
    padding = {config.resnet.input_size ** 2 - r["image"].size for r in records}
    with_gaps = {config.resnet.input_size ** 2 - r["image"].size + int((r["mask"] == 0).sum()) for r in records}
    assert not padding & with_gaps  # each image's unmeasured pixels say how its gaps were shown

    def unmeasured_pixels(fraction: float) -> list[int]:
        settings = dataclasses.replace(config.resnet, gaps_missing_fraction=fraction)
        dataset = make_dataset(dataclasses.replace(config, resnet=settings), "train", training=True)
        return [int(n) for images, _ in dataset.take(2 * len(records) // settings.batch_size)
                for n in (images.numpy() < 0.5).reshape(len(images), -1).sum(axis=1)]

    assert set(unmeasured_pixels(0.0)) <= padding  # gaps as 0 counts: measured pixels
    assert set(unmeasured_pixels(1.0)) <= with_gaps  # gaps missing (as evaluation shows them)
    both = unmeasured_pixels(0.5)
    assert set(both) <= padding | with_gaps and set(both) & padding and set(both) & with_gaps


def _spot_records(path, count: int = 24, side: int = 32, seed: int = 0, beam_off_index: int = 0) -> None:
    """A shard of dark frames with a bright 2 × 2 spot centred on the beam; every third beam is off the frame
    (label ``beam_off_index`` says which)."""
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            counts = rng.poisson(10.0, (side, side)).astype(np.float32)
            off = i % 3 == 0
            x, y = (float(rng.integers(2, side - 2)), float(rng.integers(2, side - 2)))
            if off:
                x = -6.0
            else:
                counts[int(y) - 1:int(y) + 1, int(x) - 1:int(x) + 1] = 60000.0
            labels = [0] * 17
            labels[beam_off_index] = int(off)
            writer.write(serialize_example(counts, labels, i, i, {}, mask=np.ones((side, side), bool), beam_xy=(x, y)))


@pytest.mark.parametrize("refine", [False, True])
def test_training_moves_the_beam_target_with_the_image_and_gives_no_centre_off_the_image(smoke_config, tmp_path,
                                                                                        refine):
    # With beam_refine the backbone's target (beam_coarse) is in the crop's frame and the refined one (beam) in
    # the detail's, which the translation crop does not move.
    config = replace(smoke_config, "resnet", input_size=32, detail_size=32, detail_crop=16, input_channels=("log",),
                     batch_size=8, shuffle_buffer=8, augment_crop=True, beam_refine=refine)
    path = tmp_path / "spots.tfrecord"
    _spot_records(path)
    seen = {"on": 0, "off": 0, "spot in crop": 0}
    for inputs, targets in make_dataset(config, "train", training=True, paths=[str(path)]).take(12):
        assert set(targets) == ({"attributes", "beam", "beam_coarse"} if refine else {"attributes", "beam"})
        coarse = targets["beam_coarse" if refine else "beam"].numpy()
        for image, detail, centre, off, beam, fine in zip(inputs["image"].numpy(), inputs["detail"].numpy(),
                                                          inputs["centre"].numpy(), targets["attributes"].numpy()[:, 0],
                                                          coarse, targets["beam"].numpy()):
            if off:  # the branch looks where the network's own estimate says; no beam error to learn from
                assert np.isnan(centre).all() and _off_image(beam[None])[0] and _off_image(fine[None])[0]
                seen["off"] += 1
                continue
            seen["on"] += 1
            # The centre given to the branch: the true one in the detail's frame (jittered by σ = 0.03).
            spot = np.argwhere(detail[..., 0] > 0.8).mean(axis=0)[::-1] + 0.5  # (x, y) px
            assert np.abs(centre * 32 - spot).max() < 0.03 * 5 * 32
            if refine:  # the refined target: the spot in the detail, exactly
                assert np.abs(fine * 32 - spot).max() <= 1.0
            # The beam target: the spot's place in the crop, wherever the crop, flip and turn put it.
            if not _off_image(beam[None])[0] and (image[..., 0] > 0.5).any():
                bright = np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])[::-1]
                assert np.abs(beam * 32 - (np.array(bright) + 0.5)).max() <= 1.5
                seen["spot in crop"] += 1
    assert seen["off"] > 10 and seen["on"] > 40 and seen["spot in crop"] > 30


def test_a_crop_that_cuts_the_beam_centre_off_is_labelled_beam_off():
    labels = tf.constant(np.eye(17, dtype=np.float32)[2] + np.eye(17, dtype=np.float32)[12])  # beamstop, ring
    off = np.eye(17, dtype=np.float32)[BEAM_OFF]
    for crop_beam, expected in (([0.5, 0.5], labels.numpy()), ([0.0, 1.0], labels.numpy()),
                                ([-0.01, 0.5], labels.numpy() + off), ([0.3, 1.2], labels.numpy() + off),
                                ([np.nan, np.nan], labels.numpy())):
        np.testing.assert_array_equal(labels_of_crop(labels, tf.constant(crop_beam, tf.float32)).numpy(), expected)
    already_off = tf.constant(off)
    np.testing.assert_array_equal(labels_of_crop(already_off, tf.constant([2.0, 0.5])).numpy(), off)


def _beam_labels_seen(config, path) -> list[tuple[bool, bool, np.ndarray, np.ndarray | None]]:
    """(beam off the network's image?, labelled beam off?, image beam target, detail's given centre) per example."""
    seen = []
    for inputs, targets in make_dataset(config, "train", training=True, paths=[str(path)]).take(12):
        centres = inputs["centre"].numpy() if "centre" in inputs else [None] * len(targets["beam"])
        for labels, beam, centre in zip(targets["attributes"].numpy(), targets["beam"].numpy(), centres):
            seen.append((bool(_off_image(beam[None])[0]), bool(labels[BEAM_OFF]), beam, centre))
    return seen


def test_training_labels_what_the_network_sees_with_and_without_crops(smoke_config, tmp_path):
    path = tmp_path / "spots.tfrecord"
    _spot_records(path, beam_off_index=BEAM_OFF)
    base = replace(smoke_config, "resnet", input_size=32, detail_crop=16, input_channels=("log",), batch_size=8,
                   shuffle_buffer=8)
    # The image alone, cropped: "Beam Off Image" says whether the crop holds the beam centre.
    seen = _beam_labels_seen(replace(base, "resnet", detail_size=0), path)
    assert all(off == labelled for off, labelled, _, _ in seen)
    assert 0 < sum(off for off, *_ in seen) < len(seen)
    # With the beam-region branch and augment_crop = false: one field for both views (the image's beam target
    # is the detail's), the whole image's label, and a centre given exactly where the beam is on the image.
    seen = _beam_labels_seen(replace(base, "resnet", detail_size=32, augment_crop=False), path)
    assert all(off == labelled for off, labelled, _, _ in seen)
    assert 0 < sum(off for off, *_ in seen) < len(seen)
    for off, _, beam, centre in seen:
        assert np.isnan(centre).all() if off else np.abs(centre - beam).max() < 0.03 * 6


def test_workers_read_disjoint_shards_that_cover_the_split(smoke_dataset):
    paths = shard_paths(smoke_dataset, "train")
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        seen.append({parse_example_numpy(r.numpy())["image_id"] for r in shard_records(paths, False, context)})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == split_size(smoke_dataset, "train")


def test_augmentation_is_one_of_the_eight_symmetries_of_the_square():
    image = tf.constant(np.arange(25, dtype=np.float32).reshape(5, 5, 1))
    symmetries = [np.rot90(m, k) for m in (image.numpy()[:, :, 0], image.numpy()[:, ::-1, 0]) for k in range(4)]
    beam = tf.constant([0.5, 0.5])
    outputs = {augment(image, beam, 5)[0].numpy()[:, :, 0].tobytes() for _ in range(64)}
    assert outputs <= {s.astype(np.float32).tobytes() for s in symmetries}
    assert len(outputs) > 1  # it is random
    crop, crop_beam = augment(tf.zeros((9, 9, 3)), beam, 5)
    assert crop.shape == (5, 5, 3) and crop_beam.shape == (2,)


def _bright_pixel(side: int, row: int, column: int, channels: int = 2) -> tf.Tensor:
    image = np.zeros((side, side, channels), np.float32)
    image[row, column] = [1.0, 0.5][:channels]
    return tf.constant(image)


def _pixel_at(beam: np.ndarray, side: int) -> tuple[int, int] | None:
    """(row, column) of the pixel whose centre the beam fraction points at, or None off the image."""
    column, row = beam * side - 0.5
    assert abs(column - round(column)) < 1e-4 and abs(row - round(row)) < 1e-4  # on a pixel centre
    column, row = int(round(column)), int(round(row))
    return (row, column) if 0 <= row < side and 0 <= column < side else None


@pytest.mark.parametrize("row, column", [(3, 9), (0, 0), (11, 6), (7, 4)])
def test_augmentation_moves_the_beam_centre_with_the_image(row, column):
    load, size, detail_side = 12, 8, 24
    image = _bright_pixel(load, row, column)
    beam = tf.constant([(column + 0.5) / load, (row + 0.5) / load])
    # The detail: the same scene at twice the resolution, the beam on the corner shared by four pixels ...
    detail = np.zeros((detail_side, detail_side, 2), np.float32)
    detail[2 * row:2 * row + 2, 2 * column:2 * column + 2] = [1.0, 0.5]
    seen_in, seen_out, placements = 0, 0, set()
    for _ in range(300):
        crop, crop_beam, out_detail, detail_beam = (t.numpy() for t in augment(image, beam, size, tf.constant(detail)))
        assert crop.shape == (size, size, 2) and out_detail.shape == (detail_side, detail_side, 2)
        found = np.argwhere(crop[..., 0] == 1.0)
        expected = _pixel_at(crop_beam, size)
        if expected is None:  # cropped away: the beam target points off the crop
            assert len(found) == 0
            seen_out += 1
        else:
            assert [tuple(f) for f in found] == [expected]
            assert crop[expected][1] == 0.5  # every channel moves alike
            seen_in += 1
        # ... which is not cropped but turned and flipped alike: the beam stays on the block's centre.
        block = np.argwhere(out_detail[..., 0] == 1.0)
        np.testing.assert_allclose(detail_beam * detail_side, block.mean(axis=0)[::-1] + 0.5, atol=1e-4)
        placements.add((tuple(np.round(crop_beam, 4)), tuple(np.round(detail_beam, 4))))
    # Random crops and symmetries; a corner pixel is kept by one crop in 25 only.
    assert len(placements) > 8 and seen_in > (2 if (row, column) == (0, 0) else 30)
    if (row, column) == (0, 0):
        assert seen_out > 200


def test_augmentation_without_detail_and_the_same_symmetry_for_image_and_detail():
    image = _bright_pixel(8, 1, 5, channels=1)
    beam = tf.constant([5.5 / 8, 1.5 / 8])
    outcomes = set()
    for _ in range(64):
        crop, crop_beam = (t.numpy() for t in augment(image, beam, 8))  # crop = whole image: only the symmetry
        assert [tuple(f) for f in np.argwhere(crop[..., 0] == 1.0)] == [_pixel_at(crop_beam, 8)]
        outcomes.add(tuple(np.round(crop_beam, 4)))
        # An asymmetric detail of the image's size gets exactly the image's flip and turn.
        pattern = tf.constant(np.arange(64, dtype=np.float32).reshape(8, 8, 1))
        crop, crop_beam, detail, detail_beam = (t.numpy() for t in augment(pattern, beam, 8, pattern))
        np.testing.assert_array_equal(crop, detail)
        np.testing.assert_allclose(crop_beam, detail_beam, atol=1e-6)
    assert len(outcomes) == 8  # all eight symmetries, each putting the beam elsewhere


def test_beam_in_square_follows_the_centred_padding():
    # 40 rows × 64 columns: padded with 12 rows above; (x, y) px → fractions of 64.
    fractions = beam_in_square(tf.constant([10.0, 5.0]), tf.constant(40), tf.constant(64)).numpy()
    np.testing.assert_allclose(fractions, [10 / 64, 17 / 64])
    fractions = beam_in_square(tf.constant([-3.0, 20.0]), tf.constant(64), tf.constant(40)).numpy()
    np.testing.assert_allclose(fractions, [9 / 64, 20 / 64])  # 12 columns on the left; off-image stays off
    assert np.isnan(beam_in_square(tf.constant([np.nan, np.nan]), tf.constant(8), tf.constant(8)).numpy()).all()


def test_missing_split_is_a_clear_error(smoke_config, tmp_path):
    config = dataclasses.replace(smoke_config, simulate=dataclasses.replace(smoke_config.simulate,
                                                                           output_dir=str(tmp_path)))
    with pytest.raises(XrayscatterError, match="simulate run"):
        make_dataset(config, "train", training=True)
