"""Class-wise SE excitations of a cross-validation's fold models, each on the clips it never saw.

``python -m study.compare run --keep-models se_r16`` keeps every fold model of a variant as a bundle
(``<state>/bundles/<variant>/seed<s>/fold<f>``, its test clips in ``extra``). Each fold model is analysed on
its own test fold, and the same clips through untrained copies of it (fresh weights: the input's genre
differences reach the gates through any weights, so only trained minus untrained is learned); per block, the
class-specificity statistics (genre spread, eta squared and its chance level, nearest genre) and what training
added to them are then averaged over the folds. The channels themselves are never pooled across models:
channel k of one fold model has nothing to do with channel k of another. What can be pooled is a per-clip
question: is a held-out clip's nearest genre centroid of the gates its own genre (``nearest_genre``), for the
trained model and for its untrained copies? An exact test per block over every fold's clips says whether
training made the gates point to the genre more often. The figure shows one fold model::

    python -m study.excitations --bundles study/work/gtzan/state/bundles/se_r16/seed42 \\
        study/work/gtzan/state/bundles/se_r16/seed43 --features study/work/gtzan/features \\
        --out study/results/excitations_se_r16.png --markdown study/results/excitations_se_r16.md
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from genre_se.analyze import ClassExcitations
from genre_se.errors import DatasetError, GenreSEError
from genre_se.fileio import write_csv, write_text


@dataclass
class FoldAnalysis:
    """One fold model's excitations on its own test clips, and the same clips through untrained copies of it."""

    trained: ClassExcitations
    untrained: list = field(default_factory=list)
    name: str = ""  # which model: "<seed folder>/<fold folder>"


def fold_excitations(bundles_dirs, store_dir: str | Path, controls: int = 3) -> list[FoldAnalysis]:
    """Every ``fold*`` bundle of one folder or several (e.g. one per seed) analysed on its own test clips, in fold
    order, each beside ``controls`` untrained copies of it (fresh weights drawn with seeds 0, 1, ...: the
    control's own draw is noise too, so several)."""
    from genre_se.analyze import class_excitations, clip_rows, untrained_copy
    from genre_se.bundle import load_bundle
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(store_dir)
    folds = []
    for bundles_dir in [bundles_dirs] if isinstance(bundles_dirs, (str, Path)) else bundles_dirs:
        found = sorted(Path(bundles_dir).glob("fold*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)
        if not found:
            raise DatasetError(f"{bundles_dir}: no fold bundles (run the study with --keep-models)")
        folds += found
    analyses = []
    for folder in folds:
        bundle = load_bundle(folder)
        rows = clip_rows(store, bundle.extra["test_clips"])
        analyses.append(FoldAnalysis(class_excitations(bundle, store, rows),
                                     [class_excitations(untrained_copy(bundle, seed), store, rows)
                                      for seed in range(controls)], f"{folder.parent.name}/{folder.name}"))
    return analyses


TRAINED = ["genre_spread", "eta_squared", "eta_squared_chance", "eta_squared_excess",
           "nearest_genre", "nearest_genre_chance", "nearest_genre_clips"]
CONTROLLED = ["genre_spread", "eta_squared_excess", "nearest_genre"]  # each beside the untrained copies'
POOLED = ["nearest_genre", "nearest_genre_chance", "nearest_genre_untrained"]  # shares of clips: pooled over folds


def fold_table(analyses: list[FoldAnalysis]) -> pd.DataFrame:
    """One row per fold and block: the trained model's statistics, the untrained copies' mean of each
    statistic in CONTROLLED (``*_untrained``) and what training added (``*_gain``: trained - untrained)."""
    frames = []
    for i, fold in enumerate(analyses):
        table = fold.trained.summary()[["block", "channels", *TRAINED]].assign(fold=i, model=fold.name)
        if fold.untrained:
            copies = pd.concat([c.summary()[CONTROLLED] for c in fold.untrained], keys=range(len(fold.untrained)))
            untrained = copies.groupby(level=1).mean()  # mean over the copies, row by row (block)
            for name in CONTROLLED:
                table[f"{name}_untrained"] = untrained[name].to_numpy()
                table[f"{name}_gain"] = table[name] - table[f"{name}_untrained"]
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def clip_hits(analyses: list[FoldAnalysis]) -> pd.DataFrame:
    """One row per fold, block and clip whose genre has another clip in the fold: whether the trained gates'
    nearest genre is the clip's (``trained``) and the share of the untrained copies for which it is
    (``untrained``) of the ``copies`` whose gates vary. A block that is dead in the model, or in every copy, is
    left out for that fold."""
    from genre_se.analyze import nearest_genre_hits, with_genre_partner

    rows = []
    for i, fold in enumerate(analyses):
        exc = fold.trained
        ids = np.asarray(exc.clip_ids)[with_genre_partner(exc.clip_labels)]
        for b, block in enumerate(exc.blocks):
            trained = nearest_genre_hits(exc.clip_means[b], exc.clip_labels)
            copies = [nearest_genre_hits(c.clip_means[b], c.clip_labels) for c in fold.untrained]
            copies = [c for c in copies if len(c) == len(ids)]  # a dead copy is left out, as fold_table's mean does
            if len(trained) != len(ids) or (fold.untrained and not copies):
                continue
            untrained = np.mean(copies, axis=0) if copies else np.full(len(ids), np.nan)
            rows.append(pd.DataFrame({"fold": i, "block": block, "clip_id": ids, "trained": trained,
                                      "untrained": untrained, "copies": len(copies)}))
    columns = ["fold", "block", "clip_id", "trained", "untrained", "copies"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)


def nearest_genre_test(hits: pd.DataFrame) -> pd.DataFrame:
    """Per block: clips where the trained gates point to the genre more often than the untrained copies'
    (``better``), less often (``worse``), and a two-sided exact conditional test's p: were training to add
    nothing, the trained model would be one more draw beside its K copies, so for a clip with s hits among the
    K + 1 models the trained one's is a hit with probability s / (K + 1); p is that of the trained hits' total
    under this Poisson binomial (for K = 1 the sign test of better against worse). A plain sign test of
    better against worse is not valid for K > 1: better needs the trained hit and one copy's miss, worse the
    trained miss and one copy's hit, unequally likely under the null unless the hit rate is 1/2."""
    rows = []
    for block, group in hits.groupby("block", sort=False):
        better = int((group["trained"] > group["untrained"]).sum())
        worse = int((group["trained"] < group["untrained"]).sum())
        t = group["trained"].to_numpy(float)
        k = group["copies"].to_numpy(float)
        q = (t + k * group["untrained"].to_numpy(float)) / (k + 1)
        informative = (q > 0) & (q < 1)  # NaN (no copies) is neither
        p = float("nan")
        if informative.any():
            pmf = np.array([1.0])
            for each in q[informative]:
                pmf = np.convolve(pmf, [1 - each, each])
            observed = pmf[int(round(t[informative].sum()))]
            p = min(1.0, float(pmf[pmf <= observed * (1 + 1e-7)].sum()))
        rows.append({"block": block, "nearest_genre_better": better, "nearest_genre_worse": worse,
                     "nearest_genre_p": float(p)})
    return pd.DataFrame(rows, columns=["block", "nearest_genre_better", "nearest_genre_worse", "nearest_genre_p"])


def fold_summary(analyses: list[FoldAnalysis], table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per block, mean and std over the fold models of every statistic of :func:`fold_table`, per gain the
    number of fold models where training added something (``*_gain_folds_above``: gain > 0), and the
    nearest-genre shares pooled over every fold's clips (``*_pooled``: each clip counts once, whatever its fold).
    ``table``: :func:`fold_table` of ``analyses`` where the caller has it already (its permutations are the cost)."""
    table = fold_table(analyses) if table is None else table
    stats = [c for c in table.columns if c not in ("block", "channels", "fold", "model", "nearest_genre_clips")]
    grouped = table.groupby("block", sort=False)
    summary = grouped[stats].agg(["mean", "std"])
    summary.columns = [f"{name}_{how}" for name, how in summary.columns]
    for gain in [c for c in stats if c.endswith("_gain")]:
        summary[f"{gain}_folds_above"] = grouped[gain].agg(lambda v: int((v > 0).sum()))
    pooled = [c for c in POOLED if c in table.columns]
    # only the folds where every pooled share was measured (a dead untrained copy's NaN is not 0 hits)
    weights = table["nearest_genre_clips"].where(table[pooled].notna().all(axis=1), 0)
    clips = weights.groupby(table["block"], sort=False).sum()
    summary["nearest_genre_clips"] = clips
    for share in pooled:
        hits = (table[share].fillna(0) * weights).groupby(table["block"], sort=False).sum()
        summary[f"{share}_pooled"] = hits / clips.where(clips > 0)
    summary.insert(0, "channels", grouped["channels"].first())
    summary.insert(1, "clips", sum(len(a.trained.clip_ids) for a in analyses))
    summary.insert(2, "folds", len(analyses))
    summary = summary.reset_index()
    if any(a.untrained for a in analyses):
        summary = summary.merge(nearest_genre_test(clip_hits(analyses)), on="block", how="left")
    return summary


def markdown_table(summary: pd.DataFrame) -> str:
    """The per-block comparison with the untrained copies, as the Markdown table study/README.md shows."""
    lines = ["| block | channels | genre spread (untrained) | eta² excess (untrained) | trained - untrained "
             "(folds above) | nearest genre: trained / untrained / chance (clips) | clips better / worse, p |",
             "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(
            f"| {r.block} | {r.channels} | {r.genre_spread_mean:.3f} ({r.genre_spread_untrained_mean:.3f}) | "
            f"{r.eta_squared_excess_mean:+.2f} ({r.eta_squared_excess_untrained_mean:+.2f}) | "
            f"{r.eta_squared_excess_gain_mean:+.2f} ± {r.eta_squared_excess_gain_std:.2f} "
            f"({r.eta_squared_excess_gain_folds_above} of {r.folds}) | "
            f"{r.nearest_genre_pooled:.2f} / {r.nearest_genre_untrained_pooled:.2f} / "
            f"{r.nearest_genre_chance_pooled:.2f} ({r.nearest_genre_clips}) | "
            f"{r.nearest_genre_better:.0f} / {r.nearest_genre_worse:.0f}, {r.nearest_genre_p:.2g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.excitations", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True, nargs="+",
                        help="folder of fold0, fold1, ... bundles; several (one per seed) are pooled")
    parser.add_argument("--features", required=True, help="the feature store the study used")
    parser.add_argument("--out", required=True, help="PNG to write: the first fold model's figure")
    parser.add_argument("--table", help="CSV of the per-block summary over the folds (default: OUT with .csv; "
                                            "the per-fold rows beside it, *_folds.csv)")
    parser.add_argument("--markdown", help="also write the comparison with the untrained copies as a Markdown table")
    parser.add_argument("--controls", type=int, default=3,
                        help="untrained copies of each fold model to compare with (default 3; 0: none)")
    args = parser.parse_args(argv)
    from genre_se.analyze import plot_excitations

    if args.controls < 0 or (args.markdown and not args.controls):
        print(f"excitations: error: --controls must be 1 or more with --markdown, 0 or more without, not "
              f"{args.controls}", file=sys.stderr)
        return 2
    try:
        analyses = fold_excitations(args.bundles, args.features, args.controls)
    except GenreSEError as error:
        print(f"excitations: error: {error}", file=sys.stderr)
        return 1
    first = analyses[0].trained
    plot_excitations(first, args.out, f"Mean SE excitation per genre: fold-0 model on its {len(first.clip_ids)} "
                                      "held-out clips")
    table = Path(args.table or Path(args.out).with_suffix(".csv"))
    per_fold = fold_table(analyses)
    summary = fold_summary(analyses, per_fold)
    write_csv(table, summary)
    write_csv(table.with_name(f"{table.stem}_folds.csv"), per_fold)
    if args.markdown:
        write_text(args.markdown, markdown_table(summary))
    for row in summary.itertuples():
        line = f"{row.block}: spread {row.genre_spread_mean:.3f}, " \
               f"eta^2 excess {row.eta_squared_excess_mean:+.2f}"
        if args.controls:
            line += (f"; trained - untrained: eta^2 excess {row.eta_squared_excess_gain_mean:+.2f} ± "
                     f"{row.eta_squared_excess_gain_std:.2f} ({row.eta_squared_excess_gain_folds_above} of "
                     f"{row.folds} folds above); "
                     f"nearest genre {row.nearest_genre_pooled:.2f} of {row.nearest_genre_clips} clips "
                     f"(untrained {row.nearest_genre_untrained_pooled:.2f}, chance {row.nearest_genre_chance_pooled:.2f}; "
                     f"clips better {row.nearest_genre_better:.0f}, worse {row.nearest_genre_worse:.0f}, exact test "
                     f"p {row.nearest_genre_p:.2g})")
        print(line)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
