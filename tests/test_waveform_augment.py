"""Waveform augmentations (issue 10): each does what it says, and the copies reach training only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from genre_se.config import ConfigError, FeatureConfig, TrainConfig, from_dict
from genre_se.errors import DatasetError
from genre_se.feature_store import build_store
from genre_se.waveform_augment import KINDS, augment_waveform, copy_amount

SR = 22050
CFG = FeatureConfig(n_fft=512, hop_length=256, n_mels=16, segment_frames=16, segment_hop=8, workers=1)


def tone(freq: float, seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(y: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)])


def test_pitch_copy_moves_a_tone_by_the_drawn_semitones():
    out = augment_waveform(tone(440.0), SR, "pitch", 2.0)
    assert len(out) == int(2.0 * SR)  # same duration
    assert abs(peak_hz(out) - 440.0 * 2 ** (2 / 12)) < 5.0  # 493.9 Hz


def test_tempo_copy_changes_the_duration_not_the_pitch():
    out = augment_waveform(tone(440.0), SR, "tempo", 1.1)
    assert abs(len(out) - int(2.0 * SR) / 1.1) < 0.01 * SR
    assert abs(peak_hz(out) - 440.0) < 5.0


def test_mp3_copy_keeps_rate_and_length_within_the_codec_delay():
    y = tone(440.0) + 0.01 * np.random.default_rng(0).normal(size=int(2.0 * SR)).astype(np.float32)
    out = augment_waveform(y, SR, "mp3", 128)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(y)) <= 2257
    assert 0 < float(np.mean((out[: len(y)] - y[: len(out)]) ** 2)) < 0.01 * float(np.mean(y**2))  # lossy, close


def test_amounts_are_drawn_in_range_and_repeat_with_the_seed():
    pitches = [copy_amount(42, f"clip{i}", "pitch") for i in range(50)]
    tempos = [copy_amount(42, f"clip{i}", "tempo") for i in range(50)]
    assert all(-2 <= p <= 2 for p in pitches) and all(0.9 <= r <= 1.1 for r in tempos)
    assert len(set(pitches)) == 50  # every clip its own amount
    assert pitches == [copy_amount(42, f"clip{i}", "pitch") for i in range(50)]
    assert pitches != [copy_amount(43, f"clip{i}", "pitch") for i in range(50)]


def test_bad_kinds_name_the_key():
    with pytest.raises(ConfigError, match="train.waveform_augment"):
        from_dict(TrainConfig, {"waveform_augment": ["reverb"]}, "train")
    with pytest.raises(ConfigError, match="train.waveform_augment"):
        from_dict(TrainConfig, {"waveform_augment": ["mp3", "mp3"]}, "train")
    with pytest.raises(ValueError, match="waveform augmentation"):
        copy_amount(0, "c", "reverb")


@pytest.fixture
def index(tmp_path):
    rows = []
    for i, (label, freq) in enumerate([("a", 300), ("a", 320), ("b", 900), ("b", 950), ("c", 2000), ("c", 2100)]):
        path = tmp_path / f"{label}{i}.wav"
        sf.write(path, tone(freq, 1.5), SR)
        rows.append(dict(clip_id=f"{label}/{i}", path=str(path), label=label, status="ok", error="",
                         split=["train", "valid", "test"][i % 3], fold=i % 2))
    return pd.DataFrame(rows)


def test_store_keeps_the_originals_and_adds_one_copy_per_clip_and_kind(tmp_path, index):
    plain, _ = build_store(index, CFG, tmp_path / "plain", tmp_path / "cache")
    store, failures = build_store(index, CFG, tmp_path / "features", tmp_path / "cache", augment=list(KINDS), seed=7)
    assert failures.empty
    # the originals are the same rows, bit for bit: everything that scores or splits is unchanged
    pd.testing.assert_frame_equal(store.table, plain.table)
    np.testing.assert_array_equal(store.segments[: len(plain.table)], plain.segments[:])
    copies = store.augmented
    assert set(map(tuple, copies[["clip_id", "augment"]].drop_duplicates().to_numpy())) == {
        (c, k) for c in index["clip_id"] for k in KINDS}
    assert copies["segment"].min() == len(store.table) and copies["segment"].max() == len(store.segments) - 1
    assert (copies["label_index"] == copies["label"].map({"a": 0, "b": 1, "c": 2})).all()
    for kind in KINDS:  # each copy's amount is the seeded draw
        row = copies[(copies["clip_id"] == "b/2") & (copies["augment"] == kind)].iloc[0]
        assert row["amount"] == pytest.approx(copy_amount(7, "b/2", kind))
    # a pitch copy differs from its original, a tempo copy has a different number of segments or frames
    original = store.segments[store.table.index[store.table["clip_id"] == "b/2"]]
    pitched = store.segments[copies[(copies["clip_id"] == "b/2") & (copies["augment"] == "pitch")]["segment"]]
    assert np.abs(original.astype(np.float32) - pitched.astype(np.float32)).mean() > 1.0


def test_training_reads_the_copies_of_its_own_clips_only(tmp_path, index):
    from genre_se.train import training_dataset

    store, _ = build_store(index, CFG, tmp_path / "features", tmp_path / "cache", augment=["mp3", "pitch"], seed=0)
    train_rows = store.rows("train")
    copies = store.copies_of(train_rows)
    train_clips = set(store.table.iloc[train_rows]["clip_id"])
    assert len(copies) > 0 and set(store.augmented.set_index("segment").loc[copies, "clip_id"]) == train_clips
    assert set(store.augmented.set_index("segment").loc[store.copies_of(train_rows, ["mp3"]), "augment"]) == {"mp3"}
    assert store.rows("valid").max() < len(store.table)  # scoring rows are originals only
    cfg = TrainConfig(batch_size=1000, waveform_augment=["mp3", "pitch"])
    x, y = next(iter(training_dataset(store, train_rows, cfg, seed=0, n_classes=3)[0]))
    assert len(x) == len(train_rows) + len(copies)
    expected_labels = np.sort(store.label_indices[np.concatenate([train_rows, copies])])
    np.testing.assert_array_equal(np.sort(np.argmax(y.numpy(), axis=1)), expected_labels)
    without = next(iter(training_dataset(store, train_rows, dataclasses.replace(cfg, waveform_augment=[]), seed=0,
                                         n_classes=3)[0]))
    assert len(without[0]) == len(train_rows)


def test_asking_for_copies_the_store_lacks_is_a_clear_error(tmp_path, index):
    from genre_se.train import training_dataset

    store, _ = build_store(index, CFG, tmp_path / "features", tmp_path / "cache")
    with pytest.raises(DatasetError, match="genre-se features"):
        training_dataset(store, store.rows("train"), TrainConfig(waveform_augment=["tempo"]), seed=0, n_classes=3)


def test_a_copy_that_fails_is_reported_and_skipped(tmp_path, index, monkeypatch):
    import genre_se.waveform_augment as wa

    real = wa.augment_waveform

    def flaky(y, sr, kind, amount):
        if kind == "mp3":
            raise RuntimeError("encoder missing")
        return real(y, sr, kind, amount)

    monkeypatch.setattr(wa, "augment_waveform", flaky)
    store, failures = build_store(index, CFG, tmp_path / "features", tmp_path / "cache", augment=["mp3", "tempo"])
    assert len(failures) == len(index) and failures["error"].str.contains("mp3 copy: RuntimeError").all()
    assert set(store.augmented["augment"]) == {"tempo"} and len(store.table["clip_id"].unique()) == len(index)
