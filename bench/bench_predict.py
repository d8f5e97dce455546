#!/usr/bin/env python
"""Prediction cost, Keras path against the LiteRT fast path: cold start, warm throughput, peak memory.

Three runtimes serve one trained bundle (``--model``; default ``models/bundle`` if the pipeline made one,
else an untrained bundle of the ``params.yaml`` architecture, which costs the same to run). The bundle is
copied to a scratch folder and exported there twice, so ``models/bundle`` itself is never touched:

* ``keras``: ``genre-se predict --backend keras`` (TensorFlow + Keras model, librosa filter bank): the path
  every bundle had before the export existed;
* ``litert``: the float32 LiteRT export and the stored mel front end (no TensorFlow, Keras or librosa);
* ``litert-int8``: the same with dynamic-range int8 weights (``genre-se export --quantize int8``).

Measurements (every timed method runs once untimed first, except cold starts, which are the point):

* ``cold start``: wall time of a fresh ``python -m genre_se -q predict CLIP --format json`` process on one
  30-s clip (the first GTZAN clip of ``--data``), methods interleaved round by round;
* ``warm folder``: files per second of ``GenreClassifier.predict_many`` over every clip of ``--data``
  (default: the 71 clips of ../shared/data/gtzan-mini) with the model loaded, interleaved rounds; the same
  run gives the parity of each fast path with Keras (largest probability difference, clip top-1 agreement);
* ``peak RSS``: a child process loads the classifier, runs one full batch, predicts one file and reports its
  own peak resident memory (``ru_maxrss``), for the 30-s clip and a generated one-hour file;
* ``whole song``: seconds to predict a generated 6-minute file (``--song-seconds``) with the loaded float32
  LiteRT classifier reading ``DEFAULT_MAX_SEGMENTS`` spread segments in windows (what ``genre-se predict``
  does) against every segment, and the 30-s clip for scale; interleaved rounds, ratios from this run.

Usage::

    python bench/bench_predict.py                        # gtzan-mini, 3 rounds, one-hour file
    python bench/bench_predict.py --repeats 5 --long-seconds 600
    python bench/bench_predict.py --smoke                # tiny model, generated clips, one round (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_range, machine_description, markdown_table, positive_int, time_rounds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gtzan-mini" / "genres"

SMOKE_FEATURES = dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8)
SMOKE_MODEL = dict(filters=[4, 8], dropout=0.0, reduction_ratios=2)

#: method -> (bundle copy, --backend); "keras" is the reference of the ratio columns.
METHODS = {"keras": ("fp32", "keras"), "litert": ("fp32", "litert"), "litert-int8": ("int8", "litert")}
REFERENCE = "keras"

# The child that measures its own peak memory; argv: bundle, backend, audio file. VmHWM (Linux) is the peak
# of this process's own address space; ru_maxrss would also count the parent's pages the child was forked
# with (Linux keeps that high-water mark across exec), i.e. the benchmark's own TensorFlow.
RSS_CHILD = r"""
import json, resource, sys, time
import numpy as np
from genre_se.inference import GenreClassifier

def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

clf = GenreClassifier.load(sys.argv[1], backend=sys.argv[2])
cfg = clf.feature_config  # warm up with one full batch, so its activations count as "loaded"
warm_frames = (clf.batch_size - 1) * cfg.segment_hop + cfg.segment_frames
clf.predict_array(np.zeros(warm_frames * cfg.hop_length, np.float32), cfg.sample_rate)
loaded = peak_kib()
start = time.perf_counter()
result = clf.predict(sys.argv[3])
seconds = time.perf_counter() - start
print(json.dumps({"loaded_kib": loaded, "peak_kib": peak_kib(), "seconds": seconds, "duration": result.duration,
                  "n_segments": result.n_segments, "tensorflow": "tensorflow" in sys.modules}))
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
    model = build_model(model_cfg, shape, 10, mean=-40.0, std=20.0, features=features)
    labels = [f"genre{i}" for i in range(10)]
    return save_bundle(target, model, labels, features, model_cfg)


def exported_copies(source: Path, scratch: Path) -> dict[str, Path]:
    """Two copies of the bundle, one with the float32 export and one with the int8 export."""
    from genre_se.litert import export_litert

    copies = {}
    for name, quantize in (("fp32", "none"), ("int8", "int8")):
        copies[name] = scratch / f"bundle-{name}"
        shutil.copytree(source, copies[name], ignore=shutil.ignore_patterns("model.tflite", "frontend.npz",
                                                                             "litert.json"))
        export_litert(copies[name], quantize=quantize)
    return copies


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


def folder_clips(data: Path) -> list[Path]:
    """The audio files of a folder tree, sorted (GTZAN's genres/<genre>/<clip>.wav, or any tree)."""
    from genre_se.inference import expand_paths

    files, _ = expand_paths([data])
    return [Path(f) for f in files]


# --------------------------------------------------------------------------------------------------
# Measurements


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cold_command(bundle: Path, backend: str, clip: Path) -> list[str]:
    return [sys.executable, "-m", "genre_se", "-q", "predict", str(clip), "--model", str(bundle),
            "--backend", backend, "--format", "json"]


def run_cold(command: list[str]) -> dict:
    """One fresh `genre-se predict` process; its JSON output (checked) is returned."""
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"genre-se predict failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def cold_starts(bundles: dict[str, Path], clip: Path, repeats: int) -> dict:
    """Whole-process seconds of `genre-se predict` on one clip per method, interleaved rounds."""
    def method(command: list[str]):
        return lambda: run_cold(command)

    methods = {name: method(cold_command(bundles[copy], backend, clip)) for name, (copy, backend) in METHODS.items()}
    return time_rounds(methods, repeats)


def warm_folder(bundles: dict[str, Path], files: list[Path], repeats: int) -> tuple[dict, dict]:
    """Files/s of predict_many per method (model loaded once, one untimed pass first), and the clip
    probabilities of the last pass, for the parity columns."""
    from genre_se.inference import GenreClassifier, Prediction

    classifiers = {name: GenreClassifier.load(bundles[copy], backend=backend)
                   for name, (copy, backend) in METHODS.items()}
    outputs: dict[str, list] = {}

    def method(name):
        def run():
            results = list(classifiers[name].predict_many(files))
            failed = [r.message for r in results if not isinstance(r, Prediction)]
            if failed:
                raise SystemExit(f"{name}: {len(failed)} files failed: {failed[:3]}")
            outputs[name] = results

        return run

    methods = {name: method(name) for name in classifiers}
    for run in methods.values():
        run()  # warm-up: first model call, filter bank, page cache
    return time_rounds(methods, repeats), outputs


def parity(outputs: dict, reference: str = REFERENCE) -> dict[str, dict]:
    """Per method: largest |p - p_keras| over every segment and clip, and the clip top-1 agreement."""
    import numpy as np

    table = {}
    for name, results in outputs.items():
        pairs = list(zip(results, outputs[reference]))
        table[name] = {
            "segment": max(float(np.abs(a.segment_probabilities - b.segment_probabilities).max()) for a, b in pairs),
            "clip": max(float(np.abs(a.probabilities - b.probabilities).max()) for a, b in pairs),
            "top1": sum(a.genre == b.genre for a, b in pairs),
            "n": len(pairs),
        }
    return table


def peak_rss(bundle: Path, backend: str, audio: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(bundle), backend, str(audio)], capture_output=True,
                          text=True, env=child_env(), timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Tables


def cold_table(cold: dict, clip_seconds: float) -> str:
    reference = cold[REFERENCE].median
    rows = []
    for name, timings in cold.items():
        rows.append([name, f"{timings.median:.2f}", fmt_range(timings.min, timings.max, 2),
                     f"{reference / timings.median:.1f}x"])
    return markdown_table([f"cold start, {clip_seconds:.0f}-s clip", "median s", "min-max s",
                           f"speed-up vs {REFERENCE}"], rows)


def warm_table(warm: dict, agreement: dict, n_files: int) -> str:
    reference = warm[REFERENCE].median
    rows = []
    for name, timings in warm.items():
        median, low, high = timings.rate(n_files)
        check = agreement[name]
        rows.append([name, f"{median:.1f}", fmt_range(low, high, 1), f"{reference / timings.median:.1f}x",
                     f"{check['segment']:.1e}", f"{check['clip']:.1e}", f"{check['top1']}/{check['n']}"])
    return markdown_table(["warm folder", "files/s", "min-max", f"vs {REFERENCE}", "max |dp| segment",
                           "max |dp| clip", f"top-1 = {REFERENCE}"], rows)


def whole_song(bundle: Path, song: Path, clip: Path, repeats: int) -> tuple[dict, dict]:
    """Seconds to predict a long song with the default bounded spread vs every segment, and a clip, with
    the float32 LiteRT classifier loaded once (one untimed pass each first); and each run's segment counts."""
    from genre_se.inference import DEFAULT_MAX_SEGMENTS, GenreClassifier

    bounded = GenreClassifier.load(bundle, backend="litert", max_segments=DEFAULT_MAX_SEGMENTS)
    every = GenreClassifier.load(bundle, backend="litert", max_segments=0)
    runs = {"song, default spread": (bounded, song), "song, every segment": (every, song),
            "clip, default spread": (bounded, clip)}
    counts = {}

    def method(name):
        classifier, path = runs[name]

        def run():
            result = classifier.predict(path)
            counts[name] = (result.n_segments, result.n_segments_in_file, result.duration)

        return run

    methods = {name: method(name) for name in runs}
    for run in methods.values():
        run()
    return time_rounds(methods, repeats), counts


def song_table(timings: dict, counts: dict) -> str:
    reference = timings["song, every segment"].median
    rows = []
    for name, timing in timings.items():
        used, in_file, duration = counts[name]
        rows.append([name, f"{duration / 60:.1f} min" if duration >= 60 else f"{duration:.0f} s",
                     f"{used} of {in_file}", f"{timing.median:.3f}", fmt_range(timing.min, timing.max, 3),
                     f"{timing.median / reference:.2f}"])
    return markdown_table(["whole song (litert)", "audio", "segments", "median s", "min-max s",
                           "cost vs every segment"], rows)


def memory_table(memory: dict) -> str:
    rows = []
    for (name, label), mem in memory.items():
        rows.append([name, label, f"{mem['duration'] / 60:.1f} min, {mem['n_segments']} segments",
                     f"{mem['peak_kib'] / 1024:.0f}", f"{mem['loaded_kib'] / 1024:.0f}",
                     f"{mem['seconds']:.1f} s ({mem['duration'] / mem['seconds']:.0f}x real time)",
                     "yes" if mem["tensorflow"] else "no"])
    return markdown_table(["peak RSS", "file", "audio", "peak MiB", "after load MiB", "predict time",
                           "TensorFlow imported"], rows)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="bundle (default: models/bundle, else an untrained one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of clips for the warm pass (default: ../shared/data/gtzan-mini/genres)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--long-seconds", type=float, default=3600.0, help="length of the long file (3600)")
    parser.add_argument("--song-seconds", type=float, default=360.0,
                        help="length of the whole-song file (360; --smoke: 60)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, generated clips, one round, no Keras memory child (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.long_seconds, args.song_seconds = 1, 30.0, 60.0
    elif not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder (the shared GTZAN clips are absent?); pass --data DIR "
                     "or use --smoke")
    if args.model is not None:  # before the work: a missing or broken bundle failed in copytree or Keras
        from genre_se.bundle import read_bundle_meta
        from genre_se.errors import ModelError

        try:
            read_bundle_meta(args.model)
        except ModelError as exc:
            parser.error(f"--model: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:  # first: a --data without audio is refused before the model is built
            (tmp / "clips").mkdir()
            files = [write_audio(tmp / "clips" / f"clip{i}.wav", 5.0, 16000, seed=i) for i in range(2)]
            data_note = "2 generated 5-s clips"
        else:
            files = folder_clips(args.data)
            if not files:
                print(f"error: --data {args.data}: no audio files in it", file=sys.stderr)
                return 2
            data_note = f"{len(files)} clips of {args.data}"
        if args.model:
            source, model_note = args.model, str(args.model)
        elif (REPO / "models" / "bundle").exists() and not args.smoke:
            source, model_note = REPO / "models" / "bundle", "models/bundle (pipeline)"
        else:
            source = make_bundle(tmp / "bundle", args.smoke)
            model_note = "untrained " + ("tiny model" if args.smoke else "params.yaml architecture")
        start = time.perf_counter()
        bundles = exported_copies(source, tmp)
        export_seconds = (time.perf_counter() - start) / 2
        from genre_se.bundle import read_bundle_meta
        from genre_se.config import FeatureConfig, from_dict

        features = from_dict(FeatureConfig, read_bundle_meta(source)["features"], "features")
        clip = files[0]
        long_file = write_audio(tmp / "long.wav", args.long_seconds, features.sample_rate, seed=99)
        song = write_audio(tmp / "song.wav", args.song_seconds, 44100, seed=7)  # resampled, as most songs are

        cold = cold_starts(bundles, clip, args.repeats)
        warm, outputs = warm_folder(bundles, files, args.repeats)
        clip_seconds = outputs[REFERENCE][0].duration  # files[0]: the cold-start clip, whatever --data holds
        sizes = [(f"{args.long_seconds / 60:g}-min file", long_file)]
        if not args.smoke:  # the clip shows what the long file adds
            sizes.insert(0, (f"{clip_seconds:.0f}-s clip", clip))
        measured = [name for name in METHODS if not (args.smoke and name == REFERENCE)]  # smoke: no 2nd TF start
        memory = {(name, label): peak_rss(bundles[METHODS[name][0]], METHODS[name][1], audio)
                  for name in measured for label, audio in sizes}
        song_timings, song_counts = whole_song(bundles["fp32"], song, clip, args.repeats)

    print(f"Model: {model_note}; features {features.sample_rate} Hz, {features.n_mels} mels, "
          f"{features.segment_frames}-frame segments. Warm folder: {data_note}. Cold-start clip: {clip.name}. "
          f"Export (fp32 and int8): {export_seconds:.1f} s each.")
    print()
    print(cold_table(cold, clip_seconds))
    print()
    print(warm_table(warm, parity(outputs), len(files)))
    print()
    print(memory_table(memory))
    print()
    print(song_table(song_timings, song_counts))
    print()
    print(f"Medians of {args.repeats} interleaved round(s); ratios are {REFERENCE} median / method median, "
          "measured in this run.")
    print(machine_description(("numpy", "tensorflow-cpu", "keras", "ai-edge-litert", "soundfile", "soxr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
