"""Find labelled audio, index it, and split it into train / valid / test (and k folds).

Three layouts are understood (``data.layout``):

* ``gtzan``: GTZAN's own tree ``<genre>/<genre>.<5 digits>.(wav|au)``; ``data.root`` may be the
  ``genres/`` (or Kaggle's ``genres_original/``) folder itself or the folder that holds it;
* ``folders``: any folder-per-genre tree; the label is the first-level folder, audio files (by
  ``data.extensions``) are found at any depth below it;
* ``manifest``: a CSV with columns ``path,label``; relative paths are relative to the CSV.

``auto`` picks ``manifest`` when ``data.manifest`` is set, ``gtzan`` when every audio file is named like a
GTZAN clip, else ``folders``.

Splits are at clip level (all segments of a clip land on one side). ``stratified`` splits every label
separately with a seeded :class:`numpy.random.Generator`; ``gtzan-fault-filtered`` uses the published
artist-disjoint lists shipped in ``genre_se/data/`` (Kereliuk, Sturm & Larsen 2015), because a random
split of GTZAN puts one artist on both sides and inflates accuracy (Sturm 2013).
"""

from __future__ import annotations

import os
import re
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .config import DataConfig, Params
from .errors import AudioError, DatasetError
from .fileio import write_csv

__all__ = [
    "SPLITS",
    "INDEX_COLUMNS",
    "find_clips",
    "index_dataset",
    "assign_splits",
    "gtzan_filtered_lists",
    "read_index",
    "run_prepare",
]

#: Split names, in the order the pipeline uses them; rows that take part in no split are "excluded".
SPLITS = ("train", "valid", "test")
EXCLUDED = "excluded"

#: Columns of the index written by ``genre-se prepare`` (plus ``split`` and, with folds, ``fold``).
INDEX_COLUMNS = ("clip_id", "path", "label", "duration", "sample_rate", "channels", "status", "error")

_GTZAN_NAME = re.compile(r"^(?P<genre>[A-Za-z]+)\.(?P<number>\d{5})\.(?P<ext>wav|au)$", re.IGNORECASE)
_GTZAN_SUBFOLDERS = ("genres", "genres_original")
_GTZAN_EXT_PREFERENCE = {"wav": 0, "au": 1}


# --------------------------------------------------------------------------------------------------
# Finding clips


def _resolve(path_text: str, params_dir: Path | None) -> Path:
    """Absolute path: relative ones are taken from ``params_dir`` (default: the working directory)."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = (params_dir if params_dir is not None else Path.cwd()) / path
    return Path(os.path.abspath(path))


def _extensions(cfg: DataConfig) -> tuple[str, ...]:
    return tuple(sorted({str(e).lower().lstrip(".") for e in cfg.extensions}))


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DatasetError(f"data.root: {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"data.root: {root} is not a folder")


def _gtzan_files(genres_dir: Path) -> list[tuple[str, Path]]:
    """``(genre, file)`` for every GTZAN-named file directly inside a genre folder of ``genres_dir``."""
    found = []
    for genre_dir in _visible_subdirs(genres_dir):
        for file in sorted(genre_dir.iterdir()):
            match = _GTZAN_NAME.match(file.name)
            if match and match["genre"] == genre_dir.name and file.is_file():
                found.append((genre_dir.name, file))
    return found


def _gtzan_genres_dir(root: Path) -> Path | None:
    """The folder that holds the genre folders: ``root/genres``, ``root/genres_original`` or ``root``."""
    for candidate in [root / name for name in _GTZAN_SUBFOLDERS] + [root]:
        if candidate.is_dir() and _gtzan_files(candidate):
            return candidate
    return None


def _gtzan_clips(root: Path) -> pd.DataFrame:
    genres_dir = _gtzan_genres_dir(root)
    if genres_dir is None:
        looked = ", ".join(str(root / n) for n in _GTZAN_SUBFOLDERS)
        raise DatasetError(
            f"data.root: no GTZAN clips (<genre>/<genre>.NNNNN.wav or .au) found in {root} "
            f"(also looked in {looked}); use data.layout: folders for other trees"
        )
    files = _gtzan_files(genres_dir)
    _refuse_empty_labels(genres_dir, {genre for genre, _ in files}, "GTZAN clips (<genre>.NNNNN.wav or .au)")
    rows = {}
    for genre, file in files:
        clip_id = f"{genre}/{file.name.rsplit('.', 1)[0]}"
        ext = file.suffix.lower().lstrip(".")
        # Both blues.00000.wav and blues.00000.au may sit side by side: one clip, prefer the wav.
        if clip_id in rows and _GTZAN_EXT_PREFERENCE[rows[clip_id][2]] <= _GTZAN_EXT_PREFERENCE[ext]:
            continue
        rows[clip_id] = (str(file.resolve()), genre, ext)
    return pd.DataFrame(
        [(clip_id, path, label) for clip_id, (path, label, _) in rows.items()],
        columns=["clip_id", "path", "label"],
    )


def _refuse_empty_labels(folder: Path, found: set, what: str) -> None:
    """An empty genre folder is an error, not a genre quietly left out of the model (a failed extraction).
    ``__MACOSX`` (the resource forks a macOS zip adds, all hidden ``._*`` files) is not a genre."""
    empty = [d.name for d in _visible_subdirs(folder) if d.name not in found and d.name != "__MACOSX"]
    if empty:
        raise DatasetError(
            f"data.root: label folder(s) {', '.join(empty)} of {folder} hold no {what}; add the clips, or remove "
            "the folder(s) to train without those labels"
        )


def _audio_files_below(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Audio files at any depth below ``folder`` (hidden files and folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and "." in name and name.rsplit(".", 1)[-1].lower() in extensions:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _unique_ids(relative_paths: list[str]) -> list[str]:
    """Clip ids: the relative path without extension, keeping the extension only where that collides with another
    file's id (``a.wav`` and ``a.flac`` beside ``a.wav.ogg``: the first keeps ``a.wav``, the latter's stem; both
    then keep their whole names). The relative paths are distinct, so the ids are."""
    stems = [p.rsplit(".", 1)[0] for p in relative_paths]
    counts = pd.Series(stems).value_counts()
    ids = [stem if counts[stem] == 1 else rel for stem, rel in zip(stems, relative_paths)]
    while True:  # an id kept whole can equal another file's stem: both keep their whole names (rarely twice)
        seen = pd.Series(ids, dtype=object).value_counts()
        clash = set(seen.index[seen > 1])
        if not clash:
            return ids
        ids = [rel if i in clash else i for i, rel in zip(ids, relative_paths)]


def _folder_clips(root: Path, extensions: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for label_dir in _visible_subdirs(root):
        for file in _audio_files_below(label_dir, extensions):
            rows.append((file.relative_to(root).as_posix(), str(file.resolve()), label_dir.name))
    if not rows:
        patterns = ", ".join(f"*.{e}" for e in extensions)
        raise DatasetError(
            f"data.root: no audio files ({patterns}) found in the label folders of {root} "
            "(expected <root>/<label>/.../<file>; data.extensions sets the file types)"
        )
    relative, paths, labels = zip(*rows)
    _refuse_empty_labels(root, set(labels), f"audio files ({', '.join(f'*.{e}' for e in extensions)})")
    return pd.DataFrame({"clip_id": _unique_ids(list(relative)), "path": paths, "label": labels})


def _manifest_clips(manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise DatasetError(f"data.manifest: {manifest} does not exist")
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"data.manifest: {manifest} is not a readable CSV ({exc})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DatasetError(
            f"data.manifest: {manifest} lacks column(s) {', '.join(sorted(missing))} "
            f"(has: {', '.join(table.columns) or 'none'}; expected header path,label)"
        )
    if table.empty:
        raise DatasetError(f"data.manifest: {manifest} lists no clips (expected rows path,label)")
    base = manifest.parent
    rows = []
    for line, (path_text, label) in enumerate(zip(table["path"], table["label"]), start=2):
        path_text, label = path_text.strip(), label.strip()
        if not path_text or not label:
            raise DatasetError(f"data.manifest: {manifest} line {line}: empty path or label")
        path = Path(path_text).expanduser()
        absolute = Path(os.path.abspath(path if path.is_absolute() else base / path))
        try:
            clip_name = absolute.relative_to(base).as_posix()
        except ValueError:
            clip_name = absolute.as_posix()
        rows.append((clip_name, str(absolute), label))
    frame = pd.DataFrame(rows, columns=["clip_name", "path", "label"])
    duplicated = frame["path"][frame["path"].duplicated()]
    if not duplicated.empty:
        raise DatasetError(f"data.manifest: {manifest} lists {duplicated.iloc[0]} more than once")
    frame.insert(0, "clip_id", _unique_ids(frame.pop("clip_name").tolist()))
    return frame


def _looks_like_gtzan(root: Path, extensions: tuple[str, ...]) -> bool:
    """True when GTZAN-named clips exist and every audio file of the tree is one of them."""
    genres_dir = _gtzan_genres_dir(root)
    if genres_dir is None:
        return False
    gtzan = {file for _, file in _gtzan_files(genres_dir)}
    others = [f for d in _visible_subdirs(genres_dir) for f in _audio_files_below(d, extensions)]
    return all(f in gtzan for f in others)


def find_clips(cfg: DataConfig, params_dir: Path | None = None) -> pd.DataFrame:
    """List the labelled clips of ``cfg``: columns ``clip_id`` (unique, stable), ``path`` (absolute), ``label``.

    Relative ``data.root`` / ``data.manifest`` are taken from ``params_dir`` (default: the working
    directory). The result is sorted by ``clip_id`` so every later stage sees the same order.

    Raises
    ------
    DatasetError
        The root or manifest is missing, or no audio is found; the message says what was looked for.
    """
    layout = cfg.layout
    if layout == "auto" and cfg.manifest:
        layout = "manifest"
    if layout == "manifest":
        if not cfg.manifest:
            raise DatasetError("data.manifest: must be set when data.layout is 'manifest'")
        clips = _manifest_clips(_resolve(cfg.manifest, params_dir))
    else:
        root = _resolve(cfg.root, params_dir)
        _check_root(root)
        extensions = _extensions(cfg)
        if layout == "auto":
            layout = "gtzan" if _looks_like_gtzan(root, extensions) else "folders"
        if layout == "gtzan":
            clips = _gtzan_clips(root)
        elif layout == "folders":
            clips = _folder_clips(root, extensions)
        else:
            raise DatasetError(f"data.layout: unknown layout {cfg.layout!r} (auto, gtzan, folders, manifest)")
    return clips.sort_values("clip_id", kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Indexing


def _probe(path: str) -> dict:
    """Header facts for one file, or its error message; never raises for an unreadable file."""
    from .audio import audio_info

    try:
        info = audio_info(path)
    except AudioError as exc:
        return {"status": "error", "error": str(exc)}
    if info.frames <= 0:
        return {"status": "error", "error": f"{path}: holds no audio samples (0 frames)"}
    return {
        "duration": float(info.duration),
        "sample_rate": int(info.sample_rate),
        "channels": int(info.channels),
        "status": "ok",
        "error": "",
    }


def index_dataset(cfg: DataConfig, params_dir: Path | None = None) -> pd.DataFrame:
    """:func:`find_clips` plus each file's duration, sample rate, channels, ``status`` and ``error``.

    Unreadable files (GTZAN's ``jazz.00054.wav`` in some copies) stay in the index with
    ``status == "error"`` and the reader's message, so one bad file never stops a run and is still reported.
    """
    clips = find_clips(cfg, params_dir)
    facts = pd.DataFrame([_probe(p) for p in clips["path"]], index=clips.index)
    index = clips.assign(
        duration=facts.get("duration", pd.Series(np.nan, index=clips.index)).astype(float),
        sample_rate=facts.get("sample_rate", pd.Series(pd.NA, index=clips.index)).astype("Int64"),
        channels=facts.get("channels", pd.Series(pd.NA, index=clips.index)).astype("Int64"),
        status=facts["status"],
        error=facts["error"].fillna(""),
    )
    return index[list(INDEX_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# Splitting


def _label_rng(seed: int, label: str, stream: int) -> np.random.Generator:
    """A generator per (seed, label, purpose): one label's split does not move when another label changes."""
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8")), stream])


def _readable(index: pd.DataFrame) -> pd.Series:
    if "status" not in index.columns:
        return pd.Series(True, index=index.index)
    return index["status"].eq("ok")


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(n_valid, n_test)`` for a label of ``n`` clips: at least one test (and valid) clip from 3 clips on."""
    if n < 3:
        return 0, 0
    n_test = max(1, int(round(n * test_fraction)))
    n_valid = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    while n_test + n_valid > n - 1:  # always keep a training clip
        if n_valid > 1 or (n_valid == 1 and n_test == 1):
            n_valid -= 1
        else:
            n_test -= 1
    return n_valid, n_test


def _stratified_split(readable: pd.DataFrame, cfg: DataConfig, seed: int) -> pd.Series:
    split = pd.Series("train", index=readable.index, dtype=object)
    for label, group in readable.groupby("label", sort=True):
        order = group.sort_values("clip_id", kind="mergesort").index.to_numpy()
        shuffled = order[_label_rng(seed, str(label), 0).permutation(len(order))]
        n_valid, n_test = _split_counts(len(order), cfg.val_fraction, cfg.test_fraction)
        split.loc[shuffled[:n_test]] = "test"
        split.loc[shuffled[n_test : n_test + n_valid]] = "valid"
    return split


def gtzan_filtered_lists() -> dict[str, frozenset[str]]:
    """The shipped fault-filtered lists: split name -> GTZAN clip names such as ``"blues.00029"``."""
    lists = {}
    for split in SPLITS:
        resource = resources.files("genre_se") / "data" / f"gtzan_filtered_{split}.txt"
        try:
            text = resource.read_text(encoding="utf-8")
        except OSError as exc:
            raise DatasetError(f"genre_se/data/gtzan_filtered_{split}.txt: cannot read ({exc})") from None
        lines = (line.strip() for line in text.splitlines())
        lists[split] = frozenset(
            line.rsplit("/", 1)[-1].rsplit(".", 1)[0] for line in lines if line and not line.startswith("#")
        )
    return lists


def _gtzan_name(path: str) -> str | None:
    match = _GTZAN_NAME.match(Path(path).name)
    return f"{match['genre']}.{match['number']}" if match else None


def _fault_filtered_split(readable: pd.DataFrame) -> pd.Series:
    membership = {name: split for split, names in gtzan_filtered_lists().items() for name in names}
    split = readable["path"].map(lambda p: membership.get(_gtzan_name(p), EXCLUDED))
    if split.eq(EXCLUDED).all():
        raise DatasetError(
            "data.split: 'gtzan-fault-filtered' needs GTZAN clips (<genre>.NNNNN.wav), but no readable clip "
            "of the index is in the fault-filtered lists; use data.split: stratified for other data"
        )
    return split


def _stratified_folds(members: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """Fold number per clip; labels are dealt round-robin, continuing across labels, so folds
    differ in size by at most one clip and every label is spread over the folds."""
    fold = pd.Series(-1, index=members.index, dtype=int)
    next_fold = 0
    for label, group in members.groupby("label", sort=True):
        order = group.sort_values("clip_id", kind="mergesort").index.to_numpy()
        shuffled = order[_label_rng(seed, str(label), 1).permutation(len(order))]
        fold.loc[shuffled] = (next_fold + np.arange(len(shuffled))) % folds
        next_fold = (next_fold + len(shuffled)) % folds
    return fold


def assign_splits(index: pd.DataFrame, cfg: DataConfig, seed: int, folds: int = 1) -> pd.DataFrame:
    """Return ``index`` with a ``split`` column (train / valid / test / excluded), and ``fold`` if ``folds > 1``.

    Only readable clips (``status == "ok"``) are split; the others get ``"excluded"``. Folds are dealt over
    the clips that are not excluded; excluded ones get fold ``-1``.
    The result depends only on the clips, ``cfg`` and ``seed`` (no global random state).

    Raises
    ------
    DatasetError
        No readable clip, more folds than readable clips, or GTZAN's split asked for on other data.
    """
    result = index.copy()
    readable_mask = _readable(result)
    readable = result[readable_mask]
    if readable.empty:
        raise DatasetError(f"data.root: none of the {len(result)} indexed clips is readable; nothing to split")
    if cfg.split == "stratified":
        split = _stratified_split(readable, cfg, seed)
    elif cfg.split == "gtzan-fault-filtered":
        if folds > 1:
            # Folds are dealt clip by clip: they would put one artist's clips (GTZAN's blues.00000-00011 are all
            # John Lee Hooker) in several folds, undoing the artist-disjoint lists the split exists for.
            raise DatasetError(
                "evaluate.folds: k-fold cross-validation deals folds clip by clip, which would put one artist on "
                "both sides and undo data.split: gtzan-fault-filtered; use evaluate.folds: 1 with that split"
            )
        split = _fault_filtered_split(readable)
    else:
        raise DatasetError(f"data.split: unknown split {cfg.split!r} (stratified, gtzan-fault-filtered)")
    result["split"] = EXCLUDED
    result.loc[split.index, "split"] = split
    if folds > 1:
        # Folds cover the clips that take part in a split: readable, and not dropped by a fault filter.
        members = result[result["split"].ne(EXCLUDED)]
        if folds > len(members):
            raise DatasetError(
                f"evaluate.folds: {folds} folds need at least {folds} usable clips, got {len(members)}"
            )
        result["fold"] = -1
        result.loc[members.index, "fold"] = _stratified_folds(members, folds, seed)
        result["fold"] = result["fold"].astype(int)
    return result


def labels_missing_from(index: pd.DataFrame, split: str, labels=None) -> list:
    """The labels (``labels``, default every label of ``index``) without a clip of ``split`` in ``index``, sorted."""
    labels = set(index["label"]) if labels is None else set(labels)
    return sorted(labels - set(index.loc[index["split"].eq(split), "label"]), key=str)


def _check_every_label_trains(index: pd.DataFrame) -> None:
    """Every label that takes part in a split must have a training clip: a fixed split (the fault-filtered
    lists on a partial GTZAN copy) can leave a genre only in valid or test, and the model would then have an
    output it never learnt, scored as if it had."""
    untrained = labels_missing_from(index[index["split"].ne(EXCLUDED)], "train")
    if untrained:
        raise DatasetError(
            f"data.split: label(s) {', '.join(map(str, untrained))} have no training clip "
            "(their clips are all in valid/test); add clips or use data.split: stratified"
        )


def _check_two_labels(index: pd.DataFrame, cfg: DataConfig) -> None:
    """A classifier needs two genres: a folder of one (data.root pointed at ``genres/blues`` instead of
    ``genres/``) used to pass prepare and features and stop tune or train with 'n_classes must be >= 2'."""
    labels = sorted(map(str, index.loc[_readable(index) & index["split"].ne(EXCLUDED), "label"].unique()))
    if len(labels) < 2:
        raise DatasetError(
            f"data.root: {cfg.root} holds readable clips of one genre only ({', '.join(labels)}); a genre "
            "classifier needs at least two (expected <root>/<genre>/<files>, e.g. GTZAN's genres/ folder)"
        )


def _check_something_held_out(index: pd.DataFrame, cfg: DataConfig) -> None:
    """The prepare stage's split must hold clips out: with every clip training, tune finds no validation clip,
    train early-stops on its own loss and evaluate has nothing to test, each saying so stages later."""
    if cfg.split != "stratified" or index["split"].isin(["valid", "test"]).any():
        return
    most = int(index[_readable(index)].groupby("label").size().max())
    raise DatasetError(
        f"{cfg.root}: at most {most} readable clip{'s' if most != 1 else ''} per genre, and a genre needs 3 to "
        "give one to validation and one to test: nothing would be held out. Add clips (for the built-in corpus, "
        "corpus.clips_per_genre >= 3)"
    )


# --------------------------------------------------------------------------------------------------
# Files


def read_index(path: str | Path = "data/index.csv") -> pd.DataFrame:
    """Read an index written by :func:`run_prepare`, with the dtypes it was written with."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: index not found (run `genre-se prepare` first)")
    try:
        index = pd.read_csv(
            path,
            dtype={"clip_id": str, "path": str, "label": str, "status": str, "error": str, "split": str},
            keep_default_na=False,
            na_values={"duration": [""], "sample_rate": [""], "channels": [""]},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable index CSV ({exc})") from None
    missing = [c for c in ("clip_id", "path", "label", "status") if c not in index.columns]
    if missing:
        raise DatasetError(f"{path}: index lacks column(s) {', '.join(missing)}")
    for column in ("sample_rate", "channels"):
        if column in index.columns:
            index[column] = index[column].astype("Int64")
    return index


def run_prepare(
    params: Params,
    index_path: str | Path = "data/index.csv",
    errors_path: str | Path = "reports/prepare_errors.csv",
) -> pd.DataFrame:
    """The ``prepare`` stage: index ``data.root``, split it, write the index and the unreadable-files report.

    Both CSVs are written atomically. The errors report is written before splitting, so it exists even
    when no clip is readable.
    """
    index = index_dataset(params.data)
    unreadable = index.loc[index["status"].ne("ok"), ["path", "error"]]
    write_csv(errors_path, unreadable)
    index = assign_splits(index, params.data, params.seed, folds=params.evaluate.folds)
    _check_two_labels(index, params.data)
    _check_something_held_out(index, params.data)
    _check_every_label_trains(index)
    write_csv(index_path, index)
    return index
