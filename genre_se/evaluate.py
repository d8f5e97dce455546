"""Evaluation on the test split: segment- and clip-level scores, per-class table, confusion matrix.

With ``evaluate.folds: k > 1`` it also runs k-fold clip-level cross-validation (train on k-2 folds,
early-stop on one, test on one) and reports the mean and standard deviation of the clip scores; that is
the honest number on small datasets such as gtzan-mini.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .config import Params
from .errors import DatasetError
from .feature_store import FeatureStore
from .fileio import atomic_path, write_csv, write_json
from .metrics import aggregate_clips, classification_scores


def evaluate_rows(model, store: FeatureStore, rows: np.ndarray, temperature: float = 1.0,
                  svm=None, embedding_svm=None, aggregate: str = "mean") -> tuple[dict, pd.DataFrame]:
    """Scores of ``model`` on some store rows, and the per-clip predictions table.

    ``aggregate`` (``evaluate.aggregate``) is how a clip's segments become the softmax's clip distribution, as
    ``predict --aggregate`` makes it: ``"mean"`` of their probabilities, or ``"vote"``, the share of segments whose
    top genre each genre is (ties to the larger mean probability).

    ``temperature`` is the bundle's calibration: the clip answers are predict's, from the tempered segment
    probabilities aggregated (a temperature can move the mean of a clip's segments to another genre, rarely), the
    clip ECE is reported without (``ece``) and with it (``ece_calibrated``), and the table has both confidences.

    ``svm`` (a :class:`genre_se.fusion.SvmScorer`, ``model.fusion: svm``): the clip answer is the fused
    distribution, as ``predict`` gives it (the temperature then scales the fused distribution); the CNN's and
    the SVM's own clip scores are reported beside it (``clip_cnn``, ``clip_svm``).

    ``embedding_svm`` (``model.classifier: svm``): the clip answer is the SVM head's distribution of the
    clip's mean embedding (the temperature scales it); the softmax's clip scores are reported beside it
    (``clip_cnn``).
    """
    from .calibration import apply_temperature, expected_calibration_error
    from .train import predict_rows

    if len(rows) == 0:
        raise DatasetError("nothing to evaluate: the split has no segments")
    probs = predict_rows(model, store, rows)
    table = store.table.iloc[rows]
    seg_true = table["label_index"].to_numpy()
    clips = aggregate_clips(table["clip_id"].to_numpy(), probs, seg_true, aggregate)
    seg = classification_scores(seg_true, probs.argmax(axis=1), store.labels)
    extra_scores = {}
    if embedding_svm is not None:
        from .embedding_svm import embedding_svm_distributions

        ids, clip_probs = embedding_svm_distributions(embedding_svm, model, store, rows)
        if [str(c) for c in clips.index] != ids:  # both in first-seen order of the rows
            raise DatasetError("the embedding SVM's clips are not in the evaluation's order")
        calibrated_probs = apply_temperature(clip_probs, temperature)
        scores = classification_scores(clips["label"].to_numpy(), clips["pred"].to_numpy(), store.labels)
        extra_scores["clip_cnn"] = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
        clips["pred"] = clip_probs.argmax(axis=1)
    elif svm is None:
        calibrated = aggregate_clips(table["clip_id"].to_numpy(), apply_temperature(probs, temperature), seg_true,
                                     aggregate)
        clip_probs, calibrated_probs = np.stack(clips["probs"]), np.stack(calibrated["probs"])
        # predict answers from the tempered segments, aggregated: the mean (or a vote's tie-break) of tempered
        # probabilities can name another genre than the untempered one's, so the answer scored is that one
        clips["pred"] = calibrated["pred"].to_numpy()
    else:
        from .fusion import fuse, svm_clip_distributions

        cnn_probs = np.stack(clips["probs"])
        svm_probs = svm_clip_distributions(svm, store, [str(c) for c in clips.index])
        clip_probs = fuse(cnn_probs, svm_probs)
        calibrated_probs = apply_temperature(clip_probs, temperature)
        for name, pred in (("clip_cnn", clips["pred"].to_numpy()), ("clip_svm", svm_probs.argmax(axis=1))):
            scores = classification_scores(clips["label"].to_numpy(), pred, store.labels)
            extra_scores[name] = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
        clips["pred"] = clip_probs.argmax(axis=1)
    clip = classification_scores(clips["label"].to_numpy(), clips["pred"].to_numpy(), store.labels)
    metrics = {
        "clip": {"accuracy": clip["accuracy"], "macro_f1": clip["macro_f1"],
                 "ece": expected_calibration_error(clip_probs, clips["label"].to_numpy()),
                 "ece_calibrated": expected_calibration_error(calibrated_probs, clips["label"].to_numpy())},
        **extra_scores,
        "temperature": float(temperature),
        "segment": {"accuracy": seg["accuracy"], "macro_f1": seg["macro_f1"]},
        "n_clips": int(len(clips)),
        "n_segments": int(len(rows)),
        "per_class": clip["per_class"],
        "confusion_matrix": clip["confusion_matrix"],
    }
    predictions = pd.DataFrame(
        {
            "clip_id": clips.index,
            "actual": [store.labels[i] for i in clips["label"]],
            "predicted": [store.labels[i] for i in clips["pred"]],
            "confidence": clip_probs.max(axis=1),
            "confidence_calibrated": calibrated_probs.max(axis=1),
            "n_segments": clips["n_segments"].to_numpy(),
        }
    )
    return metrics, predictions


def plot_confusion(matrix, labels: list[str], path: str | Path, title: str) -> None:
    """The confusion matrix as a PNG (counts, rows = actual)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_reliability(predictions: pd.DataFrame, path: str | Path, temperature: float, n_bins: int = 15) -> None:
    """Reliability diagram of the test clips: accuracy per confidence bin, raw and temperature-scaled.

    A calibrated model lies on the diagonal; bars below it are over-confident. Bins hold few clips on small
    test sets, so the counts are printed on the raw bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .calibration import reliability_bins

    correct = (predictions["actual"] == predictions["predicted"]).to_numpy()
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    width = 1.0 / n_bins
    for column, name, offset, color in (("confidence", "raw", -0.22, "tab:red"),
                                        ("confidence_calibrated", f"T = {temperature:.2f}", 0.22, "tab:blue")):
        bins = reliability_bins(predictions[column].to_numpy(dtype=np.float64), correct, n_bins)
        centers = bins["edges"][:-1] + width / 2
        shown = bins["counts"] > 0
        gaps = np.abs(bins["accuracy"][shown] - bins["confidence"][shown])
        ece = float((bins["counts"][shown] * gaps).sum() / len(predictions))
        bars = ax.bar(centers[shown] + offset * width, bins["accuracy"][shown], width=0.42 * width, color=color,
                      alpha=0.8, label=f"{name} (ECE {ece:.3f})")
        if column == "confidence":
            ax.bar_label(bars, labels=[str(c) for c in bins["counts"][shown]], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test clips (n={len(predictions)})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def cv_fold_rows(folds_of_rows: np.ndarray, fold: int, k: int, fit_all: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) store rows of one CV fold: fold ``fold`` tests, the next one early-stops, the
    rest train. ``fit_all`` (``train.fit_all``, how the final bundle is trained): the early-stopping fold
    trains too and nothing is validated, so the CV measures exactly the recipe that ships."""
    folds_of_rows = np.asarray(folds_of_rows)
    valid_fold = (fold + 1) % k
    test = np.flatnonzero(folds_of_rows == fold)
    valid = np.flatnonzero(folds_of_rows == valid_fold)
    train = np.flatnonzero((folds_of_rows != fold) & (folds_of_rows != valid_fold) & (folds_of_rows >= 0))
    if fit_all:
        train, valid = np.sort(np.concatenate([train, valid])), np.zeros(0, dtype=np.int64)
    return train, valid, test


def cross_validate(
    store: FeatureStore,
    params: Params,
    model_cfg,
    state_root: str | Path,
    log: Callable[[str], None] | None = None,
    train_cfg=None,
) -> dict:
    """k-fold clip-level CV (:func:`cv_fold_rows`): fold f is the test set, fold f+1 the early-stopping set
    (with ``train.fit_all`` it trains too), the rest train. ``train_cfg``: the recipe (default
    ``params.train``); the evaluate stage passes the bundle's, with its tuned learning rate."""
    from .train import train_model

    train_cfg = params.train if train_cfg is None else train_cfg
    k = params.evaluate.folds
    if "fold" not in store.table.columns:
        raise DatasetError("the feature store has no folds; run prepare and features with evaluate.folds > 1")
    folds = []
    fold_col = store.table["fold"].to_numpy()
    dealt = sorted(int(f) for f in np.unique(fold_col) if f >= 0)
    if dealt != list(range(k)):  # prepared for another evaluate.folds: some clips would never be tested
        raise DatasetError(f"the feature store's clips are dealt into {len(dealt)} folds but evaluate.folds is {k}; "
                           "run `genre-se prepare` and `genre-se features` again (dvc repro does)")
    for f in range(k):
        train_rows, valid_rows, test_rows = cv_fold_rows(fold_col, f, k, train_cfg.fit_all)
        result = train_model(
            store, model_cfg, train_cfg, train_rows=train_rows, valid_rows=valid_rows,
            seed=params.seed + f, state_dir=Path(state_root) / f"fold{f}",
            log=(lambda line, f=f: log(f"fold {f + 1}/{k} {line}")) if log else None,
        )
        svm = head = None
        if model_cfg.fusion == "svm":
            from .fusion import fit_store_svm

            svm = fit_store_svm(store, train_rows, params.seed + f)  # the CNN's training clips
        if model_cfg.classifier == "svm":
            from .embedding_svm import fit_embedding_svm

            head = fit_embedding_svm(result.model, store, train_rows, params.seed + f)
        metrics, _ = evaluate_rows(result.model, store, test_rows, svm=svm, embedding_svm=head,
                                   aggregate=params.evaluate.aggregate)
        parts = {f"{part}_clip_accuracy": metrics[f"clip_{part}"]["accuracy"]
                 for part in ("cnn", "svm") if f"clip_{part}" in metrics}  # model.fusion: each part on its own
        folds.append({"fold": f, "clip_accuracy": metrics["clip"]["accuracy"],
                      "clip_macro_f1": metrics["clip"]["macro_f1"], **parts,
                      "segment_accuracy": metrics["segment"]["accuracy"], "n_clips": metrics["n_clips"]})
    summary = {"folds": k, "std_ddof": 1}  # the sample standard deviation over the folds
    for name in ("clip_accuracy", "clip_macro_f1", "cnn_clip_accuracy", "svm_clip_accuracy"):
        values = np.array([f[name] for f in folds if name in f])
        if len(values):
            summary[f"{name}_mean"] = float(values.mean())
            summary[f"{name}_std"] = float(values.std(ddof=1)) if k > 1 else 0.0
    return {**summary, "per_fold": folds}


def _cv_train_config(params: Params, bundle_extra: dict):
    """``params.train`` with the learning rate the bundle was trained at: a rate the tune stage searched
    (``tune.learning_rate``) reaches the bundle through best_params.json, and the folds must train as the
    bundle did, as they already take its tuned model settings."""
    import dataclasses

    recorded = (bundle_extra.get("train_config") or {}).get("learning_rate")
    if recorded is None:
        return params.train
    return dataclasses.replace(params.train, learning_rate=float(recorded))


#: What the evaluate stage writes under ``reports/``: every run writes each (a declared DVC output must exist).
REPORTS = ("metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.png", "reliability.png",
           "cv_folds.csv")
#: ``cv_folds.csv``'s columns (with ``model.fusion``, each part's accuracy too); with ``evaluate.folds: 1`` it holds
#: only them, no row, so it never sits beside metrics without ``cv`` as an earlier k-fold run's table
CV_FOLD_COLUMNS = ("fold", "clip_accuracy", "clip_macro_f1", "segment_accuracy", "n_clips")


def run_evaluate(
    params: Params,
    store_dir: str | Path = "data/features",
    bundle_dir: str | Path = "models/bundle",
    reports_dir: str | Path = "reports",
    cv_state_dir: str | Path = "models/cv-state",
    log: Callable[[str], None] | None = None,
) -> dict:
    """The `genre-se evaluate` stage: test-split metrics (+ k-fold CV) written under ``reports/``."""
    import shutil

    from .bundle import load_bundle

    store = FeatureStore.open(store_dir)
    bundle = load_bundle(bundle_dir)
    if bundle.labels != store.labels:
        raise DatasetError(f"{bundle_dir}: bundle labels {bundle.labels} differ from the store's {store.labels}")
    if bundle.feature_config.to_dict() | {"workers": 0} != store.features.to_dict() | {"workers": 0}:
        raise DatasetError(f"{bundle_dir}: the bundle was trained on other features than {store_dir} holds")
    from .calibration import Calibration

    from .embedding_svm import load_embedding_svm
    from .fusion import load_svm

    calibration = Calibration.from_dict(bundle.extra.get("calibration"), str(bundle_dir))
    metrics, predictions = evaluate_rows(bundle.model, store, store.rows("test"), calibration.temperature,
                                         svm=load_svm(bundle_dir, bundle.labels),
                                         embedding_svm=load_embedding_svm(bundle_dir, bundle.labels),
                                         aggregate=params.evaluate.aggregate)
    metrics["aggregate"] = params.evaluate.aggregate
    # train.fit_all trains the bundle on every clip, the test split's too: its test numbers are in-sample
    metrics["in_sample"] = bool((bundle.extra.get("train_config") or {}).get("fit_all", False))
    reports = Path(reports_dir)
    if params.evaluate.folds > 1:
        from .config import ModelConfig, from_dict

        cv = cross_validate(store, params, from_dict(ModelConfig, bundle.model_config, "model"), cv_state_dir, log,
                            train_cfg=_cv_train_config(params, bundle.extra))
        metrics["cv"] = {k: v for k, v in cv.items() if k != "per_fold"}
    per_class = pd.DataFrame([{"genre": g, **s} for g, s in metrics.pop("per_class").items()])
    matrix = metrics.pop("confusion_matrix")
    # the reports are one set: the last run's go first, so an interrupted write leaves some missing (and no
    # metrics.json, written last), never new files beside old ones
    for name in REPORTS:
        (reports / name).unlink(missing_ok=True)
    write_csv(reports / "cv_folds.csv", pd.DataFrame(cv["per_fold"]) if params.evaluate.folds > 1
              else pd.DataFrame(columns=list(CV_FOLD_COLUMNS)))
    write_csv(reports / "per_class.csv", per_class)
    write_csv(reports / "predictions.csv", predictions)
    plot_confusion(matrix, store.labels, reports / "confusion_matrix.png",
                   f"test clips (n={metrics['n_clips']}), accuracy {metrics['clip']['accuracy']:.2f}"
                   + (" (in-sample: train.fit_all)" if metrics["in_sample"] else ""))
    plot_reliability(predictions, reports / "reliability.png", calibration.temperature)
    write_json(reports / "metrics.json", metrics)  # last: its presence says the set is complete
    if params.evaluate.folds > 1:
        shutil.rmtree(cv_state_dir, ignore_errors=True)  # the folds' states, once their results are written
    metrics["confusion_matrix"] = matrix
    metrics["per_class"] = per_class
    return metrics
