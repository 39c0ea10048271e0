"""The distribution strategy: which cluster this process is part of, its role, and what replicas share.

    TF_CONFIG set                          → TFConfigClusterResolver (any launcher: shell, Kubernetes)
    srun with ≥ 2 tasks (SLURM_STEP_NUM_TASKS)
      and no TF_CONFIG                     → SlurmClusterResolver (task i of the step is worker i)
    otherwise                              → None: one host, MirroredStrategy over its devices

Both resolvers are TensorFlow's own. Under Slurm the worker ports are
``XRAYSCATTER_PORT`` (default 12345) + the task's rank on its node, so several tasks may
share a node. ``XRAYSCATTER_CLUSTER=local`` turns the detection off (e.g. several
independent trainings launched by one ``srun``).

:func:`make_strategy` turns that into a strategy: MultiWorkerMirroredStrategy in a cluster, else
MirroredStrategy over the host's GPUs (or logical CPUs). Also here: the process's role
(:func:`is_chief`, :func:`task_of`, :func:`num_workers`), the batch-norm statistics sync both training
routes run (:func:`make_statistics_sync`) and each input pipeline's share of a file list
(:func:`share_of_files`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from xrayscatter.errors import XrayscatterError

DEFAULT_PORT = 12345


def cluster_kind(environ: Mapping[str, str] | None = None) -> str:
    """"tf_config", "slurm" or "local" for the environment (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    forced = env.get("XRAYSCATTER_CLUSTER", "").strip().lower()
    if forced not in ("", "auto", "local", "tf_config", "slurm"):
        raise XrayscatterError(f"XRAYSCATTER_CLUSTER={forced!r}: expected auto, local, tf_config or slurm")
    if forced and forced != "auto":
        return forced
    if env.get("TF_CONFIG"):
        return "tf_config"
    try:
        slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        slurm_tasks = 1
    if slurm_tasks > 1 and "SLURM_PROCID" in env:
        return "slurm"
    return "local"


def slurm_resolver(environ: Mapping[str, str] | None = None):
    """TensorFlow's SlurmClusterResolver for this job step, with the GPUs left to Slurm.

    TensorFlow's resolver would also hand out GPUs by rewriting CUDA_VISIBLE_DEVICES, which
    fails on CPU-only nodes (zero GPUs per task) and fights Slurm's own binding (``--gres``,
    ``--gpus-per-task``). Here it only maps tasks to addresses, and each task uses the GPUs
    Slurm made visible to it: MultiWorkerMirroredStrategy asks the resolver how many
    local devices to mirror over, and gets the number of visible GPUs (0 → the CPU).
    """
    import tensorflow as tf

    class VisibleDevicesSlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
        def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
            del task_type, task_id, config_proto
            return {"GPU": len(tf.config.list_physical_devices("GPU"))}

    env = os.environ if environ is None else environ
    try:
        port = int(env.get("XRAYSCATTER_PORT", DEFAULT_PORT))
    except ValueError:
        raise XrayscatterError(f"XRAYSCATTER_PORT={env['XRAYSCATTER_PORT']!r} is not a port number") from None
    try:
        tasks = int(env["SLURM_STEP_NUM_TASKS"])
        # One notional device slot per task keeps the resolver's GPU bookkeeping out of the way.
        return VisibleDevicesSlurmResolver(port_base=port, gpus_per_node=tasks, gpus_per_task=1,
                                           auto_set_gpu=False)
    except (RuntimeError, KeyError, ValueError) as e:
        raise XrayscatterError(f"cannot read the Slurm job step from the environment ({e})") from None


def cluster_resolver(environ: Mapping[str, str] | None = None):
    """The cluster resolver for MultiWorkerMirroredStrategy, or None on a single host."""
    import tensorflow as tf

    kind = cluster_kind(environ)
    if kind == "tf_config":
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if kind == "slurm":
        return slurm_resolver(environ)
    return None


# --------------------------------------------------------------------------- strategy and roles
def make_strategy():
    """MultiWorkerMirroredStrategy in a cluster (:func:`cluster_kind` ≠ "local"), else MirroredStrategy
    over all GPUs or all logical CPUs."""
    import tensorflow as tf

    resolver = cluster_resolver()
    if resolver is not None:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def is_multi_worker(strategy) -> bool:
    """True under MultiWorkerMirroredStrategy (where Keras 3 ``fit`` fails, keras#20585)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task_of(strategy) -> tuple[str, int]:
    """(task type, task id) of this process in the cluster; ("local", 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local", 0
    return str(resolver.task_type), int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """True for the one process that writes logs, reports and SavedModels."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def num_workers(strategy) -> int:
    """Processes taking part in training (chief and workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))


# --------------------------------------------------------------------------- what replicas share
def make_statistics_sync(strategy, model):
    """A tf.function averaging the non-trainable weights (batch-norm statistics) over all replicas, or None.

    Keras 3 creates them with aggregation "none": under a mirrored strategy each replica updates its
    own copy from its own per-replica batches and the copies drift apart (the trainable weights are
    all-reduced and stay equal). The update is linear, m ← μ·m + (1 − μ)·s, so the mean of the copies
    is exactly what averaging every step would give; both training routes call it before every
    backup, validation and export.
    """
    import tensorflow as tf

    variables = [w.value for w in model.non_trainable_weights]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return None

    def replica_fn():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    return tf.function(lambda: strategy.run(replica_fn))


def share_of_files(files: list, context, read: Callable):
    """This input pipeline's share of a file stream (multi-worker training), or all of it.

    Args:
        files: the sorted file list (shards or detector images).
        context: ``tf.distribute.InputContext`` or None (a single pipeline reads everything).
        read: files → ``tf.data.Dataset``.

    With at least as many files as input pipelines each pipeline reads its own files (the FILE
    auto-shard policy: no file is decoded twice); with fewer, every pipeline reads all of them and
    keeps every n-th element.
    """
    pipelines = context.num_input_pipelines if context is not None else 1
    if pipelines <= 1:
        return read(list(files))
    if len(files) >= pipelines:
        return read(list(files)[context.input_pipeline_id::pipelines])
    return read(list(files)).shard(pipelines, context.input_pipeline_id)
