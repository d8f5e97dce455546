"""Class-wise SE excitations of a cross-validation's fold models, each on the clips it never saw.

``python -m study.compare run --keep-models se_r16`` keeps every fold model of a variant as a bundle
(``<state>/bundles/<variant>/seed<s>/fold<f>``, its test clips in ``extra``). Each fold model is analysed on
its own test fold; per block, the class-specificity statistics (genre spread, eta squared and its chance
level) are then averaged over the folds. The channels themselves are never pooled across models: channel k
of one fold model has nothing to do with channel k of another. The figure shows one fold model::

    python -m study.excitations --bundles study/work/gtzan/state/bundles/se_r16/seed42 \\
        --features study/work/gtzan/features --out study/results/excitations_se_r16.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from genre_se.errors import DatasetError, GenreSEError
from genre_se.fileio import write_csv


def fold_excitations(bundles_dir: str | Path, store_dir: str | Path) -> list:
    """:class:`genre_se.analyze.ClassExcitations` of every ``fold*`` bundle on its own test clips, in fold order."""
    from genre_se.analyze import class_excitations, clip_rows
    from genre_se.bundle import load_bundle
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(store_dir)
    folds = sorted(Path(bundles_dir).glob("fold*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1)
    if not folds:
        raise DatasetError(f"{bundles_dir}: no fold bundles (run the study with --keep-models)")
    analyses = []
    for folder in folds:
        bundle = load_bundle(folder)
        analyses.append(class_excitations(bundle, store, clip_rows(store, bundle.extra["test_clips"])))
    return analyses


def fold_summary(analyses: list) -> pd.DataFrame:
    """Per block: mean and std over the fold models of genre spread, eta squared, its chance level and excess."""
    frames = [a.summary().assign(fold=i) for i, a in enumerate(analyses)]
    table = pd.concat(frames, ignore_index=True)
    stats = ["genre_spread", "eta_squared", "eta_squared_chance", "eta_squared_excess"]
    grouped = table.groupby("block", sort=False)
    summary = grouped[stats].agg(["mean", "std"])
    summary.columns = [f"{name}_{how}" for name, how in summary.columns]
    summary.insert(0, "channels", grouped["channels"].first())
    summary.insert(1, "clips", sum(len(a.clip_ids) for a in analyses))
    summary.insert(2, "folds", len(analyses))
    return summary.reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.excitations", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True, help="folder of fold0, fold1, ... bundles")
    parser.add_argument("--features", required=True, help="the feature store the study used")
    parser.add_argument("--out", required=True, help="PNG to write: the first fold model's figure")
    parser.add_argument("--table", help="CSV of the per-block summary over the folds (default: OUT with .csv)")
    args = parser.parse_args(argv)
    from genre_se.analyze import plot_excitations

    try:
        analyses = fold_excitations(args.bundles, args.features)
    except GenreSEError as error:
        print(f"excitations: error: {error}", file=sys.stderr)
        return 1
    first = analyses[0]
    plot_excitations(first, args.out, f"Mean SE excitation per genre: fold-0 model on its {len(first.clip_ids)} "
                                      "held-out clips")
    summary = fold_summary(analyses)
    write_csv(args.table or Path(args.out).with_suffix(".csv"), summary)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
