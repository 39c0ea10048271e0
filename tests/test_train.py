"""The one training entry, ``train(task, config)``: it picks the route, both routes share one backup and record.

* under ``TF_CONFIG`` with two local workers the library entry takes the custom loop and trains (the
  autoencoder: the route does not depend on the network): both workers take part, end with identical weights, and a second launch resumes from the shared backup;
* a run backed up on one route resumes on the other;
* ``fit`` on two replicas (logical CPUs): the update is the mean of both replicas' gradients and the
  batch-norm statistics the mean of both replicas'.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import (finish, free_ports, last_json_line, latest_backup_step, python_script, redirect, start,
                     tf_config_env, write_pipeline)
from xrayscatter.config import replace
from xrayscatter.errors import XrayscatterError
from xrayscatter.train import train


def train_command(pipeline: Path, *args: str) -> list[str]:
    """``python -m xrayscatter.train``: the library entry ``train`` in a process of its own."""
    return [sys.executable, "-m", "xrayscatter.train", "--pipeline", str(pipeline), *args]


def result_of(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def launch_workers(pipeline: Path, steps: int, out_dir: Path, tag: str,
                   network: str = "resnet") -> list[tuple[dict, list[np.ndarray]]]:
    """Two workers of one cluster on 127.0.0.1 (TF_CONFIG); each one's result record and final weights."""
    ports = free_ports(2)
    weights = [out_dir / f"{tag}-worker{index}.npz" for index in range(2)]
    processes = [start(train_command(pipeline, "--network", network, "--steps", str(steps), "--no-export",
                                     "--weights-out", str(weights[index])), tf_config_env(index, ports), out_dir)
                 for index in range(2)]
    results = []
    for stdout, path in zip(finish(processes), weights):
        with np.load(path) as arrays:
            ordered = sorted(arrays, key=lambda k: int(k.split("_")[1]))
            results.append((result_of(stdout), [arrays[k] for k in ordered]))
    return results


def test_train_under_tf_config_with_two_local_workers_takes_the_loop_and_trains(smoke_dataset, tmp_path):
    # The route, the cluster and the backup do not depend on the network: the autoencoder shows them in a
    # quarter of the ResNet's time (tests/test_distribute_loop.py runs the ResNet on this route from the CLI).
    config = redirect(replace(smoke_dataset, "autoencoder", epochs=2, steps_per_epoch=3), tmp_path)
    pipeline = write_pipeline(config, tmp_path / "pipeline.toml")

    first = launch_workers(pipeline, steps=2, out_dir=tmp_path, tag="first", network="autoencoder")
    for index, (result, _weights) in enumerate(first):
        assert result["route"] == "loop" and result["strategy"] == "MultiWorkerMirroredStrategy"
        assert (result["task_type"], result["task_id"]) == ("worker", index)
        assert result["workers"] == 2 and result["replicas"] == 2  # one CPU replica per worker
        assert result["initial_step"] == 0 and result["steps_run"] == 2 and result["final_step"] == 2
        assert not result["complete"] and all(np.isfinite(result["history"]["loss"]))
    assert first[0][0]["chief"] and not first[1][0]["chief"]
    # The loss is all-reduced: both workers saw the same global mean every step.
    np.testing.assert_allclose(first[0][0]["history"]["loss"], first[1][0]["history"]["loss"], rtol=1e-6)
    # Identical weights on both workers, and training moved them.
    assert first[0][0]["weights_sha256"] == first[1][0]["weights_sha256"]
    for a, b in zip(first[0][1], first[1][1]):
        np.testing.assert_array_equal(a, b)

    # Only the chief's backup is kept in the shared folder; the other worker's temporary folder is gone.
    logs = Path(config.autoencoder.log_dir)
    assert latest_backup_step(logs / "backup") == 2
    assert not [p for p in logs.iterdir() if p.name.startswith(".backup-")]
    run_dir = Path(first[0][0]["log_dir"])
    assert run_dir.parent == logs and list((run_dir / "train").glob("events.out.tfevents.*"))  # chief's TensorBoard

    # A new launch (as after a killed job) resumes at step 2 from the shared backup, in the same run folder.
    second = launch_workers(pipeline, steps=4, out_dir=tmp_path, tag="second", network="autoencoder")
    for result, _weights in second:
        assert result["initial_step"] == 2 and result["steps_run"] == 2 and result["final_step"] == 4
    assert second[0][0]["log_dir"] == str(run_dir)
    assert second[0][0]["weights_sha256"] == second[1][0]["weights_sha256"]
    assert second[0][0]["weights_sha256"] != first[0][0]["weights_sha256"]
    changed = [not np.array_equal(a, b) for a, b in zip(first[0][1], second[0][1])]
    assert sum(changed) > len(changed) // 2


def test_a_run_backed_up_on_one_route_resumes_on_the_other(smoke_dataset, tmp_path):
    config = redirect(replace(smoke_dataset, "autoencoder", epochs=3, steps_per_epoch=2), tmp_path)
    backup = tmp_path / "logs" / "autoencoder" / "backup"

    loop = train("autoencoder", config, route="loop", steps=3, checkpoint_every=1, progress=False)
    assert (loop["route"], loop["initial_step"], loop["final_step"], loop["complete"]) == ("loop", 0, 3, False)
    assert latest_backup_step(backup) == 3 and (backup / "run.json").is_file()

    fit = train("autoencoder", config, route="fit", steps=5, export=False, progress=False)
    assert (fit["route"], fit["initial_step"], fit["final_step"], fit["complete"]) == ("fit", 3, 5, False)
    assert fit["log_dir"] == loop["log_dir"] and latest_backup_step(backup) == 5
    assert set(fit) == set(loop)  # one record for both routes

    last = train("autoencoder", config, route="loop", progress=False)
    assert (last["initial_step"], last["final_step"], last["complete"]) == (5, 6, True)
    assert Path(last["saved_model"]).name == "1" and last["report"]["training"]["initial_step"] == 5
    assert not backup.exists()  # a complete schedule removes its backup: the next run starts afresh

    with pytest.raises(XrayscatterError, match="unknown training route 'keras'"):
        train("autoencoder", config, route="keras")
    with pytest.raises(XrayscatterError, match="unknown network 'vgg'"):
        train("vgg", config)


TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from xrayscatter.config import config_from_dict
    from xrayscatter.distribute.strategy import make_statistics_sync, make_strategy
    from xrayscatter.resnet.data import make_dataset
    from xrayscatter.resnet.task import ResNetTask
    from xrayscatter.train import BatchNormSync, build_training_model

    config = config_from_dict(json.loads(sys.argv[1]))
    size, width, steps, lr = config.resnet.input_size, config.resnet.width_multiplier, 1, 1e-3
    strategy = make_strategy()
    keras.utils.set_random_seed(0)
    task = ResNetTask(config)
    classifier, _ = build_training_model(task, strategy, steps, compile_for_fit=True,
                                         optimizer=keras.optimizers.SGD(lr))
    start = classifier.get_weights()
    # Deterministic order, so that the reference below sees the batches the replicas see:
    # per step, replica 0 and replica 1 take the next two per-replica batches.
    data = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, "train", training=False, input_context=context))
    sync = BatchNormSync(make_statistics_sync(strategy, classifier))
    classifier.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[sync])

    # Data parallelism emulated on one device: one model per replica, each step both compute
    # gradients on their own batch (own batch-norm statistics), apply the mean gradient.
    context = tf.distribute.InputContext(1, 0, 2)
    batches = list(make_dataset(config, "train", training=False, input_context=context).take(2 * steps))
    replicas = [task.plain_copy(classifier)[0] for _ in range(2)]  # the same network, outside the strategy

    # Each replica's gradient in a graph, as fit computes it: computed eagerly, it differs from fit's by ~0.7 %
    # of the update for the smoke pipeline's network (three channels, beam head; the paper's: 2e-5), more than
    # the tolerance below, while a graph matches fit's to ~2e-6.
    gradient_functions = []
    for model in replicas:
        def gradient(inputs, targets, model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(task.per_example_loss(targets, model(inputs, training=True)))
            return tape.gradient(loss, model.trainable_variables)
        gradient_functions.append(tf.function(gradient))

    def emulate(counted):
        for model in replicas:
            model.set_weights(start)
        for step in range(steps):
            gradients = [gradient_functions[r](*batches[2 * step + r]) for r in range(len(replicas))]
            for model in replicas:
                for i, variable in enumerate(model.trainable_variables):
                    variable.assign(variable - lr * sum(gradients[r][i] for r in counted) / 2)
        trainable = [v.numpy() for v in replicas[0].trainable_variables]
        statistics = [(a.numpy() + b.numpy()) / 2 for a, b in
                      zip(replicas[0].non_trainable_weights, replicas[1].non_trainable_weights)]
        return trainable, statistics

    def update_error(xs, ys, origin, names):
        # Distance between two sets of weights relative to the size of the update that led to ys,
        # over all weights at once, leaving out the convolutions' biases: batch normalisation
        # follows every convolution, so their gradient is zero and their update pure rounding.
        keep = [i for i, name in enumerate(names) if not name.endswith("_conv/bias")]
        flat = lambda ws: np.concatenate([ws[i].ravel() for i in keep]).astype(np.float64)
        return float(np.linalg.norm(flat(xs) - flat(ys)) / np.linalg.norm(flat(ys) - flat(origin)))

    (both, statistics), (first_only, _) = emulate((0, 1)), emulate((0,))
    trained = [v.numpy() for v in classifier.trainable_weights]
    trainable_names = [v.path for v in classifier.trainable_weights]
    trained_statistics = [v.numpy() for v in classifier.non_trainable_weights]
    # More steps (the exact comparison is for the first one: later steps amplify rounding
    # differences), then every weight must still be identical on both devices.
    classifier.fit(data, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0, callbacks=[sync])
    start_trainable = [w for w, v in zip(start, classifier.weights) if v.trainable]
    start_statistics = [w for w, v in zip(start, classifier.weights) if not v.trainable]
    # Model weights: trainable ones and batch-norm statistics (metric state is per replica by design).
    copies = [[c.numpy() for c in strategy.experimental_local_results(v.value)] for v in classifier.weights]
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "devices": [str(d) for d in strategy.extended.worker_devices],
        "weights": len(copies),
        "copies_per_weight": sorted({len(c) for c in copies}),
        "max_copy_difference": max(float(np.max(np.abs(c[0] - c[1]))) for c in copies),
        "max_moved": max(float(np.max(np.abs(t - s))) for t, s in zip(trained, start_trainable)),
        "max_moved_later": max(float(np.max(np.abs(v.numpy() - t)))
                               for v, t in zip(classifier.trainable_weights, trained)),
        "error_vs_both": update_error(trained, both, start_trainable, trainable_names),
        "error_vs_first_only": update_error(trained, first_only, start_trainable, trainable_names),
        "statistics_error": update_error(trained_statistics, statistics, start_statistics,
                                         [v.path for v in classifier.non_trainable_weights]),
    }))
""")


def test_fit_on_two_replicas_both_contribute_gradients_and_stay_in_sync(smoke_dataset):
    # 8 images per replica: batch norms over fewer amplify rounding enough to blur the comparison. The
    # smoke pipeline's network: the beam-centre head and the beam-region branch, one loss per output.
    config = replace(smoke_dataset, "resnet", input_size=64, width_multiplier=0.125, batch_size=16, cache=False)
    assert config.resnet.beam_centre_weight > 0 and config.resnet.detail_size
    done = python_script(TWO_REPLICAS, json.dumps(config.to_dict()))
    assert done.returncode == 0, done.stderr[-4000:]
    result = last_json_line(done.stdout)
    assert result["replicas"] == 2 and len(set(result["devices"])) == 2
    assert result["copies_per_weight"] == [2] and result["weights"] == 139  # incl. the 44 batch-norm statistics
    assert result["max_copy_difference"] == 0.0  # every weight identical on both devices
    assert result["max_moved"] > 1e-4 and result["max_moved_later"] > 1e-4  # training did change the weights
    # The update is the mean of both replicas' gradients, not one replica's ...
    assert result["error_vs_both"] < 1e-3
    assert result["error_vs_first_only"] > 0.5
    # ... and the moving statistics are the mean of both replicas' updates.
    assert result["statistics_error"] < 1e-3
