"""Dataset indexing: layouts, unreadable files, splits, folds, GTZAN's fault-filtered lists, the prepare stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from genre_se.config import DataConfig, EvaluateConfig, Params
from genre_se.datasets import (
    assign_splits,
    find_clips,
    gtzan_filtered_lists,
    index_dataset,
    read_index,
    run_prepare,
)
from genre_se.errors import DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
SR = 8000


def write_tone(path: Path, seconds: float = 0.05, sr: int = SR, channels: int = 1, fmt: str | None = None) -> Path:
    """A short sine so every file is real, readable audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    sf.write(path, data, sr, format=fmt, subtype="PCM_16")
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all" * 20)
    return path


def make_gtzan(root: Path, genres=("blues", "jazz", "rock"), numbers=range(3), ext="wav") -> Path:
    for genre in genres:
        for number in numbers:
            write_tone(root / genre / f"{genre}.{number:05d}.{ext}", fmt="AU" if ext == "au" else None)
    return root


def make_folders(root: Path, per_label: dict[str, int]) -> Path:
    for label, count in per_label.items():
        for i in range(count):
            write_tone(root / label / f"song_{i:03d}.wav")
    return root


def ok_index(n_per_label: dict[str, int]) -> pd.DataFrame:
    """An in-memory index (no files needed): splitting only looks at clip_id, label, status, path."""
    rows = [
        (f"{label}/{label}.{i:05d}", f"/x/{label}/{label}.{i:05d}.wav", label, "ok", "")
        for label, n in n_per_label.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["clip_id", "path", "label", "status", "error"])


# --------------------------------------------------------------------------------------------------
# Layouts


@pytest.mark.parametrize("subfolder", ["genres", "genres_original"])
def test_gtzan_layout_from_parent_and_from_genres_folder(tmp_path, subfolder):
    genres_dir = make_gtzan(tmp_path / subfolder)
    (genres_dir / "blues" / "blues.mf").write_text("not a clip")  # GTZAN's own listing files are ignored
    write_tone(genres_dir / "blues" / "._blues.00000.wav")  # macOS shadow files are ignored
    write_tone(genres_dir / "blues" / "rock.00007.wav")  # a clip misfiled in another genre's folder: neither's
    for root in (tmp_path, genres_dir):
        clips = find_clips(DataConfig(root=str(root), layout="gtzan"))
        assert list(clips.columns) == ["clip_id", "path", "label"]
        assert len(clips) == 9
        assert clips["clip_id"].iloc[0] == "blues/blues.00000"
        assert clips["clip_id"].is_unique and clips["clip_id"].is_monotonic_increasing
        assert sorted(clips["label"].unique()) == ["blues", "jazz", "rock"]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in clips["path"])
        assert (clips["clip_id"].str.split("/").str[0] == clips["label"]).all()


def test_gtzan_layout_reads_au_and_prefers_wav_when_both_exist(tmp_path):
    make_gtzan(tmp_path / "genres", genres=("blues",), numbers=range(2), ext="au")
    write_tone(tmp_path / "genres" / "blues" / "blues.00000.wav")
    clips = find_clips(DataConfig(root=str(tmp_path), layout="gtzan"))
    assert clips["clip_id"].tolist() == ["blues/blues.00000", "blues/blues.00001"]
    assert [Path(p).suffix for p in clips["path"]] == [".wav", ".au"]


def test_gtzan_layout_on_other_tree_says_what_it_looked_for(tmp_path):
    make_folders(tmp_path, {"rock": 2})
    with pytest.raises(DatasetError, match=r"no GTZAN clips.*NNNNN"):
        find_clips(DataConfig(root=str(tmp_path), layout="gtzan"))


def test_folders_layout_finds_nested_files_and_labels_by_first_level(tmp_path):
    write_tone(tmp_path / "rock" / "a.wav")
    write_tone(tmp_path / "rock" / "live" / "2001" / "b.wav")
    write_tone(tmp_path / "jazz" / "c.flac", fmt="FLAC")
    write_tone(tmp_path / "jazz" / "c.wav")  # same stem as c.flac: ids must still be unique
    write_tone(tmp_path / "jazz" / "d.WAV")  # extensions match case-insensitively
    (tmp_path / "jazz" / "notes.txt").write_text("not audio")
    write_tone(tmp_path / "loose.wav")  # no label folder: ignored
    write_tone(tmp_path / ".hidden" / "e.wav")  # hidden folders: ignored
    clips = find_clips(DataConfig(root=str(tmp_path), layout="folders"))
    assert clips["clip_id"].is_unique and clips["clip_id"].is_monotonic_increasing
    by_id = dict(zip(clips["clip_id"], clips["label"]))
    assert by_id == {
        "jazz/c.flac": "jazz",
        "jazz/c.wav": "jazz",
        "jazz/d": "jazz",
        "rock/a": "rock",
        "rock/live/2001/b": "rock",
    }


def test_clip_ids_stay_unique_when_a_stem_is_another_files_name(tmp_path):
    """a.wav and a.flac keep their extensions (their stems collide) and a.wav.flac's stem is a.wav: two clips had
    the id jazz/a.wav, so the store kept one file's segments for both (one shard per id) and scored them as one
    clip. Folder and manifest layouts alike."""
    write_tone(tmp_path / "jazz" / "a.wav")
    write_tone(tmp_path / "jazz" / "a.flac", fmt="FLAC")
    write_tone(tmp_path / "jazz" / "a.wav.flac", fmt="FLAC")
    write_tone(tmp_path / "rock" / "b.wav")
    clips = find_clips(DataConfig(root=str(tmp_path), layout="folders"))
    assert clips["clip_id"].is_unique and len(clips) == 4
    assert dict(zip(clips["clip_id"], clips["path"].map(lambda p: Path(p).name))) == {
        "jazz/a.flac": "a.flac", "jazz/a.wav": "a.wav", "jazz/a.wav.flac": "a.wav.flac", "rock/b": "b.wav"}
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,label\njazz/a.wav,jazz\njazz/a.flac,jazz\njazz/a.wav.flac,jazz\nrock/b.wav,rock\n")
    listed = find_clips(DataConfig(root="unused", layout="manifest", manifest=str(manifest)))
    assert listed["clip_id"].tolist() == clips["clip_id"].tolist()


def test_folders_layout_respects_extensions(tmp_path):
    write_tone(tmp_path / "rock" / "a.wav")
    write_tone(tmp_path / "rock" / "b.flac", fmt="FLAC")
    clips = find_clips(DataConfig(root=str(tmp_path), layout="folders", extensions=["flac"]))
    assert clips["clip_id"].tolist() == ["rock/b"]


def test_manifest_with_relative_and_absolute_paths(tmp_path):
    audio = tmp_path / "audio"
    write_tone(audio / "x.wav")
    write_tone(audio / "deep" / "y.wav")
    outside = write_tone(tmp_path / "elsewhere" / "z.wav")
    lists = tmp_path / "lists"
    lists.mkdir()
    manifest = lists / "clips.csv"
    manifest.write_text(f"path,label\n../audio/x.wav,rock\n../audio/deep/y.wav,jazz\n{outside},pop\n")
    clips = find_clips(DataConfig(root="unused", layout="manifest", manifest=str(manifest)))
    assert len(clips) == 3 and clips["clip_id"].is_unique
    assert dict(zip(clips["path"], clips["label"])) == {
        str((audio / "x.wav").resolve()): "rock",
        str((audio / "deep" / "y.wav").resolve()): "jazz",
        str(outside.resolve()): "pop",
    }


def test_manifest_relative_to_params_dir_and_bad_manifests(tmp_path):
    write_tone(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("path,label\na.wav,rock\n")
    clips = find_clips(DataConfig(layout="manifest", manifest="m.csv"), params_dir=tmp_path)
    assert clips["path"].tolist() == [str((tmp_path / "a.wav").resolve())]
    (tmp_path / "spaced.csv").write_text("Path , LABEL\n a.wav , rock \n")  # a hand-edited manifest's padding
    clips = find_clips(DataConfig(layout="manifest", manifest="spaced.csv"), params_dir=tmp_path)
    assert clips[["path", "label"]].values.tolist() == [[str((tmp_path / "a.wav").resolve()), "rock"]]

    (tmp_path / "nolabel.csv").write_text("path,genre\na.wav,rock\n")
    with pytest.raises(DatasetError, match=r"nolabel\.csv.*label"):
        find_clips(DataConfig(layout="manifest", manifest=str(tmp_path / "nolabel.csv")))
    (tmp_path / "dup.csv").write_text("path,label\na.wav,rock\n./a.wav,jazz\n")
    with pytest.raises(DatasetError, match="more than once"):
        find_clips(DataConfig(layout="manifest", manifest=str(tmp_path / "dup.csv")))
    with pytest.raises(DatasetError, match=r"missing\.csv.*does not exist"):
        find_clips(DataConfig(layout="manifest", manifest=str(tmp_path / "missing.csv")))


def test_auto_detects_each_layout(tmp_path):
    gtzan_parent = tmp_path / "g"
    make_gtzan(gtzan_parent / "genres")
    auto = find_clips(DataConfig(root=str(gtzan_parent), layout="auto"))
    assert sorted(auto["label"].unique()) == ["blues", "jazz", "rock"]  # "folders" would say "genres"
    assert auto["clip_id"].iloc[0] == "blues/blues.00000"

    tree = make_folders(tmp_path / "f", {"rock": 2, "jazz": 1})
    auto = find_clips(DataConfig(root=str(tree), layout="auto"))
    assert auto["clip_id"].tolist() == ["jazz/song_000", "rock/song_000", "rock/song_001"]

    # A GTZAN-looking tree with other audio inside is a folder tree: nothing may be silently dropped.
    mixed = make_gtzan(tmp_path / "m", genres=("blues",), numbers=range(2))
    write_tone(mixed / "blues" / "extra" / "take.wav")
    assert len(find_clips(DataConfig(root=str(mixed), layout="auto"))) == 3

    write_tone(tmp_path / "one.wav")
    (tmp_path / "list.csv").write_text("path,label\none.wav,pop\n")
    auto = find_clips(DataConfig(root=str(gtzan_parent), layout="auto", manifest=str(tmp_path / "list.csv")))
    assert auto["label"].tolist() == ["pop"]


def test_missing_empty_and_audio_free_roots_raise_with_what_was_looked_for(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.*does not exist"):
        find_clips(DataConfig(root=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"no audio files \(\*\.au, \*\.flac.*empty"):
        find_clips(DataConfig(root=str(empty)))
    (empty / "rock").mkdir()
    (empty / "rock" / "readme.txt").write_text("no audio here")
    with pytest.raises(DatasetError, match=r"<root>/<label>/"):
        find_clips(DataConfig(root=str(empty), layout="folders"))
    file_root = write_tone(tmp_path / "file.wav")
    with pytest.raises(DatasetError, match="not a folder"):
        find_clips(DataConfig(root=str(file_root)))


def test_an_empty_genre_folder_is_an_error_naming_it(tmp_path):
    """One genre folder left empty (an extraction that failed) used to drop that genre silently: the model
    trained on the other genres as if it had never existed."""
    make_folders(tmp_path / "music", {"rock": 3, "jazz": 3})
    (tmp_path / "music" / "blues").mkdir()
    with pytest.raises(DatasetError, match=r"data\.root: label folder\(s\) blues of .* hold no"):
        find_clips(DataConfig(root=str(tmp_path / "music")))
    make_gtzan(tmp_path / "genres", genres=("jazz", "rock"))
    (tmp_path / "genres" / "blues").mkdir()
    for layout in ("auto", "gtzan"):
        with pytest.raises(DatasetError, match=r"data\.root: label folder\(s\) blues of .* hold no"):
            find_clips(DataConfig(root=str(tmp_path / "genres"), layout=layout))
    # a macOS zip's resource forks (hidden ._* files only) are not an empty genre
    (tmp_path / "music" / "blues").rmdir()
    (tmp_path / "music" / "__MACOSX").mkdir()
    (tmp_path / "music" / "__MACOSX" / "._rock.wav").write_bytes(b"\0" * 64)
    assert set(find_clips(DataConfig(root=str(tmp_path / "music")))["label"]) == {"rock", "jazz"}


def test_find_clips_is_deterministic(tmp_path):
    make_folders(tmp_path, {"b": 3, "a": 4})
    first = find_clips(DataConfig(root=str(tmp_path)))
    second = find_clips(DataConfig(root=str(tmp_path)))
    pd.testing.assert_frame_equal(first, second)
    assert first["clip_id"].tolist() == sorted(first["clip_id"])


# --------------------------------------------------------------------------------------------------
# Indexing and unreadable files


def test_index_reports_unreadable_files_and_keeps_going(tmp_path):
    make_gtzan(tmp_path / "genres", genres=("jazz", "rock"), numbers=range(4))
    write_tone(tmp_path / "genres" / "rock" / "rock.00004.wav", seconds=0.25, sr=11025, channels=2)
    bad = write_garbage(tmp_path / "genres" / "jazz" / "jazz.00054.wav")
    index = index_dataset(DataConfig(root=str(tmp_path)))
    assert list(index.columns) == [
        "clip_id", "path", "label", "duration", "sample_rate", "channels", "status", "error"
    ]
    assert len(index) == 10
    row = index.set_index("clip_id").loc["jazz/jazz.00054"]
    assert row["status"] == "error"
    assert "jazz.00054.wav" in row["error"]
    assert np.isnan(row["duration"])
    ok = index[index["status"] == "ok"]
    assert len(ok) == 9 and (ok["error"] == "").all()
    stereo = index.set_index("clip_id").loc["rock/rock.00004"]
    assert (stereo["sample_rate"], stereo["channels"]) == (11025, 2)
    assert stereo["duration"] == pytest.approx(0.25, abs=1e-3)
    short = ok[ok["clip_id"] != "rock/rock.00004"]
    assert short["duration"].between(0.049, 0.051).all()

    split = assign_splits(index, DataConfig(root=str(tmp_path)), seed=0, folds=3)
    bad_row = split.set_index("path").loc[str(bad.resolve())]
    assert bad_row["split"] == "excluded" and bad_row["fold"] == -1
    assert set(split.loc[split["status"] == "ok", "split"]) <= {"train", "valid", "test"}


def test_empty_file_is_an_error_row(tmp_path):
    make_folders(tmp_path, {"rock": 3})
    (tmp_path / "rock" / "empty.wav").write_bytes(b"")
    index = index_dataset(DataConfig(root=str(tmp_path)))
    row = index.set_index("clip_id").loc["rock/empty"]
    assert row["status"] == "error" and "empty.wav" in row["error"]


# --------------------------------------------------------------------------------------------------
# Splits and folds


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    index = ok_index({"blues": 20, "jazz": 13, "rock": 3, "pop": 2, "metal": 1})
    cfg = DataConfig(val_fraction=0.15, test_fraction=0.2)
    first = assign_splits(index, cfg, seed=7)
    again = assign_splits(index, cfg, seed=7)
    other = assign_splits(index, cfg, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])
    assert len(first) == len(index) and first["clip_id"].is_unique  # one split per clip
    assert set(first["split"]) <= {"train", "valid", "test"}
    counts = first.groupby(["label", "split"]).size().unstack(fill_value=0)
    for label in ("blues", "jazz", "rock"):  # >= 3 clips: a test, a valid and a train clip each
        assert counts.loc[label, ["train", "valid", "test"]].min() >= 1
    assert counts.loc["blues", "test"] == 4 and counts.loc["blues", "valid"] == 3  # 20 * 0.2, 20 * 0.15
    assert counts.loc["pop", "train"] == 2 and counts.loc["metal", "train"] == 1
    assert index.equals(ok_index({"blues": 20, "jazz": 13, "rock": 3, "pop": 2, "metal": 1}))  # input untouched


def test_split_does_not_depend_on_row_order_or_other_labels():
    index = ok_index({"blues": 15, "jazz": 15})
    cfg = DataConfig()
    base = assign_splits(index, cfg, seed=3).set_index("clip_id")["split"]
    shuffled = assign_splits(index.sample(frac=1.0, random_state=1), cfg, seed=3).set_index("clip_id")["split"]
    assert base.sort_index().equals(shuffled.sort_index())
    more = assign_splits(ok_index({"blues": 15, "jazz": 15, "rock": 9}), cfg, seed=3).set_index("clip_id")["split"]
    assert more.loc[base.index].equals(base)


def test_small_classes_still_get_a_test_clip():
    split = assign_splits(ok_index({"a": 3, "b": 4, "c": 5}), DataConfig(val_fraction=0.1, test_fraction=0.1), 0)
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert (counts[["train", "valid", "test"]] >= 1).all().all()  # 3 * 0.1 rounds to 0, yet one test clip


def test_large_held_out_fractions_still_leave_every_label_a_training_clip():
    """4 clips at 0.4 + 0.4 round to 2 test and 2 valid clips: all four held out, a genre the model never trains
    on. One is given back to training (valid first), and a test clip always stays."""
    cfg = DataConfig(val_fraction=0.4, test_fraction=0.4)
    for seed in range(3):
        split = assign_splits(ok_index({"a": 4, "b": 3, "c": 5}), cfg, seed)
        counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
        assert (counts["train"] >= 1).all() and (counts["test"] >= 1).all(), counts
        assert counts.loc["a"].tolist() == [2, 1, 1] and counts.loc["c"].tolist() == [2, 1, 2]  # test, train, valid

def test_too_few_clips_per_genre_to_hold_any_out_is_refused_at_prepare():
    """With 2 clips per genre every clip would train: named here, not as 'set data.val_fraction > 0' by tune
    and 'the split has no segments' by evaluate, stages later. assign_splits itself still deals folds (a
    cross-validation only study may use so few)."""
    from genre_se.datasets import _check_something_held_out

    tiny = assign_splits(ok_index({"a": 2, "b": 2, "c": 1}), DataConfig(root="music"), seed=0, folds=2)
    assert set(tiny["split"]) == {"train"} and set(tiny["fold"]) == {0, 1}
    with pytest.raises(DatasetError, match=r"music: at most 2 readable clips per genre.*clips_per_genre >= 3"):
        _check_something_held_out(tiny, DataConfig(root="music"))
    # one genre big enough is enough to hold clips out (the others train only)
    split = assign_splits(ok_index({"a": 2, "b": 3}), DataConfig(), seed=0)
    _check_something_held_out(split, DataConfig())
    assert set(split.loc[split["label"] == "b", "split"]) == {"train", "valid", "test"}


def test_zero_validation_fraction_gives_no_valid_clips():
    split = assign_splits(ok_index({"a": 10, "b": 10}), DataConfig(val_fraction=0.0, test_fraction=0.3), seed=1)
    assert set(split["split"]) == {"train", "test"}
    assert (split["split"] == "test").sum() == 6


def test_folds_cover_every_readable_clip_once_and_are_stratified():
    index = ok_index({"blues": 11, "jazz": 7, "rock": 5})
    index.loc[3, ["status", "error"]] = ["error", "broken"]
    folded = assign_splits(index, DataConfig(), seed=5, folds=4)
    readable = folded[folded["status"] == "ok"]
    assert folded.loc[3, "fold"] == -1 and folded.loc[3, "split"] == "excluded"
    assert set(readable["fold"]) == {0, 1, 2, 3}
    sizes = readable["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(readable) == 22
    per_label = readable.groupby("label")["fold"].value_counts().unstack(fill_value=0)
    assert (per_label.max(axis=1) - per_label.min(axis=1)).max() <= 1
    assert assign_splits(index, DataConfig(), seed=5, folds=4)["fold"].equals(folded["fold"])
    assert not assign_splits(index, DataConfig(), seed=6, folds=4)["fold"].equals(folded["fold"])
    assert "fold" not in assign_splits(index, DataConfig(), seed=5).columns
    with pytest.raises(DatasetError, match="evaluate.folds"):
        assign_splits(ok_index({"a": 2}), DataConfig(), seed=0, folds=3)


def test_nothing_readable_raises():
    index = ok_index({"a": 3}).assign(status="error", error="bad")
    with pytest.raises(DatasetError, match="readable"):
        assign_splits(index, DataConfig(), seed=0)


# --------------------------------------------------------------------------------------------------
# GTZAN fault-filtered split


def test_shipped_fault_filtered_lists_are_the_published_ones():
    lists = gtzan_filtered_lists()
    assert {k: len(v) for k, v in lists.items()} == {"train": 443, "valid": 197, "test": 290}
    assert not (lists["train"] & lists["valid"] or lists["train"] & lists["test"] or lists["valid"] & lists["test"])
    everything = set().union(*lists.values())
    assert {name.split(".")[0] for name in everything} == set(GENRES)
    # Spot checks against the published lists (Kereliuk et al. 2015; coreyker/dnn-mgr; torchaudio):
    assert {"blues.00029", "jazz.00054", "rock.00099", "country.00019"} <= lists["train"]
    assert {"blues.00000", "classical.00068", "hiphop.00098", "rock.00038"} <= lists["valid"]
    assert {"blues.00012", "jazz.00073", "classical.00049", "rock.00090"} <= lists["test"]
    assert "hiphop.00001" not in everything and "reggae.00003" not in everything


def test_gtzan_fault_filtered_split_on_fake_gtzan_files(tmp_path):
    names = {
        "blues.00029": "train",
        "rock.00000": "train",
        "blues.00000": "valid",
        "classical.00068": "valid",
        "blues.00012": "test",
        "jazz.00073": "test",
        "hiphop.00001": "excluded",  # in no list
        "reggae.00003": "excluded",
    }
    for name in names:
        genre = name.split(".")[0]
        write_tone(tmp_path / "genres_original" / genre / f"{name}.wav")
    write_garbage(tmp_path / "genres_original" / "jazz" / "jazz.00054.wav")  # train in the lists, unreadable
    cfg = DataConfig(root=str(tmp_path), split="gtzan-fault-filtered")
    index = index_dataset(cfg)
    split = assign_splits(index, cfg, seed=0)
    got = dict(zip(split["clip_id"].str.split("/").str[1], split["split"]))
    assert got == {**names, "jazz.00054": "excluded"}
    # The split comes from the lists, not the seed.
    assert assign_splits(index, cfg, seed=99)["split"].equals(split["split"])


def test_gtzan_fault_filtered_split_refuses_non_gtzan_data():
    with pytest.raises(DatasetError, match="gtzan-fault-filtered"):
        assign_splits(ok_index({"a": 3}).assign(path="/x/a/song.wav"), DataConfig(split="gtzan-fault-filtered"), 0)


# --------------------------------------------------------------------------------------------------
# The prepare stage


def test_run_prepare_writes_index_and_error_report(tmp_path, monkeypatch):
    make_folders(tmp_path / "music", {"rock": 5, "jazz": 5})
    write_garbage(tmp_path / "music" / "jazz" / "broken.wav")
    monkeypatch.chdir(tmp_path)  # data.root is relative to the working directory
    params = Params(seed=1, data=DataConfig(root="music"), evaluate=EvaluateConfig(folds=2))
    returned = run_prepare(params, index_path="out/index.csv", errors_path="reports/errors.csv")
    written = read_index(tmp_path / "out" / "index.csv")
    assert len(written) == len(returned) == 11
    assert written["clip_id"].tolist() == returned["clip_id"].tolist()
    assert written["split"].tolist() == returned["split"].tolist()
    assert written["fold"].tolist() == returned["fold"].tolist()
    assert written["sample_rate"].dropna().eq(SR).all()
    errors = pd.read_csv(tmp_path / "reports" / "errors.csv")
    assert list(errors.columns) == ["path", "error"]
    assert len(errors) == 1
    assert errors["path"].iloc[0].endswith("broken.wav") and "broken.wav" in errors["error"].iloc[0]
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_run_prepare_with_all_files_readable_writes_empty_error_report(tmp_path, monkeypatch):
    make_folders(tmp_path / "music", {"rock": 3, "jazz": 3})
    monkeypatch.chdir(tmp_path)
    run_prepare(Params(data=DataConfig(root="music")), index_path="i.csv", errors_path="e.csv")
    assert pd.read_csv(tmp_path / "e.csv").empty
    assert read_index(tmp_path / "i.csv")["status"].eq("ok").all()


def test_read_index_on_missing_file_raises(tmp_path):
    with pytest.raises(DatasetError, match="prepare"):
        read_index(tmp_path / "none.csv")


# --------------------------------------------------------------------------------------------------
# Real data


def test_gtzan_mini_is_indexed_whole_and_readable():
    root = SHARED_DATA / "gtzan-mini" / "genres"
    if not root.is_dir():
        pytest.skip(f"real GTZAN sample not available at {root}")
    index = index_dataset(DataConfig(root=str(root)))
    assert len(index) == 71
    assert sorted(index["label"].unique()) == GENRES
    assert index["status"].eq("ok").all(), index.loc[index["status"] != "ok", "error"].tolist()
    assert index["duration"].between(29.9, 30.5).all()
    assert index["sample_rate"].eq(22050).all() and index["channels"].eq(1).all()
    filtered = assign_splits(index, DataConfig(root=str(root), split="gtzan-fault-filtered"), seed=0)
    by_name = dict(zip(filtered["clip_id"], filtered["split"]))
    assert by_name["blues/blues.00000"] == "valid"
    assert by_name["hiphop/hiphop.00000"] == "test"
    assert by_name["rock/rock.00000"] == "train"
    assert by_name["hiphop/hiphop.00001"] == "excluded"


def test_prepare_refuses_a_dataset_that_holds_nothing_out(tmp_path):
    from genre_se.config import Params
    from tests.conftest import make_tone_dataset

    root = make_tone_dataset(tmp_path / "tones", per_label=2, seconds=0.5)
    params = Params(data=DataConfig(root=str(root)))
    with pytest.raises(DatasetError, match="nothing would be held out"):
        run_prepare(params, tmp_path / "index.csv", tmp_path / "errors.csv")
    assert not (tmp_path / "index.csv").exists()


@pytest.mark.parametrize("broken_genre", [None, "rock"])
def test_prepare_refuses_a_single_genre_naming_the_folder(tmp_path, broken_genre):
    """data.root pointed at one genre's folder (or a tree with one genre of readable audio) used to pass prepare
    and features, then stop tune with 'n_classes must be an int >= 2, got 1'."""
    make_folders(tmp_path / "music", {"blues": 7})
    if broken_genre:  # a second genre whose only file is unreadable does not count
        write_garbage(tmp_path / "music" / broken_genre / "broken.wav")
    params = Params(data=DataConfig(root=str(tmp_path / "music")))
    with pytest.raises(DatasetError, match=r"data.root: .* one genre only \(blues\)"):
        run_prepare(params, tmp_path / "index.csv", tmp_path / "errors.csv")
    assert not (tmp_path / "index.csv").exists()


def test_fault_filtered_split_refuses_clip_dealt_folds():
    """k folds dealt clip by clip would spread one artist (blues.00000-00011: John Lee Hooker) over the folds,
    undoing the artist-disjoint lists."""
    names = [f"blues.{i:05d}" for i in range(12)] + ["blues.00012", "blues.00029"]
    index = pd.DataFrame({"clip_id": [f"blues/{n}" for n in names], "path": [f"/g/blues/{n}.wav" for n in names],
                          "label": "blues", "status": "ok"})
    cfg = DataConfig(split="gtzan-fault-filtered")
    assign_splits(index, cfg, seed=0)  # the fixed split itself is fine
    with pytest.raises(DatasetError, match="evaluate.folds"):
        assign_splits(index, cfg, seed=0, folds=5)


def test_prepare_refuses_a_label_without_training_clips():
    """The fault-filtered lists on a partial copy (gtzan-mini: blues 0-6 are all in the valid list) leave a
    genre with no training clip; the model would have an output it never learnt."""
    from genre_se.datasets import _check_every_label_trains

    index = pd.DataFrame({"clip_id": ["a/1", "a/2", "b/1", "b/2", "c/1"], "label": list("aabbc"),
                          "split": ["train", "test", "valid", "test", "excluded"]})
    with pytest.raises(DatasetError, match="b have no training clip"):
        _check_every_label_trains(index)
    _check_every_label_trains(index.assign(split=["train", "test", "train", "test", "excluded"]))


def test_clip_ids_keep_a_stem_that_collides_with_nothing():
    """a.wav beside a.wav.ogg: ids a and a.wav are already unique, so neither keeps its extension (renaming a clip
    that never collided would give existing indexes new ids)."""
    from genre_se.datasets import _unique_ids

    assert _unique_ids(["jazz/a.wav", "jazz/a.wav.ogg"]) == ["jazz/a", "jazz/a.wav"]
    assert _unique_ids(["jazz/a.wav", "jazz/a.flac", "jazz/a.wav.flac"]) == ["jazz/a.wav", "jazz/a.flac",
                                                                             "jazz/a.wav.flac"]
