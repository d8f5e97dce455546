#!/usr/bin/env python
"""Training cost of the default SE-CNN, and what the Squeeze-and-Excitation blocks add.

* ``training``: segments per second of the train stage's own input pipeline and optimiser
  (``genre_se.train.make_dataset`` over a memory-mapped float16 store + ``model.fit`` with Adam and
  categorical cross-entropy, as ``train_model`` compiles it) for the ``params.yaml`` model and features, on
  a generated store of ``--segments`` segments (many batches, so the store is read, not held). One untimed
  epoch (tracing, first reads), then ``--repeats`` timed epochs. It runs in a child process that reports
  its own peak resident memory (``VmHWM``), next to the size of the store on disk.
  Run twice, in two children: without and with TensorFlow's op determinism (``train.deterministic``).
* ``SE overhead``: the same architecture with and without SE blocks (``model.se``): parameters, forward
  FLOPs per segment (TensorFlow's profiler, ``float_operation``, on the traced inference graph), and
  milliseconds per batch of ``train.batch_size`` for inference and for one training step, the four
  methods interleaved round by round; ratios come from the same run.

Usage::

    python bench/bench_train.py                       # params.yaml model, 640-segment store, 3 rounds
    python bench/bench_train.py --segments 2000 --repeats 5
    python bench/bench_train.py --smoke               # tiny model and store, one round (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timings, fmt_range, machine_description, markdown_table, positive_int, time_rounds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SMOKE = {
    "features.sample_rate": 8000, "features.n_fft": 256, "features.hop_length": 128, "features.n_mels": 16,
    "features.segment_frames": 16, "features.segment_hop": 8,
    "model.filters": [4, 8], "model.dropout": 0.0, "model.reduction_ratios": 2, "train.batch_size": 8,
}
N_CLASSES = 10


def load_settings(smoke: bool):
    """The params.yaml features, model and train settings (tiny ones for --smoke)."""
    from genre_se.config import load_params

    return load_params(REPO / "params.yaml", SMOKE if smoke else None)


def peak_kib() -> int:
    """This process's peak resident memory in KiB (VmHWM on Linux; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------------------------------
# Training throughput (child process)


def make_store(root: Path, n_segments: int, shape: tuple[int, int, int], features, seed: int = 0):
    """A memory-mapped float16 store of random log-mel-like segments with balanced labels."""
    import numpy as np
    import pandas as pd

    from genre_se.feature_store import FeatureStore

    root.mkdir(parents=True, exist_ok=True)
    segments = np.lib.format.open_memmap(root / "segments.npy", mode="w+", dtype=np.float16,
                                         shape=(n_segments, *shape))
    rng = np.random.default_rng(seed)
    for start in range(0, n_segments, 256):  # written in pieces: the store is never whole in memory
        stop = min(start + 256, n_segments)
        segments[start:stop] = rng.normal(-40.0, 20.0, size=(stop - start, *shape)).astype(np.float16)
    segments.flush()
    del segments
    table = pd.DataFrame({"segment": range(n_segments), "clip_id": [f"c{i // 10}" for i in range(n_segments)],
                          "label_index": [i // 10 % N_CLASSES for i in range(n_segments)], "split": "train"})
    labels = [f"genre{i}" for i in range(N_CLASSES)]
    store_segments = np.load(root / "segments.npy", mmap_mode="r")
    return FeatureStore(root, store_segments, table, labels, features)


def train_child(smoke: bool, n_segments: int, repeats: int, scratch: Path, deterministic: bool = False) -> dict:
    """Fit the default model on a generated store; epoch seconds, peak memory (run in a fresh process).
    ``deterministic``: with TensorFlow's op determinism on (``train.deterministic``, the default)."""
    import keras
    import numpy as np

    from genre_se.model import build_model
    from genre_se.train import enable_determinism, make_dataset, steps_per_epoch

    if deterministic:
        enable_determinism()

    params = load_settings(smoke)
    feats = params.features
    shape = (feats.n_mels, feats.segment_frames, 1)
    store = make_store(scratch / "store", n_segments, shape, feats)
    keras.utils.set_random_seed(0)
    model = build_model(params.model, shape, N_CLASSES, mean=-40.0, std=20.0, features=params.features)
    model.compile(optimizer=keras.optimizers.Adam(params.train.learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    rows = np.arange(n_segments)
    dataset = make_dataset(store, rows, params.train.batch_size, shuffle=True, seed=0, n_classes=N_CLASSES,
                           epochs=(0, 1 + repeats))

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seconds: list[float] = []
    model.fit(dataset, epochs=1 + repeats, steps_per_epoch=steps_per_epoch(n_segments, params.train.batch_size),
              callbacks=[EpochTimer()], shuffle=False, verbose=0)  # shuffled by tf.data
    store_bytes = (scratch / "store" / "segments.npy").stat().st_size
    return {"epoch_seconds": seconds[1:], "warmup_seconds": seconds[0], "peak_kib": peak_kib(),
            "store_bytes": store_bytes, "batch_size": params.train.batch_size, "segments": n_segments,
            "params": int(model.count_params()), "deterministic": deterministic}


def run_train_child(args, scratch: Path, deterministic: bool = False) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--train-child", "--segments", str(args.segments),
               "--repeats", str(args.repeats), "--scratch", str(scratch)] + (["--smoke"] if args.smoke else []) \
        + (["--deterministic"] if deterministic else [])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"training child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# SE overhead (this process)


def forward_flops(model, shape: tuple[int, int, int]) -> int:
    """Forward FLOPs of one segment, counted by TensorFlow's profiler on the traced inference graph."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the v1 profiler's deprecation notices
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *shape], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def se_overhead(smoke: bool, repeats: int) -> tuple[dict, dict]:
    """Params, FLOPs and per-batch timings (inference, train step) with and without SE, interleaved."""
    import keras
    import numpy as np

    from genre_se.model import build_model

    params = load_settings(smoke)
    feats = params.features
    shape = (feats.n_mels, feats.segment_frames, 1)
    batch = params.train.batch_size
    rng = np.random.default_rng(0)
    x = rng.normal(-40.0, 20.0, size=(batch, *shape)).astype(np.float32)
    y = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, batch)]
    facts, methods = {}, {}
    keras.utils.set_random_seed(0)  # once: setting it again makes TensorFlow retrace the first model's steps
    for name, se in (("with SE", True), ("without SE", False)):
        model = build_model(dataclasses.replace(params.model, se=se), shape, N_CLASSES, mean=-40.0, std=20.0,
                            features=params.features)
        model.compile(optimizer=keras.optimizers.Adam(params.train.learning_rate), loss="categorical_crossentropy")
        def infer(m=model):
            return np.asarray(m(x, training=False))

        def step(m=model):
            return m.train_on_batch(x, y)

        for _ in range(2):  # traced, optimizer built and warmed before timing
            infer()
            step()
        facts[name] = {"params": int(model.count_params()), "flops": forward_flops(model, shape)}
        methods[f"{name} | inference"] = infer
        methods[f"{name} | train step"] = step
    return facts, time_rounds(methods, repeats)


# --------------------------------------------------------------------------------------------------
# Tables


def training_table(results: list[dict]) -> str:
    """One row per training child: without op determinism, then with it (``vs free``: its segments/s over the
    first row's)."""
    rows, base = [], None
    for result in results:
        timings = Timings("train", result["epoch_seconds"])
        median, low, high = timings.rate(result["segments"])
        base = base or median
        name = "SE-CNN, op determinism" if result.get("deterministic") else "SE-CNN (model params)"
        rows.append([name, f"{result['segments']} segments", result["batch_size"], f"{median:.1f}",
                     fmt_range(low, high, 1), f"{median / base:.2f}x", f"{result['peak_kib'] / 1024:.0f}",
                     f"{result['store_bytes'] / 2**20:.1f}"])
    return markdown_table(["training", "store", "batch", "segments/s", "min-max", "vs free", "peak RSS MiB",
                           "store on disk MiB"], rows)


def se_table(facts: dict, timings: dict, batch: int) -> str:
    rows = []
    reference = facts["without SE"]
    for name, fact in facts.items():
        infer, step = timings[f"{name} | inference"], timings[f"{name} | train step"]
        base_infer = timings["without SE | inference"].median
        base_step = timings["without SE | train step"].median
        rows.append([
            name, f"{fact['params']:,}", f"{fact['params'] / reference['params']:.3f}x",
            f"{fact['flops'] / 1e6:.1f}", f"{fact['flops'] / reference['flops']:.4f}x",
            f"{1000 * infer.median:.1f} ({fmt_range(1000 * infer.min, 1000 * infer.max)})",
            f"{infer.median / base_infer:.2f}x",
            f"{1000 * step.median:.1f} ({fmt_range(1000 * step.min, 1000 * step.max)})",
            f"{step.median / base_step:.2f}x",
        ])
    return markdown_table(["model", "params", "vs no SE", "MFLOPs/segment", "vs no SE",
                           f"inference ms/batch of {batch}", "vs no SE", "train step ms/batch", "vs no SE"], rows)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=640, help="segments in the generated store (640)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed epochs / rounds (default: 3)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and store, one round, all in this process (CI)")
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke and not args.train_child:
        args.segments, args.repeats = 40, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.train_child:
        print(json.dumps(train_child(args.smoke, args.segments, args.repeats, args.scratch, args.deterministic)))
        return 0
    params = load_settings(args.smoke)
    if args.segments <= params.train.batch_size:
        raise SystemExit(f"--segments {args.segments}: must exceed train.batch_size ({params.train.batch_size})")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        # smoke: in this process (the child's TensorFlow start costs more than the tiny run it measures); op
        # determinism cannot be switched off once on, so the free run comes first
        trainings = [train_child(True, args.segments, args.repeats, Path(scratch) / name, deterministic=det)
                     if args.smoke else run_train_child(args, Path(scratch) / name, deterministic=det)
                     for name, det in (("free", False), ("deterministic", True))]
        training = trainings[0]
    facts, timings = se_overhead(args.smoke, args.repeats)
    feats = params.features
    print(f"Model: {'tiny smoke model' if args.smoke else 'params.yaml model'} {list(params.model.filters)} "
          f"filters, r={params.model.reduction_ratios}, {training['params']:,} params; input {feats.n_mels} mels x "
          f"{feats.segment_frames} frames; batch {params.train.batch_size}; random float16 store "
          f"({training['segments']} segments, {training['segments'] // params.train.batch_size} batches per epoch)")
    print()
    print(training_table(trainings))
    print()
    print(se_table(facts, timings, params.train.batch_size))
    print()
    print(f"Training: median of {len(training['epoch_seconds'])} timed epoch(s) after a "
          f"{training['warmup_seconds']:.1f}-s warm-up epoch. SE overhead: median (min-max) of {args.repeats} "
          "interleaved round(s); FLOPs from tf.profiler (forward, one segment).")
    print(machine_description(("numpy", "tensorflow-cpu", "keras")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
