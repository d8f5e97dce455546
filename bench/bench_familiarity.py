#!/usr/bin/env python
"""What the unfamiliar flag costs ``predict``: files per second with and without the familiarity statistics.

One bundle (``--model``, default the shipped one) serves every clip of ``--data`` (default the 71 clips of
../shared/data/gtzan-mini) with ``GenreClassifier.predict_many``, model loaded, once per round with the
bundle's familiarity statistics (the softmax and the embedding in one pass, then one Mahalanobis distance per
segment) and once without them (``familiarity=False``: the softmax alone), for the LiteRT and the Keras
runtime; methods interleaved round by round, the first round untimed. The ratio is ``without / with``
median seconds: 1.00x means the flag is free.

Usage::

    python bench/bench_familiarity.py                  # the shipped model on gtzan-mini, 3 rounds
    python bench/bench_familiarity.py --repeats 5 --model models/bundle --data DIR
    python bench/bench_familiarity.py --smoke          # the shipped model, 3 generated clips, one round (CI)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import failed_files, machine_description, positive_int, time_rounds, with_without_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gtzan-mini" / "genres"


def generated_clips(folder: Path, n: int = 3, seconds: float = 8.0) -> list[Path]:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(n):
        y = 0.3 * np.sin(2 * np.pi * 110 * (i + 1) * t) + 0.05 * rng.standard_normal(len(t))
        paths.append(folder / f"clip{i}.wav")
        sf.write(paths[-1], y.astype("float32"), sr)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="bundle with familiarity.npz (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (recursive)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--smoke", action="store_true", help="3 generated clips, one round: checks the script runs")
    args = parser.parse_args(argv)

    from genre_se.errors import ModelError
    from genre_se.inference import SHIPPED_BUNDLE, GenreClassifier

    model = args.model or SHIPPED_BUNDLE
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            files, repeats = generated_clips(Path(scratch)), 1
        else:
            if not args.data.is_dir():
                print(f"--data {args.data}: not a folder (use --smoke without shared data)", file=sys.stderr)
                return 2
            files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in {".wav", ".au", ".mp3", ".flac"})
            repeats = args.repeats
            if not files:
                print(f"--data {args.data}: no audio files in it", file=sys.stderr)
                return 2
        classifiers = {}
        for backend in ("litert", "keras"):
            for flag in (True, False):
                try:
                    clf = GenreClassifier.load(model, backend=backend, familiarity=flag)
                except ModelError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                if flag and clf.familiarity is None:
                    print(f"{model}: has no familiarity statistics (genre-se familiarity adds them)", file=sys.stderr)
                    return 2
                classifiers[f"{backend}, {'with' if flag else 'without'} familiarity"] = clf
        methods = {name: (lambda c=clf: list(c.predict_many(files))) for name, clf in classifiers.items()}
        for run in methods.values():  # warm-up: graph tracing, interpreter allocation, page cache
            failed = failed_files(run())
            if failed:
                print(f"{len(failed)} of {len(files)} files failed, e.g. {failed[0]}", file=sys.stderr)
                return 2
        timings = time_rounds(methods, repeats)
    print(f"{len(files)} files, {repeats} round(s), model {model}\n")
    print(with_without_table(timings, "familiarity", lambda name: len(files)))
    print("\n" + machine_description(("numpy", "tensorflow-cpu", "keras", "ai-edge-litert")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
