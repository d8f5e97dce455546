"""Ensembles, late fusion and out-of-fold calibration, scored from a study's kept distributions.

``study.compare run`` keeps every answer's whole distribution in ``<out>_probs.csv`` (CNN: one row per segment;
SVM: one Platt-scaled row per clip). Members trained on the same folds (``study.init_offset``) can then be
combined without training again:

- an *ensemble* of CNNs: the mean of the members' clip distributions (each the mean of its segments, as
  ``predict`` aggregates), so its answer is the answer of one bundle holding all members;
- *late fusion* with the SVM: the mean of the CNN (or CNN ensemble) and the SVM clip distributions, equal weight;
- *out-of-fold temperature*: the temperature fitted on every clip of the cross-validation (each scored by the
  fold model that never saw it: 71 clips instead of one split's 10), its honest error estimated by cross-fitting
  (the clips of fold f are calibrated with the T fitted on the other folds' clips), and the effect of each
  temperature on the fold models' answers to the external files (never fitted on).

Usage (from the repository root)::

    python -m study.ensemble --study study/ensemble.yaml --out study/results/ensemble.csv \\
        --report study/results/ensemble.md --scores study/results/ensemble_combined.csv
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from genre_se.errors import GenreSEError
from study import compare
from study.summary import current_rows, paired_record

KEYS = ["seed", "fold", "set", "clip_id"]
#: The temperature of the shipped bundle (fitted on its 10 validation clips), read from the package.
SHIPPED_BUNDLE = Path(__file__).resolve().parents[1] / "genre_se" / "pretrained" / "gtzan-mini" / "bundle.json"


def clip_table(probs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per (variant, seed, fold, set, clip): the mean of its rows' distributions, and ``actual``."""
    grouped = probs.groupby(["variant"] + KEYS, sort=False)
    out = grouped[labels].mean()
    out["actual"] = grouped["actual"].first()
    return out.reset_index()


def combine(clips: pd.DataFrame, members: list[str], labels: list[str], name: str) -> pd.DataFrame:
    """Equal-weight mean of the members' clip distributions on the clips every member answered (same seed,
    fold and set), as variant ``name``."""
    tables = [clips[clips["variant"] == m].set_index(KEYS) for m in members]
    common = tables[0].index
    for table in tables[1:]:
        common = common.intersection(table.index)
    mean = sum(t.loc[common, labels].to_numpy() for t in tables) / len(tables)
    out = pd.DataFrame(mean, index=common, columns=labels)
    out["actual"] = tables[0].loc[common, "actual"].to_numpy()
    return out.reset_index().assign(variant=name)


def answers(clips: pd.DataFrame, labels: list[str], recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each clip's answer: the top label of its distribution, or, for the variants of ``recorded`` (rows
    variant, seed, fold, set, clip_id, predicted), the answer the study recorded.

    The SVM needs the latter: its Platt probabilities come from sigmoids fitted per class on internal CV, so
    their top label is not always the SVM's own answer (on GTZAN-mini it is right less often), and the
    baseline must be scored as the study scored it.
    """
    out = clips[["variant"] + KEYS + ["actual"]].copy()
    out["predicted"] = np.asarray(labels, dtype=object)[clips[labels].to_numpy().argmax(axis=1)]
    if recorded is not None and not recorded.empty:
        own = recorded.set_index(["variant"] + KEYS)["predicted"]
        index = pd.MultiIndex.from_frame(out[["variant"] + KEYS])
        found = index.isin(own.index)
        out.loc[found, "predicted"] = own.reindex(index[found]).to_numpy()
        missing = out["variant"].isin(set(recorded["variant"])) & ~found
        out = out[~missing]
    return out


def recorded_answers(out_csv: Path, results: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """The answers the study recorded for ``variants`` (test clips and external files), current rows only."""
    frames = []
    for which, path in (("test", compare.clip_predictions_path(out_csv)),
                        ("external", compare.external_predictions_path(out_csv))):
        rows = current_rows(compare.read_clip_predictions(path), results)
        frames.append(rows[rows["variant"].isin(variants)].assign(set=which))
    return pd.concat(frames, ignore_index=True)[["variant"] + KEYS + ["predicted"]]


def fold_scores(clips: pd.DataFrame, labels: list[str], recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (variant, seed, fold): clip accuracy and macro-F1 on the test clips, top-1 on the external files
    (answers as :func:`answers` gives them)."""
    from sklearn.metrics import f1_score

    rows = []
    for (variant, seed, fold), group in answers(clips, labels, recorded).groupby(["variant", "seed", "fold"],
                                                                               sort=False):
        answer = group["predicted"].to_numpy()
        hit = answer == group["actual"].to_numpy()
        test = (group["set"] == "test").to_numpy()
        ext = ~test
        rows.append({"variant": variant, "seed": seed, "fold": fold,
                     "clip_accuracy": hit[test].mean() if test.any() else np.nan,
                     "clip_macro_f1": f1_score(group["actual"][test], answer[test], labels=labels, average="macro",
                                               zero_division=0) if test.any() else np.nan,
                     "external_top1": hit[ext].mean() if ext.any() else np.nan})
    return pd.DataFrame(rows)


def combinations(members: list[str], svm: str | None) -> list[tuple[str, list[str]]]:
    """(name, parts) of the singles, every CNN ensemble of two or more members, and fusions with the SVM: of the
    first member alone and of the whole ensemble. A part is a member or an ensemble name."""
    combos = [(m, [m]) for m in members] + ([(svm, [svm])] if svm else [])
    for size in range(2, len(members) + 1):
        combos += [("+".join(group), list(group)) for group in itertools.combinations(members, size)]
    if svm:
        combos.append((f"{members[0]}+{svm}", [members[0], svm]))
        if len(members) > 1:
            combos.append((f"({'+'.join(members)})+{svm}", ["+".join(members), svm]))
    return combos


def combined_clips(clips: pd.DataFrame, members: list[str], svm: str | None, labels: list[str]) -> pd.DataFrame:
    """The clip distributions of every combination of :func:`combinations` (singles included)."""
    built = {name: clips[clips["variant"] == name] for name in members + ([svm] if svm else [])}
    for name, parts in combinations(members, svm):
        if name not in built:
            built[name] = combine(pd.concat([built[p] for p in parts]), parts, labels, name)
    return pd.concat(built.values(), ignore_index=True)


def _sign_test(a: pd.Series, b: pd.Series) -> str:
    """``better/worse (p)``: clips ``a`` gets right and ``b`` wrong and the reverse, exact two-sided sign test."""
    from scipy.stats import binomtest

    both = pd.concat({"a": a, "b": b}, axis=1, join="inner")
    better, worse = int((both.a & ~both.b).sum()), int((~both.a & both.b).sum())
    p = binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
    return f"{better}/{worse} (p {p:.2g})"


def comparison_table(clips: pd.DataFrame, members: list[str], svm: str | None, labels: list[str],
                     reference: str, recorded: pd.DataFrame | None = None) -> str:
    """Markdown: each combination's mean ± sd clip accuracy and macro-F1, training cost, paired differences
    against the single reference model and against the SVM (folds W/T/L, clip-level sign test), real-clips.
    ``recorded``: answers that score their variants instead of the top label (the SVM's own answers)."""
    scores = fold_scores(clips, labels, recorded)
    test = answers(clips, labels, recorded).loc[lambda f: f["set"] == "test"]
    right = pd.Series(test["predicted"].to_numpy() == test["actual"].to_numpy(),
                      index=pd.MultiIndex.from_arrays([test["variant"], test["seed"], test["clip_id"]]))
    lines = ["| model | trainings | clip accuracy | macro-F1 | folds | vs `%s`: Δ (W/T/L) | detectable | "
             "vs SVM: Δ (W/T/L) | clips better/worse than SVM | real-clips top-1 |" % reference,
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, parts in combinations(members, svm):
        own = scores[scores["variant"] == name]
        if own.empty:
            continue
        n_cnn = sum(len(p.split("+")) for p in parts if p != svm)
        cost = " + ".join(filter(None, [f"{n_cnn} CNN" if n_cnn else "", "SVM" if svm in parts else ""]))
        cells = [f"`{name}`", cost, f"{own.clip_accuracy.mean():.3f} ± {own.clip_accuracy.std(ddof=1):.3f}",
                 f"{own.clip_macro_f1.mean():.3f}", str(len(own))]
        for other in (reference, svm):
            if other is None or other == name:
                cells += ["", ""] if other == reference else [""]
                continue
            diffs = compare_runs(scores, name, other)
            record = paired_record(diffs)
            cells.append(f"{record['delta']:+.3f} ({record['won']}/{record['tied']}/{record['lost']})")
            if other == reference:
                cells.append(f"{record['detectable']:.2f}" if np.isfinite(record["detectable"]) else "n/a")
        cells.append(_sign_test(right.loc[name], right.loc[svm]) if svm and name != svm else "")
        cells.append(f"{own.external_top1.mean():.3f}" if own.external_top1.notna().any() else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def platt_note(clips: pd.DataFrame, labels: list[str], svm: str | None, recorded: pd.DataFrame | None) -> str:
    """``clip accuracy a (own answers) vs b (top Platt probability)`` of the SVM, for the report."""
    if not svm:
        return "no SVM"
    own, platt = (fold_scores(clips[clips["variant"] == svm], labels, r)["clip_accuracy"].mean()
                  for r in (recorded, None))
    return f"clip accuracy {own:.3f} with its own answers, {platt:.3f} with the top Platt probability"


def compare_runs(scores: pd.DataFrame, variant: str, other: str) -> pd.Series:
    """Clip accuracy of ``variant`` minus ``other`` on every (seed, fold) both have."""
    a, b = (scores[scores["variant"] == v].set_index(["seed", "fold"])["clip_accuracy"] for v in (variant, other))
    return (a - b).dropna()


def combined_results(clips: pd.DataFrame, results: pd.DataFrame, members: list[str], svm: str | None,
                     labels: list[str]) -> pd.DataFrame:
    """The combinations' fold scores as rows of a study results CSV (``compare.CSV_COLUMNS``), so that
    ``study.what_helped`` can pair them with single models: parameters and training time are the sums over the
    parts (an ensemble of two costs two trainings), the configuration key a hash of the parts' keys."""
    scores = fold_scores(clips, labels).set_index(["variant", "seed", "fold"])
    runs = results.set_index(["variant", "seed", "fold"])
    rows = []
    for name, parts in combinations(members, svm):
        singles = [m for p in parts for m in p.split("+")]
        if len(singles) < 2:
            continue
        for (variant, seed, fold), score in scores.loc[scores.index.get_level_values(0) == name].iterrows():
            own = runs.loc[[(m, seed, fold) for m in singles]]
            rows.append({"variant": name, "seed": seed, "fold": fold, "clip_accuracy": score.clip_accuracy,
                         "clip_macro_f1": score.clip_macro_f1, "params": int(own["params"].sum()),
                         "train_seconds": float(own["train_seconds"].sum()),
                         "epochs_run": int(own["epochs_run"].max()), "best_epoch": int(own["best_epoch"].max()),
                         "n_test_clips": int(own["n_test_clips"].iloc[0]),
                         "config_key": compare.config_key("ensemble", own["config_key"].tolist()),
                         "external_top1": score.external_top1})
    return pd.DataFrame(rows, columns=compare.CSV_COLUMNS + ["external_top1"])


# --------------------------------------------------------------------------------------------------
# Out-of-fold temperature


def oof_calibration(probs: pd.DataFrame, members: list[str], labels: list[str], shipped_t: float | None,
                    uncertain_below: float = 0.4) -> pd.DataFrame:
    """Per CNN model (each member, and the ensemble of all as one model whose segments are all members'
    segments): the pooled clip ECE and NLL of the cross-validation at T = 1, at the shipped T, at the
    cross-fitted out-of-fold T, and the out-of-fold T itself (fitted on every clip); on the external files the
    mean top probability of the wrong answers and the share of wrong and of right answers marked uncertain."""
    from genre_se.calibration import (clip_distributions, expected_calibration_error, fit_temperature,
                                      negative_log_likelihood)

    label_index = {name: i for i, name in enumerate(labels)}
    models = [(m, [m]) for m in members] + ([("+".join(members), members)] if len(members) > 1 else [])
    rows = []
    for name, parts in models:
        rows_of = probs[probs["variant"].isin(parts)]
        # clips every part answered (an ensemble is scored only where all its members are)
        answered = rows_of.groupby(KEYS)["variant"].nunique()
        keep = answered[answered == len(parts)].index
        rows_of = rows_of.set_index(KEYS).loc[lambda f: f.index.isin(keep)].reset_index()
        test, ext = rows_of[rows_of["set"] == "test"], rows_of[rows_of["set"] == "external"]
        if test.empty:
            continue
        codes = test.groupby(["seed", "clip_id"], sort=False).ngroup().to_numpy()
        clip_ids = pd.unique(codes)
        clip_labels = test.groupby(codes)["actual"].first().map(label_index).to_numpy()
        fold_of_clip = test.groupby(codes)["fold"].first().to_numpy()
        seg = test[labels].to_numpy()
        n = len(clip_ids)

        def scored(t_per_clip: np.ndarray) -> tuple[float, float]:
            dist = np.empty((n, len(labels)))
            for t in np.unique(t_per_clip):
                chosen = t_per_clip == t
                dist[chosen] = clip_distributions(seg, codes, n, float(t))[chosen]
            return expected_calibration_error(dist, clip_labels), negative_log_likelihood(dist, clip_labels)

        t_all = fit_temperature(seg, codes, clip_labels)
        t_cross = np.empty(n)
        for fold in np.unique(fold_of_clip):
            train = fold_of_clip != fold
            seg_rows = train[codes]
            sub_codes = pd.factorize(codes[seg_rows])[0]
            t_cross[~train] = fit_temperature(seg[seg_rows], sub_codes, clip_labels[train])
        record = {"model": name, "clips": n, "T_oof": t_all,
                  "T_cross_range": f"{t_cross.min():.2f}-{t_cross.max():.2f}"}
        for tag, temps in (("1", np.ones(n)), ("shipped", np.full(n, shipped_t) if shipped_t else None),
                           ("cross", t_cross)):
            if temps is not None:
                record[f"ece_{tag}"], record[f"nll_{tag}"] = scored(temps)
        if not ext.empty:
            ext_codes = ext.groupby(["seed", "fold", "clip_id"], sort=False).ngroup().to_numpy()
            n_ext = ext_codes.max() + 1
            ext_labels = ext.groupby(ext_codes)["actual"].first().map(label_index).to_numpy()
            for tag, t in (("1", 1.0), ("shipped", shipped_t), ("oof", t_all)):
                if t is None:
                    continue
                dist = clip_distributions(ext[labels].to_numpy(), ext_codes, n_ext, float(t))
                top, wrong = dist.max(axis=1), dist.argmax(axis=1) != ext_labels
                record[f"ext_wrong_conf_{tag}"] = float(top[wrong].mean()) if wrong.any() else np.nan
                record[f"ext_wrong_flagged_{tag}"] = float((top[wrong] < uncertain_below).mean()) if wrong.any() \
                    else np.nan
                record[f"ext_right_flagged_{tag}"] = float((top[~wrong] < uncertain_below).mean()) if (~wrong).any() \
                    else np.nan
            record["ext_answers"], record["ext_right"] = int(n_ext), int((~wrong).sum())
        rows.append(record)
    return pd.DataFrame(rows)


def calibration_markdown(table: pd.DataFrame, shipped_t: float | None) -> str:
    """The out-of-fold calibration table."""
    if table.empty:
        return "No CNN distributions to calibrate.\n"
    shipped = f"shipped T = {shipped_t:.2f}" if shipped_t else "shipped T"
    lines = [f"| model | clips | ECE / NLL at T = 1 | at {shipped} | cross-fitted OOF T | OOF T (all clips) | "
             "real-clips wrong answers: mean top probability, share flagged (T = 1 / shipped / OOF) | "
             "right answers flagged (T = 1 / shipped / OOF) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        def pair(tag):
            return f"{r[f'ece_{tag}']:.3f} / {r[f'nll_{tag}']:.3f}" if f"ece_{tag}" in r else ""

        ext = right = ""
        if "ext_answers" in r:
            ext = " / ".join(f"{r.get(f'ext_wrong_conf_{t}', np.nan):.2f}, {r.get(f'ext_wrong_flagged_{t}', np.nan):.2f}"
                             for t in ("1", "shipped", "oof")) + f" ({r['ext_answers'] - r['ext_right']} wrong " \
                f"of {r['ext_answers']})"
            right = " / ".join(f"{r.get(f'ext_right_flagged_{t}', np.nan):.2f}" for t in ("1", "shipped", "oof"))
        lines.append(f"| `{r['model']}` | {r['clips']} | {pair('1')} | {pair('shipped')} | {pair('cross')} "
                     f"(T {r['T_cross_range']}) | {r['T_oof']:.2f} | {ext} | {right} |")
    return "\n".join(lines) + "\n"


def shipped_temperature(path: Path = SHIPPED_BUNDLE) -> float | None:
    """The temperature in the packaged bundle's calibration record (None when there is none)."""
    try:
        return float(json.loads(path.read_text())["extra"]["calibration"]["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
# Command line


def kept_distributions(out_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(the study's results, the kept distributions of its current rows, the genre labels) of a results CSV."""
    results = compare.read_results(out_csv)
    path = compare.probabilities_path(out_csv)
    if not path.is_file():
        raise GenreSEError(f"{path}: no kept distributions (run `python -m study.compare run` first)")
    header = pd.read_csv(path, nrows=0).columns.tolist()
    labels = [c for c in header if c not in compare.PROB_ID_COLUMNS]
    return results, current_rows(compare.read_probabilities(path, labels), results), labels


def report(study: compare.Study, out_csv: Path, members: list[str] | None = None, reference: str | None = None,
           scores_csv: Path | None = None) -> str:
    """The whole Markdown report of a study's kept distributions; ``scores_csv``: also write the combinations'
    fold scores there (:func:`combined_results`)."""
    svm = next((n for n, s in study.variants.items() if s == compare.BASELINE), None)
    members = members or study.cnn_variants()
    reference = reference or members[0]
    results, probs, labels = kept_distributions(out_csv)
    path = compare.probabilities_path(out_csv)
    missing = [m for m in members + ([svm] if svm else []) if m not in set(probs["variant"])]
    if missing:
        raise GenreSEError(f"{path}: no distributions of {', '.join(missing)} yet")
    clips = combined_clips(clip_table(probs, labels), members, svm, labels)
    recorded = recorded_answers(out_csv, results, [svm]) if svm else None
    shipped_t = shipped_temperature()
    if scores_csv is not None:
        from genre_se.fileio import write_csv

        write_csv(scores_csv, combined_results(clips, results, members, svm, labels))
    folds = fold_scores(clips, labels)
    done = folds[folds["variant"] == "+".join(members)] if len(members) > 1 else folds
    text = [f"# Ensembles, fusion with the SVM, out-of-fold temperature ({out_csv.name})\n",
            f"Members: {', '.join(f'`{m}`' for m in members)} (same recipe and folds, other initial weights); "
            f"SVM: `{svm}`. Every combination is scored on the folds all its parts finished ({len(done)} for the "
            "whole ensemble). Clip distribution = mean of its segments' (CNN) or the Platt probabilities (SVM); "
            "combinations average clip distributions with equal weight. The SVM alone is scored by its own "
            "answers, as the study scored it (the top label of its Platt probabilities is another, here weaker, "
            "classifier: " + platt_note(clips, labels, svm, recorded) + "). `detectable`: the smallest mean "
            "difference these paired folds detect (paired t, 80 % power).\n",
            comparison_table(clips, members, svm, labels, reference, recorded),
            "\n## Out-of-fold temperature\n",
            "ECE (15 bins) and NLL of the clip distributions pooled over the cross-validation. Cross-fitted: the "
            "clips of each fold calibrated with the T fitted (clip NLL, the train stage's prior) on the other "
            "folds' clips, so no clip calibrates itself. OOF T: fitted on every clip, what a bundle of this recipe "
            "would store. Real-clips: every fold model's answer on every external file (never fitted on); "
            "flagged = top probability below 0.4 (`predict.uncertain_below`).\n",
            calibration_markdown(oof_calibration(probs, members, labels, shipped_t), shipped_t)]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="study/ensemble.yaml", help="study file (default: %(default)s)")
    parser.add_argument("--out", default="study/results/ensemble.csv", help="the study's results CSV")
    parser.add_argument("--report", default="study/results/ensemble.md", help="Markdown report to write")
    parser.add_argument("--members", help="comma-separated CNN variants to combine (default: every CNN variant)")
    parser.add_argument("--reference", help="the single model differences are taken against (default: the first)")
    parser.add_argument("--scores", help="also write the combinations' fold scores as a results CSV "
                                         "(for study.what_helped)")
    args = parser.parse_args(argv)
    try:
        study = compare.load_study(args.study)
        members = args.members.split(",") if args.members else None
        unknown = [m for m in members or [] if m not in study.cnn_variants()]
        if unknown:
            raise GenreSEError(f"--members: {unknown[0]!r} is not a CNN variant of {args.study}")
        text = report(study, Path(args.out), members, args.reference, Path(args.scores) if args.scores else None)
    except GenreSEError as exc:
        print(f"ensemble: error: {exc}", file=sys.stderr)
        return 1
    from genre_se.fileio import write_text

    write_text(args.report, text)
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

