"""Ctrl-C that is not lost between trainings.

Python prints and drops an exception raised inside a weakref callback or ``__del__``, and
``keras.backend.clear_session()``, called between trials, folds and runs, runs many of them: a Ctrl-C landing
there stopped nothing. :func:`interrupts_noted` remembers a SIGINT as well as raising it, and the training loops
call :func:`raise_if_interrupted` at their next safe point (after clear_session, at every epoch end).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def interrupts_noted() -> Iterator[None]:
    """Note every SIGINT for the duration (main thread, and only while Python's default handler is in place)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # not ours to change: another thread, or the host installed its own handler
        return

    def noted(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    signal.signal(signal.SIGINT, noted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTED.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a noted Ctrl-C has not surfaced yet (it was dropped somewhere)."""
    if _INTERRUPTED.is_set():
        _INTERRUPTED.clear()
        raise KeyboardInterrupt
