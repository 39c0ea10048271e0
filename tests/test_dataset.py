"""The data set on disk: shards listed by the manifest, split sizes from the record frames, bad shards named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import tensorflow as tf

from helpers import copy_dataset
from xrayscatter.dataset import (MANIFEST, SPLITS, count_records, dataset_dir, naming_bad_shards, read_manifest,
                                 read_records, shard_name, shard_paths, split_size)
from xrayscatter.errors import XrayscatterError
from xrayscatter.resnet.data import make_dataset


def test_shards_are_the_manifests_in_order_and_split_sizes_count_their_records(smoke_dataset):
    manifest = read_manifest(smoke_dataset)
    assert manifest == json.loads((dataset_dir(smoke_dataset) / MANIFEST).read_text())
    for split in SPLITS:
        paths = shard_paths(smoke_dataset, split)
        assert [Path(p).name for p in paths] == manifest["splits"][split]["files"]
        assert Path(paths[0]).name == shard_name("smoke", split, 0, len(paths))
        assert split_size(smoke_dataset, split) == manifest["splits"][split]["num_images"]
        assert split_size(smoke_dataset, split) == sum(1 for _ in read_records(paths))
    assert sum(split_size(smoke_dataset, s) for s in SPLITS) == smoke_dataset.simulate.num_images


def test_a_split_without_shards_has_size_zero_and_listing_it_is_an_error(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    manifest_path = dataset_dir(config) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["val"] = {"num_images": 0, "num_shards": 0, "files": []}
    manifest_path.write_text(json.dumps(manifest))
    assert split_size(config, "val") == 0 and shard_paths(config, "val", required=False) == []
    with pytest.raises(XrayscatterError, match="no 'val' shards"):
        shard_paths(config, "val")
    with pytest.raises(XrayscatterError, match="unknown split 'dev'"):
        shard_paths(config, "dev")


def test_a_listed_shard_that_is_missing_is_named(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    victim = Path(shard_paths(config, "test")[0])
    victim.unlink()
    with pytest.raises(XrayscatterError, match=f"missing: {victim.name}"):
        shard_paths(config, "test")


def test_missing_data_set_says_how_to_make_it(smoke_config, tmp_path):
    config = dataclasses.replace(smoke_config, simulate=dataclasses.replace(smoke_config.simulate,
                                                                           output_dir=str(tmp_path)))
    with pytest.raises(XrayscatterError, match="manifest.json missing.*simulate run.*simulate finalize"):
        shard_paths(config, "train")


def test_truncated_shard_is_named_by_its_record_frames(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    victim = Path(shard_paths(config, "train")[1])
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(XrayscatterError, match=f"{victim}: truncated"):
        count_records(str(victim))
    with pytest.raises(XrayscatterError, match=f"{victim}: truncated"):
        split_size(config, "train")


def test_corrupt_record_inside_a_shard_is_named_when_read(smoke_dataset, tmp_path):
    config = copy_dataset(smoke_dataset, tmp_path)
    paths = shard_paths(config, "train")
    victim = Path(paths[2])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flips bits inside a record: its CRC no longer matches
    victim.write_bytes(bytes(data))
    assert count_records(str(victim)) > 0  # the framing is intact: only reading finds it
    with pytest.raises(XrayscatterError, match=f"{victim}: corrupt or truncated TFRecord shard"):
        with naming_bad_shards(paths):
            for _ in make_dataset(config, "train", training=True).take(100):
                pass
    with pytest.raises(tf.errors.InvalidArgumentError):  # an error no shard explains is not renamed
        with naming_bad_shards(shard_paths(smoke_dataset, "train")):
            raise tf.errors.InvalidArgumentError(None, None, "a bug, not the data")
