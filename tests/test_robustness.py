"""Robustness transforms do what their names say; the report compares distributions correctly.

Transforms are checked on synthetic signals by measuring what they claim (RMS change, bitrate and length,
channels and rate, band energy, SNR and spectral slope, dynamic range, leading zeros). The report is checked
with a stand-in classifier whose output is a known function of the audio, and once end to end through the
CLI with the tiny trained bundle of tests/test_inference.py.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import signal as sps

from genre_se import robustness as rb
from genre_se.errors import AudioError
from tests.test_inference import BAND_HZ, tiny, tone, write  # noqa: F401  (tiny: the shared bundle fixture)

RNG_SEED = 1234


def music_like(seconds: float, sr: int, seed: int = RNG_SEED, peak: float = 0.9) -> np.ndarray:
    """Chords with a beat-like amplitude envelope plus a little noise, scaled to ``peak``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (220.0, 277.2, 329.6, 1760.0))
    envelope = 0.3 + 0.7 * np.exp(-((t * 2.0) % 1.0) * 6.0)  # a hit every 0.5 s
    y = tones * envelope + 0.1 * rng.standard_normal(len(t))
    return (peak * y / np.abs(y).max()).astype(np.float32)


def rms_db(y: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(y, dtype=np.float64) ** 2))


def band_power(y: np.ndarray, sr: int, lo: float, hi: float, nperseg: int = 4096) -> float:
    freqs, psd = sps.welch(np.asarray(y, dtype=np.float64), sr, nperseg=nperseg, axis=0)
    keep = (freqs >= lo) & (freqs <= hi)
    return float(psd[keep].sum())


# --------------------------------------------------------------------------------------------------
# Gain and soft limiting


@pytest.mark.parametrize("db", [-20.0, -6.0])
def test_gain_changes_rms_by_the_stated_db(db):
    y = music_like(3.0, 22050)
    out, sr = rb.TRANSFORMS[f"gain{db:.0f}dB"](y, 22050)
    assert sr == 22050 and out.shape == y.shape and out.dtype == np.float32
    assert rms_db(out) - rms_db(y) == pytest.approx(db, abs=0.1)
    np.testing.assert_allclose(out, y * 10 ** (db / 20), rtol=1e-6)  # quiet enough: the limiter never acts


def test_plus_6db_is_soft_limited_not_hard_clipped():
    y = music_like(3.0, 22050, peak=1.0)  # a loud master: peaks at full scale
    out, _ = rb.TRANSFORMS["gain+6dB"](y, 22050)
    boosted = y.astype(np.float64) * 10 ** (6 / 20)
    assert np.abs(out).max() <= 1.0
    assert np.count_nonzero(np.abs(out) >= 1.0) == 0  # no flat tops (a hard clip would have many)
    knee = 10 ** (-3 / 20)
    below = np.abs(boosted) <= knee
    assert below.mean() > 0.5  # most of the signal is untouched by the limiter ...
    np.testing.assert_allclose(out[below], boosted[below], rtol=1e-6)  # ... and exactly +6 dB
    order = np.argsort(boosted)
    assert np.all(np.diff(out[order].astype(np.float64)) >= 0)  # monotone: no fold-over distortion
    assert rms_db(out) - rms_db(y) == pytest.approx(6.0, abs=1.5) and rms_db(out) - rms_db(y) < 6.0


def test_soft_limit_is_smooth_at_the_knee():
    knee = 10 ** (-3 / 20)
    x = np.array([knee - 1e-4, knee, knee + 1e-4, 3.0, -3.0], dtype=np.float32)
    out = rb.soft_limit(x)
    slope = (out[2] - out[0]) / (x[2] - x[0])
    assert slope == pytest.approx(1.0, abs=0.01)
    assert 0.99 < out[3] <= 1.0 and out[4] == -out[3]


# --------------------------------------------------------------------------------------------------
# MP3 round trip


@pytest.mark.parametrize("sr, channels", [(22050, 1), (44100, 2)])
def test_mp3_round_trip_keeps_length_and_waveform(sr, channels):
    y = music_like(4.0, sr)
    if channels == 2:
        y = np.stack([y, music_like(4.0, sr, seed=7)], axis=1)
    out, out_sr = rb.TRANSFORMS["mp3-128k"](y, sr)
    assert out_sr == sr and out.ndim == y.ndim and out.shape[1:] == y.shape[1:]
    assert abs(len(out) - len(y)) <= 2257  # within one codec delay (this decoder trims it: usually 0)
    n = min(len(out), len(y)) - 4096
    reference, decoded = (y[:, 0], out[:, 0]) if channels == 2 else (y, out)
    lags = np.arange(-2257, 2258)
    xcorr = sps.correlate(decoded[2048:n], reference[2048:n], mode="full", method="fft")
    centre = len(reference[2048:n]) - 1
    lag = lags[np.argmax(xcorr[centre - 2257 : centre + 2258])]
    aligned = decoded[2048 + lag : n + lag] if lag >= 0 else decoded[2048 : n + lag]
    original = reference[2048:n] if lag >= 0 else reference[2048 - lag : n]
    assert np.corrcoef(aligned, original[: len(aligned)])[0, 1] > 0.99
    assert not np.array_equal(out[: len(y)], y[: len(out)])  # it really went through the codec


@pytest.mark.parametrize("sr", [22050, 44100])
def test_mp3_is_written_at_128_kbits(tmp_path, sr):
    seconds = 6.0
    path = rb.write_mp3(tmp_path / "x.mp3", np.stack([music_like(seconds, sr)] * 2, axis=1), sr)
    assert rb.mp3_bitrate_kbps(path) == 128
    kbits_per_second = os.path.getsize(path) * 8 / 1000 / seconds
    assert kbits_per_second == pytest.approx(128, rel=0.05)  # constant bitrate: the size says so too


def test_mp3_round_trip_of_a_rate_mpeg_cannot_carry_is_encoded_at_16k():
    out, out_sr = rb.mp3_roundtrip(music_like(2.0, 8000), 8000)
    assert out_sr == 16000 and abs(len(out) - 32000) <= 2257


def test_mp3_round_trip_of_more_than_two_channels_is_their_mix(tmp_path):
    """MP3 carries two channels at most: a 5.1 file goes through as its mono mix (what the model hears)."""
    sr = 44100
    y = np.stack([music_like(2.0, sr, seed=seed) for seed in range(6)], axis=1)
    out, out_sr = rb.mp3_roundtrip(y, sr)
    assert out_sr == sr and out.shape[1] == 1 and abs(len(out) - len(y)) <= 2257
    mix = y.mean(axis=1)
    n = min(len(out), len(mix))
    assert np.corrcoef(out[2048 : n - 2048, 0], mix[2048 : n - 2048])[0, 1] > 0.98
    with pytest.raises(AudioError, match="one or two channels, got 6"):
        rb.write_mp3(tmp_path / "x.mp3", y, sr)


def test_mp3_rejects_a_bitrate_layer_iii_does_not_have(tmp_path):
    with pytest.raises(AudioError, match="129 kbit/s"):
        rb.write_mp3(tmp_path / "x.mp3", music_like(1.0, 44100), 44100, bitrate_kbps=129)
    with pytest.raises(AudioError, match="11025 Hz"):
        rb.write_mp3(tmp_path / "x.mp3", music_like(1.0, 11025), 11025)


# --------------------------------------------------------------------------------------------------
# Stereo, low-pass, pink noise, compression, silence


@pytest.mark.parametrize("name, rate", [("stereo-44.1k", 44100), ("stereo-48k", 48000)])
def test_stereo_outputs_two_channels_at_the_stated_rate(name, rate):
    sr, seconds, freq = 22050, 2.0, 1000.0
    mono = (0.5 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
    out, out_sr = rb.TRANSFORMS[name](mono, sr)
    assert out_sr == rate and out.shape == (int(rate * seconds), 2)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])  # mono is duplicated
    spectrum = np.abs(np.fft.rfft(out[:, 0]))
    assert np.fft.rfftfreq(len(out), 1 / rate)[np.argmax(spectrum)] == pytest.approx(freq, abs=1.0)
    stereo = np.stack([mono, -mono], axis=1)
    out2, _ = rb.TRANSFORMS[name](stereo, sr)
    np.testing.assert_allclose(out2[:, 0], -out2[:, 1], atol=1e-6)  # true stereo is kept



def test_stereo_of_more_than_two_channels_is_their_mix_on_both_sides():
    """A 5.1 file goes to stereo as its mono mix, duplicated (not its first two channels)."""
    from genre_se.audio import resample

    sr = 22050
    y = np.stack([music_like(1.0, sr, seed=seed) for seed in range(6)], axis=1)
    out, out_sr = rb.to_stereo(y, sr, target_sr=44100)
    assert out_sr == 44100 and out.shape == (44100, 2)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    np.testing.assert_allclose(out[:, 0], resample(y.mean(axis=1), sr, 44100), atol=1e-5)

def test_lowpass_removes_everything_above_8k():
    sr = 44100
    rng = np.random.default_rng(RNG_SEED)
    t = np.arange(3 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 12000 * t)
         + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    out, out_sr = rb.TRANSFORMS["lowpass-8k"](y, sr)
    assert out_sr == sr and out.shape == y.shape
    before, after = band_power(y, sr, 8100, sr / 2), band_power(out, sr, 8100, sr / 2)
    assert 10 * np.log10(before / after) > 40
    kept = 10 * np.log10(band_power(out, sr, 900, 1100) / band_power(y, sr, 900, 1100))
    assert kept == pytest.approx(0.0, abs=0.1)
    np.testing.assert_array_equal(rb.lowpass(y, 16000, cutoff_hz=8000)[0], y)  # nothing above Nyquist


def test_pink_noise_has_the_stated_snr_and_a_minus_3db_per_octave_slope():
    sr = 22050
    y = np.stack([music_like(8.0, sr), music_like(8.0, sr, seed=5)], axis=1)
    out, out_sr = rb.TRANSFORMS["pink-noise-20dB"](y, sr)
    noise = out.astype(np.float64) - y
    assert out_sr == sr and out.shape == y.shape
    assert rms_db(y) - rms_db(noise) == pytest.approx(20.0, abs=0.2)
    assert np.corrcoef(noise[:, 0], noise[:, 1])[0, 1] < 0.1  # independent per channel
    freqs, psd = sps.welch(noise[:, 0], sr, nperseg=8192)
    band = (freqs >= 100) & (freqs <= 8000)
    slope_db_per_octave = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]
    assert slope_db_per_octave == pytest.approx(-3.01, abs=0.3)
    np.testing.assert_array_equal(rb.TRANSFORMS["pink-noise-20dB"](y, sr)[0], out)  # deterministic
    silence = np.zeros(1000, dtype=np.float32)
    np.testing.assert_array_equal(rb.add_pink_noise(silence, sr)[0], silence)



def test_pink_noise_has_no_energy_below_20_hz_and_unit_power():
    """Sub-sonic bins are left out of the noise (an SNR should count noise one can hear)."""
    sr = 8000
    noise = rb.pink_noise((sr * 4, 2), sr, seed=3)
    assert np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-9)
    spectrum = np.abs(np.fft.rfft(noise, axis=0))
    freqs = np.fft.rfftfreq(len(noise), 1 / sr)
    assert spectrum[freqs < 20].max() < 1e-9 * spectrum.max()
    assert spectrum[(freqs >= 20) & (freqs < 25)].min() > 0

def test_compression_reduces_dynamic_range_and_crest_factor():
    sr = 22050
    t = np.arange(sr) / sr
    loud, quiet = 0.9 * np.sin(2 * np.pi * 440 * t), 0.05 * np.sin(2 * np.pi * 440 * t)
    y = np.concatenate([quiet, loud, quiet, loud]).astype(np.float32)
    out, out_sr = rb.TRANSFORMS["compression"](y, sr)
    assert out_sr == sr and out.shape == y.shape and np.abs(out).max() <= 1.0
    steady = slice(sr // 4, 3 * sr // 4)  # away from attack/release transitions

    def section_range(z):
        sections = z.reshape(4, sr)
        return rms_db(sections[1, steady]) - rms_db(sections[0, steady])

    assert section_range(y) == pytest.approx(25.1, abs=0.2)
    assert section_range(out) < section_range(y) - 6.0
    assert rms_db(out) == pytest.approx(rms_db(y), abs=0.5)  # make-up gain keeps the loudness

    drums = music_like(4.0, sr, peak=1.0)
    compressed, _ = rb.compress_dynamics(drums, sr)
    def crest(z):
        return 20 * np.log10(np.abs(z).max() / np.sqrt(np.mean(z.astype(np.float64) ** 2)))

    assert crest(compressed) < crest(drums) - 0.5


def test_compression_leaves_audio_below_the_threshold_alone():
    y = music_like(2.0, 22050, peak=0.05)  # about -35 dBFS RMS, under the -24 dBFS threshold
    np.testing.assert_array_equal(rb.compress_dynamics(y, 22050)[0], y)



def test_compressor_gain_is_steady_on_a_steady_level_up_to_a_short_last_block():
    """A steady level (DC, so every 1 ms block has the same power) gets one gain throughout, the last block included
    when the length is no whole number of blocks: its power is the mean over its real samples, not the padding."""
    sr = 22050
    y = np.full(sr + 7, 0.5, dtype=np.float32)  # 1 ms blocks of 22 samples: the last holds 7
    out, _ = rb.compress_dynamics(y, sr, makeup=False)
    gain = out / y
    expected = 10 ** (-(10 * np.log10(0.25) + 24.0) * (1 - 1 / 4.0) / 20)  # 3/4 of the excess over -24 dB
    np.testing.assert_allclose(gain, expected, rtol=1e-5)


def test_the_level_detector_attacks_fast_and_releases_slowly():
    """The envelope follows a rise with the attack time and a fall with the release time."""
    step = 1e-3
    up = rb._ballistics(np.r_[np.zeros(1), np.ones(20)], step, attack_s=5e-3, release_s=50e-3)
    assert up[5] == pytest.approx(1 - np.exp(-5 * step / 5e-3), rel=1e-9)  # 5 blocks: one attack time constant
    down = rb._ballistics(np.r_[np.ones(1), np.zeros(20)], step, attack_s=5e-3, release_s=50e-3)
    assert down[5] == pytest.approx(np.exp(-5 * step / 50e-3), rel=1e-9)  # a tenth of the release time

@pytest.mark.parametrize("shape", [(1000,), (1000, 2)])
def test_leading_silence_adds_exactly_five_seconds_of_zeros(shape):
    sr = 8000
    y = np.random.default_rng(RNG_SEED).uniform(0.1, 0.5, size=shape).astype(np.float32)
    out, out_sr = rb.TRANSFORMS["silence-5s"](y, sr)
    assert out_sr == sr and out.shape == (5 * sr + shape[0], *shape[1:])
    assert not out[: 5 * sr].any()
    np.testing.assert_array_equal(out[5 * sr :], y)


def test_load_channels_keeps_stereo(tmp_path):
    y = np.stack([music_like(1.0, 16000), -music_like(1.0, 16000)], axis=1)
    sf.write(tmp_path / "s.flac", y, 16000, subtype="PCM_24")
    loaded, sr = rb.load_channels(tmp_path / "s.flac")
    assert sr == 16000 and loaded.shape == y.shape
    np.testing.assert_allclose(loaded, y, atol=1e-6)
    with pytest.raises(AudioError, match="missing.wav"):
        rb.load_channels(tmp_path / "missing.wav")


def test_load_channels_reads_only_the_middle_of_a_long_file(tmp_path):
    y = np.stack([music_like(4.0, 16000), -music_like(4.0, 16000)], axis=1)
    sf.write(tmp_path / "s.wav", y, 16000, subtype="FLOAT")
    loaded, sr = rb.load_channels(tmp_path / "s.wav", max_seconds=1.0)
    assert sr == 16000 and loaded.shape == (16000, 2)
    np.testing.assert_array_equal(loaded, y[24000:40000])  # the centred second
    assert rb.load_channels(tmp_path / "s.wav", max_seconds=10.0)[0].shape == y.shape  # shorter: whole


def test_load_channels_of_a_truncated_mp3_whose_data_ends_before_its_middle(tmp_path):
    """A partial download keeps a header claiming the whole length: its 'middle' may lie past the data, and the
    excerpt then comes from the start instead of 'no audio samples'."""
    y = np.stack([music_like(10.0, 44100), music_like(10.0, 44100)], axis=1).astype(np.float32)
    sf.write(tmp_path / "full.mp3", y, 44100)
    data = (tmp_path / "full.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) * 3 // 10])  # about 3 s of a declared 10
    whole, _ = rb.load_channels(tmp_path / "cut.mp3")
    assert 2.5 * 44100 < len(whole) < 3.5 * 44100
    loaded, sr = rb.load_channels(tmp_path / "cut.mp3", max_seconds=2.0)  # the declared middle: 4-6 s
    assert sr == 44100 and loaded.shape == (2 * 44100, 2)
    np.testing.assert_array_equal(loaded, whole[: 2 * 44100])


# --------------------------------------------------------------------------------------------------
# Comparing distributions and the report


def test_a_tied_vote_agrees_as_the_genres_reported_say(tmp_path):
    """With ``aggregate="vote"`` both files can tie blues/rock 0.5/0.5 and predict answer each by its segments'
    mean (rock, then blues): argmax of the fractions said "blues" twice, so the row reported two genres and
    top1_agree True."""
    from genre_se.inference import Prediction

    means = iter([np.array([[0.45, 0.1, 0.45], [0.05, 0.05, 0.9]]), np.array([[0.9, 0.05, 0.05], [0.45, 0.1, 0.45]])])

    class Voting:
        def predict_array(self, y, sr):
            return Prediction(path=None, labels=["blues", "country", "rock"], probabilities=np.array([0.5, 0, 0.5]),
                              segment_probabilities=next(means), segment_starts=np.zeros(2),
                              segment_ends=np.ones(2), duration=2.0, aggregate="vote")

    path = write(tmp_path / "a.wav", tone(BAND_HZ["mid"], 1.0))
    (row,) = rb.file_robustness(Voting(), path, {"same": lambda y, sr: (y, sr)}).rows
    assert (row["reference_genre"], row["genre"]) == ("rock", "blues") and not row["top1_agree"]


def test_total_variation_and_top1_agreement_on_hand_made_distributions():
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert rb.total_variation(p, q) == pytest.approx(0.3)
    assert rb.total_variation(p, p) == 0.0
    assert rb.total_variation([1, 0, 0], [0, 0.5, 0.5]) == pytest.approx(1.0)
    # mass moved from two classes to two others: half the summed differences, not the largest one
    assert rb.total_variation([0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]) == pytest.approx(0.6)
    assert rb.total_variation(p, q) == rb.total_variation(q, p)
    assert not rb.top1_agreement(p, q)
    assert rb.top1_agreement(p, [0.4, 0.35, 0.25])
    with pytest.raises(ValueError):
        rb.total_variation(p, [0.5, 0.5])


@dataclass
class FakePrediction:
    labels: list
    probabilities: np.ndarray

    @property
    def genre(self):
        return self.labels[int(np.argmax(self.probabilities))]


class BandClassifier:
    """Stand-in model: P(high) is the share of signal energy above 3 kHz (channels mixed, any rate)."""

    def __init__(self):
        self.labels = ["low", "high"]
        self.calls = []

    def predict_array(self, y, sr):
        mono = np.asarray(y, dtype=np.float64)
        mono = mono.mean(axis=1) if mono.ndim == 2 else mono
        self.calls.append((len(mono), sr))
        power = np.abs(np.fft.rfft(mono)) ** 2
        high = power[np.fft.rfftfreq(len(mono), 1 / sr) > 3000].sum() / power.sum()
        return FakePrediction(self.labels, np.array([1 - high, high]))


def test_report_rows_summary_and_failures(tmp_path):
    sr = 22050
    t = np.arange(2 * sr) / sr
    y = (0.2 * np.sin(2 * np.pi * 500 * t) + 0.3 * np.sin(2 * np.pi * 10000 * t)).astype(np.float32)
    good = tmp_path / "bright.wav"
    sf.write(good, y, sr, subtype="FLOAT")
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"\xff\xfb not an mp3 frame " * 8)
    classifier = BandClassifier()

    failures: list = []
    report = rb.robustness_report(classifier, [good, corrupt], failures=failures)
    assert len(classifier.calls) == 1 + len(rb.TRANSFORMS)  # untouched + one per transform
    assert list(report["transform"]) == list(rb.TRANSFORMS) and set(report["path"]) == {str(good)}
    assert [Path(f.path).name for f in failures] == ["corrupt.mp3"] and "corrupt.mp3" in failures[0].message

    rows = report.set_index("transform")
    share_high = 0.3**2 / (0.2**2 + 0.3**2)
    assert (rows["reference_genre"] == "high").all()
    assert rows.loc["lowpass-8k", "genre"] == "low" and not rows.loc["lowpass-8k", "top1_agree"]
    assert rows.loc["lowpass-8k", "tv_distance"] == pytest.approx(share_high, abs=1e-3)  # all of it moved
    for unchanged in ("gain-20dB", "gain-6dB", "silence-5s", "stereo-48k"):
        assert rows.loc[unchanged, "top1_agree"] and rows.loc[unchanged, "tv_distance"] < 1e-3

    summary = rb.summarize(report)
    assert list(summary["transform"]) == list(rb.TRANSFORMS) and (summary["files"] == 1).all()
    lowpass_row = summary.set_index("transform").loc["lowpass-8k"]
    assert lowpass_row["agreement"] == 0.0 and lowpass_row["mean_tv"] == rows.loc["lowpass-8k", "tv_distance"]

    with pytest.raises(AudioError, match="corrupt.mp3"):
        rb.robustness_report(classifier, [corrupt])


def test_files_of_six_channels_and_non_finite_samples(tmp_path):
    """Every transform runs on a 5.1 file; a float file with NaN fails naming the file, as predict says it."""
    sr = 48000
    surround = tmp_path / "surround.wav"
    sf.write(surround, np.stack([music_like(2.0, sr, seed=seed) for seed in range(6)], axis=1), sr)
    y = music_like(2.0, 22050)
    y[100] = np.nan
    broken = tmp_path / "nan.wav"
    sf.write(broken, y, 22050, subtype="FLOAT")
    failures: list = []
    report = rb.robustness_report(BandClassifier(), [surround, broken], failures=failures)
    assert list(report["transform"]) == list(rb.TRANSFORMS) and set(report["path"]) == {str(surround)}
    assert [f.message for f in failures] == [f"{broken}: contains non-finite samples (NaN or infinity)"]


def test_summarize_averages_over_files():
    report = pd.DataFrame({
        "path": ["a", "b", "c", "a", "b", "c"],
        "transform": ["x", "x", "x", "y", "y", "y"],
        "reference_genre": "g", "genre": "g",
        "top1_agree": [True, False, True, True, True, True],
        "tv_distance": [0.1, 0.5, 0.3, 0.0, 0.2, 0.1],
    })
    summary = rb.summarize(report).set_index("transform")
    assert summary.loc["x", "agreement"] == pytest.approx(2 / 3)
    assert summary.loc["x", "mean_tv"] == pytest.approx(0.3) and summary.loc["x", "max_tv"] == pytest.approx(0.5)
    assert summary.loc["y", "agreement"] == 1.0 and summary.loc["y", "mean_tv"] == pytest.approx(0.1)
    text = rb.format_report(report, "table")
    assert "66.7%" in text and "x" in text.splitlines()[1]
    assert pd.read_csv(io.StringIO(rb.format_report(report, "csv"))).shape == (2, 5)


# --------------------------------------------------------------------------------------------------
# End to end: the CLI with the tiny trained bundle


def test_cli_robustness(capsys, tiny, tmp_path):  # noqa: F811
    from genre_se.cli import main

    good = write(tmp_path / "mid.wav", tone(BAND_HZ["mid"], 3.0))
    corrupt = tmp_path / "bad.mp3"
    corrupt.write_bytes(b"\xff\xfb not an mp3 frame " * 8)
    code = main(["robustness", str(good), str(corrupt), "--model", str(tiny["bundle"]), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 1  # one file failed; the other was still reported
    errors = [line for line in err.splitlines() if line.startswith("genre-se: error:")]
    assert len(errors) == 1 and "bad.mp3" in errors[0] and "Traceback" not in err
    document = json.loads(out)
    assert [row["transform"] for row in document["summary"]] == list(rb.TRANSFORMS)
    assert all(0.0 <= row["agreement"] <= 1.0 and 0.0 <= row["mean_tv"] <= 1.0 for row in document["summary"])
    assert {row["reference_genre"] for row in document["files"]} == {"mid"}
    rows = {row["transform"]: row for row in document["files"]}
    assert rows["lowpass-8k"]["tv_distance"] == 0.0  # an 8 kHz file has nothing above 8 kHz: same audio
    assert all(rows[name]["top1_agree"] and rows[name]["tv_distance"] < 0.02 for name in ("stereo-44.1k", "stereo-48k"))
    for row in document["summary"]:  # one file: the summary is that file's row
        assert row["agreement"] == float(rows[row["transform"]]["top1_agree"])
        assert row["mean_tv"] == pytest.approx(rows[row["transform"]]["tv_distance"])
    assert [Path(e["path"]).name for e in document["errors"]] == ["bad.mp3"]

    target = tmp_path / "out" / "summary.csv"
    code = main(["robustness", str(good), "--model", str(tiny["bundle"]), "--format", "csv", "--output", str(target)])
    assert code == 0 and capsys.readouterr().out == ""
    assert list(pd.read_csv(target)["transform"]) == list(rb.TRANSFORMS)
