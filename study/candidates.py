"""Compare trained bundles the way issue 10 asks: held-out GTZAN, real songs, robustness, calibration.

Each candidate is a work folder of ``scripts/train_shipped_model.sh`` (``bundle/``, ``reports/metrics.json``,
``index.csv``). For each it reports the held-out GTZAN test clips (the evaluate stage's metrics), top-1 on an
external folder-per-genre set (``../shared/data/real-clips``: scored only, never trained, tuned or thresholded
on) per file and per song, the ECE before/after temperature scaling, and the robustness report's mean
agreement over the external files plus the GTZAN test clips.

    python -m study.candidates models/cand-segment models/cand-frequency models/cand-dataset \\
        --external ../shared/data/real-clips --out study/results/shipped_candidates.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from genre_se.errors import GenreSEError
from genre_se.fileio import write_text
from study.compare import external_files


def score_external(classifier, files: list[tuple[Path, str, str]]) -> dict:
    """Top-1 per file and per song (mean of the excerpts' distributions), and what was predicted."""
    predictions = list(classifier.predict_many([p for p, _, _ in files]))
    hits, by_song, said = [], {}, []
    for (path, genre, song), pred in zip(files, predictions):
        hits.append(pred.genre == genre)
        said.append(f"{path.stem}:{pred.genre}{'?' if pred.uncertain else ''}")
        by_song.setdefault(song, [genre, []])[1].append(pred.probabilities)
    song_hits = [classifier.labels[int(np.argmax(np.mean(ps, axis=0)))] == g for g, ps in by_song.values()]
    return {"external_top1": float(np.mean(hits)), "external_hits": f"{sum(hits)}/{len(hits)}",
            "song_top1": float(np.mean(song_hits)), "song_hits": f"{sum(song_hits)}/{len(song_hits)}",
            "predicted": " ".join(said)}


def robustness_agreement(classifier, paths: list) -> tuple[float, pd.DataFrame]:
    from genre_se.robustness import FileRobustness, iter_robustness, report_frame, summarize

    results = [r for r in iter_robustness(classifier, paths) if isinstance(r, FileRobustness)]
    summary = summarize(report_frame(results))
    return float(summary["agreement"].mean()), summary


def candidate_row(work: Path, external: Path | None, with_robustness: bool) -> tuple[dict, pd.DataFrame | None]:
    from genre_se.inference import GenreClassifier

    classifier = GenreClassifier.load(work / "bundle")
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    calibration = classifier.bundle.extra.get("calibration", {})
    row = {
        "candidate": work.name,
        "input_norm": classifier.bundle.model_config.get("input_norm", "dataset"),
        "gtzan_test_acc": metrics["clip"]["accuracy"],
        "gtzan_test_f1": metrics["clip"]["macro_f1"],
        "n_test": metrics["n_clips"],
        "temperature": calibration.get("temperature"),
        "ece_val_before": calibration.get("ece_before"),
        "ece_val_after": calibration.get("ece_after"),
        "ece_test_raw": metrics["clip"].get("ece"),
        "ece_test_calibrated": metrics["clip"].get("ece_calibrated"),
    }
    files = external_files(external, classifier.labels) if external else []
    if files:
        row.update(score_external(classifier, files))
    summary = None
    if with_robustness:
        index = pd.read_csv(work / "index.csv")
        test_clips = [Path(p) for p in index.loc[index["split"] == "test", "path"]]
        row["robustness_agreement"], summary = robustness_agreement(classifier, [p for p, _, _ in files] + test_clips)
    return row, summary


def markdown(rows: list[dict]) -> str:
    cols = [("candidate", "{}"), ("input_norm", "{}"), ("gtzan_test_acc", "{:.2f}"), ("n_test", "{}"),
            ("external_hits", "{}"), ("song_hits", "{}"), ("robustness_agreement", "{:.3f}"),
            ("temperature", "{:.2f}"), ("ece_test_raw", "{:.3f}"), ("ece_test_calibrated", "{:.3f}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for name, fmt in cols:
            value = row.get(name)
            cells.append("" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- `{row['candidate']}` predicted: {row.get('predicted', '')}" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="+", type=Path, help="work folders of scripts/train_shipped_model.sh")
    parser.add_argument("--external", type=Path, help="folder-per-genre out-of-domain audio (scored only)")
    parser.add_argument("--no-robustness", action="store_true", help="skip the robustness report (slow)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (atomically) too")
    args = parser.parse_args(argv)
    try:
        rows, summaries = [], []
        for work in args.work:
            row, summary = candidate_row(work, args.external, not args.no_robustness)
            rows.append(row)
            if summary is not None:
                summaries.append(summary.assign(candidate=work.name))
            print(json.dumps({k: v for k, v in row.items() if k != "predicted"}), file=sys.stderr, flush=True)
        text = markdown(rows)
        if summaries:
            table = pd.concat(summaries).pivot(index="transform", columns="candidate", values="agreement")
            text += "\nRobustness: top-1 agreement with the untouched audio, per transform\n\n"
            text += table.to_markdown(floatfmt=".2f") + "\n"
        if args.out:
            write_text(args.out, text)
        print(text)
        return 0
    except GenreSEError as exc:
        print(f"candidates: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
