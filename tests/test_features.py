"""The single feature definition: values against librosa, segmenting rules, streaming equivalence."""

import dataclasses

import librosa
import numpy as np
import pytest
import soundfile as sf

from genre_se.config import FeatureConfig
from genre_se.features import (
    LogMelStream,
    extract_segments,
    floor_db,
    iter_segment_batches,
    log_mel,
    n_segments_for,
    segment,
    segment_times,
)

CFG = FeatureConfig()
SMALL = dataclasses.replace(CFG, n_fft=512, hop_length=128, n_mels=32, segment_frames=16, segment_hop=8)


def noise(seconds, sr=22050, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * scale).astype(np.float32)


def librosa_reference(y, cfg):
    mel = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
        fmin=cfg.fmin, fmax=cfg.fmax, center=True, pad_mode="constant", power=2.0,
    )
    return librosa.power_to_db(mel, ref=cfg.ref_power, amin=cfg.amin, top_db=None)


@pytest.mark.parametrize("cfg", [CFG, SMALL, dataclasses.replace(CFG, fmin=30.0, fmax=8000.0, n_mels=64)])
def test_log_mel_matches_librosa(cfg):
    y = noise(2.3) + 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(2.3 * 22050)) / 22050).astype(np.float32)
    ours = log_mel(y, cfg)
    ref = librosa_reference(y, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, 1 + len(y) // cfg.hop_length)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_fixed_reference_keeps_quiet_clips_quiet():
    y = noise(1.0)
    loud, quiet = log_mel(y, CFG), log_mel(y * 0.1, CFG)
    # 20 dB quieter everywhere (a per-clip max reference would make them equal)
    np.testing.assert_allclose(loud - quiet, 20.0, atol=0.05)
    silent = log_mel(np.zeros(22050, np.float32), CFG)
    assert np.all(silent == pytest.approx(floor_db(CFG)))  # silence is valid, at the floor


@pytest.mark.parametrize("block", [1, 100, 511, 512, 513, 5000, 10**6])
def test_stream_equals_whole_signal_for_any_block_size(block):
    y = noise(1.7, seed=3)
    stream = LogMelStream(SMALL, frames_per_chunk=7)
    parts = [stream.push(y[i : i + block]) for i in range(0, len(y), block)] + [stream.finish()]
    # identical up to float rounding (BLAS blocking differs with the matrix shape)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), log_mel(y, SMALL), rtol=0, atol=1e-4)


def test_segment_starts_hop_and_end_alignment():
    spec = np.arange(32 * 50, dtype=np.float32).reshape(32, 50)
    segs = segment(spec, SMALL)
    # regular starts every 8 frames, plus one aligned to the end (50 - 16 = 34) since 32 + 16 < 50
    assert segs.start_frames.tolist() == [0, 8, 16, 24, 32, 34]
    assert segs.data.shape == (6, 32, 16, 1)
    for k, start in enumerate(segs.start_frames):
        np.testing.assert_array_equal(segs.data[k, :, :, 0], spec[:, start : start + 16])
    assert segs.pad_frames.tolist() == [0] * 6
    exact = segment(spec[:, :48], SMALL)  # 48 - 16 = 32 is on the hop: no extra segment
    assert exact.start_frames.tolist() == [0, 8, 16, 24, 32]


def test_short_clip_is_padded_not_dropped_and_padding_recorded():
    y = noise(0.05)  # ~9 frames of 128 samples, shorter than 16
    segs = extract_segments(y, SMALL)
    n_frames = 1 + len(y) // SMALL.hop_length
    assert len(segs) == 1 and segs.pad_frames.tolist() == [SMALL.segment_frames - n_frames]
    assert np.all(segs.data[0, :, n_frames:, 0] == pytest.approx(floor_db(SMALL)))
    np.testing.assert_allclose(segs.data[0, :, :n_frames, 0], log_mel(y, SMALL), atol=1e-6)
    empty = extract_segments(np.zeros(0, np.float32), SMALL)
    assert len(empty) == 1 and empty.pad_frames[0] == SMALL.segment_frames - 1


@pytest.mark.parametrize("ref_power", [1.0, 1e-3, 50.0])
def test_short_clip_padding_is_the_silence_of_the_configured_reference(ref_power):
    """The padding of a short clip must be what digital silence gives under the same ``ref_power``, not the
    floor of the default reference (a 1e-3 reference moves every dB value, silence included, by +30 dB)."""
    cfg = dataclasses.replace(SMALL, ref_power=ref_power)
    silence = log_mel(np.zeros(4000, np.float32), cfg)
    np.testing.assert_allclose(silence, floor_db(cfg), rtol=0, atol=1e-4)
    y = noise(0.05)
    segs = extract_segments(y, cfg)
    n_frames = 1 + len(y) // cfg.hop_length
    np.testing.assert_allclose(segs.data[0, :, n_frames:, 0], silence.min(), rtol=0, atol=1e-4)
    # the clip's own frames move with the reference by exactly -10 log10(ref_power) dB
    np.testing.assert_allclose(segs.data[0, :, :n_frames, 0], log_mel(y, SMALL) - 10 * np.log10(ref_power),
                               rtol=0, atol=1e-3)


def test_spread_indices_keep_the_first_and_the_last_and_one_alone_from_the_middle():
    from genre_se.features import spread_indices

    assert spread_indices(7, None).tolist() == spread_indices(7, 0).tolist() == list(range(7))
    assert spread_indices(4, 9).tolist() == [0, 1, 2, 3]  # more asked than there are: all of them
    assert spread_indices(9, 1).tolist() == [4] and spread_indices(10, 1).tolist() == [4]  # the middle one
    assert spread_indices(10, 4).tolist() == [0, 3, 6, 9]
    for n in range(2, 30):
        for k in range(2, n):
            chosen = spread_indices(n, k)
            assert chosen[0] == 0 and chosen[-1] == n - 1  # the whole song is covered
            assert len(chosen) == k and (np.diff(chosen) >= 1).all()  # k distinct, in order
            assert np.diff(chosen).max() - np.diff(chosen).min() <= 1  # evenly spread

@pytest.mark.parametrize("seconds", [0.01, 0.37, 0.743, 1.0, 2.9])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_streamed_segments_equal_batch_definition(seconds, batch_size):
    y = noise(seconds, seed=7)
    whole = segment(log_mel(y, SMALL), SMALL)
    batches = list(iter_segment_batches(y, SMALL, batch_size=batch_size, block_seconds=0.1))
    assert all(len(b) <= batch_size for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.start_frames for b in batches]), whole.start_frames)
    np.testing.assert_allclose(np.concatenate([b.data for b in batches]), whole.data, rtol=0, atol=1e-4)
    assert n_segments_for(len(y), SMALL) == len(whole)


def test_default_shape_is_segments_by_mels_by_frames_by_one(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(5.0), 22050, subtype="PCM_16")
    segs = extract_segments(path, CFG)
    assert segs.data.shape[1:] == (128, 128, 1)
    # 5 s -> 216 frames -> starts 0, 64 and the end-aligned 88
    assert segs.start_frames.tolist() == [0, 64, 88]
    y, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(segs.data, segment(log_mel(y, CFG), CFG).data, atol=1e-4)


def test_segment_times_cover_the_clip():
    y = noise(4.0)
    segs = extract_segments(y, CFG)
    start, end = segment_times(segs.start_frames, CFG)
    assert start[0] == 0.0
    assert end[-1] == pytest.approx((segs.n_frames) * CFG.hop_length / CFG.sample_rate, abs=0.05)
    assert np.all(np.diff(start) > 0)


def test_only_starts_emits_the_chosen_segments_and_always_the_last():
    from genre_se.features import iter_segment_batches, segment_start_frames

    cfg = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8)
    y = np.random.default_rng(3).normal(size=8000 * 3).astype(np.float32) * 0.1
    every = extract_segments(y, cfg)
    starts = segment_start_frames(every.n_frames, cfg)
    assert starts[-1] % cfg.segment_hop != 0  # this length ends off the hop grid: an end-aligned last segment
    chosen = [int(starts[0]), int(starts[5])]
    batches = list(iter_segment_batches(y, cfg, batch_size=1, only_starts=chosen))
    got = np.concatenate([b.start_frames for b in batches])
    assert got.tolist() == chosen + [int(starts[-1])]  # the last one even though it was not asked for
    data = np.concatenate([b.data for b in batches])
    rows = np.searchsorted(every.start_frames, got)
    np.testing.assert_array_equal(data, every.data[rows])
    # a last start that lands on the hop grid but was not asked for is still the clip's last segment
    on_grid = y[: (starts[-2] + cfg.segment_frames - 1) * cfg.hop_length]
    grid_starts = segment_start_frames(1 + len(on_grid) // cfg.hop_length, cfg)
    assert grid_starts[-1] % cfg.segment_hop == 0
    got = np.concatenate([b.start_frames for b in iter_segment_batches(on_grid, cfg, only_starts=[0])])
    assert got.tolist() == [0, int(grid_starts[-1])]
