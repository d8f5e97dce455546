"""The features stage: store contents, failures reported not fatal, resume after an interruption."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from genre_se import feature_store
from genre_se.config import FeatureConfig
from genre_se.errors import DatasetError
from genre_se.feature_store import FeatureStore, build_store
from genre_se.features import extract_segments

CFG = FeatureConfig(n_fft=512, hop_length=256, n_mels=16, segment_frames=16, segment_hop=8, workers=2)


@pytest.fixture
def index(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, seconds) in enumerate([("a", 1.0), ("a", 0.1), ("b", 0.5), ("b", 2.0), ("c", 0.7)]):
        path = tmp_path / f"{label}{i}.wav"
        sf.write(path, rng.standard_normal(int(seconds * 22050)).astype(np.float32) * 0.1, 22050)
        rows.append(dict(clip_id=f"{label}/{i}", path=str(path), label=label, status="ok", error="",
                         split=["train", "valid", "test"][i % 3], fold=i % 2))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(50))
    rows.append(dict(clip_id="c/broken", path=str(bad), label="c", status="ok", error="", split="train", fold=0))
    rows.append(dict(clip_id="c/gone", path=str(tmp_path / "gone.wav"), label="c", status="error",
                     error="gone.wav: file not found", split="excluded", fold=-1))
    return pd.DataFrame(rows)


def test_store_holds_every_readable_clip_as_float16_memmap(tmp_path, index):
    store, failures = build_store(index, CFG, tmp_path / "features", tmp_path / "cache")
    assert isinstance(store.segments, np.memmap) and store.segments.dtype == np.float16
    assert store.input_shape == (16, 16, 1)
    assert store.labels == ["a", "b", "c"]
    # the corrupt file is reported (with its name) and skipped; the error row never reaches the store
    assert failures["clip_id"].tolist() == ["c/broken"] and "broken.wav" in failures["error"][0]
    assert sorted(store.table["clip_id"].unique()) == ["a/0", "a/1", "b/2", "b/3", "c/4"]
    for clip in ["a/0", "a/1", "b/3"]:
        rows = store.table[store.table["clip_id"] == clip]
        expected = extract_segments(index.set_index("clip_id").loc[clip, "path"], CFG)
        assert rows["start_frame"].tolist() == expected.start_frames.tolist()
        assert rows["pad_frames"].tolist() == expected.pad_frames.tolist()
        np.testing.assert_allclose(store.segments[rows["segment"].to_numpy()], expected.data, atol=0.05)
    short = store.table[store.table["clip_id"] == "a/1"]
    assert len(short) == 1 and short["pad_frames"].iloc[0] > 0  # 0.1 s clip padded, not dropped
    assert set(store.table["split"]) <= {"train", "valid", "test"}
    assert (store.table["label_index"] == store.table["label"].map({"a": 0, "b": 1, "c": 2})).all()
    assert store.rows("test").size == (store.table["split"] == "test").sum()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npz"))


def test_a_folder_that_is_not_a_store_is_never_replaced(tmp_path, index):
    """`genre-se features --out ~/thesis` (a typo, a wrong folder): building replaces the output folder, so a
    folder of other files is refused before any work, and a store is still rebuilt in place."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not a feature store"):
        build_store(index, CFG, mine, tmp_path / "cache")
    assert (mine / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(DatasetError, match="not a folder"):
        build_store(index, CFG, a_file, tmp_path / "cache")
    assert a_file.read_text() == "mine" and not (tmp_path / "cache").exists()  # refused before any work
    build_store(index, CFG, tmp_path / "features", tmp_path / "cache")
    store, _ = build_store(index, CFG, tmp_path / "features", tmp_path / "cache")  # a store: rebuilt
    assert len(store.table) > 0


def test_interrupted_run_resumes_without_recomputing(tmp_path, index, monkeypatch):
    cfg = dataclasses.replace(CFG, workers=1)
    calls = []
    real = feature_store._compute_shard

    def counting(task):
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while computing the third clip
        return real(task)

    monkeypatch.setattr(feature_store, "_compute_shard", counting)
    with pytest.raises(KeyboardInterrupt):
        build_store(index, cfg, tmp_path / "features", tmp_path / "cache")
    assert not (tmp_path / "features").exists()  # nothing half-written
    done_before = calls[:2]
    calls.clear()
    monkeypatch.setattr(feature_store, "_compute_shard", lambda task: (calls.append(task[0]), real(task))[1])
    store, _ = build_store(index, cfg, tmp_path / "features", tmp_path / "cache")
    assert not set(done_before) & set(calls)  # finished clips were not recomputed
    assert len(calls) == 6 - len(done_before)  # every usable clip without a shard (the broken one retried)
    reopened = FeatureStore.open(tmp_path / "features")
    assert len(reopened.segments) == len(store.segments)


def test_open_missing_store_is_a_clear_error(tmp_path):
    from genre_se.errors import DatasetError

    with pytest.raises(DatasetError, match="run `genre-se features` first"):
        FeatureStore.open(tmp_path / "nothing")


def test_numeric_label_folders_stay_labels_through_the_features_stage(tmp_path, index):
    """Genre folders named 0, 1, 2 (common for class-numbered data): the index CSV must not turn them into
    ints, which crashed the store's meta.json (int64 is not JSON) with a raw traceback."""
    from genre_se.config import Params
    from genre_se.feature_store import run_features
    from genre_se.fileio import write_csv

    # c/4 trains: the stage refuses a label whose training clips all fail to decode (c/broken)
    numeric = index.assign(label=index["label"].map({"a": "0", "b": "1", "c": "2"}),
                           clip_id=[str(i) for i in range(len(index))],
                           split=index["split"].mask(index["clip_id"].eq("c/4"), "train"))
    write_csv(tmp_path / "index.csv", numeric)
    store, _ = run_features(Params(features=dataclasses.replace(CFG, workers=1)), index_path=tmp_path / "index.csv",
                            out_dir=tmp_path / "features", cache_dir=tmp_path / "cache",
                            errors_path=tmp_path / "errors.csv")
    assert store.labels == ["0", "1", "2"]
    again = FeatureStore.open(tmp_path / "features")  # as train and evaluate read it
    assert again.table["label"].tolist() == [str(v) for v in again.table["label_index"]]
    assert again.table["clip_id"].map(type).eq(str).all()


def _interrupted_after_two_shards(index, cfg, tmp_path, monkeypatch) -> list:
    """A features build interrupted (Ctrl-C) while computing its third shard; the clip ids it had started."""
    real, calls = feature_store._compute_shard, []

    def interrupted(task):
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(feature_store, "_compute_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_store(index, cfg, tmp_path / "features", tmp_path / "cache")
    monkeypatch.setattr(feature_store, "_compute_shard", real)
    return calls


def test_resumed_features_do_not_reuse_the_shard_of_a_file_that_changed(tmp_path, index, monkeypatch):
    """features interrupted, then the audio at the same path changes (corpus regenerated, dataset fixed):
    the rerun must compute that clip again, not store the old audio's segments."""
    cfg = dataclasses.replace(CFG, workers=1)
    calls = _interrupted_after_two_shards(index, cfg, tmp_path, monkeypatch)
    clip = calls[0]  # its shard survived the interruption
    path = index.set_index("clip_id").loc[clip, "path"]
    old = sf.info(path)
    sf.write(path, np.random.default_rng(9).standard_normal(old.frames).astype(np.float32) * 0.5, old.samplerate)
    store, _ = build_store(index, cfg, tmp_path / "features", tmp_path / "cache")
    rows = store.table[store.table["clip_id"] == clip]["segment"].to_numpy()
    expected = extract_segments(path, cfg)
    assert len(rows) == len(expected)
    np.testing.assert_allclose(store.segments[rows], expected.data, atol=0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_workers_die_with_a_killed_stage(tmp_path):
    """kill -9 of the features stage (or the OOM killer) left its pool workers waiting for work forever."""
    import signal
    import subprocess
    import time

    script = tmp_path / "stage.py"
    script.write_text(
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from genre_se import feature_store\n"
        "init = getattr(feature_store, '_die_with_parent', None)\n"
        "pool = ProcessPoolExecutor(2, mp_context=get_context('fork'), initializer=init,\n"
        "                           initargs=(os.getpid(),) if init else ())\n"
        f"open({str(tmp_path / 'pids')!r}, 'w').write(' '.join(str(pool.submit(os.getpid).result()) for _ in range(4)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, timeout=120)  # no pipes: an orphaned worker would hold them
    assert out.returncode == -signal.SIGKILL
    workers = {int(pid) for pid in (tmp_path / "pids").read_text().split()}
    assert workers

    def running(pid):  # a zombie (killed, not yet reaped) counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if running(pid)]
    for pid in alive:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_resume_recomputes_a_file_replaced_with_the_same_size_and_mtime(tmp_path, index, monkeypatch, how):
    """features interrupted, then a clip's audio replaced by other audio of the same size whose modification time
    was kept or restored (rsync -a, cp -p, touch -r): the shard name knew only size and mtime, so the rerun
    stored the old audio's segments for the new file, silently."""
    import time

    cfg = dataclasses.replace(CFG, workers=1)
    calls = _interrupted_after_two_shards(index, cfg, tmp_path, monkeypatch)
    path = Path(index.set_index("clip_id").loc[calls[0], "path"])  # its shard survived the interruption
    before = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity
    other = np.random.default_rng(9).standard_normal(sf.info(path).frames).astype(np.float32) * 0.5
    if how == "in place":
        sf.write(path, other, 22050)
    else:
        sf.write(tmp_path / "new.wav", other, 22050)
        os.replace(tmp_path / "new.wav", path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    store, _ = build_store(index, cfg, tmp_path / "features", tmp_path / "cache")
    rows = store.table[store.table["clip_id"] == calls[0]]["segment"].to_numpy()
    np.testing.assert_allclose(store.segments[rows], extract_segments(path, cfg).data, atol=0.05)


def _damage(store: Path, how: str) -> None:
    table = store / "segments.csv"
    lines = table.read_text().splitlines(keepends=True)
    if how == "empty segments.npy":
        (store / "segments.npy").write_bytes(b"")
    elif how == "rows reordered":
        table.write_text("".join([lines[0], *lines[2:], lines[1]]))
    elif how == "label_index out of range":
        frame = pd.read_csv(table)
        frame.loc[3, "label_index"] = 7
        frame.to_csv(table, index=False)
    elif how == "label and index disagree":
        frame = pd.read_csv(table)
        frame.loc[0, "label"] = "c" if frame.loc[0, "label"] != "c" else "a"
        frame.to_csv(table, index=False)
    elif how == "no label_index column":
        pd.read_csv(table).drop(columns="label_index").to_csv(table, index=False)
    elif how == "meta without labels":
        meta = json.loads((store / "meta.json").read_text())
        del meta["labels"]
        (store / "meta.json").write_text(json.dumps(meta))
    elif how == "meta not an object":
        (store / "meta.json").write_text("[]")
    elif how == "meta of other features":
        meta = json.loads((store / "meta.json").read_text())
        meta["features"]["n_mels"] = 32
        (store / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how, file", [
    ("empty segments.npy", "segments.npy"),
    ("rows reordered", "segments.csv"),
    ("label_index out of range", "segments.csv"),
    ("label and index disagree", "segments.csv"),
    ("no label_index column", "segments.csv"),
    ("meta without labels", "meta.json"),
    ("meta not an object", "meta.json"),
    ("meta of other features", "segments.npy"),
])
def test_a_store_whose_files_do_not_match_is_refused_naming_the_file(tmp_path, index, how, file):
    """train, evaluate and tune open the store with FeatureStore.open: a table that no longer describes the array
    row by row (edited, reordered, from another build) was accepted when its row count matched, pairing segments
    with other clips' labels; an empty segments.npy or a meta.json without labels was a traceback."""
    build_store(index, dataclasses.replace(CFG, workers=1), tmp_path / "features", tmp_path / "cache")
    _damage(tmp_path / "features", how)
    with pytest.raises(DatasetError, match=str(tmp_path / "features" / file).replace("\\", "\\\\")):
        FeatureStore.open(tmp_path / "features")


def _float_wav(path: Path, value: float) -> None:
    """A float WAV whose header reads fine; samples of 1e13 are refused when decoded (corrupt float data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(4000, value, dtype=np.float32), 22050, subtype="FLOAT")


def _run_features(tmp_path, rows):
    from genre_se.config import Params
    from genre_se.feature_store import run_features
    from genre_se.fileio import write_csv

    write_csv(tmp_path / "index.csv", pd.DataFrame(rows))
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports" / "errors.csv").write_text("clip_id,path,error\nold,old.wav,an earlier run's\n")
    return run_features(Params(features=dataclasses.replace(CFG, workers=1)), index_path=tmp_path / "index.csv",
                        out_dir=tmp_path / "features", cache_dir=tmp_path / "cache",
                        errors_path=tmp_path / "reports" / "errors.csv")


def test_features_of_only_undecodable_clips_report_them_and_stop_in_words(tmp_path):
    """Every clip failing to decode stopped the stage with 'no clip could be decoded' before the errors report
    was written: the report naming the files was missing, or an earlier run's was left in its place."""
    rows = []
    for i, label in enumerate("aabb"):
        _float_wav(tmp_path / label / f"{i}.wav", 1e13)
        rows.append(dict(clip_id=f"{label}/{i}", path=str(tmp_path / label / f"{i}.wav"), label=label,
                         status="ok", error="", split="train"))
    with pytest.raises(DatasetError, match=r"none of the 4 clips .*errors\.csv.*0\.wav"):
        _run_features(tmp_path, rows)
    report = pd.read_csv(tmp_path / "reports" / "errors.csv")
    assert sorted(report["clip_id"]) == ["a/0", "a/1", "b/2", "b/3"]
    assert not (tmp_path / "features").exists()


def test_a_label_whose_training_clips_all_fail_to_decode_stops_the_features_stage(tmp_path):
    """prepare checks every label has a training clip by the files' headers; when all of one label's training
    clips then failed to decode, the store kept the label (an output the model never learns, scored as if it
    had) and the stage exited 0."""
    rows = []
    for i, (label, split) in enumerate([("a", "train"), ("a", "test"), ("b", "train"), ("b", "test"),
                                        ("c", "train"), ("c", "test")]):
        _float_wav(tmp_path / label / f"{i}.wav", 1e13 if (label, split) == ("c", "train") else 0.1)
        rows.append(dict(clip_id=f"{label}/{i}", path=str(tmp_path / label / f"{i}.wav"), label=label,
                         status="ok", error="", split=split))
    with pytest.raises(DatasetError, match=r"label\(s\) c have no training clip"):
        _run_features(tmp_path, rows)
    assert pd.read_csv(tmp_path / "reports" / "errors.csv")["clip_id"].tolist() == ["c/4"]
    rows[4]["split"] = "valid"  # a label with training clips that decode: the stage goes on, the failure reported
    rows[5]["split"] = "train"
    store, failures = _run_features(tmp_path, rows)
    assert store.labels == ["a", "b", "c"] and failures["clip_id"].tolist() == ["c/4"]
    assert pd.read_csv(tmp_path / "reports" / "errors.csv")["clip_id"].tolist() == ["c/4"]


@pytest.mark.parametrize("how", ["meta without labels", "meta of unknown features"])
def test_a_store_with_unreadable_metadata_says_what_to_do(tmp_path, index, how):
    """meta.json without labels, or with features this version has no field for (a store from another version):
    the message named the file but not the way out, which every other refusal of a store gives."""
    build_store(index, dataclasses.replace(CFG, workers=1), tmp_path / "features", tmp_path / "cache")
    store = tmp_path / "features"
    if how == "meta of unknown features":
        meta = json.loads((store / "meta.json").read_text())
        meta["features"]["window"] = "hann"
        (store / "meta.json").write_text(json.dumps(meta))
    else:
        _damage(store, how)
    with pytest.raises(DatasetError, match=r"meta\.json: corrupt feature store metadata .*run `genre-se features` again"):
        FeatureStore.open(store)


def test_the_cache_key_changes_with_every_feature_setting_but_workers(tmp_path):
    """Shards cached under one features key are reused by any run with that key: every setting that changes the
    values must change it (workers only changes the speed); a waveform copy's shard is keyed by its amount too."""
    from genre_se.feature_store import _shard_name, features_key

    base = FeatureConfig()
    changed = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 256, "n_mels": 64, "fmin": 20.0, "fmax": 8000.0,
               "ref_power": 2.0, "amin": 1e-8, "segment_frames": 64, "segment_hop": 32}
    assert set(changed) | {"workers"} == {f.name for f in dataclasses.fields(FeatureConfig)}
    for name, value in changed.items():
        assert features_key(dataclasses.replace(base, **{name: value})) != features_key(base), name
    assert features_key(dataclasses.replace(base, workers=7)) == features_key(base)
    path = tmp_path / "a.wav"
    path.write_bytes(b"x")
    plain = _shard_name("a", str(path))
    assert _shard_name("a", str(path)) == plain and _shard_name("b", str(path)) != plain
    assert _shard_name("a", str(path), "mp3", 64.0) != _shard_name("a", str(path), "mp3", 128.0)
    assert _shard_name("a", str(path), "mp3", 64.0) != _shard_name("a", str(path), "pitch", 64.0) != plain
