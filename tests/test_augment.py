"""Recording-condition augmentation on log-mel segments (EQ tilt, low-pass, compression, noise, pitch shift, time
stretch): each transform against an independent expectation, the floor, determinism, the params switches and
their path into the train stage and the tuning trials."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from genre_se.config import FeatureConfig, ModelConfig, TrainConfig, from_dict, load_params
from genre_se.errors import ConfigError
from genre_se.feature_store import FeatureStore
from genre_se.augment import (
    RecordingConditions,
    add_noise,
    compress,
    eq_tilt,
    low_pass,
    mel_centre_frequencies,
    pitch_shift,
    segment_median,
    time_stretch,
)
from genre_se.train import make_dataset, training_dataset

from .conftest import ROOT

FLOOR = -100.0
FEATS = FeatureConfig(sample_rate=22050, n_mels=32, segment_frames=16, segment_hop=8)
HZ = mel_centre_frequencies(FEATS)


def _np(t) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


def _random(shape, seed=0, low=-80.0, high=-10.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def _power(db) -> np.ndarray:
    return 10.0 ** (_np(db) / 10.0)


def _draw(conditions: RecordingConditions, x: np.ndarray, key: int = 7) -> np.ndarray:
    import tensorflow as tf

    return _np(conditions(tf.constant(x), tf.constant(key, tf.int64)))


# --------------------------------------------------------------------------------------------------
# The transforms


def test_mel_centres_are_the_peaks_of_librosas_filter_bank():
    import librosa

    bank = librosa.filters.mel(sr=FEATS.sample_rate, n_fft=FEATS.n_fft, n_mels=FEATS.n_mels)
    fft_hz = librosa.fft_frequencies(sr=FEATS.sample_rate, n_fft=FEATS.n_fft)
    peaks = fft_hz[bank.argmax(axis=1)]
    assert len(HZ) == FEATS.n_mels and np.all(np.diff(HZ) > 0)
    assert np.all(np.abs(peaks - HZ) <= fft_hz[1])  # within one FFT bin of each filter's peak


def test_eq_tilt_adds_a_linear_ramp_of_the_drawn_size():
    x = _random((3, 32, 16, 1))
    tilt = np.array([5.0, -3.0, 0.0], np.float32)
    y = _np(eq_tilt(x, tilt, FLOOR))
    band_shift = (y - x).mean(axis=(2, 3))  # [segment, band]
    # top minus bottom band means moves by 2 t (from -t to +t)
    np.testing.assert_allclose(band_shift[:, -1] - band_shift[:, 0], 2 * tilt, atol=1e-4)
    np.testing.assert_allclose(band_shift, tilt[:, None] * np.linspace(-1, 1, 32)[None, :], atol=1e-4)


def test_random_tilts_are_linear_per_segment_within_range_and_spread():
    x = _random((64, 32, 16, 1))
    y = _draw(RecordingConditions(eq_tilt_db=6.0), x)
    band_shift = (y - x).mean(axis=(2, 3))
    ramp = np.linspace(-1, 1, 32)
    slopes = band_shift[:, -1]  # t of each segment
    np.testing.assert_allclose(band_shift, slopes[:, None] * ramp[None, :], atol=1e-3)  # linear, zero mean
    assert np.all(np.abs(slopes) <= 6.0 + 1e-4) and slopes.std() > 2.0  # uniform in [-6, 6]: std 3.5


def test_compression_pulls_values_above_the_median_toward_it_and_keeps_the_median():
    x = _random((4, 32, 15, 1), seed=1)  # 480 values per segment
    amount = np.array([0.5, 0.0, 1.0, 0.25], np.float32)
    y = _np(compress(x, amount))
    for s in range(4):
        flat_x, flat_y = x[s].ravel().astype(np.float64), y[s].ravel()
        m = np.sort(flat_x)[(flat_x.size - 1) // 2]  # the lower median
        assert np.sort(flat_y)[(flat_y.size - 1) // 2] == pytest.approx(m, abs=1e-4)
        below = flat_x <= m
        np.testing.assert_array_equal(flat_y[below], flat_x[below])  # untouched at and below the median
        above = ~below
        ratio = flat_y[above].std() / flat_x[above].std()
        assert ratio == pytest.approx(1 - amount[s], abs=1e-4)
        np.testing.assert_allclose(flat_y[above] - m, (flat_x[above] - m) * (1 - amount[s]), atol=1e-4)
    np.testing.assert_allclose(_np(segment_median(x)).ravel(),
                               [np.sort(x[s].ravel())[(480 - 1) // 2] for s in range(4)])


def test_random_compression_reduces_the_spread_above_the_median_by_at_most_the_amount():
    x = _random((32, 32, 16, 1), seed=2)
    y = _draw(RecordingConditions(compression=0.6), x)
    ratios = []
    for s in range(32):
        m = np.sort(x[s].ravel())[(x[s].size - 1) // 2]
        above = x[s].ravel() > m
        ratios.append(y[s].ravel()[above].std() / x[s].ravel()[above].std())
    ratios = np.array(ratios)
    assert np.all(ratios >= 0.4 - 1e-4) and np.all(ratios <= 1 + 1e-6) and ratios.std() > 0.08


def test_noise_is_added_in_the_power_domain_at_a_segment_snr_in_the_drawn_range():
    x = _random((48, 32, 16, 1), seed=3, low=-90.0, high=-20.0)
    x[:, :4] = FLOOR  # silent low bands get noise, never go below the floor
    y = _draw(RecordingConditions(noise_snr_db=(5.0, 20.0), floor_db=FLOOR, mel_hz=HZ), x)
    signal = _power(x).sum(axis=(1, 2, 3))
    noise = (_power(y) - _power(x)).sum(axis=(1, 2, 3))
    snr = 10 * np.log10(signal / noise)
    assert np.all(snr >= 5.0 - 0.02) and np.all(snr <= 20.0 + 0.02), snr
    assert snr.max() - snr.min() > 7.0  # drawn per segment over the range
    assert y.min() >= FLOOR
    assert np.all(y >= x - 1e-4)  # adding power never lowers a value


def test_noise_spectrum_falls_3_db_per_octave_when_pink_and_is_flat_when_white():
    x = np.full((2, 32, 16, 1), FLOOR, np.float32)  # silence: what comes out is the noise itself
    y = _np(add_noise(x, np.array([0.0, 0.0], np.float32), FLOOR, HZ, colour=np.array([1.0, 0.0], np.float32)))
    noise_db = 10 * np.log10(_power(y) - _power(x))[:, :, 0, 0]  # [segment, band], constant in time
    np.testing.assert_allclose(_power(y).std(axis=2), 0.0, atol=1e-15)  # stationary
    slope = np.polyfit(np.log2(HZ), noise_db[0], 1)[0]
    assert slope == pytest.approx(-10 * np.log10(2), abs=0.05)  # pink: -3.01 dB per octave
    assert noise_db[1].std() < 0.01  # white: flat
    for s in range(2):  # SNR 0 dB: as much noise power as signal power
        assert (_power(y[s]) - _power(x[s])).sum() == pytest.approx(_power(x[s]).sum(), rel=1e-3)


def _tone_logmel(hz: float, bins: np.ndarray, frames: int = 8) -> np.ndarray:
    """A synthetic log-mel: the floor everywhere but the band whose centre is nearest ``hz``."""
    x = np.full((1, len(bins), frames, 1), FLOOR, np.float32)
    x[0, int(np.argmin(np.abs(np.log2(bins) - np.log2(hz))))] = -20.0
    return x


def test_pitch_shift_of_an_octave_moves_a_tones_peak_to_twice_its_frequency():
    cfg = FeatureConfig()  # 128 bands at 22050 Hz
    hz = mel_centre_frequencies(cfg)
    peak = int(np.argmin(np.abs(hz - 500.0)))
    tone = hz[peak]  # the tone sits on its band's centre
    x = _tone_logmel(tone, hz)
    up = _np(pitch_shift(x, np.array([12.0], np.float32), hz))
    expected_up = int(np.argmin(np.abs(np.log2(hz) - np.log2(2 * tone))))
    assert hz[expected_up] == pytest.approx(1000.0, rel=0.03)
    assert np.all(up[0, :, :, 0].argmax(axis=0) == expected_up)
    back = _np(pitch_shift(up.astype(np.float32), np.array([-12.0], np.float32), hz))
    assert np.all(back[0, :, :, 0].argmax(axis=0) == peak)  # and an octave down brings it back
    # a narrow peak is not lost when the output bands step over source bands (down, in the linear low bands)
    for band in range(30, 40):
        down = _np(pitch_shift(_tone_logmel(hz[band], hz), np.array([-12.0], np.float32), hz))[0, :, 0, 0]
        target = int(np.argmin(np.abs(np.log2(hz) - np.log2(hz[band] / 2))))
        assert abs(int(down.argmax()) - target) <= 1 and down.max() > -30.0, band
    # a shift of 0 is the identity; the bands shifted in from below the lowest take the edge band's value
    np.testing.assert_allclose(_np(pitch_shift(x, np.array([0.0], np.float32), hz)), x, atol=1e-4)
    ramp = np.broadcast_to(np.arange(128, dtype=np.float32)[None, :, None, None], (1, 128, 4, 1)) - 50.0
    shifted = _np(pitch_shift(ramp, np.array([3.0], np.float32), hz))
    low = np.flatnonzero(hz * 2 ** (-3 / 12) < hz[0])
    assert len(low) > 0
    np.testing.assert_allclose(shifted[0, low], -50.0, atol=1e-4)


def test_random_pitch_shifts_stay_within_the_configured_semitones():
    hz = mel_centre_frequencies(FeatureConfig())
    x = np.repeat(_tone_logmel(1000.0, hz), 40, axis=0)
    y = _draw(RecordingConditions(pitch_shift_semitones=2.0, mel_hz=hz), x)
    source = int(x[0, :, 0, 0].argmax())
    moved = np.log2(hz[y[:, :, 0, 0].argmax(axis=1)] / hz[source]) * 12  # semitones, to the band resolution
    band = 12 * np.log2(hz[source + 1] / hz[source])
    assert np.all(np.abs(moved) <= 2.0 + band) and len(set(moved.round(3))) >= 3


def test_time_stretch_at_rate_one_half_doubles_a_ramps_slope_and_at_two_halves_it():
    x = np.broadcast_to(np.arange(16, dtype=np.float32)[None, None, :, None], (2, 3, 16, 1)).copy()
    y = _np(time_stretch(x, np.array([0.5, 2.0], np.float32)))
    fast, slow = y[0, 0, :, 0], y[1, 0, :, 0]
    np.testing.assert_allclose(np.diff(fast[:8]), 2.0, atol=1e-5)  # frames 0, 2, ..., 14
    np.testing.assert_allclose(fast[8:], np.arange(8) * 2.0, atol=1e-5)  # past the end: the segment repeats
    np.testing.assert_allclose(np.diff(slow), 0.5, atol=1e-5)  # the first half, stretched over the segment
    np.testing.assert_allclose(_np(time_stretch(x, np.array([1.0, 1.0], np.float32))), x)


def test_random_time_stretch_rates_stay_in_range():
    x = np.broadcast_to(np.arange(16, dtype=np.float32)[None, None, :, None], (40, 2, 16, 1)).copy()
    y = _draw(RecordingConditions(time_stretch=0.2), x)
    rates = 1.0 / (y[:, 0, 1, 0] - y[:, 0, 0, 0])  # the slope of the first frames is 1 / rate
    assert np.all(rates >= 0.8 - 1e-4) and np.all(rates <= 1.2 + 1e-4) and rates.std() > 0.05


def test_low_pass_cuts_the_bands_above_the_cutoff_down_to_a_floor_under_the_median():
    import tensorflow as tf

    x = _random((6, 32, 16, 1), seed=8, low=-60.0, high=-20.0)
    k = 20  # band k sits exactly one octave above the cutoff
    y = _np(low_pass(tf.constant(x), tf.constant([HZ[k] / 2] * 6), HZ, slope_db=12.0, depth_db=30.0))
    under = HZ <= HZ[k] / 2 + 1e-6
    np.testing.assert_array_equal(y[:, under], x[:, under])  # the pass band is untouched
    assert np.all(y <= x + 1e-6)  # a low-pass never raises a value
    for s in range(6):
        floor = np.sort(x[s].ravel())[(x[s].size - 1) // 2] - 30.0
        # one octave above: 12 dB less, except where that would cross the floor
        np.testing.assert_allclose(y[s, k], np.where(x[s, k] - 12 >= floor, x[s, k] - 12, np.minimum(x[s, k], floor)),
                                   atol=1e-3)
        assert np.all(np.diff(y[s, ~under].mean(axis=(1, 2))) <= 12.0)  # bands fall steadily, no band pops up
    steep = _np(low_pass(tf.constant(x), tf.constant([HZ[k] / 2] * 6), HZ, slope_db=48.0))  # 2.4 octaves: the floor
    for s in range(6):
        floor = np.sort(x[s].ravel())[(x[s].size - 1) // 2] - 30.0
        np.testing.assert_allclose(steep[s, -1], np.minimum(x[s, -1], floor), atol=1e-3)


def test_random_low_pass_draws_a_cutoff_per_segment_in_the_range():
    x = np.full((64, 32, 16, 1), -20.0, np.float32)
    x[:, :, :9] = -60.0  # a median of -60: the floor lies at -90, far under any band's attenuation
    y = _draw(RecordingConditions(lowpass_hz=(2000.0, 6000.0), floor_db=FLOOR, mel_hz=HZ), x)
    cut = y[:, :, 12, 0] < -20.0 - 1e-4  # which bands lost level
    first_cut = np.array([HZ[np.argmax(c)] for c in cut])
    assert cut.any(axis=1).all() and np.all(first_cut > 2000.0)
    last_kept = np.array([HZ[~c].max() for c in cut])
    assert np.all(last_kept <= 6000.0) and len(set(first_cut.round())) > 4  # a cutoff drawn per segment
    with pytest.raises(Exception, match="mel band frequencies"):
        RecordingConditions(lowpass_hz=(2000.0, 6000.0)).check(32)


def test_the_default_slope_empties_the_bands_above_8_khz_as_an_encoder_does():
    import tensorflow as tf

    feats = FeatureConfig(sample_rate=22050, n_mels=128)  # the shipped mel resolution
    hz = mel_centre_frequencies(feats)
    x = np.full((2, 128, 8, 1), -30.0, np.float32)
    x[:, :, :5] = -50.0  # median -50: the floor 30 dB under it at -80
    gentle, steep = (_np(low_pass(tf.constant(x), tf.constant([8000.0] * 2), hz, slope_db=s)) for s in (48.0, 480.0))
    above = hz > 8000.0 * 2 ** 0.1  # a tenth of an octave over the cutoff and up
    assert np.all(steep[:, above] <= -80.0 + 1e-3)  # 480 dB/octave: emptied down to the floor
    assert gentle[:, -1, 6].max() > -60.0  # 48 dB/octave: the top band (0.42 octave up) keeps most of its level


def test_random_low_pass_stops_between_a_transfers_floor_and_digital_silence():
    from genre_se.augment import LOWPASS_DEPTH_DB

    x = np.full((64, 32, 16, 1), -20.0, np.float32)
    x[:, :, :9] = -60.0  # median -60
    y = _draw(RecordingConditions(lowpass_hz=(2000.0, 2000.0), floor_db=FLOOR, mel_hz=HZ), x)
    top = y[:, -1, 12, 0]  # 2.4 octaves over the cutoff: 115 dB of loss, so it rests on the drawn floor
    assert np.all(top <= -60.0 - LOWPASS_DEPTH_DB[0] + 1e-3) and np.all(top >= FLOOR)
    assert top.max() - top.min() > 5.0 and np.isclose(top.min(), FLOOR)  # drawn per segment, down to silence


def test_everything_on_keeps_the_floor_and_is_reproducible_from_the_key():
    x = _random((16, 32, 16, 1), seed=4, low=-100.0, high=-30.0)
    x[:, :, :5] = FLOOR
    every = RecordingConditions(eq_tilt_db=10.0, compression=1.0, noise_snr_db=(0.0, 30.0), lowpass_hz=(1e3, 8e3),
                                pitch_shift_semitones=4.0, time_stretch=0.5, floor_db=FLOOR, mel_hz=HZ)
    a, b, c = _draw(every, x, key=1), _draw(every, x, key=1), _draw(every, x, key=2)
    assert a.min() >= FLOOR and c.min() >= FLOOR
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --------------------------------------------------------------------------------------------------
# The switches, through the training pipeline


SWITCHES = {
    "gain_db": 6.0,
    "eq_tilt_db": 6.0,
    "compression": True,
    "noise_snr_db": [10.0, 20.0],
    "pitch_shift_semitones": 2.0,
    "time_stretch": 0.2,
    "lowpass_hz": [2000.0, 6000.0],
    "spec_augment": True,
    "mixup_alpha": 0.4,
}


def _store(tmp_path, n=24, seed=5) -> FeatureStore:
    data = _random((n, FEATS.n_mels, FEATS.segment_frames, 1), seed=seed).astype(np.float16)
    table = pd.DataFrame({"segment": range(n), "clip_id": [f"c{i // 2}" for i in range(n)],
                          "label_index": np.arange(n) % 2, "split": "train"})
    table.to_csv(tmp_path / "segments.csv", index=False)
    return FeatureStore(tmp_path, data, table, ["a", "b"], FEATS)


def _batches(ds) -> list:
    if isinstance(ds, tuple):  # training_dataset's (dataset, steps_per_epoch)
        ds = ds[0]
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_all_switches_off_gives_the_stored_segments_bit_for_bit(tmp_path):
    store = _store(tmp_path)
    rows = np.arange(24)
    new = _batches(training_dataset(store, rows, TrainConfig(batch_size=8), seed=3, n_classes=2))
    old = _batches(make_dataset(store, rows, 8, shuffle=True, seed=3, n_classes=2))  # the pre-switch call
    assert len(new) == len(old) == 3
    for (xa, ya), (xb, yb) in zip(new, old):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    seen = np.concatenate([x for x, _ in new])
    stored = store.segments.astype(np.float32)
    assert sorted(map(bytes, seen)) == sorted(map(bytes, stored))  # each stored segment once, unchanged


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_every_switch_reaches_the_training_dataset(tmp_path, name):
    store = _store(tmp_path)
    rows = np.arange(24)
    cfg = TrainConfig(batch_size=24, **{name: SWITCHES[name]})
    (x, y), = _batches(training_dataset(store, rows, cfg, seed=3, n_classes=2))
    (x_off, y_off), = _batches(training_dataset(store, rows, TrainConfig(batch_size=24), seed=3, n_classes=2))
    np.testing.assert_array_equal(x_off, store.segments[np.sort(rows)].astype(np.float32))
    changed = np.abs(x - x_off).reshape(24, -1).max(axis=1) > 1e-3
    assert changed.mean() > 0.5, f"{name}: {changed.sum()} of 24 segments changed"
    assert x.min() >= FLOOR


def test_augmented_batches_depend_on_the_seed_and_change_every_epoch(tmp_path):
    store = _store(tmp_path)
    cfg = TrainConfig(batch_size=24, eq_tilt_db=6.0, noise_snr_db=[10.0, 30.0])
    both, steps = training_dataset(store, np.arange(24), cfg, seed=3, n_classes=2, epochs=(0, 2))
    assert steps == 1
    epoch1, epoch2 = (x for x, _ in _batches(both))
    again = _batches(training_dataset(store, np.arange(24), cfg, seed=3, n_classes=2))[0][0]
    np.testing.assert_array_equal(epoch2, _batches(training_dataset(store, np.arange(24), cfg, seed=3, n_classes=2,
                                                                    epochs=(1, 2)))[0][0])  # resumed at epoch 1
    other = _batches(training_dataset(store, np.arange(24), cfg, seed=4, n_classes=2))[0][0]
    np.testing.assert_array_equal(epoch1, again)  # same seed: same run
    key = lambda x: np.sort(x.reshape(24, -1).sum(axis=1))  # noqa: E731 (order-free: the shuffle differs too)
    assert not np.allclose(key(epoch1), key(epoch2))
    assert not np.allclose(key(epoch1), key(other))


def test_a_pitch_shift_without_band_frequencies_or_with_the_wrong_count_is_refused(tmp_path):
    from genre_se.errors import DatasetError

    store = _store(tmp_path)
    with pytest.raises(DatasetError, match="mel band frequencies"):
        make_dataset(store, np.arange(4), 2, shuffle=False, seed=0, n_classes=2, pitch_shift_semitones=1.0)
    with pytest.raises(DatasetError, match="32 mel bands"):
        make_dataset(store, np.arange(4), 2, shuffle=False, seed=0, n_classes=2, pitch_shift_semitones=1.0,
                     mel_hz=HZ[:10])


# --------------------------------------------------------------------------------------------------
# Params


@pytest.mark.parametrize("key,value", [
    ("eq_tilt_db", -1.0), ("eq_tilt_db", 41.0),
    ("compression", 1.5), ("compression", -0.1),
    ("noise_snr_db", [20.0, 10.0]), ("noise_snr_db", [5.0]), ("noise_snr_db", [-30.0, 10.0]),
    ("noise_snr_db", [True, 10.0]),
    ("pitch_shift_semitones", -1.0), ("pitch_shift_semitones", 13.0),
    ("time_stretch", -0.1), ("time_stretch", 0.6),
    ("lowpass_hz", [8000.0, 4000.0]), ("lowpass_hz", [100.0, 4000.0]), ("lowpass_hz", [4000.0]), ("lowpass_hz", 4000),
    ("lowpass_slope_db", 3.0), ("lowpass_slope_db", 20000.0),
])
def test_bad_augmentation_settings_name_their_key(key, value):
    with pytest.raises(ConfigError, match=rf"^train\.{key}:"):
        from_dict(TrainConfig, {key: value}, "train")


def test_augmentation_settings_parse_and_default_to_off():
    shipped = load_params(ROOT / "params.yaml").train
    assert dataclasses.replace(shipped) == shipped
    assert (shipped.eq_tilt_db, shipped.compression_amount, shipped.noise_snr_db, shipped.pitch_shift_semitones,
            shipped.time_stretch, shipped.lowpass_hz) == (0.0, 0.0, None, 0.0, 0.0, None)
    assert from_dict(TrainConfig, {"compression": True}, "train").compression_amount == 0.5
    assert from_dict(TrainConfig, {"compression": 0.3}, "train").compression_amount == 0.3
    assert from_dict(TrainConfig, {"compression": 1}, "train").compression_amount == 1.0
    assert from_dict(TrainConfig, {"noise_snr_db": [10, 10]}, "train").noise_snr_db == [10, 10]


def test_resume_key_covers_the_switches_but_not_calibration(tmp_path):
    from genre_se.train import _state_key

    store = _store(tmp_path)
    rows, model = np.arange(24), ModelConfig(filters=[4])
    base = _state_key(model, TrainConfig(), store, rows, 0)
    assert _state_key(model, TrainConfig(calibrate=False), store, rows, 0) == base
    for name, value in SWITCHES.items():
        assert _state_key(model, TrainConfig(**{name: value}), store, rows, 0) != base, name
    cut = TrainConfig(lowpass_hz=[6000.0, 9000.0])
    assert _state_key(model, dataclasses.replace(cut, lowpass_slope_db=48.0), store, rows, 0) != _state_key(
        model, cut, store, rows, 0)


def test_tuning_searches_are_keyed_by_the_switches_they_train_with(tmp_path):
    from genre_se.config import Params
    from genre_se.tune import SearchSpace, search_key

    store = _store(tmp_path)
    params = Params()
    space = SearchSpace.from_params(params)
    base = search_key(params, space, store)
    off = dataclasses.replace(params, train=TrainConfig(calibrate=False, epochs=3))
    assert search_key(off, space, store) == base
    for name, value in [*SWITCHES.items(), ("label_smoothing", 0.1)]:
        on = dataclasses.replace(params, train=TrainConfig(**{name: value}))
        assert search_key(on, space, store) != base, name


# --------------------------------------------------------------------------------------------------
# The train stage and tuning trials train on it


def _record_make_dataset(monkeypatch) -> list:
    import genre_se.train

    calls = []
    real = genre_se.train.make_dataset

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(genre_se.train, "make_dataset", recording)
    return calls


ALL_ON = TrainConfig(epochs=1, batch_size=12, learning_rate=0.01, label_smoothing=0.2, gain_db=3.0, eq_tilt_db=4.0,
                     compression=0.3, noise_snr_db=[15.0, 25.0], pitch_shift_semitones=1.0, time_stretch=0.1,
                     lowpass_hz=[4000.0, 9000.0], spec_augment=True, mixup_alpha=0.2)


def _expect_all_on(kwargs: dict) -> None:
    assert kwargs["shuffle"] is True
    assert {k: kwargs[k] for k in ("gain_db", "eq_tilt_db", "compression", "noise_snr_db", "pitch_shift_semitones",
                                   "time_stretch", "spec_augment", "mixup_alpha", "floor_db", "lowpass_hz")} == {
        "gain_db": 3.0, "eq_tilt_db": 4.0, "compression": 0.3, "noise_snr_db": [15.0, 25.0],
        "lowpass_hz": [4000.0, 9000.0],
        "pitch_shift_semitones": 1.0, "time_stretch": 0.1, "spec_augment": True, "mixup_alpha": 0.2,
        "floor_db": FLOOR}
    np.testing.assert_allclose(kwargs["mel_hz"], HZ)


def test_train_model_trains_on_every_switch(tmp_path, monkeypatch):
    from genre_se.train import train_model

    calls = _record_make_dataset(monkeypatch)
    store = _store(tmp_path)
    result = train_model(store, ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2), ALL_ON,
                         train_rows=np.arange(18), valid_rows=np.arange(18, 24), seed=0, state_dir=tmp_path / "s")
    assert len(calls) == 1 and result.epochs_run == 1
    _expect_all_on(calls[0])


def test_tuning_trials_train_like_the_train_stage(tmp_path, monkeypatch):
    import keras

    from genre_se.config import Params, TuneConfig
    from genre_se.tune import SearchSpace, SEHyperModel

    calls = _record_make_dataset(monkeypatch)
    store = _store(tmp_path)
    params = Params(model=ModelConfig(filters=[4], dropout=0.0), train=ALL_ON, tune=TuneConfig(epochs=1))
    space = SearchSpace.from_params(params)
    hypermodel = SEHyperModel(space, params.model, ALL_ON, params.tune, store.input_shape, 2, -50.0, 20.0)
    hp = keras_tuner_hp()
    for model in (hypermodel.build(hp), hypermodel.build_fixed(params.model)):
        loss = model.loss
        assert isinstance(loss, keras.losses.CategoricalCrossentropy)
        assert loss.get_config()["label_smoothing"] == pytest.approx(0.2)
    metrics = hypermodel.fit(hp, hypermodel.build(hp), store=store, train_rows=np.arange(18),
                             valid_rows=np.arange(18, 24), seed=0)
    assert metrics["epochs"] == 1
    assert len(calls) == 1
    _expect_all_on(calls[0])


def keras_tuner_hp():
    import keras_tuner

    return keras_tuner.HyperParameters()


def test_spec_augment_masks_one_band_and_one_span_per_segment_with_the_batch_mean():
    """Per segment: a contiguous band of at most 15 % of the mel bands and a contiguous span of at most 15 % of the
    frames are set to the batch mean; nothing else changes, and the masks differ between segments."""
    import tensorflow as tf

    from genre_se.augment import spec_augment

    x = _random((64, 32, 40, 1), seed=3)
    out = _np(spec_augment(tf.constant(x), tf.constant(11, tf.int64)))
    fill = float(np.mean(x, dtype=np.float64))
    changed = out[..., 0] != x[..., 0]
    np.testing.assert_allclose(out[..., 0][changed], fill, atol=1e-4)  # masked cells hold the batch mean
    widths = {"band": [], "span": []}
    for seg in changed:
        bands, frames = np.flatnonzero(seg.all(axis=1)), np.flatnonzero(seg.all(axis=0))
        np.testing.assert_array_equal(seg, np.isin(np.arange(32), bands)[:, None] | np.isin(np.arange(40), frames))
        for name, idx in (("band", bands), ("span", frames)):
            assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size  # contiguous
            widths[name].append(idx.size)
    assert max(widths["band"]) <= int(32 * 0.15) and max(widths["span"]) <= int(40 * 0.15)
    assert min(widths["band"]) == 0 and max(widths["band"]) == int(32 * 0.15)  # the whole range of widths is drawn
    assert len({tuple(np.flatnonzero(seg.all(axis=1))) for seg in changed}) > 10


def test_mixup_mixes_each_segment_and_its_label_with_one_partner_by_one_weight():
    """x_i' = l x_i + (1 - l) x_j and y_i' = l y_i + (1 - l) y_j with the same l and j: labels are mixed exactly as
    the segments are."""
    import tensorflow as tf

    from genre_se.augment import mixup

    n = 16
    x, y = _random((n, 4, 5, 1), seed=2), np.eye(n, dtype=np.float32)  # each segment its own class
    xm, ym = (_np(t) for t in mixup(tf.constant(x), tf.constant(y), tf.constant(5, tf.int64), 0.4))
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)
    mixed = 0
    for i in range(n):
        others = ym[i].copy()
        others[i] = 0.0
        j = int(np.argmax(others)) if others.max() > 0 else i
        lam = ym[i, i] if j != i else 1.0
        assert np.count_nonzero(ym[i] > 1e-6) <= 2  # one partner
        np.testing.assert_allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-3)
        mixed += 0.05 < lam < 0.95
    assert mixed >= n // 4  # the weights are drawn, not all 0 or 1
