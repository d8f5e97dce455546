"""The feature store: every clip's log-mel segments in one memory-mappable float16 array.

Layout of ``data/features/``::

    segments.npy   (n_segments, n_mels, segment_frames, 1) float16, opened with mmap_mode="r"
    segments.csv   one row per segment: segment, clip_id, label, label_index, split, [fold], start_frame, pad_frames
    augmented.csv  (only with ``train.waveform_augment``) one row per segment of the clips' augmented copies,
                   stored after the originals in segments.npy: segment, clip_id, augment, amount, label_index, ...
    clip_stats.npz (only with ``model.fusion: svm``) the baseline's statistics of every clip's windows
                   (``stats``, ``clip_id``), for the fusion SVM (:mod:`genre_se.fusion`)
    meta.json      store version, the FeatureConfig, the label order, shape

``table`` lists the original segments only, so everything that scores, splits or calibrates sees the
originals; training adds the copies of its own clips (:meth:`FeatureStore.copies_of`).

The `features` stage computes clips in worker processes and writes each clip's segments to a shard in a
cache directory as soon as it is done, so an interrupted run resumes where it stopped. The store itself is
assembled from the shards and swapped in atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .config import FeatureConfig, Params
from .errors import DatasetError, GenreSEError
from .fileio import atomic_dir

STORE_VERSION = 1
STORE_DTYPE = np.float16
CLIP_STATS_FILE = "clip_stats.npz"


def features_key(cfg: FeatureConfig) -> str:
    """A short hash of everything that changes feature values (not ``workers``)."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k != "workers"}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def _shard_name(clip_id: str, path: str, augment: str = "", amount: float = 0.0) -> str:
    """The cached shard of one clip (or copy). The file's identity, size, modification and change times are part
    of the name: a run interrupted, then resumed after the audio at that path changed (corpus regenerated, a file
    fixed), must compute it again rather than store the old audio's segments, even when the new file has the old
    one's size and modification time (``rsync -a``, ``cp -p``, ``touch -r``: only the inode and ctime tell)."""
    key = f"{clip_id}\0{path}\0{_file_stamp(path)}" + (f"\0{augment}\0{amount!r}" if augment else "")
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".npz"


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:  # missing or unreadable: the worker reports it
        return ""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _compute_shard(task: tuple) -> tuple[str, str, int, str | None]:
    """Worker: segments of one clip (or of one augmented copy of it) -> shard file.

    Returns (clip_id, augment, n_segments, error or None); ``augment`` is "" for the original.
    """
    from .features import extract_segments

    clip_id, path, shard, cfg_dict, augment, amount, with_stats = task
    cfg = FeatureConfig(**cfg_dict)
    stats = {}
    try:
        if with_stats:  # model.fusion: the SVM's statistics of the clip's windows, kept in the same shard
            from .fusion import STATS_KEY, window_statistics

            stats[STATS_KEY] = window_statistics(path)
        if augment:
            from .audio import load_audio
            from .waveform_augment import augment_waveform

            source = augment_waveform(load_audio(path, cfg.sample_rate), cfg.sample_rate, augment, amount)
        else:
            source = path
        segs = extract_segments(source, cfg)
    except GenreSEError as exc:
        return clip_id, augment, 0, str(exc)
    except Exception as exc:  # an augmentation's library failing on one clip: that copy is skipped, reported
        if not augment:
            raise
        return clip_id, augment, 0, f"{augment} copy: {type(exc).__name__}: {exc}"
    tmp = f"{shard}.{os.getpid()}.tmp.npz"
    np.savez(
        tmp,
        data=segs.data.astype(STORE_DTYPE),
        start_frames=segs.start_frames,
        pad_frames=segs.pad_frames,
        **stats,
    )
    os.replace(tmp, shard)
    return clip_id, augment, len(segs), None


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, be killed when the stage's process dies. A SIGKILL of the stage (kill -9,
    the OOM killer, a killed `dvc repro`) left its workers waiting for work forever, each holding its memory."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the stage died before the call (orphans go to PID 1 or a subreaper)
        os._exit(1)


#: Columns of segments.csv / augmented.csv read as text: a label or clip id such as "7" must stay a string.
TEXT_COLUMNS = {"clip_id": str, "label": str, "split": str, "augment": str}


@dataclass
class FeatureStore:
    """A read-only view of the store: ``segments`` is memory-mapped, nothing is loaded up front."""

    root: Path
    segments: np.ndarray
    table: pd.DataFrame
    labels: list[str]
    features: FeatureConfig
    augmented: pd.DataFrame | None = None  # segments of the augmented copies (augmented.csv), or None
    #: sha1 of the segment values and tables (None for stores written before it was recorded): an interrupted
    #: training or search resumes only on the very data it started on
    content_digest: str | None = None

    @classmethod
    def open(cls, root: str | Path = "data/features") -> "FeatureStore":
        """Open the store at ``root``, checked against itself: the tables must describe the array row by row.

        Raises
        ------
        DatasetError
            No store, or a damaged one (a file missing, truncated, or not matching the others); the message names
            the file.
        """
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.exists():
            raise DatasetError(f"{root}: no feature store here (run `genre-se features` first)")
        from .fileio import read_json_object

        meta = read_json_object(meta_path, DatasetError)
        if meta.get("store_version") != STORE_VERSION:
            raise DatasetError(
                f"{root}: feature store version {meta.get('store_version')!r}, expected {STORE_VERSION}; "
                "run `genre-se features` again"
            )
        try:
            labels = [str(label) for label in meta["labels"]]
            features = FeatureConfig(**meta["features"])
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{meta_path}: corrupt feature store metadata ({type(exc).__name__}: {exc}); "
                               "run `genre-se features` again") from None
        current = root / "segments.npy"
        try:
            segments = np.load(current, mmap_mode="r")
            current = root / "segments.csv"
            table = pd.read_csv(current, keep_default_na=False, dtype=TEXT_COLUMNS)
            current = root / "augmented.csv"
            augmented = pd.read_csv(current, keep_default_na=False, dtype=TEXT_COLUMNS) if current.exists() else None
        except (OSError, ValueError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DatasetError(f"{current}: corrupt feature store ({exc})") from None
        n_copies = 0 if augmented is None else len(augmented)
        if len(table) + n_copies != len(segments):
            raise DatasetError(f"{root}: segments.csv and augmented.csv have {len(table) + n_copies} rows but "
                               f"segments.npy {len(segments)}")
        expected = (features.n_mels, features.segment_frames, 1)
        if segments.ndim != 4 or tuple(segments.shape[1:]) != expected:
            raise DatasetError(f"{root / 'segments.npy'}: segments of shape {tuple(segments.shape[1:])}, but "
                               f"meta.json's features give {expected}; run `genre-se features` again")
        _check_table(root / "segments.csv", table, 0, labels, ("clip_id", "label", "split", "start_frame"))
        if augmented is not None:
            _check_table(root / "augmented.csv", augmented, len(table), labels, ("clip_id", "augment", "label"))
        return cls(root, segments, table, labels, features, augmented, meta.get("content_sha1"))

    @property
    def label_indices(self) -> np.ndarray:
        """The label index of every row of ``segments``: originals, then the augmented copies."""
        labels = self.table["label_index"].to_numpy(dtype=np.int32)
        if self.augmented is None:
            return labels
        return np.concatenate([labels, self.augmented["label_index"].to_numpy(dtype=np.int32)])

    def copies_of(self, rows: np.ndarray, kinds=None) -> np.ndarray:
        """Rows of the augmented copies (of the ``kinds`` given; all when None) of the clips that ``rows``
        (original rows) belong to: what training adds to its own clips, never to anyone else's."""
        if self.augmented is None or len(self.augmented) == 0 or (kinds is not None and not len(kinds)):
            return np.zeros(0, dtype=np.int64)
        clips = set(self.table["clip_id"].to_numpy()[np.asarray(rows, dtype=np.int64)])
        mask = self.augmented["clip_id"].isin(clips).to_numpy()
        if kinds is not None:
            mask &= self.augmented["augment"].isin(list(kinds)).to_numpy()
        return self.augmented["segment"].to_numpy(dtype=np.int64)[mask]

    def clip_stats(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The baseline's statistics of every clip's windows, the clip each row belongs to and the version of
        their definition (``genre_se.fusion.STATS_VERSION``; 1 before it was recorded), for a store built with
        ``clip_stats``, i.e. ``model.fusion: svm``.

        Raises
        ------
        DatasetError
            The store has none, or the file is damaged.
        """
        path = self.root / CLIP_STATS_FILE
        if not path.is_file():
            raise DatasetError(f"{self.root}: no clip statistics for the SVM of model.fusion: svm (run "
                               "`genre-se features` again with model.fusion: svm)")
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["version"]) if "version" in z.files else 1
                return z["stats"].astype(np.float64), z["clip_id"].astype(str), version
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: corrupt clip statistics ({exc})") from None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.segments.shape[1:])

    def rows(self, split: str | None = None, fold: int | None = None, exclude_fold: int | None = None) -> np.ndarray:
        """Indices of the segments of one split (and/or fold), in store order."""
        mask = np.ones(len(self.table), dtype=bool)
        if split is not None:
            mask &= (self.table["split"] == split).to_numpy()
        if fold is not None:
            mask &= (self.table["fold"] == fold).to_numpy()
        if exclude_fold is not None:
            mask &= (self.table["fold"] != exclude_fold).to_numpy()
        return np.flatnonzero(mask)


def _check_table(path: Path, table: pd.DataFrame, first: int, labels: list[str], columns: tuple) -> None:
    """A store table must list its segments.npy rows in order from ``first`` (the ``segment`` column), each with a
    label of the store and its index: an edited, reordered or swapped table would pair segments with the wrong
    labels or clips without any error."""
    missing = sorted({"segment", "label_index", *columns} - set(table.columns))
    if missing:
        raise DatasetError(f"{path}: corrupt feature store table, no column(s) {', '.join(missing)}")
    try:
        segment = table["segment"].to_numpy(dtype=np.int64)
        label_index = table["label_index"].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt feature store table ({exc})") from None
    bad = np.flatnonzero(segment != np.arange(first, first + len(table)))
    if bad.size:
        raise DatasetError(f"{path}: corrupt feature store table, row {bad[0] + 2} lists segment {segment[bad[0]]} "
                           f"where segments.npy row {first + bad[0]} belongs; run `genre-se features` again")
    known = np.asarray(labels, dtype=object)
    in_range = (label_index >= 0) & (label_index < len(labels))
    wrong = ~in_range
    wrong[in_range] = known[label_index[in_range]] != table["label"].to_numpy(dtype=object)[in_range]
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise DatasetError(f"{path}: corrupt feature store table, row {row + 2} has label {table['label'].iloc[row]!r} "
                           f"with label_index {label_index[row]} (meta.json's labels: {labels})")
    if "split" in columns:
        splits = set(table["split"]) - {"train", "valid", "test"}
        if splits:
            raise DatasetError(f"{path}: corrupt feature store table, unknown split(s) {sorted(splits)}")


def build_store(
    index: pd.DataFrame,
    cfg: FeatureConfig,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    progress: Callable | None = None,
    augment: list | tuple = (),
    seed: int = 0,
    clip_stats: bool = False,
    errors_path: str | Path | None = None,
    every_label_trains: bool = False,
) -> tuple[FeatureStore, pd.DataFrame]:
    """Compute (or resume) every usable clip's segments and assemble the store.

    Parameters
    ----------
    index : DataFrame
        The dataset index (``genre-se prepare``): clip_id, path, label, status, split[, fold].
    augment : list of str
        Waveform augmentations (:mod:`genre_se.waveform_augment`): one copy of every clip per kind, its
        random amount drawn from ``seed``, the clip and the kind. Every clip gets them, whatever its split:
        a clip trains in some fold of a cross-validation; only training ever reads them.
    progress : callable, optional
        Wraps an iterable for a progress bar (e.g. ``functools.partial(tqdm, total=n)``).
    clip_stats : bool
        Also store the baseline's statistics of every clip's windows (``clip_stats.npz``), which the SVM of
        ``model.fusion: svm`` trains on (:mod:`genre_se.fusion`).
    errors_path : path, optional
        Where to write the failures table (CSV) as soon as every clip is done, before the store is assembled: the
        report names the files even when the build then stops because too few of them could be decoded.
    every_label_trains : bool
        Refuse a store in which some label has no decodable clip in the train split (the features stage: all its
        training clips failed to decode, and the model would get an output it never learns).

    Raises
    ------
    DatasetError
        No clip could be decoded, or (``every_label_trains``) a label lost every training clip.

    Returns
    -------
    store, failures
        The opened store and a table (clip_id, path, error) of clips that could not be decoded.
    """
    from .fileio import check_replaceable

    # before any work: the store replaces the whole folder
    check_replaceable(Path(out_dir), "meta.json", "a feature store", DatasetError)
    usable = index[(index["status"] == "ok") & (index["split"] != "excluded")].reset_index(drop=True)
    if usable.empty:
        raise DatasetError("the index has no readable clips to compute features for")
    labels = sorted(usable["label"].unique())
    cache = Path(cache_dir) / features_key(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    from .waveform_augment import copy_amount

    shards = {row.clip_id: str(cache / _shard_name(row.clip_id, row.path)) for row in usable.itertuples()}
    copy_tasks = {}  # (clip_id, kind) -> (shard, amount)
    for row in usable.itertuples():
        for kind in augment:
            amount = copy_amount(seed, row.clip_id, kind)
            copy_tasks[(row.clip_id, kind)] = (str(cache / _shard_name(row.clip_id, row.path, kind, amount)), amount)
    paths = dict(zip(usable["clip_id"], usable["path"]))
    todo = [
        (row.clip_id, row.path, shards[row.clip_id], cfg.to_dict(), "", 0.0, clip_stats)
        for row in usable.itertuples()
        if not Path(shards[row.clip_id]).exists() or (clip_stats and not _has_stats(shards[row.clip_id]))
    ] + [
        (clip_id, paths[clip_id], shard, cfg.to_dict(), kind, amount, False)
        for (clip_id, kind), (shard, amount) in copy_tasks.items()
        if not Path(shard).exists()
    ]
    errors: dict[str, str] = {}
    copy_errors: dict[tuple[str, str], str] = {}
    n_workers = max(1, min(workers or cfg.workers, len(todo) or 1))
    if todo:
        from .features import warm_up

        warm_up(cfg)  # forked workers inherit librosa and the filter bank instead of each building them
        if n_workers == 1:
            results = map(_compute_shard, todo)
        else:
            pool = ProcessPoolExecutor(n_workers, mp_context=get_context("fork" if os.name == "posix" else "spawn"),
                                       initializer=_die_with_parent, initargs=(os.getpid(),))
            results = pool.map(_compute_shard, todo, chunksize=1)
        if progress is not None:
            results = progress(results, total=len(todo))
        try:
            for clip_id, kind, _, error in results:
                if error and kind:
                    copy_errors[(clip_id, kind)] = error
                elif error:
                    errors[clip_id] = error
        finally:
            if n_workers > 1:
                pool.shutdown(cancel_futures=True)

    ok = usable[~usable["clip_id"].isin(errors)].reset_index(drop=True)
    failures = usable[usable["clip_id"].isin(errors)][["clip_id", "path"]].assign(
        error=lambda f: f["clip_id"].map(errors)
    )
    copy_failures = pd.DataFrame(
        [{"clip_id": c, "path": paths[c], "error": e} for (c, _), e in copy_errors.items() if c not in errors],
        columns=["clip_id", "path", "error"],
    )
    copies = [
        (clip_id, kind, amount, shard)
        for (clip_id, kind), (shard, amount) in copy_tasks.items()
        if clip_id not in errors and (clip_id, kind) not in copy_errors
    ]
    failures = pd.concat([failures, copy_failures], ignore_index=True) if len(copy_failures) else failures
    report = ""
    if errors_path is not None:
        from .fileio import write_csv

        write_csv(errors_path, failures.reset_index(drop=True))
        report = f" (see {errors_path})"
    if ok.empty:
        first = next(iter(errors.values()), "")
        raise DatasetError(f"none of the {len(usable)} clips of the index could be decoded{report}; the first: {first}")
    if every_label_trains:
        from .datasets import labels_missing_from

        untrained = labels_missing_from(ok, "train", labels)
        if untrained:
            raise DatasetError(
                f"label(s) {', '.join(map(str, untrained))} have no training clip that could be decoded{report}; "
                "fix or replace those files, or remove the label's folder"
            )
    _assemble(ok, shards, labels, cfg, out_dir, copies, clip_stats)
    shutil.rmtree(cache, ignore_errors=True)
    return FeatureStore.open(out_dir), failures.reset_index(drop=True)


def _has_stats(shard: str) -> bool:
    """Whether a cached shard holds the clip's window statistics (an older one, or one of a run without
    ``model.fusion``, does not: it is computed again)."""
    from .fusion import STATS_KEY

    try:
        with np.load(shard) as z:
            return STATS_KEY in z.files
    except (OSError, ValueError):
        return False


def _assemble(clips: pd.DataFrame, shards: dict, labels: list[str], cfg: FeatureConfig, out_dir,
              copies: list | None = None, clip_stats: bool = False) -> None:
    """Concatenate shards into segments.npy (memory-mapped, written in place) plus the tables; the
    augmented ``copies`` (clip_id, kind, amount, shard) go after the originals, listed in augmented.csv."""
    if clips.empty:
        raise DatasetError("no clip could be decoded; nothing to store")
    copies = copies or []
    counts = []
    for clip_id in clips["clip_id"]:
        with np.load(shards[clip_id]) as z:
            counts.append(len(z["start_frames"]))
    copy_counts = []
    for *_, shard in copies:
        with np.load(shard) as z:
            copy_counts.append(len(z["start_frames"]))
    total = int(sum(counts) + sum(copy_counts))
    shape = (total, cfg.n_mels, cfg.segment_frames, 1)
    label_index = {label: i for i, label in enumerate(labels)}
    digest = hashlib.sha1()  # of the values and tables: what a resumed training or search must have trained on
    with atomic_dir(out_dir) as tmp:
        array = np.lib.format.open_memmap(tmp / "segments.npy", mode="w+", dtype=STORE_DTYPE, shape=shape)
        rows = []
        pos = 0
        for clip, count in zip(clips.itertuples(), counts):
            with np.load(shards[clip.clip_id]) as z:
                array[pos : pos + count] = z["data"]
                digest.update(np.ascontiguousarray(array[pos : pos + count]).tobytes())
                for start, pad in zip(z["start_frames"], z["pad_frames"]):
                    row = {
                        "segment": pos,
                        "clip_id": clip.clip_id,
                        "label": clip.label,
                        "label_index": label_index[clip.label],
                        "split": clip.split,
                        "start_frame": int(start),
                        "pad_frames": int(pad),
                    }
                    if "fold" in clips.columns:
                        row["fold"] = int(clip.fold)
                    rows.append(row)
                    pos += 1
        label_of = dict(zip(clips["clip_id"], clips["label"]))
        copy_rows = []
        for (clip_id, kind, amount, shard), count in zip(copies, copy_counts):
            with np.load(shard) as z:
                array[pos : pos + count] = z["data"]
                digest.update(np.ascontiguousarray(array[pos : pos + count]).tobytes())
                for start, pad in zip(z["start_frames"], z["pad_frames"]):
                    copy_rows.append({"segment": pos, "clip_id": clip_id, "augment": kind, "amount": amount,
                                      "label": label_of[clip_id], "label_index": label_index[label_of[clip_id]],
                                      "start_frame": int(start), "pad_frames": int(pad)})
                    pos += 1
        array.flush()
        del array
        pd.DataFrame(rows).to_csv(tmp / "segments.csv", index=False)
        digest.update((tmp / "segments.csv").read_bytes())
        if copies:
            pd.DataFrame(copy_rows).to_csv(tmp / "augmented.csv", index=False)
            digest.update((tmp / "augmented.csv").read_bytes())
        if clip_stats:
            from .fusion import STATS_KEY, STATS_VERSION

            stats, owners = [], []
            for clip_id in clips["clip_id"]:
                with np.load(shards[clip_id]) as z:
                    stats.append(z[STATS_KEY])
                owners += [clip_id] * len(stats[-1])
            with open(tmp / CLIP_STATS_FILE, "wb") as handle:
                np.savez(handle, stats=np.concatenate(stats), clip_id=np.array(owners, dtype=str),
                         version=np.array(STATS_VERSION))
        meta = {
            "store_version": STORE_VERSION,
            "features": cfg.to_dict(),
            "features_key": features_key(cfg),
            "labels": labels,
            "shape": list(shape),
            "dtype": np.dtype(STORE_DTYPE).name,
            "n_clips": int(len(clips)),
            "n_augmented_segments": len(copy_rows),
            "clip_stats": bool(clip_stats),
            "content_sha1": digest.hexdigest(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def run_features(
    params: Params,
    index_path: str | Path = "data/index.csv",
    out_dir: str | Path = "data/features",
    cache_dir: str | Path = "data/features-cache",
    errors_path: str | Path = "reports/features_errors.csv",
    progress: Callable | None = None,
) -> tuple[FeatureStore, pd.DataFrame]:
    """The `genre-se features` stage: index -> feature store, plus a CSV of clips that failed to decode."""
    from .datasets import read_index
    from .features import check_mel_bands

    check_mel_bands(params.features)  # before any audio is decoded
    index_path = Path(index_path)
    if not index_path.exists():
        raise DatasetError(f"{index_path}: no dataset index (run `genre-se prepare` first)")
    index = read_index(index_path)  # labels and clip ids as text: genre folders may be named 0, 1, 2
    missing = {"clip_id", "path", "label", "status", "split"} - set(index.columns)
    if missing:
        raise DatasetError(f"{index_path}: index lacks columns {sorted(missing)}")
    store, failures = build_store(index, params.features, out_dir, cache_dir, progress=progress,
                                  augment=params.train.waveform_augment, seed=params.seed,
                                  clip_stats=params.model.fusion == "svm", errors_path=errors_path,
                                  every_label_trains=True)
    return store, failures
