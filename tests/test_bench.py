"""The benchmark scripts run (``--smoke``) and their helpers compute what they claim; no timing assertions."""

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# bench/ is not a package (the scripts run as `python bench/<script>.py`): load its helpers by path,
# under a name that cannot clash with another `common` module.
_spec = importlib.util.spec_from_file_location("genre_se_bench_common", BENCH / "common.py")
common = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = common  # dataclasses look their module up there
_spec.loader.exec_module(common)

EXPECTED_ROWS = ("features stage, workers=2", "features stage, workers=1", "plain librosa loop, 1 process")


def _run_script(*args, timeout=180):
    return subprocess.run(
        [sys.executable, str(BENCH / "bench_features.py"), *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _table_rows(text: str, first_header: str) -> dict[str, list[str]]:
    """Cells of the Markdown table whose header starts with ``first_header``, keyed by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def smoke_output():
    done = _run_script("--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_smoke_prints_the_throughput_table(smoke_output):
    rows = _table_rows(smoke_output, "method ")
    assert list(rows) == list(EXPECTED_ROWS)
    for label, (rate, rate_range, seconds, ratio) in rows.items():
        assert float(rate) > 0 and float(seconds) > 0, label
        low, high = (float(x) for x in rate_range.split("-"))
        assert low <= float(rate) <= high, label
        assert re.fullmatch(r"\d+\.\d\dx", ratio), label
    assert rows["plain librosa loop, 1 process"][3] == "1.00x"  # the reference is itself


def test_smoke_prints_cold_table_and_machine(smoke_output):
    cold = _table_rows(smoke_output, "method (fresh process)")
    assert list(cold) == list(EXPECTED_ROWS)
    for label, cells in cold.items():
        process_s, imports_s, first_run_s, _ = (float(c) for c in cells)
        assert process_s >= imports_s + first_run_s, label  # the process also starts Python and exits
    assert "4 clips" in smoke_output  # the generated smoke data, not the shared data
    machine = [line for line in smoke_output.splitlines() if line.startswith("Machine: ")]
    assert len(machine) == 1 and "usable cores" in machine[0] and "numpy " in machine[0]


def test_missing_data_is_a_clear_error(tmp_path):
    done = _run_script("--data", str(tmp_path / "nowhere"), "--no-cold", timeout=60)
    assert done.returncode == 2
    assert "nowhere" in done.stderr and "--smoke" in done.stderr


def test_timings_summaries():
    timings = common.Timings("x", [3.0, 1.0, 2.0, 10.0])
    assert timings.median == 2.5 and timings.min == 1.0 and timings.max == 10.0
    median_rate, low_rate, high_rate = timings.rate(10)
    assert (median_rate, low_rate, high_rate) == (4.0, 1.0, 10.0)


def test_time_rounds_interleaves_and_cleans_up_outside_timing():
    calls = []
    methods = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    results = common.time_rounds(methods, 3, after_each=lambda: calls.append("clean"))
    assert calls == ["a", "clean", "b", "clean"] * 3
    assert [len(results[k].seconds) for k in ("a", "b")] == [3, 3]
    with pytest.raises(ValueError):
        common.time_rounds(methods, 0)


def test_markdown_table_aligns_columns():
    table = common.markdown_table(["name", "n"], [["long name", 1], ["b", 22]])
    lines = table.splitlines()
    assert lines[0] == "| name      | n  |"
    assert lines[1] == "|-----------|----|"
    assert lines[2] == "| long name | 1  |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [[1]])
    assert common.fmt_range(1.234, 5.0, 2) == "1.23-5.00"


def test_machine_description_names_cpu_cores_and_versions():
    line = common.machine_description(("numpy", "no-such-package-xyz"))
    assert line.startswith("Machine: ")
    assert f"{common.usable_cores()} usable cores" in line
    assert "no-such-package-xyz absent" in line
    assert re.search(r"numpy \d+\.\d+", line)


def _smoke_rows(script: str) -> dict:
    """The table rows a bench script prints with ``--smoke`` (it must exit 0)."""
    done = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return _table_rows(done.stdout, "method ")


def test_familiarity_bench_smoke_prints_both_runtimes_with_and_without_the_flag():
    rows = _smoke_rows("bench_familiarity.py")
    assert list(rows) == [f"{b}, {w} familiarity" for b in ("litert", "keras") for w in ("with", "without")]
    for label, (rate, _, seconds, ratio) in rows.items():
        assert float(rate) > 0 and float(seconds) > 0, label
        assert float(ratio.rstrip("x")) > 0, label
    # each is compared with its own runtime without the flag
    assert rows["litert, without familiarity"][3] == rows["keras, without familiarity"][3] == "1.00x"


def test_fusion_bench_smoke_prints_clips_and_a_long_song_with_and_without_the_svm():
    rows = _smoke_rows("bench_fusion.py")
    assert list(rows) == [f"{what}, {w} fusion" for w in ("with", "without") for what in ("3 clips", "one 90-s song")]
    for label, (rate, _, seconds, ratio) in rows.items():
        assert float(rate) > 0 and float(seconds) > 0 and float(ratio.rstrip("x")) > 0, label
    assert rows["3 clips, without fusion"][3] == "1.00x"


def _bench(script: str, *args, timeout=300):
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, check=False, capture_output=True,
                          text=True, timeout=timeout)


def test_positive_int_refuses_what_time_rounds_would_raise_on():
    assert common.positive_int("3") == 3
    for text in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
            common.positive_int(text)


@pytest.mark.parametrize("script, extra", [
    ("bench_features.py", ()),
    ("bench_predict.py", ()),
    ("bench_familiarity.py", ()),
    ("bench_fusion.py", ()),
    ("bench_train.py", ("--segments", "1")),  # --segments 1 stops it before a training either way
])
def test_every_script_refuses_a_bad_repeats_before_any_work(script, extra, tmp_path):
    """--repeats 0 was checked by bench_features alone: the others ran their setup (exports, warm-up passes, a
    training) and then died with time_rounds' ValueError, or a StatisticsError over no timed epochs."""
    data = () if script == "bench_train.py" else ("--data", str(tmp_path / "nowhere"))
    done = _bench(script, "--repeats", "0", *data, *extra, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--repeats" in done.stderr and "whole number >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def _clip(path: Path, seconds: float = 4.0, sr: int = 22050) -> Path:
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), sr)
    return path


@pytest.mark.parametrize("script, args, says", [
    # a folder that is not a dataset: DatasetError traceback
    ("bench_features.py", ("--data", "{empty}", "--no-cold"), "no audio files"),
    # a folder without audio: IndexError traceback, after building and exporting a model
    ("bench_predict.py", ("--data", "{empty}", "--model", "{shipped}"), "no audio files"),
    # a --model that is not there: FileNotFoundError from copytree / ModelError tracebacks
    ("bench_predict.py", ("--data", "{clips}", "--model", "{nowhere}"), "model bundle not found"),
    ("bench_familiarity.py", ("--data", "{clips}", "--model", "{nowhere}"), "model bundle not found"),
    ("bench_fusion.py", ("--data", "{clips}", "--model", "{nowhere}"), "model bundle not found"),
    # an empty folder: a table of 0.00 files/s
    ("bench_familiarity.py", ("--data", "{empty}"), "no audio files"),
    ("bench_fusion.py", ("--data", "{empty}", "--model", "{shipped}"), "no audio files"),
])
def test_bad_data_or_model_is_one_clear_line(script, args, says, tmp_path):
    from genre_se.inference import SHIPPED_BUNDLE

    (tmp_path / "empty").mkdir()
    _clip(tmp_path / "clips" / "blues" / "a.wav")
    names = {"empty": tmp_path / "empty", "clips": tmp_path / "clips", "nowhere": tmp_path / "nowhere",
             "shipped": SHIPPED_BUNDLE}
    done = _bench(script, *(a.format(**names) for a in args))
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr and "Traceback" not in done.stderr


def test_familiarity_bench_refuses_to_time_files_that_fail(tmp_path):
    """A file predict_many cannot read yields a Failure in no time: it was counted as a predicted file, so
    files/s came out too high, without a word."""
    _clip(tmp_path / "clips" / "blues" / "good.wav")
    (tmp_path / "clips" / "blues" / "broken.wav").write_text("not audio")
    done = _bench("bench_familiarity.py", "--data", str(tmp_path / "clips"), "--repeats", "1")
    assert done.returncode == 2, done.stdout[-2000:]
    assert "broken.wav" in done.stderr and "| method" not in done.stdout
