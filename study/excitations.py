"""Class-wise SE excitations of a cross-validation's fold models, each on the clips it never saw.

``python -m study.compare run --keep-models se_r16`` keeps every fold model of a variant as a bundle
(``<state>/bundles/<variant>/seed<s>/fold<f>``, its test clips in ``extra``). Pooling the k analyses covers
every clip of the data set once, held out, so the genre means rest on all clips instead of the one or two
per genre of a fixed test split::

    python -m study.excitations --bundles study/work/gtzan/state/bundles/se_r16/seed42 \\
        --features study/work/gtzan/features --out study/results/excitations_se_r16.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genre_se.errors import DatasetError, GenreSEError
from genre_se.fileio import write_csv


def fold_excitations(bundles_dir: str | Path, store_dir: str | Path):
    """Pooled :class:`genre_se.analyze.ClassExcitations` of every ``fold*`` bundle on its own test clips."""
    from genre_se.analyze import class_excitations, clip_rows, combine
    from genre_se.bundle import load_bundle
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(store_dir)
    folds = sorted(Path(bundles_dir).glob("fold*"))
    if not folds:
        raise DatasetError(f"{bundles_dir}: no fold bundles (run the study with --keep-models)")
    parts = []
    for folder in folds:
        bundle = load_bundle(folder)
        parts.append(class_excitations(bundle, store, clip_rows(store, bundle.extra["test_clips"])))
    return combine(parts), len(folds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.excitations", description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True, help="folder of fold0, fold1, ... bundles")
    parser.add_argument("--features", required=True, help="the feature store the study used")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--table", help="CSV of the per-block summary (default: OUT with .csv)")
    args = parser.parse_args(argv)
    from genre_se.analyze import plot_excitations

    try:
        exc, k = fold_excitations(args.bundles, args.features)
    except GenreSEError as exc_error:
        print(f"excitations: error: {exc_error}", file=sys.stderr)
        return 1
    plot_excitations(exc, args.out, f"Mean SE excitation per genre: {len(exc.clip_ids)} clips, each held out "
                                    f"(pooled over {k} fold models)")
    summary = exc.summary()
    write_csv(args.table or Path(args.out).with_suffix(".csv"), summary)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
