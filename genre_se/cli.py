"""The `genre-se` command line: a thin layer over the package's functions.

Every subcommand parses its arguments, calls one library function and reports. Errors of the
:class:`~genre_se.errors.GenreSEError` family become a one-line message on stderr and exit code 1;
usage errors exit 2 (argparse); Ctrl-C exits 130. No tracebacks for expected failures.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, GenreSEError

EXIT_ERROR = 1
#: Exit status of a command whose reader closed the pipe (128 + SIGPIPE, what the shell reports for C tools).
EXIT_BROKEN_PIPE = 141


def _progress(quiet: bool):
    """A tqdm factory on stderr, or None when quiet / not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    from .quiet import LockedStderr

    # the decoding thread points fd 2 away while it reads an MP3: a bar refresh must wait for it, not vanish
    return functools.partial(tqdm, file=LockedStderr(), unit="clip", dynamic_ncols=True)


def _params(args):
    from .config import load_params, parse_value

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = parse_value(value, f"-S {key.strip()}")
    return load_params(args.params, overrides)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up banner (oneDNN notice) kept off the user's terminal."""
    if "tensorflow" in sys.modules:
        return
    from .quiet import native_stderr_silenced

    with native_stderr_silenced():
        import tensorflow  # noqa: F401


def _err(message: str) -> None:
    from .quiet import stderr_message

    with stderr_message():  # not while another thread has fd 2 silenced
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
    from .datasets import labels_missing_from, run_prepare

    params = _params(args)
    index = run_prepare(params, index_path=args.index, errors_path=args.errors)
    bad = index[index["status"] != "ok"]
    for row in bad.itertuples():
        _err(f"skipped {row.error}")
    counts = index[index["status"] == "ok"]["split"].value_counts().to_dict()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"indexed {len(index)} clips ({len(bad)} unreadable): {summary} -> {args.index}", file=sys.stderr)
    ok = index[index["status"] == "ok"]
    untested = labels_missing_from(ok, "test")
    if untested and params.data.test_fraction > 0:  # a genre of 1-2 clips goes wholly to train
        sizes = ok["label"].value_counts()
        _err("note: no test clip of " + ", ".join(f"{label} ({sizes[label]} clip{'s' if sizes[label] != 1 else ''})" for label in untested)
             + ": the test split cannot score them (evaluate.folds > 1 tests every clip once)")
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
    copies = "" if store.augmented is None else (
        f" (+ {len(store.augmented)} of augmented copies: {', '.join(sorted(store.augmented['augment'].unique()))})")
    print(
        f"{len(store.table)} segments of shape {store.input_shape} from "
        f"{store.table['clip_id'].nunique()} clips{copies} -> {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_tune(args) -> int:
    from .tune import run_tune

    result = run_tune(
        _params(args), store_dir=args.features, out_path=args.out, trials_path=args.trials,
        plot_path=args.plot, project_root=args.project_dir, log=_log(args),
    )
    if result.best is None:  # a distributed worker: the chief writes the results
        print(f"worker {result.tuner_id}: ran trials {', '.join(result.trials_run) or 'none'}", file=sys.stderr)
        return 0
    best = result.best
    found = ""
    if "trial" in best:
        found = f", trial {best['trial']} {best['objective']['name']}={best['objective']['value']:.4f}"
    print(f"reduction ratios {best['model']['reduction_ratios']} ({best['source']}{found}) -> {args.out}",
          file=sys.stderr)
    for label, scores in best.get("references", {}).items():
        objective = best["objective"]["name"]
        print(f"  reference {label}: {objective}={scores[objective]:.4f}", file=sys.stderr)
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
    line = (("test clips, IN-SAMPLE (train.fit_all trained on them too; evaluate.folds > 1 gives held-out numbers): "
             if metrics.get("in_sample") else "test clips: ")
            + f"accuracy {metrics['clip']['accuracy']:.3f}, macro-F1 {metrics['clip']['macro_f1']:.3f} "
            f"(n={metrics['n_clips']}); segments: accuracy {metrics['segment']['accuracy']:.3f}; "
            f"clip ECE {metrics['clip']['ece']:.3f} -> {metrics['clip']['ece_calibrated']:.3f} "
            f"(T={metrics['temperature']:.2f})")
    if "cv" in metrics:
        cv = metrics["cv"]
        line += (f"; {cv['folds']}-fold CV clip accuracy {cv['clip_accuracy_mean']:.3f} "
                 f"+- {cv['clip_accuracy_std']:.3f}")
    print(line, file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    from .analyze import run_analyze
    from .fileio import check_writable

    for path in (args.out, args.table):  # before the model runs; else a bad --table fails after the PNG is written
        if path:
            check_writable(path)
    exc = run_analyze(args.model, args.features, split=args.split, out_png=args.out, table_csv=args.table,
                      warn=lambda note: _err(f"warning: {note}"))
    for row in exc.summary().itertuples():
        print(f"{row.block}: {row.channels} channels, genre spread {row.genre_spread:.3f} "
              f"(untrained copy {row.genre_spread_untrained:.3f}), eta^2 {row.eta_squared:.2f} "
              f"(chance {row.eta_squared_chance:.2f}; excess {row.eta_squared_excess:+.2f}, untrained copy "
              f"{row.eta_squared_excess_untrained:+.2f}), nearest genre {row.nearest_genre:.2f} of "
              f"{row.nearest_genre_clips} clips (chance {row.nearest_genre_chance:.2f}, untrained copy "
              f"{row.nearest_genre_untrained:.2f})", file=sys.stderr)
    written = " and ".join(str(p) for p in (args.out, args.table) if p)
    print(f"{len(exc.clip_ids)} {args.split} clips -> {written or 'nothing written'}", file=sys.stderr)
    return 0


def cmd_model_summary(args) -> int:
    from .model import build_model, summary_text

    fusion = head = None
    if args.model and args.classes is not None:
        raise ConfigError("model summary: --classes sizes the params' architecture; a bundle (--model) has its genres")
    if args.model:
        from .bundle import load_bundle
        from .embedding_svm import load_embedding_svm
        from .fusion import load_svm

        bundle = load_bundle(args.model)
        model, fusion = bundle.model, load_svm(args.model, bundle.labels)
        head = load_embedding_svm(args.model, bundle.labels)
    else:
        params = _params(args)
        feats = params.features
        classes = 10 if args.classes is None else args.classes  # --classes 0 is refused, not taken for 10
        model = build_model(params.model, (feats.n_mels, feats.segment_frames, 1), classes, features=feats)
    print(summary_text(model), end="")
    if fusion is not None:
        print(f"Fused with an MFCC + spectral-statistics SVM (model.fusion: svm): {len(fusion.support_vectors)} "
              f"support vectors, {fusion.n_parameters:,} numbers; the answer is the mean of both distributions")
    if head is not None:
        print(f"Classifier: an SVM on the mean embedding (model.classifier: svm): {len(head.support_vectors)} "
              f"support vectors, {head.n_parameters:,} numbers; it answers instead of the softmax")
    return 0


# --------------------------------------------------------------------------------------------------
# predict / embed: thin over genre_se.inference


def _inference_progress(args, files: list[str]):
    """(bar, on_progress): a bar over files (several) or audio seconds (one); (None, None) when quiet/no TTY."""
    factory = _progress(args.quiet)
    if factory is None or not files:
        return None, None
    if len(files) > 1:
        return factory(total=len(files), unit="file", delay=0.5), None
    from .audio import audio_info

    try:
        total = float(audio_info(files[0]).duration)
    except GenreSEError:
        return None, None  # the prediction itself reports the problem
    bar = factory(total=round(total, 1), unit="s", delay=0.5, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")

    def on_progress(_path, seconds: float) -> None:
        bar.update(min(seconds, bar.total) - bar.n)

    return bar, on_progress


def _emit(stream, text: str, bar) -> None:
    """Write output text, lifting the progress bar (on stderr) out of the way while it is written."""
    if not text:
        return
    if bar is None:
        stream.write(text)
        stream.flush()
        return
    from .quiet import stderr_message

    with stderr_message(), bar.external_write_mode(file=sys.stderr):  # the bar's clearing must reach fd 2
        stream.write(text)
        stream.flush()


def _report(message: str, bar) -> None:
    from .quiet import stderr_message

    if bar is None:
        _err(message)
    else:
        with stderr_message(), bar.external_write_mode(file=sys.stderr):
            _err(message)


class _OutputStream:
    """stdout, or a file written atomically (complete on success, absent on failure)."""

    def __init__(self, path: str | None):
        self.path = None if path in (None, "-") else path
        self._atomic = None

    def __enter__(self):
        if self.path is None:
            return sys.stdout
        from .fileio import atomic_path

        self._atomic = atomic_path(self.path)
        # a file name that is not UTF-8 is spelt \udce9, as on stderr, rather than ending the run in a traceback
        self._file = open(self._atomic.__enter__(), "w", encoding="utf-8", errors="backslashreplace", newline="")
        return self._file

    def __exit__(self, *exc_info):
        if self._atomic is None:
            return False
        self._file.close()
        return self._atomic.__exit__(*exc_info)


#: The PATH that reads one audio file from standard input (``ffmpeg -i film.mkv -f wav - | genre-se predict -``).
STDIN_PATH = "-"
#: How a result read from standard input is named in outputs and messages.
STDIN_SHOWN = "<stdin>"


class _Inputs:
    """The audio files under the given paths, as a context: a ``-`` among them is standard input, spooled to a
    temporary file (bounded memory; any format decodes as it would from disk) that is removed on exit.
    Empty folders and folders that cannot be read are reported and counted as failed inputs. :meth:`shown`
    renames a result of the spool back to ``<stdin>`` (its ``path`` and, for a failure, its message)."""

    def __init__(self, paths: list[str]):
        if paths.count(STDIN_PATH) > 1:
            raise ConfigError("standard input ('-') can be read once: give '-' once")
        self.paths = paths
        self.spool: str | None = None

    def __enter__(self) -> tuple[list[str], int]:
        from .audio import AUDIO_EXTENSIONS
        from .inference import expand_paths

        paths = self.paths
        if STDIN_PATH in paths:
            self.spool = _spool_stdin()
            paths = [self.spool if p == STDIN_PATH else p for p in paths]
        unreadable: list[GenreSEError] = []
        files, empty_folders = expand_paths(paths, unreadable=unreadable)
        for problem in unreadable:
            _err(f"error: {problem}")
        for folder in empty_folders:
            _err(f"error: {folder}: no audio files found (looked for .{', .'.join(AUDIO_EXTENSIONS)})")
        return files, len(empty_folders) + len(unreadable)

    def __exit__(self, *exc_info) -> bool:
        if self.spool is not None and os.path.exists(self.spool):
            os.unlink(self.spool)
        return False

    def shown(self, result):
        """``result`` (Prediction, Embedding, Failure or FileRobustness) named as the user gave it."""
        if self.spool is None or result.path != self.spool:
            return result
        result.path = STDIN_SHOWN
        for row in getattr(result, "rows", None) or []:  # a robustness report names the file in every row
            row["path"] = STDIN_SHOWN
        error = getattr(result, "error", None)
        if error is not None:
            result.error = type(error)(str(error).replace(self.spool, STDIN_SHOWN))
        return result


def _spool_stdin() -> str:
    """Copy standard input to a temporary file in blocks; the caller removes it."""
    import shutil
    import tempfile

    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("'-' reads audio from standard input, which is a terminal here: pipe a file into it "
                          "(cat song.mp3 | genre-se predict -)")
    handle, name = tempfile.mkstemp(prefix="genre-se-stdin-")
    try:
        with os.fdopen(handle, "wb") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
    except BaseException:
        os.unlink(name)
        raise
    return name


def _finish(n_failed: int, n_inputs: int) -> int:
    if n_failed and n_inputs > 1:
        _err(f"{n_failed} of {n_inputs} inputs failed")
    return EXIT_ERROR if n_failed else 0


def _inference_needs_tf(args) -> bool:
    """predict/embed import TensorFlow only for the Keras runtime: a bundle with a LiteRT export (and
    ``--backend`` auto or litert) runs without it. Decided once the bundle is known."""
    from .inference import resolve_bundle_path, uses_litert

    try:
        return not uses_litert(resolve_bundle_path(args.model), args.backend)
    except GenreSEError:
        return False  # the command itself reports the missing bundle, without paying for TensorFlow


def _say_which_model(args) -> None:
    """Without --model the bundle comes from the pipeline or the package: say which (stderr; not with -q)."""
    from .inference import BUNDLE_SOURCES, SHIPPED_BUNDLE, locate_bundle

    if args.model is None and not args.quiet:
        path, source = locate_bundle(None)
        _err(f"using {BUNDLE_SOURCES[source]}: {path}")
        if source == "pipeline" and _trained_on_builtin_corpus(path):
            _err(f"note: that model was trained on the built-in synthetic corpus (the pipeline's demo data), not on "
                 f"music; for real songs use --model {SHIPPED_BUNDLE} (MODEL.md) or train on GTZAN (README)")


def _say_which_calibration(args, classifier) -> None:
    """A bundle whose head or fusion is switched off and that records no temperature for its softmax alone answers
    uncalibrated: say so once (stderr; not with -q; the JSON's model.calibration.note keeps it)."""
    if classifier.calibration_note is not None and not args.quiet:
        _err(f"note: {classifier.calibration_note}")


def _trained_on_builtin_corpus(bundle_dir) -> bool:
    """What the train stage recorded in the bundle (read as JSON: no TensorFlow); False when unknown."""
    import json

    try:
        meta = json.loads((Path(bundle_dir) / "bundle.json").read_text(encoding="utf-8"))
        return bool(meta["extra"]["training_data"]["builtin_corpus"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _output_format(args) -> str:
    """--format as given, else what the -o suffix names (.json, .csv), else the table: `-o out.json` must not
    leave a text table in a file named .json."""
    if args.format is not None:
        return args.format
    suffix = Path(args.output).suffix.lower() if args.output not in (None, "-") else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def cmd_predict(args) -> int:
    from .inference import DEFAULT_MAX_SEGMENTS, GenreClassifier

    args.format = _output_format(args)
    _say_which_model(args)

    # a timeline shows every segment, so it reads them all unless --max-segments says otherwise
    max_segments = args.max_segments if args.max_segments is not None else 0 if args.timeline else DEFAULT_MAX_SEGMENTS
    classifier = GenreClassifier.load(args.model, backend=args.backend, threads=args.threads,
                                      batch_size=args.batch_size, aggregate=args.aggregate,
                                      uncertain_below=args.uncertain_below, max_segments=max_segments,
                                      silence_db=args.silence_db, fusion=args.fusion,
                                      embedding_svm=args.embedding_svm)
    _say_which_calibration(args, classifier)
    inputs = _Inputs(args.paths)
    with inputs as (files, n_empty):
        return _predict_files(args, classifier, files, n_empty, inputs.shown)


def _predict_files(args, classifier, files: list[str], n_empty: int, shown) -> int:
    from .inference import Failure
    from .outputs import PredictionFormatter

    n_failed = n_empty
    formatter = PredictionFormatter(args.format, args.top_k, args.timeline, classifier.provenance(),
                                    n_classes=len(classifier.labels))
    bar, on_progress = _inference_progress(args, files)
    try:
        with _OutputStream(args.output) as out:
            _emit(out, formatter.begin(), bar)
            for result in map(shown, classifier.predict_many(files, on_progress=on_progress)):
                if isinstance(result, Failure):
                    n_failed += 1
                    _report(f"error: {result.message}", bar)
                    formatter.add_failure(result)
                else:
                    _emit(out, formatter.add(result), bar)
                if bar is not None and on_progress is None:
                    bar.update(1)
            _emit(out, formatter.end(), bar)
    finally:
        if bar is not None:
            bar.close()
    return _finish(n_failed, len(files) + n_empty)


def cmd_embed(args) -> int:
    from .fileio import check_writable
    from .inference import GenreClassifier
    from .outputs import embedding_format

    target, fmt = embedding_format(args.output, args.format)  # a bad --output/--format fails before any work
    check_writable(target, folder=fmt == "npy")  # and so does a place it cannot be written
    _say_which_model(args)
    classifier = GenreClassifier.load(args.model, backend=args.backend, threads=args.threads,
                                      batch_size=args.batch_size, silence_db=args.silence_db)
    inputs = _Inputs(args.paths)
    with inputs as (files, n_empty):
        return _embed_files(args, classifier, files, n_empty, inputs.shown)


def _embed_files(args, classifier, files: list[str], n_empty: int, shown) -> int:
    from .inference import Failure
    from .outputs import write_embeddings

    n_failed = n_empty
    bar, on_progress = _inference_progress(args, files)
    embeddings = []
    try:
        for result in map(shown, classifier.embed_many(files, on_progress=on_progress)):
            if isinstance(result, Failure):
                n_failed += 1
                _report(f"error: {result.message}", bar)
            else:
                embeddings.append(result)
                if result.truncated and not args.quiet:  # written, and marked in the rows (truncated)
                    _report(f"note: {result.path}: cut short: the header declares {result.declared_duration:.1f} s, "
                            f"{result.duration:.1f} s decode (the embeddings are of what is there)", bar)
            if bar is not None and on_progress is None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not embeddings:
        _err("error: nothing written: no input could be processed")
        return EXIT_ERROR
    written = write_embeddings(
        embeddings, args.output, fmt=args.format, pool=args.pool, provenance=classifier.provenance()
    )
    rows = len(embeddings) if args.pool == "mean" else sum(e.n_segments for e in embeddings)
    unit = "files" if args.pool == "mean" else "segments"
    print(f"{rows} {unit} x {embeddings[0].dim} dims -> {written}", file=sys.stderr)
    return _finish(n_failed, len(files) + n_empty)


def cmd_robustness(args) -> int:
    from .fileio import check_writable
    from .inference import GenreClassifier

    args.format = _output_format(args)
    if args.output not in (None, "-"):
        check_writable(args.output)  # before minutes of transforms, not after
    _say_which_model(args)
    classifier = GenreClassifier.load(args.model, backend=args.backend, threads=args.threads,
                                      batch_size=args.batch_size, fusion=args.fusion,
                                      embedding_svm=args.embedding_svm)
    _say_which_calibration(args, classifier)
    inputs = _Inputs(args.paths)
    with inputs as (files, n_empty):
        return _robustness_files(args, classifier, files, n_empty, inputs.shown)


def _robustness_files(args, classifier, files: list[str], n_empty: int, shown) -> int:
    from .robustness import FileRobustness, format_report, iter_robustness, report_frame

    factory = _progress(args.quiet) if files else None
    bar = factory(total=len(files), unit="file", delay=0.5) if factory is not None else None
    results, failures = [], []
    try:
        for result in map(shown, iter_robustness(classifier, files, max_seconds=args.max_seconds or None)):
            if isinstance(result, FileRobustness):
                results.append(result)
            else:
                failures.append(result)
                _report(f"error: {result.message}", bar)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not results:
        _err("error: nothing to report: no input could be processed")
        return EXIT_ERROR
    text = format_report(report_frame(results), args.format, per_file=args.per_file, failures=failures,
                         provenance=classifier.provenance())
    with _OutputStream(args.output) as out:
        out.write(text)
    return _finish(len(failures) + n_empty, len(files) + n_empty)


def cmd_install_model(args) -> int:
    from .shipped import install_shipped

    target = install_shipped(args.bundle, args.target, quantize=args.quantize)
    print(f"installed {args.bundle} as the shipped model -> {target}", file=sys.stderr)
    return 0


def cmd_familiarity(args) -> int:
    from .train import add_familiarity

    add_familiarity(args.model, args.features, args.quantile, log=_log(args))
    print(f"familiarity statistics -> {args.model}", file=sys.stderr)
    return 0


def cmd_fusion(args) -> int:
    from .train import add_fusion

    add_fusion(args.model, args.features, args.seed, log=_log(args))
    print(f"fusion SVM -> {args.model}", file=sys.stderr)
    return 0


def cmd_classifier(args) -> int:
    from .train import add_embedding_svm

    add_embedding_svm(args.model, args.features, args.seed, log=_log(args))
    print(f"embedding SVM (model.classifier: svm) -> {args.model}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .inference import resolve_bundle_path
    from .litert import export_litert

    bundle_dir = resolve_bundle_path(args.model)  # always given (default models/bundle): never the shipped one
    record = export_litert(bundle_dir, quantize=args.quantize)
    size = record["bytes"]["model.tflite"] / 2**20
    worst = record["parity"]["max_abs_diff"]["genre"]
    print(f"LiteRT export ({record['quantize']}, {size:.1f} MiB, max |p_litert - p_keras| = {worst:.1e} on "
          f"{record['parity']['probe_segments']} probe segments) -> {bundle_dir}", file=sys.stderr)
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


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _decibels_or_off(text: str) -> float | None:
    import math

    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a level in dB (e.g. -60) or 'off', got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite level in dB or 'off', got {text!r}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``, else a usage error saying so."""
    what = "a whole number >= 0" if minimum == 0 else f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


_count = _int_at_least(0)
_positive_int = _int_at_least(1)


def _seed(text: str) -> int:
    """An argparse type: a seed in the range params.yaml's ``seed`` allows (scikit-learn refuses a negative
    one with a traceback)."""
    from .config import SEED_MAX

    value = _count(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, {SEED_MAX}], got {text!r}")
    return value


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    """PATH... and the options predict and embed share."""
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="audio files and folders (searched recursively); - reads one file from standard input")
    p.add_argument("--model", help="model bundle (default: models/bundle, the pipeline's train output, if it "
                                    "exists here, else the shipped gtzan-mini model; MODEL.md)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="segments per model call (default: 64)")
    p.add_argument("--backend", choices=("auto", "litert", "keras"), default="auto",
                   help="runtime: auto (default) uses the bundle's LiteRT export when it has one (fast start, "
                        "no TensorFlow), else Keras")
    p.add_argument("--threads", type=_positive_int, help="LiteRT threads (default: the usable cores)")
    # SUPPRESS: only a given -q sets it, so the subcommand never resets `genre-se -q predict ...`
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")


def _add_fusion_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fusion", dest="fusion", action="store_false",
                   help="a bundle trained with model.fusion: svm answers with its CNN alone, scaled by the CNN's "
                        "own temperature (T = 1, with a note, for an older bundle that records none) (default: "
                        "the mean of the CNN's and the SVM's distributions, as it was evaluated)")
    p.add_argument("--softmax", dest="embedding_svm", action="store_false",
                   help="a bundle trained with model.classifier: svm answers with the network's softmax, scaled "
                        "by the softmax's own temperature (T = 1, with a note, for an older bundle that records "
                        "none) (default: the SVM on the mean embedding, as it was evaluated)")


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

    p = sub.add_parser("tune", help="Bayesian search over the SE reduction ratios (writes best_params.json)")
    _add_params(p)
    p.add_argument("--features", default="data/features", help="feature store (default: %(default)s)")
    p.add_argument("--out", default="models/best_params.json", help="output (default: %(default)s)")
    p.add_argument("--trials", default="reports/tune_trials.csv", help="trial table (default: %(default)s)")
    p.add_argument("--plot", default="reports/tune_objective.png", help="objective vs r (default: %(default)s)")
    p.add_argument("--project-dir", default="models/tuning",
                   help="keras-tuner projects, one per search; not a DVC output (default: %(default)s)")
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

    p = sub.add_parser("predict", help="genre of audio files and folders (top-k, optional timeline)")
    _add_inference_args(p)
    p.add_argument("--top-k", type=_positive_int, default=3, help="genres shown per file (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json", "csv"),
                   help="output format (default: json or csv when the --output name ends so, else table)")
    p.add_argument("-o", "--output", help="write the output to this file (atomically) instead of stdout")
    p.add_argument("--timeline", action="store_true", help="also give the genre of every segment with its times (CSV: one row per segment "
                        "instead of one per file, with a silent column; the file's answer is in table and JSON)")
    p.add_argument("--aggregate", choices=("mean", "vote"), default="mean",
                   help="segment probabilities -> file distribution (default: %(default)s, as evaluate); vote: the "
                        "fraction of segments each genre wins, a tie broken by the mean")
    p.add_argument("--uncertain-below", type=_probability, metavar="P",
                   help="mark a file uncertain when its top probability is below P (default: the bundle's "
                        "predict.uncertain_below, 0.4)")
    from .inference import DEFAULT_MAX_SEGMENTS, DEFAULT_SILENCE_DB

    p.add_argument("--max-segments", type=_count, metavar="N",
                   help=f"predict from at most N segments spread over the whole file, reading only those "
                        f"windows of a long file; 0: every segment (default: {DEFAULT_MAX_SEGMENTS}, or 0 with "
                        "--timeline)")
    p.add_argument("--silence-db", type=_decibels_or_off, default=DEFAULT_SILENCE_DB, metavar="DB",
                   help="leave segments whose loudest frame is below DB (re full scale) out of the file's "
                        "genre, unless all are; 'off': keep all (default: %(default)s)")
    _add_fusion_arg(p)
    p.set_defaults(func=cmd_predict, needs_tf=_inference_needs_tf)

    p = sub.add_parser("embed", help="embeddings (the layer before the classifier) of audio files")
    _add_inference_args(p)
    p.add_argument("--pool", choices=("mean", "none"), default="mean",
                   help="mean: one vector per file; none: one per segment, with times (default: %(default)s)")
    p.add_argument("-o", "--output", help="folder (npy) or file (npz, parquet); default embeddings.npz")
    p.add_argument("--format", choices=("npy", "npz", "parquet"),
                   help="default: from the --output suffix (.npz, .parquet), else npy into a folder")
    p.add_argument("--silence-db", type=_decibels_or_off, default=DEFAULT_SILENCE_DB, metavar="DB",
                   help="leave segments whose loudest frame is below DB (re full scale) out of the pooled "
                        "embedding, as predict leaves them out, unless all are (--pool none: marked in a silent "
                        "column); 'off': keep all (default: %(default)s)")
    p.set_defaults(func=cmd_embed, needs_tf=_inference_needs_tf)

    p = sub.add_parser("robustness", help="how predictions move under gain, MP3, resampling, low-pass, noise, "
                                          "compression and leading silence")
    _add_inference_args(p)
    p.add_argument("--format", choices=("table", "csv", "json"),
                   help="table/csv: per-transform summary (top-1 agreement, mean TV distance); json: summary, "
                        "per-file rows and errors (default: json or csv when the --output name ends so, else "
                        "table)")
    p.add_argument("--max-seconds", type=_seconds, default=60.0, metavar="S",
                   help="use at most S seconds from the middle of each file: every transform holds a few copies "
                        "of the whole signal in memory (default: %(default)s; 0: the whole file)")
    p.add_argument("--per-file", action="store_true", help="table/csv: one row per file and transform instead")
    p.add_argument("-o", "--output", help="write the report to this file (atomically) instead of stdout")
    _add_fusion_arg(p)
    p.set_defaults(func=cmd_robustness, needs_tf=_inference_needs_tf)

    p = sub.add_parser("export", help="add a LiteRT export to a bundle, so predict/embed start without TensorFlow")
    # no fallback to the shipped model: an export rewrites files in the bundle (install-model ships one)
    p.add_argument("--model", default="models/bundle", help="model bundle (default: %(default)s)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="none (default): float32, equal to Keras within rounding; int8: dynamic-range int8 "
                        "weights, several times faster, probabilities within ~1e-2")
    p.set_defaults(func=cmd_export, needs_tf=True)

    p = sub.add_parser("familiarity", help="add familiarity statistics (the unfamiliar flag of predict) to a bundle "
                                            "trained before the train stage wrote them")
    p.add_argument("--model", default="models/bundle", help="model bundle (default: %(default)s)")
    p.add_argument("--features", default="data/features",
                   help="the feature store it was trained on: train split = statistics, valid = threshold "
                        "(default: %(default)s)")
    p.add_argument("--quantile", type=_probability, default=0.95,
                   help="share of validation clips that stay familiar (default: %(default)s)")
    p.set_defaults(func=cmd_familiarity, needs_tf=True)

    for name, what, store_note, func in (
            ("fusion", "the fusion SVM (model.fusion: svm) without training its CNN again; the temperature is "
                       "refitted on the fused answers, the CNN's own on its answers", ", built with model.fusion: svm",
             cmd_fusion),
            ("classifier", "the SVM head on its embeddings (model.classifier: svm) without training the network "
                           "again; the temperature is refitted on its answers, the softmax's own on the softmax's", "",
                           cmd_classifier)):
        p = sub.add_parser(name, help=f"give a trained bundle {what}")
        p.add_argument("--model", default="models/bundle", help="model bundle (default: %(default)s)")
        p.add_argument("--features", default="data/features",
                       help=f"the feature store it was trained on{store_note} (default: %(default)s)")
        p.add_argument("--seed", type=_seed, help="the SVM's seed (default: the bundle's training seed)")
        p.set_defaults(func=func, needs_tf=True)

    p = sub.add_parser("install-model", help="make a trained bundle (with its LiteRT export) the package's "
                                              "shipped default model (maintainers; MODEL.md)")
    p.add_argument("bundle", help="model bundle, e.g. models/shipped/bundle")
    p.add_argument("--target", help="where to install (default: genre_se/pretrained/gtzan-mini in the package)")
    p.add_argument("--quantize", choices=("none", "int8"), default="int8",
                   help="the LiteRT export shipped: int8 (default; same top-1 as float32 on gtzan-mini, 2x the "
                        "files/s) or none (the bundle's float32 export)")
    p.set_defaults(func=cmd_install_model, needs_tf=True)

    p = sub.add_parser("analyze", help="mean SE excitation per genre on held-out clips (SENet Fig. 6)")
    p.add_argument("--model", default="models/bundle", help="model bundle (default: %(default)s)")
    p.add_argument("--features", default="data/features", help="feature store (default: %(default)s)")
    p.add_argument("--split", default="test", help="train, valid, test, all, foldK, or a list: valid,test (default: test)")
    p.add_argument("--out", default="reports/excitations.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--table", help="also write the means as a CSV (block, genre, channel, excitation, clips)")
    p.set_defaults(func=cmd_analyze, needs_tf=True)

    p = sub.add_parser("model", help="inspect the SE-CNN")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    s = model_sub.add_parser("summary", help="layer table and per-block SE hidden sizes")
    _add_params(s)
    s.add_argument("--model", help="summarise this trained bundle instead of the params' architecture")
    s.add_argument("--classes", type=int, help="number of genres of the params' architecture (default: 10)")
    s.set_defaults(func=cmd_model_summary, needs_tf=True)
    # -q after the subcommand too (`genre-se features -q`), as predict has always taken it
    for command in [*sub.choices.values(), *model_sub.choices.values()]:
        if "--quiet" not in command._option_string_actions:
            command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports numpy and the inference module: a Ctrl-C lands here often enough
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    args = parser.parse_args(argv)
    try:
        needs_tf = getattr(args, "needs_tf", False)
        if callable(needs_tf):  # predict/embed: only the Keras runtime needs it
            needs_tf = needs_tf(args)
        if needs_tf:
            _import_tensorflow_quietly()
        return args.func(args)
    except GenreSEError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:  # `genre-se predict music/ | head`: the reader left; stop quietly, as a C tool would
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # an I/O failure outside the checked paths (disk full while writing, ...): no traceback
        _err(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured, replaced)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

