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

    p = sub.add_parser("model", help="inspect the SE-CNN")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    s = model_sub.add_parser("summary", help="layer table and per-block SE hidden sizes")
    _add_params(s)
    s.add_argument("--model", help="summarise this trained bundle instead of the params' architecture")
    s.add_argument("--classes", type=int, default=10, help="number of genres (default: %(default)s)")
    s.set_defaults(func=cmd_model_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GenreSEError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

