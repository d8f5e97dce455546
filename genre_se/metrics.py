"""From segment probabilities to clip decisions and scores.

Clip-level numbers are the honest ones: a clip's distribution is the mean of its segments' probabilities
(the same rule prediction uses), and a clip is counted once however many segments it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas only where a table is built: the fast prediction path imports this module
    import pandas as pd


def mean_per_clip(codes: np.ndarray, probs: np.ndarray, n_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means, counts)``: the mean of the segment rows of each clip ``0 .. n_clips - 1`` (``codes[i]`` is the
    clip of row i) and how many segments each has. The clip rule of evaluation, prediction and calibration."""
    probs = np.asarray(probs, dtype=np.float64)
    sums = np.zeros((n_clips, probs.shape[1]))
    np.add.at(sums, codes, probs)
    counts = np.bincount(codes, minlength=n_clips)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def aggregate_clips(clip_ids, probs: np.ndarray, labels=None, how: str = "mean") -> pd.DataFrame:
    """Mean segment probabilities per clip (``how="mean"``), or the share of a clip's segments whose most
    probable genre each genre is (``how="vote"``, ``predict --aggregate vote``: a tie goes to the genre with the
    larger mean probability, as :func:`genre_se.results.rank_genres` breaks it).

    Parameters
    ----------
    clip_ids : sequence of str, one per segment
    probs : ndarray (n_segments, n_classes)
    labels : sequence of int, optional
        True class index per segment (constant within a clip).
    how : {"mean", "vote"}

    Returns
    -------
    DataFrame indexed by clip_id (first-appearance order) with column ``probs`` (an ndarray per clip),
    ``pred`` (argmax) and, when given, ``label``.
    """
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(clip_ids), sort=False)
    means, counts = mean_per_clip(codes, probs, len(uniques))
    if how == "mean":
        clip_probs, pred = means, means.argmax(axis=1)
    elif how == "vote":
        from .results import rank_genres

        probs = np.asarray(probs)
        clip_probs, _ = mean_per_clip(codes, np.eye(probs.shape[1])[probs.argmax(axis=1)], len(uniques))
        pred = np.array([rank_genres(v, m)[0] for v, m in zip(clip_probs, means)], dtype=np.int64)
    else:
        raise ValueError(f"how must be 'mean' or 'vote', got {how!r}")
    frame = pd.DataFrame({"clip_id": uniques, "n_segments": counts, "pred": pred})
    frame["probs"] = list(clip_probs)
    if labels is not None:
        labels = np.asarray(labels)
        first = np.zeros(len(uniques), dtype=int)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        frame["label"] = labels[first]
    return frame.set_index("clip_id")


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer ``labels`` under ``probs``."""
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean())


def classification_scores(y_true, y_pred, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    The confusion matrix and the per-class table always cover every label (rows of a label absent from the
    test clips are zeros). Macro-F1 averages over the labels that occur among the true *or* predicted labels
    (scikit-learn's default): a genre with no test clip that is never predicted has no F1 and is left out
    instead of counting as 0; one that is predicted without being present counts as 0 (its false positives).
    Per-class recall (and F1, unless the label was predicted) is NaN for a label with no test clip.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    idx = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0
    )
    predicted = np.bincount(y_pred.astype(np.int64), minlength=len(labels)) if len(y_pred) else np.zeros(len(labels))
    scored = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    nan = float("nan")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=scored, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]) if predicted[i] else (nan if not support[i] else 0.0),
                "recall": float(recall[i]) if support[i] else nan,
                "f1": float(f1[i]) if support[i] or predicted[i] else nan,
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }
