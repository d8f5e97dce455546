"""What helped, and by how much: every measured change of the gtzan-mini studies in one table (issue 7).

Each row of ``study/what_helped.yaml`` names a change, the study variant that has it and the reference that
does not; the numbers come from the studies' result CSVs, paired by (seed, fold) on the same clip folds:
mean difference in clip accuracy, folds won/tied/lost, the smallest difference each test could detect on them
(``summary.detectable_difference``), and two p-values of the fold differences: the plain paired t-test, which
treats the folds as independent, and the corrected resampled t-test of Nadeau & Bengio (2003), which does not:
the folds of repeated k-fold CV share most of their training clips, so the plain test overstates the evidence, and
a change is "clearly" better only where the corrected test says so. Where both sides kept their answers per clip
(the ``<results>_clips.csv`` beside a results CSV), also ``summary.paired_clips``' sign test with each clip one
unit (the clips one side gets right in more seeds than the other). The two other criteria the verdicts weigh
(issue 10) are recomputed too, on the same paired folds: the robustness agreement of the fold models, and their
answers on the real songs outside GTZAN (real-clips): the share right and, where both sides kept their answers
(``<results>_external.csv``), the answers that differ paired file by file with an exact sign test. The verdict
(kept or not) is the file's, a record of the decision; the numbers are recomputed every time, so the table cannot
drift from the CSVs.

Run: ``python -m study.what_helped`` (writes ``study/results/what_helped.md`` and prints it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from genre_se.errors import ConfigError, GenreSEError
from genre_se.fileio import write_text
from study.compare import (
    CLIP_COLUMNS,
    clip_predictions_path,
    external_predictions_path,
    read_clip_predictions,
    read_results,
)
from study.summary import (
    answers_right,
    clip_sign_test,
    current_rows,
    detectable_difference,
    paired_folds,
    paired_record,
)

HERE = Path(__file__).resolve().parent
CONTRAST_KEYS = {"change", "variant", "reference", "verdict"}


def load_contrasts(path: str | Path) -> tuple[list[Path], list[dict]]:
    """The result CSVs (relative to the file) and the contrasts of a what-helped file, checked."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("results"), list) or not isinstance(raw.get("contrasts"), list):
        raise ConfigError(f"{path}: expected 'results' (a list of CSVs) and 'contrasts' (a list of rows)")
    for i, row in enumerate(raw["contrasts"]):
        if not isinstance(row, dict) or set(row) != CONTRAST_KEYS:
            raise ConfigError(f"{path}: contrasts[{i}] must have exactly the keys {sorted(CONTRAST_KEYS)}")
    return [path.parent / p for p in raw["results"]], raw["contrasts"]


def pooled_results(csvs: list[Path]) -> pd.DataFrame:
    """One row per (variant, seed, fold) over all CSVs; a run present in several (a variant shared by two
    studies) counts once, from the last CSV listed."""
    frames = [read_results(p) for p in csvs if p.is_file()]
    if not frames:
        raise ConfigError(f"none of the result CSVs exists: {', '.join(map(str, csvs))}")
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(["variant", "seed", "fold"], keep="last").reset_index(drop=True)


def _pooled_answers(csvs: list[Path], results: pd.DataFrame, path_of, unique: list[str]) -> pd.DataFrame:
    """The answers in the file ``path_of(csv)`` beside each results CSV, made with the configuration of the
    pooled results' rows; answers with the same ``unique`` columns in several files count once, from the last
    CSV listed."""
    frames = [read_clip_predictions(c) for c in map(path_of, csvs) if c.is_file()]
    if not frames:
        return pd.DataFrame(columns=CLIP_COLUMNS)
    answers = pd.concat([f[CLIP_COLUMNS] for f in frames], ignore_index=True)
    return current_rows(answers.drop_duplicates(unique, keep="last"), results)


def pooled_clips(csvs: list[Path], results: pd.DataFrame) -> pd.DataFrame:
    """The per-clip answers of the ``<stem>_clips.csv`` beside each results CSV; a (variant, seed, clip) counts
    once."""
    return _pooled_answers(csvs, results, clip_predictions_path, ["variant", "seed", "clip_id"])


def pooled_external(csvs: list[Path], results: pd.DataFrame) -> pd.DataFrame:
    """The fold models' answers on the external files (``<stem>_external.csv`` beside each results CSV); a
    (variant, seed, fold, file) counts once."""
    return _pooled_answers(csvs, results, external_predictions_path, ["variant", "seed", "fold", "clip_id"])


def paired_scores(results: pd.DataFrame, variant: str, reference: str, column: str) -> dict:
    """The means of ``column`` (a per-fold-model score: ``robustness_agreement``, ``external_top1``) of both
    variants over the (seed, fold) runs where both measured it; empty where none did."""
    runs = [results[results["variant"] == name].set_index(["seed", "fold"])[column] for name in (variant, reference)]
    both = pd.concat(runs, axis=1, keys=["variant", "reference"], join="inner").dropna()
    if both.empty:
        return {}
    return {"variant": float(both["variant"].mean()), "reference": float(both["reference"].mean()), "runs": len(both)}


def paired_answers(external: pd.DataFrame, variant: str, reference: str) -> dict:
    """Both variants' answers on the same external file by the same (seed, fold) model, paired: how many each
    got right, and the exact two-sided sign test on the pairs where exactly one of them is right (McNemar's
    test). Empty where no answer pairs. The pairs are not independent (a handful of songs, every fold model
    answering each): the p-value says what the answers show, not what the songs would."""
    from scipy.stats import binomtest

    both = pd.concat({name: answers_right(external, name, ["seed", "fold"]) for name in (variant, reference)},
                     axis=1, join="inner")
    if both.empty:
        return {}
    only_variant = int((both[variant] & ~both[reference]).sum())
    only_reference = int((~both[variant] & both[reference]).sum())
    differing = only_variant + only_reference
    p = binomtest(only_variant, differing, 0.5).pvalue if differing else 1.0
    return {"answers": len(both), "variant_right": int(both[variant].sum()),
            "reference_right": int(both[reference].sum()), "only_variant": only_variant,
            "only_reference": only_reference, "p": float(p)}


def _robustness_cell(results: pd.DataFrame, variant: str, reference: str) -> str:
    scores = paired_scores(results, variant, reference, "robustness_agreement")
    return f"{scores['variant']:.3f} vs {scores['reference']:.3f}" if scores else ""


def _real_clips_cell(results: pd.DataFrame, external: pd.DataFrame | None, variant: str, reference: str) -> str:
    """Answer counts with the sign test where both kept their answers, else the paired shares right."""
    answers = paired_answers(external, variant, reference) if external is not None else {}
    if answers:
        return (f"{answers['variant_right']} vs {answers['reference_right']} of {answers['answers']} "
                f"({answers['only_variant']}/{answers['only_reference']}, p {answers['p']:.2g})")
    scores = paired_scores(results, variant, reference, "external_top1")
    return f"{scores['variant']:.3f} vs {scores['reference']:.3f}" if scores else ""


def fold_t_tests(diffs: pd.Series, holdout_ratio: float) -> tuple[float, float]:
    """Two-sided p of the paired fold differences: the plain t-test and Nadeau & Bengio's corrected resampled
    t-test, whose variance ``(1/n + n_test/n_train) s^2`` allows for the overlap of the folds' training sets
    (``holdout_ratio``: n_test / n_train of one fold)."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2 or not diffs.std(ddof=1) > 0:
        return np.nan, np.nan
    mean, var = diffs.mean(), diffs.var(ddof=1)
    plain = abs(mean) / np.sqrt(var / n)
    corrected = abs(mean) / np.sqrt((1 / n + holdout_ratio) * var)
    return float(2 * t.sf(plain, n - 1)), float(2 * t.sf(corrected, n - 1))


def holdout_ratio(results: pd.DataFrame, variant: str) -> float:
    """n_test / n_train of a fold of ``variant``: its test clips against the rest of its seed's clips (the seed
    with the most clips counted over its folds: the whole set where a seed is complete)."""
    rows = results[results["variant"] == variant]
    clips = rows.groupby("seed")["n_test_clips"].sum().max()
    n_test = rows["n_test_clips"].mean()
    return float(n_test / (clips - n_test)) if clips > n_test else np.nan


def contrast(results: pd.DataFrame, variant: str, reference: str) -> dict:
    """Paired clip-accuracy difference ``variant - reference`` over the (seed, fold) runs both have
    (``summary.paired_record``), with the two means over those runs, the folds and seeds paired, the two
    p-values (:func:`fold_t_tests`) and the difference the corrected test could detect (``detectable_corrected``,
    at the reference's :func:`holdout_ratio`; ``detectable`` is the plain test's)."""
    for name in (variant, reference):
        if not (results["variant"] == name).any():
            raise ConfigError(f"no results for variant {name!r}")
    diffs = paired_folds(results, variant, reference)
    means = {name: results[results["variant"] == name].set_index(["seed", "fold"])["clip_accuracy"].loc[diffs.index]
             .mean() for name in (variant, reference)}
    ratio = holdout_ratio(results, reference)
    p_plain, p_corrected = fold_t_tests(diffs, ratio)
    sd = diffs.std(ddof=1) if len(diffs) > 1 else np.nan
    return {**paired_record(diffs), "folds": len(diffs), "seeds": diffs.index.get_level_values("seed").nunique(),
            "variant_mean": means[variant], "reference_mean": means[reference], "p_t": p_plain,
            "p_corrected": p_corrected,
            "detectable_corrected": detectable_difference(sd, len(diffs), holdout_ratio=ratio)}  # NaN ratio: NaN


def what_helped_markdown(results: pd.DataFrame, contrasts: list[dict], clips: pd.DataFrame | None = None,
                        external: pd.DataFrame | None = None) -> str:
    """The table; ``clips`` (:func:`pooled_clips`): also the clip-level column where both variants have them;
    ``external`` (:func:`pooled_external`): the real-clips answers paired where both variants kept them."""
    lines = ["| change | variant vs reference | clip acc. (paired folds) | Δ | W/T/L | folds (seeds) "
             "| detectable Δ: t / corrected t | p: t / corrected t | clips better/worse (p) | robustness agreement "
             "| real-clips right (only one right: variant/reference, p) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in contrasts:
        c = contrast(results, row["variant"], row["reference"])
        detectable = "" if np.isnan(c["detectable"]) else f"{c['detectable']:.3f} / {c['detectable_corrected']:.3f}"
        paired = clip_sign_test(clips, row["variant"], row["reference"]) if clips is not None else {}
        by_clip = (f"{paired['clips_better']}/{paired['clips_worse']} of {paired['clips_paired']} "
                   f"(p {paired['clips_p']:.2g})") if paired else ""
        p_cell = "" if np.isnan(c["p_t"]) else f"{c['p_t']:.2g} / {c['p_corrected']:.2g}"
        lines.append(
            f"| {row['change']} | `{row['variant']}` vs `{row['reference']}` "
            f"| {c['variant_mean']:.3f} vs {c['reference_mean']:.3f} | {c['delta']:+.3f} "
            f"| {c['won']}/{c['tied']}/{c['lost']} | {c['folds']} ({c['seeds']}) | {detectable} | {p_cell} | {by_clip} "
            f"| {_robustness_cell(results, row['variant'], row['reference'])} "
            f"| {_real_clips_cell(results, external, row['variant'], row['reference'])} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.what_helped", description=__doc__.split("\n")[0])
    parser.add_argument("--contrasts", default=str(HERE / "what_helped.yaml"), help="the contrasts file")
    parser.add_argument("--out", default=str(HERE / "results" / "what_helped.md"), help="Markdown to write")
    args = parser.parse_args(argv)
    try:
        csvs, contrasts = load_contrasts(args.contrasts)
        for path in csvs:
            if not path.is_file():  # a study not run yet, or a typo: its rows are left out of every verdict
                print(f"what_helped: warning: {path} does not exist; its rows are left out", file=sys.stderr)
        results = pooled_results(csvs)
        table = what_helped_markdown(results, contrasts, pooled_clips(csvs, results), pooled_external(csvs, results))
    except GenreSEError as error:
        print(f"what_helped: error: {error}", file=sys.stderr)
        return 1
    write_text(args.out, table)
    print(table, end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
