"""Keep C libraries' own stderr chatter off the user's terminal.

libmpg123 ("Note: Illegal Audio-MPEG-Header"), TensorFlow's start-up banner and the LiteRT/MLIR
converter write straight to file descriptor 2, past Python's ``sys.stderr``. genre-se reports what went
wrong once, as a Python exception, so those lines are noise; where one of them is the only sign of a problem
(libmpg123 resynchronising mid-stream), :func:`native_stderr_captured` keeps it for the caller to read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

_LOCK = threading.RLock()


@contextlib.contextmanager
def _fd2_pointed_at(target) -> Iterator[bool]:
    """Point fd 2 at the open file ``target`` for the duration, under the lock (fd 2 is process-wide: writers to
    stderr take the lock too, :func:`stderr_message`, :class:`LockedStderr`). Yields False, changing nothing,
    where there is no real fd 2 (embedded interpreters, some test runners)."""
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            yield False
            return
        try:
            os.dup2(target.fileno(), 2)
            yield True
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration (process-wide, so under a lock)."""
    with open(os.devnull, "wb") as devnull, _fd2_pointed_at(devnull):
        yield


class CapturedStderr:
    """What C code wrote to fd 2 during :func:`native_stderr_captured` (``text`` is filled when it ends)."""

    def __init__(self) -> None:
        self.text = ""


@contextlib.contextmanager
def native_stderr_captured(limit: int = 65536) -> Iterator[CapturedStderr]:
    """Like :func:`native_stderr_silenced`, but keep what is written (its first ``limit`` bytes) instead of
    discarding it: libmpg123's notes are the only report of a stream it spliced (see audio.py). The text is
    read after fd 2 is restored, into the yielded object's ``text``; nothing reaches the terminal."""
    captured = CapturedStderr()
    try:
        sink = tempfile.TemporaryFile()
    except OSError:  # no writable temporary directory: silence only
        with native_stderr_silenced():
            yield captured
        return
    with sink:
        with _fd2_pointed_at(sink):
            yield captured
        sink.seek(0)
        captured.text = sink.read(limit).decode("utf-8", "replace")


class LockedStderr:
    """``sys.stderr`` whose writes wait for fd 2 to be pointed back (progress bars written from the main thread
    while the decoding thread silences or captures fd 2 would land in /dev/null or in the capture)."""

    def write(self, text: str) -> int:
        with _LOCK:
            return sys.stderr.write(text)

    def flush(self) -> None:
        with _LOCK:
            sys.stderr.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...: sys.stderr's
        return getattr(sys.stderr, name)


@contextlib.contextmanager
def stderr_message() -> Iterator[None]:
    """Hold while writing a message to stderr. fd 2 is silenced (or captured) process-wide, and the decoding
    thread does so while it opens the next file and reads an MP3: a failure reported meanwhile by the main thread
    would go to /dev/null."""
    with _LOCK:
        yield
