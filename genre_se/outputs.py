"""Results as the user gets them: predictions as table / JSON / CSV text, embeddings as npy / npz / parquet.

The far end of the data flow (file -> audio -> features -> model -> :mod:`genre_se.inference` -> here). These
helpers return text or write files atomically and never print; the CLI decides where text goes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ModelError
from .inference import POOLS
from .results import Embedding, Failure, Prediction, check_top_k

__all__ = ["EMBED_FORMATS", "PredictionFormatter", "embedding_format", "embedding_table", "write_embeddings"]

EMBED_FORMATS = ("npy", "npz", "parquet")


# --------------------------------------------------------------------------------------------------
# Output: predictions as table / JSON / CSV text


class PredictionFormatter:
    """Turns predictions into text as they arrive (table and CSV stream; JSON is one document at the end).

    Parameters
    ----------
    fmt : {"table", "json", "csv"}
    top_k : int
        Genres shown per file; at most ``n_classes`` (so every CSV row has the header's columns).
    timeline : bool
        Also show each segment's genre with its start/end seconds.
    provenance : dict, optional
        Recorded in the JSON document (which model produced it).
    n_classes : int, optional
        The model's number of genres (``len(classifier.labels)``).
    """

    FORMATS = ("table", "json", "csv")

    def __init__(self, fmt: str = "table", top_k: int = 3, timeline: bool = False, provenance: dict | None = None,
                 n_classes: int | None = None):
        if fmt not in self.FORMATS:
            raise ModelError(f"output format must be one of {', '.join(self.FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        top_k = check_top_k(top_k)
        self.top_k = top_k if n_classes is None else min(top_k, int(n_classes))
        self.timeline = timeline
        self.provenance = provenance or {}
        self._records: list[dict] = []
        self._errors: list[dict] = []

    def begin(self) -> str:
        """Text before the first prediction (the CSV header)."""
        if self.fmt != "csv":
            return ""
        if self.timeline:
            return _csv_line(["path", "segment", "start", "end", "genre", "probability", "silent"])
        ranks = [[f"genre_{r}", f"probability_{r}"] for r in range(1, self.top_k + 1)]
        # short / all_silent / distance say why a row is uncertain, as the table's reason and the JSON do;
        # truncated / declared_duration: the file is cut short, answered from what decodes
        return _csv_line(["path", "duration", "n_segments", *[c for pair in ranks for c in pair], "uncertain",
                          "unfamiliar", "short", "all_silent", "distance", "truncated", "declared_duration"])

    def add(self, prediction: Prediction) -> str:
        """Text for one prediction (empty for JSON, which is written by :meth:`end`)."""
        if self.fmt == "json":
            self._records.append(prediction.to_dict(self.top_k, self.timeline))
            return ""
        if self.fmt == "csv":
            return self._csv(prediction)
        return self._table(prediction)

    def add_failure(self, failure: Failure) -> str:
        """Failures are listed in the JSON document only (the CLI reports them on stderr)."""
        self._errors.append({"path": failure.path, "error": failure.message})
        return ""

    def end(self) -> str:
        """Text after the last prediction (the whole JSON document)."""
        if self.fmt != "json":
            return ""
        document = {"model": self.provenance, "predictions": self._records, "errors": self._errors}
        return json.dumps(document, indent=2) + "\n"

    def _csv(self, prediction: Prediction) -> str:
        if self.timeline:
            return "".join(
                _csv_line([_shown(prediction.path), i, f"{row['start']:.3f}", f"{row['end']:.3f}", row["genre"],
                           f"{row['probability']:.6f}", _flag(row["silent"])])
                for i, row in enumerate(prediction.timeline())
            )
        cells = [_shown(prediction.path), f"{prediction.duration:.3f}", prediction.n_segments]
        for genre, probability in prediction.top(self.top_k):
            cells += [genre, f"{probability:.6f}"]
        measured = prediction.distance is not None  # "": no familiarity statistics in the bundle
        declared = prediction.declared_duration  # "": not cut short
        return _csv_line([*cells, _flag(prediction.uncertain), _flag(prediction.unfamiliar) if measured else "",
                          _flag(prediction.short), _flag(prediction.all_silent),
                          f"{prediction.distance:.3f}" if measured else "",  # as the JSON rounds it
                          _flag(prediction.truncated), f"{declared:.3f}" if declared is not None else ""])

    def _table(self, prediction: Prediction) -> str:
        top = prediction.top(self.top_k)
        width = max(len(g) for g, _ in top)
        lines = [f"{_shown(prediction.path)}  ({prediction.duration:.1f} s, {_segments_note(prediction)})"]
        lines += [f"  {rank}. {genre:<{width}}  {p:.3f}" for rank, (genre, p) in enumerate(top, start=1)]
        if prediction.uncertain:  # the answer is a guess: said on the top line, the top-k stays
            lines[1] += f"  (uncertain{_uncertain_reason(prediction)})"
        if prediction.truncated:  # answered from what is there, but the user should know the file is partial
            lines.append(f"  {_cut_short_note(prediction)}")
        if self.timeline:
            lines.append("  timeline:")
            lines += [
                f"    {row['start']:8.2f} - {row['end']:8.2f} s  {row['genre']:<{width}}  {row['probability']:.3f}"
                + ("  silent" if row["silent"] else "")
                for row in prediction.timeline()
            ]
        return "\n".join(lines) + "\n"


def _flag(value) -> str:
    return "true" if value else "false"


def _shown(path: str | None) -> str:
    return "<array>" if path is None else _spelt(path)


def _spelt(path: str) -> str:
    """A file name as UTF-8 text can hold it: a name that is not UTF-8 (surrogate escapes, from an old Latin-1
    archive) is spelt as the error messages spell it (``caf\\udce9.flac``); UTF-8 files and Arrow refuse it."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _uncertain_reason(prediction: Prediction) -> str:
    """Why, when the cause is known: a padded blip (or silence) is far from the training data because it is mostly
    padding (or has no music), so those reasons come first."""
    if prediction.short:
        return ": shorter than one segment"
    if prediction.all_silent:
        return ": near-silent throughout"
    if prediction.unfamiliar:
        return ": unlike the training recordings"
    return ""


def _cut_short_note(prediction: Prediction) -> str:
    """"cut short: the header declares 600.0 s, 226.8 s decode": a partial download, answered from what is there
    (not a failure: the exit status stays 0)."""
    return (f"cut short: the header declares {prediction.declared_duration:.1f} s, {prediction.duration:.1f} s "
            "decode (answered from what is there)")


def _segments_note(prediction: Prediction) -> str:
    """"24 of 240 segments, 3 silent": what the file's distribution was computed from."""
    n, total = prediction.n_segments, prediction.n_segments_in_file
    note = f"{n} of {total} segments" if total is not None and total != n else f"{n} segment{'s' * (n != 1)}"
    if prediction.short:
        note += ", padded: shorter than one segment"
    n_silent = int(prediction.silent.sum())
    if prediction.all_silent:
        note += ", all near-silent (all used)"
    elif n_silent:
        note += f", {n_silent} silent (left out)"
    return note


def _csv_line(cells: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Output: embeddings as npy (folder) / npz / parquet


def embedding_table(embeddings: Sequence[Embedding], pool: str) -> tuple[dict, np.ndarray]:
    """Row descriptions and the (n_rows, dim) float32 matrix: one row per file (mean) or per segment (none)."""
    if pool not in POOLS:
        raise ModelError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool == "mean":
        columns = {
            "path": [_path_cell(e.path) for e in embeddings],
            "duration": np.array([e.duration for e in embeddings], dtype=np.float64),
            "n_segments": np.array([e.n_segments for e in embeddings], dtype=np.int64),
            # the pooled vector leaves the silent segments out (all used when all are silent), as predict does
            "silent_segments": np.array([int(e.silent.sum()) for e in embeddings], dtype=np.int64),
            "all_silent": np.array([e.all_silent for e in embeddings], dtype=bool),
            "short": np.array([e.short for e in embeddings], dtype=bool),
            # cut short: the header declares more than decodes (declared_duration NaN where not)
            "truncated": np.array([e.truncated for e in embeddings], dtype=bool),
            "declared_duration": np.array([np.nan if e.declared_duration is None else e.declared_duration
                                           for e in embeddings], dtype=np.float64),
        }
        return columns, np.stack([e.pooled for e in embeddings]).astype(np.float32)
    columns = {
        "path": [_path_cell(e.path) for e in embeddings for _ in range(e.n_segments)],
        "segment": np.concatenate([np.arange(e.n_segments) for e in embeddings]).astype(np.int64),
        "start": np.concatenate([e.segment_starts for e in embeddings]).astype(np.float64),
        "end": np.concatenate([e.segment_ends for e in embeddings]).astype(np.float64),
        "silent": np.concatenate([e.silent for e in embeddings]).astype(bool),
    }
    return columns, np.concatenate([e.segments for e in embeddings]).astype(np.float32)


def _path_cell(path: str | None) -> str | None:
    return None if path is None else _spelt(path)


def embedding_format(output: str | os.PathLike | None, fmt: str | None) -> tuple[Path, str]:
    """Resolve the output path and format: the format from the suffix when not given, npy meaning a folder.

    Without ``fmt``, an output whose suffix names no format (``vectors.csv``) is refused rather than made a
    folder of that name; ``fmt="npy"`` writes into any folder name.
    """
    suffix_formats = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
    if fmt is None and output is not None:
        suffix = Path(output).suffix.lower()
        if suffix and suffix not in suffix_formats and not Path(output).is_dir():
            raise ModelError(f"{output}: no embedding format is written as {suffix!r}; name the file .npz or "
                             f".parquet, or give a folder with --format npy")
        fmt = suffix_formats.get(suffix, "npy")
    elif fmt is None:
        fmt = "npz"
    if fmt not in EMBED_FORMATS:
        raise ModelError(f"embedding format must be one of {', '.join(EMBED_FORMATS)}, got {fmt!r}")
    default = {"npy": "embeddings", "npz": "embeddings.npz", "parquet": "embeddings.parquet"}[fmt]
    path = Path(default if output is None else output)
    if fmt != "npy" and path.is_dir():
        path = path / default
    return path, fmt


def write_embeddings(
    embeddings: Sequence[Embedding],
    output: str | os.PathLike | None,
    *,
    fmt: str | None = None,
    pool: str = "mean",
    provenance: dict | None = None,
) -> Path:
    """Write embeddings so numpy/pandas can load them, with the bundle and feature parameters recorded.

    Layouts (rows are files for ``pool="mean"``, segments with start/end seconds for ``pool="none"``):

    * ``npy``: a folder with ``embeddings.npy`` (n_rows, dim), ``rows.csv`` (the row descriptions) and
      ``metadata.json``;
    * ``npz``: one file with arrays ``embeddings``, the row columns and ``metadata`` (a JSON string);
      ``np.load(f)`` reads it without pickle;
    * ``parquet``: one table, row columns plus ``embedding`` (a list of float32); the metadata is in
      ``pd.read_parquet(f).attrs["genre_se"]``.

    Every file is written atomically. Returns the path written (the folder for npy).
    """
    from .fileio import _jsonable, atomic_path

    if not embeddings:
        raise ModelError("no embeddings to write: no input file could be processed")
    path, fmt = embedding_format(output, fmt)
    columns, matrix = embedding_table(embeddings, pool)
    metadata = {**(provenance or {}), "pool": pool, "rows": "files" if pool == "mean" else "segments",
                "embedding_layer": "embedding", "embedding_dim": int(matrix.shape[1])}
    if fmt == "npy":
        if path.exists() and not path.is_dir():
            raise ModelError(f"{path}: exists and is not a folder; npy embeddings are written into a folder")
        import pandas as pd

        # all three written before any replaces its predecessor: a failure (disk full) mid-way leaves the
        # previous folder whole, never a new matrix beside rows that no longer describe it
        with atomic_path(path / "embeddings.npy", suffix=".npy") as npy, \
                atomic_path(path / "rows.csv", suffix=".csv") as rows, \
                atomic_path(path / "metadata.json", suffix=".json") as meta:
            np.save(npy, matrix)
            pd.DataFrame(columns).to_csv(rows, index=False)
            meta.write_text(json.dumps(metadata, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    elif fmt == "npz":
        arrays = {name: np.asarray(values, dtype=str if name == "path" else None) for name, values in columns.items()}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, embeddings=matrix, metadata=np.array(json.dumps(metadata)), **arrays)
    else:
        import pandas as pd

        frame = pd.DataFrame(columns)
        frame["embedding"] = list(matrix)
        frame.attrs["genre_se"] = metadata
        with atomic_path(path, suffix=".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    return path
