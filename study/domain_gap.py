"""How do a training corpus and a set of real songs differ as recordings? (issue 10)

The model trained on gtzan-mini answers real masters badly (real-clips 1 of 12). Before adding augmentations at
random, measure what differs: a few recording statistics of every 3-s segment, computed on the pipeline's own
log-mel (:func:`genre_se.features.extract_segments`, so exactly what the model sees before its input
standardisation), then compared per file between the two sets::

    python -m study.domain_gap ../shared/data/gtzan-mini/genres ../shared/data/real-clips \
        --out study/results/domain_gap.md

The statistics, each a per-segment number, then the median over a file's segments:

- ``level_db``: mean frame loudness (dB re full scale, :func:`genre_se.features.frame_loudness`).
- ``dynamics_db``: standard deviation of the frame loudness over the segment: what a compressor/limiter shrinks.
- ``spread_db``: standard deviation of all the segment's dB values: what per-segment standardisation divides by.
- ``tilt_db_oct``: slope of the time-averaged spectrum (dB per octave) between 100 Hz and 8 kHz: the EQ.
- ``bandwidth_hz``: highest mel band whose time-averaged level is within 60 dB of the loudest band.
- ``floor_depth_db``: median minus 5th percentile of the segment's dB values: how deep the quiet cells (noise
  floor, gaps) go below the typical cell.
- ``flatness``: mean over frames of the spectral flatness (geometric over arithmetic mean power, 0 tonal .. 1
  white noise).

The report gives, per statistic, the median and 10-90 % range of each set, and the share of the external files
outside the training files' 5-95 % range: a large share marks a recording condition the training data never
shows, the first candidate for an augmentation. Then each genre's medians (a statistic that differs between
genres is a cue a model can learn instead of the music), and the recording shortcut
(:func:`recording_shortcut`): how well the seven numbers alone name the training genres, and what they say
the external files are.

With ``--model BUNDLE``, the recording counterfactual (:func:`counterfactual_answers`): that model's answers on
the external files untouched and after a recording change a listener hardly notices but that gtzan-mini's
genres differ by (a low-pass at their band limits, a noise floor), and after changes of the log-mel itself
(:func:`segment_counterfactual_answers`: floor depth, peak spread, EQ tilt). If the answers follow the
recording, the model learnt it instead of the music; if they do not, the miss lies elsewhere (the music).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

STATISTICS = ("level_db", "dynamics_db", "spread_db", "tilt_db_oct", "bandwidth_hz", "floor_depth_db", "flatness")


def segment_statistics(data: np.ndarray, cfg, mel_hz: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The recording statistics (module doc) of segments ``(n, n_mels, frames[, 1])`` in dB; one value each.

    ``mel_hz``: the centre frequency of every mel band (computed from ``cfg`` when None).
    """
    from genre_se.features import MelFrontend, frame_loudness
    from genre_se.augment import mel_centre_frequencies

    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3 or len(data) == 0:
        raise ValueError(f"segments must be (n, n_mels, frames), got shape {data.shape}")
    n, n_mels, frames = data.shape
    hz = np.asarray(mel_centre_frequencies(cfg) if mel_hz is None else mel_hz, dtype=np.float64)
    if len(hz) != n_mels:
        raise ValueError(f"{len(hz)} band frequencies for {n_mels} mel bands")
    frontend = MelFrontend.for_config(cfg)
    flat = data.transpose(1, 0, 2).reshape(n_mels, n * frames)
    loud = frame_loudness(flat, cfg, frontend).astype(np.float64).reshape(n, frames)

    power = np.power(10.0, data / 10.0)  # (n, n_mels, frames)
    mean_spectrum = 10.0 * np.log10(power.mean(axis=2))  # (n, n_mels), power average
    band = (hz >= 100.0) & (hz <= 8000.0)
    if band.sum() >= 2:
        octaves = np.log2(hz[band])
        x = octaves - octaves.mean()
        tilt = (mean_spectrum[:, band] - mean_spectrum[:, band].mean(axis=1, keepdims=True)) @ x / (x @ x)
    else:
        tilt = np.full(n, np.nan)
    above = mean_spectrum >= mean_spectrum.max(axis=1, keepdims=True) - 60.0
    top_band = n_mels - 1 - np.argmax(above[:, ::-1], axis=1)

    geometric = np.exp(np.log(np.maximum(power, 1e-30)).mean(axis=1))
    flatness = (geometric / np.maximum(power.mean(axis=1), 1e-30)).mean(axis=1)

    cells = data.reshape(n, -1)
    return {
        "level_db": loud.mean(axis=1),
        "dynamics_db": loud.std(axis=1),
        "spread_db": cells.std(axis=1),
        "tilt_db_oct": tilt,
        "bandwidth_hz": hz[top_band],
        "floor_depth_db": np.median(cells, axis=1) - np.percentile(cells, 5, axis=1),
        "flatness": flatness,
    }


def file_statistics(path: str | Path, cfg) -> dict[str, float]:
    """Median over a file's segments of each statistic (:func:`segment_statistics`)."""
    from genre_se.features import extract_segments

    stats = segment_statistics(extract_segments(path, cfg).data, cfg)
    return {name: float(np.nanmedian(values)) for name, values in stats.items()}


def collect(folder: str | Path, cfg, genres: list[str]) -> list[dict]:
    """One row per audio file under ``folder/<genre>/`` (a genre in ``genres``): path, genre, file statistics.

    An unreadable file stops the report with its name (:class:`genre_se.errors.AudioError`): a gap measured
    without it would not say so."""
    from study.compare import external_files

    rows = []
    for path, genre, _ in external_files(folder, genres):
        rows.append({"path": str(path), "genre": genre, **file_statistics(path, cfg)})
    return rows


def compare(train: list[dict], external: list[dict]) -> list[dict]:
    """Per statistic: each set's median and 10/90 % quantiles, and the external files' share outside the
    training files' 5-95 % range (with the side: ``low`` / ``high`` counts)."""
    rows = []
    for name in STATISTICS:
        a = np.array([r[name] for r in train], dtype=np.float64)
        b = np.array([r[name] for r in external], dtype=np.float64)
        lo, hi = np.nanpercentile(a, [5, 95])
        rows.append({
            "statistic": name,
            "train_median": float(np.nanmedian(a)), "train_p10": float(np.nanpercentile(a, 10)),
            "train_p90": float(np.nanpercentile(a, 90)),
            "external_median": float(np.nanmedian(b)), "external_p10": float(np.nanpercentile(b, 10)),
            "external_p90": float(np.nanpercentile(b, 90)),
            "below": int(np.sum(b < lo)), "above": int(np.sum(b > hi)), "n_external": int(len(b)),
        })
    return rows


def recording_shortcut(train: list[dict], external: list[dict], folds: int = 5, seed: int = 0) -> dict:
    """How much of the genre the recording statistics alone give away: the project's baseline classifier
    (standardise + RBF SVM, :func:`genre_se.baseline.make_classifier`) on the seven statistics only.

    Returns the stratified ``folds``-fold accuracy on the training files (one file = one clip), chance (the
    largest genre's share), and the answers of the classifier fit on every training file for the external
    files (``external_predicted``). Well above chance means a model can score on the training data by
    telling recordings apart; where its answers on the external files match a trained model's errors, that
    model is likely doing so.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from genre_se.baseline import make_classifier

    x = np.array([[r[s] for s in STATISTICS] for r in train], dtype=np.float64)
    y = np.array([r["genre"] for r in train])
    _, counts = np.unique(y, return_counts=True)
    k = min(folds, int(counts.min()))
    if k < 2:
        raise ValueError("the recording shortcut needs at least 2 training files of every genre")
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    predicted = cross_val_predict(make_classifier(seed), x, y, cv=cv)
    fitted = make_classifier(seed).fit(x, y)
    ext = np.array([[r[s] for s in STATISTICS] for r in external], dtype=np.float64)
    return {"cv_accuracy": float(np.mean(predicted == y)), "chance": float(counts.max() / len(y)), "folds": k,
            "cv_predicted": {clip_key(r): str(a) for r, a in zip(train, predicted)},
            "external_predicted": list(fitted.predict(ext)) if len(ext) else []}


def clip_key(row: dict) -> str:
    """A training file's clip id as the study names it (``<genre>/<file stem>``, e.g. ``jazz/jazz.00003``)."""
    return f"{row['genre']}/{Path(row['path']).stem}"


def error_match(cv_answers: list[dict], clips, n_genres: int):
    """Do a model's errors follow the recording shortcut? Per (variant, seed) of a study's per-clip predictions
    ``clips`` (``study/results/*_clips.csv``): its wrong answers, the share of them that equal the shortcut's
    cross-validated answer for the clip (mean over the shortcut CV runs ``cv_answers``, each clip id -> answer),
    and that share if the two erred independently (the shortcut wrong on the clip, then 1 wrong genre in
    ``n_genres - 1``)."""
    import pandas as pd

    rows = []
    for (variant, seed), group in clips.groupby(["variant", "seed"], sort=False):
        wrong = group[(group["actual"] != group["predicted"]) & group["clip_id"].isin(cv_answers[0].keys())]
        if wrong.empty:
            continue
        match = [[run[c] == p for run in cv_answers] for c, p in zip(wrong["clip_id"], wrong["predicted"])]
        also_wrong = [[run[c] != a for run in cv_answers] for c, a in zip(wrong["clip_id"], wrong["actual"])]
        rows.append({"variant": variant, "seed": seed, "wrong": len(wrong), "match": float(np.mean(match)),
                     "independent": float(np.mean(also_wrong)) / (n_genres - 1)})
    return pd.DataFrame(rows, columns=["variant", "seed", "wrong", "match", "independent"])


def shortcut_markdown(shortcut: dict, external: list[dict]) -> str:
    """The recording-shortcut result as a paragraph and a per-genre line of the external answers."""
    lines = [f"Genre from the seven recording statistics alone (standardise + RBF SVM, {shortcut['folds']}-fold "
             f"CV over the training files): accuracy {shortcut['cv_accuracy']:.3f} (largest genre "
             f"{shortcut['chance']:.3f}). Fit on every training file, it answers for the external files:", "",
             "| external genre | answers |", "|---|---|"]
    by_genre: dict[str, list[str]] = {}
    for row, answer in zip(external, shortcut["external_predicted"]):
        by_genre.setdefault(row["genre"], []).append(str(answer))
    for genre, answers in sorted(by_genre.items()):
        lines.append(f"| {genre} | {', '.join(answers)} |")
    return "\n".join(lines) + "\n"


def error_match_markdown(table) -> str:
    lines = ["Wrong answers on held-out training clips that equal the shortcut's cross-validated answer for the "
             "clip (mean over 5 shortcut CV shuffles), against the share if the two erred independently:", "",
             "| variant | seed | wrong answers | equal to the shortcut's | if independent |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| `{r.variant}` | {r.seed} | {r.wrong} | {r.match:.2f} | {r.independent:.2f} |")
    return "\n".join(lines) + "\n"


def _counterfactuals() -> dict:
    """Recording changes toward gtzan-mini's band-limited transfers (study/results/domain_gap.md): the band limit
    of blues/classical/reggae/rock (9.5 kHz) and of jazz (8.8 kHz), a noise floor, and both."""
    import functools

    from genre_se.robustness import add_pink_noise, lowpass

    def both(y, sr):
        return add_pink_noise(*lowpass(y, sr, cutoff_hz=9500.0), snr_db=35.0)

    return {
        "lowpass-9.5k": functools.partial(lowpass, cutoff_hz=9500.0),
        "lowpass-8.8k": functools.partial(lowpass, cutoff_hz=8800.0),
        "pink-30dB": functools.partial(add_pink_noise, snr_db=30.0),
        "lowpass-9.5k+pink-35dB": both,
    }


def counterfactual_answers(classifier, external: list[dict], transforms: dict | None = None) -> list[dict]:
    """A classifier's answer (``predict_array(y, sr).genre``) for every external file untouched and under each
    recording change: rows of path, genre, transform (``untouched`` first), answer."""
    from genre_se.robustness import load_channels

    transforms = _counterfactuals() if transforms is None else transforms
    rows = []
    for row in external:
        y, sr = load_channels(row["path"])
        for name, change in {"untouched": lambda y, sr: (y, sr), **transforms}.items():
            answer = classifier.predict_array(*change(y, sr)).genre
            rows.append({"path": row["path"], "genre": row["genre"], "transform": name, "answer": answer})
    return rows


def _around_median(below: float, above: float):
    """A log-mel change per segment around its median ``m``: cells under ``m`` move to ``m - below * (m - x)``
    (below > 1: a deeper floor), cells over it to ``m + above * (x - m)`` (above < 1: compressed peaks)."""
    def change(x: np.ndarray) -> np.ndarray:
        m = np.median(x.reshape(len(x), -1), axis=1).reshape(-1, *([1] * (x.ndim - 1)))
        return np.where(x < m, m - below * (m - x), m + above * (x - m))

    return change


def _tilt(db: float):
    """The training augmentation's EQ tilt (:func:`genre_se.augment.eq_tilt`) at a fixed ``db``: a linear ramp
    over the mel bands, ``-db`` at the lowest band to ``+db`` at the top one."""
    def change(x: np.ndarray) -> np.ndarray:
        from genre_se.augment import eq_tilt

        return np.asarray(eq_tilt(x, np.full(len(x), db, np.float32), -np.inf))

    return change


#: changes of the log-mel itself along the statistics gtzan-mini's genres differ by (study/results/domain_gap.md);
#: a uniform scale around the median would do nothing (the shipped model standardises each segment)
SEGMENT_CHANGES = {
    "floor 40 % shallower": _around_median(0.6, 1.0),
    "floor 60 % deeper": _around_median(1.6, 1.0),
    "peaks 40 % compressed": _around_median(1.0, 0.6),
    "peaks 50 % expanded": _around_median(1.0, 1.5),
    "EQ tilt -6 dB": _tilt(-6.0),
    "EQ tilt +6 dB": _tilt(6.0),
}


def segment_counterfactual_answers(model, labels: list[str], cfg, external: list[dict],
                                   changes: dict | None = None) -> list[dict]:
    """A Keras model's answer (argmax of its mean segment probabilities) for every external file's log-mel
    segments untouched and after each change in ``changes`` (values kept at or above silence): rows as
    :func:`counterfactual_answers`."""
    from genre_se.features import extract_segments, floor_db

    changes = SEGMENT_CHANGES if changes is None else changes
    silence = floor_db(cfg)
    rows = []
    for row in external:
        x = extract_segments(row["path"], cfg).data
        for name, change in {"untouched": lambda x: x, **changes}.items():
            probs = np.asarray(model.predict(np.maximum(change(x), silence).astype(np.float32), verbose=0))
            rows.append({"path": row["path"], "genre": row["genre"], "transform": name,
                         "answer": labels[int(np.argmax(probs.mean(axis=0)))]})
    return rows


def counterfactual_markdown(rows: list[dict], model_name: str, what: str = "a recording change toward "
                            "gtzan-mini's band-limited transfers") -> str:
    """Per recording change: right answers, answers that differ from the untouched file's, the usual answer."""
    from collections import Counter

    untouched = {r["path"]: r["answer"] for r in rows if r["transform"] == "untouched"}
    lines = [f"Answers of `{model_name}` on the external files, untouched and after {what}:", "",
             "| recording | right | right per genre | changed vs untouched | answers (most common first) |",
             "|---|---|---|---|---|"]
    genres = sorted({r["genre"] for r in rows})
    for name in dict.fromkeys(r["transform"] for r in rows):
        group = [r for r in rows if r["transform"] == name]
        right = sum(r["answer"] == r["genre"] for r in group)
        per_genre = ", ".join(f"{g} {sum(r['answer'] == g for r in group if r['genre'] == g)}" for g in genres)
        changed = "" if name == "untouched" else str(sum(r["answer"] != untouched[r["path"]] for r in group))
        common = ", ".join(f"{a} {n}" for a, n in Counter(r["answer"] for r in group).most_common())
        lines.append(f"| {name} | {right} of {len(group)} | {per_genre} | {changed} | {common} |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def markdown(rows: list[dict], train_name: str, external_name: str, n_train: int,
             per_genre: dict[str, list[dict]] | None = None) -> str:
    """The comparison as a markdown table; with ``per_genre`` (genre -> (training rows, external rows)) also
    each genre's medians: a statistic that differs between the training genres is a recording cue the model
    can learn instead of the music (a genre without external files shows only its training median)."""
    lines = [f"Recording statistics per file (median over its 3-s segments): `{train_name}` ({n_train} files) "
             f"against `{external_name}` ({rows[0]['n_external'] if rows else 0} files).", "",
             "| statistic | training median (10-90 %) | external median (10-90 %) | external outside training 5-95 % "
             "(below / above) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['statistic']}` | {_number(r['train_median'])} ({_number(r['train_p10'])} .. "
                     f"{_number(r['train_p90'])}) | {_number(r['external_median'])} ({_number(r['external_p10'])} .. "
                     f"{_number(r['external_p90'])}) | {r['below'] + r['above']} of {r['n_external']} "
                     f"({r['below']} / {r['above']}) |")
    if per_genre:
        lines += ["", "Per genre, training median -> external median (`-`: no external files of the genre):", "",
                  "| genre | " + " | ".join(f"`{s}`" for s in STATISTICS) + " |",
                  "|---|" + "---|" * len(STATISTICS)]
        for genre, pair in sorted(per_genre.items()):
            cells = []
            for s in STATISTICS:
                a = _number(np.nanmedian([r[s] for r in pair[0]])) if pair[0] else "-"
                b = _number(np.nanmedian([r[s] for r in pair[1]])) if pair[1] else "-"
                cells.append(f"{a} -> {b}")
            lines.append(f"| {genre} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from genre_se.config import load_params
    from genre_se.errors import GenreSEError
    from genre_se.fileio import write_text

    parser = argparse.ArgumentParser(prog="python -m study.domain_gap", description=__doc__.split("\n\n")[0])
    parser.add_argument("train", help="folder-per-genre training corpus (e.g. ../shared/data/gtzan-mini/genres)")
    parser.add_argument("external", help="folder-per-genre files to compare with (e.g. ../shared/data/real-clips)")
    parser.add_argument("--params", default="params.yaml", help="whose `features` section defines the log-mel")
    parser.add_argument("--out", help="also write the markdown report here (atomically)")
    parser.add_argument("--clips", help="a study's per-clip predictions (study/results/*_clips.csv): also report "
                        "how often each model's wrong answers are the recording shortcut's")
    parser.add_argument("--model", help="a model bundle (e.g. genre_se/pretrained/gtzan-mini): also its answers on "
                        "the external files after recording changes (of the audio, and of the log-mel)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        genres = sorted({d.name for folder in (args.train, args.external) for d in Path(folder).glob("*/")
                         if d.is_dir()})
        train = collect(args.train, params.features, genres)
        external = collect(args.external, params.features, genres)
        if not train or not external:
            raise GenreSEError(f"no audio in <genre>/ folders under {args.train if not train else args.external}")
    except GenreSEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    per_genre = {g: ([r for r in train if r["genre"] == g], [r for r in external if r["genre"] == g])
                 for g in {r["genre"] for r in train}}
    text = markdown(compare(train, external), args.train, args.external, len(train), per_genre)
    try:
        shortcut = recording_shortcut(train, external, seed=params.seed)
        text += "\n" + shortcut_markdown(shortcut, external)
        if args.clips:
            from study.compare import read_clip_predictions

            runs = [shortcut["cv_predicted"]] + [recording_shortcut(train, [], seed=params.seed + i)["cv_predicted"]
                                                 for i in range(1, 5)]
            clips = read_clip_predictions(Path(args.clips))
            text += "\n" + error_match_markdown(error_match(runs, clips, len({r["genre"] for r in train})))
    except ValueError as exc:  # too few files per genre for a cross-validation: the report goes on without it
        print(f"note: {exc}", file=sys.stderr)
    except GenreSEError as exc:  # a --clips file that is not a study's per-clip predictions
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.model:
        from genre_se.inference import GenreClassifier

        try:
            classifier = GenreClassifier.load(args.model, backend="keras")  # Keras: the log-mel can go in directly
            answers = counterfactual_answers(classifier, external)
            changed = segment_counterfactual_answers(classifier.bundle.model, classifier.labels,
                                                     classifier.feature_config, external)
        except GenreSEError as exc:  # no bundle there, or a file it cannot read
            print(f"error: {exc}", file=sys.stderr)
            return 2
        text += "\n" + counterfactual_markdown(answers, args.model)
        text += "\n" + counterfactual_markdown(changed, args.model, "a change of the log-mel itself (per "
                                                "segment, around its median: the floor, the peaks; or an EQ tilt)")
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
