"""Keep C libraries' own stderr chatter off the user's terminal.

libmpg123 ("Note: Illegal Audio-MPEG-Header"), TensorFlow's start-up banner and the LiteRT/MLIR
converter write straight to file descriptor 2, past Python's ``sys.stderr``. genre-se reports what went
wrong once, as a Python exception, so those lines are noise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator

_LOCK = threading.RLock()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration (process-wide, so held briefly and under a lock)."""
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real fd 2 (embedded interpreters, some test runners)
            yield
            return
        try:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def stderr_message() -> Iterator[None]:
    """Hold while writing a message to stderr. fd 2 is silenced process-wide, and the decoding thread does
    so while it opens the next file: a failure reported meanwhile by the main thread would go to /dev/null."""
    with _LOCK:
        yield
