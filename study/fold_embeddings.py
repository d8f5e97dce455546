"""What the kept fold models' embeddings say: an SVM head on them (issue 7) and the familiarity flag (issue 10).

``study.compare run --keep-models VARIANT`` keeps every fold model as a bundle
(``STATE/bundles/VARIANT/seed<s>/fold<f>``, its test clips in ``extra``). For each one this script embeds every
segment of the study's feature store (``genre_se.model.embedding_model``, the layer ``genre-se embed`` returns)
and the study's external files, then measures two things without training the network (seconds per fold):

- **SVM head.** On small data the field often keeps a trained network's penultimate layer and fits a classic
  classifier on it. The pipeline's head (``model.classifier: svm``, ``genre_se.embedding_svm``: the baseline's
  standardisation + RBF SVM with Platt probabilities, the answer their argmax) is fitted on the mean clip embeddings of the clips the fold model was trained on (every clip but its test
  clips; with ``train.fit_all`` exactly its training clips) and answers the test clips and the external files;
  the fold model's own answers (the mean of its segment probabilities) on the same clips are the reference,
  checked against the accuracy the study recorded, so both heads are compared on the same model and folds.
- **Stacking the classic features** (``--with-mfcc``): the baseline's window statistics of every clip
  (``genre_se.fusion.window_statistics``, what ``model.fusion: svm`` reads) and the same SVM fitted on the
  fold's training clips; scored alone (``mfcc``), fused with the softmax as ``model.fusion: svm`` fuses
  (``softmax+mfcc``), and fused with the SVM head (``embsvm+mfcc``): does the head still gain from the
  statistics the SE-CNN never sees?
- **Two more heads on the same network** (``--probe-heads``), both ideas of the transfer-learning literature
  for small data: the SVM fitted on the training clips' *segment* embeddings (about 20 per clip instead of one
  mean; the clip's answer the mean of its segments' Platt probabilities: ``segsvm``), and the SVM on every conv
  block's output pooled by mean and standard deviation over time and frequency, concatenated (Choi et al. 2017,
  "Transfer learning for music classification and regression tasks": ``blocksvm``, the clip's mean of them).
- **Familiarity false alarms.** The bundle's ``unfamiliar`` flag (``genre_se.familiarity``: Mahalanobis
  distance from the training segments' embeddings, threshold the 0.95 quantile of held-out clips' distances) was
  checked on one model's 10 test clips. Here, per fold model, cross-fitted on its held-out test clips: the
  threshold from one half, the share of the other half flagged (a false alarm: an in-domain GTZAN clip), and
  the reverse; with the share of external files flagged under the same thresholds. Pooled over the folds, every
  clip of the study is checked once.

- **Robustness** (``--robustness CSV``, about a minute per fold): ``genre-se robustness``'s transforms of each
  fold's test clips, the head served as ``predict`` serves ``model.classifier: svm``; the softmax's agreement comes
  from the same predictions and is checked against the one the study recorded for the same fold model.

Every head's whole score row (its test clips' answers included) is kept in ``<scores>_heads.csv``, and a run adds
to the tables what it scores and keeps what they hold of every other fold model (``--fresh``: only this run's):
fold models stay on the machine that trained them, their scores travel with the repository, so seeds trained in
different sessions are reported together. The SVM head's fold scores are written as rows of a study results CSV
(variant ``<variant>_embsvm``) for ``study.what_helped``::

    python -m study.fold_embeddings --study study/small_data.yaml --work study/work/gtzan \\
        --results study/results/small_data.csv --variants e30_no_specaugment \\
        --scores study/results/fold_embeddings.csv --report study/results/fold_embeddings.md [--with-mfcc] \\
        [--probe-heads]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from genre_se.errors import GenreSEError
from study import compare
from study.summary import paired_record


def clip_means(values: np.ndarray, clip_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique clip ids in first-seen order, the mean of ``values``' rows per clip: the pipeline's clip rule)."""
    from genre_se.metrics import mean_per_clip

    codes, uniques = pd.factorize(pd.Series(clip_ids), sort=False)
    return np.asarray(uniques, dtype=object), mean_per_clip(codes, values, len(uniques))[0]


def block_statistics_model(model):
    """A model sharing ``model``'s weights that outputs, per segment, every conv block's output (after its SE
    block where there is one) pooled by mean and by standard deviation over time and frequency, concatenated:
    ``2 * sum(filters)`` values."""
    import keras

    names = {layer.name for layer in model.layers}
    pooled = []
    for i in range(1, 1 + sum(name.endswith("_dropout") and name.startswith("block") for name in names)):
        x = model.get_layer(f"block{i}_se" if f"block{i}_se" in names else f"block{i}_dropout").output
        pooled += [keras.ops.mean(x, axis=(1, 2)), keras.ops.std(x, axis=(1, 2))]
    if not pooled:
        raise GenreSEError(f"model {model.name!r} has no conv blocks (block<i>_dropout): not a genre-se model")
    return keras.Model(model.inputs[0], keras.ops.concatenate(pooled, axis=-1), name=f"{model.name}_block_stats")


def fold_embeddings(bundle, store, external, blocks: bool = False, batch_size: int = 128) -> dict:
    """The fold model's segment embeddings and probabilities for every store row and external file; with
    ``blocks`` also :func:`block_statistics_model`'s (``block_stats``, ``external_block_stats``). One forward pass
    per batch taps all of them."""
    import keras

    from genre_se.model import embedding_model
    from genre_se.train import predict_rows

    model = bundle.model
    taps = {"embeddings": embedding_model(model).outputs[0], "probs": model.outputs[0]}
    if blocks:
        taps["block_stats"] = block_statistics_model(model).outputs[0]
    tapped = keras.Model(model.inputs[0], list(taps.values()))

    def run(x) -> dict:
        return dict(zip(taps, (np.asarray(o) for o in tapped(np.asarray(x, dtype=np.float32), training=False))))

    out = dict(zip(taps, predict_rows(tapped, store, np.arange(len(store.table)), batch_size)))
    if external is not None:
        files = [run(x) for x in external.segments]
        out.update({f"external_{name}": [f[name] for f in files] for name in taps})
    return out


#: the heads the classic SVM adds (``--with-mfcc``): alone, and fused with each of the two heads
CLASSIC_HEADS = ("mfcc", "softmax+mfcc", "embsvm+mfcc")
#: the other SVM heads on the same network (``--probe-heads``): on segment embeddings, on every block's statistics
PROBE_HEADS = ("segsvm", "blocksvm")


def _with_classic(distributions: dict, classic: np.ndarray) -> dict:
    """``distributions`` (the softmax's and the SVM head's) plus the classic SVM's alone and fused with each."""
    from genre_se.fusion import fuse

    fused = {f"{head}+mfcc": fuse(distributions[head], classic) for head in ("softmax", "embsvm")}
    return {**distributions, "mfcc": classic, **fused}


def window_stats(paths) -> list[np.ndarray]:
    """``model.fusion: svm``'s input for each file: its windows' statistics, ``(windows, dim)``."""
    from genre_se.fusion import window_statistics

    return [window_statistics(str(path)) for path in paths]


def head_scores(seen: dict, store, test_clips, external, seed: int, classic: dict | None = None,
                probe_heads: bool = False) -> tuple[dict, object]:
    """Clip accuracy / macro-F1 of the fold model's softmax and of the SVM on its mean clip embeddings, on its
    test clips, and top-1 of both on the external files (``external``: a ``compare.ExternalSet`` or None); and
    the fitted head (a ``genre_se.fusion.SvmScorer``).

    ``classic``: ``{"clips": {clip id: window statistics}, "external": [window statistics per external file]}``
    (:func:`window_stats`); then also the classic SVM fitted on the training clips' windows, alone (``mfcc``)
    and fused with each head (``softmax+mfcc``, ``embsvm+mfcc``: ``genre_se.fusion.fuse``).

    ``probe_heads`` (``seen`` from :func:`fold_embeddings` with ``blocks``): also ``PROBE_HEADS``, each fitted on the
    training clips only."""
    from sklearn.metrics import f1_score

    from genre_se.fusion import fit_svm

    ids_of_rows = store.table["clip_id"].to_numpy()
    ids, embeddings = clip_means(seen["embeddings"], ids_of_rows)
    _, probs = clip_means(seen["probs"], ids_of_rows)
    label_of = dict(zip(store.table["clip_id"], store.table["label_index"]))
    labels = np.array([label_of[c] for c in ids])
    test = np.isin(ids, list(test_clips))
    if not test.any() or test.all():
        raise GenreSEError("the bundle's test clips must be some, not all, of the store's clips")
    # the pipeline's head (model.classifier: svm, genre_se.embedding_svm): the same fit on the same clip means
    svm = fit_svm(embeddings[~test], labels[~test], list(store.labels), seed=seed, max_windows=1)
    distributions = {"softmax": probs, "embsvm": svm.probabilities(embeddings)}
    if classic is not None:
        windows = [np.asarray(classic["clips"][str(c)]) for c in ids]
        owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)])
        train = ~test[owner]
        mfcc = fit_svm(np.concatenate(windows)[train], labels[owner][train], list(store.labels), seed=seed)
        distributions = _with_classic(distributions, np.stack([mfcc.distribution(w) for w in windows]))
    if probe_heads:
        train_rows = ~np.isin(ids_of_rows, ids[test])
        segsvm = fit_svm(seen["embeddings"][train_rows], store.table["label_index"].to_numpy()[train_rows],
                         list(store.labels), seed=seed, max_windows=1)
        _, blocks = clip_means(seen["block_stats"], ids_of_rows)
        blocksvm = fit_svm(blocks[~test], labels[~test], list(store.labels), seed=seed, max_windows=1)
        distributions["segsvm"] = clip_means(segsvm.probabilities(seen["embeddings"]), ids_of_rows)[1]
        distributions["blocksvm"] = blocksvm.probabilities(blocks)
    out = {}
    for head, dist in distributions.items():
        answer = dist.argmax(axis=1)
        out[head] = {"clip_accuracy": float((answer[test] == labels[test]).mean()),
                     "clip_macro_f1": float(f1_score(labels[test], answer[test], labels=np.unique(labels),
                                                     average="macro", zero_division=0)),
                     # each test clip's top probability and whether it was right: the pooled ECE (report)
                     "test_confidence": dist[test].max(axis=1).tolist(),
                     "test_correct": (answer[test] == labels[test]).tolist(),
                     # and what it answered for which clip: the clip-level sign test (clip_rows)
                     "test_clip_ids": [str(c) for c in ids[test]],
                     "test_actual": [store.labels[i] for i in labels[test]],
                     "test_predicted": [store.labels[i] for i in answer[test]]}
    if external is not None:
        ext = {"softmax": np.stack([p.mean(axis=0) for p in seen["external_probs"]]),
               "embsvm": svm.probabilities(np.stack([e.mean(axis=0) for e in seen["external_embeddings"]]))}
        if classic is not None:
            ext = _with_classic(ext, np.stack([mfcc.distribution(w) for w in classic["external"]]))
        if probe_heads:
            ext["segsvm"] = np.stack([segsvm.distribution(e) for e in seen["external_embeddings"]])
            ext["blocksvm"] = blocksvm.probabilities(np.stack([b.mean(axis=0) for b in seen["external_block_stats"]]))
        for head, dist in ext.items():
            out[head]["external_top1"] = float((dist.argmax(axis=1) == external.labels).mean())
            out[head]["external_confidence"] = float(dist.max(axis=1).mean())
    return out, svm


def familiarity_scores(seen: dict, store, test_clips, seed: int, quantile: float = 0.95) -> dict:
    """The familiarity flag of the fold model, cross-fitted on its test clips: statistics of its training
    segments (every store row not of a test clip), the threshold from one half of the test clips, false alarms
    counted on the other half, and the reverse. ``external_flagged``: the share of external files beyond the
    threshold, averaged over the two halves' thresholds."""
    from genre_se.familiarity import fit_familiarity

    ids_of_rows = store.table["clip_id"].to_numpy()
    in_test = np.isin(ids_of_rows, list(test_clips))
    clips = [c for c in pd.unique(ids_of_rows[in_test])]
    if len(clips) < 2:
        raise GenreSEError("familiarity needs at least 2 test clips (one per half)")
    # the statistics (fitted once: they do not depend on the reference clips) and every distance, computed once
    stats = fit_familiarity(seen["embeddings"][~in_test], [seen["embeddings"][ids_of_rows == clips[0]]], quantile)
    distance = {c: stats.distance(seen["embeddings"][ids_of_rows == c]) for c in clips}
    ext = [stats.distance(e) for e in seen.get("external_embeddings", [])]
    order = np.random.default_rng(seed).permutation(len(clips))
    halves = [[clips[i] for i in order[: len(clips) // 2]], [clips[i] for i in order[len(clips) // 2:]]]
    false_alarms, checked, external_flagged, thresholds = 0, 0, [], []
    for reference, held in (halves, halves[::-1]):
        threshold = float(np.quantile([distance[c] for c in reference], quantile))  # fit_familiarity's rule
        false_alarms += sum(distance[c] > threshold for c in held)
        checked += len(held)
        thresholds.append(threshold)
        if ext:
            external_flagged.append(np.mean([d > threshold for d in ext]))
    auc = np.nan
    if ext:  # threshold-free: how well the distance alone tells the external files from held-out GTZAN clips
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score([0] * len(clips) + [1] * len(ext), [distance[c] for c in clips] + ext))
    return {"false_alarms": int(false_alarms), "checked": checked, "threshold": float(np.mean(thresholds)),
            "external_flagged": float(np.mean(external_flagged)) if external_flagged else np.nan, "auc": auc}


class _BothHeads:
    """``predict_array`` for the robustness report: the head's answer, and each call's softmax clip distribution
    (the prediction's ``parts["cnn"]``, untempered as the fold models are) kept in call order, so one pass over
    the transformed audio scores both heads."""

    def __init__(self, classifier):
        self.classifier, self.softmax = classifier, []

    def predict_array(self, y, sr):
        prediction = self.classifier.predict_array(y, sr)
        self.softmax.append(prediction.parts["cnn"])
        return prediction


def head_robustness(bundle_dir: Path, head, paths: list[str], scratch: Path) -> pd.DataFrame:
    """The robustness report (``genre-se robustness``'s transforms) of a fold model's softmax and of the SVM head
    on files it never saw: one row per head and transform, top-1 agreement and TV distance averaged over files.

    The head is served as ``predict`` serves ``model.classifier: svm`` (a copy of the bundle with
    ``embedding_svm.npz`` under ``scratch``)."""
    import shutil

    from genre_se.embedding_svm import save_embedding_svm
    from genre_se.inference import GenreClassifier
    from genre_se.robustness import TRANSFORMS, file_robustness, top1_agreement, total_variation

    copy = scratch / "bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle_dir, copy)
    save_embedding_svm(copy, head)
    both = _BothHeads(GenreClassifier.load(copy, backend="keras"))
    rows = []
    for path in paths:
        both.softmax.clear()
        result = file_robustness(both, path, TRANSFORMS)
        reference, changed = both.softmax[0], both.softmax[1:]
        for row, softmax in zip(result.rows, changed, strict=True):
            rows.append({"head": "embsvm", "transform": row["transform"], "top1_agree": float(row["top1_agree"]),
                         "tv_distance": row["tv_distance"]})
            rows.append({"head": "softmax", "transform": row["transform"],
                         "top1_agree": float(top1_agreement(reference, softmax)),
                         "tv_distance": total_variation(reference, softmax)})
    shutil.rmtree(copy, ignore_errors=True)
    return pd.DataFrame(rows).groupby(["head", "transform"], sort=False).mean().reset_index()


def _cached_robustness(path: Path | None, bundle_dir: Path, measure) -> pd.DataFrame:
    """``measure()``, or the table ``path`` keeps when it was measured on the same ``model.keras``."""
    from genre_se.fileio import file_sha1, write_csv

    sha1 = file_sha1(bundle_dir / "model.keras")
    if path is not None and path.is_file():
        kept = pd.read_csv(path, float_precision="round_trip")
        if (kept.get("model_sha1") == sha1).all() and len(kept):
            return kept.drop(columns="model_sha1")
    table = measure()
    if path is not None:
        write_csv(path, table.assign(model_sha1=sha1))
    return table


def score_kept_models(study: compare.Study, features: Path, state: Path, results_csv: Path, variants: list[str],
                      seeds: list[int] | None = None, log=print, index: pd.DataFrame | None = None,
                      scratch: Path | None = None, cache: Path | None = None, with_mfcc: bool = False,
                      probe_heads: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per variant, seed, fold and head; one familiarity row per variant, seed and fold; the robustness
    rows per variant, seed, fold, head and transform) over the fold bundles of ``variants`` kept under
    ``state/bundles`` (``study.compare run --state STATE --keep-models``), on the store ``features``.

    ``index`` (the study's ``index.csv``: clip id -> audio path) and ``scratch`` (a folder for a bundle copy): also
    the robustness report of both heads on each fold's test clips (:func:`head_robustness`, about a minute per
    fold); without them the third frame is empty. ``with_mfcc`` (needs ``index``): also the classic SVM's heads
    (:func:`head_scores`), the statistics computed once per file. ``probe_heads``: also ``PROBE_HEADS``.
    ``cache``: a folder keeping each fold's robustness table with the SHA-1 of the model it was measured on, so a
    rerun (more seeds, an interrupted run) measures only new or changed fold models."""
    from genre_se.bundle import load_bundle
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(features)
    results = compare.read_results(results_csv).set_index(["variant", "seed", "fold"])
    external = compare.load_external(study.external, list(store.labels), store.features.to_dict()) \
        if study.external and Path(study.external).is_dir() else None
    rows, familiar, robust = [], [], []
    paths = None if index is None else index.set_index(index["clip_id"].astype(str))["path"]
    classic = None
    if with_mfcc:
        if paths is None:
            raise GenreSEError("the classic SVM's heads need the study's index (clip id -> audio path)")
        clips = [str(c) for c in pd.unique(store.table["clip_id"])]
        classic = {"clips": dict(zip(clips, window_stats(paths.loc[clips]))),
                   "external": window_stats(external.paths) if external is not None else []}
    for variant in variants:
        folders = sorted((state / "bundles" / variant).glob("seed*/fold*"))
        folders = [f for f in folders if seeds is None or int(f.parent.name[4:]) in seeds]
        if not folders:
            raise GenreSEError(f"no kept fold models of {variant!r} under {state / 'bundles'} "
                               f"(run `study.compare run --keep-models {variant}`)")
        for folder in folders:
            seed, fold = int(folder.parent.name[4:]), int(folder.name[4:])
            bundle = load_bundle(folder)
            seen = fold_embeddings(bundle, store, external, blocks=probe_heads)
            test_clips = bundle.extra["test_clips"]
            scores, head = head_scores(seen, store, test_clips, external, seed, classic, probe_heads)
            recorded = results["clip_accuracy"].get((variant, seed, fold))
            if recorded is None or abs(recorded - scores["softmax"]["clip_accuracy"]) > 1e-9:
                raise GenreSEError(f"{folder}: its softmax gives clip accuracy "
                                   f"{scores['softmax']['clip_accuracy']:.4f}, {results_csv} records "
                                   f"{recorded}: not the model the study scored")
            run = {"variant": variant, "seed": seed, "fold": fold}
            if paths is not None and scratch is not None:
                table = _cached_robustness(
                    None if cache is None else cache / variant / f"seed{seed}" / f"fold{fold}.csv", folder,
                    lambda: head_robustness(folder, head, paths.loc[[str(c) for c in test_clips]].tolist(), scratch))
                robust.append(table.assign(**run))
                for name, own in table.groupby("head"):
                    scores[name]["robustness_agreement"] = float(own["top1_agree"].mean())
                    scores[name]["robustness_tv"] = float(own["tv_distance"].mean())
                scores["softmax"]["recorded_robustness"] = float(results["robustness_agreement"].get(
                    (variant, seed, fold), np.nan))
            for head, score in scores.items():
                rows.append({**run, "head": head, **score})
            familiar.append({"variant": variant, "seed": seed, "fold": fold,
                             **familiarity_scores(seen, store, test_clips, seed + fold)})
            if log:
                log(f"{variant} seed {seed} fold {fold}: softmax {scores['softmax']['clip_accuracy']:.3f}, "
                    f"SVM on embeddings {scores['embsvm']['clip_accuracy']:.3f}; "
                    f"familiarity false alarms {familiar[-1]['false_alarms']}/{familiar[-1]['checked']}")
    columns = ["variant", "seed", "fold", "head", "transform", "top1_agree", "tv_distance"]
    return (pd.DataFrame(rows), pd.DataFrame(familiar),
            pd.concat(robust, ignore_index=True)[columns] if robust else pd.DataFrame(columns=columns))


#: the variant suffix of each head's rows in the results CSV (the softmax's are the study's own rows)
HEAD_VARIANTS = {"embsvm": "_embsvm", "mfcc": "_mfcc", "softmax+mfcc": "+mfcc", "embsvm+mfcc": "_embsvm+mfcc",
                 "segsvm": "_segsvm", "blocksvm": "_blocksvm"}


def results_rows(scores: pd.DataFrame, results_csv: Path) -> pd.DataFrame:
    """Each head's scores but the softmax's as rows of a study results CSV: variant ``<variant>_embsvm`` (and
    ``HEAD_VARIANTS``' others), the fold model's parameters and training time (the SVM's fit is seconds)."""
    runs = compare.read_results(results_csv).set_index(["variant", "seed", "fold"])
    rows = []
    for score in scores[scores["head"].isin(list(HEAD_VARIANTS))].itertuples(index=False):
        own = runs.loc[(score.variant, score.seed, score.fold)]
        rows.append({"variant": f"{score.variant}{HEAD_VARIANTS[score.head]}", "seed": score.seed, "fold": score.fold,
                     "clip_accuracy": score.clip_accuracy, "clip_macro_f1": score.clip_macro_f1,
                     "params": int(own["params"]), "train_seconds": float(own["train_seconds"]),
                     "epochs_run": int(own["epochs_run"]), "best_epoch": int(own["best_epoch"]),
                     "n_test_clips": int(own["n_test_clips"]),
                     "config_key": compare.config_key({"embsvm": "embedding_svm"}.get(score.head, score.head),
                                                      own["config_key"]),
                     "external_top1": getattr(score, "external_top1", np.nan),
                     "robustness_agreement": getattr(score, "robustness_agreement", np.nan),
                     "robustness_tv": getattr(score, "robustness_tv", np.nan)})
    return pd.DataFrame(rows, columns=compare.CSV_COLUMNS + ["external_top1", "robustness_agreement",
                                                             "robustness_tv"])


#: the columns of a head's score row that hold a list (one value per test clip), JSON-encoded in the heads CSV
LIST_COLUMNS = ("test_confidence", "test_correct", "test_clip_ids", "test_actual", "test_predicted")


def heads_path(scores_csv: Path) -> Path:
    """Where every head's whole score row is kept beside ``scores_csv`` (``<stem>_heads.csv``): what the report is
    built from, so that a later run on other kept models can rebuild it without the models scored before."""
    return scores_csv.with_name(scores_csv.stem + "_heads.csv")


def write_heads(path: Path, scores: pd.DataFrame) -> None:
    """``scores`` (:func:`score_kept_models`' first frame) as CSV, the per-clip lists JSON-encoded."""
    from genre_se.fileio import write_csv

    encoded = scores.copy()
    for column in LIST_COLUMNS:
        encoded[column] = [json.dumps(list(value)) for value in encoded[column]]
    write_csv(path, encoded)


def read_heads(path: Path) -> pd.DataFrame:
    """What :func:`write_heads` wrote."""
    try:
        scores = pd.read_csv(path, float_precision="round_trip")
        for column in LIST_COLUMNS:
            scores[column] = [json.loads(value) for value in scores[column]]
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise GenreSEError(f"{path}: not a heads table written by study.fold_embeddings ({exc})") from exc
    return scores


def merge_runs(kept: pd.DataFrame | None, fresh: pd.DataFrame) -> pd.DataFrame:
    """``kept`` with the rows of every fold model that ``fresh`` holds replaced (``compare.replace_runs``), variants in
    first-seen order (``kept``'s first), then by seed and fold: a run on some kept models adds to, or replaces,
    what earlier runs scored, and keeps the rest (fold models are not kept across machines, their scores are)."""
    merged = fresh if kept is None else compare.replace_runs(kept, fresh)
    order = {variant: i for i, variant in enumerate(pd.unique(merged["variant"]))}
    return merged.sort_values(compare.RUN_KEY, key=lambda c: c.map(order) if c.name == "variant" else c,
                              kind="stable").reset_index(drop=True)


def clip_rows(scores: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Each test clip's answer by each head but the softmax, as rows of a study's clips CSV (the
    ``<results>_clips.csv`` beside a results CSV: what ``summary.paired_clips`` pairs clip by clip), variants and
    configuration keys those of ``results`` (:func:`results_rows` of the same scores)."""
    keys = results.set_index(["variant", "seed", "fold"])["config_key"]
    rows = []
    for score in scores[scores["head"].isin(list(HEAD_VARIANTS))].itertuples(index=False):
        variant = f"{score.variant}{HEAD_VARIANTS[score.head]}"
        key = keys.loc[(variant, score.seed, score.fold)]
        for clip, actual, predicted, confidence in zip(score.test_clip_ids, score.test_actual, score.test_predicted,
                                                       score.test_confidence, strict=True):
            rows.append({"variant": variant, "seed": score.seed, "fold": score.fold, "clip_id": clip,
                         "actual": actual, "predicted": predicted, "config_key": key,
                         "confidence": confidence})
    return pd.DataFrame(rows, columns=["variant", "seed", "fold", "clip_id", "actual", "predicted", "config_key",
                                       "confidence"])


def pooled_ece(rows: pd.DataFrame) -> float:
    """The clip ECE of the test clips of every fold in ``rows`` (one head's score rows) taken together."""
    from genre_se.calibration import calibration_error

    return calibration_error(np.concatenate(rows["test_confidence"].tolist()),
                             np.concatenate(rows["test_correct"].tolist()))


def robustness_markdown(scores: pd.DataFrame, robust: pd.DataFrame) -> list[str]:
    """The report's robustness section: per variant, each head's mean agreement and TV over folds, the paired
    difference, and the softmax's agreement here against the one the study recorded for the same fold model
    (the same model and transforms: they should agree); then per transform."""
    lines = ["\n## Robustness of each head\n",
             "`genre-se robustness`'s transforms (gain, MP3, 44.1/48 kHz stereo, 8 kHz low-pass, pink noise, "
             "compression, leading silence) of each fold's test clips: top-1 agreement with the untouched clip and "
             "TV distance, both heads from the same predictions (the head served as `predict` serves "
             "`model.classifier: svm`). W/T/L: head minus softmax agreement per fold. `recorded`: the largest "
             "difference between the softmax's agreement here and the study's record for the same fold model.\n",
             "| variant | folds | agreement softmax / SVM | Δ | W/T/L | TV softmax / SVM | recorded |",
             "|---|---|---|---|---|---|---|"]
    for variant, own in scores.dropna(subset=["robustness_agreement"]).groupby("variant", sort=False):
        heads = {head: rows.set_index(["seed", "fold"]) for head, rows in own.groupby("head")}
        soft, svm = heads["softmax"], heads["embsvm"]
        record = paired_record(svm["robustness_agreement"] - soft["robustness_agreement"])
        recorded = (soft["robustness_agreement"] - soft["recorded_robustness"]).abs().max()
        lines.append(f"| `{variant}` | {len(soft)} | {soft['robustness_agreement'].mean():.3f} / "
                     f"{svm['robustness_agreement'].mean():.3f} | {record['delta']:+.3f} "
                     f"| {record['won']}/{record['tied']}/{record['lost']} | {soft['robustness_tv'].mean():.3f} / "
                     f"{svm['robustness_tv'].mean():.3f} | {recorded:.3f} |")
    lines += ["\n| variant | transform | agreement softmax | agreement SVM |", "|---|---|---|---|"]
    table = robust.groupby(["variant", "transform", "head"], sort=False)["top1_agree"].mean().unstack("head")
    for (variant, transform), row in table.iterrows():
        lines.append(f"| `{variant}` | {transform} | {row['softmax']:.3f} | {row['embsvm']:.3f} |")
    return lines


#: the report's section on each group of extra heads: its title and what the heads are
HEAD_SECTIONS = {
    CLASSIC_HEADS: ("Stacking the classic features",
                    "The classic baseline's window statistics (`model.fusion: svm`'s input) with its SVM fitted on the "
                    "same training clips: alone (`mfcc`), fused with the fold model's softmax as `model.fusion: svm` "
                    "fuses (`softmax+mfcc`), and fused with the SVM head (`embsvm+mfcc`, the mean of the two Platt "
                    "distributions)."),
    PROBE_HEADS: ("Other SVM heads on the same network",
                  "The same SVM fitted on the training clips' segment embeddings, the clip's answer the mean of its "
                  "segments' Platt probabilities (`segsvm`), and on every conv block's output pooled by mean and "
                  "standard deviation, concatenated, the clip's mean of them (`blocksvm`, Choi et al. 2017)."),
}


def heads_markdown(scores: pd.DataFrame, heads: tuple[str, ...]) -> list[str]:
    """The report's section on a group of ``HEAD_SECTIONS``: each head paired with the SVM head over the folds."""
    title, intro = HEAD_SECTIONS[heads]
    lines = [f"\n## {title}\n", intro + " Δ, W/T/L and `detectable`: against the SVM head on the same folds.\n",
             "| variant | head | folds | clip acc. | Δ vs SVM head | W/T/L | detectable | macro-F1 | real-clips top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, own in scores.groupby("variant", sort=False):
        by_head = {head: rows.set_index(["seed", "fold"]) for head, rows in own.groupby("head")}
        for name in heads:
            if name not in by_head:
                continue
            head = by_head[name]
            record = paired_record(head["clip_accuracy"] - by_head["embsvm"]["clip_accuracy"])
            detectable = "" if np.isnan(record["detectable"]) else f"{record['detectable']:.3f}"
            ext = f"{head['external_top1'].mean():.3f}" if "external_top1" in head else ""
            lines.append(f"| `{variant}` | `{name}` | {len(head)} | {head['clip_accuracy'].mean():.3f} "
                         f"| {record['delta']:+.3f} | {record['won']}/{record['tied']}/{record['lost']} "
                         f"| {detectable} | {head['clip_macro_f1'].mean():.3f} | {ext} |")
    return lines


def _mean_of_recorded(values: pd.Series) -> str:
    """The mean of the folds that recorded a value (rows kept from before it was recorded have none), their
    number where that is not every fold."""
    recorded = values.dropna()
    if not len(recorded):
        return "-"
    return f"{recorded.mean():.2f}" + ("" if len(recorded) == len(values) else f" ({len(recorded)} folds)")


def report_markdown(scores: pd.DataFrame, familiar: pd.DataFrame, robust: pd.DataFrame | None = None) -> str:
    lines = ["# What the kept fold models' embeddings say (study/fold_embeddings.py)\n",
             "## An SVM head on the SE-CNN's embeddings\n",
             "Per kept fold model: its own softmax (mean of segment probabilities) against the pipeline's head "
             "(`model.classifier: svm`: the classic baseline's standardisation + RBF SVM with Platt probabilities, "
             "their argmax) fitted on its mean clip embeddings of the clips it was trained on; both "
             "answer the fold's test clips and the external files. Δ and W/T/L: SVM head minus softmax on the same "
             "folds; `detectable`: the smallest mean difference these paired folds detect (paired t, 80 % power). "
             "ECE: the clip-level expected calibration error of the test clips pooled over the folds (15 bins, no "
             "temperature: the fold models have none); real-clips confidence: the mean top probability on the "
             "external files (most of them answered wrongly; `-`: not recorded, for fold models scored before it "
             "was kept per fold).\n",
             "| variant | folds (seeds) | softmax clip acc. | SVM head clip acc. | Δ | W/T/L | detectable | "
             "macro-F1 softmax / SVM | ECE softmax / SVM | real-clips top-1 softmax / SVM | "
             "real-clips confidence softmax / SVM |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, own in scores.groupby("variant", sort=False):
        heads = {head: rows.set_index(["seed", "fold"]) for head, rows in own.groupby("head")}
        soft, svm = heads["softmax"], heads["embsvm"]
        record = paired_record(svm["clip_accuracy"] - soft["clip_accuracy"])
        detectable = "" if np.isnan(record["detectable"]) else f"{record['detectable']:.3f}"
        ext = conf = ""
        if "external_top1" in soft:
            ext = f"{soft['external_top1'].mean():.3f} / {svm['external_top1'].mean():.3f}"
            conf = f"{_mean_of_recorded(soft['external_confidence'])} / {_mean_of_recorded(svm['external_confidence'])}"
        ece = " / ".join(f"{pooled_ece(head):.3f}" for head in (soft, svm))
        lines.append(f"| `{variant}` | {len(soft)} ({soft.index.get_level_values('seed').nunique()}) "
                     f"| {soft['clip_accuracy'].mean():.3f} | {svm['clip_accuracy'].mean():.3f} "
                     f"| {record['delta']:+.3f} | {record['won']}/{record['tied']}/{record['lost']} | {detectable} "
                     f"| {soft['clip_macro_f1'].mean():.3f} / {svm['clip_macro_f1'].mean():.3f} | {ece} | {ext} "
                     f"| {conf} |")
    if robust is not None and len(robust):
        lines += robustness_markdown(scores, robust)
    for heads in HEAD_SECTIONS:
        if scores["head"].isin(heads).any():
            lines += heads_markdown(scores, heads)
    lines += ["\n## Familiarity false alarms\n",
              "The `unfamiliar` flag of each fold model (training segments' embedding statistics, threshold the 0.95 "
              "quantile of held-out clips' distances), cross-fitted on the fold's test clips: threshold from one "
              "half, false alarms (held-out GTZAN clips flagged) counted on the other half, and the reverse; "
              "external files flagged under the same thresholds. With halves of 7 test clips the threshold is "
              "about the largest of 7 distances, so about 1 in 8 in-domain clips lies beyond it by construction; "
              "the pipeline's 10 validation clips give about 1 in 11. AUC: how well the distance alone separates "
              "the external files from the fold's held-out GTZAN clips (0.5: not at all; no threshold).\n",
              "| variant | folds | GTZAN clips checked | false alarms | false-alarm rate | mean threshold | "
              "real-clips flagged | AUC real-clips vs GTZAN |", "|---|---|---|---|---|---|---|---|"]
    for variant, own in familiar.groupby("variant", sort=False):
        checked, alarms = int(own["checked"].sum()), int(own["false_alarms"].sum())
        lines.append(f"| `{variant}` | {len(own)} | {checked} | {alarms} | {alarms / checked:.3f} "
                     f"| {own['threshold'].mean():.1f} | {own['external_flagged'].mean():.3f} "
                     f"| {own['auc'].mean():.3f} |")
    return "\n".join(lines) + "\n"


def _merged_with_earlier(scores_csv: Path, args, scores, familiar, robust):
    """The three frames of this run merged (:func:`merge_runs`) with what the output tables already hold."""
    earlier = heads_path(scores_csv)
    if not earlier.is_file():
        if scores_csv.is_file():
            raise GenreSEError(f"{scores_csv} exists but {earlier} (every head's whole score row) does not: the "
                               f"earlier rows cannot be kept; pass --fresh to replace them")
        return scores, familiar, robust
    scores = merge_runs(read_heads(earlier), scores)
    if Path(args.familiarity).is_file():
        familiar = merge_runs(pd.read_csv(args.familiarity, float_precision="round_trip"), familiar)
    if args.robustness and Path(args.robustness).is_file():
        robust = merge_runs(pd.read_csv(args.robustness, float_precision="round_trip"), robust)
    return scores, familiar, robust


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.fold_embeddings", description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="study/small_data.yaml", help="study file (its external files)")
    parser.add_argument("--work", default="study/work/gtzan", help="the study's work folder (features, state)")
    parser.add_argument("--features", help="feature store (default: WORK/features)")
    parser.add_argument("--state", help="training state root holding bundles/ (default: WORK/state)")
    parser.add_argument("--results", default="study/results/small_data.csv", help="the study's results CSV")
    parser.add_argument("--variants", required=True, help="comma-separated variants with kept fold models")
    parser.add_argument("--seeds", help="comma-separated seeds (default: every kept one)")
    parser.add_argument("--scores", default="study/results/fold_embeddings.csv",
                        help="results CSV of the SVM head, for study.what_helped")
    parser.add_argument("--familiarity", default="study/results/fold_embeddings_familiarity.csv",
                        help="the familiarity check per fold model (CSV)")
    parser.add_argument("--report", default="study/results/fold_embeddings.md", help="Markdown report to write")
    parser.add_argument("--robustness", metavar="CSV",
                        help="also the robustness report of both heads on each fold's test clips (about a minute "
                             "per fold; kept per fold model under STATE/fold_embeddings_robustness, so a rerun "
                             "measures only new ones), per transform into CSV (e.g. "
                             "study/results/fold_embeddings_robustness.csv)")
    parser.add_argument("--with-mfcc", action="store_true",
                        help="also the classic SVM on the baseline's window statistics, alone and fused with each "
                             "head (decodes every clip once)")
    parser.add_argument("--probe-heads", action="store_true",
                        help="also the SVM on segment embeddings and on every block's pooled statistics")
    parser.add_argument("--fresh", action="store_true",
                        help="write only the fold models scored now (default: keep what the tables hold of every "
                             "other fold model, e.g. seeds whose models were kept on another machine)")
    args = parser.parse_args(argv)
    try:
        study = compare.load_study(args.study)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        work = Path(args.work)
        index = None
        if args.robustness or args.with_mfcc:
            from genre_se.datasets import read_index

            index = read_index(work / "index.csv")
        with tempfile.TemporaryDirectory() as scratch:
            scores, familiar, robust = score_kept_models(
                study, Path(args.features or work / "features"), Path(args.state or work / "state"),
                Path(args.results), args.variants.split(","), seeds, index=index,
                scratch=Path(scratch) if args.robustness else None,
                cache=Path(args.state or work / "state") / "fold_embeddings_robustness", with_mfcc=args.with_mfcc,
                probe_heads=args.probe_heads)
        scores_csv = Path(args.scores)
        if not args.fresh:
            scores, familiar, robust = _merged_with_earlier(scores_csv, args, scores, familiar, robust)
        rows = results_rows(scores, Path(args.results))
    except GenreSEError as exc:
        print(f"fold_embeddings: error: {exc}", file=sys.stderr)
        return 1
    from genre_se.fileio import write_csv, write_text

    text = report_markdown(scores, familiar, robust)
    write_csv(args.scores, rows)
    write_heads(heads_path(scores_csv), scores)
    write_csv(scores_csv.with_name(scores_csv.stem + "_clips.csv"), clip_rows(scores, rows))
    write_csv(args.familiarity, familiar)
    if args.robustness:
        write_csv(args.robustness, robust)
    write_text(args.report, text)
    print(text, end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
