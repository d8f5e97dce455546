"""The fast prediction path: a bundle's network exported for the LiteRT runtime, served without TensorFlow.

``genre-se predict`` with Keras pays for ``import tensorflow`` (seconds, ~600 MB) and librosa's first mel
filter bank (seconds, more on a fresh machine while numba compiles) before it computes anything. The export
writes three optional files into a bundle (see :mod:`genre_se.bundle`):

* ``model.tflite``: the trained network with two outputs, ``genre`` (the softmax) and ``embedding`` (the
  classifier's input), so ``predict`` and ``embed`` both run on it;
* ``frontend.npz``: the Hann window and mel filter bank of the bundle's feature parameters, so the features
  are computed with numpy alone (:class:`genre_se.features.MelFrontend`), bit for bit the same arrays;
* ``litert.json``: what was exported (quantisation, output names, the measured Keras/LiteRT difference) and
  the SHA-1 of the ``model.keras`` it came from, written last so its presence means the export is complete.

Serving (:func:`load_litert_bundle`) needs only numpy and ``ai-edge-litert`` (imported in ~0.1 s). An export
whose ``model.keras`` has since been replaced is refused, never silently served.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .bundle import BundleRecord
from .config import FeatureConfig, from_dict
from .errors import ModelError
from .fileio import file_sha1, read_json_object
from .quiet import native_stderr_silenced

__all__ = [
    "EXPORT_FILE",
    "FRONTEND_FILE",
    "LITERT_FILE",
    "QUANTIZATIONS",
    "LiteRTBundle",
    "LiteRTModel",
    "export_litert",
    "has_litert_export",
    "load_litert_bundle",
]

LITERT_FILE = "model.tflite"
FRONTEND_FILE = "frontend.npz"
EXPORT_FILE = "litert.json"
EXPORT_FORMAT = 1
#: "none": float32, equal to Keras within float rounding. "int8": dynamic-range int8 weights (about 4x
#: smaller and several times faster on CPUs with int8 dot products), probabilities within ~1e-2 of Keras.
QUANTIZATIONS = ("none", "int8")
#: The largest Keras/LiteRT difference in probabilities an export may show on its probe inputs.
PARITY_TOLERANCE = {"none": 1e-4, "int8": 0.05}
#: The same for the embedding (familiarity, the SVM head and `embed` read it), relative to its RMS on the probes.
EMBEDDING_PARITY_TOLERANCE = {"none": 1e-4, "int8": 0.1}
GENRE_OUTPUT = "genre"
EMBEDDING_OUTPUT = "embedding"


# --------------------------------------------------------------------------------------------------
# Small helpers


def usable_cores() -> int:
    """Cores this process may run on (affinity / cgroup cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def litert_available() -> bool:
    """Whether the LiteRT runtime (``ai-edge-litert``) is installed, without importing it."""
    try:
        return importlib.util.find_spec("ai_edge_litert") is not None
    except (ImportError, ValueError):
        return False


def has_litert_export(bundle_dir: str | Path) -> bool:
    """Whether a bundle carries a complete LiteRT export (its ``litert.json`` is written last) and the
    runtime is installed: the cheap test the CLI uses to decide whether TensorFlow is needed at all."""
    return (Path(bundle_dir) / EXPORT_FILE).is_file() and litert_available()


# --------------------------------------------------------------------------------------------------
# Running an exported model


class LiteRTModel:
    """A LiteRT interpreter over an exported bundle network with ``genre`` and ``embedding`` outputs.

    Called like the Keras model (``model(x, training=False)`` gives the probabilities), so the prediction
    loop does not care which runtime it drives. Segments are run one at a time: the interpreter keeps its
    batch-1 shape (no re-allocation), its activations stay in cache, and memory stays small; measured on
    2 cores, batch 1 is as fast as batch 64 in float32 and about 2.5x faster with int8 weights. An
    interpreter is not thread-safe, so calls are serialised.

    Parameters
    ----------
    path : path
        The ``.tflite`` file.
    threads : int, optional
        Interpreter threads; default: the usable cores.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(f"{path}: the LiteRT runtime is not installed (pip install ai-edge-litert)") from exc

        self.path = Path(path)
        self.threads = usable_cores() if threads is None else int(threads)
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
            inputs, outputs = _signature_details(self._interpreter)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: cannot load the LiteRT model ({exc})") from exc
        missing = {GENRE_OUTPUT, EMBEDDING_OUTPUT} - set(outputs)
        if len(inputs) != 1 or missing:
            raise ModelError(
                f"{self.path}: not a genre-se export (expected one input and outputs {GENRE_OUTPUT!r}, "
                f"{EMBEDDING_OUTPUT!r}; found inputs {sorted(inputs)}, outputs {sorted(outputs)})"
            )
        (detail,) = inputs.values()
        self._input = int(detail["index"])
        self._outputs = {name: int(outputs[name]["index"]) for name in (GENRE_OUTPUT, EMBEDDING_OUTPUT)}
        self.output_sizes = {name: int(outputs[name]["shape"][-1]) for name in self._outputs}
        self.input_shape = tuple(int(d) for d in detail["shape"][1:])
        self.n_classes = self.output_sizes[GENRE_OUTPUT]
        self._lock = threading.Lock()
        if int(detail["shape"][0]) != 1:
            self._interpreter.resize_tensor_input(self._input, (1, *self.input_shape))
        with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interpreter.allocate_tensors()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Both outputs for a batch ``(n, *input_shape)``: ``{"genre": (n, C), "embedding": (n, D)}``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape or len(x) == 0:
            raise ModelError(f"{self.path}: expects a batch of shape (n, {self.input_shape}), got {x.shape}")
        results = {name: np.empty((len(x), size), dtype=np.float32) for name, size in self.output_sizes.items()}
        with self._lock:
            for i in range(len(x)):
                self._interpreter.set_tensor(self._input, x[i : i + 1])
                self._interpreter.invoke()
                for name, index in self._outputs.items():
                    results[name][i] = self._interpreter.get_tensor(index)[0]
        return results

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Genre probabilities ``(n, n_classes)``; ``training`` exists for Keras-call compatibility."""
        return self.run(x)[GENRE_OUTPUT]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, dim)``, the input of the classifier layer."""
        return self.run(x)[EMBEDDING_OUTPUT]


def _signature_details(interpreter) -> tuple[dict, dict]:
    """Input and output details of the only signature, keyed by name ("spectrogram"; "genre", "embedding").

    The signature runner holds a reference to the interpreter's internals, which blocks a later resize
    (LiteRT checks reference counts), so it lives only inside this function.
    """
    runner = interpreter.get_signature_runner()
    return runner.get_input_details(), runner.get_output_details()


@dataclass(kw_only=True)
class LiteRTBundle(BundleRecord):
    """A bundle served by LiteRT: the same record as :class:`genre_se.bundle.ModelBundle`, with
    :class:`LiteRTModel` as ``model``, the stored mel front end and the export record."""

    model: LiteRTModel
    frontend: object  # genre_se.features.MelFrontend
    export: dict
    model_sha1: str
    runtime: str = "litert"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.model.input_shape


def _read_export_meta(root: Path) -> dict:
    path = root / EXPORT_FILE
    meta = read_json_object(path, ModelError)
    if meta.get("format") != EXPORT_FORMAT:
        raise ModelError(f"{path}: not a LiteRT export record of format {EXPORT_FORMAT}; run `genre-se export`")
    return meta


def _load_frontend(path: Path, cfg: FeatureConfig):
    """The stored window and filter bank, checked against the bundle's feature parameters."""
    from .features import MelFrontend

    try:
        with np.load(path, allow_pickle=False) as stored:
            window, basis, built_for = stored["window"], stored["basis"], json.loads(str(stored["config"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read the mel front end ({type(exc).__name__}: {exc})") from None
    wanted = _frontend_config(cfg)
    if built_for != wanted:
        raise ModelError(f"{path}: built for features {built_for}, but the bundle's features are {wanted}")
    try:
        return MelFrontend.from_arrays(window, basis, cfg)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _frontend_config(cfg: FeatureConfig) -> dict:
    """The feature parameters that determine the window and the filter bank."""
    return {"sample_rate": cfg.sample_rate, "n_fft": cfg.n_fft, "n_mels": cfg.n_mels, "fmin": cfg.fmin,
            "fmax": cfg.fmax}


def load_litert_bundle(bundle_dir: str | Path, *, threads: int | None = None) -> LiteRTBundle:
    """Load a bundle's LiteRT export (numpy and ai-edge-litert only; no TensorFlow, Keras or librosa).

    Raises
    ------
    ModelError
        No export, an incomplete or damaged one, or one made from a different ``model.keras`` (the
        message says to run ``genre-se export`` again).
    """
    from .bundle import META_FILE, MODEL_FILE, _check_labels, read_bundle_meta

    root = Path(bundle_dir)
    meta = read_bundle_meta(root)
    if not (root / EXPORT_FILE).is_file():
        raise ModelError(
            f"{root}: has no LiteRT export ({EXPORT_FILE}); create it with `genre-se export --model {root}`"
        )
    export = _read_export_meta(root)
    model_path = root / MODEL_FILE
    if not model_path.is_file():  # else reported below as "made from another model.keras"
        raise ModelError(f"{model_path}: missing; the model bundle is incomplete")
    model_sha1 = file_sha1(model_path)
    if model_sha1 != export.get("source_sha1"):
        raise ModelError(
            f"{root / EXPORT_FILE}: the export was made from another {MODEL_FILE} than the one in the bundle; "
            f"run `genre-se export --model {root}` again"
        )
    for name in (LITERT_FILE, FRONTEND_FILE):
        if not (root / name).is_file():
            raise ModelError(f"{root / name}: missing; the LiteRT export is incomplete (run `genre-se export`)")
    cfg = from_dict(FeatureConfig, meta["features"], "features")
    model = LiteRTModel(root / LITERT_FILE, threads=threads)
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) != model.n_classes:
        raise ModelError(
            f"{root / LITERT_FILE}: outputs {model.n_classes} classes but bundle.json has labels {labels!r}"
        )
    labels = _check_labels(labels, model.n_classes, str(root / META_FILE))  # names and duplicates, as Keras loads
    return LiteRTBundle(model=model, frontend=_load_frontend(root / FRONTEND_FILE, cfg), export=export,
                        model_sha1=model_sha1, **BundleRecord.fields_from(meta, labels, root))


# --------------------------------------------------------------------------------------------------
# Exporting (needs TensorFlow)


def _two_output_model(model):
    """The bundle's network with a second output, the embedding, sharing its weights."""
    import keras

    from .model import EMBEDDING_NAME

    try:
        embedding = model.get_layer(EMBEDDING_NAME).output
    except ValueError:
        raise ModelError(f"model {model.name!r} has no layer {EMBEDDING_NAME!r}; not a genre-se model") from None
    return keras.Model(model.inputs[0], {GENRE_OUTPUT: model.outputs[0], EMBEDDING_OUTPUT: embedding})


def _probe_inputs(bundle, n: int, seed: int) -> np.ndarray:
    """Random segments at the scale the model's input has in use.

    Without a front end: normal at the standardisation mean and std, which describe the input dB segments.
    With one (loudness normalisation, PCEN) those statistics describe the front end's *output*, not its
    input, so noise drawn at them is nothing like a log-mel segment (PCEN turns it into a near-constant map);
    the probes are then the bundle's own features of random coloured noise with tones, at random levels.
    """
    from .model import PCEN, LoudnessNormalize

    rng = np.random.default_rng(seed)
    if not any(isinstance(layer, (PCEN, LoudnessNormalize)) for layer in bundle.model.layers):
        mean, std = bundle.normalisation or (0.0, 1.0)
        return rng.normal(mean, std, size=(n, *bundle.input_shape)).astype(np.float32)
    from .features import extract_segments

    cfg = bundle.feature_config
    length = (cfg.segment_frames - 1) * cfg.hop_length  # exactly one segment of frames, no padding
    t = np.arange(length) / cfg.sample_rate
    probes = []
    for _ in range(n):
        spectrum = np.fft.rfft(rng.standard_normal(length))
        spectrum[1:] /= np.arange(1, spectrum.size) ** rng.uniform(0.0, 1.0)  # white .. brown
        y = np.fft.irfft(spectrum, length)
        y /= np.sqrt(np.mean(y**2)) + 1e-12
        for freq in rng.uniform(50.0, 0.4 * cfg.sample_rate, size=3):
            y += rng.uniform(0.0, 3.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        y *= 10 ** (rng.uniform(-50.0, -10.0) / 20) / np.sqrt(np.mean(y**2))
        probes.append(extract_segments(y.astype(np.float32), cfg).data[0])
    return np.stack(probes).astype(np.float32)


def _parity(keras_model, litert_model: LiteRTModel, probes: np.ndarray) -> tuple[dict[str, float], float]:
    """Largest absolute Keras/LiteRT difference of each output on the probe segments, and the embedding's over
    the RMS of the Keras embedding (its scale depends on the model)."""
    expected = {name: np.asarray(value) for name, value in keras_model(probes, training=False).items()}
    served = litert_model.run(probes)
    differences = {name: float(np.max(np.abs(served[name] - expected[name]))) for name in expected}
    rms = float(np.sqrt(np.mean(np.square(expected[EMBEDDING_OUTPUT].astype(np.float64)))))
    return differences, differences[EMBEDDING_OUTPUT] / max(rms, 1e-12)


def _write_tflite(model, target: Path, quantize: str) -> None:
    from .fileio import atomic_path

    options = {}
    if quantize == "int8":
        import tensorflow as tf

        options["optimizations"] = [tf.lite.Optimize.DEFAULT]  # dynamic-range: int8 weights
    with atomic_path(target, suffix=".tflite") as tmp, native_stderr_silenced():
        try:
            model.export(str(tmp), format="litert", verbose=False, **options)
        except Exception as exc:  # the converter raises many types; name the bundle, keep the cause
            raise ModelError(f"{target}: LiteRT conversion failed ({type(exc).__name__}: {exc})") from exc


def _write_frontend(cfg: FeatureConfig, target: Path) -> None:
    from .features import MelFrontend
    from .fileio import atomic_path

    frontend = MelFrontend.for_config(cfg)
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, window=frontend.window, basis=frontend.basis,
                 config=np.array(json.dumps(_frontend_config(cfg))))


def export_litert(bundle_dir: str | Path, *, quantize: str = "none", probe_segments: int = 8,
                  seed: int = 0) -> dict:
    """Write a bundle's LiteRT export (``model.tflite``, ``frontend.npz``, then ``litert.json``).

    The exported network is checked against Keras on ``probe_segments`` random segments before the
    export is recorded; a larger difference in probability than :data:`PARITY_TOLERANCE`, or in the embedding
    (relative to its RMS) than :data:`EMBEDDING_PARITY_TOLERANCE`, raises ModelError and leaves no
    ``litert.json`` (so the bundle keeps being served by Keras).

    Parameters
    ----------
    bundle_dir : path
        An existing bundle (``model.keras`` + ``bundle.json``); the files are added to it atomically.
    quantize : {"none", "int8"}
        See :data:`QUANTIZATIONS`.

    Returns
    -------
    dict
        The ``litert.json`` record (quantisation, parity on the probe inputs, file sizes).
    """
    from . import __version__
    from .bundle import MODEL_FILE, load_bundle
    from .fileio import write_json

    if quantize not in QUANTIZATIONS:
        raise ModelError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    root = Path(bundle_dir)
    bundle = load_bundle(root)
    try:
        (root / EXPORT_FILE).unlink(missing_ok=True)  # from here until the end the bundle is served by Keras
        source_sha1 = file_sha1(root / MODEL_FILE)
        two_outputs = _two_output_model(bundle.model)
        _write_tflite(two_outputs, root / LITERT_FILE, quantize)
        _write_frontend(bundle.feature_config, root / FRONTEND_FILE)
    except OSError as exc:
        raise ModelError(f"{root}: cannot write the LiteRT export ({exc})") from exc
    probes = _probe_inputs(bundle, probe_segments, seed)
    differences, embedding_relative = _parity(two_outputs, LiteRTModel(root / LITERT_FILE), probes)
    if not differences[GENRE_OUTPUT] <= PARITY_TOLERANCE[quantize]:
        raise ModelError(
            f"{root / LITERT_FILE}: the LiteRT model differs from Keras by {differences[GENRE_OUTPUT]:.3g} in "
            f"probability (tolerance {PARITY_TOLERANCE[quantize]:g}); the export is not used"
        )
    if not embedding_relative <= EMBEDDING_PARITY_TOLERANCE[quantize]:
        raise ModelError(
            f"{root / LITERT_FILE}: the LiteRT embedding differs from Keras by {embedding_relative:.3g} "
            f"of its RMS (tolerance {EMBEDDING_PARITY_TOLERANCE[quantize]:g}); the export is not used"
        )
    record = {
        "format": EXPORT_FORMAT,
        "runtime": "litert",
        "model_file": LITERT_FILE,
        "frontend_file": FRONTEND_FILE,
        "source_file": MODEL_FILE,
        "source_sha1": source_sha1,
        "quantize": quantize,
        "outputs": [GENRE_OUTPUT, EMBEDDING_OUTPUT],
        "parity": {"probe_segments": probe_segments, "max_abs_diff": differences,
                   "embedding_relative": embedding_relative},
        "bytes": {LITERT_FILE: (root / LITERT_FILE).stat().st_size, MODEL_FILE: (root / MODEL_FILE).stat().st_size},
        "genre_se_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_json(root / EXPORT_FILE, record)
    except OSError as exc:
        raise ModelError(f"{root / EXPORT_FILE}: cannot write ({exc})") from exc
    return record
