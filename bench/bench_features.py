#!/usr/bin/env python
"""Feature-extraction throughput: the project's `features` stage against a plain librosa loop.

Methods, all over the same readable clips of one dataset index:

* ``stage-w2``: ``genre_se.feature_store.build_store`` with ``FeatureConfig(workers=2)``: decode, log-mel,
  segment, float16 shards, assemble the memory-mapped store (what ``genre-se features`` does);
* ``stage-w1``: the same in one process;
* ``plain``: for each file ``librosa.load(path, sr=22050)`` + ``librosa.feature.melspectrogram``
  (n_fft 2048, hop 512, 128 mels) + ``librosa.power_to_db``, one process, nothing stored.

The plain loop does less work (no segmenting, no store), so a ratio above 1 is a real win.

Each method runs once untimed (imports, filter banks, numba warm-up, page cache) and then ``--repeats``
times, interleaved round by round so a busy phase of a shared machine hits every method alike; the table
gives the median with the min-max range, and ratios come from the same run. Unless ``--no-cold``, each
method is also run once in a fresh Python process to show the first-run cost a user sees.

Usage::

    python bench/bench_features.py                    # ../shared/data/gtzan-mini, 3 repeats
    python bench/bench_features.py --data DIR --repeats 5
    python bench/bench_features.py --smoke            # a few generated clips, one round (CI)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_range, machine_description, markdown_table, positive_int, time_rounds

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gtzan-mini" / "genres"

#: method key -> label in the tables; "plain" is the reference for the ratio column.
METHODS = {
    "stage-w2": "features stage, workers=2",
    "stage-w1": "features stage, workers=1",
    "plain": "plain librosa loop, 1 process",
}
REFERENCE = "plain"
PLAIN_SR, PLAIN_N_FFT, PLAIN_HOP, PLAIN_N_MELS = 22050, 2048, 512, 128
SMOKE_LABELS, SMOKE_PER_LABEL, SMOKE_SECONDS = ("low", "high"), 2, 4.0


# --------------------------------------------------------------------------------------------------
# Data


def make_smoke_clips(root: Path, sr: int = PLAIN_SR) -> Path:
    """A tiny folder-per-label tree of noisy tones (so ``--smoke`` needs no shared data)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(SMOKE_SECONDS * sr)) / sr
    for number, label in enumerate(SMOKE_LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(SMOKE_PER_LABEL):
            tone = 0.4 * np.sin(2 * np.pi * 220 * (number + 1) * (k + 1) * t)
            y = (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
            sf.write(root / label / f"{label}.{k:05d}.wav", y, sr, subtype="PCM_16")
    return root


def build_index(data_dir: Path):
    """The `prepare` stage's index (readable clips, stratified splits) of ``data_dir``, and its seconds."""
    from genre_se.config import DataConfig
    from genre_se.datasets import assign_splits, index_dataset

    start = time.perf_counter()
    cfg = DataConfig(root=str(data_dir))
    index = assign_splits(index_dataset(cfg), cfg, seed=42)
    return index, time.perf_counter() - start


def usable_clips(index):
    """The rows ``build_store`` computes: readable and in a split."""
    return index[(index["status"] == "ok") & (index["split"] != "excluded")].reset_index(drop=True)


def prime_page_cache(paths: list[str]) -> None:
    """Read every file once so the first timed method does not pay for the disk alone."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass


# --------------------------------------------------------------------------------------------------
# The methods


def run_stage(index, workers: int, run_dir: Path) -> int:
    """One `features` stage run into ``run_dir``; returns the number of stored segments."""
    from genre_se.config import FeatureConfig
    from genre_se.feature_store import build_store

    store, failures = build_store(index, FeatureConfig(workers=workers), run_dir / "features", run_dir / "cache")
    if len(failures):
        raise RuntimeError(f"{len(failures)} clips failed to decode, e.g. {failures.iloc[0].to_dict()}")
    return len(store.segments)


def run_plain(paths: list[str]) -> int:
    """The reference loop; returns the number of spectrogram frames (so the work cannot be skipped)."""
    import librosa

    frames = 0
    for path in paths:
        y, sr = librosa.load(path, sr=PLAIN_SR)
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=PLAIN_N_FFT, hop_length=PLAIN_HOP, n_mels=PLAIN_N_MELS
        )
        frames += librosa.power_to_db(mel).shape[1]
    return frames


class MethodRunner:
    """Callables for :func:`common.time_rounds`; stage outputs go to fresh folders, removed untimed."""

    def __init__(self, index, scratch: Path):
        self.index = index
        self.paths = list(usable_clips(index)["path"])
        self.scratch = scratch
        self._runs = 0

    def _run_dir(self) -> Path:
        self._runs += 1
        return self.scratch / f"run{self._runs:03d}"

    def call(self, key: str):
        if key == "plain":
            return lambda: run_plain(self.paths)
        workers = {"stage-w2": 2, "stage-w1": 1}[key]
        return lambda: run_stage(self.index, workers, self._run_dir())

    def cleanup(self) -> None:
        for run_dir in self.scratch.glob("run*"):
            shutil.rmtree(run_dir, ignore_errors=True)


def cold_runs(keys: list[str], index_csv: Path, scratch: Path) -> dict[str, dict]:
    """Each method once in a fresh interpreter: imports + first run, as a user's first call sees it."""
    results = {}
    for key in keys:
        command = [sys.executable, str(Path(__file__).resolve()), "--cold-child", key,
                   "--index", str(index_csv), "--scratch", str(scratch / f"cold-{key}")]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"cold run of {key} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["process_s"] = wall
        results[key] = result
    return results


def cold_child(key: str, index_csv: Path, scratch: Path) -> None:
    """Body of a fresh process: time the imports, then one run; print one JSON line."""
    start = time.perf_counter()
    import librosa
    import librosa.core  # librosa loads submodules lazily: force them into the import time
    import librosa.feature
    import pandas as pd

    import genre_se.feature_store

    imported = time.perf_counter()
    index = pd.read_csv(index_csv, keep_default_na=False)
    scratch.mkdir(parents=True, exist_ok=True)
    runner = MethodRunner(index, scratch)
    runner.call(key)()
    finished = time.perf_counter()
    runner.cleanup()
    del librosa, genre_se
    print(json.dumps({"imports_s": imported - start, "first_run_s": finished - imported}))


# --------------------------------------------------------------------------------------------------
# Report


def results_table(timings: dict, n_clips: int) -> str:
    reference = timings[REFERENCE].median
    rows = []
    for key, label in METHODS.items():
        median_rate, low_rate, high_rate = timings[key].rate(n_clips)
        rows.append([
            label,
            f"{median_rate:.2f}",
            fmt_range(low_rate, high_rate, 2),
            f"{timings[key].median:.2f}",
            f"{reference / timings[key].median:.2f}x",
        ])
    headers = ["method", "clips/s (median)", "clips/s min-max", "seconds (median)", "speed vs plain loop"]
    return markdown_table(headers, rows)


def cold_table(cold: dict, timings: dict) -> str:
    rows = [
        [METHODS[key], f"{c['process_s']:.2f}", f"{c['imports_s']:.2f}", f"{c['first_run_s']:.2f}",
         f"{timings[key].median:.2f}"]
        for key, c in cold.items()
    ]
    headers = ["method (fresh process)", "process s", "imports s", "first run s", "warm run s (median)"]
    return markdown_table(headers, rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"dataset root (GTZAN or folder-per-genre tree); default {DEFAULT_DATA}")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few generated clips and one round: checks the script runs, times nothing useful")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process first runs")
    parser.add_argument("--cold-child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cold_child:
        cold_child(args.cold_child, args.index, args.scratch)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        scratch = Path(tmp)
        if args.smoke:
            data_dir = make_smoke_clips(scratch / "clips")
        else:
            data_dir = args.data
            if not data_dir.is_dir():
                print(f"error: no data at {data_dir} (use --data DIR, or --smoke)", file=sys.stderr)
                return 2
        from genre_se.errors import DatasetError

        try:
            index, index_seconds = build_index(data_dir)
        except DatasetError as exc:  # e.g. a folder without label folders of audio files
            print(f"error: {exc} (use --data DIR, or --smoke)", file=sys.stderr)
            return 2
        clips = usable_clips(index)
        n_clips = len(clips)
        audio_seconds = float(clips["duration"].sum())
        prime_page_cache(list(clips["path"]))

        runner = MethodRunner(index, scratch)
        methods = {key: runner.call(key) for key in METHODS}
        for fn in methods.values():  # untimed warm-up: imports, filter banks, numba
            fn()
        runner.cleanup()
        timings = time_rounds(methods, args.repeats, after_each=runner.cleanup)

        cold = None
        if not args.no_cold:
            index_csv = scratch / "index.csv"
            index.to_csv(index_csv, index=False)
            cold = cold_runs(list(METHODS), index_csv, scratch)

    mode = "smoke (generated clips)" if args.smoke else str(data_dir)
    print(f"## Feature extraction throughput: {mode}\n")
    print(f"{n_clips} clips, {audio_seconds:.0f} s of audio; median of {args.repeats} round(s) after one "
          f"untimed warm-up, methods interleaved; min-max over the rounds.\n")
    print(results_table(timings, n_clips))
    print(f"\nIndexing (prepare: find, probe, split) took {index_seconds:.2f} s once, outside the table.")
    if cold is not None:
        print("\n### First run in a fresh Python process\n")
        print(cold_table(cold, timings))
        print("\nlibrosa loads its submodules lazily, so much of its import cost lands in the first run.")
    print("\n" + machine_description(("numpy", "scipy", "librosa", "soundfile", "soxr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
