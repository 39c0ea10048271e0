"""The ``xrayscatter`` command line: thin, it parses arguments and calls library functions.

Errors are one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
Library modules are imported inside the commands so that ``--help`` is instant and
does not load TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from xrayscatter.errors import XrayscatterError

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) is not for users; errors still surface.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_PIPELINE = "pipelines/default.toml"

app = typer.Typer(
    help="Tag x-ray scattering detector images: simulate, train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
simulate_app = typer.Typer(help="Synthetic SAXS/WAXS images → sharded TFRecords.", no_args_is_help=True)
train_app = typer.Typer(help="Train the ResNet-50 or the patch autoencoder.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print rates measured side by side in one run.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")

_state = {"debug": False}

PipelineOption = typer.Option(DEFAULT_PIPELINE, "--pipeline", "-p", help="Pipeline TOML file.")


def _config(pipeline: str):
    from xrayscatter.config import load_config

    return load_config(pipeline)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    _state["debug"] = debug


# --------------------------------------------------------------------------- simulate
@simulate_app.command("run")
def simulate_run(
    pipeline: str = PipelineOption,
    shards: Optional[str] = typer.Option(
        None, "--shards",
        help="Write only these shards, e.g. '0-9' or '3' (global shard numbers over all splits), for job arrays. "
             "Run 'xrayscatter simulate finalize' when all are done."),
    processes: Optional[int] = typer.Option(None, "--processes", "-j", help="Worker processes (default: config)."),
):
    """Simulate the pipeline's data set into tfrecords/<dataset>/ (resumes where a killed run stopped)."""
    from xrayscatter.simulate.writer import parse_shard_range, simulate_dataset

    config = _config(pipeline)
    selection = parse_shard_range(shards) if shards else None
    simulate_dataset(config, shard_selection=selection, processes=processes)


@simulate_app.command("finalize")
def simulate_finalize(pipeline: str = PipelineOption):
    """Check that every shard of the data set is present and write manifest.json."""
    from xrayscatter.simulate.writer import finalize_dataset

    path = finalize_dataset(_config(pipeline))
    typer.echo(f"wrote {path}")


@simulate_app.command("shards")
def simulate_shards(pipeline: str = PipelineOption):
    """Print how many shards the pipeline's data set has (global numbers 0 … N−1, for a job array's --shards)."""
    from xrayscatter.simulate.writer import plan_shards

    typer.echo(len(plan_shards(_config(pipeline))))


@simulate_app.command("preview")
def simulate_preview(
    pipeline: str = PipelineOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG path (default reports/<name>/preview.png)."),
    count: int = typer.Option(24, "--count", "-n", help="How many images."),
    start: int = typer.Option(0, "--start", help="First image index."),
):
    """Write a PNG grid of simulated images (log-scale false colour) with their tags."""
    from xrayscatter.simulate.preview import write_preview

    config = _config(pipeline)
    path = write_preview(config, output, count=count, start=start)
    typer.echo(f"wrote {path}")


# --------------------------------------------------------------------------- train
@train_app.command("resnet")
def train_resnet_command(pipeline: str = PipelineOption):
    """Train the ResNet on the TFRecords, report hold-out mAP, export saved_models/resnet/<version>/.

    With TF_CONFIG set, or as one task of a multi-task Slurm step, this process is one worker of a
    multi-worker training (README, "Scaling out").
    """
    from xrayscatter.train import summary_line, train

    typer.echo(summary_line(train("resnet", _config(pipeline))))


@train_app.command("autoencoder")
def train_autoencoder_command(
    pipeline: str = PipelineOption,
    images_dir: Optional[Path] = typer.Option(
        None, "--images-dir", help="Train on a folder of real detector images instead of the TFRecords."),
):
    """Train the patch autoencoder, export saved_models/autoencoder/<version>/ (multi-worker in a cluster)."""
    from xrayscatter.train import summary_line, train

    typer.echo(summary_line(train("autoencoder", _config(pipeline), images_dir=images_dir)))


# --------------------------------------------------------------------------- evaluate / predict
@app.command("evaluate")
def evaluate_command(
    pipeline: str = PipelineOption,
    data: Optional[Path] = typer.Option(
        None, "--data", help="Folder of real detector images with labels.csv (default: the synthetic TFRecords)."),
    name: Optional[str] = typer.Option(None, "--name", help="Report name (default: the pipeline name)."),
    export: Optional[bool] = typer.Option(
        None, "--export/--no-export",
        help="Export the attribute model to saved_models/attributes/ (default: for the simulated data set, "
             "not for --data)."),
):
    """One-vs-all linear SVMs, leave-one-run-out AP, baselines → reports/<name>/."""
    from xrayscatter.evaluation.run import run_evaluation

    run_evaluation(_config(pipeline), data_dir=data, report_name=name, export=export)


H5PathOption = typer.Option(
    None, "--h5-path", help="HDF5: the data set holding the frames, e.g. '/data/images' (default: the Eiger/NeXus "
                            "layout, the NeXus default plot or the file's only image data set).")


ViewsOption = typer.Option(
    None, "--views", help="Average each frame's probabilities over 1, 4 (flips) or 8 (flips and quarter turns) views: "
                          "that many forward passes, more accurate tags (README, 'Test-time views'). Default: the "
                          "views the model was exported with (resnet.views).")


@app.command("predict")
def predict_command(
    inputs: List[str] = typer.Argument(
        ..., metavar="PATH...", help="Folders, files or patterns of detector files (TIFF, EDF, CBF, PNG, NPY, "
                                     "HDF5/NeXus), e.g. 'run42/' or run42/*.h5 sample_0001.tif."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="SavedModel folder (default: newest under saved_models/)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write CSV (.csv) or JSON Lines (.jsonl), one row per frame."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also read subfolders."),
    glob: Optional[str] = typer.Option(None, "--glob", help="Only files matching this pattern, e.g. '*.tif'."),
    batch_size: int = typer.Option(16, "--batch-size", help="Frames per forward pass."),
    h5_path: Optional[str] = H5PathOption,
    html: Optional[Path] = typer.Option(
        None, "--html", help="Also write a self-contained contact sheet: a thumbnail per frame with its tags."),
    views: Optional[int] = ViewsOption,
):
    """Tag every frame of every detector file given (folders are listed). Exit code 0: all read; 1: some files or
    frames failed; 2: nothing done."""
    from xrayscatter.predict import predict_directory

    failures = predict_directory(inputs, model=model, output=output, recursive=recursive,
                                 glob=glob, batch_size=batch_size, h5_path=h5_path, html=html,
                                 views=views)
    raise typer.Exit(code=1 if failures else 0)


@app.command("watch")
def watch_command(
    directory: Path = typer.Argument(..., help="The folder the detector writes into."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="JSON Lines file, one line per frame, appended (default DIRECTORY/tags.jsonl); "
                                     "what it holds is not tagged again after a restart."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="SavedModel folder (default: as predict)."),
    port: Optional[int] = typer.Option(
        None, "--port", help="Serve GET /last?n=20 and GET /status as JSON on 127.0.0.1:PORT."),
    html: Optional[Path] = typer.Option(None, "--html", help="Keep a contact sheet of the newest frames up to date."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also watch subfolders."),
    glob: Optional[str] = typer.Option(None, "--glob", help="Only files matching this pattern, e.g. '*.cbf'."),
    h5_path: Optional[str] = H5PathOption,
    poll: Optional[float] = typer.Option(
        None, "--poll", help="Poll every SECONDS instead of file-system events (network file systems; chosen by "
                             "itself on NFS, CIFS, Lustre, GPFS…)."),
    settle: float = typer.Option(
        1.0, "--settle", help="Seconds a file must stay unchanged to count as complete when no close event says so."),
    batch_size: int = typer.Option(
        16, "--batch-size", help="Frames per forward pass when that many wait (a backlog); fewer go one by one."),
    views: Optional[int] = ViewsOption,
):
    """Tag every new frame in DIRECTORY as it is written, until Ctrl-C: one printed line and one output line per frame."""
    from xrayscatter.watch import watch_directory

    watch_directory(directory, model=model, output=output, port=port, html=html, recursive=recursive, glob=glob,
                    h5_path=h5_path, poll=poll, settle=settle, batch_size=batch_size, views=views)


@app.command("serve-request")
def serve_request_command(
    file: Path = typer.Argument(..., help="A detector image file."),
    signature: str = typer.Option("serving_default", "--signature", help="Signature name."),
):
    """Print the TF Serving REST :predict JSON body for FILE (pipe it to curl -d @-)."""
    from xrayscatter.serving import rest_request_body

    typer.echo(rest_request_body(file, signature_name=signature))


@app.command("serve-config")
def serve_config_command(
    saved_models: Path = typer.Option(Path("saved_models"), "--saved-models", help="Folder holding resnet/, autoencoder/, attributes/."),
    base_path: str = typer.Option("/models", "--base-path", help="Where the TF Serving container sees that folder."),
):
    """Write <saved-models>/models.config for TF Serving (every exported model of this project)."""
    from xrayscatter.serving import write_models_config

    typer.echo(f"wrote {write_models_config(saved_models, base_path=base_path)}")


# --------------------------------------------------------------------------- bench
@bench_app.command("external")
def bench_external_command(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="SavedModel (default: newest under saved_models/)."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Where the files go (default reports/external)."),
    per_group: int = typer.Option(30, "--per-group", help="Files per group (17 groups)."),
    seed: int = typer.Option(20261124, "--seed", help="Random seed of the set."),
    workers: int = typer.Option(2, "--workers", help="Processes writing the files."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A second SavedModel: the differences "
                                            "(model − baseline) on the same files, with paired intervals."),
    views: Optional[int] = ViewsOption,
):
    """A model on files from another physics code (sasmodels), detectors and formats: ROC AUC and AP per attribute."""
    from xrayscatter.benchmarks.external import bench_external

    bench_external(model=model, folder=folder, per_group=per_group, seed=seed, workers=workers, baseline=baseline,
                   views=views)


PAPER_PIPELINE = "pipelines/paper.toml"
BenchJsonOption = typer.Option(None, "--json", help="Also write the result (ratios, conditions) to this JSON file.")
WorkDirOption = typer.Option(Path("reports/bench/work"), "--work-dir",
                             help="Where a bench makes its own data sets and models (never tfrecords/ or saved_models/).")


@bench_app.command("simulate")
def bench_simulate_command(
    pipeline: str = typer.Option(PAPER_PIPELINE, "--pipeline", "-p", help="Pipeline TOML file (what the writer stores)."),
    sizes: str = typer.Option("256,1024", "--sizes", help="Image sizes (px, the long side), comma-separated."),
    seconds: float = typer.Option(8.0, "--seconds", help="Measuring time per worker and case."),
    json_path: Optional[Path] = BenchJsonOption,
):
    """Images/s per core of the generator and of the whole simulate run path (encoding, writing), 1 → 2 processes."""
    from xrayscatter.benchmarks.simulate import bench_simulate

    bench_simulate(_config(pipeline), [int(s) for s in sizes.split(",")], seconds=seconds, json_path=json_path)


@bench_app.command("input")
def bench_input_command(
    pipeline: str = typer.Option(PAPER_PIPELINE, "--pipeline", "-p", help="Pipeline TOML file."),
    images: int = typer.Option(32, "--images", help="Images in the bench data set (simulated once)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch (the cost per image does not depend on it)."),
    seconds: float = typer.Option(15.0, "--seconds", help="Measuring time per record layout."),
    work_dir: Path = WorkDirOption,
    json_path: Optional[Path] = BenchJsonOption,
):
    """Training input pipeline images/s per core (full image vs stored resized) and cores per GPU."""
    from xrayscatter.benchmarks.input import bench_input

    bench_input(_config(pipeline), work_dir=work_dir, images=images, batch_size=batch_size, seconds=seconds,
                json_path=json_path)


@bench_app.command("train")
def bench_train_command(
    pipeline: str = PipelineOption,
    images: int = typer.Option(1024, "--images", help="Images in the bench data set (simulated once)."),
    seconds: float = typer.Option(20.0, "--seconds", help="Measuring time per rate."),
    work_dir: Path = WorkDirOption,
    json_path: Optional[Path] = BenchJsonOption,
):
    """Input pipeline alone vs training on in-memory tensors vs training fed by the pipeline (cache off, on)."""
    from xrayscatter.benchmarks.train import bench_train

    bench_train(_config(pipeline), work_dir=work_dir, images=images, seconds=seconds, json_path=json_path)


@bench_app.command("features")
def bench_features_command(
    pipeline: str = PipelineOption,
    seconds: float = typer.Option(10.0, "--seconds", help="Measuring time of the 15-crop cases."),
    json_path: Optional[Path] = BenchJsonOption,
):
    """15-crop features/s vs 15 plain passes; SPM features/s vs a per-patch loop."""
    from xrayscatter.benchmarks.features import bench_features

    bench_features(_config(pipeline), seconds=seconds, json_path=json_path)


@bench_app.command("evaluate")
def bench_evaluate_command(
    pipeline: str = typer.Option(PAPER_PIPELINE, "--pipeline", "-p", help="Pipeline whose [evaluate] settings are run."),
    images: int = typer.Option(2832, "--images"), attributes: int = typer.Option(98, "--attributes"),
    runs: int = typer.Option(13, "--runs"),
    folds: int = typer.Option(0, "--folds", help="Time only this many folds and estimate the whole (0: all)."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="One fit on raw rows vs the Gram route."),
    real: str = typer.Option(DEFAULT_PIPELINE, "--real", help="Also on this pipeline's real features if its "
                                                                 "trained models exist ('' : no)."),
    json_path: Optional[Path] = BenchJsonOption,
):
    """The leave-one-run-out SVM stage at XMD size with the pipeline's settings (and on real features)."""
    from xrayscatter.benchmarks.evaluate import bench_evaluate

    bench_evaluate(_config(pipeline), images=images, attributes=attributes, runs=runs, folds=folds, compare=compare,
                   real_pipeline=real or None, json_path=json_path)


@bench_app.command("predict")
def bench_predict_command(
    model: Optional[list[Path]] = typer.Option(
        None, "--model", "-m", help="SavedModel (repeatable; default: the newest under saved_models/)."),
    images: int = typer.Option(64, "--images"), size: int = typer.Option(1024, "--size"),
    batch_size: int = typer.Option(16, "--batch-size"),
    json_path: Optional[Path] = BenchJsonOption,
):
    """End-to-end predict images/s on a folder of TIFFs vs the model's own forward rate."""
    from xrayscatter.benchmarks.predict import bench_predict

    bench_predict(models=list(model) if model else None, images=images, size=size, batch_size=batch_size,
                  json_path=json_path)


@bench_app.command("prepare")
def bench_prepare_command(work_dir: Path = WorkDirOption):
    """Make what the benches need and a fresh clone lacks: the smoke data set and its trained ResNet (once)."""
    from rich.console import Console

    from xrayscatter.benchmarks.work import smoke_model

    typer.echo(f"smoke model: {smoke_model(work_dir, console=Console())}")


@bench_app.command("report")
def bench_report_command(
    folder: Path = typer.Option(Path("reports/bench"), "--folder", help="Where the benches' JSON files are."),
):
    """One table of every ratio against its target: <folder>/bench.md and bench.json."""
    from xrayscatter.benchmarks.report import write_report

    md, js = write_report(folder)
    typer.echo(md.read_text())
    typer.echo(f"wrote {md} and {js}")


@bench_app.command("watch")
def bench_watch_command(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="SavedModel (default: newest under saved_models/)."),
    rate: float = typer.Option(10.0, "--rate", help="Frames per second written for the latency measurement."),
    seconds: float = typer.Option(20.0, "--seconds", help="Duration of each timed phase."),
    size: int = typer.Option(1024, "--size", help="Frame side (px)."),
    frames_per_file: int = typer.Option(10, "--frames-per-file", help="Frames per Eiger-like HDF5 data file."),
    burst: int = typer.Option(96, "--burst", help="Frames dropped at once to measure the sustained rate."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Where the files go (default: a temporary folder)."),
):
    """Latency (file complete → its output line) of 'watch' at a given rate, and its sustained rate vs 'predict'."""
    from xrayscatter.benchmarks.watch import bench_watch

    bench_watch(model=model, rate=rate, seconds=seconds, size=size, frames_per_file=frames_per_file, burst=burst,
                folder=folder)


# --------------------------------------------------------------------------- data-service
data_service_app = typer.Typer(
    help="tf.data service: decode and augment the training input on other CPU hosts (resnet.data_service).",
    no_args_is_help=True)
app.add_typer(data_service_app, name="data-service")


def _serve_forever(server) -> None:
    """Block in the server's join(); Ctrl-C ends the process (join() does not return to Python for it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    server.join()


@data_service_app.command("dispatcher")
def data_service_dispatcher_command(
    port: int = typer.Option(..., "--port", help="TCP port to listen on (every interface)."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Folder for the dispatcher's journal: restarted with the same folder, it carries on."),
):
    """Run a tf.data service dispatcher until killed; point resnet.data_service at it."""
    import socket

    from xrayscatter.config import parse_address
    from xrayscatter.distribute.data_service import start_dispatcher

    server = start_dispatcher(port, str(work_dir) if work_dir else None)
    _, bound = parse_address(server.target)
    typer.echo(f"tf.data service dispatcher listening on port {bound} (all interfaces): "
               f"resnet.data_service = \"{socket.gethostname()}:{bound}\"")
    _serve_forever(server)


@data_service_app.command("worker")
def data_service_worker_command(
    dispatcher: str = typer.Option(..., "--dispatcher", help="The dispatcher's HOST:PORT."),
    port: int = typer.Option(..., "--port", help="TCP port to listen on (every interface)."),
    worker_address: Optional[str] = typer.Option(
        None, "--worker-address", help="Host name or IP under which trainers reach this worker (default: host name)."),
):
    """Run a tf.data service worker until killed: it runs training input pipelines the dispatcher hands it."""
    from xrayscatter.distribute.data_service import start_worker, worker_hostname

    host = worker_hostname(worker_address)
    server = start_worker(dispatcher, port, host)
    # With --port 0 the bound port is only in the private "localhost:<port>" attribute.
    bound = port or getattr(server, "_address", ":0").rsplit(":", 1)[1]
    typer.echo(f"tf.data service worker listening on port {bound} (all interfaces), registered as {host}:{bound} "
               f"with dispatcher {dispatcher}")
    _serve_forever(server)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors unless --debug.

    Usage errors are click's (exit 2 with the usage line); an XrayscatterError or any
    other failure becomes one red line on stderr and exit code 2.
    """
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if argv and "--help" not in argv:
        from xrayscatter.tf_runtime import import_tensorflow

        import_tensorflow()
    try:
        app(args=argv, prog_name="xrayscatter")
    except XrayscatterError as e:
        _fail(str(e), debug)
    except KeyboardInterrupt:
        _fail("interrupted (complete outputs are kept; run the same command again to resume)", debug)
    except Exception as e:  # noqa: BLE001 - the CLI's job is to turn any failure into one clear line
        _fail(f"{type(e).__name__}: {e} (run with --debug for the traceback)", debug)


def _fail(message: str, debug: bool) -> None:
    if debug:
        raise
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(2)
