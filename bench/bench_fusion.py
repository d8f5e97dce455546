#!/usr/bin/env python
"""What late fusion with the SVM (``model.fusion: svm``) costs ``predict``: files per second with and without it.

One fusion bundle (``--model``, default ``models/fusion/bundle``, trained by
``PARAMS=configs/fusion-gtzan-mini.yaml WORK=models/fusion INSTALL=0 bash scripts/train_shipped_model.sh``)
serves every clip of ``--data`` (default the 71 clips of ../shared/data/gtzan-mini) and one generated 6-minute
song with ``GenreClassifier.predict_many`` (LiteRT, model loaded), once with its SVM (the file's MFCC and spectral
statistics over up to 8 windows of 30 s, then the numpy SVM) and once without (``fusion=False``); rounds
interleaved, the first untimed. The ratio is ``without / with`` median seconds: 1.00x means fusion is free.

Usage::

    python bench/bench_fusion.py                  # models/fusion/bundle on gtzan-mini, 3 rounds
    python bench/bench_fusion.py --repeats 5 --model B --data DIR
    python bench/bench_fusion.py --smoke          # the shipped CNN + an SVM fitted on generated clips, one round (CI)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_familiarity import generated_clips  # noqa: E402
from common import failed_files, machine_description, positive_int, time_rounds, with_without_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gtzan-mini" / "genres"
DEFAULT_MODEL = ROOT / "models" / "fusion" / "bundle"


def long_song(path: Path, seconds: float = 360.0) -> Path:
    """A 6-minute stereo 44.1 kHz wav (a tone sweep with noise): what a user's whole song costs."""
    import numpy as np
    import soundfile as sf

    sr = 44100
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (110 + 20 * np.sin(t / 7)) * t) + 0.03 * np.random.default_rng(1).standard_normal(len(t))
    sf.write(path, np.stack([y, y], axis=1).astype("float32"), sr)
    return path


def smoke_bundle(folder: Path, clips: list[Path]) -> Path:
    """The shipped CNN with an SVM fitted on generated clips (so the smoke run needs no training)."""
    import numpy as np

    from genre_se.fusion import fit_svm, save_svm, window_statistics
    from genre_se.inference import SHIPPED_BUNDLE, GenreClassifier

    bundle = folder / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    labels = GenreClassifier.load(bundle).labels
    stats = np.concatenate([window_statistics(p) for p in clips])
    noisy = np.concatenate([stats + np.random.default_rng(i).normal(0, 0.01, stats.shape) for i in range(2)])
    save_svm(bundle, fit_svm(noisy, np.tile(np.arange(len(clips)), 2), labels))
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle with svm.npz")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of audio files (recursive)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--smoke", action="store_true", help="generated clips, one round: checks the script runs")
    args = parser.parse_args(argv)

    from genre_se.errors import ModelError
    from genre_se.inference import GenreClassifier

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.smoke:
            files, repeats = generated_clips(scratch), 1
            model = smoke_bundle(scratch, files)
        else:
            if not args.data.is_dir():
                print(f"--data {args.data}: not a folder (use --smoke without shared data)", file=sys.stderr)
                return 2
            files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in {".wav", ".au", ".mp3", ".flac"})
            model, repeats = args.model, args.repeats
            if not files:
                print(f"--data {args.data}: no audio files in it", file=sys.stderr)
                return 2
        song = [long_song(scratch / "song.wav", 90.0 if args.smoke else 360.0)]
        methods = {}
        for flag in (True, False):
            try:
                clf = GenreClassifier.load(model, backend="litert", fusion=flag)
            except ModelError as exc:  # e.g. the default models/fusion/bundle, not trained yet (see the docstring)
                hint = (" (train it: PARAMS=configs/fusion-gtzan-mini.yaml WORK=models/fusion INSTALL=0 bash "
                        "scripts/train_shipped_model.sh; or pass --model B)") if model == DEFAULT_MODEL else ""
                print(f"error: {exc}{hint}", file=sys.stderr)
                return 2
            if flag and clf.svm is None:
                print(f"{model}: has no fusion SVM (train with model.fusion: svm)", file=sys.stderr)
                return 2
            way = "with" if flag else "without"
            methods[f"{len(files)} clips, {way} fusion"] = lambda c=clf: list(c.predict_many(files))
            methods[f"one {'90-s' if args.smoke else '6-min'} song, {way} fusion"] = \
                lambda c=clf: list(c.predict_many(song))
        for run in methods.values():  # warm-up: interpreter allocation, librosa's first calls, page cache
            failed = failed_files(run())
            if failed:
                print(f"{len(failed)} files failed, e.g. {failed[0]}", file=sys.stderr)
                return 2
        timings = time_rounds(methods, repeats)
    print(f"{len(files)} files + 1 song, {repeats} round(s), model {model}, LiteRT\n")
    print(with_without_table(timings, "fusion", lambda name: len(files) if "clips" in name else 1))
    print("\n" + machine_description(("numpy", "librosa", "scikit-learn", "ai-edge-litert")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
