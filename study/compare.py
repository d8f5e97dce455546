"""The SE study: repeated k-fold clip-level cross-validation of named model variants and the SVM baseline.

A *study file* (YAML, e.g. ``study/gtzan_mini.yaml``) names the base ``params.yaml``, dotted overrides for
every run (``set``), the repeat seeds and the variants::

    params: params.yaml
    set: {train.epochs: 20, train.patience: 6}
    seeds: [42, 43]
    variants:
      svm: baseline                                 # MFCC + spectral statistics, RBF SVM
      no_se: {model.se: false}
      se_r16: {model.reduction_ratios: 16}
      se_tuned: {model.reduction_ratios: tuned}     # the r of best_params.json (the tune stage)

Every seed deals its own stratified clip folds (``datasets.assign_splits(index, data, seed, folds=k)``; the
seed of ``params.yaml`` gives exactly the folds the ``prepare`` stage wrote) and every variant, the baseline
included, is scored on the same folds: fold f is tested, fold f+1 early-stops the CNN, the rest train (the
SVM trains on every fold but f). That is the convention of ``genre_se.evaluate.cross_validate``.

One CSV row per (variant, seed, fold) is written as soon as it is done (atomically), so an interrupted study
resumes where it stopped: rows already present with the same configuration key are skipped, and a CNN fold
that was cut short resumes after its last finished epoch (``genre_se.train`` keeps its state).

Usage (from the repository root)::

    python -m study.compare prepare --study study/gtzan_mini.yaml --work study/work/gtzan   # index + features
    python -m study.compare tune    --study study/gtzan_mini.yaml --work study/work/gtzan   # best_params.json
    python -m study.compare run     --study study/gtzan_mini.yaml --work study/work/gtzan \\
        --out study/results/gtzan_mini.csv --summary study/results/gtzan_mini.md

Without ``--work`` the pipeline's own outputs are read (``data/features``, ``data/index.csv``,
``models/best_params.json``; build them with ``evaluate.folds: k``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from genre_se.config import Params, ParamsLoader, load_params, parse_value
from genre_se.errors import ConfigError, DatasetError, GenreSEError
from genre_se.fileio import write_csv, write_text
from genre_se.interrupts import interrupts_noted, raise_if_interrupted

BASELINE = "baseline"
TUNED = "tuned"
CSV_COLUMNS = [
    "variant", "seed", "fold", "clip_accuracy", "clip_macro_f1", "params", "train_seconds",
    "epochs_run", "best_epoch", "n_test_clips", "config_key",
]
# with the study's `external` folder; with `robustness: true`
OPTIONAL_COLUMNS = ["external_top1", "external_song_top1", "robustness_agreement", "robustness_tv"]
QUICK_OVERRIDES = {"train.epochs": 1, "train.patience": 1}
# the per-clip predictions beside the CSV (``clip_predictions_path``): paired clip-level tests in the summary
CLIP_COLUMNS = ["variant", "seed", "fold", "clip_id", "actual", "predicted", "config_key"]
# the CNN's top probability for each answer (since session 7; empty for the SVM and for older rows): clip ECE
ANSWER_COLUMNS = CLIP_COLUMNS + ["confidence"]
# the robustness report of each fold model per transform (mean over its test clips), in <out>_robustness.csv
ROBUSTNESS_COLUMNS = ["variant", "seed", "fold", "transform", "top1_agree", "tv_distance", "config_key"]
# every answer's whole distribution (since session 9), in <out>_probs.csv: one row per CNN segment (the SVM: per
# clip), ``set`` "test" (the fold's test clips) or "external", then one probability column per genre. A clip's
# distribution is the mean of its rows; ensembles and out-of-fold temperature fits are computed from it
# (study/ensemble.py) without training again.
PROB_ID_COLUMNS = ["variant", "seed", "fold", "set", "clip_id", "actual", "config_key"]
#: A variant key that is not a params key: added to the training seed of every fold (default 0), so that
#: variants with the same settings and different offsets are independently initialised members of an ensemble
#: trained on the same folds.
INIT_OFFSET = "study.init_offset"


# --------------------------------------------------------------------------------------------------
# The study file


@dataclass(frozen=True)
class Study:
    """What to compare: variants (name -> dotted overrides, or ``"baseline"``), seeds, shared overrides."""

    variants: dict
    seeds: list
    overrides: dict = field(default_factory=dict)
    params_path: str = "params.yaml"
    external: str | None = None  # folder-per-genre audio every CNN fold model is also scored on (never trained on)
    robustness: bool = False     # also run the robustness report on every CNN fold model's test clips

    def cnn_variants(self) -> list[str]:
        return [name for name, spec in self.variants.items() if spec != BASELINE]


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is a ConfigError naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ParamsLoader) or {}  # 1e-3 a float, as params.yaml
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the study file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    # keys starting with "x-" only hold YAML anchors (shared settings merged into variants with <<: *name)
    known = {"params", "set", "seeds", "variants", "external", "robustness"}
    unknown = sorted(k for k in set(raw) - known if not str(k).startswith("x-"))
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    external = raw.get("external")
    if external is not None and not isinstance(external, str):
        raise ConfigError(f"{path}: external: must be a folder path, got {external!r}")
    robustness = raw.get("robustness", False)
    if not isinstance(robustness, bool):
        raise ConfigError(f"{path}: robustness: must be true or false, got {robustness!r}")
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: variants: must map at least one name to overrides or 'baseline'")
    for name, spec in variants.items():
        if spec != BASELINE and not isinstance(spec, dict):
            raise ConfigError(f"{path}: variants.{name}: must be a mapping of dotted keys or 'baseline'")
    seeds = raw.get("seeds", [42])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: seeds: must be a non-empty list of ints >= 0, got {seeds!r}")
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: set: must be a mapping of dotted keys")
    params_path = raw.get("params", "params.yaml")
    return Study({str(k): v for k, v in variants.items()}, list(seeds), dict(overrides), str(params_path), external,
                 robustness)


@dataclass(frozen=True)
class ExternalSet:
    """Out-of-domain files (e.g. ../shared/data/real-clips): their segments, labels and song of origin."""

    segments: list      # one (n, n_mels, frames) float32 array per file
    labels: np.ndarray  # index into the store's labels
    songs: list         # excerpts of one song share a song id: ``<name>-2of3-at32s.mp3`` -> ``<name>``
    paths: list


def external_files(folder: str | Path, labels: list[str]) -> list[tuple[Path, str, str]]:
    """``(path, genre, song)`` for every audio file under ``folder/<genre>/`` of a genre in ``labels``.

    Excerpts of one song share a song id: ``<genre>/<name>-2of3-at32s.mp3`` -> ``<genre>/<name>``.
    """
    import re

    from genre_se.audio import AUDIO_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: external folder not found")
    rows = []
    for path in sorted(folder.glob("*/*")):
        if path.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and path.parent.name in labels:
            song = re.sub(r"-\d+of\d+.*$", "", path.stem)
            rows.append((path, path.parent.name, f"{path.parent.name}/{song}"))
    return rows


def load_external(folder: str | Path, labels: list[str], features: dict) -> ExternalSet:
    """Segments of every audio file under ``folder/<genre>/`` whose genre the store knows.

    Features come from the store's own definition, so they are what a trained bundle would see in ``predict``.
    """
    from genre_se.config import FeatureConfig, from_dict
    from genre_se.features import extract_segments

    cfg = features if isinstance(features, FeatureConfig) else from_dict(FeatureConfig, features, "features")
    files = external_files(folder, labels)
    if not files:
        raise DatasetError(f"{folder}: no audio of a known genre in <genre>/ folders")
    return ExternalSet([extract_segments(path, cfg).data for path, _, _ in files],
                       np.asarray([labels.index(genre) for _, genre, _ in files]),
                       [song for _, _, song in files], [str(path) for path, _, _ in files])


def external_scores(model, external: ExternalSet, label_names: list) -> dict:
    """Top-1 accuracy per file (mean of segment probabilities, as ``predict`` does) and per song, and each
    file's answer (``external_files``: clip_id ``<genre>/<file name>``, actual, predicted)."""
    segment_probs = [np.asarray(model.predict(x, verbose=0)) for x in external.segments]
    probs = np.stack([p.mean(axis=0) for p in segment_probs])
    result = _external_result(probs, np.arange(probs.shape[1]), external, label_names)
    result["external_files"]["confidence"] = probs.max(axis=1)
    ids = result["external_files"]["clip_id"].to_numpy()
    names = np.asarray(label_names, dtype=object)[external.labels]
    result["external_probs"] = probability_frame(np.repeat(ids, [len(p) for p in segment_probs]),
                                                 np.repeat(names, [len(p) for p in segment_probs]),
                                                 np.concatenate(segment_probs), label_names, "external")
    return result


def probability_frame(clip_ids, actual, probs: np.ndarray, label_names: list, which: str) -> pd.DataFrame:
    """Rows of ``<out>_probs.csv`` (without the run's variant/seed/fold/key): one per segment or clip."""
    frame = pd.DataFrame({"set": which, "clip_id": np.asarray(clip_ids, dtype=object),
                          "actual": np.asarray(actual, dtype=object)})
    return pd.concat([frame, pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(label_names))], axis=1)


def _external_result(scores: np.ndarray, classes: np.ndarray, external: ExternalSet, label_names: list) -> dict:
    """Top-1 per file and per song (the mean of its files' ``scores``) of per-file class ``scores``
    (files, classes), column j scoring label index ``classes[j]``; plus the per-file answers."""
    predicted = np.asarray(classes)[np.argmax(scores, axis=1)]
    by_song: dict = {}
    for row, t, song in zip(scores, external.labels, external.songs):
        by_song.setdefault(song, [[], t])[0].append(row)
    song_hits = [classes[int(np.argmax(np.mean(rows, axis=0)))] == t for rows, t in by_song.values()]
    names = np.asarray(label_names, dtype=object)
    files = pd.DataFrame({"clip_id": [f"{Path(p).parent.name}/{Path(p).name}" for p in external.paths],
                          "actual": names[external.labels], "predicted": names[predicted]})
    return {"external_top1": float(np.mean(predicted == external.labels)),
            "external_song_top1": float(np.mean(song_hits)), "external_files": files}


def variant_params(study: Study, variant: str, extra: dict | None = None,
                   best_params_path: str | Path | None = None) -> Params:
    """The validated params of one CNN variant: base file + study ``set`` + the variant's keys + ``extra``.

    ``extra`` (the CLI's ``-S`` and ``--quick``) comes last: it applies to every variant, even one that sets the
    same key (``--quick``'s one epoch, also for a variant of 30). ``model.reduction_ratios: tuned`` takes the
    ratios from ``best_params.json`` (the tune stage's output). A bad key is named with its variant.
    """
    overrides = {**study.overrides, **study.variants[variant], **(extra or {})}
    overrides.pop(INIT_OFFSET, None)
    if overrides.get("model.reduction_ratios") == TUNED:
        overrides["model.reduction_ratios"] = tuned_ratios(best_params_path, variant)
    try:
        return load_params(study.params_path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"variants.{variant}: {exc}") from None


def init_offset(study: Study, variant: str) -> int:
    """The variant's ``study.init_offset`` (0 when it has none): added to every fold's training seed."""
    spec = study.variants[variant]
    offset = spec.get(INIT_OFFSET, 0) if isinstance(spec, dict) else 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"variants.{variant}: {INIT_OFFSET}: must be an int >= 0, got {offset!r}")
    return offset


def tuned_ratios(best_params_path: str | Path | None, variant: str = "tuned"):
    """``model.reduction_ratios`` from a tune-stage ``best_params.json``."""
    if best_params_path is None or not Path(best_params_path).is_file():
        raise ConfigError(f"variants.{variant}: model.reduction_ratios is 'tuned' but {best_params_path} does "
                          "not exist (run the tune stage, or `python -m study.compare tune`)")
    try:
        return json.loads(Path(best_params_path).read_text())["model"]["reduction_ratios"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{best_params_path}: no model.reduction_ratios in it") from None


# --------------------------------------------------------------------------------------------------
# Folds


def store_clip_index(store, index: pd.DataFrame) -> pd.DataFrame:
    """The index rows of the clips that are in the store, in the store's clip order."""
    clips = pd.unique(store.table["clip_id"])
    by_id = index.set_index("clip_id")
    missing = [c for c in clips if c not in by_id.index]
    if missing:
        raise DatasetError(f"the index lacks clip {missing[0]!r} of the feature store (index and store differ)")
    return by_id.loc[clips].reset_index()


def row_folds(store, index: pd.DataFrame, params: Params, seed: int, folds: int) -> np.ndarray:
    """Fold number of every store row for one repeat seed: stratified clip folds of ``assign_splits``."""
    from genre_se.datasets import assign_splits

    clips = store_clip_index(store, index)
    assigned = assign_splits(clips, params.data, seed, folds=folds)
    fold_of_clip = dict(zip(assigned["clip_id"], assigned["fold"]))
    return store.table["clip_id"].map(fold_of_clip).to_numpy(dtype=int)


def config_key(*parts) -> str:
    """A short hash identifying what a CSV row was computed from (so a changed variant is recomputed)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# One fold


def fold_robustness(model, store, params: Params, paths: list[str]) -> dict:
    """The robustness report (``genre-se robustness``: gain, MP3, resampling, low-pass, noise, compression,
    leading silence) of a fold model on files it never saw: mean top-1 agreement and TV distance over every
    file x transform, and per transform (``robustness_transforms``, a frame). The model is served as
    ``predict`` serves a bundle (same features, same aggregation)."""
    from genre_se.bundle import ModelBundle
    from genre_se.inference import GenreClassifier
    from genre_se.robustness import robustness_report

    bundle = ModelBundle(model=model, labels=list(store.labels), features=store.features.to_dict(),
                         model_config=dataclasses.asdict(params.model))
    report = robustness_report(GenreClassifier(bundle), paths)
    per_transform = report.groupby("transform", sort=False)[["top1_agree", "tv_distance"]].mean().reset_index()
    return {"robustness_agreement": float(report["top1_agree"].mean()),
            "robustness_tv": float(report["tv_distance"].mean()), "robustness_transforms": per_transform}


def run_cnn_fold(store, params: Params, folds_of_rows: np.ndarray, fold: int, k: int, seed: int,
                 state_dir: Path, log: Callable[[str], None] | None = None, bundle_dir: Path | None = None,
                 external: ExternalSet | None = None, robustness_paths: list[str] | None = None,
                 init_offset: int = 0) -> dict:
    """Train the variant on the fold's train rows (early stopping on the next fold), score the test fold.

    The training seed is ``seed + init_offset + fold``: the repeat seed alone deals the folds, so an offset gives
    another independently initialised model on exactly the same folds (an ensemble member).

    With ``train.fit_all`` (how the final model is trained) the early-stopping fold trains too and no epoch is
    chosen on held-out clips: the CV then measures exactly the recipe of the shipped bundle.

    ``bundle_dir``: also save the fold's model as a bundle (its test clips in ``extra``), e.g. for
    ``genre_se.analyze`` on clips it never saw.
    """
    import keras

    from genre_se.evaluate import cv_fold_rows, evaluate_rows
    from genre_se.train import predict_rows, train_model

    if params.model.classifier != "softmax" or params.model.fusion != "none":
        # every row and kept distribution here is the network's softmax; a clip head would silently not be measured
        raise DatasetError("study.compare scores the network's softmax: measure model.classifier: svm with "
                           "study.fold_embeddings on kept fold models, model.fusion: svm with study.ensemble")
    train, valid, test = cv_fold_rows(folds_of_rows, fold, k, params.train.fit_all)
    result = train_model(store, params.model, params.train, train_rows=train, valid_rows=valid,
                         seed=seed + init_offset + fold, state_dir=state_dir, log=log)
    seconds = result.train_seconds  # fitting time over every session of the fold (a resumed one too)
    metrics, predictions = evaluate_rows(result.model, store, test)
    table = store.table.iloc[test]
    test_probs = probability_frame(table["clip_id"].to_numpy(), table["label"].to_numpy(),
                                   predict_rows(result.model, store, test), store.labels, "test")
    if bundle_dir is not None:
        from genre_se.bundle import save_bundle

        save_bundle(bundle_dir, result.model, store.labels, store.features, params.model,
                    extra={"seed": seed, "fold": fold, "folds": k, "test_clips": predictions["clip_id"].tolist()})
    row = {
        "clip_accuracy": metrics["clip"]["accuracy"],
        "clip_macro_f1": metrics["clip"]["macro_f1"],
        "params": int(result.model.count_params()),
        "train_seconds": round(seconds, 2),
        "epochs_run": int(result.epochs_run),
        "best_epoch": int(result.best_epoch),
        "n_test_clips": int(metrics["n_clips"]),
        "clips": predictions[["clip_id", "actual", "predicted", "confidence"]],
        "probs": test_probs,
    }
    if external is not None:
        row.update(external_scores(result.model, external, store.labels))
        row["probs"] = pd.concat([test_probs, row.pop("external_probs")], ignore_index=True)
    if robustness_paths:
        row.update(fold_robustness(result.model, store, params, robustness_paths))
    keras.backend.clear_session()  # free the graph before the next fold
    return row


def _cached_features(cache: Path, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, cached in the npz ``cache`` under ``key`` (recomputed when the key differs)."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                return saved["features"]
    features = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez(tmp, features=features, key=np.array(key))
    tmp.replace(cache)
    return features


def baseline_features(store, index: pd.DataFrame, cache: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """MFCC + spectral statistics per store clip (cached in ``cache``), their label indices, clip ids."""
    from genre_se.baseline import dataset_features

    clips = store_clip_index(store, index)
    ids = clips["clip_id"].tolist()
    labels = clips["label"].map({name: i for i, name in enumerate(store.labels)}).to_numpy()
    features = _cached_features(cache, config_key(ids, clips["path"].tolist()), lambda: dataset_features(clips))
    return features, labels, ids


def external_svm_features(external: ExternalSet, cache: Path) -> np.ndarray:
    """The baseline's feature vector of every external file (cached in ``cache``, keyed by the paths)."""
    from genre_se.baseline import dataset_features

    return _cached_features(cache, config_key(external.paths),
                            lambda: dataset_features(pd.DataFrame({"path": external.paths})))


def run_baseline_fold(features: np.ndarray, labels: np.ndarray, clip_folds: np.ndarray, fold: int,
                      seed: int, external: tuple[np.ndarray, ExternalSet] | None, clip_ids: list,
                      label_names: list) -> dict:
    """Fit the SVM on every fold but ``fold`` and score it there (clip level: one vector per clip).

    ``external``: the external files' feature vectors and set; the fold's SVM is scored on them as the CNN
    fold models are (per file; per song, the mean of the files' decision values). ``clip_ids`` and
    ``label_names`` name the rows and classes of the per-clip predictions (``clips``).
    """
    from sklearn.metrics import accuracy_score, f1_score

    from genre_se.baseline import make_classifier
    from genre_se.fusion import fit_svm

    test, train = clip_folds == fold, (clip_folds != fold) & (clip_folds >= 0)
    start = time.perf_counter()
    clf = make_classifier(seed).fit(features[train], labels[train])
    seconds = time.perf_counter() - start
    pred = clf.predict(features[test])
    ids, names = np.asarray(clip_ids, dtype=object), np.asarray(label_names, dtype=object)
    clips = pd.DataFrame({"clip_id": ids[test], "actual": names[labels[test]], "predicted": names[pred]})
    # Platt-scaled probabilities for ensembles (study/ensemble.py), from a second, calibrated fit: the answers
    # above stay the decision function's, so the scores are what they were before
    platt = fit_svm(features[train], labels[train], list(label_names), seed=seed)  # the pipeline's fusion SVM
    probs = [probability_frame(ids[test], names[labels[test]], platt.probabilities(features[test]),
                               label_names, "test")]
    scores = {}
    if external is not None:
        ext_features, ext = external
        decision = np.asarray(clf.decision_function(ext_features))  # (files, classes), one-vs-rest shape
        scores = _external_result(decision, clf.classes_, ext, label_names)
        probs.append(probability_frame(scores["external_files"]["clip_id"], names[ext.labels],
                                       platt.probabilities(ext_features), label_names, "external"))
    return {
        **scores,
        "clip_accuracy": float(accuracy_score(labels[test], pred)),
        "clip_macro_f1": float(f1_score(labels[test], pred, labels=np.unique(labels), average="macro",
                                        zero_division=0)),
        "params": svm_parameter_count(clf),
        "train_seconds": round(seconds, 3),
        "epochs_run": 0,
        "best_epoch": 0,
        "n_test_clips": int(test.sum()),
        "clips": clips,
        "probs": pd.concat(probs, ignore_index=True),
    }


def svm_parameter_count(pipeline) -> int:
    """Numbers the fitted SVM pipeline stores: scaler mean/scale, support vectors, dual coefs, intercepts."""
    scaler, svc = pipeline[0], pipeline[-1]
    return int(scaler.mean_.size + scaler.scale_.size + svc.support_vectors_.size + svc.dual_coef_.size
               + svc.intercept_.size)


# --------------------------------------------------------------------------------------------------
# The study


def read_results(path: Path) -> pd.DataFrame:
    """The rows already computed (an empty table when the CSV does not exist yet)."""
    if not path.is_file():
        return pd.DataFrame(columns=CSV_COLUMNS + OPTIONAL_COLUMNS)
    frame = _read_csv(path, CSV_COLUMNS, "study")
    for column in OPTIONAL_COLUMNS:
        frame[column] = _numbers(frame.get(column, pd.Series(np.nan, index=frame.index)))
    return frame


def clip_predictions_path(out_csv: str | Path) -> Path:
    """Where the per-clip predictions of ``out_csv`` live: ``<stem>_clips.csv`` beside it."""
    return _beside(out_csv, "clips")


def external_predictions_path(out_csv: str | Path) -> Path:
    """Where each fold model's answers on the study's external files live: ``<stem>_external.csv``."""
    return _beside(out_csv, "external")


def probabilities_path(out_csv: str | Path) -> Path:
    """Where every answer's distribution lives: ``<stem>_probs.csv`` (``PROB_ID_COLUMNS`` + one per genre)."""
    return _beside(out_csv, "probs")


def read_probabilities(path: Path, labels: list | None = None) -> pd.DataFrame:
    """The per-segment (SVM: per-clip) distributions already computed; empty when the file does not exist.
    ``labels``: the genre columns it must have (the store's labels)."""
    if not path.is_file():
        return pd.DataFrame(columns=PROB_ID_COLUMNS + list(labels or []))
    frame = _read_csv(path, PROB_ID_COLUMNS + list(labels or []), "probabilities",
                      dtype={"clip_id": str, "actual": str, "set": str})
    return frame


def robustness_path(out_csv: str | Path) -> Path:
    """Where each fold model's robustness agreement per transform lives: ``<stem>_robustness.csv``."""
    return _beside(out_csv, "robustness")


def _beside(out_csv: str | Path, what: str) -> Path:
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}_{what}.csv")


def read_clip_predictions(path: Path) -> pd.DataFrame:
    """The per-clip (or per-file) answers already computed (empty when the file does not exist yet), with
    ``confidence`` NaN where the answer has none (the SVM; rows written before it was kept)."""
    if not path.is_file():
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    frame = _read_csv(path, CLIP_COLUMNS, "clip-predictions", dtype={"clip_id": str, "actual": str, "predicted": str})
    frame["confidence"] = _numbers(frame.get("confidence", pd.Series(np.nan, index=frame.index)))
    return frame[ANSWER_COLUMNS]


def read_robustness(path: Path) -> pd.DataFrame:
    """The per-transform robustness rows already computed (empty when the file does not exist yet)."""
    if not path.is_file():
        return pd.DataFrame(columns=ROBUSTNESS_COLUMNS)
    return _read_csv(path, ROBUSTNESS_COLUMNS, "robustness", dtype={"transform": str})[ROBUSTNESS_COLUMNS]


def _read_csv(path: Path, required: list[str], what: str, dtype: dict | None = None, **kwargs) -> pd.DataFrame:
    # a configuration key is a hex string: one made only of digits must not become a number (then it no longer
    # matches the same key read from another file); round-trip floats so that rewriting the file leaves the rows
    # already there unchanged (pandas' fast parser can lose the last digit)
    frame = pd.read_csv(path, keep_default_na=False, dtype={"config_key": str, **(dtype or {})},
                        float_precision="round_trip", **kwargs)
    missing = set(required) - set(frame.columns)
    if missing:
        raise DatasetError(f"{path}: not a {what} CSV (lacks {', '.join(sorted(missing))}); move it away")
    return frame


def _numbers(column: pd.Series) -> pd.Series:
    """A column that may hold empty cells (rows written before it existed) as floats, NaN where empty. Python's
    float() parses exactly; pd.to_numeric on strings can lose the last digit (then every rewrite churns rows)."""
    if column.dtype != object:
        return column.astype(float)

    def number(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return np.nan

    return column.map(number).astype(float)


#: a fold model's key in every table of a study
RUN_KEY = ["variant", "seed", "fold"]


def replace_runs(frame: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the rows of every fold model (``RUN_KEY``) that ``new`` holds replaced by ``new``'s."""
    if new.empty:
        return frame
    kept = frame[~pd.MultiIndex.from_frame(frame[RUN_KEY]).isin(pd.MultiIndex.from_frame(new[RUN_KEY]))]
    return new if kept.empty else pd.concat([kept, new], ignore_index=True)


def _record_answers(frame: pd.DataFrame, answers: pd.DataFrame | None, run: dict, key: str,
                    path: Path, columns: list[str] = ANSWER_COLUMNS) -> pd.DataFrame:
    """``frame`` (per-clip or per-file answers, per-transform robustness) with one run's ``answers`` in place of
    its old ones, written to ``path``; unchanged when the run gave none. Columns of ``columns`` the answers
    lack (the SVM's confidence) are left empty."""
    if answers is None:
        return frame
    new = answers.assign(**run, config_key=key).reindex(columns=columns)
    new = new.astype({c: np.float64 for c in new.columns if new[c].dtype == np.float32})  # as read back
    frame = replace_runs(frame, new)
    write_csv(path, frame)
    return frame


@contextlib.contextmanager
def exclusive(out_csv: str | Path):
    """One run at a time per results CSV: a run keeps the rows in memory and rewrites its CSVs whole after every
    fold, so a second run on the same CSV would silently drop the first one's rows (run seeds one after another,
    or give each its own ``--out``)."""
    import fcntl

    lock_path = Path(f"{out_csv}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out_csv}: another study.compare run is writing these results; wait for it to "
                              "finish, or give this one another --out") from None
        yield  # the (empty) lock file stays: removing it would let two runs lock two different files


def run_study(study: Study, store_dir: str | Path, index_path: str | Path, out_csv: str | Path,
              **options) -> pd.DataFrame:
    """Run every (variant, seed, fold) not yet in ``out_csv`` (:func:`_run_study`, where ``options`` are
    documented), holding the results CSV's lock (:func:`exclusive`)."""
    with exclusive(out_csv):
        return _run_study(study, store_dir, index_path, out_csv, **options)


def _run_study(
    study: Study,
    store_dir: str | Path,
    index_path: str | Path,
    out_csv: str | Path,
    *,
    best_params_path: str | Path | None = None,
    state_root: str | Path = "models/study-state",
    variants: list[str] | None = None,
    extra: dict | None = None,
    quick: bool = False,
    keep_models: list[str] | None = None,
    seeds: list[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run every (variant, seed, fold) not yet in ``out_csv`` and return the whole table.

    Parameters
    ----------
    extra : dict, optional
        Dotted overrides applied to every CNN variant after the study's own ``set`` (the CLI's ``-S``).
    quick : bool
        One seed and one epoch per fold: a smoke test of the whole study (tests, CI).
    keep_models : list of str, optional
        Variants whose fold models are saved as bundles in ``state_root/bundles/<variant>/seed<s>/fold<f>``.
    seeds : list of int, optional
        A subset of the study's seeds to run now (e.g. only a newly added repeat seed, leaving rows of the
        others untouched even where their configuration key is older).
    """
    from genre_se.datasets import read_index
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(store_dir)
    index = read_index(index_path)
    out_csv, state_root = Path(out_csv), Path(state_root)
    chosen = variants or list(study.variants)
    unknown = [v for v in chosen if v not in study.variants]
    if unknown:
        raise ConfigError(f"--variants: {unknown[0]!r} is not in the study (has {', '.join(study.variants)})")
    extra = {**(extra or {}), **(QUICK_OVERRIDES if quick else {})}
    unknown_seeds = [s for s in (seeds or []) if s not in study.seeds]
    if unknown_seeds:
        raise ConfigError(f"--seeds: {unknown_seeds[0]} is not in the study's seeds {study.seeds}")
    seeds = [s for s in study.seeds if seeds is None or s in seeds]
    seeds = seeds[:1] if quick else seeds
    base = load_params(study.params_path, {**study.overrides, **extra})
    k = _fold_count(store, base)
    results = read_results(out_csv)
    if quick and (pd.to_numeric(results["epochs_run"], errors="coerce") > 1).any():
        raise ConfigError(f"--quick: {out_csv} holds results of full runs, which its one-epoch rows would replace; "
                          "give another --out")
    # every variant checked before the first fold: a typo in the last one must not surface hours later
    cnn_params = {v: variant_params(study, v, extra, best_params_path) for v in chosen
                  if study.variants[v] != BASELINE}
    clips_csv = clip_predictions_path(out_csv)
    clip_rows = read_clip_predictions(clips_csv)
    external_csv = external_predictions_path(out_csv)
    external_rows = read_clip_predictions(external_csv)
    robustness_csv = robustness_path(out_csv)
    robustness_rows = read_robustness(robustness_csv)
    probs_csv = probabilities_path(out_csv)
    prob_rows = read_probabilities(probs_csv, list(store.labels))
    prob_columns = PROB_ID_COLUMNS + list(store.labels)
    done = {(r.variant, int(r.seed), int(r.fold)): r.config_key for r in results.itertuples()}
    features = labels = ext = None
    external = load_external(study.external, store.labels, store.features) if study.external else None
    # rows of the seeds this run leaves alone (--seeds, --quick) stay as they are, even where the study file now
    # says otherwise: say so, or a summary pools two configurations under one variant name without a word
    for variant, seed, n, old, now in stale_rows(study, results, chosen, [s for s in study.seeds if s not in seeds],
                                                 cnn_params, store, index, base, k, external):
        print(f"study: warning: {variant} seed {seed}: {n} row(s) of {out_csv} were computed with another "
              f"configuration than the study file's now (key {old}, now {now}); they are kept, and pooled with this "
              f"run's rows in every summary: rerun with --seeds {seed} to recompute them", file=sys.stderr)
    with interrupts_noted():  # a Ctrl-C is never lost between folds (see genre_se.interrupts)
        for seed in seeds:
            folds_of_rows = row_folds(store, index, base, seed, k)
            fold_key = config_key(folds_of_rows.tolist())
            for variant in chosen:
                is_baseline = study.variants[variant] == BASELINE
                params = cnn_params.get(variant)
                offset = init_offset(study, variant)
                if params is not None:
                    check_store_features(variant, params.features, store.features, store_dir)
                key = run_key(study, variant, params, fold_key, external, store.features)
                for fold in range(k):
                    keep = state_root / "bundles" / variant / f"seed{seed}" / f"fold{fold}" \
                        if variant in (keep_models or []) and not is_baseline else None
                    if done.get((variant, seed, fold)) == key and (keep is None or (keep / "bundle.json").is_file()):
                        continue  # done (and, asked to keep it, its fold model is kept)
                    if is_baseline:
                        if features is None:
                            features, labels, ids = baseline_features(store, index, state_root / "svm_features.npz")
                            ext = (external_svm_features(external, state_root / "svm_external_features.npz"), external
                                   ) if external else None
                        clip_fold = _clip_folds(store, folds_of_rows, ids)
                        scores = run_baseline_fold(features, labels, clip_fold, fold, seed, ext, ids, store.labels)
                    else:
                        state_dir = state_root / variant / f"seed{seed}" / f"fold{fold}"
                        fold_log = (lambda line, v=variant, s=seed, f=fold:
                                    log(f"{v} seed {s} fold {f + 1}/{k}: {line}")) if log else None
                        robust = None
                        if study.robustness:
                            test_clips = pd.unique(store.table["clip_id"].to_numpy()[folds_of_rows == fold])
                            robust = index.set_index("clip_id").loc[test_clips, "path"].tolist()
                        scores = run_cnn_fold(store, params, folds_of_rows, fold, k, seed, state_dir, fold_log, keep,
                                              external, robust, offset)
                        _remove_tree(state_dir)
                    # first, so that a row in the CSV has its per-clip and per-file answers beside it
                    run = {"variant": variant, "seed": seed, "fold": fold}
                    clip_rows = _record_answers(clip_rows, scores.pop("clips", None), run, key, clips_csv)
                    external_rows = _record_answers(external_rows, scores.pop("external_files", None), run, key,
                                                    external_csv)
                    robustness_rows = _record_answers(robustness_rows, scores.pop("robustness_transforms", None), run,
                                                      key, robustness_csv, ROBUSTNESS_COLUMNS)
                    prob_rows = _record_answers(prob_rows, scores.pop("probs", None), run, key, probs_csv, prob_columns)
                    row = {"variant": variant, "seed": seed, "fold": fold, **scores, "config_key": key}
                    results = replace_runs(results, pd.DataFrame([row], columns=CSV_COLUMNS + OPTIONAL_COLUMNS))
                    write_csv(out_csv, results)
                    if log:
                        log(f"{variant} seed {seed} fold {fold + 1}/{k}: clip accuracy {scores['clip_accuracy']:.3f}, "
                            f"macro-F1 {scores['clip_macro_f1']:.3f}, {scores['train_seconds']:.1f} s")
                    raise_if_interrupted()  # a Ctrl-C dropped inside the fold's clear_session(): stop, the row kept
    order = {name: i for i, name in enumerate(study.variants)}
    return results.sort_values(["variant", "seed", "fold"], key=lambda c: c.map(order) if c.name == "variant" else c,
                               kind="mergesort").reset_index(drop=True)


def run_key(study: Study, variant: str, params: Params | None, fold_key: str, external: ExternalSet | None,
            features) -> str:
    """The configuration key of a (variant, seed) run: what its rows were computed from (``params``: None for the
    baseline; ``fold_key``: the seed's folds; ``features``: the store's)."""
    if study.variants[variant] == BASELINE:
        what = ("svm", fold_key) + (("external", config_key(external.paths)) if external else ())
    else:
        offset = init_offset(study, variant)
        what = ((_changed(params.model), _changed(params.train), fold_key)
                + (("robustness",) if study.robustness else ()) + _feature_key(features)
                + ((("init_offset", offset),) if offset else ()))
    return config_key(*what)


def stale_rows(study: Study, results: pd.DataFrame, variants: list[str], seeds: list[int], cnn_params: dict,
               store, index: pd.DataFrame, base: Params, k: int, external: ExternalSet | None) -> list[tuple]:
    """``(variant, seed, rows, stored key, current key)`` for every (variant, seed) of ``seeds`` whose rows in
    ``results`` were computed with another configuration key than the study file gives now."""
    out = []
    for seed in seeds:
        fold_key = None
        for variant in variants:
            rows = results[(results["variant"] == variant) & (pd.to_numeric(results["seed"]) == seed)]
            if rows.empty:
                continue
            if fold_key is None:
                fold_key = config_key(row_folds(store, index, base, seed, k).tolist())
            now = run_key(study, variant, cnn_params.get(variant), fold_key, external, store.features)
            old = sorted(set(rows["config_key"].astype(str)) - {now})
            if old:
                out.append((variant, seed, int((rows["config_key"].astype(str) != now).sum()), ", ".join(old), now))
    return out


def _changed(config) -> dict:
    """The settings of a config that differ from the dataclass defaults: a new switch, added later with
    its default (off), leaves the configuration key of rows already computed unchanged."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != type(config)().__getattribute__(f.name)}


def check_store_features(variant: str, wanted, built, store_dir: str | Path) -> None:
    """A CNN variant trains on the store's segments, so its ``features.*`` must be the store's (``workers``
    aside); otherwise it would be scored under a name that promises features it never saw."""
    for f in dataclasses.fields(built):
        if f.name != "workers" and getattr(wanted, f.name) != getattr(built, f.name):
            value = getattr(wanted, f.name)
            raise ConfigError(
                f"variants.{variant}: features.{f.name} is {value!r} but the feature store {store_dir} was built "
                f"with {getattr(built, f.name)!r}; prepare its own work folder (`prepare --work DIR "
                f"-S features.{f.name}={'null' if value is None else value}`) and run the variant there")


def _feature_key(features) -> tuple:
    """The store's feature settings that differ from the defaults, for the configuration key (empty for the
    default log-mel, so that rows computed before features could vary keep their key)."""
    changed = {k: v for k, v in _changed(features).items() if k != "workers"}
    return (("features", changed),) if changed else ()


def _clip_folds(store, folds_of_rows: np.ndarray, clip_ids: list) -> np.ndarray:
    fold_of_clip = pd.Series(folds_of_rows, index=store.table["clip_id"].to_numpy())
    fold_of_clip = fold_of_clip[~fold_of_clip.index.duplicated()]
    return fold_of_clip.loc[clip_ids].to_numpy(dtype=int)


def _fold_count(store, params: Params) -> int:
    """k: ``evaluate.folds`` of the params (the store's own fold column must agree when it has one)."""
    k = params.evaluate.folds
    if k < 2:
        raise ConfigError("evaluate.folds: the study needs k >= 2 folds (set it in the study file's `set`)")
    if "fold" in store.table.columns:
        stored = int(store.table["fold"].max()) + 1
        if stored != k:
            raise ConfigError(f"evaluate.folds: the study says {k} folds but {store.root} was built with {stored}")
    return k


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Data preparation and tuning for a study (own work directory, so the pipeline's outputs are untouched)


def prepare_work(study: Study, work: Path, extra: dict | None = None) -> tuple[int, int]:
    """Index + feature store of the study's data under ``work`` (own feature cache); (clips, segments)."""
    from genre_se.datasets import run_prepare
    from genre_se.feature_store import run_features

    params = load_params(study.params_path, {**study.overrides, **(extra or {})})
    # the waveform copies every variant asks for (train.waveform_augment), in one store: the originals are
    # the same bits with or without copies, so the variants that use none are unaffected
    kinds = list(params.train.waveform_augment)
    for name in study.cnn_variants():
        kinds += [k for k in study.variants[name].get("train.waveform_augment", []) if k not in kinds]
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, waveform_augment=kinds))
    run_prepare(params, work / "index.csv", work / "prepare_errors.csv")
    store, _ = run_features(params, work / "index.csv", work / "features", work / "features-cache",
                            work / "features_errors.csv")
    return int(store.table["clip_id"].nunique()), len(store.segments)


def tune_work(study: Study, work: Path, extra: dict | None = None, log=None) -> dict:
    """The tune stage on the study's data: ``work/best_params.json`` (the r of ``se_tuned``)."""
    from genre_se.tune import run_tune

    params = load_params(study.params_path, {**study.overrides, **(extra or {})})
    result = run_tune(params, work / "features", work / "best_params.json", work / "tune_trials.csv",
                      work / "tune_objective.png", work / "tuning", log=log)
    return result.best


# --------------------------------------------------------------------------------------------------
# Command line


def _overrides(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(value, f"-S {key.strip()}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.compare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("prepare", "index + feature store of the study's data under --work"),
                            ("tune", "tune r on the study's data: --work/best_params.json"),
                            ("run", "run the comparison, write the CSV and the Markdown summary"),
                            ("summary", "only (re)write the Markdown summary of the CSV, e.g. of a partial run")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--study", default="study/gtzan_mini.yaml", help="study file (default: %(default)s)")
        p.add_argument("--work", help="work folder of `prepare`/`tune` (default: the pipeline's outputs)")
        p.add_argument("-S", "--set", action="append", metavar="KEY=VALUE", help="extra override (repeatable)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    for name in ("run", "summary"):
        sub.choices[name].add_argument("--out", default="reports/study.csv", help="results CSV (default: %(default)s)")
        sub.choices[name].add_argument("--summary", default="reports/study.md",
                                       help="Markdown table (default: %(default)s)")
        sub.choices[name].add_argument("--reference", default=None,
                                       help="variant for paired differences (default: the baseline)")
    run = sub.choices["run"]
    run.add_argument("--features", help="feature store (default: WORK/features or data/features)")
    run.add_argument("--index", help="dataset index (default: WORK/index.csv or data/index.csv)")
    run.add_argument("--best-params", help="tune output (default: WORK/best_params.json or models/best_params.json)")
    run.add_argument("--state", help="training state root (default: WORK/state or models/study-state)")
    run.add_argument("--variants", help="comma-separated subset of the study's variants")
    run.add_argument("--seeds", help="comma-separated subset of the study's seeds (default: all)")
    run.add_argument("--quick", action="store_true", help="one seed, one epoch per fold (smoke test)")
    run.add_argument("--keep-models", help="comma-separated variants whose fold models are kept as bundles "
                                           "(STATE/bundles/VARIANT/seedS/foldF), e.g. for genre-se analyze")
    return parser


def _paths(args) -> dict:
    work = Path(args.work) if args.work else None

    def pick(given: str | None, in_work: str, default: str) -> Path:
        return Path(given) if given else (work / in_work if work else Path(default))

    return {
        "features": pick(args.features, "features", "data/features"),
        "index": pick(args.index, "index.csv", "data/index.csv"),
        "best_params": pick(args.best_params, "best_params.json", "models/best_params.json"),
        "state": pick(args.state, "state", "models/study-state"),
    }


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        study = load_study(args.study)
        extra = _overrides(args.set)
        if getattr(args, "reference", None) and args.reference not in study.variants:  # before hours of training
            raise ConfigError(f"--reference: {args.reference!r} is not in the study (has {', '.join(study.variants)})")
        if args.command in ("prepare", "tune") and not args.work:
            raise ConfigError(f"{args.command}: --work is required (the pipeline's own outputs belong to dvc repro)")
        if args.command == "prepare":
            clips, segments = prepare_work(study, Path(args.work), extra)
            print(f"{clips} clips, {segments} segments -> {args.work}", file=sys.stderr)
            return 0
        if args.command == "tune":
            best = tune_work(study, Path(args.work), extra, log)
            print(f"reduction ratios {best['model']['reduction_ratios']} -> {args.work}/best_params.json",
                  file=sys.stderr)
            return 0
        if args.command == "summary":
            if not Path(args.out).is_file():  # a typo must not overwrite the summary with an empty table
                raise ConfigError(f"--out {args.out}: no results CSV there (`run` writes it)")
            results = read_results(Path(args.out))
        else:
            if args.work and not Path(args.work).is_dir():
                raise ConfigError(f"--work {args.work}: no such folder (make it with `python -m study.compare prepare "
                                  f"--study {args.study} --work {args.work}`)")
            paths = _paths(args)
            variants = args.variants.split(",") if args.variants else None
            seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
            results = run_study(study, paths["features"], paths["index"], args.out,
                                best_params_path=paths["best_params"], state_root=paths["state"], variants=variants,
                                extra=extra, quick=args.quick,
                                keep_models=args.keep_models.split(",") if args.keep_models else None,
                                seeds=seeds, log=log)
        from study.summary import study_summary

        reference = args.reference or next((n for n, s in study.variants.items() if s == BASELINE), None)
        table = study_summary(results, args.out, list(study.variants), reference)
        write_text(args.summary, table)
        print(table)
        return 0
    except GenreSEError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
