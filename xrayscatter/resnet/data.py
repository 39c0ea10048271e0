"""The ResNet's tf.data input pipelines over the sharded TFRecords of one split.

    shard list (dataset.py) ─► (per-worker shard) ─► shuffle files (train) ─► parallel interleave
    ─► parse + decode 16-bit PNG ─► module gaps as missing or as 0 counts ─► pad square
       (or: the record's stored ``resized`` square, schema v3, when every size made is its side)
    ─► input channels at each size (in graph) ─► cache (optional) ─► shuffle + repeat + augment (train)
    ─► batch ─► (tf.data service, train, optional) ─► prefetch

Every stage runs with ``AUTOTUNE`` parallelism; training reads in non-deterministic
order (faster), evaluation in a fixed order (so predictions line up with labels).
:func:`make_dataset` has the ``input_context`` argument that
``strategy.distribute_datasets_from_function`` passes: it batches per replica and
shards the files per input pipeline (worker).

Elements are ``(inputs, targets)``. Without the beam-centre head: (b, S, S, C) float32 input
channels (``config.resnet.input_channels``, S = ``config.resnet.input_size``) and the (b, 17)
float32 multi-hot labels. With it (``resnet.beam_centre_weight`` > 0): inputs ``{"image"}`` — and,
with the beam-region branch (``resnet.detail_size`` = D > 0), ``"detail"`` (b, D, D, C), the same
image at D px (both made from the one padded square of counts, so that each resize fills the gaps
at its own scale), and ``"centre"`` (b, 2), the beam centre the branch
looks around (training: the true one, jittered; NaN where the beam is off the image and at
evaluation: the network's own estimate) — and targets ``{"attributes": labels, "beam": (b, 2)}``,
the beam centre (x, y) as a fraction of the image's side, moved with the image by every crop,
flip and rotation (NaN for records without one); with ``resnet.beam_refine`` also ``"beam_coarse"``,
the same centre for the backbone's estimate (``"beam"`` is then in the detail's frame, which a
translation crop does not move).
"""

from __future__ import annotations

import tensorflow as tf

from xrayscatter.attributes import ATTRIBUTE_INDEX
from xrayscatter.config import augment_load_size, stored_view_size, train_load_size  # noqa: F401 (part of this module's API)
from xrayscatter.dataset import count_records, read_records, shard_paths
from xrayscatter.distribute.strategy import share_of_files
from xrayscatter.normalization import channels_from_square, model_input, square_log_and_valid
from xrayscatter.schema import FEATURE_SPEC, decode_image_and_mask, decode_resized, parse_example, resized_side

CENTRE_JITTER = 0.03  # σ of the noise on the true beam centre given to the detail branch (image sides)
BEAM_OFF = ATTRIBUTE_INDEX["Beam Off Image"]


# --------------------------------------------------------------------------- pipeline
def shard_records(paths: list[str], training: bool, input_context) -> tf.data.Dataset:
    """Serialized records of this input pipeline's share of the shards, read in parallel (shuffled when training)."""
    return share_of_files(paths, input_context, lambda files: read_records(files, shuffle=training))


def beam_in_square(beam_xy: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Beam centre (x, y) px of an (H, W) image → (x, y) as a fraction of its centred padded square's side."""
    size = tf.maximum(height, width)
    offset = tf.cast(tf.stack([(size - width) // 2, (size - height) // 2]), tf.float32)
    return (beam_xy + offset) / tf.cast(size, tf.float32)


def _symmetry(image: tf.Tensor, beam: tf.Tensor, flip: tf.Tensor, turns: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A square image and its (2,) beam centre (fractions of its side) under a left-right flip (if ``flip``)
    followed by ``turns`` anticlockwise quarter turns (as ``tf.image.rot90``)."""
    x, y = beam[0], beam[1]
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    x = tf.where(flip, 1.0 - x, x)
    image = tf.image.rot90(image, turns)
    for turn in range(3):  # each quarter turn takes (x, y) to (y, 1 − x)
        x, y = tf.where(turn < turns, y, x), tf.where(turn < turns, 1.0 - x, y)
    return image, tf.stack([x, y])


def augment(image: tf.Tensor, beam: tf.Tensor, size: int, detail: tf.Tensor | None = None):
    """A random (size, size, C) crop of an (L, L, C) image, then one of the 8 flips/rotations of the square.

    Scattering patterns have no preferred orientation on the detector and every attribute survives
    a flip or a quarter turn; intensities are left alone because several attributes (strong/weak
    scattering, high background) are about them.

    Args:
        image: (L, L, C); beam: (2,) its beam centre (x, y) as fractions of L.
        detail: the same image at detail resolution (D, D, C): not cropped, but flipped and turned alike.

    Returns:
        (crop, beam centre as fractions of ``size``), and with ``detail`` also (detail, its beam centre).
    """
    load = tf.shape(image)[0]
    corner = tf.random.uniform((2,), 0, load - size + 1, dtype=tf.int32)  # (row, column)
    crop = tf.ensure_shape(image[corner[0]:corner[0] + size, corner[1]:corner[1] + size], (size, size, image.shape[-1]))
    shift = tf.cast(tf.stack([corner[1], corner[0]]), tf.float32)
    crop_beam = (beam * tf.cast(load, tf.float32) - shift) / size
    flip = tf.random.uniform(()) < 0.5
    turns = tf.random.uniform((), 0, 4, dtype=tf.int32)
    crop, crop_beam = _symmetry(crop, crop_beam, flip, turns)
    if detail is None:
        return crop, crop_beam
    detail, detail_beam = _symmetry(detail, beam, flip, turns)
    return crop, crop_beam, detail, detail_beam


def labels_of_crop(labels: tf.Tensor, crop_beam: tf.Tensor) -> tf.Tensor:
    """(17,) labels of an image → those of a crop whose beam centre is ``crop_beam`` (fractions of its side),
    for a network that sees only the crop.

    "Beam Off Image" is decided on the whole image; a crop that cuts the beam centre off shows the beam off
    *its* image, and is labelled so (on the default data, 13 % of the training crops of beam-on images lose
    the beam centre). With the beam-region branch the network also sees the whole image (the detail), whose
    label stands: there ``resnet.augment_crop = false`` keeps the two views one field, as at evaluation.
    A NaN centre (records without one) leaves the labels as they are.
    """
    off_crop = tf.reduce_any((crop_beam < 0.0) | (crop_beam > 1.0))
    is_beam_off = tf.range(tf.shape(labels)[0]) == BEAM_OFF
    return tf.where(is_beam_off & off_crop, tf.ones_like(labels), labels)


def inputs_from_counts(counts: tf.Tensor, settings):
    """(B, H, W) raw counts → the network's inputs at evaluation, for ``settings`` (the ``[resnet]`` section):
    the same graph as the evaluation pipeline, so a SavedModel sees what validation saw."""
    channels = tuple(settings.input_channels)
    if settings.beam_centre_weight <= 0:
        return model_input(counts, settings.input_size, channels)
    if not settings.detail_size:
        return {"image": model_input(counts, settings.input_size, channels)}
    return network_inputs(*image_and_detail(counts, settings.input_size, settings.detail_size, channels))


def image_and_detail(counts: tf.Tensor, size: int, detail_size: int, channels) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W) raw counts → the input channels at ``size`` and at ``detail_size`` px, both from the padded
    square of counts (the image is not resized from the detail: the ``filled`` channel is a resize of the
    measured pixels divided by a resize of the measured fraction, which fills a gap only at its own scale)."""
    log_square, valid_square = square_log_and_valid(counts)
    return (channels_from_square(log_square, valid_square, size, channels),
            channels_from_square(log_square, valid_square, detail_size, channels))


def network_inputs(image: tf.Tensor, detail: tf.Tensor) -> dict:
    """Input channels (B, S, S, C) and the same at detail resolution (B, D, D, C) → the network's inputs at
    evaluation: both, and no given centre (NaN: the network uses its own estimate)."""
    batch = tf.shape(detail)[0]
    return {"image": image, "detail": detail, "centre": tf.fill((batch, 2), float("nan"))}


def make_dataset(config, split: str, training: bool, input_context: tf.distribute.InputContext | None = None,
                 *, cache: bool | None = None, augmentation: bool | None = None,
                 paths: list[str] | None = None) -> tf.data.Dataset:
    """The input pipeline of one split.

    Args:
        config: PipelineConfig (``resnet`` section: input_size, batch_size (global),
            shuffle_buffer, cache, augment).
        split: "train", "val" or "test".
        training: shuffle, repeat forever, augment, drop the last partial batch, read
            in non-deterministic order. Otherwise one deterministic pass.
        input_context: from ``distribute_datasets_from_function``; batches per replica
            and shards the files per input pipeline. None: global batch, all files.
        cache: cache decoded, resized images in memory (default ``config.resnet.cache``).
        augmentation: random crops and flips when training (default ``config.resnet.augment``).
        paths: shard paths (default: the split's shards in the data set folder).

    With ``config.resnet.data_service`` set, the training pipeline (``training=True``) is run
    by the tf.data service workers of that dispatcher (:mod:`xrayscatter.distribute.data_service`).

    Returns:
        Dataset of (images (b, S, S, C) float32, targets): see the module docstring.
    """
    settings = config.resnet
    paths = shard_paths(config, split) if paths is None else list(paths)
    cache = settings.cache if cache is None else cache
    augmentation = training and (settings.augment if augmentation is None else augmentation)
    size = settings.input_size
    load_size = augment_load_size(settings, augment=augmentation)
    batch_size = (input_context.get_per_replica_batch_size(settings.batch_size)
                  if input_context is not None else settings.batch_size)

    channels = tuple(settings.input_channels)
    gaps_missing = settings.gaps_missing_fraction if training else 1.0
    beam_head = settings.beam_centre_weight > 0
    detail_size = settings.detail_size if beam_head else 0
    storage = tf.float16 if detail_size else tf.float32  # the cache holds the images and their detail
    # The image (at load size) and the detail are each made from the padded square of counts; or, when this
    # pipeline makes them at one side, from the record's stored ``resized`` square if it has that side
    # (``stored_view_size``: input channels made from it equal those from the counts up to its 16-bit rounding).
    sides = (load_size, detail_size) if detail_size else (load_size,)
    stored_side = load_size if set(sides) == {load_size} else 0

    # Graph code with explicit tf.cond, no Python branching on tensors: autograph's conversion of the whole
    # call tree would only cost seconds each time a pipeline is built (measured: a tenth of a smoke training).
    @tf.autograph.experimental.do_not_convert
    def decode(serialized):
        record = parse_example(serialized, decode=False)
        # Module gaps arrive as missing pixels from Pilatus-like files and as 0 counts from 16-bit
        # files: training shows both; evaluation shows them missing (mask is all 1 in v1 records).
        as_missing = tf.random.uniform(()) < gaps_missing if 0 < gaps_missing < 1 else tf.constant(gaps_missing > 0)

        def views(log_square, valid_square):
            """(1, N, N, 1) log counts and measured fraction → the input channels at each size, for the cache
            (made once where the image and the detail have one side)."""
            made = {side: tf.cast(channels_from_square(log_square, valid_square, side, channels)[0], storage)
                    for side in dict.fromkeys(sides)}
            return tuple(made[side] for side in sides)

        def from_counts():
            counts, mask = decode_image_and_mask(record)
            counts = tf.where((mask > 0.5) | ~as_missing, counts, -1.0)
            return views(*square_log_and_valid(counts[None]))

        def from_resized():  # the padded square stored at stored_side (schema.py, "resized"): no full decode
            log, gaps_missing_valid, gaps_counted_valid = decode_resized(record["resized"], stored_side)
            valid = tf.where(as_missing, gaps_missing_valid, gaps_counted_valid)
            return views(log[None], valid[None])

        made = (tf.cond(resized_side(record["resized"]) == stored_side, from_resized, from_counts) if stored_side
                else from_counts())
        beam = beam_in_square(record["beam"], tf.cast(record["height"], tf.int32), tf.cast(record["width"], tf.int32))
        return (tuple(made) if detail_size else made[0]), record["labels"], beam

    def beam_targets(labels, image_beam, detail_beam):
        """The targets with the beam-centre head: the backbone's estimate is in the image's frame; with
        ``beam_refine`` the refined one (``beam``) is in the detail's, and the backbone's is ``beam_coarse``."""
        if not settings.beam_refine:
            return {"attributes": labels, "beam": image_beam}
        return {"attributes": labels, "beam": detail_beam, "beam_coarse": image_beam}

    @tf.autograph.experimental.do_not_convert
    def example(source, labels, beam):
        """(network inputs, targets) from the decoded image (and detail): crops, flips and turns when augmenting."""
        if not detail_size:
            image = source
            if augmentation:
                image, beam = augment(image, beam, size)
                labels = labels_of_crop(labels, beam)
            return ({"image": image} if beam_head else image), (
                {"attributes": labels, "beam": beam} if beam_head else labels)
        image, detail = (tf.cast(x, tf.float32) for x in source)
        if augmentation:
            image, image_beam, detail, detail_beam = augment(image, beam, size, detail)
            # The true centre (jittered, as an estimate would be) while training; NaN where the beam is off
            # the image, so that the network learns to use its own estimate there, as it will at inference.
            on_image = tf.reduce_all((detail_beam >= 0.0) & (detail_beam <= 1.0))
            jittered = detail_beam + tf.random.normal((2,), stddev=CENTRE_JITTER)
            inputs = {"image": image, "detail": detail,
                      "centre": tf.where(on_image, jittered, tf.fill((2,), float("nan")))}
            return inputs, beam_targets(labels, image_beam, detail_beam)
        inputs = {k: v[0] for k, v in network_inputs(image[None], detail[None]).items()}
        return inputs, beam_targets(labels, beam, beam)

    dataset = shard_records(paths, training, input_context)
    if not training and input_context is None:
        # A known length lets Keras size its progress and predict loops without running dry.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(sum(count_records(p) for p in paths)))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(settings.shuffle_buffer, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(batch_size, drop_remainder=training,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training and settings.data_service:
        # Everything above (read, decode, cache, shuffle, augment, batch) runs on the tf.data
        # service workers; only the prefetch below runs here. Training only: evaluation and
        # prediction need one pass in file order (predictions line up with make_label_dataset)
        # with a known length, which parallel-epoch service jobs do not give, and they are a
        # small share of the decoding work.
        from xrayscatter.distribute.data_service import distribute

        dataset = distribute(dataset, settings.data_service)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _record_fields(config, split: str, paths: list[str] | None, names: tuple[str, ...], read) -> tf.data.Dataset:
    """``read(parsed fields)`` of every record of a split, in the order of ``make_dataset(config, split,
    training=False)``, parsing only the fields ``names`` (no image decoding), so it is cheap."""
    paths = shard_paths(config, split) if paths is None else list(paths)
    spec = {name: FEATURE_SPEC[name] for name in names}
    records = shard_records(paths, training=False, input_context=None)
    records = records.apply(tf.data.experimental.assert_cardinality(sum(count_records(p) for p in paths)))
    return records.map(lambda r: read(tf.io.parse_single_example(r, spec)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_label_dataset(config, split: str, paths: list[str] | None = None) -> tf.data.Dataset:
    """(17,) float32 labels of a split, in the order of ``make_dataset(config, split, training=False)``."""
    return _record_fields(config, split, paths, ("labels",), lambda record: tf.cast(record["labels"], tf.float32))


def make_beam_dataset(config, split: str, paths: list[str] | None = None) -> tf.data.Dataset:
    """(2,) float32 true beam centres of a split as fractions of each image's padded square (NaN where the
    record has none), in the order of ``make_dataset(config, split, training=False)``."""
    return _record_fields(config, split, paths, ("beam", "height", "width"), lambda record: beam_in_square(
        record["beam"], tf.cast(record["height"], tf.int32), tf.cast(record["width"], tf.int32)))
