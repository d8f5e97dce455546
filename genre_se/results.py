"""What serving answers: a file's genre distribution (:class:`Prediction`), its embeddings (:class:`Embedding`),
or why it could not be read (:class:`Failure`), with the ranking and silent-segment rules they share.

Plain data with numpy arrays, no model and no TensorFlow: :mod:`genre_se.inference` makes them, and
:mod:`genre_se.outputs` turns them into tables, JSON, CSV and files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, GenreSEError

__all__ = ["Embedding", "Failure", "Prediction", "audible", "check_top_k", "rank_genres", "silent_mask",
           "top_k_records"]



@dataclass
class Prediction:
    """The genre distribution of one file (or array), and its segments' distributions over time.

    Attributes
    ----------
    path : str or None
        The file; None for an array.
    labels : list of str
        Genre names in the order of the probability vectors.
    probabilities : ndarray (n_classes,)
        The clip-level distribution (segment probabilities aggregated with ``aggregate``).
    segment_probabilities : ndarray (n_segments, n_classes)
    segment_starts, segment_ends : ndarray (n_segments,)
        Seconds; ends are clipped to the duration (a short file's single segment is padded).
    duration : float
        Seconds of audio (exact for arrays and most formats; within one hop for MP3).
    aggregate : str
    uncertain : bool
        The top probability is below the classifier's ``uncertain_below``, or the audio is ``short``,
        ``all_silent`` or ``unfamiliar`` (the answer is a guess; the top-k still says what the model leans to).
    short : bool
        The audio is shorter than one segment, so its single segment is mostly padding: the model never
        saw such input in training, and its confidence on it means little (a 0.1-s blip can score 0.95).
    segment_silent : ndarray (n_segments,) of bool, optional
        Near-silent segments (loudest frame below the classifier's ``silence_db``): listed, but left out of
        ``probabilities`` unless every segment is silent (``all_silent``, then all of them are used).
    n_segments_in_file : int, optional
        Segments the whole file has; more than ``n_segments`` when ``max_segments`` chose a spread of them.
    distance : float, optional
        How far the file's embeddings lie from the training data (:mod:`genre_se.familiarity`); None when the
        bundle has no familiarity statistics.
    unfamiliar : bool
        ``distance`` is beyond the bundle's threshold (a quantile of held-out GTZAN clips' distances): the
        recording is unlike the training data, so the answer is marked ``uncertain`` too.
    parts : dict, optional
        With a fusion bundle (``model.fusion: svm``): the two distributions ``probabilities`` fuses, ``"cnn"``
        (the segments' aggregate, untempered) and ``"svm"`` (the mean over the SVM's windows); with an embedding
        SVM (``model.classifier: svm``) the softmax's aggregate (``"cnn"``) and the head's (``"svm"``), both
        untempered; None otherwise.
    truncated : bool
        The file is cut short (a partial download): the audio that decodes ends more than a codec's slack
        (:data:`genre_se.audio.TRUNCATION_SLACK_FRAMES`) before the length its header declares. The answer is
        from what is there (``duration``); it is not marked uncertain for it. Told for WAV, AU, AIFF and an MP3
        with a Xing/Info header; never for Ogg, an MP3 without one, or arrays (nothing declares a length); a
        FLAC cut short fails to decode instead.
    declared_duration : float, optional
        The seconds the header declares, when ``truncated``; None otherwise.
    """

    path: str | None
    labels: list[str]
    probabilities: np.ndarray
    segment_probabilities: np.ndarray
    segment_starts: np.ndarray
    segment_ends: np.ndarray
    duration: float
    aggregate: str = "mean"
    uncertain: bool = False
    short: bool = False
    segment_silent: np.ndarray | None = None
    all_silent: bool = False
    n_segments_in_file: int | None = None
    distance: float | None = None
    unfamiliar: bool = False
    parts: dict | None = None
    truncated: bool = False
    declared_duration: float | None = None

    @property
    def n_segments(self) -> int:
        return len(self.segment_probabilities)

    @property
    def silent(self) -> np.ndarray:
        """Which segments are near-silent (all False when silence was not measured)."""
        return silent_mask(self.segment_silent, self.n_segments)

    @property
    def genre(self) -> str:
        """The most probable genre."""
        return self.labels[int(self._ranking()[0])]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable genres with their probabilities, most probable first."""
        return [(self.labels[i], float(self.probabilities[i])) for i in self._ranking()[: check_top_k(k)]]

    def _ranking(self) -> np.ndarray:
        """Genre indices, most probable first, a tie broken by the mean of the segments aggregated."""
        used = audible(np.asarray(self.segment_probabilities, dtype=np.float64), self.silent)
        return rank_genres(self.probabilities, used.mean(axis=0) if len(used) else None)

    def distribution(self) -> dict[str, float]:
        """Every genre's probability, in label order."""
        return {label: float(p) for label, p in zip(self.labels, self.probabilities)}

    def timeline(self) -> list[dict]:
        """The most probable genre of each segment with its start/end seconds: how the genre moves."""
        best = self.segment_probabilities.argmax(axis=1)
        return [
            {
                "start": float(start),
                "end": float(end),
                "genre": self.labels[i],
                "probability": float(probs[i]),
                "silent": bool(silent),
            }
            for start, end, i, probs, silent in zip(
                self.segment_starts, self.segment_ends, best, self.segment_probabilities, self.silent
            )
        ]

    def to_dict(self, top_k: int = 3, timeline: bool = False) -> dict:
        """JSON-ready record: path, duration, n_segments, top-k, full distribution (and timeline)."""
        record = {
            "path": self.path,
            "duration": round(float(self.duration), 4),
            "n_segments": self.n_segments,
            "genre": self.genre,
            "uncertain": bool(self.uncertain),
            "short": bool(self.short),
            "top": [{"genre": g, "probability": p} for g, p in self.top(top_k)],
            "probabilities": self.distribution(),
            "silent_segments": int(self.silent.sum()),
            "all_silent": bool(self.all_silent),
            "truncated": bool(self.truncated),
        }
        if self.declared_duration is not None:  # cut short: what the header claims
            record["declared_duration"] = round(float(self.declared_duration), 4)
        if self.n_segments_in_file is not None and self.n_segments_in_file != self.n_segments:
            record["segments_in_file"] = int(self.n_segments_in_file)
        if self.distance is not None:
            record["unfamiliar"] = bool(self.unfamiliar)
            record["distance"] = round(float(self.distance), 3)
        if self.parts is not None:  # a fused answer: what each part said
            record["parts"] = {name: top_k_records(self.labels, dist, top_k) for name, dist in self.parts.items()}
        if timeline:
            record["timeline"] = self.timeline()
        return record


def rank_genres(probabilities: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Genre indices, most probable first; equal probabilities are ordered by ``tie_break`` (larger first),
    then by label order.

    With ``aggregate="vote"`` ties are common (5 segments of 10 say rock, 5 say metal), and the vote alone
    always answered the genre that sorts first; :class:`Prediction` breaks them with the mean of the segment
    probabilities it voted with.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    tie_break = np.zeros_like(probabilities) if tie_break is None else np.asarray(tie_break, dtype=np.float64)
    return np.lexsort((np.arange(len(probabilities)), -tie_break, -probabilities))


def silent_mask(segment_silent: np.ndarray | None, n_segments: int) -> np.ndarray:
    """``segment_silent`` as a bool array; all False when silence was not measured (None)."""
    if segment_silent is None:
        return np.zeros(n_segments, dtype=bool)
    return np.asarray(segment_silent, dtype=bool)


def audible(rows: np.ndarray, silent: np.ndarray) -> np.ndarray:
    """The rows of the segments that are not near-silent, or all of them when every one is (``all_silent``): what
    a file's distribution, the SVM head's and the familiarity check's mean embedding and the pooled embedding
    are computed from."""
    return rows if silent.all() else rows[~silent]


def check_top_k(k) -> int:
    """``k`` as an int >= 1, or a ConfigError: ``top(0)`` or ``top(-1)`` used to answer one genre silently."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"top_k must be a whole number >= 1, got {k!r}")
    return int(k)


def top_k_records(labels: list[str], probabilities: np.ndarray, k: int) -> list[dict]:
    """``[{"genre", "probability"}, ...]``: the ``k`` most probable, most probable first (ties: label order).

    ``k`` larger than the number of genres gives them all.
    """
    order = rank_genres(probabilities)[: check_top_k(k)]
    return [{"genre": labels[i], "probability": float(probabilities[i])} for i in order]


@dataclass
class Embedding:
    """Embeddings (the layer before the classifier) of one file: per segment and mean-pooled.

    Attributes
    ----------
    segments : ndarray (n_segments, dim) float32
    pooled : ndarray (dim,) float32, the mean over the segments that are not near-silent (over all of them
        when every one is, ``all_silent``): the vector an SVM head (``model.classifier: svm``) and the
        familiarity check of :meth:`GenreClassifier.predict` take
    segment_starts, segment_ends : ndarray (n_segments,) seconds
    segment_silent : ndarray (n_segments,) of bool, optional
        Near-silent segments (loudest frame below the classifier's ``silence_db``), as ``Prediction.segment_silent``.
    all_silent : bool
    short : bool
        The audio is shorter than one segment (the one segment is mostly padding), as ``Prediction.short``.
    truncated : bool
        The file is cut short (its header declares more than decodes), as ``Prediction.truncated``.
    declared_duration : float, optional
        The seconds the header declares, when ``truncated``; None otherwise.
    """

    path: str | None
    segments: np.ndarray
    pooled: np.ndarray
    segment_starts: np.ndarray
    segment_ends: np.ndarray
    duration: float
    segment_silent: np.ndarray | None = None
    all_silent: bool = False
    short: bool = False
    truncated: bool = False
    declared_duration: float | None = None

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def silent(self) -> np.ndarray:
        """Which segments are near-silent (all False when silence was not measured)."""
        return silent_mask(self.segment_silent, self.n_segments)

    @property
    def dim(self) -> int:
        return int(self.segments.shape[1])


@dataclass
class Failure:
    """A file that could not be processed; the batch goes on without it."""

    path: str | None
    error: GenreSEError

    @property
    def message(self) -> str:
        return str(self.error)
