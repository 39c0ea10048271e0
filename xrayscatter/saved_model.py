"""SavedModels on disk: versions, publishing, metadata, and the one export base.

Layout (as TF Serving expects)::

    saved_models/<model>/<version>/         version = 1, 2, 3 … (newest = largest integer)
        saved_model.pb, variables/
        assets.extra/metadata.json          what the model is: attributes, input, normalisation, config, versions

A version appears atomically (:func:`publish`): it is written to a temporary folder whose name is not
an integer, its metadata added, and the folder renamed; two exports at once never take one number.

The metadata also travels as constants readable after ``tf.saved_model.load`` without this package,
each a one-element list::

    loaded.metadata_json[0].numpy()      # the same JSON as assets.extra/metadata.json
    loaded.normalization[0].numpy()      # how raw counts are normalised inside the graph

:class:`SavedModelExport` is the export base (the pattern of TF Model Garden's ``export_base``): it
owns the metadata every model shares (:func:`xrayscatter.provenance.provenance`, the normalisation,
the metadata format version), the constants and the publishing. A model's export supplies only its own
metadata (``model_metadata``) and how its graph is written (``write``); :class:`KerasExport` does the
latter for Keras models from a list of signatures. Keras 3 models are written with
``keras.export.ExportArchive``: a Keras 3 model saved with plain ``tf.saved_model.save`` loads in
Python but not in the session-based loader of TF Serving and ``saved_model_cli run`` (keras#20095,
tensorflow/serving#2250). Non-batched metadata stays out of the signature outputs (TF Serving's row
format needs the batch dimension first).
"""

from __future__ import annotations

import abc
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from xrayscatter.errors import XrayscatterError
from xrayscatter.provenance import provenance

METADATA_FILE = Path("assets.extra") / "metadata.json"
METADATA_FORMAT_VERSION = 1
SAVED_MODEL_FILE = "saved_model.pb"


# --------------------------------------------------------------------------- versions
def versions(base_dir: str | Path, complete: bool = False) -> list[int]:
    """The integer version folders under ``base_dir``, ascending (empty if none).

    Args:
        complete: only the folders that hold a ``saved_model.pb``.
    """
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (not complete or (p / SAVED_MODEL_FILE).is_file()))


def newest_version(base_dir: str | Path) -> Path | None:
    """``base_dir/<largest integer>/`` holding a ``saved_model.pb``, or None."""
    found = versions(base_dir, complete=True)
    return Path(base_dir) / str(found[-1]) if found else None


def latest_saved_model(base_dir: str | Path, hint: str = "train a model first") -> Path:
    """:func:`newest_version`, required.

    Raises:
        XrayscatterError: there is none (the message ends with ``hint``).
    """
    found = newest_version(base_dir)
    if found is None:
        raise XrayscatterError(f"{base_dir}: no SavedModel version found ({hint})")
    return found


def publish(write: Callable[[Path], None], base_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write a SavedModel to a temporary folder, add its metadata, rename it to ``base_dir/<next version>``.

    Args:
        write: ``write(path)`` writes the SavedModel into the not yet existing folder ``path``.
        base_dir: the model's folder, e.g. ``saved_models/resnet``.
        metadata: JSON-able dict written to ``<version>/assets.extra/metadata.json`` (None: nothing).

    Returns:
        The published folder ``base_dir/<version>``.

    A reader (TF Serving polls the folder) never sees a half-written version: the temporary folder's
    name is not an integer and the rename is atomic. A rename onto an existing version fails and the
    next number is tried.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    temporary = base_dir / f".tmp-export-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write(temporary)
        if metadata is not None:
            target = temporary / METADATA_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        for _attempt in range(100):
            found = versions(base_dir)
            final = base_dir / str((found[-1] if found else 0) + 1)
            try:
                os.rename(temporary, final)  # fails if `final` exists and is not empty
                return final
            except OSError:
                if not final.exists():
                    raise
        raise XrayscatterError(f"{base_dir}: could not find a free version number")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def read_metadata(model_dir: str | Path, required: bool = True) -> dict:
    """``<model_dir>/assets.extra/metadata.json`` as a dict.

    Args:
        required: a SavedModel without the file is an error; otherwise ``{}`` (a model from elsewhere).

    Raises:
        XrayscatterError: ``model_dir`` holds no SavedModel; the file is missing (when ``required``) or unreadable.
    """
    model_dir = Path(model_dir)
    if not (model_dir / SAVED_MODEL_FILE).is_file():
        raise XrayscatterError(f"{model_dir}: not a SavedModel (no {SAVED_MODEL_FILE})")
    path = model_dir / METADATA_FILE
    if not path.is_file():
        if required:
            raise XrayscatterError(f"{path}: missing (not a SavedModel written by xrayscatter)")
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise XrayscatterError(f"{path}: unreadable model metadata ({e})") from None


# --------------------------------------------------------------------------- the export base
class SavedModelExport(abc.ABC):
    """One model's export: shared metadata and constants here, its own metadata and graph in a subclass.

    Subclasses set ``model`` (the folder name under ``saved_models/``) and implement
    :meth:`model_metadata` and :meth:`write`; they may add :meth:`constants`.

    Args:
        config: the PipelineConfig the model was trained with (it travels inside).
        output_dir: the model's folder of versions (default: :meth:`default_output_dir`).
        extra_metadata: more metadata (thresholds, hold-out results, training record ...).
    """

    model = ""

    def __init__(self, config, output_dir: str | Path | None = None, extra_metadata: dict | None = None):
        self.config = config
        self.output_dir = Path(output_dir or self.default_output_dir())
        self.extra_metadata = dict(extra_metadata or {})

    def default_output_dir(self) -> str:
        return getattr(self.config, self.model).output_dir

    @abc.abstractmethod
    def model_metadata(self) -> dict:
        """What this model adds to the metadata (signatures, input, vocabulary ...)."""

    def metadata(self) -> dict:
        """Shared fields (model, format version, normalisation, provenance), the model's own, then the extras."""
        from xrayscatter.normalization import NORMALIZATION_DESCRIPTION

        metadata = {"model": self.model, "format_version": METADATA_FORMAT_VERSION,
                    "normalization": NORMALIZATION_DESCRIPTION, **provenance(self.config)}
        metadata.update(self.model_metadata())
        metadata.update(self.extra_metadata)
        return metadata

    def constants(self, metadata: dict) -> dict:
        """Name → str, int or list of str, stored as one-element variable lists readable after loading."""
        return {"metadata_json": json.dumps(metadata, sort_keys=True), "normalization": metadata["normalization"]}

    @abc.abstractmethod
    def write(self, path: Path, metadata: dict) -> None:
        """Write the SavedModel into the not yet existing folder ``path``."""

    def export(self) -> Path:
        """Publish the next version; returns its folder."""
        metadata = self.metadata()
        return publish(lambda path: self.write(path, metadata), self.output_dir, metadata)


def constant_variables(constants: dict) -> dict:
    """Constants → {name: [tf.Variable]} (int → int32, str or list of str → string)."""
    import tensorflow as tf

    return {name: [tf.Variable(value, trainable=False, name=name,
                               dtype=tf.int32 if isinstance(value, int) else tf.string)]
            for name, value in constants.items()}


class KerasExport(SavedModelExport):
    """An export of Keras models through ``keras.export.ExportArchive``.

    Subclasses implement :meth:`tracked` (the Keras model whose variables the archive holds) and
    :meth:`signatures` (``[(name, function, input_signature)]``; the first is also ``serving_default``
    unless one is named so).
    """

    @abc.abstractmethod
    def tracked(self):
        """The Keras model whose variables the archive holds."""

    @abc.abstractmethod
    def signatures(self) -> list[tuple[str, Callable, list]]:
        """``[(name, function, input_signature)]``, the serving signatures in order."""

    def archive(self, metadata: dict):
        """The ExportArchive with the signatures and the constants."""
        import keras

        archive = keras.export.ExportArchive()
        archive.track(self.tracked())
        for name, function, input_signature in self.signatures():
            archive.add_endpoint(name, function, input_signature=input_signature)
        for name, variables in constant_variables(self.constants(metadata)).items():
            archive.add_variable_collection(name, variables)
        return archive

    def write(self, path: Path, metadata: dict) -> None:
        self.archive(metadata).write_out(str(path), verbose=False)
