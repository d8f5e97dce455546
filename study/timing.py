"""Training cost of SE blocks under equal conditions: seconds per training step, variants interleaved.

The per-fold times of the study are wall-clock on a shared machine, so they mix the variants' cost with the
machine's load at that moment. Here every variant trains on the same random batch in alternation (round
after round), so load changes hit all of them alike; the median step time is reported::

    python -m study.timing --variants "no_se=model.se=false" "se_r16=model.reduction_ratios=16" --rounds 15
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from genre_se.config import load_params, parse_value
from genre_se.errors import GenreSEError


def step_times(variants: dict, params_path: str = "params.yaml", rounds: int = 15, batch_size: int = 32,
               n_classes: int = 10, seed: int = 0) -> dict:
    """Median seconds per ``train_on_batch`` and parameter count of each variant (name -> dotted overrides)."""
    import keras

    from genre_se.model import build_model

    models = {}
    for name, overrides in variants.items():
        params = load_params(params_path, overrides)
        shape = (params.features.n_mels, params.features.segment_frames, 1)
        model = build_model(params.model, shape, n_classes, features=params.features)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        models[name] = model
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, *shape)).astype(np.float32)
    y = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, batch_size)]
    for model in models.values():  # the first steps build and trace: not timed
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: {"seconds_per_step": float(np.median(t)), "params": int(models[name].count_params())}
            for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.timing", description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", required=True, metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    variants = {}
    try:
        for item in args.variants:
            name, _, rest = item.partition("=")
            pairs = [p.partition("=") for p in rest.split(",") if p]
            variants[name] = {key: parse_value(value, f"--variants {name}: {key}") for key, _, value in pairs}
        results = step_times(variants, args.params, args.rounds)
    except GenreSEError as exc:  # a mistyped key or value: one line, not a traceback
        print(f"timing: error: {exc}", file=sys.stderr)
        return 1
    base = next(iter(results.values()))["seconds_per_step"]
    print("| variant | params | s / training step (batch 32) | relative |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| `{name}` | {r['params']:,} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / base:.2f} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
