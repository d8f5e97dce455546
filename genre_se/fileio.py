"""Atomic writes: an output is either complete or absent, never half written.

Every file or directory genre-se produces goes through here: write to a temporary sibling, then rename
(``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import GenreSEError, OutputError


def check_replaceable(target: Path, marker: str, what: str, error: type[GenreSEError] = OutputError) -> None:
    """Refuse to replace ``target`` (a folder a writer deletes and writes anew) unless it is missing, empty, or
    holds ``marker``, the file that writer leaves: a mistyped output path must never delete a user's files."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise error(f"{target}: exists and is not a directory, so not a folder to write {what} in")
    if any(target.iterdir()) and not (target / marker).is_file():
        raise error(f"{target}: a non-empty folder but not {what}; refusing to replace it (no {marker}): choose "
                    "another output folder or remove it yourself")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it replaces ``path``, on error it is removed.

    Raises :class:`~genre_se.errors.OutputError` (naming ``path``) when the file cannot be placed there: its
    folder cannot be made or written, or ``path`` is a folder. Errors of the caller's own writing pass through.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    with _as_output_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        with _as_output_error(path):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _as_output_error(path: Path) -> Iterator[None]:
    """OSError of placing an output -> OutputError that names the output (not a temporary sibling)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from exc


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Fail early, before hours of work, where :func:`atomic_path` (or, ``folder``, :func:`atomic_dir` and
    files inside it) will not be able to place ``path``: the path is a folder (a file is wanted) or a file (a
    folder is wanted), or its nearest existing ancestor is not a writable folder. Creates nothing."""
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot write here ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write here (no permission in {ancestor})")
    return path


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json_object(path: str | Path, error: type[GenreSEError]) -> dict:
    """Read a JSON file that must hold an object; any failure is ``error`` naming the file, not a traceback."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: corrupt, not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: corrupt, expected a JSON object, got {type(obj).__name__}")
    return obj


def write_csv(path: str | Path, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically (no index column)."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it takes the place of ``path`` (old one removed)."""
    path = Path(path)
    with _as_output_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{_writer_id()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the previous output back rather than leave nothing
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _temp_prefix(path: Path) -> str:
    """Temporary siblings carry the writer's PID and host, so a later writer can tell a dead one's leftovers."""
    return f".{path.name}.tmp-{_writer_id()}-"


def _writer_id() -> str:
    """``PID@host``: a PID means something only on its own machine (a folder may be shared over NFS)."""
    return f"{os.getpid()}@{_HOST}"


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "localhost"


def _sweep_stale(path: Path) -> None:
    """Remove the temporary siblings of ``path`` that a killed writer left (SIGKILL or power loss: no
    ``finally`` ran); each could be as large as the output. A previous output moved aside (``.old-PID``) by a
    writer killed between its two renames is put back if ``path`` is missing. Live writers' siblings stay."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-(\d+)@(\w+)(-|$)")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match.group(3) != _HOST or _process_alive(int(match.group(2))):
            continue  # not ours, another machine's (its PID means nothing here), or a live writer's
        with contextlib.suppress(OSError):
            if match.group(1) == "old" and not path.exists() and not path.is_symlink():
                os.replace(entry, path)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere signal 0 is not a probe: keep everything
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # EPERM: someone else's; a PID out of range: not ours to judge
        return True
    return True


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file, read in 1 MiB pieces (what ties an export or statistics to its ``model.keras``)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
