"""Cluster detection (TF_CONFIG, a Slurm step or none), the strategy's roles and each input pipeline's share."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from xrayscatter.distribute.strategy import cluster_kind, is_chief, make_strategy, num_workers, share_of_files, \
    slurm_resolver, task_of


@pytest.mark.parametrize("environ, kind", [
    ({}, "local"),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'}, "tf_config"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, "local"),  # one task: plain single-host training
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"}, "slurm"),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "XRAYSCATTER_CLUSTER": "local"}, "local"),
])
def test_cluster_kind_follows_the_environment(environ, kind):
    assert cluster_kind(environ) == kind


def test_slurm_resolver_gives_each_task_its_worker_address():
    environ = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[01-02]",
               "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "XRAYSCATTER_PORT": "2000", "CUDA_VISIBLE_DEVICES": ""}
    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)  # TensorFlow's resolver reads os.environ itself
    try:
        resolver = slurm_resolver(environ)
        spec = resolver.cluster_spec().as_dict()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert spec == {"worker": ["node01:2000", "node01:2001", "node02:2000", "node02:2001"]}
    assert resolver.get_task_info() == ("worker", 3)
    assert resolver.num_accelerators() == {"GPU": 0}  # what this CPU machine has: one CPU replica


def test_outside_a_cluster_the_strategy_mirrors_over_this_host_and_is_its_own_chief():
    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert is_chief(strategy) and task_of(strategy) == ("local", 0) and num_workers(strategy) == 1


@pytest.mark.parametrize("files, pipelines, expected", [
    (list("abcde"), 2, [["a", "c", "e"], ["b", "d"]]),  # each pipeline reads its own files
    (list("a"), 2, [["a"], ["a"]]),  # fewer files than pipelines: every pipeline reads all, keeps its share
])
def test_each_input_pipeline_reads_its_share_of_the_files(files, pipelines, expected):
    read_calls = []

    def read(names):
        read_calls.append(names)
        return tf.data.Dataset.from_tensor_slices([f"{n}{i}" for n in names for i in range(2)])

    shares = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, pipelines)
        shares.append([x.decode() for x in share_of_files(files, context, read).as_numpy_iterator()])
    assert read_calls == expected
    every = sorted(x for share in shares for x in share)
    assert every == sorted(f"{n}{i}" for n in files for i in range(2))  # together: each element once
    assert [x.decode() for x in share_of_files(files, None, read).as_numpy_iterator()] == every
