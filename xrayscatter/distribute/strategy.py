"""Which cluster this process is part of: TF_CONFIG, a Slurm job step, or none.

    TF_CONFIG set                          → TFConfigClusterResolver (any launcher: shell, Kubernetes)
    srun with ≥ 2 tasks (SLURM_STEP_NUM_TASKS)
      and no TF_CONFIG                     → SlurmClusterResolver (task i of the step is worker i)
    otherwise                              → None: one host, MirroredStrategy over its devices

Both resolvers are TensorFlow's own. Under Slurm the worker ports are
``XRAYSCATTER_PORT`` (default 12345) + the task's rank on its node, so several tasks may
share a node. ``XRAYSCATTER_CLUSTER=local`` turns the detection off (e.g. several
independent trainings launched by one ``srun``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
