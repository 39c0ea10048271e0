"""Pipeline files (TOML) → typed settings.

A pipeline file has a few top-level keys and one table per stage::

    name = "default"
    seed = 2017
    [simulate]   ...   # SimulateConfig
    [resnet]     ...   # ResNetConfig
    [autoencoder] ...  # AutoencoderConfig
    [evaluate]   ...   # EvaluateConfig

Every key is optional (the dataclass default applies); an unknown key or a value
of the wrong type is an error naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from xrayscatter.errors import XrayscatterError

VIEW_COUNTS = (1, 4, 8)  # test-time views a ResNet can average over (resnet/views.py, predict.dihedral_views)

# The input channels a network can be given (what each is: xrayscatter/normalization.py).
INPUT_CHANNELS = ("log", "filled", "contrast", "valid")


# Training crops come from the image resized to 256/224 of the input size: the
# smallest scale of the paper's 15-crop feature.
TRAIN_RESIZE_FACTOR = 256 / 224


def train_load_size(input_size: int) -> int:
    """Side (px) of the resized image that training crops come from."""
    return int(round(input_size * TRAIN_RESIZE_FACTOR))


def augment_load_size(settings, augment: bool | None = None) -> int:
    """Side (px) at which training makes the image it augments, for a ``[resnet]`` section: the crop's
    load size with ``augment`` (the section's, unless given) and ``augment_crop``, else the input size."""
    if (settings.augment if augment is None else augment) and settings.augment_crop:
        return train_load_size(settings.input_size)
    return settings.input_size


def stored_view_size(config) -> int:
    """Side (px) at which training makes its input channels, when it makes them all at one side: the image's
    load size (the augmentation's, else the input size), which with the beam-region branch the detail size
    must equal (``pipelines/paper.toml``: 256 and 256); else 0. The simulator stores the ``resized`` record
    feature at this side (``schema.py``), and none at 0: the image and the detail at two sides are each made
    from the full square of counts, because a square stored at one side would reach the other only through a
    second resize (blurrier than the one resize that serving and evaluation make)."""
    settings = config.resnet
    load_size = augment_load_size(settings)
    if settings.beam_centre_weight > 0 and settings.detail_size and settings.detail_size != load_size:
        return 0
    return load_size


@dataclass(frozen=True)
class SimulateConfig:
    """How many images, of what size, how they are grouped and sharded."""

    dataset: str = "default"
    num_images: int = 2000
    images_per_run: int = 50  # images in one measurement run (shared geometry, detector, beamstop)
    image_size: int = 256  # pixels of the detector's longest side after binning
    # Fractions of *runs* (not images) in each split; the rest of the runs go to train.
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    shard_size: int = 256  # images per TFRecord shard
    processes: int = 0  # 0 → os.cpu_count()
    saxs_fraction: float = 0.6  # fraction of runs with SAXS geometry (the rest WAXS)
    output_dir: str = "tfrecords"

    def validate(self, where: str) -> None:
        _check(self.num_images >= 1, where, "simulate.num_images", "must be ≥ 1")
        _check(self.images_per_run >= 1, where, "simulate.images_per_run", "must be ≥ 1")
        _check(16 <= self.image_size <= 4096, where, "simulate.image_size", "must be in [16, 4096]")
        _check(0 <= self.val_fraction < 1, where, "simulate.val_fraction", "must be in [0, 1)")
        _check(0 <= self.test_fraction < 1, where, "simulate.test_fraction", "must be in [0, 1)")
        _check(self.val_fraction + self.test_fraction < 1, where, "simulate.test_fraction",
               "val_fraction + test_fraction must be < 1")
        _check(self.shard_size >= 1, where, "simulate.shard_size", "must be ≥ 1")
        _check(self.processes >= 0, where, "simulate.processes", "must be ≥ 0")
        _check(0 <= self.saxs_fraction <= 1, where, "simulate.saxs_fraction", "must be in [0, 1]")
        _check(self.dataset.replace("-", "").replace("_", "").isalnum(), where, "simulate.dataset",
               "must be letters, digits, '-' or '_'")


@dataclass(frozen=True)
class ResNetConfig:
    """The supervised network: ResNet-50 (or a narrower/smaller variant on CPU)."""

    input_size: int = 224
    width_multiplier: float = 1.0  # 1.0 is exactly keras.applications.ResNet50
    # Bottleneck blocks in conv2_x … conv5_x: (3, 4, 6, 3) is ResNet-50. Only the smoke pipeline (the
    # tests' network) uses fewer, to cut the time Keras spends tracing the training graph.
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    batch_size: int = 32  # global batch (split over replicas)
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 → one pass over the train split
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True
    # Augmentation's random translation: crop input_size px out of the image resized to 256/224 × that
    # (then flips and quarter turns). false → flips and quarter turns of the whole image only, the field
    # and scale evaluation sees; with the beam-region branch the image then shows the detail's field.
    augment_crop: bool = True
    mixed_precision: bool = False  # mixed_float16 on GPUs, mixed_bfloat16 on CPUs with native bfloat16 (else float32)
    xla: bool = False
    cache: bool = False  # cache decoded images in memory (small data sets)
    shuffle_buffer: int = 1024
    # tf.data service dispatcher ("host:port" or "grpc://host:port") whose workers run the training
    # input pipeline on other CPU hosts; "" → the local pipeline. See xrayscatter/distribute/data_service.py.
    data_service: str = ""
    # What the network sees (normalization.INPUT_CHANNELS): log counts with gaps filled by their
    # neighbours, the same stretched per image, and the measured-pixel fraction; ("log",) is the
    # single channel of the first models.
    input_channels: tuple[str, ...] = ("filled", "contrast", "valid")
    # Training shows a simulated image's module gaps as missing pixels (as Pilatus files mark them,
    # −1) in this fraction of images and as 0 counts (as 16-bit files store them) in the rest.
    gaps_missing_fraction: float = 0.5
    # Weight of the beam-centre head's loss (absolute error of (x, y) in image sides, for beams on the
    # image); 0 → no head (and no beam-region branch).
    beam_centre_weight: float = 5.0
    # The beam-region branch: a small CNN on a window of detail_window × the image around the estimated
    # beam centre, taken from the image at detail_size px and resampled to detail_crop px; 0 → none.
    detail_size: int = 256
    detail_crop: int = 64
    detail_window: float = 0.25
    # A 1-D CNN on the detail image's radial profile about the same centre, in this many log-spaced
    # rings (model.RadialProfile); 0 → none. Needs the beam-region branch.
    profile_bins: int = 0
    # A second, finer beam-centre heatmap over the beam window (the detail branch's stride-4 map): the
    # window is placed at the coarse estimate, the fine head says where in it the beam is, and the radial
    # profile is taken about that refined centre, which the ``beam`` output then gives (the coarse one is
    # ``beam_coarse``). Needs the beam-region branch.
    beam_refine: bool = False
    # The beam centre the export gives (``beam_centre``, ``tag``) and the hold-out report measures: the network's
    # estimate moved to where its input image is most radially symmetric (resnet/centre.py, no weights; the tags
    # are unchanged). Needs the beam-centre head and a ``filled`` or ``log`` input channel.
    symmetry_centre: bool = False
    # Training images over which batch-norm statistics are recomputed for the final weights before
    # every evaluation and the export (0 → keep the running averages of training).
    batch_norm_images: int = 512
    # Keep an exponential moving average of the weights (Keras use_ema) and validate and export it;
    # averaging_momentum 0.999 averages over the last ~1,000 steps.
    weight_averaging: bool = False
    averaging_momentum: float = 0.999
    # Decision thresholds: the lowest probability ≥ threshold_floor at which the validation
    # precision reaches threshold_precision (else the best-F1 one above the floor).
    threshold_precision: float = 0.8
    threshold_floor: float = 0.3
    # Test-time views the exported model averages its probabilities over (1, 4 or 8: the frame, its
    # flips and 180° turn, and their transposes; resnet/views.py): its thresholds and hold-out report
    # are made on the same averaged probabilities. Each view costs one forward pass.
    views: int = 1
    output_dir: str = "saved_models/resnet"
    log_dir: str = "logs/resnet"

    def validate(self, where: str) -> None:
        _check(32 <= self.input_size <= 1024, where, "resnet.input_size", "must be in [32, 1024]")
        _check(len(self.input_channels) >= 1 and all(c in INPUT_CHANNELS for c in self.input_channels)
               and len(set(self.input_channels)) == len(self.input_channels), where, "resnet.input_channels",
               f"must be a list of distinct names from {list(INPUT_CHANNELS)}")
        _check(0 <= self.gaps_missing_fraction <= 1, where, "resnet.gaps_missing_fraction", "must be in [0, 1]")
        _check(self.beam_centre_weight >= 0, where, "resnet.beam_centre_weight", "must be ≥ 0")
        _check(self.detail_size == 0 or self.detail_size >= self.input_size, where, "resnet.detail_size",
               "must be 0 (no beam-region branch) or ≥ resnet.input_size")
        _check(self.detail_size == 0 or self.beam_centre_weight > 0, where, "resnet.detail_size",
               "the beam-region branch needs the beam-centre head (resnet.beam_centre_weight > 0)")
        _check(self.profile_bins == 0 or (self.profile_bins >= 8 and self.detail_size > 0), where,
               "resnet.profile_bins", "must be 0 (no radial profile) or ≥ 8 with a beam-region branch (resnet.detail_size > 0)")
        _check(not self.beam_refine or self.detail_size > 0, where, "resnet.beam_refine",
               "refines the beam centre within the beam window: it needs the beam-region branch (resnet.detail_size > 0)")
        _check(not self.symmetry_centre or (self.beam_centre_weight > 0 and ("filled" in self.input_channels
                                                                             or "log" in self.input_channels)),
               where, "resnet.symmetry_centre", "refines the network's beam centre on its input image: it needs the "
               "beam-centre head (resnet.beam_centre_weight > 0) and a 'filled' or 'log' input channel")
        _check(self.detail_crop >= 8, where, "resnet.detail_crop", "must be ≥ 8")
        _check(0 < self.detail_window <= 1, where, "resnet.detail_window", "must be in (0, 1]")
        _check(self.batch_norm_images >= 0, where, "resnet.batch_norm_images", "must be ≥ 0")
        _check(0 < self.threshold_precision <= 1, where, "resnet.threshold_precision", "must be in (0, 1]")
        _check(0 <= self.threshold_floor < 1, where, "resnet.threshold_floor", "must be in [0, 1)")
        _check(self.views in VIEW_COUNTS, where, "resnet.views", f"must be one of {', '.join(map(str, VIEW_COUNTS))}")
        _check(0 < self.averaging_momentum < 1, where, "resnet.averaging_momentum", "must be in (0, 1)")
        _check(0 < self.width_multiplier <= 4, where, "resnet.width_multiplier", "must be in (0, 4]")
        _check(len(self.blocks) == 4 and min(self.blocks) >= 1, where, "resnet.blocks",
               "must be 4 block counts ≥ 1 (conv2_x … conv5_x; ResNet-50 is [3, 4, 6, 3])")
        _check(self.batch_size >= 1, where, "resnet.batch_size", "must be ≥ 1")
        _check(self.epochs >= 1, where, "resnet.epochs", "must be ≥ 1")
        _check(self.steps_per_epoch >= 0, where, "resnet.steps_per_epoch", "must be ≥ 0")
        _check(self.learning_rate > 0, where, "resnet.learning_rate", "must be > 0")
        if self.data_service:
            try:
                parse_address(self.data_service)
            except XrayscatterError as e:
                raise XrayscatterError(f"{where}: {e}") from None


@dataclass(frozen=True)
class AutoencoderConfig:
    """The patch autoencoder and its spatial-pyramid features."""

    patch_size: int = 32
    code_size: int = 1024
    scales: tuple[int, ...] = (256, 512)  # images resized to these sizes before patching
    patches_per_image: int = 1000
    batch_size: int = 256
    epochs: int = 5
    steps_per_epoch: int = 0
    learning_rate: float = 1e-3
    spm_stride: int = 16  # dense grid stride (px) for SPM features; a multiple of patch_size / 4
    spm_levels: tuple[int, ...] = (1, 2, 4)
    base_filters: int = 32  # encoder widths base · (1, 2, 4); the decoder mirrors them
    heldout_fraction: float = 0.1  # images of a real-image folder held out for the reconstruction error
    real_images_dir: str = ""  # train on a folder of real detector images instead of the TFRecords
    output_dir: str = "saved_models/autoencoder"
    log_dir: str = "logs/autoencoder"

    def validate(self, where: str) -> None:
        _check(self.patch_size >= 8, where, "autoencoder.patch_size", "must be ≥ 8")
        _check(self.code_size >= 2, where, "autoencoder.code_size", "must be ≥ 2")
        _check(len(self.scales) >= 1 and all(s >= self.patch_size for s in self.scales), where,
               "autoencoder.scales", "must be a non-empty list of sizes ≥ patch_size")
        _check(self.patches_per_image >= 1, where, "autoencoder.patches_per_image", "must be ≥ 1")
        _check(self.epochs >= 1, where, "autoencoder.epochs", "must be ≥ 1")
        _check(self.patch_size >= 16 and self.patch_size & (self.patch_size - 1) == 0, where,
               "autoencoder.patch_size", "must be a power of two ≥ 16 (the encoder halves it down to 3 × 3)")
        _check(self.spm_stride >= 1 and self.spm_stride % (self.patch_size // 4) == 0, where,
               "autoencoder.spm_stride", f"must be a multiple of patch_size / 4 = {self.patch_size // 4}")
        _check(len(self.spm_levels) >= 1 and all(n >= 1 for n in self.spm_levels), where,
               "autoencoder.spm_levels", "must be a non-empty list of cells per side ≥ 1")
        _check(self.batch_size >= 1, where, "autoencoder.batch_size", "must be ≥ 1")
        _check(self.steps_per_epoch >= 0, where, "autoencoder.steps_per_epoch", "must be ≥ 0")
        _check(self.learning_rate > 0, where, "autoencoder.learning_rate", "must be > 0")
        _check(self.base_filters >= 1, where, "autoencoder.base_filters", "must be ≥ 1")
        _check(0 <= self.heldout_fraction < 1, where, "autoencoder.heldout_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class EvaluateConfig:
    """SVM evaluation: which features, which C values, which baselines."""

    feature_sets: tuple[str, ...] = ("resnet", "autoencoder", "resnet+autoencoder")
    baselines: tuple[str, ...] = ("bow", "lbpphog")
    # C of LinearSVC on standardised features whose blocks are weighted to unit total variance
    # (an image's feature vector has squared norm ≈ number of blocks), chosen per attribute and fold.
    svm_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    inner_folds: int = 2  # GroupKFold splits of a fold's training runs that choose C
    max_images: int = 0  # 0 → all images of the data set; else whole runs, test split's first
    hierarchical: bool = False
    hierarchy_attribute: str = "SAXS"  # a label column, or SAXS/WAXS (the run's geometry) for synthetic data
    real_data_dir: str = ""  # folder with detector images and labels.csv; empty → the synthetic TFRecords
    report_dir: str = "reports"
    cache_dir: str = "cache/features"
    threads: int = 0  # SVMs and baseline images processed at once; 0 → os.cpu_count()
    feature_batch_size: int = 16  # images per SavedModel call
    baseline_image_size: int = 128  # px; images resized (after log scaling, padding square) for the baselines
    bow_codebook_size: int = 256  # visual words of the bag-of-words baseline
    gallery_size: int = 4  # images per row of the disagreement gallery (Fig. 10)
    export_feature_set: str = "resnet+autoencoder"  # SVMs exported as saved_models/attributes; "" → none
    attributes_output_dir: str = "saved_models/attributes"

    def validate(self, where: str) -> None:
        _check(len(self.svm_c_grid) >= 1 and all(c > 0 for c in self.svm_c_grid), where,
               "evaluate.svm_c_grid", "must be a non-empty list of positive numbers")
        _check(self.max_images >= 0, where, "evaluate.max_images", "must be ≥ 0")
        known_sets = ("resnet", "autoencoder", "resnet+autoencoder")
        _check(all(s in known_sets for s in self.feature_sets), where, "evaluate.feature_sets",
               f"must list names from {', '.join(known_sets)}")
        _check(all(b in ("bow", "lbpphog") for b in self.baselines), where, "evaluate.baselines",
               "must list names from bow, lbpphog")
        _check(self.export_feature_set in ("",) + known_sets, where, "evaluate.export_feature_set",
               f"must be empty or one of {', '.join(known_sets)}")
        _check(self.inner_folds >= 2, where, "evaluate.inner_folds", "must be ≥ 2")
        _check(self.threads >= 0, where, "evaluate.threads", "must be ≥ 0")
        _check(self.feature_batch_size >= 1, where, "evaluate.feature_batch_size", "must be ≥ 1")
        _check(self.baseline_image_size >= 32, where, "evaluate.baseline_image_size", "must be ≥ 32")
        _check(self.bow_codebook_size >= 2, where, "evaluate.bow_codebook_size", "must be ≥ 2")
        _check(self.gallery_size >= 1, where, "evaluate.gallery_size", "must be ≥ 1")


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline file: a name, a seed and the settings of every stage."""

    name: str = "default"
    seed: int = 2017
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = ""  # the file it was read from (not a key of the file)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for manifests, SavedModels and reports)."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


_SECTIONS = {
    "simulate": SimulateConfig,
    "resnet": ResNetConfig,
    "autoencoder": AutoencoderConfig,
    "evaluate": EvaluateConfig,
}


DATA_SERVICE_KEY = "resnet.data_service"
_ADDRESS = re.compile(r"^(?:grpc://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(?P<port>[0-9]{1,5})$")


def parse_address(address: str, name: str = f"key '{DATA_SERVICE_KEY}'") -> tuple[str, int]:
    """A tf.data service address, ``"grpc://host:port"`` or ``"host:port"`` → ``(host, port)``.

    Args:
        address: a dispatcher address.
        name: what the address came from, for the error message (a config key or a CLI option).

    Raises:
        XrayscatterError: not of that form, or the port is not in 1–65535.
    """
    match = _ADDRESS.match(address.strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise XrayscatterError(f"{name} must be 'host:port' or 'grpc://host:port' (a tf.data service dispatcher), "
                               f"got {address!r}")
    return match["host"], port


def _check(ok: bool, where: str, key: str, reason: str) -> None:
    if not ok:
        raise XrayscatterError(f"{where}: key '{key}' {reason}")


def _coerce(value, annotation, where: str, key: str):
    """Check one TOML value against a dataclass field type (int, float, bool, str, tuple[...])."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise XrayscatterError(f"{where}: key '{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, item_type, where, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise XrayscatterError(f"{where}: key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise XrayscatterError(f"{where}: key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise XrayscatterError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise XrayscatterError(f"{where}: key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {annotation!r} for {key}")  # a bug here, not the user's


def _build(cls, table: dict, where: str, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in names or key in _SECTIONS and prefix:
            known = ", ".join(sorted(names - set(_SECTIONS)))
            raise XrayscatterError(f"{where}: unknown key '{full}' (known keys: {known})")
        if key in _SECTIONS and not prefix:
            if not isinstance(value, dict):
                raise XrayscatterError(f"{where}: '{key}' must be a table ([{key}])")
            kwargs[key] = _build(_SECTIONS[key], value, where, f"{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], where, full)
    return cls(**kwargs)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline TOML file.

    Raises:
        XrayscatterError: the file is missing, is not TOML, has an unknown key or a bad value.
    """
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise XrayscatterError(f"{where}: pipeline file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise XrayscatterError(f"{where}: not valid TOML ({e})") from None
    config = _build(PipelineConfig, table, where, "")
    for section in _SECTIONS:
        getattr(config, section).validate(where)
    return dataclasses.replace(config, source=where)


def config_from_dict(table: dict, where: str = "<dict>") -> PipelineConfig:
    """Same checks as :func:`load_config`, from an in-memory dict (tests, SavedModel metadata)."""
    config = _build(PipelineConfig, table, where, "")
    for section in _SECTIONS:
        getattr(config, section).validate(where)
    return dataclasses.replace(config, source=where)


def replace(config: PipelineConfig, section: str, **changes) -> PipelineConfig:
    """A copy of ``config`` with some keys of one section changed (tests, CLI overrides)."""
    new_section = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: new_section})

