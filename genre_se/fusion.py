"""Late fusion with the classic baseline: the SE-CNN's clip distribution averaged with an MFCC + SVM's.

On gtzan-mini the mean of the SE-CNN's clip distribution and the Platt probabilities of the Tzanetakis & Cook
SVM (:mod:`genre_se.baseline`) was the best configuration the cross-validation found (issue 7,
``study/results/ensemble.md``: 0.828 vs 0.765 for the SE-CNN and 0.790 for the SVM over 4 seeds x 5 folds), and
worse than the SE-CNN on real songs (issue 10). So it is a switch (``model.fusion: svm``), off by default.

The SVM travels in the bundle as plain arrays (``svm.npz``, read with ``allow_pickle=False``): the scaler, the
support vectors, dual coefficients and intercepts of scikit-learn's one-vs-one RBF SVC, and the per-class Platt
sigmoids of ``CalibratedClassifierCV``. :class:`SvmScorer` evaluates them with numpy alone, exactly as
scikit-learn would (tested against it), so loading a bundle never unpickles anything and prediction needs
neither scikit-learn nor TensorFlow for this part.

The SVM sees *windows* of ``WINDOW_SECONDS`` (a GTZAN clip's length): a file up to twice that long is one
window, the whole file; a longer one gives up to ``max_windows`` windows spread over it, read one at a time, and
its SVM distribution is the mean over them. Training uses the same windows of every training clip.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ModelError
from .fileio import atomic_path

FUSION_FILE = "svm.npz"
FORMAT = 1
WINDOW_SECONDS = 30.0
MAX_WINDOWS = 8
SILENCE_DB = -60.0  # dB re full scale: leading and trailing audio below it is not music (predict's silence_db)
LEVEL_DB = -20.0  # every window is brought to this RMS level first: the SVM is as blind to gain as the CNN
STATS_VERSION = 2  # of the window statistics' definition; a store holding another version must be rebuilt
STATS_KEY = f"window_stats_v{STATS_VERSION}"  # their name in a features-cache shard: an older shard lacks it
MIN_SOUND_SECONDS = 1.0  # a window with less sound than this is left out, unless every window is


# --------------------------------------------------------------------------------------------------
# Windows of a recording -> the baseline's statistics


def window_starts(n_samples: int, sr: int, max_windows: int = MAX_WINDOWS,
                  window_seconds: float = WINDOW_SECONDS) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` sample ranges the SVM reads: the whole signal when it is shorter than two
    windows, else up to ``max_windows`` windows of ``window_seconds`` spread evenly from start to end."""
    if max_windows < 1:
        raise ModelError(f"fusion: max_windows must be >= 1, got {max_windows!r}")
    win = int(round(window_seconds * sr))
    n_samples = int(n_samples)
    if n_samples < 2 * win:
        return [(0, n_samples)]
    count = min(max_windows, n_samples // win)
    starts = np.linspace(0, n_samples - win, count).round().astype(int) if count > 1 else [(n_samples - win) // 2]
    return [(int(s), int(s) + win) for s in starts]


def window_statistics(source, source_sr: int | None = None, max_windows: int = MAX_WINDOWS) -> np.ndarray:
    """The baseline's feature vector of every window of a file (or of a mono signal at ``source_sr``).

    The statistics are always those of the audio at the baseline's own rate (``baseline.SAMPLE_RATE``,
    22,050 Hz), whatever rate the CNN's features use, of each window without its leading and trailing
    near-silence (below :data:`SILENCE_DB`; none of the 71 gtzan-mini clips has any, a song's intro or 5 s of
    digital silence would otherwise move every statistic), brought to an RMS of :data:`LEVEL_DB` (the CNN
    standardises each segment, so the recording's level never named the genre for it; the SVM's MFCC 0 and RMS
    would hear it: study/results/fusion_level.md). Returns ``(n_windows, dim)`` float64. Memory stays
    bounded by one window (plus the decoder's block) however long the file is: windows are read by seeking
    where the format allows it, else the file is streamed once and only the chosen windows are kept.

    Raises
    ------
    AudioError
        The file cannot be decoded.
    """
    from .baseline import SAMPLE_RATE as sr

    return _statistics(_windows(source, source_sr, sr, max_windows), sr)


def _windows(source, source_sr: int | None, sr: int, max_windows: int) -> Iterator[np.ndarray]:
    """The signal of every window :func:`window_starts` chooses, at ``sr``, one at a time."""
    if not isinstance(source, (str, Path)):
        from .audio import resample

        signal = resample(np.asarray(source, dtype=np.float32), int(source_sr or sr), sr)
        yield from (signal[a:b] for a, b in window_starts(len(signal), sr, max_windows))
        return
    from .audio import audio_info, iter_audio_blocks, load_audio, open_windows

    with open_windows(source, sr) as reader:
        if reader is not None:
            yield from (reader.read(a, b) for a, b in window_starts(reader.n_samples, sr, max_windows))
            return
    info = audio_info(source)  # a stream only (e.g. mp3 through audioread): the header's length picks windows
    n_est = int(round(info.duration * sr)) if info.duration and math.isfinite(info.duration) else 0
    if n_est < 2 * round(WINDOW_SECONDS * sr):
        yield load_audio(source, sr)
        return
    wanted = window_starts(n_est, sr, max_windows)
    pos, buffer, found = 0, [], 0
    for block in iter_audio_blocks(source, sr, block_seconds=WINDOW_SECONDS / 4):
        buffer.append((pos, block))
        pos += len(block)
        while wanted and pos >= wanted[0][1]:
            a, b = wanted.pop(0)
            window = np.concatenate([blk for p, blk in buffer if p + len(blk) > a and p < b])
            first = next(p for p, blk in buffer if p + len(blk) > a)
            found += 1
            yield window[a - first : b - first]
        buffer = [(p, blk) for p, blk in buffer if not wanted or p + len(blk) > wanted[0][0]]
    if wanted and buffer:  # the header overstated the length: the last window ends at the file's end
        found += 1
        yield np.concatenate([blk for _, blk in buffer])[-int(round(WINDOW_SECONDS * sr)):]
    if not found:
        yield load_audio(source, sr)


def _statistics(windows: Iterator[np.ndarray], sr: int) -> np.ndarray:
    """The baseline's vector of each window, its leading and trailing near-silence trimmed; windows with less
    than :data:`MIN_SOUND_SECONDS` of sound are left out unless every window is that quiet. Each window is
    reduced to its vector as it comes, so only one is held at a time."""
    from .baseline import clip_features

    vectors, sound = [], []
    for y in windows:  # sample-exact: from the first to the last sample above the level (frames would keep an edge)
        audible = np.flatnonzero(np.abs(y) > 10.0 ** (SILENCE_DB / 20.0))
        vectors.append(clip_features(at_level(y[audible[0] : audible[-1] + 1] if len(audible) else y), sr))
        sound.append(audible[-1] + 1 - audible[0] if len(audible) else 0)
    loud = [v for v, n in zip(vectors, sound) if n >= MIN_SOUND_SECONDS * sr] or vectors
    return np.stack(loud)


def at_level(y: np.ndarray, level_db: float = LEVEL_DB) -> np.ndarray:
    """``y`` scaled to an RMS of ``level_db`` dB re full scale (digital silence stays silence)."""
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if len(y) else 0.0
    return y if rms < 1e-8 else (y * (10.0 ** (level_db / 20.0) / rms)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The SVM as plain arrays


@dataclass(frozen=True)
class SvmScorer:
    """A fitted ``StandardScaler + SVC(rbf)`` with per-class Platt sigmoids, as numpy arrays.

    Attributes
    ----------
    mean, scale : ndarray (dim,)
        The scaler's statistics.
    support_vectors : ndarray (n_sv, dim)
        Grouped by class, ``n_support`` of each (libsvm's order).
    n_support : ndarray (n_classes,)
    dual_coef : ndarray (n_classes - 1, n_sv)
    intercept : ndarray (n_classes * (n_classes - 1) / 2,)
        One per class pair (i < j), in libsvm's order.
    gamma : float
        The RBF kernel's ``exp(-gamma |x - sv|^2)``.
    classes : ndarray (n_classes,)
        The label indices the SVM was trained on (ascending).
    platt_a, platt_b : ndarray (n_classes,)
        ``p = 1 / (1 + exp(a d + b))`` of each class's one-vs-rest decision ``d``, then normalised.
    labels : list of str
        The genre names, in the bundle's output order (``classes`` index into them).
    """

    mean: np.ndarray
    scale: np.ndarray
    support_vectors: np.ndarray
    n_support: np.ndarray
    dual_coef: np.ndarray
    intercept: np.ndarray
    gamma: float
    classes: np.ndarray
    platt_a: np.ndarray
    platt_b: np.ndarray
    labels: list
    sample_rate: int
    max_windows: int = MAX_WINDOWS

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_parameters(self) -> int:
        return int(sum(np.size(a) for a in (self.mean, self.scale, self.support_vectors, self.dual_coef,
                                            self.intercept, self.platt_a, self.platt_b)))

    def ovo_decision(self, features: np.ndarray) -> np.ndarray:
        """libsvm's decision value of every class pair (i < j): positive means class i."""
        x = (np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean) / self.scale
        sq = (x**2).sum(1)[:, None] + (self.support_vectors**2).sum(1)[None, :] - 2 * x @ self.support_vectors.T
        kernel = np.exp(-self.gamma * np.maximum(sq, 0.0))
        bounds = np.concatenate([[0], np.cumsum(self.n_support)])
        n = len(self.classes)
        out, p = np.empty((len(x), n * (n - 1) // 2)), 0
        for i in range(n):
            for j in range(i + 1, n):
                si, sj = slice(bounds[i], bounds[i + 1]), slice(bounds[j], bounds[j + 1])
                out[:, p] = (kernel[:, si] @ self.dual_coef[j - 1, si] + kernel[:, sj] @ self.dual_coef[i, sj]
                             + self.intercept[p])
                p += 1
        return out

    def decision(self, features: np.ndarray) -> np.ndarray:
        """The one-vs-rest decision scikit-learn's SVC gives (votes plus scaled confidences), ``(n, n_classes)``."""
        ovo = self.ovo_decision(features)
        n = len(self.classes)
        votes, confidence, p = np.zeros((len(ovo), n)), np.zeros((len(ovo), n)), 0
        for i in range(n):
            for j in range(i + 1, n):
                confidence[:, i] += ovo[:, p]
                confidence[:, j] -= ovo[:, p]
                votes[:, i] += ovo[:, p] >= 0  # a tie goes to i, as in scikit-learn
                votes[:, j] += ovo[:, p] < 0
                p += 1
        return votes + confidence / (3 * (np.abs(confidence) + 1))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Platt probabilities over all ``labels`` (0 for a genre the SVM never saw), ``(n, n_labels)``."""
        decision = self.decision(features)
        sig = 1.0 / (1.0 + np.exp(self.platt_a * decision + self.platt_b))
        total = sig.sum(1, keepdims=True)
        sig = np.divide(sig, total, out=np.full_like(sig, 1.0 / sig.shape[1]), where=total != 0)
        out = np.zeros((len(sig), len(self.labels)))
        out[:, self.classes] = sig
        return out

    def distribution(self, window_features: np.ndarray) -> np.ndarray:
        """One file's SVM distribution: the mean over its windows."""
        return self.probabilities(window_features).mean(0)


def fit_svm(features: np.ndarray, labels: np.ndarray, label_names: list, *, seed: int = 0,
            max_windows: int = MAX_WINDOWS) -> SvmScorer:
    """Fit the baseline SVM with Platt probabilities (scikit-learn, as in the study) and export it as arrays.

    ``labels`` index into ``label_names``. The sigmoids are fitted on cross-validated decision values of the
    training windows (up to 5 stratified splits, as the smallest class allows), the SVM on all of them.
    """
    from sklearn.calibration import CalibratedClassifierCV

    from .baseline import SAMPLE_RATE, make_classifier

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=int)
    if x.ndim != 2 or len(x) != len(y) or not np.isfinite(x).all():
        raise ModelError(f"fusion: need finite (windows, dim) features and one label each, got {x.shape}, {y.shape}")
    counts = np.bincount(y)
    if (counts > 0).sum() < 3 or counts[counts > 0].min() < 2:
        raise ModelError("fusion: the SVM needs at least 3 genres with 2 training clips each")
    splits = int(max(2, min(5, counts[counts > 0].min())))
    fitted = CalibratedClassifierCV(make_classifier(seed), method="sigmoid", cv=splits, ensemble=False).fit(x, y)
    part = fitted.calibrated_classifiers_[0]
    scaler, svc = part.estimator[0], part.estimator[-1]
    return SvmScorer(
        mean=scaler.mean_.copy(), scale=scaler.scale_.copy(), support_vectors=svc.support_vectors_.copy(),
        n_support=svc.n_support_.astype(np.int64), dual_coef=svc.dual_coef_.copy(), intercept=svc.intercept_.copy(),
        gamma=float(svc._gamma), classes=svc.classes_.astype(np.int64),
        platt_a=np.array([c.a_ for c in part.calibrators], dtype=np.float64),
        platt_b=np.array([c.b_ for c in part.calibrators], dtype=np.float64),
        labels=list(label_names), sample_rate=SAMPLE_RATE, max_windows=int(max_windows))


_ARRAYS = ("mean", "scale", "support_vectors", "n_support", "dual_coef", "intercept", "classes", "platt_a", "platt_b")


def save_svm(bundle_dir: str | Path, scorer: SvmScorer, file: str = FUSION_FILE) -> Path:
    """Write ``file`` (the fusion SVM's ``svm.npz``) into the bundle atomically (temporary file, then rename)."""
    target = Path(bundle_dir) / file
    meta = json.dumps({"format": FORMAT, "gamma": scorer.gamma, "labels": list(scorer.labels),
                       "sample_rate": scorer.sample_rate, "max_windows": scorer.max_windows,
                       "window_seconds": WINDOW_SECONDS})
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, meta=np.array(meta), **{name: getattr(scorer, name) for name in _ARRAYS})
    return target


def load_svm(bundle_dir: str | Path, labels: list | None = None, file: str = FUSION_FILE) -> SvmScorer | None:
    """The bundle's SVM stored as ``file`` (the fusion SVM's ``svm.npz``), or None when it has none.

    Raises
    ------
    ModelError
        The file is damaged, or names other genres (or another order) than ``labels``.
    """
    path = Path(bundle_dir) / file
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _ARRAYS}
            meta = json.loads(str(stored["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this reader knows {FORMAT}")
        scorer = SvmScorer(**{k: (v.astype(np.int64) if k in ("n_support", "classes") else v.astype(np.float64))
                              for k, v in arrays.items()},
                           gamma=float(meta["gamma"]), labels=list(meta["labels"]),
                           sample_rate=int(meta["sample_rate"]), max_windows=int(meta["max_windows"]))
        n, dim = len(scorer.classes), scorer.dim
        if (scorer.support_vectors.shape != (int(scorer.n_support.sum()), dim) or scorer.scale.shape != (dim,)
                or scorer.dual_coef.shape != (n - 1, len(scorer.support_vectors))
                or scorer.intercept.shape != (n * (n - 1) // 2,) or scorer.platt_a.shape != (n,)
                or scorer.platt_b.shape != (n,) or len(scorer.n_support) != n
                or (n and (scorer.classes.min() < 0 or scorer.classes.max() >= len(scorer.labels)))):
            raise ValueError("its arrays do not fit together")
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read the SVM ({type(exc).__name__}: {exc})") from None
    if labels is not None and list(labels) != scorer.labels:
        raise ModelError(f"{path}: the SVM's genres {scorer.labels} are not the model's {list(labels)}; retrain, or "
                         f"delete {file} to predict with the CNN's softmax alone")
    return scorer


def fuse(cnn_distribution: np.ndarray, svm_distribution: np.ndarray) -> np.ndarray:
    """The fused clip distribution: the mean of the CNN's and the SVM's (the study's rule)."""
    return 0.5 * (np.asarray(cnn_distribution, dtype=np.float64) + np.asarray(svm_distribution, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# The SVM over a feature store's clips (train and evaluate stages)


def clip_windows(store, clip_ids) -> tuple[np.ndarray, np.ndarray]:
    """The stored window statistics of ``clip_ids`` and, per row, the position of its clip in ``clip_ids``.

    Raises
    ------
    DatasetError
        The store has no statistics (built without ``model.fusion: svm``) or lacks one of the clips.
    """
    from .errors import DatasetError

    stats, owners, version = store.clip_stats()
    if version != STATS_VERSION:
        raise DatasetError(f"{store.root}: its clip statistics are of an older definition (version {version}, "
                           f"this is {STATS_VERSION}); run `genre-se features` again")
    where = {str(c): i for i, c in enumerate(clip_ids)}
    keep = np.array([o in where for o in owners], dtype=bool)
    position = np.array([where[o] for o in owners[keep]], dtype=np.int64)
    missing = set(where) - set(owners[keep])
    if missing:
        raise DatasetError(f"{store.root}: no clip statistics for {len(missing)} clips (e.g. {sorted(missing)[0]}); "
                           "run `genre-se features` again with model.fusion: svm")
    return stats[keep], position


def store_clips(store, rows: np.ndarray) -> tuple[list, np.ndarray]:
    """The clips of some store rows (in order of first appearance) and their label indices."""
    table = store.table.iloc[np.asarray(rows, dtype=np.int64)]
    first = table.drop_duplicates("clip_id")
    return first["clip_id"].astype(str).tolist(), first["label_index"].to_numpy(dtype=np.int64)


def fit_store_svm(store, rows: np.ndarray, seed: int = 0) -> SvmScorer:
    """The fusion SVM trained on every window of the clips of ``rows`` (the CNN's training rows)."""
    clips, labels = store_clips(store, rows)
    x, owner = clip_windows(store, clips)
    return fit_svm(x, labels[owner], store.labels, seed=seed)


def svm_clip_distributions(scorer: SvmScorer, store, clip_ids) -> np.ndarray:
    """``(n_clips, n_labels)``: each clip's SVM distribution, the mean over its windows."""
    x, owner = clip_windows(store, clip_ids)
    probs = scorer.probabilities(x)
    out = np.zeros((len(clip_ids), probs.shape[1]))
    np.add.at(out, owner, probs)
    return out / np.bincount(owner, minlength=len(clip_ids))[:, None]
