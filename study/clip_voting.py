"""Clip voting: how a clip's segment probabilities become its answer, scored from a study's kept distributions.

Issue 7 names "overlapping segments with clip voting" among the small-data levers. The pipeline overlaps
segments by half and averages their probabilities (``evaluate.aggregate: mean``; ``predict --aggregate vote``
is the alternative it offers). This script scores, on exactly the folds of a study whose segment distributions
were kept (``<out>_probs.csv``; no training), three rules for every CNN variant asked for:

- ``mean``: the mean of the segments' probabilities (the pipeline's rule; checked to reproduce the study's
  recorded clip accuracy, so the kept distributions are the ones the study scored);
- ``vote``: the share of segments whose top genre is each genre (``predict --aggregate vote``; a tie goes
  to the first genre, as in the package);
- ``geometric``: the normalised geometric mean (the mean log-probability), which lets a segment that rules a
  genre out weigh more than one that is unsure.

Each rule's fold scores are written as rows of a study results CSV (variant ``<member>_<rule>`` for vote and
geometric) so that ``study.what_helped`` can pair them with the member's own rows::

    python -m study.clip_voting --out study/results/ensemble.csv --members e30_a \\
        --scores study/results/clip_voting.csv --report study/results/clip_voting.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from genre_se.errors import GenreSEError
from study import compare
from study.summary import paired_record

#: The rules scored; ``mean`` is the pipeline's and the reference of the others.
RULES = ("mean", "vote", "geometric")
#: Probabilities are floored here before the logarithm (a softmax output of exactly 0 would veto its genre).
LOG_FLOOR = 1e-12


def clip_rule(segment_probs: np.ndarray, rule: str) -> np.ndarray:
    """One clip's distribution from its segments' (n_segments, n_classes) probabilities under ``rule``."""
    from genre_se.calibration import clip_distributions

    probs = np.asarray(segment_probs, dtype=np.float64)
    if rule in ("mean", "vote"):  # the package's own rules, so the study measures what predict does
        return clip_distributions(probs, np.zeros(len(probs), dtype=np.intp), 1, aggregate=rule)[0]
    if rule == "geometric":
        log_mean = np.log(np.maximum(probs, LOG_FLOOR)).mean(axis=0)
        weights = np.exp(log_mean - log_mean.max())
        return weights / weights.sum()
    raise GenreSEError(f"unknown clip rule {rule!r}; expected one of {', '.join(RULES)}")


def _top(segment_probs: np.ndarray, rule: str) -> int:
    """The clip's answer under ``rule``, a tie (common under "vote") broken as predict breaks it: by the mean
    of the segment probabilities."""
    from genre_se.results import rank_genres

    probs = np.asarray(segment_probs, dtype=np.float64)
    return int(rank_genres(clip_rule(probs, rule), probs.mean(axis=0))[0])


def rule_scores(probs: pd.DataFrame, labels: list[str], rules=RULES) -> pd.DataFrame:
    """Per (variant, seed, fold, rule): clip accuracy and macro-F1 on the fold's test clips and top-1 on the
    external files, every clip answered by the top genre of its distribution under the rule."""
    from sklearn.metrics import f1_score

    rows = []
    for (variant, seed, fold), run in probs.groupby(["variant", "seed", "fold"], sort=False):
        clips = list(run.groupby(["set", "clip_id"], sort=False))
        actual = np.array([group["actual"].iloc[0] for _, group in clips], dtype=object)
        test = np.array([which == "test" for (which, _), _ in clips])
        for rule in rules:
            answer = np.array([labels[_top(group[labels].to_numpy(), rule)] for _, group in clips], dtype=object)
            hit = answer == actual
            rows.append({"variant": variant, "seed": seed, "fold": fold, "rule": rule,
                         "clip_accuracy": hit[test].mean() if test.any() else np.nan,
                         "clip_macro_f1": f1_score(actual[test], answer[test], labels=labels, average="macro",
                                                   zero_division=0) if test.any() else np.nan,
                         "external_top1": hit[~test].mean() if (~test).any() else np.nan})
    return pd.DataFrame(rows)


def check_mean_rule(scores: pd.DataFrame, results: pd.DataFrame) -> None:
    """Raise unless the ``mean`` rule gives every run the clip accuracy the study recorded for it: then the
    kept distributions are the ones the study scored, and the other rules are compared on equal terms."""
    mean = scores[scores["rule"] == "mean"].set_index(["variant", "seed", "fold"])["clip_accuracy"]
    recorded = results.set_index(["variant", "seed", "fold"])["clip_accuracy"].reindex(mean.index)
    off = (mean - recorded).abs() > 1e-9
    if off.any():
        variant, seed, fold = off[off].index[0]
        raise GenreSEError(f"the kept distributions of {variant} seed {seed} fold {fold} give clip accuracy "
                           f"{mean[off].iloc[0]:.4f} by their mean, the study recorded "
                           f"{recorded[off].iloc[0]:.4f}: not the distributions the study scored")


def results_rows(scores: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The ``vote`` and ``geometric`` scores as rows of a study results CSV (``compare.CSV_COLUMNS``):
    variant ``<member>_<rule>``, the member's parameters and training time (a rule costs no training), a
    configuration key of the member's key and the rule."""
    runs = results.set_index(["variant", "seed", "fold"])
    rows = []
    for score in scores[scores["rule"] != "mean"].itertuples(index=False):
        own = runs.loc[(score.variant, score.seed, score.fold)]
        rows.append({"variant": f"{score.variant}_{score.rule}", "seed": score.seed, "fold": score.fold,
                     "clip_accuracy": score.clip_accuracy, "clip_macro_f1": score.clip_macro_f1,
                     "params": int(own["params"]), "train_seconds": float(own["train_seconds"]),
                     "epochs_run": int(own["epochs_run"]), "best_epoch": int(own["best_epoch"]),
                     "n_test_clips": int(own["n_test_clips"]),
                     "config_key": compare.config_key("clip_rule", score.rule, own["config_key"]),
                     "external_top1": score.external_top1})
    return pd.DataFrame(rows, columns=compare.CSV_COLUMNS + ["external_top1"])


def report_markdown(scores: pd.DataFrame, source: str) -> str:
    """One row per (member, rule): mean +- std over the paired folds, the paired difference to ``mean``."""
    lines = [f"# Clip voting ({source})\n",
             "How a clip's segment probabilities become its answer, scored on the study's own folds from the kept "
             "segment distributions (no training). `mean`: the pipeline's rule; `vote`: `predict --aggregate "
             "vote`; `geometric`: the normalised mean log-probability. Δ, W/T/L and `detectable` (the smallest "
             "mean difference these paired folds detect, paired t, 80 % power) against `mean` on the same folds; "
             "real-clips: top-1 over every fold model's answers to the external files.\n",
             "| member | rule | clip accuracy | macro-F1 | Δ vs mean | W/T/L | folds (seeds) | detectable | "
             "real-clips top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for member, own in scores.groupby("variant", sort=False):
        by_rule = {rule: rows.set_index(["seed", "fold"]) for rule, rows in own.groupby("rule", sort=False)}
        for rule, rows in by_rule.items():
            record = paired_record((rows["clip_accuracy"] - by_rule["mean"]["clip_accuracy"]).dropna())
            delta = "" if rule == "mean" else f"{record['delta']:+.3f}"
            wtl = "" if rule == "mean" else f"{record['won']}/{record['tied']}/{record['lost']}"
            detectable = "" if rule == "mean" or np.isnan(record["detectable"]) else f"{record['detectable']:.3f}"
            seeds = rows.index.get_level_values("seed").nunique()
            lines.append(f"| `{member}` | {rule} | {rows['clip_accuracy'].mean():.3f} ± "
                         f"{rows['clip_accuracy'].std(ddof=1):.3f} | {rows['clip_macro_f1'].mean():.3f} | {delta} "
                         f"| {wtl} | {len(rows)} ({seeds}) | {detectable} | {rows['external_top1'].mean():.3f} |")
    return "\n".join(lines) + "\n"


def score_study(out_csv: Path, members: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-rule fold scores, their results-CSV rows) of ``members`` from the study's kept distributions."""
    from study.ensemble import kept_distributions

    results, probs, labels = kept_distributions(out_csv)
    path = compare.probabilities_path(out_csv)
    probs = probs[probs["variant"].isin(members)]
    missing = [m for m in members if m not in set(probs["variant"])]
    if missing:
        raise GenreSEError(f"{path}: no kept distributions of {', '.join(missing)}")
    if probs.groupby(["variant", "seed", "fold", "set", "clip_id"]).size().eq(1).all():
        raise GenreSEError(f"{path}: one row per clip for {', '.join(members)}: clip rules need a CNN's "
                           "segments (the SVM answers per clip)")
    scores = rule_scores(probs, labels)
    check_mean_rule(scores, results)
    return scores, results_rows(scores, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.clip_voting", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="study/results/ensemble.csv", help="the study's results CSV")
    parser.add_argument("--members", default="e30_a", help="comma-separated CNN variants (default: %(default)s)")
    parser.add_argument("--scores", default="study/results/clip_voting.csv",
                        help="results CSV of the vote and geometric rules, for study.what_helped")
    parser.add_argument("--report", default="study/results/clip_voting.md", help="Markdown report to write")
    args = parser.parse_args(argv)
    try:
        scores, rows = score_study(Path(args.out), args.members.split(","))
    except GenreSEError as exc:
        print(f"clip_voting: error: {exc}", file=sys.stderr)
        return 1
    from genre_se.fileio import write_csv, write_text

    text = report_markdown(scores, Path(args.out).name)
    write_csv(args.scores, rows)
    write_text(args.report, text)
    print(text, end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
