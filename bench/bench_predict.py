#!/usr/bin/env python
"""Prediction cost: cold start of `genre-se predict`, warm throughput over a folder, memory of an hour.

Measurements, all with one model bundle (``--model``; default ``models/bundle`` if the pipeline made one,
else an untrained bundle of the ``params.yaml`` architecture and features, which costs the same to run):

* ``cold start``: wall time of a fresh ``python -m genre_se -q predict CLIP --format json`` process on one
  30-s clip (Python + TensorFlow import, bundle load, decode, features, inference, output), median of
  ``--repeats``;
* ``warm folder``: files per second of ``GenreClassifier.predict_many`` over a folder of 30-s clips with the
  model already loaded (decoding on a background thread overlaps inference), against a plain loop of
  ``predict`` calls, interleaved rounds;
* ``peak RSS``: a child process loads the classifier, runs one full batch (so the model's activation
  memory is part of "after load"), predicts one file and reports its own peak resident memory
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), for a 30-s clip, a 10-min file and a generated
  one-hour file; streaming means the hour costs what the 10 minutes cost.

Usage::

    python bench/bench_predict.py                  # default model, 8-clip folder, one-hour file
    python bench/bench_predict.py --model models/bundle --files 16 --repeats 3
    python bench/bench_predict.py --smoke          # tiny model and files, one round (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, markdown_table, time_rounds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SMOKE_FEATURES = dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8)
SMOKE_MODEL = dict(filters=[4, 8], dropout=0.0, reduction_ratios=2)

# The child that measures its own peak memory; argv: bundle, audio file.
RSS_CHILD = r"""
import json, resource, sys, time
import numpy as np
from genre_se.inference import GenreClassifier
clf = GenreClassifier.load(sys.argv[1])
cfg = clf.feature_config  # warm up with one full batch, so its activations count as "loaded"
warm_frames = (clf.batch_size - 1) * cfg.segment_hop + cfg.segment_frames
clf.predict_array(np.zeros(warm_frames * cfg.hop_length, np.float32), cfg.sample_rate)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = clf.predict(sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"loaded_kib": loaded, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds, "duration": result.duration, "n_segments": result.n_segments}))
"""


# --------------------------------------------------------------------------------------------------
# Inputs


def make_bundle(target: Path, smoke: bool) -> Path:
    """An untrained bundle: tiny for --smoke, else the params.yaml architecture and features."""
    import keras

    from genre_se.bundle import save_bundle
    from genre_se.config import FeatureConfig, ModelConfig, load_params
    from genre_se.model import build_model

    if smoke:
        features, model_cfg = FeatureConfig(**SMOKE_FEATURES), ModelConfig(**SMOKE_MODEL)
    else:
        params = load_params(REPO / "params.yaml")
        features, model_cfg = params.features, params.model
    keras.utils.set_random_seed(0)
    shape = (features.n_mels, features.segment_frames, 1)
    model = build_model(model_cfg, shape, 10, mean=-40.0, std=20.0)
    labels = [f"genre{i}" for i in range(10)]
    return save_bundle(target, model, labels, features, model_cfg)


def write_audio(path: Path, seconds: float, sr: int, seed: int = 0, block_seconds: float = 60.0) -> Path:
    """Noisy, slowly changing tones, written block by block (an hour never sits in memory)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(seconds * sr)
    block = int(block_seconds * sr)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as out:
        for start in range(0, total, block):
            t = np.arange(start, min(start + block, total)) / sr
            freq = 110.0 * 2 ** ((start // block) % 5)
            y = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
            out.write(y.astype(np.float32))
    return path


# --------------------------------------------------------------------------------------------------
# Measurements


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cold_start(bundle: Path, clip: Path, repeats: int) -> list[float]:
    """Wall seconds of fresh `genre-se predict` processes on one clip."""
    command = [sys.executable, "-m", "genre_se", "-q", "predict", str(clip), "--model", str(bundle),
               "--format", "json"]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600)
        seconds.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"genre-se predict failed ({proc.returncode}): {proc.stderr.strip()}")
        json.loads(proc.stdout)
    return seconds


def warm_folder(bundle: Path, files: list[Path], repeats: int) -> dict:
    """Files/s of predict_many (overlapped) and of a predict() loop, model loaded once."""
    from genre_se.inference import GenreClassifier, Prediction

    clf = GenreClassifier.load(bundle)
    clf.predict(files[0])  # warm-up: first model call, filter bank, page cache

    def many():
        results = list(clf.predict_many(files))
        assert all(isinstance(r, Prediction) for r in results)

    def loop():
        for path in files:
            clf.predict(path)

    return time_rounds({"predict_many": many, "predict loop": loop}, repeats)


def peak_rss(bundle: Path, audio: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(bundle), str(audio)], capture_output=True,
                          text=True, env=child_env(), timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle to use (default: models/bundle, else an untrained one)")
    parser.add_argument("--files", type=int, default=8, help="30-s clips in the warm folder (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--long-seconds", type=float, default=3600.0, help="length of the long file (3600)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and files, one round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.files, args.repeats, args.long_seconds = 2, 1, 60.0
    clip_seconds = 5.0 if args.smoke else 30.0

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            bundle, source = Path(args.model), args.model
        elif (REPO / "models" / "bundle").exists() and not args.smoke:
            bundle, source = REPO / "models" / "bundle", "models/bundle (pipeline)"
        else:
            bundle = make_bundle(tmp / "bundle", args.smoke)
            source = "untrained " + ("tiny model" if args.smoke else "params.yaml architecture")
        from genre_se.bundle import load_bundle

        sr = 22050 if not args.smoke else 16000
        features = load_bundle(bundle).feature_config
        files = [write_audio(tmp / f"clip{i}.wav", clip_seconds, sr, seed=i) for i in range(args.files)]
        medium_file = write_audio(tmp / "medium.wav", args.long_seconds / 6, sr, seed=98)
        long_file = write_audio(tmp / "long.wav", args.long_seconds, sr, seed=99)

        cold = cold_start(bundle, files[0], args.repeats)
        warm = warm_folder(bundle, files, args.repeats)
        clip_mem = peak_rss(bundle, files[0])
        medium_mem = peak_rss(bundle, medium_file)
        long_mem = peak_rss(bundle, long_file)

    rows = [
        ["cold start: `genre-se predict` 1 clip", f"{clip_seconds:g}-s clip", f"{min(cold):.2f} s (median "
         f"{sorted(cold)[len(cold) // 2]:.2f} s)", "whole process: imports, load, decode, predict"],
    ]
    for name, timings in warm.items():
        median, low, high = timings.rate(len(files))
        rows.append([f"warm: {name}", f"{len(files)} x {clip_seconds:g}-s clips",
                     f"{median:.2f} files/s ({low:.2f}-{high:.2f})",
                     f"{median * clip_seconds:.0f} s of audio per s"])
    minutes = args.long_seconds / 60
    sizes = (f"{clip_seconds:g}-s clip", f"{minutes / 6:g}-min file", f"{minutes:g}-min file")
    for label, mem in zip(sizes, (clip_mem, medium_mem, long_mem)):
        rows.append([f"peak RSS: {label}", f"{mem['duration'] / 60:.1f} min, {mem['n_segments']} segments",
                     f"{mem['peak_kib'] / 1024:.0f} MiB",
                     f"after load {mem['loaded_kib'] / 1024:.0f} MiB; predict {mem['seconds']:.1f} s "
                     f"({mem['duration'] / mem['seconds']:.0f}x real time)"])
    print(f"Model: {source}; features {features.sample_rate} Hz, {features.n_mels} mels, "
          f"{features.segment_frames}-frame segments; audio written at {sr} Hz (resampled)")
    print(markdown_table(["measurement", "input", "result", "notes"], rows))
    growth = (long_mem["peak_kib"] - medium_mem["peak_kib"]) / 1024
    print(f"\nPeak RSS growth from the {sizes[1]} to the {sizes[2]}: {growth:+.0f} MiB "
          "(the decoded long file alone would be "
          f"{args.long_seconds * features.sample_rate * 4 / 2**20:.0f} MiB of float32 samples)")
    print(machine_description(("numpy", "tensorflow-cpu", "keras", "soundfile", "soxr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
