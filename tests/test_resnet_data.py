"""The ResNet's tf.data pipelines over the smoke data set: order, shapes, per-replica batches, sharding, augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from xrayscatter.dataset import read_manifest, shard_paths, split_size
from xrayscatter.errors import XrayscatterError
from xrayscatter.normalization import to_model_input
from xrayscatter.resnet.data import augment, make_dataset, make_label_dataset, shard_records
from xrayscatter.schema import parse_example_numpy


def test_evaluation_pipeline_reads_every_image_once_in_file_order(smoke_dataset):
    config = smoke_dataset
    expected = [parse_example_numpy(r.numpy()) for p in shard_paths(config, "val")
                for r in tf.data.TFRecordDataset(p)]
    assert split_size(config, "val") == len(expected) == read_manifest(config)["splits"]["val"]["num_images"]

    batches = list(make_dataset(config, "val", training=False))
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    size = config.resnet.input_size
    assert images.shape == (len(expected), size, size, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, np.stack([e["labels"] for e in expected]))
    np.testing.assert_allclose(images[0], to_model_input(expected[0]["image"][None], size)[0].numpy(), atol=1e-6)
    labels_only = np.stack([y.numpy() for y in make_label_dataset(config, "val")])
    np.testing.assert_array_equal(labels_only, labels)


def test_training_pipeline_batches_per_replica_repeats_and_stays_in_range(smoke_dataset):
    config = smoke_dataset
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    per_replica = config.resnet.batch_size // 2
    train_images = split_size(config, "train")
    steps = 2 * train_images // per_replica  # two passes: the dataset must repeat
    count = 0
    for images, labels in make_dataset(config, "train", training=True, input_context=context).take(steps):
        assert images.shape == (per_replica, config.resnet.input_size, config.resnet.input_size, 1)
        assert labels.shape == (per_replica, 17)
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.5
        count += 1
    assert count == steps


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
    outputs = {augment(image, 5).numpy()[:, :, 0].tobytes() for _ in range(64)}
    assert outputs <= {s.astype(np.float32).tobytes() for s in symmetries}
    assert len(outputs) > 1  # it is random
    assert augment(tf.zeros((9, 9, 1)), 5).shape == (5, 5, 1)


def test_missing_split_is_a_clear_error(smoke_config, tmp_path):
    config = dataclasses.replace(smoke_config, simulate=dataclasses.replace(smoke_config.simulate,
                                                                           output_dir=str(tmp_path)))
    with pytest.raises(XrayscatterError, match="simulate run"):
        make_dataset(config, "train", training=True)
