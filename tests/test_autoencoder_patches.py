"""Patches for the autoencoder: cut from the resized image, reproducible, new every epoch; held-out files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from xrayscatter.autoencoder.patches import (PatchSource, patch_dataset, patches_per_scale, random_patches,
                                             split_heldout, tfrecord_images)
from xrayscatter.dataset import shard_paths, split_size
from xrayscatter.normalization import to_model_input


def test_random_patches_are_cut_from_the_resized_image():
    counts = np.random.default_rng(1).integers(0, 60000, (50, 70)).astype(np.float32)
    patches = random_patches(tf.constant(counts), tf.constant([4, 2], tf.int64), (48, 64), 7, 32).numpy()
    assert patches.shape == (7, 32, 32) and patches_per_scale(7, 2) == [4, 3]
    for patch, size in zip(patches, [48] * 4 + [64] * 3):
        image = to_model_input(tf.constant(counts[None]), size).numpy()[0, :, :, 0]
        windows = np.lib.stride_tricks.sliding_window_view(image, (32, 32))
        assert np.isclose(windows, patch, atol=0).all(axis=(2, 3)).any()


def test_patch_stream_is_reproducible_and_changes_every_epoch(smoke_dataset):
    ae = smoke_dataset.autoencoder
    files = shard_paths(smoke_dataset, "val")

    def first_batches(training: bool, count: int):
        ds = patch_dataset(tfrecord_images(files), ae, seed=5, batch_size=ae.patches_per_image, training=training)
        return [x.numpy() for x, _ in ds.take(count)]

    heldout_a, heldout_b = first_batches(False, 2), first_batches(False, 2)
    np.testing.assert_array_equal(heldout_a[0], heldout_b[0])
    assert heldout_a[0].shape == (ae.patches_per_image, 32, 32)
    # training stream: image n of the repeated stream gets seed (5, n), so a second pass cuts new patches
    n_val = split_size(smoke_dataset, "val")
    stream = first_batches(True, 2 * n_val)
    first_pass = np.concatenate(stream[:n_val])
    second_pass = np.concatenate(stream[n_val:])
    assert not np.array_equal(np.sort(first_pass.ravel()), np.sort(second_pass.ravel()))


def test_every_kth_file_is_held_out():
    files = [Path(f"f{i:02d}.tif") for i in range(20)]
    train, heldout = split_heldout(files, 0.1)
    assert heldout == [files[9], files[19]] and len(train) == 18
    assert split_heldout(files[:1], 0.1) == (files[:1], [])


def test_simulated_source_trains_on_the_train_split_and_holds_out_val(smoke_dataset):
    source = PatchSource.from_tfrecords(smoke_dataset)
    assert source.num_train_images == split_size(smoke_dataset, "train")
    assert "held out: val split" in source.description
    heldout = [image.shape for image in source.heldout_images().as_numpy_iterator()]
    assert len(heldout) == split_size(smoke_dataset, "val")
    context = tf.distribute.InputContext(2, 1, 2)  # the second of two input pipelines reads its share only
    share = sum(1 for _ in source.train_images(context))
    assert 0 < share < source.num_train_images
