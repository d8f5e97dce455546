"""From segment probabilities to clip decisions and scores.

Clip-level numbers are the honest ones: a clip's distribution is the mean of its segments' probabilities
(the same rule prediction uses), and a clip is counted once however many segments it has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def aggregate_clips(clip_ids, probs: np.ndarray, labels=None) -> pd.DataFrame:
    """Mean segment probabilities per clip.

    Parameters
    ----------
    clip_ids : sequence of str, one per segment
    probs : ndarray (n_segments, n_classes)
    labels : sequence of int, optional
        True class index per segment (constant within a clip).

    Returns
    -------
    DataFrame indexed by clip_id (first-appearance order) with column ``probs`` (an ndarray per clip),
    ``pred`` (argmax) and, when given, ``label``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    codes, uniques = pd.factorize(pd.Series(clip_ids), sort=False)
    sums = np.zeros((len(uniques), probs.shape[1]))
    np.add.at(sums, codes, probs)
    counts = np.bincount(codes, minlength=len(uniques))[:, None]
    means = sums / counts
    frame = pd.DataFrame({"clip_id": uniques, "n_segments": counts[:, 0], "pred": means.argmax(axis=1)})
    frame["probs"] = list(means)
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
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    idx = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }
