"""Helpers shared by the benchmark scripts: repeat timings, summarise them, print Markdown, name the machine.

Only the standard library is imported here, so a script can time its own imports (cold start) after
importing this module.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata


@dataclass
class Timings:
    """Wall-clock seconds of the repeated runs of one method (the first, warm-up run is never in here)."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.seconds.append(float(seconds))

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    def rate(self, items: int) -> tuple[float, float, float]:
        """``(median, min, max)`` items per second; the fastest run gives the max rate."""
        return items / self.median, items / self.max, items / self.min


def positive_int(text: str) -> int:
    """The argparse type of ``--repeats``: a whole number >= 1, refused when the command line is read (0 failed
    with a traceback from :func:`time_rounds`, after the setup: exports, warm-up passes, a whole training)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def failed_files(results) -> list[str]:
    """The messages (each naming its file) of the failures among ``GenreClassifier.predict_many`` results: a
    file that fails takes no model time, so timing it as predicted would inflate files/s."""
    return [r.message for r in results if hasattr(r, "message")]


def time_call(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (``time.perf_counter``, wall clock: worker processes count)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_rounds(
    methods: dict[str, Callable[[], object]],
    repeats: int,
    after_each: Callable[[], object] | None = None,
) -> dict[str, Timings]:
    """Run every method once per round, ``repeats`` rounds, interleaved.

    Interleaving (A B C A B C ...) instead of A A A B B B spreads slow phases of a shared machine over all
    methods, so ratios between them measured in one run stay meaningful. ``after_each`` (e.g. deleting a
    run's output) is called after every timed call, outside the timing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results = {name: Timings(name) for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            results[name].add(time_call(fn))
            if after_each is not None:
                after_each()
    return results


def fmt_range(low: float, high: float, digits: int = 1) -> str:
    """``"low-high"`` with a fixed number of decimals, e.g. ``"12.3-14.0"``."""
    return f"{low:.{digits}f}-{high:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads well as plain text."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), separator] + [line(row) for row in cells[1:]])


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for text in info:
                if text.lower().startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (affinity / cgroup cpuset), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def load_average() -> str:
    """The 1-minute load average: other users of a shared machine make timings noisy, this shows it."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def machine_description(packages: Sequence[str] = ("numpy",)) -> str:
    """One line: CPU model, cores, load, Python and package versions, for the record under every table."""
    parts = [
        cpu_model(),
        f"{usable_cores()} usable cores ({os.cpu_count()} logical)",
        f"load {load_average()}",
        f"{platform.python_implementation()} {platform.python_version()}",
    ]
    parts += [f"{name} {package_version(name)}" for name in packages]
    parts.append(platform.system() + " " + platform.release())
    return "Machine: " + "; ".join(parts)


def with_without_table(timings: dict[str, Timings], flag: str, items: Callable[[str], int]) -> str:
    """The Markdown table of methods named "... with FLAG" and "... without FLAG": items per second (median and
    range), seconds per pass, and ``without / with`` median seconds (1.00x: the flag is free).
    ``items(name)``: how many items (files) one pass of that method handles."""
    rows = []
    for name, t in timings.items():
        median, low, high = t.rate(items(name))
        base = timings[name.replace(f"with {flag}", f"without {flag}")]
        rows.append([name, f"{median:.2f}", fmt_range(low, high, 2), f"{t.median:.2f}",
                     f"{base.median / t.median:.2f}x"])
    return markdown_table(["method", "files/s", "range", "s per pass", "vs without"], rows)
