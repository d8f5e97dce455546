"""Tables from a study's CSVs (``study.compare`` writes them): the per-variant summary with paired
comparisons, the external files per genre, the robustness report per transform.

Pure functions of DataFrames, so a summary can be redrawn at any time without training anything
(``python -m study.compare summary``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from study.compare import (
    OPTIONAL_COLUMNS,
    clip_predictions_path,
    external_predictions_path,
    read_clip_predictions,
    read_robustness,
    robustness_path,
)


def paired_clips(clips: pd.DataFrame, results: pd.DataFrame, variant: str, reference: str) -> dict:
    """Clip-level paired comparison of two variants over the clips both answered (in the same seeds).

    Each clip is one unit: ``better``, the clips the variant gets right in more of those seeds than the
    reference; ``worse``, the reverse; ``p``, the exact two-sided sign test of better vs worse (with one seed,
    McNemar's exact test). A clip is not counted once per seed: each seed re-deals the same clips, and counting
    it again would overstate the evidence. Only predictions made with the configuration of the CSV's row count
    (``config_key``).
    """
    return clip_sign_test(current_rows(clips, results), variant, reference)


def answers_right(answers: pd.DataFrame, variant: str, runs: list[str]) -> pd.Series:
    """Whether each answer of ``variant`` is right, indexed by its ``runs`` columns (integers: seed, fold) and
    ``clip_id``: the unit two variants' answers are paired on."""
    rows = answers[answers["variant"] == variant]
    index = pd.MultiIndex.from_arrays([rows[c].astype(int) for c in runs] + [rows["clip_id"]])
    return (rows["actual"] == rows["predicted"]).set_axis(index)


def clip_sign_test(current: pd.DataFrame, variant: str, reference: str) -> dict:
    """:func:`paired_clips` on predictions already reduced to the current rows."""
    from scipy.stats import binomtest

    both = pd.concat({name: answers_right(current, name, ["seed"]) for name in (variant, reference)}, axis=1,
                     join="inner")
    if both.empty:
        return {}
    share = both.astype(float).groupby(level=1).mean()  # per clip: the share of its seeds answered right
    better, worse = int((share[variant] > share[reference]).sum()), int((share[variant] < share[reference]).sum())
    p = binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
    return {"clips_paired": len(share), "clips_better": better, "clips_worse": worse, "clips_p": float(p)}


def detectable_difference(paired_sd: float, n_pairs: int, alpha: float = 0.05, power: float = 0.8,
                          holdout_ratio: float = 0.0) -> float:
    """The smallest true mean paired difference that ``n_pairs`` paired folds detect with ``power``.

    Two-sided paired t-test at level ``alpha`` on differences with standard deviation ``paired_sd``:
    (t[1 - alpha/2] + t[power]) * sd * sqrt(1/n + holdout_ratio), t with n - 1 degrees of freedom (the usual
    approximation; with few pairs the t quantiles, not the normal ones, carry the uncertainty of sd itself). It
    says how far apart two variants must be before a study of this size can tell them apart; on 71 clips the
    fold-to-fold spread, not the model, sets it. ``holdout_ratio`` 0 is the plain paired t-test, which treats the
    folds as independent; n_test / n_train of one fold is the corrected resampled t-test of Nadeau & Bengio
    (2003) that the verdicts go by (``what_helped.fold_t_tests``): its variance term does not shrink with more
    folds, so no number of seeds brings the detectable difference under
    (z[1 - alpha/2] + z[power]) * sd * sqrt(holdout_ratio). NaN under three pairs (the spread of two
    differences says nothing).
    """
    from scipy.stats import t

    if n_pairs < 3 or not np.isfinite(paired_sd):
        return float("nan")
    df = n_pairs - 1
    return float((t.ppf(1 - alpha / 2, df) + t.ppf(power, df)) * paired_sd * np.sqrt(1 / n_pairs + holdout_ratio))


def pairs_needed(paired_sd: float, effect: float, alpha: float = 0.05, power: float = 0.8,
                 holdout_ratio: float = 0.0) -> int:
    """Paired folds needed to detect a true mean difference ``effect``: the smallest n whose
    :func:`detectable_difference` is at most ``effect``. A ValueError where no number of folds can
    (``holdout_ratio`` > 0 and ``effect`` at or under the corrected test's floor)."""
    from scipy.stats import norm

    if effect <= 0 or not np.isfinite(paired_sd):
        raise ValueError(f"effect must be > 0 and paired_sd finite, got {effect!r}, {paired_sd!r}")
    floor = (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * paired_sd * np.sqrt(holdout_ratio)
    if effect <= floor:
        raise ValueError(f"no number of folds detects {effect:g} with paired sd {paired_sd:g} when the test allows "
                         f"for overlapping training sets (holdout ratio {holdout_ratio:g}): the floor is {floor:.3f}")
    n = 3
    while detectable_difference(paired_sd, n, alpha, power, holdout_ratio) > effect:
        n = n * 2 if detectable_difference(paired_sd, n * 2, alpha, power, holdout_ratio) > effect else n + 1
    return n


def paired_folds(results: pd.DataFrame, variant: str, reference: str) -> pd.Series:
    """Clip accuracy of ``variant`` minus ``reference`` on each (seed, fold) both have: the same test clips."""
    runs = [results[results["variant"] == name].set_index(["seed", "fold"])["clip_accuracy"]
            for name in (variant, reference)]
    return (runs[0] - runs[1]).dropna()


def paired_record(diffs: pd.Series) -> dict:
    """Mean paired difference, folds won/tied/lost (ties within float rounding) and the detectable difference."""
    tied = diffs.abs() <= 1e-9
    return {"delta": diffs.mean() if len(diffs) else np.nan, "won": int((~tied & (diffs > 0)).sum()),
            "tied": int(tied.sum()), "lost": int((~tied & (diffs < 0)).sum()),
            "detectable": detectable_difference(diffs.std(ddof=1) if len(diffs) > 1 else np.nan, len(diffs))}


def pooled_calibration(clips: pd.DataFrame, results: pd.DataFrame, variant: str) -> dict:
    """The clip ECE of a variant's answers pooled over every fold and seed that kept a confidence (``clip_ece``,
    over ``clip_ece_n`` clips): 71 clips per seed instead of one fold's 14, so the estimate is usable. Empty
    when none has one (the SVM; rows from before session 7)."""
    return _calibration_of(current_rows(clips, results), variant)


def _calibration_of(current: pd.DataFrame, variant: str) -> dict:
    """:func:`pooled_calibration` on predictions already reduced to the current rows."""
    from genre_se.calibration import calibration_error

    rows = current[(current["variant"] == variant) & current["confidence"].notna()]
    if rows.empty:
        return {}
    correct = (rows["actual"] == rows["predicted"]).to_numpy()
    return {"clip_ece": calibration_error(rows["confidence"].to_numpy(dtype=float), correct),
            "clip_ece_n": len(rows)}


def current_rows(predictions: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``predictions`` made with the configuration of the results CSV's row (``config_key``)."""
    return predictions.merge(results[["variant", "seed", "fold", "config_key"]],
                             on=["variant", "seed", "fold", "config_key"])


def _per_variant_table(current: pd.DataFrame, columns: list[str], last: str, order: list[str] | None,
                       cells) -> list[str]:
    """Markdown lines of a table with one row per variant of ``current`` (in ``order`` where given): the
    variant, then ``cells(its rows)``, one per column and one for the ``last`` column."""
    lines = ["| variant | " + " | ".join(columns) + f" | {last} |", "|---|" + "---|" * (len(columns) + 1)]
    names = [n for n in (order or []) if n in set(current["variant"])] or list(pd.unique(current["variant"]))
    for name in names:
        lines.append(f"| `{name}` | " + " | ".join(cells(current[current["variant"] == name])) + " |")
    return lines


def external_by_genre(external: pd.DataFrame, results: pd.DataFrame, order: list[str] | None = None) -> str:
    """Per variant and genre, the share of (fold model, file) answers on the external files that are right and
    the answer given most often: which genres of real songs a recipe gets, and what it mistakes them for.
    Markdown; empty when there is nothing to show."""
    current = current_rows(external, results)
    if current.empty:
        return ""
    genres = sorted(pd.unique(current["actual"]))

    has_confidence = "confidence" in current and current["confidence"].notna().any()

    def cells(rows: pd.DataFrame) -> list[str]:
        out = []
        for genre in genres:
            answers = rows.loc[rows["actual"] == genre, "predicted"]
            out.append("" if answers.empty else f"{(answers == genre).mean():.2f} ({answers.value_counts().index[0]})")
        if has_confidence:
            known = rows[rows["confidence"].notna()]
            wrong = known.loc[known["actual"] != known["predicted"], "confidence"]
            out.append("" if known.empty else f"{known['confidence'].mean():.2f} / "
                       + ("-" if wrong.empty else f"{wrong.mean():.2f}"))
        return out + [str(len(rows))]

    columns = genres + (["mean confidence (all / wrong)"] if has_confidence else [])
    lines = _per_variant_table(current, columns, "answers", order, cells)
    return ("Per genre of the external files: the share of right answers over every fold model and seed, and "
            "(in brackets) the answer given most often; where kept, the mean top probability of all answers "
            "and of the wrong ones (an honest model is unsure where it is wrong).\n\n" + "\n".join(lines) + "\n")


def robustness_by_transform(robustness: pd.DataFrame, results: pd.DataFrame, order: list[str] | None = None) -> str:
    """Per variant and transform of the robustness report, the top-1 agreement with the untouched audio (mean
    over fold models and seeds): which recording change a recipe is robust to. Markdown; empty when none."""
    current = current_rows(robustness, results)
    if current.empty:
        return ""
    transforms = list(pd.unique(current["transform"]))

    def cells(rows: pd.DataFrame) -> list[str]:
        means = rows.groupby("transform")["top1_agree"].mean()
        models = len(rows[["seed", "fold"]].drop_duplicates())
        return [f"{means[t]:.2f}" if t in means else "" for t in transforms] + [str(models)]

    lines = _per_variant_table(current, transforms, "fold models", order, cells)
    return ("Robustness report per transform: top-1 agreement with the untouched test clip, mean over the fold "
            "models (on their own test clips).\n\n" + "\n".join(lines) + "\n")


def summarize(results: pd.DataFrame, order: list[str] | None = None, reference: str | None = None,
              clips: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant: runs, mean and std (over every seed x fold) of clip accuracy and macro-F1, params,
    training seconds per fold, epochs; the paired accuracy difference to ``reference`` (same seed, fold) and,
    given the per-clip predictions ``clips``, the clip-level paired test (``paired_clips``)."""
    rows = []
    names = order or list(pd.unique(results["variant"]))
    # the clip table reduced to the results' current rows once, not once per variant and test
    current = current_rows(clips, results) if clips is not None and not clips.empty else None
    for name in names:
        runs = results[results["variant"] == name]
        if runs.empty:
            continue
        row = {
            "variant": name,
            "runs": len(runs),
            "seeds": runs["seed"].nunique(),
            "clip_accuracy_mean": runs["clip_accuracy"].mean(),
            "clip_accuracy_std": runs["clip_accuracy"].std(ddof=1) if len(runs) > 1 else 0.0,
            "clip_macro_f1_mean": runs["clip_macro_f1"].mean(),
            "clip_macro_f1_std": runs["clip_macro_f1"].std(ddof=1) if len(runs) > 1 else 0.0,
            "params": int(runs["params"].median()),
            "train_seconds_mean": runs["train_seconds"].mean(),
            "epochs_mean": runs["epochs_run"].astype(float).mean(),
            # repeatability: the mean over each seed's folds (complete seeds only mean the same thing)
            "seed_means": " / ".join(f"{m:.3f}" for m in runs.groupby("seed")["clip_accuracy"].mean()),
        }
        for column in OPTIONAL_COLUMNS:
            values = runs[column].dropna() if column in runs else pd.Series(dtype=float)
            row[f"{column}_mean"] = values.mean() if len(values) else np.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else (0.0 if len(values) else np.nan)
        if reference and name != reference:
            paired = paired_folds(results, name, reference)
            record = paired_record(paired)
            row["delta_vs_reference"] = record["delta"]
            row["wins_ties_losses"] = f"{record['won']}/{record['tied']}/{record['lost']}" if len(paired) else ""
            row["detectable_delta"] = record["detectable"]
            if current is not None:
                row.update(clip_sign_test(current, name, reference))
        if current is not None:
            row.update(_calibration_of(current, name))
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, reference: str | None = None) -> str:
    """The summary as a Markdown table (mean +- std over every seed x fold run)."""
    has_ref = reference is not None and "delta_vs_reference" in summary.columns
    header = ["variant", "clip accuracy", "clip macro-F1", "params", "train s / fold", "epochs", "runs"]
    if has_ref:
        header += [f"Δ acc vs {reference} (paired)", "W/T/L", "detectable Δ (80 % power)"]
    has_external = "external_top1_mean" in summary.columns and summary["external_top1_mean"].notna().any()
    if has_external:
        header += ["external top-1 (files)", "external top-1 (songs)"]
    has_robustness = ("robustness_agreement_mean" in summary.columns
                      and summary["robustness_agreement_mean"].notna().any())
    if has_robustness:
        header += ["robustness agreement"]
    has_seeds = "seeds" in summary.columns and (summary["seeds"] > 1).any()
    if has_seeds:
        header += ["clip accuracy per seed"]
    has_clips = has_ref and "clips_paired" in summary.columns and summary["clips_paired"].notna().any()
    if has_clips:
        header += [f"clips better/worse vs {reference} (sign test p; clips paired, each once)"]
    has_ece = "clip_ece" in summary.columns and summary["clip_ece"].notna().any()
    if has_ece:
        header += ["clip ECE (pooled; clips)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary.itertuples():
        cells = [
            f"`{r.variant}`",
            f"{r.clip_accuracy_mean:.3f} ± {r.clip_accuracy_std:.3f}",
            f"{r.clip_macro_f1_mean:.3f} ± {r.clip_macro_f1_std:.3f}",
            f"{r.params:,}",
            f"{r.train_seconds_mean:.1f}" if r.train_seconds_mean >= 1 else f"{r.train_seconds_mean:.3f}",
            f"{r.epochs_mean:.1f}",
            f"{r.runs} ({r.seeds} seeds)",
        ]
        if has_ref:
            delta, record = getattr(r, "delta_vs_reference", np.nan), getattr(r, "wins_ties_losses", "")
            detectable = getattr(r, "detectable_delta", np.nan)
            cells += ["" if pd.isna(delta) else f"{delta:+.3f}", record if isinstance(record, str) else "",
                      "" if pd.isna(detectable) else f"{detectable:.3f}"]
        if has_external:
            cells += ["" if pd.isna(getattr(r, f"{c}_mean")) else
                      f"{getattr(r, f'{c}_mean'):.3f} ± {getattr(r, f'{c}_std'):.3f}"
                      for c in ("external_top1", "external_song_top1")]
        if has_robustness:
            value, spread = r.robustness_agreement_mean, r.robustness_agreement_std
            cells += ["" if pd.isna(value) else f"{value:.3f} ± {spread:.3f}"]
        if has_seeds:
            cells += [r.seed_means]
        if has_clips:
            n = getattr(r, "clips_paired", np.nan)
            cells += ["" if pd.isna(n) else
                      f"{int(r.clips_better)}/{int(r.clips_worse)} (p {r.clips_p:.2g}; {int(n)})"]
        if has_ece:
            ece = getattr(r, "clip_ece", np.nan)
            cells += ["" if pd.isna(ece) else f"{ece:.3f} ({int(r.clip_ece_n)})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def study_summary(results: pd.DataFrame, out_csv: str | Path, order: list[str] | None = None,
                  reference: str | None = None) -> str:
    """The whole Markdown summary of a study's results CSV ``out_csv`` and the CSVs beside it."""
    clips = read_clip_predictions(clip_predictions_path(out_csv))
    table = summary_markdown(summarize(results, order, reference, clips), reference)
    for extra in (external_by_genre(read_clip_predictions(external_predictions_path(out_csv)), results, order),
                  robustness_by_transform(read_robustness(robustness_path(out_csv)), results, order)):
        table += f"\n{extra}" if extra else ""
    return table
