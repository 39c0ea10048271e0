"""Training: two replicas in step, SIGKILL and resume, the smoke pipeline end to end, metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from xrayscatter.config import replace
from xrayscatter.training import average_precisions, best_f1_thresholds, learning_rate_schedule

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from xrayscatter.config import config_from_dict
    from xrayscatter.data import make_dataset
    from xrayscatter.models.resnet import build_backbone, build_classifier
    from xrayscatter.training import (SyncBatchNormStatistics, compile_classifier, make_strategy,
                                      summed_binary_crossentropy)

    config = config_from_dict(json.loads(sys.argv[1]))
    size, width, steps, lr = config.resnet.input_size, config.resnet.width_multiplier, 1, 1e-3
    strategy = make_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        classifier = build_classifier(build_backbone(size, width))
        compile_classifier(classifier, config, steps, optimizer=keras.optimizers.SGD(lr))
    start = classifier.get_weights()
    # Deterministic order, so that the reference below sees the batches the replicas see:
    # per step, replica 0 and replica 1 take the next two per-replica batches.
    data = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, "train", training=False, input_context=context))
    sync = SyncBatchNormStatistics(strategy)
    classifier.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[sync])

    # Data parallelism emulated on one device: one model per replica, each step both compute
    # gradients on their own batch (own batch-norm statistics), apply the mean gradient.
    context = tf.distribute.InputContext(1, 0, 2)
    batches = list(make_dataset(config, "train", training=False, input_context=context).take(2 * steps))
    replicas = [build_classifier(build_backbone(size, width)) for _ in range(2)]

    def emulate(counted):
        for model in replicas:
            model.set_weights(start)
        for step in range(steps):
            gradients = []
            for r, model in enumerate(replicas):
                images, labels = batches[2 * step + r]
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(summed_binary_crossentropy(labels, model(images, training=True)))
                gradients.append(tape.gradient(loss, model.trainable_variables))
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


def test_two_replicas_both_contribute_gradients_and_stay_in_sync(smoke_dataset):
    # 8 images per replica: batch norms over fewer amplify rounding enough to blur the comparison.
    config = replace(smoke_dataset, "resnet", input_size=64, width_multiplier=0.125, batch_size=16, cache=False)
    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS, json.dumps(config.to_dict())], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and len(set(result["devices"])) == 2
    assert result["copies_per_weight"] == [2] and result["weights"] > 300  # incl. batch-norm statistics
    assert result["max_copy_difference"] == 0.0  # every weight identical on both devices
    assert result["max_moved"] > 1e-4 and result["max_moved_later"] > 1e-4  # training did change the weights
    # The update is the mean of both replicas' gradients, not one replica's ...
    assert result["error_vs_both"] < 1e-3
    assert result["error_vs_first_only"] > 0.5
    # ... and the moving statistics are the mean of both replicas' updates.
    assert result["statistics_error"] < 1e-3


KILLABLE_RUN = textwrap.dedent("""
    import json, sys
    from xrayscatter.config import config_from_dict
    from xrayscatter.training import train_resnet
    train_resnet(config_from_dict(json.loads(sys.argv[1])))
""")


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_killed_with_sigkill_resumes_and_finishes_end_to_end(smoke_dataset, tmp_path):
    from xrayscatter.training import train_resnet

    config = replace(smoke_dataset, "resnet", epochs=6, steps_per_epoch=2,
                     log_dir=str(tmp_path / "logs"), output_dir=str(tmp_path / "saved_models" / "resnet"))
    config = replace(config, "evaluate", report_dir=str(tmp_path / "reports"))
    metadata_file = tmp_path / "logs" / "backup" / "training_metadata.json"

    process = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, json.dumps(config.to_dict())], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    backed_up = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            backed_up = json.loads(metadata_file.read_text())["epoch"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if backed_up >= 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"not killed mid-training: {process.stderr.read()[-3000:]}"
    assert not (tmp_path / "saved_models").exists()
    backed_up = json.loads(metadata_file.read_text())["epoch"]  # the last backup before the kill
    assert 2 <= backed_up < config.resnet.epochs

    result = train_resnet(config)

    assert result["initial_epoch"] == backed_up
    run_dir = Path(result["log_dir"])
    rows = _csv_rows(run_dir / "training_log.csv")
    epochs = [int(r["epoch"]) for r in rows]
    assert sorted(set(epochs)) == list(range(config.resnet.epochs))
    resumed = epochs[epochs.index(backed_up, backed_up):]  # the rows the second run wrote
    assert resumed == list(range(backed_up, config.resnet.epochs))
    # The optimizer's step counter came back too: the learning rate follows the schedule of one run.
    schedule = learning_rate_schedule(config, config.resnet.epochs * config.resnet.steps_per_epoch)
    for row in rows[-len(resumed):]:
        step = (int(row["epoch"]) + 1) * config.resnet.steps_per_epoch
        assert float(row["learning_rate"]) == pytest.approx(float(schedule(step)), rel=1e-5)
    assert {"loss", "pr_auc", "val_loss", "val_mAP", "val_AP_ring", "images_per_second"} <= set(rows[0])
    assert not (tmp_path / "logs" / "backup").exists()

    # TensorBoard: scalars, image grid, filters and PR curves were written.
    assert list((run_dir / "train").glob("events.out.tfevents.*"))
    assert len(list((run_dir / "validation").glob("events.out.tfevents.*"))) >= 2

    # Hold-out report and SavedModel.
    report = json.loads(Path(result["report_json"]).read_text())
    assert report["pipeline"] == "smoke" and report["split"] == "test"
    assert 0.0 < report["mAP"] <= 1.0 and report["mAP"] == pytest.approx(result["holdout_mAP"])
    assert "| ResNet, this run |" in Path(result["report_md"]).read_text()
    saved = Path(result["saved_model"])
    assert saved == tmp_path / "saved_models" / "resnet" / "1"
    metadata = json.loads((saved / "assets.extra" / "metadata.json").read_text())
    assert set(metadata["thresholds"]) == set(report["attributes"])
    assert metadata["training"]["initial_epoch"] == backed_up
    assert result["replicas"] == 1 and result["images_per_second"] > 0


def test_average_precision_and_thresholds_on_known_scores():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]], np.float32)
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.7, 0.2, 0.9], [0.1, 0.4, 0.7]], np.float32)
    ap = average_precisions(labels, scores)
    assert ap[0] == pytest.approx(1.0)  # both positives ranked first
    assert np.isnan(ap[1])  # no positive: no AP
    assert ap[2] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)  # ranks 2, 3, 4 among 4
    thresholds = best_f1_thresholds(labels, scores)
    assert thresholds[0] == pytest.approx(0.7) and thresholds[1] == 0.5
