"""Prediction and embedding with a trained model bundle: the serving end of the pipeline.

:class:`GenreClassifier` loads a bundle once and walks the same road as training: audio -> the bundle's
:class:`~genre_se.config.FeatureConfig` -> :func:`genre_se.features.iter_segment_batches` -> the model ->
mean of segment probabilities (:func:`genre_se.metrics.aggregate_clips`, the evaluate stage's rule). No
feature parameter is read from anywhere but the bundle, so serving cannot drift from training.

Two runtimes serve a bundle: its LiteRT export when it has one (:mod:`genre_se.litert`: no TensorFlow,
Keras or librosa is imported, so a cold ``genre-se predict`` starts in well under a second), else the Keras
model. Both see the same segments and give the same probabilities within float rounding (tested).

Files are processed as a stream: a background thread decodes audio and computes segment batches into a
bounded queue while the main thread runs the model, so an hour-long file costs the memory of a few
batches and decoding overlaps with inference. Only the per-segment outputs (a few numbers per segment)
are kept for a file. With ``max_segments`` a long file is not streamed at all: only windows around a
spread of its segments are decoded (:func:`genre_se.features.iter_selected_segments`), and near-silent
segments are left out of the file's distribution (``silence_db``).

Turning results into text and files (the CLI's table/JSON/CSV, embedding files) is :mod:`genre_se.outputs`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .config import FeatureConfig
from .errors import AudioError, ConfigError, GenreSEError, ModelError
from .fileio import file_sha1
from .results import Embedding, Failure, Prediction, audible, check_top_k, rank_genres  # noqa: F401 (re-exported)

__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "DEFAULT_BUNDLE",
    "Embedding",
    "Failure",
    "GenreClassifier",
    "POOLS",
    "Prediction",
    "expand_paths",
    "SHIPPED_BUNDLE",
    "locate_bundle",
    "resolve_bundle_path",
]

#: Where the DVC ``train`` stage writes the bundle (relative to the working directory).
DEFAULT_BUNDLE = Path("models") / "bundle"
#: The model shipped inside the package (51 of gtzan-mini's 71 GTZAN clips; MODEL.md): used when there is no other.
SHIPPED_BUNDLE = Path(__file__).resolve().parent / "pretrained" / "gtzan-mini"
#: Where :func:`locate_bundle` found the bundle, in words for the user.
BUNDLE_SOURCES = {
    "given": "the model given with --model",
    "pipeline": "the pipeline's latest model (models/bundle)",
    "shipped": "the shipped default model (trained on 51 of gtzan-mini's 71 GTZAN clips; see MODEL.md)",
}
#: Ways to turn segment probabilities into a clip distribution; "mean" is the evaluate stage's rule.
AGGREGATIONS = ("mean", "vote")
#: Embedding outputs: one pooled (mean) vector per file, or one vector per segment.
POOLS = ("mean", "none")
#: Runtimes: "auto" is the bundle's LiteRT export when it has one, else Keras.
BACKENDS = ("auto", "litert", "keras")
#: `genre-se predict` reads at most this many segments of a file, spread evenly over the whole of it (a
#: 30-s clip has 20 segments and is read whole; a 6-minute song costs about as much). 0: every segment.
DEFAULT_MAX_SEGMENTS = 24
#: A segment whose loudest frame is below this level (dB re full scale, see features.frame_loudness) is
#: near-silent and left out of the file's distribution. GTZAN's quietest segments are above -35 dB;
#: digital silence, 16-bit dither (-73 dB) and -80 dB noise are below.
DEFAULT_SILENCE_DB = -60.0

ProgressCallback = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------------
# Finding the model and the files


def locate_bundle(model: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The bundle to load and where it came from (a key of :data:`BUNDLE_SOURCES`).

    ``model`` if given; else the pipeline's ``models/bundle`` under the cwd; else the model shipped in the
    package. So ``pip install`` then ``genre-se predict song.mp3`` answers without training.

    Raises
    ------
    ModelError
        No path given, no ``models/bundle`` here and no shipped model, saying how to get one.
    """
    if model is not None:
        return Path(model), "given"
    if DEFAULT_BUNDLE.exists():
        return DEFAULT_BUNDLE, "pipeline"
    if (SHIPPED_BUNDLE / "bundle.json").is_file():
        return SHIPPED_BUNDLE, "shipped"
    raise ModelError(
        f"no model found: {DEFAULT_BUNDLE} does not exist in {Path.cwd()} and this installation ships none; "
        "train one with `dvc repro` (or `genre-se train`) or pass --model BUNDLE"
    )


def resolve_bundle_path(model: str | os.PathLike | None = None) -> Path:
    """The bundle to load (see :func:`locate_bundle`)."""
    return locate_bundle(model)[0]


def uses_litert(bundle_dir: str | os.PathLike, backend: str = "auto") -> bool:
    """Whether :meth:`GenreClassifier.load` serves this bundle with LiteRT (decided without importing it)."""
    if backend not in BACKENDS:
        raise ModelError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend == "litert"
    from .litert import has_litert_export

    return has_litert_export(bundle_dir)


def expand_paths(paths: Iterable[str | os.PathLike], extensions: Sequence[str] | None = None,
                 unreadable: list[AudioError] | None = None):
    """Files to process: files as given, folders searched recursively for audio extensions.

    Hidden files and folders (names starting with ``.``, e.g. macOS ``._song.mp3`` shadows) are skipped.
    A path that does not exist is kept, so it is reported as a failed file like any unreadable one.

    Parameters
    ----------
    unreadable : list, optional
        Receives an :class:`~genre_se.errors.AudioError` naming each folder that cannot be listed (no
        permission, an I/O error): the files in it were not searched, so the caller reports it as a failed
        input and goes on. Without it, the first such folder raises its error (never skipped unsaid).

    Returns
    -------
    files : list of str
        In argument order; each folder's files sorted.
    empty_folders : list of str
        Folders in which no audio file was found (one in which a folder could not be listed is reported as
        that, ``unreadable``, instead).
    """
    if extensions is None:
        from .audio import AUDIO_EXTENSIONS as extensions
    wanted = {ext.lower().lstrip(".") for ext in extensions}
    files: list[str] = []
    empty_folders: list[str] = []
    problems: list[AudioError] = [] if unreadable is None else unreadable

    def cannot_list(exc: OSError) -> None:
        folder = exc.filename if exc.filename is not None else path
        problem = AudioError(f"{os.fsdecode(folder)}: cannot read this folder ({exc.strerror or exc}); "
                             "its audio files were not searched")
        if unreadable is None:
            raise problem from exc
        problems.append(problem)

    for raw in paths:
        path = os.fspath(raw)
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = []
        reported = len(problems)
        for folder, subfolders, names in os.walk(path, onerror=cannot_list):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            found += [
                os.path.join(folder, name)
                for name in sorted(names)
                if not name.startswith(".") and name.rpartition(".")[2].lower() in wanted and "." in name
            ]
        if found:
            files += found
        elif len(problems) == reported:  # nothing found where a folder could not be read: that is the report
            empty_folders.append(path)
    return files, empty_folders


@dataclass
class _FileOutputs:
    """Raw model outputs of one source, before they become a Prediction or an Embedding."""

    path: str | None
    outputs: np.ndarray
    start_frames: np.ndarray
    n_frames: int
    duration_hint: float | None
    loudness: np.ndarray | None = None  # each segment's loudest frame, dB re full scale
    n_segments_in_file: int | None = None  # None: these are all of them
    header: object | None = None  # the file's audio.AudioInfo (None: an array, or no header could be read)


# --------------------------------------------------------------------------------------------------
# The decoding thread


_END = object()
_DONE = object()


@dataclass
class _Source:
    """One input: a file path, or a mono array already at the bundle's sample rate."""

    path: str | None
    signal: np.ndarray | None = None
    duration: float | None = None  # exact when known (arrays)


class _SegmentProducer:
    """Decodes sources into segment batches on a background thread, into a bounded queue.

    Items are ``(index, Segments)``, ``(index, (_END, duration_hint, n_segments_in_file, header))`` or
    ``(index, GenreSEError)``, then ``(None, _DONE)``. Closing the consumer's iteration stops the thread at
    its next put. With ``max_segments``, a source of known length with more segments than that gives only
    a spread of them, computed from windows of the signal, or, for a file that cannot seek, streamed but
    with only the spread its header's length gives sent on (``n_segments_in_file`` then says how many the
    whole source has; None: every segment was sent).
    """

    def __init__(self, sources: Sequence[_Source], cfg: FeatureConfig, batch_size: int, block_seconds: float,
                 depth: int, frontend=None, max_segments: int = 0):
        self._sources = sources
        self._cfg = cfg
        self._frontend = frontend
        self._batch_size = batch_size
        self._block_seconds = block_seconds
        self._max_segments = max_segments
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[tuple[int | None, object]]:
        thread = threading.Thread(target=self._work, name="genre-se-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = self._queue.get()
                if item[1] is _DONE:
                    return
                yield item
        finally:
            self._stop.set()
            thread.join()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for index, source in enumerate(self._sources):
                if not self._produce(index, source):
                    return
        finally:
            self._put((None, _DONE))

    def _produce(self, index: int, source: _Source) -> bool:
        """Queue one source's batches and its end marker (or its error); False if told to stop."""
        from .features import iter_segment_batches

        try:
            header = None if source.path is None else _header(source.path)
            hint = source.duration if source.path is None else _header_duration(header)
            with contextlib.ExitStack() as stack:
                batches, n_in_file, wanted = None, None, None
                if self._max_segments:
                    reader = stack.enter_context(_window_reader(source, self._cfg.sample_rate))
                    if reader is not None:
                        batches, n_in_file = self._spread(reader)
                    elif hint is not None:  # streamed: choose by the header's length, compute only those
                        wanted, n_in_file = self._spread_of(round(hint * self._cfg.sample_rate))
                if batches is None:
                    data = source.path if source.path is not None else source.signal
                    batches = iter_segment_batches(
                        data, self._cfg, batch_size=self._batch_size, block_seconds=self._block_seconds,
                        frontend=self._frontend, loudness=True, only_starts=wanted,
                    )
                for batch in batches:
                    if not self._put((index, batch)):
                        return False
            item = (index, (_END, hint, n_in_file, header))
        except GenreSEError as exc:
            item = (index, exc)
        except Exception as exc:  # a decoder/feature bug must fail this file, not hang or kill the batch
            where = source.path if source.path is not None else "array input"
            item = (index, AudioError(f"{where}: cannot compute features ({type(exc).__name__}: {exc})"))
        return self._put(item)

    def _spread_of(self, n_samples: int) -> tuple[np.ndarray | None, int | None]:
        """The start frames of ``max_segments`` segments spread over a signal of ``n_samples`` samples (at
        the model's rate) and how many segments it has; (None, None) when it has no more than that."""
        from .features import segment_start_frames, spread_indices

        starts = segment_start_frames(1 + int(n_samples) // self._cfg.hop_length, self._cfg)
        if len(starts) <= self._max_segments:
            return None, None
        return starts[spread_indices(len(starts), self._max_segments)], len(starts)

    def _spread(self, reader) -> tuple[Iterator | None, int | None]:
        """``max_segments`` segments spread over the source, read in windows, and how many it has; (None,
        None) when it has no more than that (then it is streamed whole, which reads no more)."""
        from .features import iter_selected_segments

        cfg = self._cfg
        n_frames = 1 + reader.n_samples // cfg.hop_length
        chosen, n_in_file = self._spread_of(reader.n_samples)
        if chosen is None:
            return None, None
        span = max(cfg.segment_frames, int(self._block_seconds * cfg.sample_rate / cfg.hop_length))
        batches = iter_selected_segments(reader.read, chosen, n_frames, cfg, batch_size=self._batch_size,
                                         span_frames=span, frontend=self._frontend)
        return batches, n_in_file


class _ArrayWindows:
    """Window reads of an in-memory signal (already at the bundle's rate), like audio.WindowReader."""

    def __init__(self, signal: np.ndarray):
        self._signal = np.asarray(signal, dtype=np.float32)
        self.n_samples = len(self._signal)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.n_samples)
        if hi > lo:
            out[lo - start : hi - start] = self._signal[lo:hi]
        return out


@contextlib.contextmanager
def _window_reader(source: _Source, sr: int):
    """A window reader for the source, or None when it can only be streamed (see audio.open_windows)."""
    if source.path is None:
        yield _ArrayWindows(source.signal)
        return
    from .audio import open_windows

    with open_windows(source.path, sr) as reader:
        yield reader


def _header(path: str):
    """The file's :class:`~genre_se.audio.AudioInfo` (None if its header cannot be read)."""
    from .audio import audio_info

    try:
        return audio_info(path)
    except GenreSEError:
        return None  # the decoding itself will report the problem


def _header_duration(header) -> float | None:
    """The duration of the audio the header says will decode (None if unknown); refined against the frame count
    later."""
    seconds = None if header is None else header.duration
    return seconds if seconds is not None and seconds > 0 else None


def _cut_short(raw: _FileOutputs, duration: float) -> tuple[bool, float | None]:
    """(truncated, the seconds the header declares when it is): the decoded audio ends short of the header's
    length by more than a codec's slack (:func:`genre_se.audio.cut_short`), in either reading mode: ``duration``
    is the stream's decoded length or the window reader's (where the data really ends), within one hop."""
    from .audio import cut_short

    if not cut_short(raw.header, duration):
        return False, None
    return True, float(raw.header.declared_duration)


# --------------------------------------------------------------------------------------------------
# The classifier


class GenreClassifier:
    """A loaded model bundle that predicts genres of files and arrays and extracts embeddings.

    Examples
    --------
    >>> clf = GenreClassifier.load("models/bundle")          # doctest: +SKIP
    >>> clf.predict("song.mp3").top(3)                         # doctest: +SKIP
    [('rock', 0.71), ('metal', 0.18), ('blues', 0.04)]

    Parameters
    ----------
    bundle : ModelBundle or LiteRTBundle
        From :func:`genre_se.bundle.load_bundle` (Keras) or :func:`genre_se.litert.load_litert_bundle`;
        its FeatureConfig defines the features.
    batch_size : int
        Segments per model call (and per queued batch).
    aggregate : {"mean", "vote"}
        Segment probabilities -> clip distribution. "mean" is what the evaluate stage scores.
    block_seconds : float
        Audio decoded per step; with ``batch_size`` it bounds the memory of a long file.
    prefetch : int
        Segment batches the decoding thread may prepare ahead of the model.
    uncertain_below : float, optional
        A prediction whose top probability is below this is marked uncertain; default: the bundle's
        ``extra.calibration.uncertain_below`` (``predict.uncertain_below`` at training), else 0.4.
    max_segments : int or None
        Predict from at most this many segments, spread evenly from the first to the last: a file of known
        length with more is read only in windows around them (a 6-minute song then costs about what a 30-s
        clip does); other files are streamed whole and the same spread is kept. 0 or None (the default
        here): every segment, as the evaluate stage; the CLI uses :data:`DEFAULT_MAX_SEGMENTS`. Embeddings
        always use every segment.
    silence_db : float or None
        Segments whose loudest frame is below this level (dB re full scale) are left out of the file's
        distribution (still listed, ``Prediction.segment_silent``) and out of the pooled embedding
        (``Embedding.pooled``; ``Embedding.segment_silent``); if every segment is, all are used
        (``Prediction.all_silent``). None: no segment is left out.

    fusion : bool
        Use the bundle's fusion SVM (``svm.npz``, ``model.fusion: svm``) when it has one: the file's answer is
        then the mean of the CNN's distribution and the SVM's (over up to 8 windows of 30 s), as the
        evaluate stage scores it. False: the CNN alone.
    embedding_svm : bool
        Use the bundle's SVM head on the embeddings (``embedding_svm.npz``, ``model.classifier: svm``) when it
        has one: the file's answer is then the head's distribution of the mean embedding of its segments (the
        near-silent ones left out), as the evaluate stage scores it; the segment probabilities (the timeline)
        stay the network's softmax. False: the softmax alone.

    The bundle's calibration temperature (``extra.calibration.temperature``, fitted on the validation split;
    1 for bundles without one) scales the distribution it was fitted on: with the fusion SVM the fused
    distribution, with the embedding SVM the head's (the segment probabilities are then the CNN's own, untempered).
    When the CNN's softmax answers alone (a bundle without either, or ``fusion=False`` / ``embedding_svm=False``)
    every segment's probabilities are scaled before aggregation by the softmax's own temperature
    (``extra.calibration.cnn_temperature``, fitted on the same clips). A bundle with a head or fusion written before
    that was recorded has none for its softmax: switched off, its softmax is uncalibrated (T = 1), never scaled by
    a temperature fitted on another distribution; :attr:`calibration_note` says so. ``temperature`` is the
    temperature applied to the answer.
    """

    def __init__(self, bundle, *, batch_size: int = 64, aggregate: str = "mean", block_seconds: float = 30.0,
                 prefetch: int = 4, uncertain_below: float | None = None, max_segments: int | None = 0,
                 silence_db: float | None = DEFAULT_SILENCE_DB, familiarity: bool = True, fusion: bool = True,
                 embedding_svm: bool = True):
        from .calibration import Calibration, check_threshold

        if aggregate not in AGGREGATIONS:
            raise ModelError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"batch_size must be an int >= 1, got {batch_size!r}")
        max_segments = 0 if max_segments is None else max_segments
        if isinstance(max_segments, bool) or not isinstance(max_segments, (int, np.integer)) or max_segments < 0:
            raise ModelError(f"max_segments must be an int >= 0 (0: every segment), got {max_segments!r}")
        if silence_db is not None and (isinstance(silence_db, bool) or not isinstance(silence_db, (int, float))
                                       or not np.isfinite(silence_db)):
            raise ModelError(f"silence_db must be a finite number of dB or None, got {silence_db!r}")
        # checked here: later, a bad value would fail every file of a batch as if the files were bad
        if (isinstance(block_seconds, bool) or not isinstance(block_seconds, (int, float))
                or not np.isfinite(block_seconds) or block_seconds <= 0):
            raise ModelError(f"block_seconds must be a positive number of seconds, got {block_seconds!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ModelError(f"prefetch must be an int >= 0, got {prefetch!r}")
        self.max_segments = int(max_segments)
        self.silence_db = None if silence_db is None else float(silence_db)
        self.bundle = bundle
        self.batch_size = batch_size
        self.aggregate = aggregate
        self.block_seconds = block_seconds
        self.prefetch = prefetch
        extra = getattr(bundle, "extra", None) or {}
        self.calibration = Calibration.from_dict(extra.get("calibration"), str(getattr(bundle, "path", "bundle")))
        self.uncertain_below = (self.calibration.uncertain_below if uncertain_below is None
                                else check_threshold(uncertain_below, "uncertain_below"))
        self._embedding_model = None
        self._genre_and_embedding = None
        self.familiarity = self._load_familiarity() if familiarity else None
        self.svm = self._load_svm() if fusion else None
        self.head = self._load_head() if embedding_svm else None
        self._check_input_shape()
        #: the temperature applied to the answer, and a note when the softmax answers without one of its own
        self.temperature, self.calibration_note = self._answer_temperature()

    def _answer_temperature(self) -> tuple[float, str | None]:
        """(T, note): the bundle's temperature when its head or fusion answers (fitted on that distribution),
        else the softmax's own (:meth:`~genre_se.calibration.Calibration.softmax_temperature`); T = 1 with a
        note for a bundle that records none for its softmax and whose temperature was fitted on another."""
        calibration = self.calibration
        if self.head is not None or self.svm is not None:
            return calibration.temperature, None
        temperature = calibration.softmax_temperature(self._bundle_has_head())
        if temperature is not None:
            return temperature, None
        fusion = self._bundle_has("fusion")
        kind, command = ("fused distribution", "fusion") if fusion else ("SVM head's distribution", "classifier")
        path = getattr(self.bundle, "path", None)
        where = str(path) if path is not None else "the bundle"
        return 1.0, (f"{where}: its temperature ({calibration.temperature:.3g}) was fitted on the {kind} and it "
                     f"records none for the softmax alone, so the softmax's probabilities are uncalibrated "
                     f"(T = 1); retrain, or rerun genre-se {command} on it, to record the softmax's own")

    def _bundle_has(self, kind: str) -> bool:
        """Whether the bundle has the fusion SVM (``kind`` "fusion") or the embedding SVM ("classifier"), loaded
        or not: its model config says so or the file is there."""
        from .embedding_svm import EMBEDDING_SVM_FILE
        from .fusion import FUSION_FILE

        config = getattr(self.bundle, "model_config", None) or {}
        root = getattr(self.bundle, "path", None)
        name = FUSION_FILE if kind == "fusion" else EMBEDDING_SVM_FILE
        return config.get(kind) == "svm" or (root is not None and (Path(root) / name).is_file())

    def _bundle_has_head(self) -> bool:
        return self._bundle_has("fusion") or self._bundle_has("classifier")

    def _load_head(self):
        """The bundle's SVM head on the embeddings (:mod:`genre_se.embedding_svm`), None without one."""
        from .embedding_svm import EMBEDDING_SVM_FILE, load_embedding_svm

        root = getattr(self.bundle, "path", None)
        if root is None or not (Path(root) / EMBEDDING_SVM_FILE).is_file():
            return None
        return load_embedding_svm(root, self.labels)

    def _load_svm(self):
        """The bundle's fusion SVM (:mod:`genre_se.fusion`; ``model.fusion: svm``), None without one."""
        from .fusion import FUSION_FILE, load_svm

        root = getattr(self.bundle, "path", None)
        if root is None or not (Path(root) / FUSION_FILE).is_file():
            return None
        return load_svm(root, self.labels)

    def _load_familiarity(self):
        """The bundle's :class:`~genre_se.familiarity.Familiarity` (None without one), checked against its model."""
        from .familiarity import FAMILIARITY_FILE, load_familiarity

        root = getattr(self.bundle, "path", None)
        if root is None or not (Path(root) / FAMILIARITY_FILE).is_file():
            return None
        return load_familiarity(root, self._model_sha1())

    def _model_sha1(self) -> str | None:
        """SHA-1 of the bundle's ``model.keras`` (None without one), hashed once per classifier."""
        if not hasattr(self, "_model_sha1_cache"):
            sha1 = getattr(self.bundle, "model_sha1", None)  # a LiteRT bundle checked it on load
            model_file = None if self.bundle.path is None else Path(self.bundle.path) / "model.keras"
            if sha1 is None and model_file is not None and model_file.is_file():
                sha1 = file_sha1(model_file)
            self._model_sha1_cache = sha1
        return self._model_sha1_cache

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, *, backend: str = "auto", threads: int | None = None, **kwargs
    ) -> "GenreClassifier":
        """Load a bundle (default: ``models/bundle`` under the cwd if it exists, else the model shipped in the
        package; :func:`locate_bundle`); see the class for ``kwargs``.

        Parameters
        ----------
        backend : {"auto", "litert", "keras"}
            "auto": the bundle's LiteRT export when it has one (fast start, no TensorFlow), else Keras.
        threads : int, optional
            LiteRT interpreter threads (default: the usable cores); Keras uses TensorFlow's own pool.
        """
        root = resolve_bundle_path(path)
        if uses_litert(root, backend):
            from .litert import load_litert_bundle

            return cls(load_litert_bundle(root, threads=threads), **kwargs)
        from .bundle import load_bundle

        return cls(load_bundle(root), **kwargs)

    def _check_input_shape(self) -> None:
        cfg = self.feature_config
        expected = (cfg.n_mels, cfg.segment_frames, 1)
        if tuple(self.bundle.input_shape) != expected:
            raise ModelError(
                f"{self.bundle.path}: the model takes segments of shape {tuple(self.bundle.input_shape)} but "
                f"the bundle's features give {expected}; the bundle is inconsistent"
            )

    # ------------------------------------------------------------------ properties

    @property
    def labels(self) -> list[str]:
        return list(self.bundle.labels)

    @property
    def feature_config(self) -> FeatureConfig:
        return self.bundle.feature_config

    @property
    def path(self) -> Path | None:
        return self.bundle.path

    @property
    def runtime(self) -> str:
        """The runtime serving the bundle: "litert" (its export) or "keras"."""
        return getattr(self.bundle, "runtime", "keras")

    def provenance(self) -> dict:
        """What produced an output: the bundle (path, checksum, labels, configs), the runtime and the
        feature parameters."""
        from . import __version__

        model_sha1 = self._model_sha1()
        runtime = {"name": self.runtime}
        export = getattr(self.bundle, "export", None)
        if export is not None:
            runtime["quantize"] = export.get("quantize")
        path = None if self.bundle.path is None else Path(self.bundle.path).resolve()
        return {
            "genre_se_version": __version__,
            "runtime": runtime,
            "bundle": {
                "path": None if path is None else str(path),
                "shipped": path is not None and path == SHIPPED_BUNDLE,
                "model_sha1": model_sha1,
                "created": self.bundle.created,
                "genre_se_version": self.bundle.genre_se_version,
                "labels": self.labels,
                "model_config": self.bundle.model_config,
            },
            "features": dict(self.bundle.features),
            "aggregate": self.aggregate,
            "max_segments": self.max_segments,
            "silence_db": self.silence_db,
            # the temperature applied to the answer (the head's, the fusion's or the softmax's own)
            "calibration": {"temperature": self.temperature,
                            "fit_on": None if self.calibration_note is not None else self.calibration.fit_on,
                            "uncertain_below": self.uncertain_below,
                            **({} if self.calibration_note is None else {"note": self.calibration_note})},
            "familiarity": None if self.familiarity is None else self.familiarity.record(),
            "fusion": None if self.svm is None else {"kind": "svm", "n_parameters": self.svm.n_parameters,
                                                     "max_windows": self.svm.max_windows},
            "classifier": ({"kind": "softmax"} if self.head is None  # model.classifier
                           else {"kind": "svm", "n_parameters": self.head.n_parameters}),
        }

    # ------------------------------------------------------------------ prediction

    def predict(self, path: str | os.PathLike, *, on_progress: ProgressCallback | None = None) -> Prediction:
        """Genre distribution of one audio file (any format and length the audio module reads).

        Raises
        ------
        AudioError
            The file cannot be decoded.
        """
        return _single(self.predict_many([path], on_progress=on_progress))

    def predict_array(self, y: np.ndarray, sr: int) -> Prediction:
        """Genre distribution of a signal: 1-D, or 2-D (either channel layout) averaged to mono; resampled here."""
        return _single(self._predict_sources([self._array_source(y, sr)], None))

    def predict_many(
        self, paths: Iterable[str | os.PathLike], *, on_progress: ProgressCallback | None = None
    ) -> Iterator[Prediction | Failure]:
        """Predict files in order, yielding a :class:`Prediction` or a :class:`Failure` for each.

        Decoding and feature computation run on a background thread while the model works, and the
        model is loaded once. ``on_progress(path, seconds_done)`` is called after every batch.

        Raises
        ------
        ConfigError
            ``paths`` is one path rather than an iterable of them (use :meth:`predict`).
        """
        return self._predict_sources(_sources(paths), on_progress)

    def _predict_sources(self, sources, on_progress) -> Iterator[Prediction | Failure]:
        model = (self.bundle.model if self.familiarity is None and self.head is None
                 else self._genre_and_embedding_model())
        for source, result in zip(sources, self._run(sources, model, on_progress, max_segments=self.max_segments)):
            if isinstance(result, Failure) or self.svm is None:
                yield result if isinstance(result, Failure) else self._to_prediction(result)
                continue
            from .fusion import window_statistics

            try:  # the SVM reads its own windows of the file (or of the array)
                stats = window_statistics(source.path if source.path is not None else source.signal,
                                          self.feature_config.sample_rate, max_windows=self.svm.max_windows)
            except GenreSEError as exc:
                yield Failure(source.path, exc)
                continue
            yield self._to_prediction(result, self.svm.distribution(stats))

    def _genre_and_embedding_model(self):
        """One pass for both outputs: the softmax and the embedding side by side, ``(n, classes + dim)``."""
        if self._genre_and_embedding is None:
            if hasattr(self.bundle.model, "run"):  # LiteRT: the export computes both in one call
                from .litert import EMBEDDING_OUTPUT, GENRE_OUTPUT

                run = self.bundle.model.run

                def both(x, training=False):
                    out = run(x)
                    return np.concatenate([out[GENRE_OUTPUT], out[EMBEDDING_OUTPUT]], axis=1)
            else:
                from .litert import EMBEDDING_OUTPUT, GENRE_OUTPUT, _two_output_model

                two = _two_output_model(self.bundle.model)

                def both(x, training=False):
                    out = two(x, training=False)
                    return np.concatenate([np.asarray(out[GENRE_OUTPUT]), np.asarray(out[EMBEDDING_OUTPUT])], axis=1)
            self._genre_and_embedding = both
        return self._genre_and_embedding

    def _to_prediction(self, raw: _FileOutputs, svm_distribution: np.ndarray | None = None) -> Prediction:
        from .calibration import apply_temperature

        n_classes = len(self.labels)
        outputs, embeddings = raw.outputs[:, :n_classes], raw.outputs[:, n_classes:]
        fused = svm_distribution is not None
        parts = None
        # the temperature calibrates segments, aggregated (the softmax's own); or the distribution of a clip head
        # (fitted on it), the segment probabilities then the network's own
        probs = apply_temperature(outputs, 1.0 if fused or self.head is not None else self.temperature)
        starts, ends, duration = self._times(raw)
        silent = self._silent(raw)
        all_silent = bool(silent.all())
        clip = aggregate_segments(audible(probs, silent), self.aggregate)
        if self.head is not None:  # model.classifier: the SVM of the mean embedding of the same segments
            if embeddings.shape[1] != self.head.dim:
                raise ModelError(f"{self.bundle.path}: the embedding SVM expects embeddings of size "
                                 f"{self.head.dim}, the model gives {embeddings.shape[1]}; retrain")
            mean = audible(embeddings, silent).mean(axis=0, dtype=np.float64)
            parts = {"cnn": clip, "svm": self.head.probabilities(mean[None, :])[0]}
            clip = apply_temperature(parts["svm"][None, :], self.temperature)[0]
        elif fused:  # model.fusion: the mean with the SVM's distribution, then the temperature (fitted so)
            from .fusion import fuse

            parts = {"cnn": clip, "svm": np.asarray(svm_distribution, dtype=np.float64)}
            clip = apply_temperature(fuse(clip, svm_distribution)[None, :], self.temperature)[0]
        short = self._short(duration)
        truncated, declared = _cut_short(raw, duration)
        distance, unfamiliar = None, False
        if self.familiarity is not None:
            distance = self.familiarity.distance(audible(embeddings, silent))
            unfamiliar = distance > self.familiarity.threshold
        return Prediction(
            path=raw.path,
            labels=self.labels,
            probabilities=clip,
            segment_probabilities=probs,
            segment_starts=starts,
            segment_ends=ends,
            duration=duration,
            aggregate=self.aggregate,
            uncertain=bool(clip.max() < self.uncertain_below) or short or all_silent or unfamiliar,  # a guess
            short=short,
            segment_silent=silent,
            all_silent=all_silent,
            n_segments_in_file=raw.n_segments_in_file if raw.n_segments_in_file is not None else len(probs),
            distance=distance,
            unfamiliar=bool(unfamiliar),
            parts=parts,
            truncated=truncated,
            declared_duration=declared,
        )

    def _short(self, duration: float) -> bool:
        """Shorter than one segment: its one segment is mostly padding (``Prediction.short``)."""
        return bool(duration < self.feature_config.segment_seconds)

    def _silent(self, raw: _FileOutputs) -> np.ndarray:
        """Near-silent segments: loudest frame below ``silence_db`` (none when it is None)."""
        if self.silence_db is None or raw.loudness is None:
            return np.zeros(len(raw.outputs), dtype=bool)
        return np.asarray(raw.loudness) < self.silence_db

    # ------------------------------------------------------------------ embeddings

    def embed(self, path: str | os.PathLike, *, on_progress: ProgressCallback | None = None) -> Embedding:
        """Per-segment and mean-pooled embeddings (the classifier's input layer) of one file; the pooled vector
        leaves near-silent segments out, as :meth:`predict` does."""
        return _single(self.embed_many([path], on_progress=on_progress))

    def embed_array(self, y: np.ndarray, sr: int) -> Embedding:
        """Embeddings of a signal (1-D, or 2-D in either channel layout) at sample rate ``sr``."""
        return _single(self._embed_sources([self._array_source(y, sr)], None))

    def embed_many(
        self, paths: Iterable[str | os.PathLike], *, on_progress: ProgressCallback | None = None
    ) -> Iterator[Embedding | Failure]:
        """Embeddings of files in order, an :class:`Embedding` or a :class:`Failure` for each (``paths`` as in
        :meth:`predict_many`)."""
        return self._embed_sources(_sources(paths), on_progress)

    def _embed_sources(self, sources, on_progress) -> Iterator[Embedding | Failure]:
        if self._embedding_model is None:
            if hasattr(self.bundle.model, "embed"):  # LiteRT: the export has an embedding output

                def embed(x, training=False):
                    return self.bundle.model.embed(x)

                self._embedding_model = embed
            else:
                from .model import embedding_model

                self._embedding_model = embedding_model(self.bundle.model)
        for result in self._run(sources, self._embedding_model, on_progress):
            if isinstance(result, Failure):
                yield result
                continue
            starts, ends, duration = self._times(result)
            vectors = result.outputs.astype(np.float32, copy=False)
            silent = self._silent(result)
            pooled = audible(vectors, silent).mean(axis=0, dtype=np.float64).astype(np.float32)
            truncated, declared = _cut_short(result, duration)
            yield Embedding(result.path, vectors, pooled, starts, ends, duration, segment_silent=silent,
                            all_silent=bool(silent.all()), short=self._short(duration), truncated=truncated,
                            declared_duration=declared)

    # ------------------------------------------------------------------ the shared loop

    def _run(self, sources: Sequence[_Source], model, on_progress,
             max_segments: int = 0) -> Iterator[_FileOutputs | Failure]:
        """Stream every source's segment batches through ``model``; one result per source, in order.

        ``max_segments`` > 0: at most that many segments per source, spread over it (read in windows when
        the source allows it, else every segment is computed and the same spread kept).
        """
        cfg = self.feature_config
        producer = _SegmentProducer(sources, cfg, self.batch_size, self.block_seconds, self.prefetch,
                                    frontend=getattr(self.bundle, "frontend", None), max_segments=max_segments)
        outputs: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        loudness: list[np.ndarray] = []
        n_frames = 0
        for index, item in producer:
            source = sources[index]
            if isinstance(item, GenreSEError):
                outputs, starts, loudness, n_frames = [], [], [], 0
                yield Failure(source.path, item)
            elif isinstance(item, tuple) and item[0] is _END:
                raw = _FileOutputs(source.path, np.concatenate(outputs), np.concatenate(starts), n_frames, item[1],
                                   np.concatenate(loudness), item[2], item[3])
                yield _spread_outputs(raw, max_segments)
                outputs, starts, loudness, n_frames = [], [], [], 0
            else:
                outputs.append(np.asarray(model(item.data, training=False)))
                starts.append(item.start_frames)
                loudness.append(np.full(len(item), np.nan, np.float32) if item.loudness_db is None
                                else item.loudness_db)
                n_frames = max(n_frames, int(item.n_frames))
                if on_progress is not None:  # audio covered so far: the end of the latest segment
                    done = min(int(item.n_frames), int(item.start_frames.max()) + cfg.segment_frames)
                    on_progress(source.path, done * cfg.hop_length / cfg.sample_rate)

    def _times(self, raw: _FileOutputs) -> tuple[np.ndarray, np.ndarray, float]:
        """Segment start/end seconds and the duration, ends clipped to the duration."""
        from .features import segment_times

        cfg = self.feature_config
        duration = _duration(raw.n_frames, raw.duration_hint, cfg)
        starts, ends = segment_times(raw.start_frames, cfg)
        return starts, np.minimum(ends, duration), duration

    def _array_source(self, y: np.ndarray, sr: int) -> _Source:
        from .audio import resample

        mono = _as_mono(y)
        whole = isinstance(sr, (int, np.integer)) or (isinstance(sr, (float, np.floating)) and float(sr).is_integer())
        if isinstance(sr, bool) or not whole or sr <= 0:  # 22050.0 is a rate; 22050.5 is not
            raise AudioError(f"array input: sr must be a positive whole number of Hz, got {sr!r}")
        return _Source(None, resample(mono, int(sr), self.feature_config.sample_rate), len(mono) / int(sr))


# --------------------------------------------------------------------------------------------------
# Small pure helpers


def aggregate_segments(probs: np.ndarray, how: str = "mean") -> np.ndarray:
    """Clip distribution from segment probabilities (n_segments, n_classes).

    "mean" is the arithmetic of :func:`genre_se.metrics.aggregate_clips` for one clip (the same sum and
    division, so the same bits; tested), without importing pandas at prediction time; "vote" is the
    fraction of segments whose most probable genre is each genre.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if how == "mean":
        sums = np.zeros((1, probs.shape[1]))
        np.add.at(sums, np.zeros(len(probs), dtype=np.intp), probs)
        return sums[0] / len(probs)
    if how == "vote":
        return np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
    raise ModelError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


def _spread_outputs(raw: _FileOutputs, max_segments: int) -> _FileOutputs:
    """Keep ``max_segments`` of a streamed file's segments, spread as the window reads would choose them
    (the same indices into the same segment grid), so the answer does not depend on how it was read."""
    from .features import spread_indices

    if not max_segments or raw.n_segments_in_file is not None or len(raw.outputs) <= max_segments:
        return raw
    keep = spread_indices(len(raw.outputs), max_segments)
    return _FileOutputs(raw.path, raw.outputs[keep], raw.start_frames[keep], raw.n_frames, raw.duration_hint,
                        None if raw.loudness is None else raw.loudness[keep], len(raw.outputs), raw.header)


def _duration(n_frames: int, hint: float | None, cfg: FeatureConfig) -> float:
    """Seconds of audio: a signal with ``n_frames`` frames has (n_frames-1)*hop <= n < n_frames*hop samples.

    The header's (or the array's exact) duration is kept when it lies in that interval, else clamped to it
    (MP3 headers are estimates; a header can also lie).
    """
    low = (n_frames - 1) * cfg.hop_length / cfg.sample_rate
    high = n_frames * cfg.hop_length / cfg.sample_rate
    if hint is None:
        return low
    return float(min(max(hint, low), high))


def _sources(paths: Iterable[str | bytes | os.PathLike]) -> list[_Source]:
    """One :class:`_Source` per path, each path a str (a bytes path decoded as the file system does)."""
    if isinstance(paths, (str, bytes, os.PathLike)):  # a str would be taken one character at a time
        raise ConfigError(f"expected an iterable of paths, got one path ({os.fsdecode(paths)!r}); "
                          "use predict() or embed(), or give [path]")
    return [_Source(os.fsdecode(p)) for p in paths]


def _as_mono(y) -> np.ndarray:
    """1-D float32 from a 1-D or 2-D array; integer PCM is scaled to [-1, 1) (unsigned PCM, e.g. 8-bit WAV,
    is centred on its midpoint).

    A 2-D signal is (frames, channels) as soundfile reads it or (channels, frames) as ``librosa.load(...,
    mono=False)`` returns it: the shorter axis is the channels (a signal has far more frames than channels).
    """
    array = np.asarray(y)
    if array.ndim not in (1, 2):
        raise AudioError(f"array input: expected a 1-D, (frames, channels) or (channels, frames) signal, got "
                         f"shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise AudioError(f"array input: expected real sample values, got dtype {array.dtype}")
    if array.size == 0:  # before the channel mean, which would make an empty (2, 0) array NaN
        raise AudioError("array input: no samples")
    # integer PCM spans [min, max]: signed is centred on 0, unsigned (8-bit WAV: silence is 128) on its midpoint
    info = np.iinfo(array.dtype) if np.issubdtype(array.dtype, np.integer) else None
    scale = 1.0 if info is None else (int(info.max) - int(info.min) + 1) / 2
    offset = 0.0 if info is None else int(info.min) + scale
    if array.ndim == 2:
        channel_axis = 1 if array.shape[1] <= array.shape[0] else 0
        signal = array.mean(axis=channel_axis, dtype=np.float32)
    else:
        signal = array.astype(np.float32, copy=False)
    if info is not None:
        signal = (signal - np.float32(offset)) / np.float32(scale)
    from .audio import check_samples

    check_samples("array input", signal)
    return signal


def _single(results: Iterator):
    """The one result of a one-source run; a Failure is raised as its error."""
    (result,) = list(results)
    if isinstance(result, Failure):
        raise result.error
    return result


