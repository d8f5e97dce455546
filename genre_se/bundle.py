"""The model bundle: one directory with everything ``genre-se predict`` needs.

Layout::

    <bundle>/model.keras   the Keras model, input normalisation included (a Standardize layer)
    <bundle>/bundle.json   format_version, labels (output order), features, model_config,
                           genre_se_version, created, extra

Optional, written by :func:`genre_se.litert.export_litert` (``genre-se export``, and the train stage):
``model.tflite`` (the same network for the LiteRT runtime), ``frontend.npz`` (the mel filter bank and
window) and ``litert.json`` (what was exported from which ``model.keras``, written last). They let
``genre-se predict`` run without importing TensorFlow or librosa; a bundle without them is still a complete
format-version-1 bundle and is served by Keras. The format version stays 1 because nothing a version-1
reader needs changed: older readers ignore the extra files, and this reader accepts bundles without them.

The feature parameters travel with the model so a prediction can never use features the model was not
trained on. A bundle is written into a temporary sibling directory and swapped in by rename, so a reader
sees the old bundle or the new one, never half of one. It is loaded with Keras safe mode on (no
deserialised Python code) and every problem becomes a :class:`~genre_se.errors.ModelError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .config import FeatureConfig, ModelConfig, from_dict
from .errors import ConfigError, ModelError
from .fileio import atomic_dir, read_json_object

if TYPE_CHECKING:  # Keras (and TensorFlow) are imported only when a Keras model is loaded or saved
    import keras

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"


@dataclass(kw_only=True)
class BundleRecord:
    """What every loaded bundle records beside its model, whichever runtime serves it (Keras here, LiteRT
    in :class:`genre_se.litert.LiteRTBundle`): labels in output order and the parameters it was trained with."""

    labels: list[str]
    features: dict
    model_config: dict
    extra: dict = field(default_factory=dict)
    path: Path | None = None
    genre_se_version: str | None = None
    created: str | None = None

    @staticmethod
    def fields_from(meta: dict, labels: list[str], root: Path) -> dict:
        """The record's fields from a bundle.json ``meta`` (labels already checked against the model)."""
        return {
            "labels": list(labels),
            "features": meta["features"],
            "model_config": meta["model_config"],
            "extra": meta.get("extra", {}),
            "path": root,
            "genre_se_version": meta.get("genre_se_version"),
            "created": meta.get("created"),
        }

    @property
    def feature_config(self) -> FeatureConfig:
        """The feature parameters as a validated :class:`FeatureConfig`."""
        return from_dict(FeatureConfig, self.features, "features")


@dataclass(kw_only=True)
class ModelBundle(BundleRecord):
    """A loaded bundle served by Keras: the model plus its :class:`BundleRecord`."""

    model: keras.Model

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input segment, ``(n_mels, frames, channels)``."""
        return tuple(self.model.inputs[0].shape[1:])

    @property
    def normalisation(self) -> tuple[float, float] | None:
        """``(mean, std)`` the model standardises its input with, or None if it has no Standardize layer."""
        from .model import Standardize

        for layer in self.model.layers:
            if isinstance(layer, Standardize):
                return layer.mean, layer.std
        return None


# --------------------------------------------------------------------------------------------------
# Saving


def _config_dict(value: Any, cls: type, key: str) -> dict:
    """Validate a config given as a dataclass or a mapping and return it as a plain dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return dataclasses.asdict(from_dict(cls, value, key))


def _output_size(model: keras.Model, where: str) -> int:
    if len(model.outputs) != 1:
        n_outputs = len(model.outputs)
        raise ModelError(f"{where}: the model must have one output (the genre softmax), has {n_outputs}")
    return int(model.outputs[0].shape[-1])


def _check_labels(labels: Any, n_outputs: int, where: str) -> list[str]:
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x for x in labels):
        raise ModelError(f"{where}: labels must be a list of non-empty strings, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{where}: labels have duplicates: {list(labels)}")
    if len(labels) != n_outputs:
        raise ModelError(f"{where}: {len(labels)} labels but the model outputs {n_outputs} classes")
    return list(labels)


def _check_replaceable(target: Path) -> None:
    from .fileio import check_replaceable

    check_replaceable(target, META_FILE, "a model bundle", ModelError)


def _without_optimizer(model: keras.Model) -> keras.Model:
    """An uncompiled copy with the same weights: a bundle serves predictions, so the optimizer's moments
    (twice the model's size with Adam) would only make it three times larger. Training resumes from its own
    state folder, never from a bundle."""
    import keras

    if getattr(model, "optimizer", None) is None:
        return model
    clone = keras.Model.from_config(model.get_config())  # clone_model would copy the compiled optimizer too
    clone.set_weights(model.get_weights())
    return clone


def _save_keras_model(model: keras.Model, path: Path) -> None:
    try:
        _without_optimizer(model).save(str(path))
    except OSError:
        raise
    except Exception as exc:  # Keras raises ValueError/TypeError/NotImplementedError for unsavable models
        raise ModelError(f"{path}: the model cannot be saved ({type(exc).__name__}: {exc})") from exc


def save_bundle(
    bundle_dir: str | Path,
    model: keras.Model,
    labels: list[str],
    features: FeatureConfig | dict,
    model_config: ModelConfig | dict,
    extra: dict | None = None,
    write_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a bundle directory atomically and return its path.

    Parameters
    ----------
    bundle_dir : path
        The bundle directory; an existing bundle there is replaced, anything else is refused.
    model : keras.Model
        The classifier (with its Standardize layer, so the bundle is complete).
    labels : list of str
        Genre names in the model's output order.
    features, model_config : dataclass or dict
        The parameters the model was trained with; validated before anything is written.
    extra : dict, optional
        JSON-serialisable extras (training metrics, split sizes, ...).
    write_files : callable, optional
        Writes further files (e.g. the fusion SVM's ``svm.npz``) into the staging directory it is given, so
        they appear together with the model or not at all.
    """
    target = Path(bundle_dir)
    meta = {
        "format_version": FORMAT_VERSION,
        "labels": _check_labels(labels, _output_size(model, str(target)), str(target)),
        "features": _config_dict(features, FeatureConfig, "features"),
        "model_config": _config_dict(model_config, ModelConfig, "model"),
        "genre_se_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": {} if extra is None else extra,
    }
    if not isinstance(meta["extra"], dict):
        raise ModelError(f"{target}: extra must be a dict, got {type(extra).__name__}")
    try:
        meta_text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{target}: bundle metadata is not JSON-serialisable ({exc})") from None
    _check_replaceable(target)
    try:
        with atomic_dir(target) as staging:
            _save_keras_model(model, staging / MODEL_FILE)
            (staging / META_FILE).write_text(meta_text, encoding="utf-8")
            if write_files is not None:
                write_files(staging)
    except OSError as exc:
        raise ModelError(f"{target}: cannot write the model bundle ({exc})") from exc
    return target


# --------------------------------------------------------------------------------------------------
# Loading


def _read_meta(meta_path: Path) -> dict:
    """Read and check ``bundle.json``: JSON object, supported format version, well-typed fields."""
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: missing; not a genre-se model bundle")
    meta = read_json_object(meta_path, ModelError)
    if "format_version" not in meta:
        raise ModelError(f"{meta_path}: no format_version; not a genre-se model bundle")
    version = meta["format_version"]
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path}: format_version {version!r} is not supported "
            f"(this genre-se {__version__} reads format_version {FORMAT_VERSION})"
        )
    for key in ("features", "model_config"):
        if not isinstance(meta.get(key), dict):
            raise ModelError(f"{meta_path}: {key} must be a JSON object, got {meta.get(key)!r}")
    try:
        from_dict(FeatureConfig, meta["features"], "features")
        from_dict(ModelConfig, meta["model_config"], "model")
    except ConfigError as exc:
        raise ModelError(f"{meta_path}: {exc}") from None
    if not isinstance(meta.get("extra", {}), dict):
        raise ModelError(f"{meta_path}: extra must be a JSON object")
    return meta


def read_bundle_meta(bundle_dir: str | Path) -> dict:
    """The checked ``bundle.json`` of a bundle directory, without loading (or importing) Keras."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise ModelError(
            f"{root}: model bundle not found (expected a directory with {META_FILE} and {MODEL_FILE})"
        )
    return _read_meta(root / META_FILE)


def load_bundle(bundle_dir: str | Path) -> ModelBundle:
    """Load and check a bundle written by :func:`save_bundle`; every problem raises ModelError."""
    root = Path(bundle_dir)
    meta = read_bundle_meta(root)
    meta_path = root / META_FILE
    model_path = root / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"{model_path}: missing; the model bundle is incomplete")
    import keras

    from .model import Standardize  # noqa: F401  (registers the genre_se layers for safe-mode loading)

    try:
        model = keras.saving.load_model(str(model_path), safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types (zip, h5, ValueError, ...) for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        problem = f"{type(exc).__name__}: {reason}"
        raise ModelError(f"{model_path}: cannot load the Keras model ({problem})") from exc
    labels = _check_labels(meta.get("labels"), _output_size(model, str(model_path)), str(meta_path))
    return ModelBundle(model=model, **BundleRecord.fields_from(meta, labels, root))
