"""How familiar a recording is to the model: the distance of its embeddings from the training data.

A model trained on 71 GTZAN clips answers a modern master with the same confidence as a GTZAN clip, and
mostly wrongly (issue 10): temperature scaling fitted on GTZAN clips cannot see that the input is unlike
anything it was fitted on. The embedding can. The train stage fits the mean and a shrunk covariance
(Ledoit-Wolf: 1,000 segments against a 128-dimensional embedding) of the training segments' embeddings; a file's
*distance* is the mean Mahalanobis distance of its segments. The threshold is a quantile of the distances of
the validation clips (held out like the test clips, so it says how far new in-domain clips lie; never fitted
on real songs), and ``predict`` marks a file ``unfamiliar`` (and so ``uncertain``) beyond it.

Stored in the bundle as ``familiarity.npz`` (plain arrays, read with ``allow_pickle=False``), with the SHA-1 of
the ``model.keras`` whose embeddings it describes, so statistics of another model are refused, not used.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .fileio import atomic_path

FAMILIARITY_FILE = "familiarity.npz"
FORMAT = 1


@dataclass(frozen=True)
class Familiarity:
    """Embedding statistics of the training segments and the distance beyond which a file is unfamiliar.

    Attributes
    ----------
    mean : ndarray (dim,)
    precision : ndarray (dim, dim)
        Inverse of the Ledoit-Wolf shrunk covariance of the training segments' embeddings.
    threshold : float
        The ``quantile`` of the reference (validation) clips' distances.
    quantile : float
    n_segments, n_reference : int
        Training segments the statistics come from; reference clips the threshold comes from.
    model_sha1 : str
        SHA-1 of the ``model.keras`` that produced the embeddings ("" when not tied to a file).
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_segments: int
    n_reference: int
    model_sha1: str = ""

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def segment_distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``embeddings`` (n, dim) from the training mean."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ModelError(f"familiarity: embeddings must be (n, {self.dim}), got {x.shape}")
        centred = x - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0.0))

    def distance(self, embeddings: np.ndarray) -> float:
        """A file's distance: the mean over its segments (rows of ``embeddings``)."""
        if len(embeddings) == 0:
            raise ModelError("familiarity: no segment to measure")
        return float(self.segment_distances(embeddings).mean())

    def record(self) -> dict:
        """What the bundle's ``extra["familiarity"]`` and ``predict --format json`` say about it."""
        return {"threshold": self.threshold, "quantile": self.quantile, "n_segments": self.n_segments,
                "n_reference": self.n_reference, "fit_on": "val"}


def fit_familiarity(train_embeddings: np.ndarray, reference_clips: list[np.ndarray], quantile: float = 0.95,
                    model_sha1: str = "") -> Familiarity:
    """Fit the statistics on training segment embeddings; the threshold on held-out reference clips.

    Parameters
    ----------
    train_embeddings : ndarray (n_segments, dim)
        Embeddings of the training segments.
    reference_clips : list of ndarray (n_i, dim)
        Each held-out clip's segment embeddings (the validation clips).
    quantile : float in (0, 1]
        The share of reference clips that must stay familiar (0.95: the 95th percentile of their distances).
    """
    from sklearn.covariance import LedoitWolf

    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile <= 1:
        raise ModelError(f"familiarity: quantile must be in (0, 1], got {quantile!r}")
    x = np.asarray(train_embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise ModelError(f"familiarity: need finite training embeddings (n >= 2, dim), got shape {x.shape}")
    if not reference_clips:
        raise ModelError("familiarity: need at least one reference (validation) clip for the threshold")
    estimate = LedoitWolf().fit(x)
    stats = Familiarity(estimate.location_, estimate.precision_, np.inf, float(quantile), len(x), len(reference_clips),
                        model_sha1)
    threshold = np.quantile([stats.distance(clip) for clip in reference_clips], quantile)
    return dataclasses.replace(stats, threshold=float(threshold))


def save_familiarity(bundle_dir: str | Path, stats: Familiarity) -> Path:
    """Write ``familiarity.npz`` into the bundle atomically (temporary file, then rename)."""
    target = Path(bundle_dir) / FAMILIARITY_FILE
    meta = json.dumps({"format": FORMAT, "threshold": stats.threshold, "quantile": stats.quantile,
                       "n_segments": stats.n_segments, "n_reference": stats.n_reference,
                       "model_sha1": stats.model_sha1})
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:  # a handle: savez would append ".npz" to a name
        np.savez(handle, mean=stats.mean, precision=stats.precision, meta=np.array(meta))
    return target


def load_familiarity(bundle_dir: str | Path, model_sha1: str | None = None) -> Familiarity | None:
    """The bundle's statistics, or None when it has none.

    Raises
    ------
    ModelError
        The file is damaged, or was fitted on another ``model.keras`` than ``model_sha1`` (when given).
    """
    path = Path(bundle_dir) / FAMILIARITY_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            mean, precision, meta = stored["mean"], stored["precision"], json.loads(str(stored["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this reader knows {FORMAT}")
        dim = mean.shape[0] if mean.ndim == 1 else -1
        if precision.shape != (dim, dim) or not (np.isfinite(mean).all() and np.isfinite(precision).all()):
            raise ValueError(f"mean {mean.shape} and precision {precision.shape} do not fit together")
        stats = Familiarity(mean.astype(np.float64), precision.astype(np.float64), float(meta["threshold"]),
                            float(meta["quantile"]), int(meta["n_segments"]), int(meta["n_reference"]),
                            str(meta.get("model_sha1", "")))
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read the familiarity statistics ({type(exc).__name__}: {exc})") from None
    if model_sha1 is not None and stats.model_sha1 and stats.model_sha1 != model_sha1:
        raise ModelError(f"{path}: fitted on another model.keras than the one in the bundle; retrain, or delete "
                         f"{FAMILIARITY_FILE} to predict without it")
    return stats
