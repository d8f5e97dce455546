"""`genre-se predict` and `genre-se embed`: output formats, failures, exit codes, progress off stdout."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genre_se.cli import main
from tests.test_inference import BAND_HZ, tiny, tone, write  # noqa: F401  (tiny: the shared bundle fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle(tiny):  # noqa: F811
    return str(tiny["bundle"])


@pytest.fixture
def folder(tmp_path):
    """Two good files in a nested folder and one corrupt one."""
    root = tmp_path / "music"
    (root / "sub").mkdir(parents=True)
    write(root / "a_low.wav", tone(BAND_HZ["low"], 1.5))
    write(root / "sub" / "b_high.flac", tone(BAND_HZ["high"], 2.0))
    (root / "c_corrupt.mp3").write_bytes(b"\xff\xfb not an mp3 frame " * 8)
    (root / "notes.txt").write_text("not audio, not even tried")
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("genre-se: error:")]


@pytest.mark.parametrize("suffix, check", [(".json", lambda text: json.loads(text)["predictions"]),
                                            (".csv", lambda text: pd.read_csv(io.StringIO(text))["genre_1"])])
def test_output_suffix_picks_the_format(capsys, bundle, folder, tmp_path, suffix, check):
    target = tmp_path / f"out{suffix}"
    code, out, _ = run(capsys, "predict", str(folder / "a_low.wav"), "--model", bundle, "-o", str(target))
    assert code == 0 and out == ""
    assert len(check(target.read_text())) == 1  # not a text table in a file named .json/.csv


def test_json_over_a_folder_with_a_corrupt_file(capsys, bundle, folder):
    code, out, err = run(capsys, "predict", str(folder), "--model", bundle, "--format", "json", "--top-k", "2")
    assert code == 1  # a file failed, the others were still predicted
    document = json.loads(out)
    predictions = {Path(p["path"]).name: p for p in document["predictions"]}
    assert set(predictions) == {"a_low.wav", "b_high.flac"}
    assert predictions["a_low.wav"]["genre"] == "low" and predictions["b_high.flac"]["genre"] == "high"
    assert len(predictions["a_low.wav"]["top"]) == 2
    assert sum(predictions["a_low.wav"]["probabilities"].values()) == pytest.approx(1.0)
    assert [Path(e["path"]).name for e in document["errors"]] == ["c_corrupt.mp3"]
    assert document["model"]["features"]["sample_rate"] == 8000
    lines = error_lines(err)
    assert len(lines) == 1 and "c_corrupt.mp3" in lines[0]
    assert "1 of 3 inputs failed" in err and "Traceback" not in err


def test_table_csv_and_output_file(capsys, bundle, folder, tmp_path):
    good = [str(folder / "a_low.wav"), str(folder / "sub" / "b_high.flac")]
    code, out, err = run(capsys, "predict", *good, "--model", bundle)
    assert code == 0 and err == ""
    assert out.splitlines()[0].startswith(good[0]) and "1. low" in out and "1. high" in out

    target = tmp_path / "out" / "predictions.csv"
    code, out, _ = run(capsys, "predict", *good, "--model", bundle, "--format", "csv", "-o", str(target))
    assert code == 0 and out == ""
    table = pd.read_csv(target)
    assert list(table.columns[:5]) == ["path", "duration", "n_segments", "genre_1", "probability_1"]
    assert list(table["genre_1"]) == ["low", "high"] and table["duration"].tolist() == [1.5, 2.0]
    assert [p.name for p in target.parent.iterdir()] == ["predictions.csv"]  # no temp file left behind


def test_top_k_beyond_the_genres_lists_every_genre_once(capsys, bundle, folder):
    """The tiny model has 3 genres: --top-k 5 gives 3 ranks, and every CSV row has the header's columns."""
    good = str(folder / "a_low.wav")
    code, out, _ = run(capsys, "predict", good, "--model", bundle, "--format", "csv", "--top-k", "5")
    assert code == 0
    header, row = [line.split(",") for line in out.splitlines()]
    assert len(header) == len(row) and header[-9:] == ["genre_3", "probability_3", "uncertain", "unfamiliar",
                                                       "short", "all_silent", "distance", "truncated",
                                                       "declared_duration"]
    code, out, _ = run(capsys, "predict", good, "--model", bundle, "--format", "json", "--top-k", "5")
    record = json.loads(out)["predictions"][0]
    assert sorted(t["genre"] for t in record["top"]) == ["high", "low", "mid"]
    # the CSV says why a row is uncertain as the JSON does
    cells = dict(zip(header, row))
    for key in ("uncertain", "short", "all_silent", "truncated"):
        assert cells[key] == str(record[key]).lower()
    assert cells["declared_duration"] == "" and "declared_duration" not in record  # not cut short
    assert cells["unfamiliar"] == (str(record["unfamiliar"]).lower() if "distance" in record else "")
    assert cells["distance"] == (f"{record['distance']:.3f}" if "distance" in record else "")


@pytest.mark.parametrize("options", [[], ["--max-segments", "0"], ["--timeline"]])
def test_a_file_cut_short_is_answered_and_said_to_be(capsys, bundle, tmp_path, options):
    """A partial download (the first 40 % of a 30-s WAV whose header still declares 30 s) is answered from what is
    there, exit 0, and every output says so: a note line in the table, ``truncated`` and ``declared_duration`` in
    the JSON and the CSV; ``embed`` notes it on stderr and marks its row. Read in windows (the default) or whole."""
    whole = write(tmp_path / "song.wav", tone(BAND_HZ["mid"], 30.0))
    data = whole.read_bytes()
    cut = tmp_path / "partial.wav"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    paths = [str(cut), str(whole)]

    code, out, err = run(capsys, "predict", *paths, "--model", bundle, *options)
    assert code == 0 and "error" not in err
    notes = [line for line in out.splitlines() if "cut short" in line]
    assert notes == ["  cut short: the header declares 30.0 s, 12.0 s decode (answered from what is there)"]
    assert out.index(notes[0]) < out.index(str(whole))  # under the file it is about

    code, out, _ = run(capsys, "predict", *paths, "--model", bundle, "--format", "json", *options)
    cut_record, whole_record = json.loads(out)["predictions"]
    assert code == 0 and cut_record["truncated"] is True and whole_record["truncated"] is False
    assert cut_record["declared_duration"] == pytest.approx(30.0) and "declared_duration" not in whole_record
    assert cut_record["duration"] == pytest.approx(12.0, abs=0.05)

    code, out, _ = run(capsys, "predict", *paths, "--model", bundle, "--format", "csv", *options)
    table = pd.read_csv(io.StringIO(out))
    assert code == 0
    if "--timeline" not in options:  # a timeline's CSV has a row per segment, no per-file columns
        assert table["truncated"].tolist() == [True, False]
        assert table["declared_duration"].iloc[0] == pytest.approx(30.0) and np.isnan(table["declared_duration"][1])

    code, _, err = run(capsys, "embed", *paths, "--model", bundle, "-o", str(tmp_path / "e.npz"))
    assert code == 0 and f"note: {cut}: cut short: the header declares 30.0 s, 12.0 s decode" in err
    with np.load(tmp_path / "e.npz") as z:
        assert z["truncated"].tolist() == [True, False]
        assert z["declared_duration"][0] == pytest.approx(30.0) and np.isnan(z["declared_duration"][1])


def test_each_csv_flag_column_holds_its_own_flag():
    """A short file, a silent one and an unfamiliar one (made by hand, no model): each says so in its own column,
    under the header's name, so a table filtered on "short" finds the blips and not the silent files."""
    from genre_se.outputs import PredictionFormatter
    from genre_se.results import Prediction

    def made(**flags):
        return Prediction(path="x.wav", labels=["a", "b", "c"], probabilities=np.array([0.5, 0.3, 0.2]),
                          segment_probabilities=np.array([[0.5, 0.3, 0.2]]), segment_starts=np.array([0.0]),
                          segment_ends=np.array([0.1]), duration=0.1, uncertain=True, **flags)

    formatter = PredictionFormatter("csv", top_k=5, n_classes=3)
    header = formatter.begin().strip().split(",")
    rows = [dict(zip(header, formatter.add(p).strip().split(",")))
            for p in (made(short=True), made(all_silent=True, segment_silent=np.array([True])),
                      made(distance=2.5, unfamiliar=True))]
    assert [(r["short"], r["all_silent"], r["unfamiliar"], r["distance"]) for r in rows] == [
        ("true", "false", "", ""), ("false", "true", "", ""), ("false", "false", "true", "2.500")]
    assert all(r["uncertain"] == "true" and r["genre_1"] == "a" and r["probability_2"] == "0.300000" for r in rows)


def test_timeline_csv_covers_each_file(capsys, bundle, folder):
    path = str(folder / "sub" / "b_high.flac")
    code, out, _ = run(capsys, "predict", path, "--model", bundle, "--format", "csv", "--timeline")
    assert code == 0
    timeline = pd.read_csv(io.StringIO(out))
    assert list(timeline.columns) == ["path", "segment", "start", "end", "genre", "probability", "silent"]
    assert timeline["silent"].dtype == bool and not timeline["silent"].any()  # a tone throughout
    assert timeline["start"].iloc[0] == 0.0 and timeline["end"].iloc[-1] == pytest.approx(2.0)
    assert (timeline["start"].iloc[1:].to_numpy() <= timeline["end"].iloc[:-1].to_numpy()).all()
    assert set(timeline["genre"]) == {"high"}


class _Stdin:
    """Standard input holding ``data`` (a pipe, not a terminal, unless ``tty``)."""

    def __init__(self, data: bytes, tty: bool = False):
        self.buffer, self._tty = io.BytesIO(data), tty

    def isatty(self) -> bool:
        return self._tty


def test_dash_reads_one_file_from_standard_input(capsys, bundle, folder, tmp_path, monkeypatch):
    import tempfile

    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    flac = folder / "sub" / "b_high.flac"
    monkeypatch.setattr(sys, "stdin", _Stdin(flac.read_bytes()))
    code, out, err = run(capsys, "predict", "-", str(folder / "a_low.wav"), "--model", bundle, "--format", "json")
    records = json.loads(out)["predictions"]
    assert code == 0 and [r["path"] for r in records] == ["<stdin>", str(folder / "a_low.wav")]
    assert records[0]["genre"] == "high" and records[0]["duration"] == pytest.approx(2.0)
    assert list(spools.iterdir()) == []  # the spool is removed

    monkeypatch.setattr(sys, "stdin", _Stdin(b"not audio at all" * 10))
    code, out, err = run(capsys, "predict", "-", "--model", bundle, "--format", "json")
    assert code == 1 and json.loads(out)["errors"][0]["path"] == "<stdin>"
    assert error_lines(err)[0].startswith("genre-se: error: <stdin>: ") and str(spools) not in err

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", _Stdin(flac.read_bytes()))
    code, _, _ = run(capsys, "embed", "-", "--model", bundle, "--output", "piped.npz")
    with np.load(tmp_path / "piped.npz") as z:
        assert code == 0 and list(z["path"]) == ["<stdin>"] and z["embeddings"].shape == (1, 8)

    monkeypatch.setattr(sys, "stdin", _Stdin(flac.read_bytes()))
    code, out, _ = run(capsys, "robustness", "-", "--model", bundle, "--per-file", "--format", "csv")
    assert code == 0 and set(pd.read_csv(io.StringIO(out))["path"]) == {"<stdin>"}

    code, _, err = run(capsys, "predict", "-", "-", "--model", bundle)
    assert code == 1 and "can be read once" in err
    monkeypatch.setattr(sys, "stdin", _Stdin(b"", tty=True))
    code, _, err = run(capsys, "predict", "-", "--model", bundle)
    assert code == 1 and "is a terminal here" in err and list(spools.iterdir()) == []


def test_exit_codes(capsys, bundle, folder, tmp_path, monkeypatch):
    good = str(folder / "a_low.wav")
    assert run(capsys, "predict", good, "--model", bundle)[0] == 0

    code, out, err = run(capsys, "predict", str(folder / "c_corrupt.mp3"), "--model", bundle)
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "c_corrupt.mp3" in err

    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "predict", str(tmp_path / "empty"), "--model", bundle)
    assert code == 1 and "no audio files found" in err

    code, _, err = run(capsys, "predict", good, "--model", str(tmp_path / "nowhere"))
    assert code == 1 and "model bundle not found" in err

    monkeypatch.chdir(tmp_path)  # no models/bundle here, and (patched) no shipped model
    from genre_se import inference

    monkeypatch.setattr(inference, "SHIPPED_BUNDLE", tmp_path / "no-shipped-model")
    code, _, err = run(capsys, "predict", good)
    assert code == 1 and "no model found" in err and "dvc repro" in err and "--model" in err
    import shutil

    shutil.copytree(bundle, tmp_path / "models" / "bundle")
    code, out, err = run(capsys, "predict", good, "--format", "json")
    assert code == 0 and "using the pipeline's latest model (models/bundle)" in err and json.loads(out)

    with pytest.raises(SystemExit) as usage:
        main(["predict", good, "--top-k", "0"])
    assert usage.value.code == 2


def test_a_folder_that_cannot_be_read_is_reported_and_the_run_fails(capsys, bundle, folder, monkeypatch):
    from tests.test_inference import _unlistable

    _unlistable(monkeypatch, "sub")  # holds b_high.flac
    code, out, err = run(capsys, "predict", str(folder), "--model", bundle, "--format", "json")
    assert code == 1 and "Traceback" not in err
    assert [Path(p["path"]).name for p in json.loads(out)["predictions"]] == ["a_low.wav"]
    errors = error_lines(err)
    assert f"genre-se: error: {folder / 'sub'}: cannot read this folder (Permission denied)" in err
    assert len(errors) == 2 and "2 of 3 inputs failed" in err  # the folder and c_corrupt.mp3


def test_default_model_and_quiet_flag_in_a_pipeline_checkout(capsys, tiny, folder, tmp_path, monkeypatch):  # noqa: F811
    import shutil

    shutil.copytree(tiny["bundle"], tmp_path / "models" / "bundle")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "-q", "predict", str(folder / "a_low.wav"), "-q", "--format", "json")
    assert code == 0
    assert json.loads(out)["model"]["bundle"]["path"] == str((tmp_path / "models" / "bundle").resolve())
    code, _, err = run(capsys, "predict", str(folder / "a_low.wav"))
    assert code == 0 and "using the pipeline's latest model" in err and "synthetic corpus" not in err
    code, _, err = run(capsys, "robustness", str(folder / "a_low.wav"))  # its report is of a model too
    assert code == 0 and "using the pipeline's latest model" in err
    # a pipeline model trained on the built-in corpus (the README's first run) is a demo: predict says so
    meta_path = tmp_path / "models" / "bundle" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["training_data"] = {"root": "data/corpus", "builtin_corpus": True}
    meta_path.write_text(json.dumps(meta))
    code, _, err = run(capsys, "predict", str(folder / "a_low.wav"))
    assert code == 0 and "trained on the built-in synthetic corpus" in err and "--model" in err
    assert "synthetic" not in run(capsys, "-q", "predict", str(folder / "a_low.wav"))[2]  # -q: quiet


def test_progress_bar_goes_to_stderr_never_into_json(capsys, bundle, folder, monkeypatch):
    from tqdm import tqdm

    import genre_se.cli as cli

    monkeypatch.setattr(cli, "_progress", lambda quiet: functools.partial(tqdm, file=sys.stderr, mininterval=0))
    code, out, err = run(capsys, "predict", str(folder), "--model", bundle, "--format", "json")
    assert code == 1
    assert len(json.loads(out)["predictions"]) == 2  # stdout is pure JSON
    assert "3/3" in err  # the bar counted the three files on stderr

    code, out, err = run(capsys, "predict", str(folder / "sub" / "b_high.flac"), "--model", bundle, "--format", "json")
    assert code == 0 and json.loads(out)["predictions"][0]["genre"] == "high"
    assert "2/2 s" in err  # one file: the bar counts seconds of audio


def test_real_process_exit_code_and_no_traceback(bundle, tmp_path):
    corrupt = tmp_path / "corrupt.wav"  # (libmpg123 itself writes warnings to fd 2 for a corrupt .mp3)
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEdata" + bytes(64))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "genre_se", "predict", str(corrupt), "--model", bundle],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().startswith("genre-se: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "corrupt.wav" in proc.stderr


def test_unwritable_outputs_are_one_line_errors(capsys, bundle, folder, tmp_path, monkeypatch):
    from genre_se import inference, robustness

    def no_work(*args, **kwargs):
        raise AssertionError("worked before checking where the output goes")

    # embed and robustness write at the end: they check the place before any work
    monkeypatch.setattr(inference.GenreClassifier, "embed_many", no_work)
    monkeypatch.setattr(robustness, "iter_robustness", no_work)
    good = str(folder / "a_low.wav")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command, target, message in (
        ("predict", tmp_path, "is a folder; give a file name"),
        ("predict", blocker / "out.json", "cannot write here"),
        ("embed", blocker / "emb.npz", "cannot write here"),
        ("embed", blocker, "exists and is not a folder"),  # --format npy: a folder is wanted
        ("robustness", blocker / "report.txt", "cannot write here"),
    ):
        extra = ["--format", "npy"] if message.startswith("exists") else []
        code, out, err = run(capsys, command, good, "--model", bundle, "-o", str(target), *extra)
        assert code == 1 and out == "", command
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith(f"genre-se: error: {target}: ")  # names the output
        assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "music"]  # nothing half written


def test_an_unexpected_io_failure_is_one_line_not_a_traceback(capsys, bundle, folder, monkeypatch):
    from genre_se import outputs

    def disk_full(self, prediction):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.PredictionFormatter, "add", disk_full)
    code, out, err = run(capsys, "predict", str(folder / "a_low.wav"), "--model", bundle)
    assert code == 1 and error_lines(err) == ["genre-se: error: [Errno 28] No space left on device"]


def test_a_closed_pipe_ends_quietly_with_141(bundle, folder):
    """`genre-se predict music/ | head -1`: the reader leaves after one line; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    files = [str(folder / "a_low.wav")] * 200  # far more output than a pipe buffer holds
    proc = subprocess.Popen([sys.executable, "-m", "genre_se", "-q", "predict", *files, "--model", bundle,
                             "--timeline"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline().startswith(files[0].encode())
    proc.stdout.close()  # the reader is gone
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipe" not in err


# --------------------------------------------------------------------------------------------------
# embed


def test_embed_formats_and_failures(capsys, bundle, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "embed", str(folder), "--model", bundle)
    assert code == 1 and out == ""  # the corrupt file failed; the others were written
    assert len(error_lines(err)) == 1 and "2 files x 8 dims" in err
    with np.load(tmp_path / "embeddings.npz") as z:
        assert z["embeddings"].shape == (2, 8)
        assert [Path(p).name for p in z["path"]] == ["a_low.wav", "b_high.flac"]
        assert json.loads(str(z["metadata"]))["bundle"]["path"] == str(Path(bundle).resolve())

    good = str(folder / "sub" / "b_high.flac")
    code, _, err = run(capsys, "embed", good, "--model", bundle, "--pool", "none", "--output", "seg.parquet")
    frame = pd.read_parquet(tmp_path / "seg.parquet")
    assert code == 0 and len(frame) > 1 and f"{len(frame)} segments" in err
    assert frame["end"].iloc[-1] == pytest.approx(2.0) and frame.attrs["genre_se"]["pool"] == "none"

    code, _, _ = run(capsys, "embed", good, "--model", bundle, "--format", "npy", "--output", "vectors")
    assert code == 0 and np.load(tmp_path / "vectors" / "embeddings.npy").shape == (1, 8)

    code, _, err = run(capsys, "embed", good, "--model", bundle, "--output", "vectors.csv")
    assert code == 1 and "no embedding format is written as '.csv'" in err and not (tmp_path / "vectors.csv").exists()
    code, _, _ = run(capsys, "embed", good, "--model", bundle, "--format", "npy", "--output", "run.2026")
    assert code == 0 and (tmp_path / "run.2026" / "embeddings.npy").is_file()  # a dotted folder, when asked

    code, _, err = run(capsys, "embed", str(folder / "c_corrupt.mp3"), "--model", bundle, "--output", "bad.npz")
    assert code == 1 and not (tmp_path / "bad.npz").exists() and "nothing written" in err


def test_an_npy_folder_is_replaced_whole_or_not_at_all(capsys, bundle, folder, tmp_path, monkeypatch):
    """The npy layout is three files: a failure writing the second (disk full) left the new embeddings.npy
    beside the old rows.csv and metadata.json, rows that no longer describe the matrix."""
    files = [str(folder / "a_low.wav"), str(folder / "sub" / "b_high.flac")]
    out = tmp_path / "vectors"
    code, _, _ = run(capsys, "embed", *files, "--model", bundle, "--format", "npy", "-o", str(out))
    assert code == 0
    before = {name: (out / name).read_bytes() for name in ("embeddings.npy", "rows.csv", "metadata.json")}

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    code, _, err = run(capsys, "embed", *files, "--model", bundle, "--format", "npy", "-o", str(out),
                       "--pool", "none")
    assert code == 1 and "No space left" in err and "Traceback" not in err
    assert {name: (out / name).read_bytes() for name in before} == before  # the previous output, whole
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary file left


def test_error_lines_are_not_lost_while_the_decoder_thread_silences_native_stderr():
    """The decoding thread points fd 2 at /dev/null while libsndfile opens a file (libmpg123 chatter); an
    error line the main thread writes meanwhile (the previous file's failure) must still reach the user."""
    code = (
        "import threading, time\n"
        "from genre_se.cli import _err\n"
        "from genre_se.quiet import native_stderr_silenced\n"
        "entered = threading.Event()\n"
        "def decoder():\n"
        "    with native_stderr_silenced():\n"
        "        entered.set()\n"
        "        time.sleep(0.5)\n"
        "thread = threading.Thread(target=decoder)\n"
        "thread.start()\n"
        "entered.wait()\n"
        "_err('error: bad.wav: not a readable audio file')\n"
        "thread.join()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "genre-se: error: bad.wav: not a readable audio file" in proc.stderr


def test_a_file_name_that_is_not_utf8_is_predicted_and_written_everywhere(capsys, bundle, folder, tmp_path):
    """Old Latin-1 archives have names that are not UTF-8: the file is read, and every output names it (spelt
    as the error messages spell it) instead of ending in a UnicodeEncodeError traceback."""
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.flac"))
    try:
        os.replace(folder / "sub" / "b_high.flac", odd)
    except (OSError, UnicodeError):
        pytest.skip("this file system accepts only UTF-8 names")
    spelt = str(odd).encode("utf-8", "backslashreplace").decode("utf-8")  # .../caf\udce9.flac
    code, out, err = run(capsys, "predict", str(odd), "--model", bundle)
    assert code == 0 and out.startswith(spelt) and "1. high" in out
    target = tmp_path / "out" / "predictions.csv"
    code, _, err = run(capsys, "predict", str(odd), "--model", bundle, "--format", "csv", "-o", str(target))
    assert code == 0 and err == "" and pd.read_csv(target)["path"].tolist() == [spelt]
    report = tmp_path / "robustness.csv"
    code, _, err = run(capsys, "robustness", str(odd), "--model", bundle, "--per-file", "--format", "csv",
                       "-o", str(report))
    assert code == 0 and set(pd.read_csv(report)["path"]) == {spelt}, err
    for output, fmt in (("e.parquet", None), ("e_npy", "npy"), ("e.npz", None)):
        extra = ["--format", fmt] if fmt else []
        code, _, err = run(capsys, "embed", str(odd), "--model", bundle, "-o", str(tmp_path / output), *extra)
        assert code == 0 and "Traceback" not in err, err
    assert pd.read_parquet(tmp_path / "e.parquet")["path"].tolist() == [spelt]
    assert pd.read_csv(tmp_path / "e_npy" / "rows.csv")["path"].tolist() == [spelt]


def test_quiet_is_taken_before_and_after_every_subcommand():
    """`genre-se features -q` was refused ('unrecognized arguments') while `genre-se -q features` and
    `genre-se predict -q` worked; a subcommand's -q must not reset a -q given before it either."""
    from genre_se.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    skipped = set()
    for name in commands:
        argv = ["model", "summary"] if name == "model" else [name]
        extra = {"predict": ["x.wav"], "embed": ["x.wav"], "robustness": ["x.wav"]}.get(name, [])
        try:
            after = parser.parse_args([*argv, *extra, "-q"])
        except SystemExit:  # a command whose other arguments are required: -q is not what it refused
            skipped.add(name)
            continue
        assert after.quiet is True, name
        assert parser.parse_args(["-q", *argv, *extra]).quiet is True, name
        assert parser.parse_args([*argv, *extra]).quiet is False, name
    assert parser.parse_args(["features", "-q"]).quiet is True
    assert skipped == {"install-model"}  # it needs a bundle argument; every other command was really tried
