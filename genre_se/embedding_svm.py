"""An SVM head on the SE-CNN's own embeddings: ``model.classifier: svm``.

On small data the field often keeps a trained network's penultimate layer and fits a classic classifier on it.
On gtzan-mini (issue 7, ``study/fold_embeddings.py`` on the kept fold models of ``study/small_data.yaml``'s
``e30_kept``) the baseline's classifier on each clip's mean embedding answered the held-out clips better than
the network's own softmax; on real songs it did worse. So it is a switch, off by default.

The rule, one definition for training, evaluation and prediction: a recording's embedding is the mean of its
segments' embeddings (the layer ``genre-se embed`` returns, silent segments left out as the softmax's
aggregate leaves them out); the head is :mod:`genre_se.baseline`'s standardisation + RBF SVM with per-class
Platt sigmoids, fitted after the network on the mean embeddings of its training clips. It travels in the bundle
as plain arrays (``embedding_svm.npz``), evaluated with numpy alone by :class:`genre_se.fusion.SvmScorer`:
loading it never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fusion import SvmScorer, fit_svm, load_svm, save_svm

EMBEDDING_SVM_FILE = "embedding_svm.npz"


def clip_embeddings(embedder, store, rows: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """``(clip ids in first-seen order, their mean embeddings (n_clips, dim), their label indices)`` of the
    clips of some store rows; ``embedder`` is :func:`genre_se.model.embedding_model` of the network."""
    import pandas as pd  # here, not at the top: predict's fast path loads this module and must not import pandas

    from .metrics import mean_per_clip
    from .train import predict_rows

    rows = np.asarray(rows, dtype=np.int64)
    table = store.table.iloc[rows]
    codes, uniques = pd.factorize(table["clip_id"].astype(str).to_numpy(), sort=False)
    means, _ = mean_per_clip(codes, predict_rows(embedder, store, rows), len(uniques))
    first = np.zeros(len(uniques), dtype=np.intp)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    return list(uniques), means, table["label_index"].to_numpy(dtype=np.int64)[first]


def fit_embedding_svm(model, store, train_rows: np.ndarray, seed: int = 0) -> SvmScorer:
    """The head fitted on the mean embeddings of the clips of ``train_rows`` (the network's training clips).

    Raises
    ------
    ModelError
        Fewer than 3 genres with 2 training clips each (the Platt sigmoids are fitted by cross-validation).
    """
    from .model import embedding_model

    _, x, y = clip_embeddings(embedding_model(model), store, train_rows)
    return fit_svm(x, y, list(store.labels), seed=seed, max_windows=1)


def embedding_svm_distributions(scorer: SvmScorer, model, store, rows: np.ndarray) -> tuple[list, np.ndarray]:
    """``(clip ids, (n_clips, n_labels))``: the head's distribution of each clip of some store rows."""
    from .model import embedding_model

    clips, x, _ = clip_embeddings(embedding_model(model), store, rows)
    return clips, scorer.probabilities(x)


def save_embedding_svm(bundle_dir: str | Path, scorer: SvmScorer) -> Path:
    """Write ``embedding_svm.npz`` into the bundle atomically."""
    return save_svm(bundle_dir, scorer, EMBEDDING_SVM_FILE)


def load_embedding_svm(bundle_dir: str | Path, labels: list | None = None, dim: int | None = None
                       ) -> SvmScorer | None:
    """The bundle's embedding head, or None when it has none.

    Raises
    ------
    ModelError
        The file is damaged, names other genres than ``labels``, or expects embeddings of another size than
        ``dim`` (the model's).
    """
    from .errors import ModelError

    scorer = load_svm(bundle_dir, labels, EMBEDDING_SVM_FILE)
    if scorer is not None and dim is not None and scorer.dim != int(dim):
        raise ModelError(f"{Path(bundle_dir) / EMBEDDING_SVM_FILE}: fitted on embeddings of size {scorer.dim}, the "
                         f"model's are {dim}; retrain")
    return scorer
