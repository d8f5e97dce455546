"""Does the pipeline's fusion SVM (level-normalised, silence-trimmed windows) keep the study's fusion accuracy?

``study/ensemble.py`` measured the late fusion with the classic baseline's statistics of the raw clip
(``genre_se.baseline.clip_features``). The pipeline's ``model.fusion: svm`` computes them on each window brought
to -20 dBFS RMS without its leading and trailing silence (``genre_se.fusion.window_statistics``), so that the
fused answer is as blind to the recording's level as the per-segment-standardised CNN. This script scores both
SVMs, alone and fused with the kept SE-CNN distributions (``e30_a`` of ``ensemble.yaml``), on exactly the study's
folds, without training any CNN::

    python -m study.fusion_level --data ../shared/data/gtzan-mini/genres --out study/results/fusion_level.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def clip_statistics(paths: list[str]) -> dict[str, np.ndarray]:
    """Both definitions of the SVM's input for every clip: ``raw`` (the study's) and ``pipeline``."""
    from genre_se.audio import load_audio
    from genre_se.baseline import SAMPLE_RATE, clip_features
    from genre_se.fusion import window_statistics

    raw, pipeline = [], []
    for path in paths:
        raw.append(clip_features(load_audio(path, SAMPLE_RATE)))
        pipeline.append(window_statistics(path).mean(0))  # a 30-s clip is one window
    return {"raw": np.stack(raw), "pipeline": np.stack(pipeline)}


def fold_scores(clips: pd.DataFrame, probs: pd.DataFrame, features: dict[str, np.ndarray], ids: list[str],
                labels: list[str], member: str = "e30_a") -> pd.DataFrame:
    """Per (seed, fold) with the member's distributions: clip accuracy of the CNN, each SVM (its own answers) and
    each fusion (mean of the CNN's clip distribution and the SVM's Platt probabilities)."""
    from genre_se.baseline import make_classifier
    from genre_se.fusion import fit_svm, fuse

    truth = np.array([labels.index(c.split("/")[0]) for c in ids])
    rows = []
    for seed in sorted(clips["seed"].unique()):
        svm = clips[(clips["variant"] == "svm") & (clips["seed"] == seed)]
        fold_of = dict(zip(svm["clip_id"], svm["fold"]))
        folds = np.array([fold_of.get(c, -1) for c in ids])
        cnn = probs[(probs["variant"] == member) & (probs["seed"] == seed) & (probs["set"] == "test")]
        cnn_clip = cnn.groupby("clip_id")[labels].mean()
        for fold in sorted(set(folds) - {-1}):
            test = folds == fold
            test_ids = [c for c, t in zip(ids, test) if t]
            if not set(test_ids) <= set(cnn_clip.index):
                continue  # the member has not finished this fold
            dist = cnn_clip.loc[test_ids].to_numpy()
            row = {"seed": int(seed), "fold": int(fold), "cnn": float((dist.argmax(1) == truth[test]).mean())}
            for name, x in features.items():
                own = make_classifier(int(seed)).fit(x[~test], truth[~test]).predict(x[test])
                platt = fit_svm(x[~test], truth[~test], labels, seed=int(seed)).probabilities(x[test])
                row[f"svm_{name}"] = float((own == truth[test]).mean())
                row[f"fused_{name}"] = float((fuse(dist, platt).argmax(1) == truth[test]).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def report(scores: pd.DataFrame) -> str:
    """The Markdown report: mean +- std per column, per seed, and the paired pipeline - raw differences."""
    columns = ["cnn", "svm_raw", "svm_pipeline", "fused_raw", "fused_pipeline"]
    cells = [f"{scores[c].mean():.3f} +- {scores[c].std(ddof=1):.3f}" for c in columns]
    lines = ["| folds | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
             f"| all {len(scores)} | " + " | ".join(cells) + " |"]
    for seed, group in scores.groupby("seed"):
        lines.append(f"| seed {seed} ({len(group)}) | " + " | ".join(f"{group[c].mean():.3f}" for c in columns) + " |")
    lines.append("")
    for what in ("svm", "fused"):
        diff = scores[f"{what}_pipeline"] - scores[f"{what}_raw"]
        lines.append(f"* {what}, pipeline - raw: {diff.mean():+.3f} (won {(diff > 0).sum()}, tied {(diff == 0).sum()}, "
                     f"lost {(diff < 0).sum()} of {len(diff)} paired folds)")
    diff = scores["fused_pipeline"] - scores["cnn"]
    lines.append(f"* fused (pipeline) - SE-CNN: {diff.mean():+.3f} (won {(diff > 0).sum()}, tied {(diff == 0).sum()}, "
                 f"lost {(diff < 0).sum()})")
    diff = scores["fused_pipeline"] - scores["svm_raw"]
    lines.append(f"* fused (pipeline) - the classic SVM: {diff.mean():+.3f} (won {(diff > 0).sum()}, "
                 f"tied {(diff == 0).sum()}, lost {(diff < 0).sum()})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/gtzan-mini/genres", help="the gtzan-mini genres/ folder")
    parser.add_argument("--results", default=str(RESULTS / "ensemble.csv"), help="the ensemble study's results CSV")
    parser.add_argument("--out", default=str(RESULTS / "fusion_level.md"), help="Markdown report to write")
    args = parser.parse_args(argv)

    from genre_se.fileio import write_text

    stem = Path(args.results)
    clips = pd.read_csv(stem.with_name(stem.stem + "_clips.csv"), dtype={"config_key": str})
    probs = pd.read_csv(stem.with_name(stem.stem + "_probs.csv"), dtype={"config_key": str})
    labels = [c for c in probs.columns if c not in ("variant", "seed", "fold", "set", "clip_id", "actual",
                                                   "config_key")]
    ids = sorted(clips.loc[clips["variant"] == "svm", "clip_id"].unique())
    missing = [c for c in ids if not (Path(args.data) / f"{c}.wav").is_file()]
    if missing:
        print(f"--data {args.data}: no {missing[0]}.wav (give the gtzan-mini genres/ folder)", file=sys.stderr)
        return 2
    features = clip_statistics([str(Path(args.data) / f"{c}.wav") for c in ids])
    scores = fold_scores(clips, probs, features, ids, labels)
    text = ("# The pipeline's fusion SVM against the study's (`python -m study.fusion_level`)\n\n"
            "Clip accuracy per paired fold of `ensemble.yaml` where `e30_a` kept its distributions. `raw`: the classic "
            "baseline's statistics of the raw clip (what `ensemble.md` fused); `pipeline`: `model.fusion: svm`'s, "
            "each window at -20 dBFS RMS without its leading and trailing silence. SVM columns: its own answers; "
            "fused: the mean with the SE-CNN's clip distribution.\n\n" + report(scores))
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
