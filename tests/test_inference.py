"""GenreClassifier: prediction and embedding of files and arrays with a tiny trained bundle.

The bundle is trained (a few seconds) on a feature store of noisy tones, one pitch band per genre, so
predictions are meaningful: a tone of a band is recognised, and a file that changes band changes genre
on the timeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from genre_se.config import FeatureConfig, ModelConfig
from genre_se.errors import AudioError, ModelError
from tests.conftest import make_tone_dataset

FEATURES = FeatureConfig(
    sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8, workers=1
)
MODEL = ModelConfig(filters=[4, 8], dropout=0.0, reduction_ratios=2)
BAND_HZ = {"low": 200, "mid": 800, "high": 3200}  # the pitch bands of conftest.make_tone_dataset


def tone(freq: float, seconds: float, sr: int = 8000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)


def write(path: Path, y: np.ndarray, sr: int = 8000, **kwargs) -> Path:
    sf.write(path, y, sr, **kwargs)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A trained tiny bundle and the feature store it was trained on (as the train stage would)."""
    import keras

    from genre_se.bundle import save_bundle
    from genre_se.feature_store import build_store
    from genre_se.model import build_model

    root = tmp_path_factory.mktemp("tiny")
    files = sorted(make_tone_dataset(root / "tones", per_label=4, seconds=1.5).rglob("*.wav"))
    # a test clip whose genre changes halfway, so segment probabilities disagree and aggregation matters
    (root / "mixed").mkdir()
    mixed = write(root / "mixed" / "mid.mixed.wav", np.concatenate([tone(200, 1.0), tone(3200, 1.5, seed=1)]))
    index = pd.DataFrame(
        {
            "clip_id": [f.stem for f in files] + ["mixed"],
            "path": [str(f) for f in files] + [str(mixed)],
            "label": [f.parent.name for f in files] + ["mid"],
            "status": "ok",
            "split": ["test" if f.stem.endswith("3") else "train" for f in files] + ["test"],
        }
    )
    store, failures = build_store(index, FEATURES, root / "features", root / "cache", workers=1)
    assert failures.empty
    train_rows = store.rows("train")
    x = np.asarray(store.segments[train_rows], dtype=np.float32)
    keras.utils.set_random_seed(0)
    model = build_model(MODEL, store.input_shape, len(store.labels), mean=float(x.mean()), std=float(x.std()))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, store.table["label_index"].to_numpy()[train_rows], epochs=10, batch_size=16, verbose=0)
    bundle = save_bundle(root / "bundle", model, store.labels, FEATURES, MODEL)
    return {"bundle": bundle, "store": store, "index": index}


@pytest.fixture(scope="session")
def clf(tiny):
    from genre_se.inference import GenreClassifier

    return GenreClassifier.load(tiny["bundle"])


# --------------------------------------------------------------------------------------------------
# Files of every format


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "au", "aiff"])
def test_predict_and_embed_every_format(clf, tmp_path, ext):
    from genre_se.features import n_segments_for

    path = write(tmp_path / f"mid.{ext}", tone(BAND_HZ["mid"], 2.0, sr=16000), sr=16000)  # resampled to 8 kHz
    result = clf.predict(path)
    assert result.path == str(path)
    assert result.genre == "mid" and result.top(1)[0][0] == "mid"
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert set(result.distribution()) == {"low", "mid", "high"}
    assert [g for g, _ in result.top(3)] == sorted(clf.labels, key=lambda g: -result.distribution()[g])
    assert result.duration == pytest.approx(2.0, abs=0.02)
    if ext != "mp3":  # MP3 adds encoder delay/padding samples
        assert result.n_segments == n_segments_for(16000, FEATURES)

    embedding = clf.embed(path)
    assert embedding.segments.shape == (result.n_segments, MODEL.filters[-1])
    np.testing.assert_allclose(embedding.pooled, embedding.segments.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(embedding.segment_starts, result.segment_starts)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_top_k_below_one_or_not_a_whole_number_is_refused(clf, tmp_path, k):
    from genre_se.errors import ConfigError
    from genre_se.outputs import PredictionFormatter

    result = clf.predict(write(tmp_path / "mid.wav", tone(BAND_HZ["mid"], 2.0, sr=8000), sr=8000))
    with pytest.raises(ConfigError, match="top_k must be a whole number >= 1"):
        result.top(k)
    with pytest.raises(ConfigError, match="top_k"):
        result.to_dict(top_k=k)
    with pytest.raises(ConfigError, match="top_k"):
        PredictionFormatter("json", top_k=k)
    assert len(result.top(np.int64(10))) == len(clf.labels)  # more than there are: all of them


def test_wav_and_mp3_give_near_identical_probabilities(clf, tmp_path):
    # between two bands, so the distribution is spread out and the comparison means something
    y = 0.5 * tone(BAND_HZ["low"] * 2, 4.0, sr=22050) + 0.5 * tone(BAND_HZ["mid"] * 2, 4.0, sr=22050, seed=1)
    wav = clf.predict(write(tmp_path / "clip.wav", y, 22050))
    mp3 = clf.predict(write(tmp_path / "clip.mp3", y, 22050))
    assert wav.probabilities.max() < 0.99  # not a trivially saturated case
    np.testing.assert_allclose(mp3.probabilities, wav.probabilities, atol=0.03)
    assert mp3.genre == wav.genre


# --------------------------------------------------------------------------------------------------
# No training/serving skew


def test_predictions_equal_the_evaluate_stage(clf, tiny):
    from genre_se.metrics import aggregate_clips
    from genre_se.train import predict_rows

    store = tiny["store"]
    rows = store.rows("test")
    clip_of_row = store.table["clip_id"].to_numpy()[rows]
    segment_probs = predict_rows(clf.bundle.model, store, rows)  # what `genre-se evaluate` computes
    clips = aggregate_clips(clip_of_row, segment_probs)
    paths = tiny["index"].set_index("clip_id")["path"]
    assert len(clips) == 4
    mixed_probs = segment_probs[clip_of_row == "mixed"]
    assert mixed_probs.argmax(axis=1).min() != mixed_probs.argmax(axis=1).max()  # the segments disagree
    for clip_id, row in clips.iterrows():
        served = clf.predict(paths[clip_id])
        assert served.n_segments == row["n_segments"]
        # the store holds float16 features; everything else is the same road (~1e-5 apart in practice)
        np.testing.assert_allclose(served.segment_probabilities, segment_probs[clip_of_row == clip_id], atol=1e-3)
        np.testing.assert_allclose(served.probabilities, row["probs"], atol=1e-3)
        assert served.labels[int(np.argmax(served.probabilities))] == store.labels[row["pred"]]


def test_predict_array_equals_the_file(clf, tmp_path):
    y = tone(BAND_HZ["high"], 2.5)
    from_file = clf.predict(write(tmp_path / "high.wav", y, subtype="FLOAT"))
    from_array = clf.predict_array(y, 8000)
    np.testing.assert_array_equal(from_array.segment_probabilities, from_file.segment_probabilities)
    assert from_array.path is None and from_array.duration == 2.5

    stereo = np.stack([y, y], axis=1)  # (frames, channels) is averaged to mono
    np.testing.assert_allclose(clf.predict_array(stereo, 8000).probabilities, from_file.probabilities, atol=1e-6)
    # (channels, frames), librosa's mono=False layout, is the same signal (not 2 frames of 20000 channels)
    channels_first = clf.predict_array(stereo.T, 8000)
    assert channels_first.duration == 2.5
    np.testing.assert_allclose(channels_first.probabilities, from_file.probabilities, atol=1e-6)
    assert clf.predict_array(y, 8000.0).duration == 2.5  # a whole-number float rate is a rate
    pcm16 = np.round(y * 32767).astype(np.int16)  # integer PCM is scaled to [-1, 1)
    np.testing.assert_allclose(clf.predict_array(pcm16, 8000).probabilities, from_file.probabilities, atol=1e-3)
    y16k = tone(BAND_HZ["high"], 2.5, sr=16000)
    resampled = clf.predict_array(y16k, 16000)
    assert resampled.genre == "high" and resampled.duration == 2.5
    np.testing.assert_allclose(
        resampled.probabilities, clf.predict(write(tmp_path / "h16.wav", y16k, 16000)).probabilities, atol=1e-3
    )


@pytest.mark.parametrize(
    "bad, sr, match",
    [
        (np.zeros(0, np.float32), 8000, "no samples"),
        (np.zeros((2, 0), np.float32), 8000, "no samples"),  # empty stereo is empty, not NaN
        (np.zeros((0, 2), np.float32), 8000, "no samples"),
        (np.array([0.0, np.nan] * 100, np.float32), 8000, "non-finite"),
        (np.zeros((2, 2, 2), np.float32), 8000, "1-D"),
        (np.zeros(100, np.float32), 0, "sr must be"),
        (np.zeros(100, np.float32), 8000.5, "whole number"),
        (np.array(["a"] * 10), 8000, "real sample values"),
    ],
)
def test_bad_arrays_raise_audio_error(clf, bad, sr, match):
    with pytest.raises(AudioError, match=match):
        clf.predict_array(bad, sr)


def test_unsigned_integer_pcm_is_centred_on_its_midpoint(clf):
    from genre_se.inference import _as_mono

    # 8-bit WAV PCM is unsigned with silence at 128: [-1, 1) like signed PCM, not [0, 1) with a DC offset
    np.testing.assert_array_equal(_as_mono(np.array([0, 128, 255], np.uint8)), [-1.0, 0.0, 127 / 128])
    np.testing.assert_array_equal(_as_mono(np.array([0, 32768], np.uint16)), [-1.0, 0.0])
    np.testing.assert_array_equal(_as_mono(np.array([-32768, 0], np.int16)), [-1.0, 0.0])
    y = tone(BAND_HZ["high"], 2.5)
    pcm8 = np.round(y * 127 + 128).astype(np.uint8)
    np.testing.assert_allclose(clf.predict_array(pcm8, 8000).probabilities, clf.predict_array(y, 8000).probabilities,
                               atol=0.02)


def test_invalid_streaming_options_are_refused_when_the_classifier_is_made(tiny):
    from genre_se.inference import GenreClassifier

    # not later, as an AudioError blaming every (good) file of the batch
    for bad in (0, -1.0, float("nan"), None, "30"):
        with pytest.raises(ModelError, match="block_seconds"):
            GenreClassifier.load(tiny["bundle"], block_seconds=bad)
    for bad in (None, 1.5, -1):
        with pytest.raises(ModelError, match="prefetch"):
            GenreClassifier.load(tiny["bundle"], prefetch=bad)


def test_bytes_and_path_objects_are_paths_too(clf, tmp_path):
    import os

    path = write(tmp_path / "mid.wav", tone(BAND_HZ["mid"], 1.0))
    expected = clf.predict(str(path))
    for given in (path, os.fsencode(path)):
        result = clf.predict(given)
        assert result.path == str(path)  # a str, so to_dict() stays JSON
        np.testing.assert_array_equal(result.probabilities, expected.probabilities)
        assert clf.embed(given).path == str(path)
    json.dumps(clf.predict(os.fsencode(path)).to_dict())


def test_one_path_given_as_the_batch_is_refused(clf, tmp_path):
    from genre_se.errors import ConfigError

    # a str is an iterable of one-character "paths": every one would be reported as a failed file
    path = write(tmp_path / "mid.wav", tone(BAND_HZ["mid"], 1.0))
    for many in (clf.predict_many, clf.embed_many):
        for one in (str(path), path, bytes(path)):
            with pytest.raises(ConfigError, match="one path"):
                many(one)


# --------------------------------------------------------------------------------------------------
# Timeline, short files, long files


def test_timeline_covers_the_file_and_follows_the_genre(clf, tmp_path):
    y = np.concatenate([tone(BAND_HZ["low"], 3.0), tone(BAND_HZ["high"], 3.0, seed=1)])
    result = clf.predict(write(tmp_path / "low_then_high.wav", y))
    timeline = result.timeline()
    assert len(timeline) == result.n_segments > 2
    assert timeline[0]["start"] == 0.0
    assert timeline[-1]["end"] == pytest.approx(result.duration) and result.duration == pytest.approx(6.0)
    for before, after in zip(timeline, timeline[1:]):
        assert before["start"] < after["start"] <= before["end"]  # overlapping segments, no gaps
    assert timeline[0]["genre"] == "low" and timeline[-1]["genre"] == "high"
    assert all(0.0 <= row["probability"] <= 1.0 for row in timeline)


def test_a_file_shorter_than_one_segment_is_padded_and_answered(clf, tmp_path):
    result = clf.predict(write(tmp_path / "blip.wav", tone(BAND_HZ["mid"], 0.05)))  # 4 frames < 16
    assert result.n_segments == 1
    assert result.duration == pytest.approx(0.05)
    assert result.timeline()[0]["end"] == pytest.approx(0.05)
    assert result.probabilities.sum() == pytest.approx(1.0)


def test_batching_and_blocks_do_not_change_the_result(tiny, clf, tmp_path):
    from genre_se.inference import GenreClassifier

    path = write(tmp_path / "long.wav", tone(BAND_HZ["low"], 12.0))
    small = GenreClassifier.load(tiny["bundle"], batch_size=5, block_seconds=0.7)
    seen = []
    streamed = small.predict(path, on_progress=lambda p, seconds: seen.append(seconds))
    whole = clf.predict(path)
    np.testing.assert_allclose(streamed.segment_probabilities, whole.segment_probabilities, atol=1e-6)
    np.testing.assert_array_equal(streamed.segment_starts, whole.segment_starts)
    assert len(seen) >= streamed.n_segments // 5  # one call per batch of 5
    assert seen == sorted(seen) and seen[-1] == pytest.approx(12.0, abs=0.05)


def test_vote_aggregation_counts_segment_winners(tiny, tmp_path):
    from genre_se.inference import GenreClassifier

    y = np.concatenate([tone(BAND_HZ["low"], 3.0), tone(BAND_HZ["high"], 1.5, seed=1)])
    result = GenreClassifier.load(tiny["bundle"], aggregate="vote").predict(write(tmp_path / "x.wav", y))
    winners = result.segment_probabilities.argmax(axis=1)
    expected = np.bincount(winners, minlength=3) / len(winners)
    np.testing.assert_allclose(result.probabilities, expected)
    assert result.aggregate == "vote" and result.genre == "low"
    with pytest.raises(ModelError, match="aggregate"):
        GenreClassifier.load(tiny["bundle"], aggregate="median")


def test_a_tied_vote_is_broken_by_the_segments_mean_not_by_label_order():
    """Two segments say "blues" (barely), two say "rock" (surely): the votes tie at 0.5, and the answer was
    always the label that sorts first. The mean segment distribution decides a tie; silent segments, left out
    of the vote, are left out of the tie-break too."""
    from genre_se.inference import Prediction, aggregate_segments

    labels = ["blues", "country", "rock"]
    segments = np.array([[0.50, 0.10, 0.40], [0.50, 0.10, 0.40], [0.05, 0.05, 0.90], [0.05, 0.05, 0.90]])

    def predicted(segs, silent=None):
        kept = segs if silent is None else segs[~silent]
        n = len(segs)
        return Prediction(path=None, labels=labels, probabilities=aggregate_segments(kept, "vote"),
                          segment_probabilities=segs, segment_starts=np.arange(n, dtype=float),
                          segment_ends=np.arange(n, dtype=float) + 1, duration=float(n), aggregate="vote",
                          uncertain=False, segment_silent=silent)

    tied = predicted(segments)
    np.testing.assert_allclose(tied.probabilities, [0.5, 0.0, 0.5])  # the vote fractions themselves unchanged
    assert tied.genre == "rock"
    assert tied.top(3) == [("rock", 0.5), ("blues", 0.5), ("country", 0.0)]
    assert [g["genre"] for g in tied.to_dict(top_k=2)["top"]] == ["rock", "blues"]
    # a silent segment (here one that would have favoured blues in the mean) takes no part in the tie-break
    loud_blues = np.vstack([segments, [[0.99, 0.005, 0.005]] * 3])
    silent = np.array([False] * 4 + [True] * 3)
    assert predicted(loud_blues, silent).genre == "rock"
    assert predicted(loud_blues).genre == "blues"  # counted, those segments win the vote outright
    # no tie: the vote decides, whatever the mean says
    assert predicted(segments[[0, 1, 2]]).genre == "blues"


def test_a_complete_tie_is_ranked_in_label_order():
    """Equal probabilities and equal tie-breaks (a parts record, the uniform answer of a dead model): the labels'
    own order decides, the same on every run and in every output."""
    from genre_se.results import rank_genres, top_k_records

    assert rank_genres(np.array([0.25, 0.25, 0.5, 0.0])).tolist() == [2, 0, 1, 3]
    assert rank_genres(np.array([0.4, 0.4, 0.2]), np.array([0.3, 0.3, 0.4])).tolist() == [0, 1, 2]
    assert [r["genre"] for r in top_k_records(["a", "b", "c"], np.full(3, 1 / 3), 3)] == ["a", "b", "c"]

# --------------------------------------------------------------------------------------------------
# Many files, failures, the decoding thread


def test_predict_many_reports_bad_files_and_goes_on(clf, tmp_path):
    from genre_se.inference import Failure, Prediction

    good = write(tmp_path / "good.wav", tone(BAND_HZ["mid"], 1.0))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 4)
    other = write(tmp_path / "other.flac", tone(BAND_HZ["low"], 1.0))
    results = list(clf.predict_many([good, corrupt, tmp_path / "missing.mp3", other]))
    assert [type(r) for r in results] == [Prediction, Failure, Failure, Prediction]
    assert str(corrupt) in results[1].message and "missing.mp3" in results[2].message
    assert results[0].genre == "mid" and results[3].genre == "low"
    np.testing.assert_array_equal(results[3].probabilities, clf.predict(other).probabilities)
    with pytest.raises(AudioError, match="corrupt.wav"):
        clf.predict(corrupt)


def test_abandoning_a_batch_stops_the_decoding_thread(clf, tmp_path):
    paths = [write(tmp_path / f"{i}.wav", tone(BAND_HZ["mid"], 1.0, seed=i)) for i in range(6)]
    results = clf.predict_many(paths)
    first = next(results)
    assert first.path == str(paths[0])
    results.close()
    assert not [t for t in threading.enumerate() if t.name == "genre-se-decode"]


def test_expand_paths_finds_audio_recursively(tmp_path):
    from genre_se.inference import expand_paths

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ["a/2.wav", "a/1.MP3", "a/b/3.flac", "a/notes.txt", "a/._1.mp3", "a/noext"]:
        (tmp_path / name).write_bytes(b"x")
    files, empty = expand_paths([tmp_path / "a", tmp_path / "empty", tmp_path / "single.txt"])
    names = [Path(f).relative_to(tmp_path).as_posix() for f in files]
    assert names == ["a/1.MP3", "a/2.wav", "a/b/3.flac", "single.txt"]  # explicit files are kept as given
    assert empty == [str(tmp_path / "empty")]


def _unlistable(monkeypatch, *names):
    """Make os.scandir (what os.walk lists folders with) refuse folders of these names, as a chmod 000 folder
    does for anyone but root (the tests may run as root, which no permission stops)."""
    import os

    real = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fsdecode(path)) in names:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_expand_paths_reports_a_folder_it_cannot_read(tmp_path, monkeypatch):
    from genre_se.inference import expand_paths

    (tmp_path / "music" / "locked").mkdir(parents=True)
    (tmp_path / "alone").mkdir()
    for name in ["music/1.wav", "music/locked/2.wav", "alone/3.wav"]:
        (tmp_path / name).write_bytes(b"x")
    _unlistable(monkeypatch, "locked", "alone")
    unreadable: list = []
    files, empty = expand_paths([tmp_path / "music", tmp_path / "alone"], unreadable=unreadable)
    assert files == [str(tmp_path / "music" / "1.wav")] and empty == []  # "alone" is unreadable, not empty
    messages = [str(problem) for problem in unreadable]
    assert all(isinstance(problem, AudioError) for problem in unreadable) and len(messages) == 2
    assert messages[0].startswith(f"{tmp_path / 'music' / 'locked'}: cannot read this folder (Permission denied)")
    assert messages[1].startswith(f"{tmp_path / 'alone'}: cannot read this folder")
    with pytest.raises(AudioError, match="locked: cannot read this folder"):  # never skipped without a word
        expand_paths([tmp_path / "music"])


def test_default_bundle_is_models_bundle_then_the_shipped_one_or_a_clear_error(tiny, tmp_path, monkeypatch):
    import shutil

    from genre_se import inference
    from genre_se.inference import GenreClassifier, locate_bundle

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "SHIPPED_BUNDLE", tmp_path / "site" / "pretrained")
    with pytest.raises(ModelError, match=r"no model found.*dvc repro.*--model"):
        GenreClassifier.load()
    shutil.copytree(tiny["bundle"], tmp_path / "site" / "pretrained")  # an installation that ships a model
    assert locate_bundle() == (tmp_path / "site" / "pretrained", "shipped")
    assert GenreClassifier.load().provenance()["bundle"]["shipped"] is True
    shutil.copytree(tiny["bundle"], tmp_path / "models" / "bundle")  # the pipeline's model wins over it
    assert locate_bundle() == (Path("models") / "bundle", "pipeline")
    clf = GenreClassifier.load()
    assert clf.labels == ["high", "low", "mid"] and clf.provenance()["bundle"]["shipped"] is False
    assert locate_bundle(tmp_path / "site" / "pretrained")[1] == "given"  # --model wins over both


# --------------------------------------------------------------------------------------------------
# Embedding files


@pytest.mark.parametrize("fmt", ["npz", "npy", "parquet"])
@pytest.mark.parametrize("pool", ["mean", "none"])
def test_written_embeddings_load_with_numpy_and_pandas(clf, tmp_path, fmt, pool):
    from genre_se.outputs import write_embeddings

    paths = [write(tmp_path / "a.wav", tone(BAND_HZ["low"], 1.0)), write(tmp_path / "b.wav", tone(800, 2.0))]
    embeddings = [clf.embed(p) for p in paths]
    target = {"npz": tmp_path / "out.npz", "npy": tmp_path / "out", "parquet": tmp_path / "out.parquet"}[fmt]
    written = write_embeddings(embeddings, target, pool=pool, provenance=clf.provenance())
    assert written == target

    if fmt == "npz":
        with np.load(written) as z:  # no pickle needed
            matrix, row_paths, meta = z["embeddings"], list(z["path"]), json.loads(str(z["metadata"]))
            starts = z["start"] if pool == "none" else None
    elif fmt == "npy":
        matrix = np.load(written / "embeddings.npy")
        rows = pd.read_csv(written / "rows.csv")
        row_paths, meta = list(rows["path"]), json.loads((written / "metadata.json").read_text())
        starts = rows["start"].to_numpy() if pool == "none" else None
    else:
        frame = pd.read_parquet(written)
        matrix, row_paths, meta = np.stack(frame["embedding"].to_numpy()), list(frame["path"]), frame.attrs["genre_se"]
        starts = frame["start"].to_numpy() if pool == "none" else None

    if pool == "mean":
        assert row_paths == [str(p) for p in paths]
        np.testing.assert_allclose(matrix, np.stack([e.pooled for e in embeddings]), rtol=1e-6)
    else:
        assert len(matrix) == sum(e.n_segments for e in embeddings)
        assert row_paths.count(str(paths[1])) == embeddings[1].n_segments
        np.testing.assert_allclose(starts, np.concatenate([e.segment_starts for e in embeddings]))
        np.testing.assert_allclose(matrix, np.concatenate([e.segments for e in embeddings]), rtol=1e-6)
    assert matrix.dtype == np.float32 and matrix.shape[1] == MODEL.filters[-1]
    assert meta["features"] == FEATURES.to_dict()
    assert meta["bundle"]["labels"] == clf.labels and len(meta["bundle"]["model_sha1"]) == 40
    assert meta["pool"] == pool and meta["embedding_dim"] == MODEL.filters[-1]


def test_import_stays_cheap_and_exports_the_classifier():
    code = (
        "import sys, genre_se; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "from genre_se import GenreClassifier; assert GenreClassifier.__name__ == 'GenreClassifier'; "
        "assert 'tensorflow' not in sys.modules and 'librosa' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_duration_is_the_headers_within_what_the_frames_allow_else_the_frames_lower_bound():
    """n_frames frames come from (n_frames - 1) * hop <= n < n_frames * hop samples: a header's duration inside that
    range is kept, one outside it (an MP3 estimate, a lying header) is clamped, and without one the lower bound
    (the samples the frames certainly hold) is the answer, never a hop more than was heard."""
    from genre_se.inference import _duration

    hop_s = FEATURES.hop_length / FEATURES.sample_rate
    assert _duration(10, None, FEATURES) == pytest.approx(9 * hop_s)
    assert _duration(10, 9.5 * hop_s, FEATURES) == pytest.approx(9.5 * hop_s)
    assert _duration(10, 3 * hop_s, FEATURES) == pytest.approx(9 * hop_s)
    assert _duration(10, 60.0, FEATURES) == pytest.approx(10 * hop_s)
