"""The built-in corpus: determinism, layout, atomic writes, musical structure and learnability."""

import dataclasses
import wave

import numpy as np
import pytest

from genre_se.config import CorpusConfig, DataConfig, Params
from genre_se.corpus import (
    GENRES,
    MARKER,
    TEMPO_BPM,
    clip_rng,
    generate_corpus,
    is_builtin_corpus,
    run_corpus,
    synthesize_clip,
)
from genre_se.errors import ConfigError, DatasetError

SR = 22050
TINY = CorpusConfig(genres=["blues", "metal", "reggae"], clips_per_genre=2, clip_seconds=1.0, sample_rate=8000)


def clip(genre, seed=0, index=0, seconds=4.0, sr=SR):
    return synthesize_clip(genre, clip_rng(seed, genre, index), seconds, sr)


def file_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent, name):
    """Temporary siblings (.name.tmp-*, .name.old-*) left next to the output folder."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# --------------------------------------------------------------------------------------------------
# Clips


@pytest.mark.parametrize("sr", [8000, SR])
@pytest.mark.parametrize("genre", GENRES)
def test_clip_is_float32_mono_in_range_with_the_asked_length(genre, sr):
    y = clip(genre, seconds=1.3, sr=sr)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == round(1.3 * sr)
    assert np.all(np.isfinite(y))
    assert 0.3 < np.max(np.abs(y)) <= 0.9 + 1e-6
    assert np.std(y) > 0.01


def test_same_rng_gives_identical_audio_and_another_seed_differs():
    a = synthesize_clip("jazz", np.random.default_rng(7), 2.0, SR)
    b = synthesize_clip("jazz", np.random.default_rng(7), 2.0, SR)
    c = synthesize_clip("jazz", np.random.default_rng(8), 2.0, SR)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unknown_genre_is_a_config_error_naming_the_param(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus\.genres.*polka"):
        synthesize_clip("polka", np.random.default_rng(0), 1.0, SR)
    cfg = dataclasses.replace(TINY, genres=["rock", "polka"])
    with pytest.raises(ConfigError, match=r"corpus\.genres.*polka"):
        generate_corpus(cfg, tmp_path / "corpus", seed=0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Files


def test_generate_corpus_writes_gtzan_named_16bit_wavs_and_a_matching_table(tmp_path):
    out = tmp_path / "data" / "corpus"
    table = generate_corpus(TINY, out, seed=3)
    assert list(table.columns) == ["clip_id", "path", "label", "seconds", "tempo_bpm", "key"]
    expected = [f"{g}/{g}.{i:05d}.wav" for g in TINY.genres for i in range(2)]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == expected
    assert sorted(table["path"]) == sorted(str(out / e) for e in expected)
    assert list(table["label"]) == [g for g in TINY.genres for _ in range(2)]
    assert list(table["clip_id"]) == [e.split("/")[1][:-4] for e in expected]
    for row in table.itertuples():
        with wave.open(row.path, "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
            assert w.getnframes() == 8000
        assert row.seconds == pytest.approx(1.0)
        low, high = TEMPO_BPM[row.label]
        assert low <= row.tempo_bpm <= high
        assert row.key.split()[1] in ("major", "minor")
    assert (out / MARKER).is_file() and is_builtin_corpus(out) and not is_builtin_corpus(out.parent)
    assert leftovers(out.parent, out.name) == []


def test_the_dataset_indexer_reads_the_corpus_as_gtzan(tmp_path):
    from genre_se.datasets import find_clips

    out = tmp_path / "corpus"
    generate_corpus(TINY, out, seed=0)
    clips = find_clips(DataConfig(root=str(out)))
    assert sorted(clips["label"]) == sorted(g for g in TINY.genres for _ in range(2))


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    generate_corpus(TINY, tmp_path / "a", seed=11)
    generate_corpus(TINY, tmp_path / "b", seed=11)
    generate_corpus(TINY, tmp_path / "c", seed=12)
    a, b, c = (file_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_more_clips_or_fewer_genres_leave_existing_clips_unchanged(tmp_path):
    generate_corpus(TINY, tmp_path / "small", seed=5)
    generate_corpus(dataclasses.replace(TINY, clips_per_genre=3), tmp_path / "more", seed=5)
    generate_corpus(dataclasses.replace(TINY, genres=["reggae"]), tmp_path / "one", seed=5)
    small, more, one = (file_bytes(tmp_path / x) for x in ("small", "more", "one"))
    wavs = [k for k in small if k.endswith(".wav")]
    assert all(small[k] == more[k] for k in wavs)
    assert len([k for k in more if k.endswith(".wav")]) == 9
    assert one["reggae/reggae.00001.wav"] == small["reggae/reggae.00001.wav"]


def test_regenerating_replaces_the_previous_corpus_whole(tmp_path):
    out = tmp_path / "corpus"
    generate_corpus(TINY, out, seed=1)
    (out / "metal" / "stale.wav").write_bytes(b"old")
    generate_corpus(dataclasses.replace(TINY, genres=["blues"]), out, seed=1)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["blues"]
    assert leftovers(tmp_path, "corpus") == []


def test_a_failure_midway_leaves_the_old_corpus_and_no_temp_folder(tmp_path, monkeypatch):
    import genre_se.corpus as corpus

    out = tmp_path / "corpus"
    generate_corpus(TINY, out, seed=1)
    before = file_bytes(out)
    real = corpus._synthesize
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "_synthesize", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_corpus(TINY, out, seed=2)
    assert file_bytes(out) == before
    assert leftovers(tmp_path, "corpus") == []


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "music"
    precious.mkdir()
    (precious / "song.mp3").write_bytes(b"keep me")
    with pytest.raises(DatasetError, match="refusing"):
        generate_corpus(TINY, precious, seed=0)
    assert file_bytes(precious) == {"song.mp3": b"keep me"}
    assert leftovers(tmp_path, "music") == []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        generate_corpus(TINY, a_file, seed=0)


def test_run_corpus_uses_the_corpus_params_and_the_seed(tmp_path):
    params = Params(seed=9, corpus=TINY)
    table = run_corpus(params, out_dir=tmp_path / "stage")
    generate_corpus(TINY, tmp_path / "direct", seed=9)
    assert len(table) == 6
    stage, direct = file_bytes(tmp_path / "stage"), file_bytes(tmp_path / "direct")
    assert stage == direct


# --------------------------------------------------------------------------------------------------
# Musical structure


def band_db(y, low, high, n_fft=1024, hop=256, sr=SR):
    """Per-frame energy (dB) of the ``low``-``high`` Hz band."""
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    return 10 * np.log10(power[:, (freqs >= low) & (freqs < high)].sum(axis=1) + 1e-10)


def high_band_onsets(y):
    """95th percentile of the frame-to-frame rise of 5-10 kHz energy: large when drums hit."""
    return np.percentile(np.maximum(np.diff(band_db(y, 5000, 10000)), 0), 95)


def test_classical_has_no_drum_onsets_and_metal_does():
    classical = [high_band_onsets(clip("classical", index=i)) for i in range(4)]
    metal = [high_band_onsets(clip("metal", index=i)) for i in range(4)]
    assert np.mean(metal) > 1.5 * np.mean(classical), (classical, metal)


def test_disco_low_end_pulses_on_every_beat_at_the_reported_tempo(tmp_path):
    cfg = CorpusConfig(genres=["disco"], clips_per_genre=4, clip_seconds=4.0, sample_rate=SR)
    table = generate_corpus(cfg, tmp_path / "c", seed=0)
    hop = 256
    for row in table.itertuples():
        with wave.open(row.path, "rb") as w:
            y = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
        flux = np.maximum(np.diff(band_db(y, 20, 150, hop=hop)), 0)
        flux -= flux.mean()
        autocorr = np.correlate(flux, flux, "full")[len(flux) - 1 :]
        lags = np.arange(len(autocorr)) * hop / SR
        window = (lags > 0.3) & (lags < 0.8)
        period = lags[window][np.argmax(autocorr[window])]
        assert period == pytest.approx(60 / row.tempo_bpm, rel=0.05), row


def test_genre_tempo_ranges_are_typical():
    assert TEMPO_BPM["metal"][0] >= 150 and TEMPO_BPM["reggae"][1] <= 90
    assert TEMPO_BPM["disco"] == (110, 130) and TEMPO_BPM["hiphop"][1] <= 100
    assert set(TEMPO_BPM) == set(GENRES)


def test_mfcc_statistics_separate_the_genres_well_above_chance(tmp_path):
    librosa = pytest.importorskip("librosa")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for label, genre in enumerate(GENRES):
        for index in range(6):
            y = clip(genre, seed=0, index=index, seconds=3.0)
            mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=20)
            features.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
            labels.append(label)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    accuracy = cross_val_score(model, np.array(features), np.array(labels), cv=folds).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.1
