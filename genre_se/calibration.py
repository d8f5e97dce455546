"""Calibrated confidence: temperature scaling of the model's probabilities, and how well they are calibrated.

A network trained with cross-entropy on a small dataset is usually over-confident: a top probability of
0.9 is right less than 90 % of the time. Temperature scaling (Guo et al. 2017) divides the log-probabilities
by one number ``T`` fitted on held-out data; ``T > 1`` softens the distribution, ``T < 1`` sharpens it, and
the ranking of the genres (so every accuracy) never changes.

Users see clip/file-level distributions (the mean of the segment probabilities), so ``T`` is applied to each
segment and fitted on the clip-level negative log-likelihood of the aggregated distribution, exactly the
order in which :class:`genre_se.inference.GenreClassifier` applies it. The expected calibration error (ECE)
measures the gap between confidence and accuracy before and after.

Pure numpy (scipy only inside :func:`fit_temperature`), so the fast prediction path stays light.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ModelError
from .metrics import cross_entropy, mean_per_clip

#: A file whose top probability is below this is marked uncertain (``predict.uncertain_below``).
DEFAULT_UNCERTAIN_BELOW = 0.4
#: The range searched for the temperature: wide, but bounded so a tiny validation set cannot send it to 0/inf.
T_MIN, T_MAX = 0.05, 20.0
#: Probabilities are clipped here before the logarithm.
EPS = 1e-12
#: Standard deviation of the Gaussian prior on log T (see fit_temperature); None in code fits plain NLL.
PRIOR_SIGMA = 1.0


@dataclass(frozen=True)
class Calibration:
    """What the train stage stores in ``bundle.json`` under ``extra["calibration"]``.

    Attributes
    ----------
    temperature : float
        The temperature of the bundle's answer: segment log-probabilities are divided by it before aggregation;
        with an SVM head (``model.classifier: svm``) or late fusion (``model.fusion: svm``) it scales the head's
        (the fused) clip distribution instead, the distribution it was fitted on. 1.0 is no calibration.
    uncertain_below : float
        Prediction marks a file uncertain when its top probability is below this.
    ece_before, ece_after : float or None
        Clip-level ECE on the clips ``T`` was fitted on (or measured on), without and with ``T``.
    nll_before, nll_after : float or None
        Clip-level negative log-likelihood on the same clips.
    fit_on : str or None
        The split ``T`` was fitted on ("val"), None when it was not fitted (``T = 1``).
    n_clips : int
        Clips in that split.
    cnn_temperature : float or None
        The CNN softmax's own segment temperature, fitted on the same clips (or the given one, or 1 like
        ``temperature``): what prediction applies when the softmax answers alone (``--softmax``,
        ``--no-fusion``). Equal to ``temperature`` without a head; None in bundles written before it was
        recorded (:meth:`softmax_temperature` then decides).
    """

    temperature: float = 1.0
    uncertain_below: float = DEFAULT_UNCERTAIN_BELOW
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    fit_on: str | None = None
    n_clips: int = 0
    cnn_temperature: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def softmax_temperature(self, has_head: bool) -> float | None:
        """The temperature for the CNN's softmax answering alone: ``cnn_temperature`` when recorded; for an older
        record, ``temperature`` when the bundle has no head and no fusion (it was fitted on the softmax), else
        None: it was fitted on another distribution and the softmax has no calibration of its own (use T = 1)."""
        if self.cnn_temperature is not None:
            return self.cnn_temperature
        # an unfitted record (T = 1, fit_on None) is the same for any distribution: no note needed
        return None if has_head and self.fit_on is not None else self.temperature

    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "bundle") -> "Calibration":
        """The record of a bundle (None or missing keys: no calibration, the default threshold), checked."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: extra.calibration must be a JSON object, got {raw!r}")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        calibration = cls(**known)
        check_temperature(calibration.temperature, f"{where}: extra.calibration.temperature")
        if calibration.cnn_temperature is not None:
            check_temperature(calibration.cnn_temperature, f"{where}: extra.calibration.cnn_temperature")
        check_threshold(calibration.uncertain_below, f"{where}: extra.calibration.uncertain_below")
        return calibration


def check_temperature(value, where: str = "temperature") -> float:
    """``value`` as a float if it is a finite number > 0, else ModelError."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ModelError(f"{where}: must be a finite number > 0, got {value!r}")
    return float(value)


def check_threshold(value, where: str = "uncertain_below") -> float:
    """``value`` as a float if it is a number in [0, 1], else ModelError."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0.0 <= value <= 1.0:
        raise ModelError(f"{where}: must be a number in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Scores


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-1 expected calibration error with ``n_bins`` equal-width confidence bins.

    ``sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``, where the confidence is the top
    probability; bin b holds confidences in ``(b / n_bins, (b + 1) / n_bins]`` (a confidence of 0 goes to
    the first bin). 0 is perfectly calibrated; an always-wrong model that is always sure scores 1.
    """
    probs = _as_probs(probs)
    labels = np.asarray(labels)
    if labels.shape != (len(probs),):
        raise ModelError(f"expected calibration error: {len(probs)} rows of probabilities but labels {labels.shape}")
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """:func:`expected_calibration_error` from each sample's top probability and whether its answer was right
    (what a table of answers keeps, e.g. a study's per-clip predictions pooled over folds)."""
    bins = reliability_bins(confidence, correct, n_bins)
    shown = bins["counts"] > 0
    gaps = np.abs(bins["accuracy"][shown] - bins["confidence"][shown])
    return float((bins["counts"][shown] * gaps).sum() / bins["counts"].sum())


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin counts, mean confidence and accuracy (NaN for empty bins): a reliability diagram's data.

    ``confidence`` is each sample's top probability, ``correct`` whether its top class was right.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        raise ModelError("calibration scores: no samples")
    if correct.shape != confidence.shape or confidence.ndim != 1:
        raise ModelError(f"calibration scores: confidence {confidence.shape} and correct {correct.shape} differ")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ModelError(f"calibration scores: n_bins must be an int >= 1, got {n_bins!r}")
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "counts": counts, "confidence": mean_conf,
            "accuracy": accuracy}


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(label)``, probabilities clipped at 1e-12 (:func:`genre_se.metrics.cross_entropy`)."""
    return cross_entropy(_as_probs(probs), np.asarray(labels))


# --------------------------------------------------------------------------------------------------
# Temperature scaling


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise ``softmax(log(p) / T)`` of probabilities (n, n_classes), in float64.

    ``T = 1`` returns the input as float64 unchanged (no clipping), so an uncalibrated bundle predicts
    bit for bit what it did before; the argmax of each row never changes.
    """
    temperature = check_temperature(temperature)
    probs = _as_probs(probs)
    if temperature == 1.0:
        return probs.copy()
    logits = np.log(np.clip(probs, EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def clip_distributions(segment_probs: np.ndarray, clip_index: np.ndarray, n_clips: int | None = None,
                       temperature: float = 1.0, aggregate: str = "mean") -> np.ndarray:
    """Clip distributions (n_clips, n_classes) from segment probabilities, temperature first.

    ``clip_index[i]`` is the clip (0 .. n_clips - 1) of segment ``i``. "mean" is the evaluate stage's and
    prediction's rule; "vote" (the fraction of segments whose top genre is each genre) is listed for
    completeness: it does not depend on the temperature.
    """
    probs = apply_temperature(segment_probs, temperature)
    codes = np.asarray(clip_index, dtype=np.intp)
    if codes.shape != (len(probs),):
        raise ModelError(f"clip_index must have one entry per segment ({len(probs)}), got shape {codes.shape}")
    if len(codes) and codes.min() < 0:
        raise ModelError("clip_index must be >= 0")
    n_clips = int(codes.max()) + 1 if n_clips is None else int(n_clips)
    if aggregate == "vote":
        probs = np.eye(probs.shape[1])[probs.argmax(axis=1)]
    elif aggregate != "mean":
        raise ModelError(f"aggregate must be 'mean' or 'vote', got {aggregate!r}")
    means, counts = mean_per_clip(codes, probs, n_clips)
    if (counts == 0).any():
        raise ModelError(f"clip {int(np.argmin(counts))} has no segments")
    return means


def fit_temperature(segment_probs: np.ndarray, clip_index: np.ndarray, clip_labels: np.ndarray,
                    aggregate: str = "mean", prior_sigma: float | None = PRIOR_SIGMA) -> float:
    """The temperature in [0.05, 20] minimising the clip-level negative log-likelihood (MAP with a weak prior).

    Segments are temperature-scaled first, then aggregated per clip as prediction does. The objective is
    ``mean NLL(T) + (log T)^2 / (2 prior_sigma^2 n_clips)``: a Gaussian prior on log T centred on 1. On
    thousands of clips it changes nothing; on a small validation split that the model classifies perfectly,
    plain NLL keeps falling as T -> 0 and would make every answer look certain (the search bound, 0.05,
    turns a 0.41 top probability into 0.99), while the prior stops where the evidence stops.
    The search is a log-spaced grid followed by a bounded Brent refinement around the best grid point (the
    objective need not be convex once segments are averaged; the grid keeps Brent out of a poor minimum).

    Parameters
    ----------
    segment_probs : ndarray (n_segments, n_classes)
        The model's softmax outputs (uncalibrated).
    clip_index : ndarray (n_segments,) of int
        The clip of each segment, 0 .. n_clips - 1.
    clip_labels : ndarray (n_clips,) of int
        The true class of each clip.
    aggregate : {"mean"}
        "vote" is refused: vote fractions do not depend on the temperature, so there is nothing to fit.
    prior_sigma : float or None
        Standard deviation of the prior on log T; None fits the plain clip NLL.
    """
    from scipy.optimize import minimize_scalar

    if aggregate != "mean":
        raise ModelError(f"fit_temperature: aggregate {aggregate!r} cannot be calibrated by a temperature "
                         "(vote fractions ignore it); use 'mean'")
    labels = np.asarray(clip_labels, dtype=np.intp)
    if len(labels) == 0:
        raise ModelError("fit_temperature: no clips to fit on")

    if prior_sigma is not None and not prior_sigma > 0:
        raise ModelError(f"fit_temperature: prior_sigma must be > 0 or None, got {prior_sigma!r}")
    penalty = 0.0 if prior_sigma is None else 1.0 / (2.0 * prior_sigma**2 * len(labels))

    def nll(log_t: float) -> float:
        clips = clip_distributions(segment_probs, clip_index, len(labels), float(np.exp(log_t)), aggregate)
        return negative_log_likelihood(clips, labels) + penalty * log_t**2

    low, high = np.log(T_MIN), np.log(T_MAX)
    grid = np.linspace(low, high, 61)
    values = [nll(g) for g in grid]
    best = int(np.argmin(values))
    step = grid[1] - grid[0]
    result = minimize_scalar(nll, bounds=(max(low, grid[best] - step), min(high, grid[best] + step)),
                             method="bounded", options={"xatol": 1e-4})
    log_t = float(result.x) if result.fun <= values[best] else float(grid[best])
    return float(np.exp(log_t))


def calibrate(segment_probs: np.ndarray, clip_index: np.ndarray, clip_labels: np.ndarray, *,
              uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, fit: bool = True, fit_on: str = "val",
              n_bins: int = 15, temperature: float | None = None) -> Calibration:
    """Fit ``T`` (when ``fit``) on some clips and score the clip distributions before and after.

    With ``fit=False`` the temperature stays 1 and the scores only describe the model (``fit_on`` None).
    ``temperature``: a ``T`` fitted elsewhere (e.g. on a cross-validation's out-of-fold clips), scored on these
    clips and recorded with ``fit_on`` "fixed"; ``fit`` is then ignored.
    """
    labels = np.asarray(clip_labels, dtype=np.intp)
    if temperature is not None:
        temperature, fit, fit_on = check_temperature(temperature, "calibration temperature"), True, "fixed"
    else:
        temperature = fit_temperature(segment_probs, clip_index, labels) if fit else 1.0
    before = clip_distributions(segment_probs, clip_index, len(labels))
    after = clip_distributions(segment_probs, clip_index, len(labels), temperature)
    return Calibration(
        temperature=temperature,
        uncertain_below=check_threshold(uncertain_below, "predict.uncertain_below"),
        ece_before=expected_calibration_error(before, labels, n_bins),
        ece_after=expected_calibration_error(after, labels, n_bins),
        nll_before=negative_log_likelihood(before, labels),
        nll_after=negative_log_likelihood(after, labels),
        fit_on=fit_on if fit else None,
        n_clips=len(labels),
    )


def _as_probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ModelError(f"probabilities must be a 2-D array (n, n_classes), got shape {probs.shape}")
    return probs
