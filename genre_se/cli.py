"""The `genre-se` command line: a thin layer over the package's functions.

Every subcommand parses its arguments, calls one library function and reports. Errors of the
:class:`~genre_se.errors.GenreSEError` family become a one-line message on stderr and exit code 1;
usage errors exit 2 (argparse); Ctrl-C exits 130. No tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import functools
import sys

import yaml

from . import __version__
from .errors import ConfigError, GenreSEError

EXIT_ERROR = 1


def _progress(quiet: bool):
    """A tqdm factory on stderr, or None when quiet / not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return functools.partial(tqdm, file=sys.stderr, unit="clip", dynamic_ncols=True)


def _params(args):
    from .config import load_params

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return load_params(args.params, overrides)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up banner (oneDNN notice) kept off the user's terminal."""
    if "tensorflow" in sys.modules:
        return
    import os

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _err(message: str) -> None:
    print(f"genre-se: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Subcommands


def cmd_corpus(args) -> int:
    from .corpus import run_corpus

    params = _params(args)
    table = run_corpus(params, out_dir=args.out)
    print(f"wrote {len(table)} clips of {table['label'].nunique()} genres to {args.out}", file=sys.stderr)
    return 0


def cmd_prepare(args) -> int:
    from .datasets import run_prepare

    params = _params(args)
    index = run_prepare(params, index_path=args.index, errors_path=args.errors)
    bad = index[index["status"] != "ok"]
    for row in bad.itertuples():
        _err(f"skipped {row.error}")
    counts = index[index["status"] == "ok"]["split"].value_counts().to_dict()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"indexed {len(index)} clips ({len(bad)} unreadable): {summary} -> {args.index}", file=sys.stderr)
    return 0


def cmd_features(args) -> int:
    from .feature_store import run_features

    params = _params(args)
    store, failures = run_features(
        params,
        index_path=args.index,
        out_dir=args.out,
        errors_path=args.errors,
        progress=_progress(args.quiet),
    )
    for row in failures.itertuples():
        _err(f"skipped {row.error}")
    print(
        f"{len(store.segments)} segments of shape {store.input_shape} from "
        f"{store.table['clip_id'].nunique()} clips -> {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_tune(args) -> int:
    from .tune import run_tune

    best = run_tune(_params(args), out_path=args.out)
    print(f"reduction ratios {best['model']['reduction_ratios']} ({best['source']}) -> {args.out}", file=sys.stderr)
    return 0


def _log(args):
    return None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def cmd_train(args) -> int:
    from .train import run_train

    result = run_train(
        _params(args), store_dir=args.features, bundle_dir=args.out, state_dir=args.state,
        live_dir=args.live, best_params_path=args.best_params, log=_log(args),
    )
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    print(f"best epoch {result.best_epoch} (score {result.best_score:.4f}){resumed} -> {args.out}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import run_evaluate

    metrics = run_evaluate(
        _params(args), store_dir=args.features, bundle_dir=args.model, reports_dir=args.reports, log=_log(args)
    )
    line = (f"test clips: accuracy {metrics['clip']['accuracy']:.3f}, macro-F1 {metrics['clip']['macro_f1']:.3f} "
            f"(n={metrics['n_clips']}); segments: accuracy {metrics['segment']['accuracy']:.3f}")
    if "cv" in metrics:
        cv = metrics["cv"]
        line += (f"; {cv['folds']}-fold CV clip accuracy {cv['clip_accuracy_mean']:.3f} "
                 f"+- {cv['clip_accuracy_std']:.3f}")
    print(line, file=sys.stderr)
    return 0


def cmd_model_summary(args) -> int:
    from .model import build_model, summary_text

    if args.model:
        from .bundle import load_bundle

        model = load_bundle(args.model).model
    else:
        params = _params(args)
        feats = params.features
        model = build_model(params.model, (feats.n_mels, feats.segment_frames, 1), args.classes)
    print(summary_text(model))
    return 0


# --------------------------------------------------------------------------------------------------
# Parser


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument(
        "-S",
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a parameter, e.g. -S train.epochs=2 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genre-se",
        description="Music genre classification with a Squeeze-and-Excitation CNN over log-mel spectrograms.",
    )
    parser.add_argument("--version", action="version", version=f"genre-se {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("corpus", help="generate the built-in default corpus (DVC stage 1)")
    _add_params(p)
    p.add_argument("--out", default="data/corpus", help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("prepare", help="index the dataset at data.root and split it by clip")
    _add_params(p)
    p.add_argument("--index", default="data/index.csv", help="index CSV to write (default: %(default)s)")
    p.add_argument("--errors", default="reports/prepare_errors.csv", help="unreadable-file report")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("features", help="compute the log-mel segment store for every readable clip")
    _add_params(p)
    p.add_argument("--index", default="data/index.csv", help="dataset index (default: %(default)s)")
    p.add_argument("--out", default="data/features", help="feature store folder (default: %(default)s)")
    p.add_argument("--errors", default="reports/features_errors.csv", help="decode-failure report")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("tune", help="choose the SE reduction ratios (writes best_params.json)")
    _add_params(p)
    p.add_argument("--out", default="models/best_params.json", help="output (default: %(default)s)")
    p.set_defaults(func=cmd_tune, needs_tf=True)

    p = sub.add_parser("train", help="train the SE-CNN on the train split and write the model bundle")
    _add_params(p)
    p.add_argument("--features", default="data/features", help="feature store (default: %(default)s)")
    p.add_argument("--best-params", default="models/best_params.json", help="the tune stage's choices")
    p.add_argument("--out", default="models/bundle", help="model bundle to write (default: %(default)s)")
    p.add_argument("--state", default="models/train-state", help="resume state (default: %(default)s)")
    p.add_argument("--live", default="dvclive", help="DVCLive metrics folder (default: %(default)s)")
    p.set_defaults(func=cmd_train, needs_tf=True)

    p = sub.add_parser("evaluate", help="score the bundle on the test split (and k-fold CV if configured)")
    _add_params(p)
    p.add_argument("--features", default="data/features", help="feature store (default: %(default)s)")
    p.add_argument("--model", default="models/bundle", help="model bundle (default: %(default)s)")
    p.add_argument("--reports", default="reports", help="reports folder (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate, needs_tf=True)

    p = sub.add_parser("model", help="inspect the SE-CNN")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    s = model_sub.add_parser("summary", help="layer table and per-block SE hidden sizes")
    _add_params(s)
    s.add_argument("--model", help="summarise this trained bundle instead of the params' architecture")
    s.add_argument("--classes", type=int, default=10, help="number of genres (default: %(default)s)")
    s.set_defaults(func=cmd_model_summary, needs_tf=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "needs_tf", False):
            _import_tensorflow_quietly()
        return args.func(args)
    except GenreSEError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

