"""The TFRecord schema: v2's mask and beam centre round trip; version 1 records (without them) still parse,
v3 records (the optional ``resized`` image, tests/test_benchmarks_input.py) mix with both."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.attributes import NUM_ATTRIBUTES
from xrayscatter.schema import (FEATURE_SPEC, SCHEMA_VERSION, encode_mask, encode_png_uint16, encode_resized,
                                parse_example, parse_example_numpy, serialize_example)

LABELS = [1, 0] * 8 + [1]


def _counts(height=6, width=9, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (height, width)).astype(np.float32)


def _version_1_record(counts: np.ndarray) -> bytes:
    """A record as schema version 1 wrote it: no ``mask``, no ``beam`` (built here, not by the library)."""
    def feature(**kind):
        return tf.train.Feature(**kind)

    ints = lambda values: feature(int64_list=tf.train.Int64List(value=values))  # noqa: E731
    raw = lambda value: feature(bytes_list=tf.train.BytesList(value=[value]))  # noqa: E731
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": raw(encode_png_uint16(counts)), "height": ints([counts.shape[0]]), "width": ints([counts.shape[1]]),
        "labels": ints(LABELS), "run_id": ints([3]), "image_id": ints([41]), "params": raw(b'{"a":1}')}))
    return example.SerializeToString()


def test_mask_and_beam_round_trip():
    assert SCHEMA_VERSION == 3 and {"mask", "beam", "resized"} <= set(FEATURE_SPEC)
    counts = _counts()
    mask = np.ones(counts.shape, bool)
    mask[:, 4] = False  # a module gap
    mask[0, 0] = False
    record = parse_example_numpy(serialize_example(counts, LABELS, 3, 41, {"a": 1}, mask=mask, beam_xy=(12.25, -3.5)))
    np.testing.assert_array_equal(record["image"], counts)
    assert record["mask"].dtype == np.float32 and record["mask"].shape == counts.shape
    np.testing.assert_array_equal(record["mask"], mask.astype(np.float32))
    assert record["beam"].dtype == np.float32
    np.testing.assert_array_equal(record["beam"], [12.25, -3.5])  # off the image is allowed
    assert record["labels"].tolist() == LABELS and record["params"] == {"a": 1}


def test_version_1_record_parses_with_every_pixel_sensitive_and_no_beam():
    counts = _counts(5, 7)
    record = parse_example_numpy(_version_1_record(counts))
    np.testing.assert_array_equal(record["image"], counts)
    np.testing.assert_array_equal(record["mask"], np.ones((5, 7), np.float32))
    assert record["beam"].shape == (2,) and np.isnan(record["beam"]).all()
    # The library writes the same record when given neither.
    assert parse_example_numpy(serialize_example(counts, LABELS, 3, 41, {"a": 1}))["mask"].min() == 1.0


def test_versions_mix_in_one_graph_pipeline():
    """``parse_example`` inside ``Dataset.map`` (graph mode) with v1, v2 and v3 records of different shapes."""
    v2_counts = _counts(4, 4, seed=1)
    mask = np.eye(4, dtype=bool)
    records = [_version_1_record(_counts(5, 7)),
               serialize_example(v2_counts, LABELS, 1, 2, {}, mask=mask, beam_xy=(1.5, 2.5)),
               serialize_example(_counts(8, 6, seed=2), LABELS, 1, 3, {}, beam_xy=(0.5, 0.5), resized_size=4)]
    parsed = list(tf.data.Dataset.from_tensor_slices(records).map(parse_example).as_numpy_iterator())
    assert parsed[0]["mask"].shape == (5, 7) and parsed[0]["mask"].min() == 1.0 and np.isnan(parsed[0]["beam"]).all()
    np.testing.assert_array_equal(parsed[1]["mask"], mask.astype(np.float32))
    np.testing.assert_array_equal(parsed[1]["beam"], [1.5, 2.5])
    assert parsed[0]["resized"] == parsed[1]["resized"] == b""  # v1, v2: none
    assert parsed[2]["image"].shape == (8, 6) and parsed[2]["resized"][:8] == b"\x89PNG\r\n\x1a\n"


def test_mask_must_match_the_image():
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        serialize_example(_counts(), LABELS, 0, 0, {}, mask=np.ones((9, 6), bool))
    with pytest.raises(ValueError, match=f"labels must have {NUM_ATTRIBUTES}"):
        serialize_example(_counts(), LABELS[:-1], 0, 0, {})


def test_a_runs_mask_encoded_once_gives_the_same_record():
    counts, mask = _counts(8, 6, seed=3), np.ones((8, 6), bool)
    mask[:, 2] = False
    plain = serialize_example(counts, LABELS, 1, 3, {"a": 1}, mask=mask, beam_xy=(1.0, 2.0))
    assert serialize_example(counts, LABELS, 1, 3, {"a": 1}, mask=mask, beam_xy=(1.0, 2.0),
                             mask_png=encode_mask(mask)) == plain


@pytest.mark.parametrize("shape, size", [((40, 40), 16), ((30, 40), 16), ((12, 10), 16)])
def test_resized_feature_is_the_normalised_channels_resized(shape, size):
    """The traced encoder stores what the eager normalisation functions give: log counts, the measured
    fraction with gaps missing and with gaps counted, padded square and resized (shrunk or grown)."""
    from xrayscatter.normalization import pad_to_square, resize_square, square_log_and_valid
    from xrayscatter.schema import RESIZED_SCALE

    counts = _counts(*shape, seed=4).astype(np.float32)
    mask = np.ones(shape, bool)
    mask[:, shape[1] // 3] = False
    stored = tf.io.decode_png(encode_resized(counts, mask, size), channels=3, dtype=tf.uint16).numpy()
    log_square, _ = square_log_and_valid(tf.constant(counts[None]))
    gaps_missing = pad_to_square(tf.constant(mask[None, :, :, None], tf.float32))
    gaps_counted = pad_to_square(tf.ones((1, *shape, 1)))
    expected = resize_square(tf.concat([log_square, gaps_missing, gaps_counted], axis=-1), size)[0]
    expected = np.round(np.clip(expected.numpy(), 0, 1) * np.array(RESIZED_SCALE))
    assert stored.shape == (size, size, 3)
    assert np.abs(stored.astype(float) - expected).max() <= 1  # a level of 2⁻¹⁶ at most (rounding ties)
