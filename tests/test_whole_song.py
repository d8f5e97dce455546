"""Whole songs: near-silent segments are left out of a file's genre, and a long file is read only in windows
around a bounded spread of segments whose features equal the whole stream's.

Classifier tests use the tiny trained bundle of tests/test_inference.py (8 kHz, 0.256-s segments, so a
6-minute file has about 2800 segments); feature-parity tests use the shipped feature parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr

from genre_se.config import FeatureConfig
from genre_se.errors import ModelError
from tests.test_inference import BAND_HZ, FEATURES, clf, tiny, tone, write  # noqa: F401  (shared fixtures)

DEFAULT = FeatureConfig()  # the shipped features: 22050 Hz, n_fft 2048, hop 512, 128-frame segments
#: Window features against the whole stream, in dB. Without resampling they are the same computation on
#: the same samples. A resampler started at the window differs from the whole stream's by float rounding
#: (~2e-7 per sample): bins near the -100 dB floor move by a few hundredths of a dB, the body of the music
#: (bins above -40 dB) by under 1e-3 dB (measured: <= 2e-4).
EXACT_DB = 1e-4
RESAMPLED_DB, RESAMPLED_BODY_DB = 0.05, 1e-3


def noisy_music(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Broadband content in every mel band (noise) plus tones that change every few seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    freq = 220.0 * 2 ** (np.floor(t / 3.7) % 4)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def selected_and_full(path, cfg: FeatureConfig, k: int):
    """(window features, whole-stream features) of ``k`` spread segments of a file."""
    from genre_se.audio import open_windows
    from genre_se.features import (concat_segments, extract_segments, iter_selected_segments,
                                   segment_start_frames, spread_indices)

    full = extract_segments(path, cfg, loudness=True)
    with open_windows(path, cfg.sample_rate) as reader:
        assert reader is not None, f"{path}: expected window reads"
        n_frames = 1 + reader.n_samples // cfg.hop_length
        starts = segment_start_frames(n_frames, cfg)
        chosen = spread_indices(len(starts), k)
        part = concat_segments(iter_selected_segments(reader.read, starts[chosen], n_frames, cfg, batch_size=3))
    assert n_frames == full.n_frames  # the header's length is the decoded length
    np.testing.assert_array_equal(part.start_frames, full.start_frames[chosen])
    return part, full, chosen


# --------------------------------------------------------------------------------------------------
# Loudness and silence


def test_frame_loudness_reads_db_re_full_scale():
    from genre_se.features import floor_db, frame_loudness, log_mel

    sr = DEFAULT.sample_rate
    rng = np.random.default_rng(0)
    for rms_db in (-20.0, -80.0):
        noise = (10 ** (rms_db / 20) * rng.standard_normal(5 * sr)).astype(np.float32)
        inner = frame_loudness(log_mel(noise, DEFAULT), DEFAULT)[8:-8]  # frames without the zero padding
        assert np.median(inner) == pytest.approx(rms_db, abs=1.0)  # white noise is the calibration
    sine = np.sin(2 * np.pi * 1000 * np.arange(2 * sr) / sr).astype(np.float32)
    assert 0.0 < np.median(frame_loudness(log_mel(sine, DEFAULT), DEFAULT)) < 4.0  # full scale: RMS -3 dB
    silence = frame_loudness(log_mel(np.zeros(sr, np.float32), DEFAULT), DEFAULT)
    assert silence.max() < floor_db(DEFAULT) < -99.0  # the power floor, far below any threshold


def test_a_segment_is_as_loud_as_its_loudest_frame():
    """A segment whose music starts in its last quarter (a song's first note after a pause) has music: it must
    not be called near-silent by the silence around it, so it is as loud as its loudest frame, each segment
    on its own."""
    from genre_se.features import frame_loudness, log_mel, segment_loudness

    frames, hop = FEATURES.segment_frames, FEATURES.hop_length
    y = np.zeros(2 * frames * hop, np.float32)
    start = frames * hop + (3 * frames // 4) * hop  # into the second segment's last quarter
    y[start:] = tone(BAND_HZ["mid"], len(y[start:]) / FEATURES.sample_rate)
    spec = log_mel(y, FEATURES)
    segments = np.stack([spec[:, :frames], spec[:, frames : 2 * frames]])[..., None]
    per_frame = frame_loudness(spec, FEATURES)
    loudness = segment_loudness(segments, FEATURES)
    np.testing.assert_allclose(loudness, [per_frame[:frames].max(), per_frame[frames : 2 * frames].max()], atol=1e-4)
    assert loudness[0] < -90 and loudness[1] > -20  # silence, then a segment with a note in it
    assert np.median(per_frame[frames : 2 * frames]) < -90  # though most of its frames are silent

def test_default_threshold_separates_gtzan_quiet_passages_from_silence_and_noise(shared_data):
    """The default -60 dB: GTZAN's quietest genres never count as silent; silence, dither and -80 dB noise do."""
    from genre_se.audio import load_audio
    from genre_se.features import extract_segments
    from genre_se.inference import DEFAULT_SILENCE_DB

    clips = sorted((shared_data / "gtzan-mini" / "genres").glob("classical/*.wav"))
    clips += sorted((shared_data / "gtzan-mini" / "genres").glob("jazz/*.wav"))
    if not clips:
        pytest.skip("no GTZAN classical/jazz clips in the shared data")
    quietest = min(float(extract_segments(load_audio(c, DEFAULT.sample_rate), DEFAULT, loudness=True).loudness_db.min())
                   for c in clips)
    assert quietest > DEFAULT_SILENCE_DB + 20  # measured: about -31 dB, 29 dB of margin

    sr, rng = DEFAULT.sample_rate, np.random.default_rng(1)
    quiet = {
        "digital silence": np.zeros(4 * sr, np.float32),
        "16-bit dither": (rng.integers(-1, 2, 4 * sr) / 32768).astype(np.float32),
        "-80 dB noise": (1e-4 * rng.standard_normal(4 * sr)).astype(np.float32),
    }
    for name, y in quiet.items():
        assert extract_segments(y, DEFAULT, loudness=True).loudness_db.max() < DEFAULT_SILENCE_DB, name


def test_silent_segments_are_listed_but_left_out(tiny, clf, tmp_path):  # noqa: F811
    from genre_se.inference import GenreClassifier

    sr, hop, n_fft = FEATURES.sample_rate, FEATURES.hop_length, FEATURES.n_fft
    music = tone(BAND_HZ["mid"], 20.0)
    path = write(tmp_path / "tone_then_silence.wav", np.concatenate([music, np.zeros(10 * sr, np.float32)]))
    alone = clf.predict(write(tmp_path / "tone.wav", music))
    result = clf.predict(path)
    everything = GenreClassifier.load(tiny["bundle"], silence_db=None).predict(path)

    starts = np.round(result.segment_starts * sr / hop).astype(int)
    in_silence = starts * hop - n_fft // 2 >= len(music)  # every sample of every frame is silence
    in_music = (starts + FEATURES.segment_frames) * hop + n_fft // 2 <= len(music)
    assert in_silence.sum() > 70 and (result.silent[in_silence]).all() and not result.silent[in_music].any()
    assert not result.all_silent and result.n_segments == everything.n_segments  # still listed
    np.testing.assert_allclose(result.segment_probabilities, everything.segment_probabilities)
    expected = everything.segment_probabilities[~result.silent].mean(axis=0)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-9)  # the rest, averaged
    # the same answer as the tone alone: segments wholly in the music are the alone file's segments (its
    # end padding is zeros, like the silence), so only the few straddling the edge can move the mean
    same = np.searchsorted(alone.segment_starts, result.segment_starts[in_music])
    np.testing.assert_allclose(result.segment_probabilities[in_music], alone.segment_probabilities[same], atol=1e-5)
    straddling = int((~in_music & ~result.silent).sum())
    assert result.genre == alone.genre == "mid" and 1 <= straddling <= 3
    bound = straddling / (~result.silent).sum() + 1 / alone.n_segments  # + the alone file's end-aligned one
    assert np.abs(result.probabilities - alone.probabilities).max() <= bound
    # with the silence counted the answer would be far off
    assert np.abs(everything.probabilities - alone.probabilities).max() > 5 * bound

    record = result.to_dict(timeline=True)
    assert record["silent_segments"] == int(result.silent.sum()) and record["all_silent"] is False
    assert [row["silent"] for row in record["timeline"]] == result.silent.tolist()


@pytest.mark.parametrize("kind", ["digital silence", "-80 dB noise"])
def test_a_silent_file_falls_back_to_every_segment(clf, tmp_path, kind):  # noqa: F811
    from genre_se.inference import GenreClassifier

    rng = np.random.default_rng(2)
    y = np.zeros(24000, np.float32) if kind == "digital silence" else (1e-4 * rng.standard_normal(24000))
    result = clf.predict(write(tmp_path / "quiet.wav", y.astype(np.float32), subtype="FLOAT"))
    assert result.all_silent and result.silent.all() and result.n_segments > 10
    np.testing.assert_allclose(result.probabilities, result.segment_probabilities.mean(axis=0), atol=1e-9)
    assert result.to_dict()["all_silent"] is True
    # silence has no genre: the answer is marked uncertain however confident the model is on it
    confident = GenreClassifier.load(clf.bundle.path, uncertain_below=0.0)
    again = confident.predict(tmp_path / "quiet.wav")
    assert again.all_silent and again.uncertain and not again.short
    # the table says why, and silence comes before "unlike the training recordings" (silence is far from them too)
    import dataclasses

    from genre_se.outputs import PredictionFormatter

    far = PredictionFormatter("table").add(dataclasses.replace(again, distance=99.0, unfamiliar=True))
    assert "(uncertain: near-silent throughout)" in far and "unlike the training" not in far


def test_audio_shorter_than_a_segment_is_marked_short_and_uncertain(tiny, tmp_path):  # noqa: F811
    """One segment that is mostly padding is input the model never trained on: its confidence means little."""
    from genre_se.inference import GenreClassifier
    from genre_se.outputs import PredictionFormatter

    confident = GenreClassifier.load(tiny["bundle"], uncertain_below=0.0)  # only shortness can make it uncertain
    segment = FEATURES.segment_seconds
    blip = confident.predict(write(tmp_path / "blip.wav", tone(BAND_HZ["mid"], 0.4 * segment)))
    whole = confident.predict(write(tmp_path / "whole.wav", tone(BAND_HZ["mid"], 1.2 * segment)))
    assert blip.n_segments == 1 and blip.short and blip.uncertain
    assert not whole.short and not whole.uncertain
    assert blip.to_dict()["short"] is True and whole.to_dict()["short"] is False
    table = PredictionFormatter("table").add(blip)
    assert "padded: shorter than one segment" in table and "(uncertain: shorter than one segment)" in table
    # far from the training data too (as padding makes a blip): the cause the user can act on comes first
    import dataclasses

    far = PredictionFormatter("table").add(dataclasses.replace(blip, distance=99.0, unfamiliar=True))
    assert "(uncertain: shorter than one segment)" in far and "unlike the training" not in far
    assert "padded" not in PredictionFormatter("table").add(whole)


def test_audio_of_exactly_one_segment_is_not_short(tiny, tmp_path):  # noqa: F811
    """The boundary: a file as long as one segment fills it, so it is answered like any other file."""
    from genre_se.inference import GenreClassifier

    confident = GenreClassifier.load(tiny["bundle"], uncertain_below=0.0)
    n = FEATURES.segment_frames * FEATURES.hop_length  # segment_seconds of samples
    exact = confident.predict(write(tmp_path / "exact.wav", tone(BAND_HZ["mid"], n / FEATURES.sample_rate)))
    assert exact.duration == pytest.approx(FEATURES.segment_seconds)
    assert not exact.short and not exact.uncertain and exact.to_dict()["short"] is False
    shorter = confident.predict(write(tmp_path / "shorter.wav", tone(BAND_HZ["mid"], (n - 1) / FEATURES.sample_rate)))
    assert shorter.short and shorter.uncertain

def test_silence_db_is_validated(tiny):  # noqa: F811
    from genre_se.inference import GenreClassifier

    for bad in (float("nan"), float("inf"), "loud", True):
        with pytest.raises(ModelError, match="silence_db"):
            GenreClassifier.load(tiny["bundle"], silence_db=bad)
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ModelError, match="max_segments"):
            GenreClassifier.load(tiny["bundle"], max_segments=bad)


# --------------------------------------------------------------------------------------------------
# A bounded spread of segments, read in windows


@pytest.fixture(scope="module")
def six_minutes(tmp_path_factory):
    """A 6-minute 16-kHz wav (resampled to the bundle's 8 kHz): low, mid, high bands taking turns."""
    sr, seconds = 16000, 360.0
    path = tmp_path_factory.mktemp("song") / "song.wav"
    t = np.arange(int(seconds * sr)) / sr
    bands = np.array([BAND_HZ["low"], BAND_HZ["mid"], BAND_HZ["high"]], dtype=np.float64)
    freq = bands[(t // 40).astype(int) % 3]
    phase = 2 * np.pi * np.cumsum(freq) / sr
    noise = np.random.default_rng(3).standard_normal(len(t))
    sf.write(path, (0.5 * np.sin(phase) + 0.05 * noise).astype(np.float32), sr, subtype="FLOAT")
    return path


def test_a_long_file_reads_a_spread_of_windows_only(tiny, six_minutes, monkeypatch):  # noqa: F811
    from genre_se import audio
    from genre_se.features import n_segments_for
    from genre_se.inference import GenreClassifier

    decoded = []
    native = audio.WindowReader._native

    def counting(self, start, stop):
        for block in native(self, start, stop):
            decoded.append(len(block))
            yield block

    monkeypatch.setattr(audio.WindowReader, "_native", counting)
    bounded = GenreClassifier.load(tiny["bundle"], max_segments=8).predict(six_minutes)
    n_all = n_segments_for(int(360 * FEATURES.sample_rate), FEATURES)
    assert bounded.n_segments == 8 and bounded.n_segments_in_file == n_all > 2000
    assert bounded.duration == pytest.approx(360.0)
    assert bounded.segment_starts[0] == 0.0 and bounded.segment_ends[-1] == pytest.approx(360.0)
    gaps = np.diff(bounded.segment_starts)
    # evenly spread: index gaps differ by at most one, the end-aligned last start is off the hop grid
    assert gaps.max() - gaps.min() <= 2 * FEATURES.segment_hop * FEATURES.hop_length / FEATURES.sample_rate
    # only the windows were decoded (8 x ~0.5 s: a segment, n_fft and 2 x 0.1 s of resampler context),
    # not the 5.76 M samples of the file
    assert 0 < sum(decoded) < 8 * 0.6 * 16000

    monkeypatch.setattr(audio.WindowReader, "_native", native)
    full = GenreClassifier.load(tiny["bundle"], max_segments=0).predict(six_minutes)
    assert full.n_segments == n_all
    rows = np.searchsorted(full.segment_starts, bounded.segment_starts)
    np.testing.assert_allclose(full.segment_starts[rows], bounded.segment_starts)
    # the windows' features equal the stream's within the resampler tolerance; the model barely notices
    np.testing.assert_allclose(bounded.segment_probabilities, full.segment_probabilities[rows], atol=1e-4)
    assert {row["genre"] for row in bounded.timeline()} == {"low", "mid", "high"}  # the whole song is seen


def test_unseekable_or_array_input_gives_the_same_spread(tiny, six_minutes, tmp_path):  # noqa: F811
    """An Ogg file is streamed whole (no window reads), but only the spread the header's length gives reaches
    the model, the same spread window reads choose; an array is read in windows; a file with few segments is
    untouched."""
    from genre_se.audio import open_windows
    from genre_se.features import n_segments_for
    from genre_se.inference import GenreClassifier

    clf8 = GenreClassifier.load(tiny["bundle"], max_segments=8)
    y, sr = sf.read(six_minutes, dtype="float32")
    ogg = tmp_path / "song.ogg"
    with sf.SoundFile(ogg, "w", samplerate=sr, channels=1) as out:  # written in blocks (libsndfile likes it)
        for i in range(0, len(y), sr):
            out.write(y[i : i + sr])
    with open_windows(ogg, FEATURES.sample_rate) as reader:
        assert reader is None  # streamed: libsndfile's Ogg seek is off near the end of a stream
    real_model, seen = clf8.bundle.model, []

    def counting(x, training=False):  # how many segments reach the model
        seen.append(len(x))
        return real_model(x, training=training)

    clf8.bundle.model = counting
    from_wav, from_ogg = clf8.predict(six_minutes), clf8.predict(ogg)
    clf8.bundle.model = real_model
    assert from_ogg.n_segments == 8 and from_ogg.n_segments_in_file == from_wav.n_segments_in_file
    np.testing.assert_array_equal(from_ogg.segment_starts, from_wav.segment_starts)
    np.testing.assert_allclose(from_ogg.segment_probabilities, from_wav.segment_probabilities, atol=0.05)
    assert from_ogg.genre == from_wav.genre
    # the stream was cut by the header's length: only the 8 chosen segments were run through the model
    assert sum(seen) == 16

    from_array = clf8.predict_array(y, sr)
    np.testing.assert_array_equal(from_array.segment_starts, from_wav.segment_starts)
    np.testing.assert_allclose(from_array.segment_probabilities, from_wav.segment_probabilities, atol=1e-4)

    short = write(tmp_path / "short.wav", tone(BAND_HZ["low"], 0.9))  # 7 segments < 8: all of them
    result = clf8.predict(short)
    assert result.n_segments == result.n_segments_in_file == n_segments_for(7200, FEATURES) == 7


def test_window_features_equal_the_stream_without_resampling(tmp_path):
    path = tmp_path / "native.wav"
    sf.write(path, noisy_music(40.0, DEFAULT.sample_rate), DEFAULT.sample_rate, subtype="FLOAT")
    part, full, chosen = selected_and_full(path, DEFAULT, 7)
    assert np.abs(part.data - full.data[chosen]).max() <= EXACT_DB
    np.testing.assert_allclose(part.loudness_db, full.loudness_db[chosen], atol=EXACT_DB)


@pytest.mark.parametrize("ext, rate", [("flac", 44100), ("flac", 48000), ("wav", 16000), ("mp3", 44100)])
def test_window_features_equal_the_stream_with_resampling(tmp_path, ext, rate):
    from genre_se.audio import _window_seek_formats

    if ext == "mp3" and "MP3" not in _window_seek_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} < 1.1: MP3 is streamed, not read in windows")
    path = tmp_path / f"music.{ext}"
    stereo = np.stack([noisy_music(40.0, rate), noisy_music(40.0, rate, seed=1)], axis=1)
    sf.write(path, stereo, rate)
    part, full, chosen = selected_and_full(path, DEFAULT, 7)
    diff = np.abs(part.data - full.data[chosen])
    assert diff.max() <= RESAMPLED_DB
    assert diff[full.data[chosen] > -40].max() <= RESAMPLED_BODY_DB


def test_window_features_of_a_real_clip(shared_data, tmp_path):
    """A GTZAN clip at 44.1 kHz (its quiet high bands are where the resampler's rounding shows)."""
    from genre_se.audio import load_audio

    clip = next(iter(sorted((shared_data / "gtzan-mini" / "genres").glob("metal/*.wav"))), None)
    if clip is None:
        pytest.skip("no GTZAN metal clip in the shared data")
    y = load_audio(clip, None)
    path = tmp_path / "clip.flac"
    sf.write(path, soxr.resample(y, 22050, 44100), 44100)
    part, full, chosen = selected_and_full(path, DEFAULT, 6)
    diff = np.abs(part.data - full.data[chosen])
    assert diff.max() <= RESAMPLED_DB and diff[full.data[chosen] > -40].max() <= RESAMPLED_BODY_DB


def test_mp3_window_reads_equal_a_sequential_decode(tmp_path):
    """libsndfile >= 1.1 seeks MP3 to the sample (mpg123); the window reader relies on it."""
    from genre_se.audio import _window_seek_formats, load_audio, open_windows

    if "MP3" not in _window_seek_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} < 1.1: MP3 is streamed, not read in windows")
    path = tmp_path / "song.mp3"
    sf.write(path, noisy_music(20.0, 44100), 44100)
    whole = load_audio(path, None)
    rng = np.random.default_rng(4)
    with open_windows(path, 44100) as reader:
        assert reader is not None
        for start in [0, len(whole) - 3000, *rng.integers(0, len(whole), 6)]:
            window = reader.read(int(start), int(start) + 5000)
            expected = np.zeros(5000, np.float32)
            piece = whole[start : start + 5000]
            expected[: len(piece)] = piece
            np.testing.assert_allclose(window, expected, atol=1e-6)



@pytest.mark.parametrize("rate", [44100, 48000])
def test_resampled_window_reads_equal_the_whole_stream_sample_for_sample(tmp_path, rate):
    """A window read at another rate decodes context on both sides of it, so neither end carries the resampler's
    start-up or flush transient: its samples are the whole stream's (zeros outside the signal)."""
    from genre_se.audio import load_audio, open_windows

    path = tmp_path / "music.flac"
    sf.write(path, noisy_music(6.0, rate), rate, subtype="PCM_24")
    whole = load_audio(path, 22050)
    rng = np.random.default_rng(7)
    with open_windows(path, 22050) as reader:
        assert reader is not None and reader.n_samples == len(whole)
        for start in [-300, 0, 1, len(whole) - 2000, *rng.integers(1, len(whole) - 4000, 5)]:
            window = reader.read(int(start), int(start) + 4000)
            expected = np.zeros(4000, np.float32)
            lo = max(int(start), 0)
            piece = whole[lo : int(start) + 4000]
            expected[lo - int(start) : lo - int(start) + len(piece)] = piece
            np.testing.assert_allclose(window, expected, atol=1e-5)

def _truncated(tmp_path, ext: str, seconds: float, sr: int):
    """A file cut to its first third, as a partial download is: its header still claims the whole length."""
    from genre_se.audio import audio_info

    full = tmp_path / f"full.{ext}"
    sf.write(full, noisy_music(seconds, sr), sr)
    cut = tmp_path / f"cut.{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert audio_info(cut).duration == pytest.approx(seconds, abs=0.1)
    return cut


def test_a_truncated_mp3_is_read_to_where_its_data_ends_not_to_its_header(tiny, tmp_path):  # noqa: F811
    """Past the real end an MP3 seek still succeeds and reads nothing: windows there came back as zeros, and a
    partial download of a 60-s song was predicted as 60 s with two thirds of its segments 'silent'. The window
    reader now ends where the data does, as the sequential decode does."""
    from genre_se.audio import _window_seek_formats, load_audio, open_windows
    from genre_se.inference import GenreClassifier

    if "MP3" not in _window_seek_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} < 1.1: MP3 is streamed, not read in windows")
    cut = _truncated(tmp_path, "mp3", 60.0, 22050)
    whole = load_audio(cut, 22050)
    assert 15.0 < len(whole) / 22050 < 25.0
    with open_windows(cut, 22050) as reader:
        assert reader is not None and reader.n_samples == len(whole)
        np.testing.assert_allclose(reader.read(len(whole) - 5000, len(whole)), whole[-5000:], atol=1e-6)
    bounded = GenreClassifier.load(tiny["bundle"], max_segments=8).predict(cut)
    full = GenreClassifier.load(tiny["bundle"], max_segments=0).predict(cut)
    assert bounded.duration == pytest.approx(full.duration) == pytest.approx(len(whole) / 22050, abs=0.1)
    assert bounded.n_segments == 8 and bounded.n_segments_in_file == full.n_segments
    assert not bounded.segment_silent.any()


def test_a_truncated_flac_fails_as_its_sequential_decode_does(tiny, tmp_path):  # noqa: F811
    """A cut FLAC stops decoding mid-frame, and after a failed seek libsndfile's FLAC decoder stays broken:
    the window reader declines it, and the prediction fails with the same message as reading it whole, not
    with 'cannot seek to frame ...'."""
    from genre_se.audio import load_audio
    from genre_se.errors import AudioError
    from genre_se.inference import GenreClassifier

    cut = _truncated(tmp_path, "flac", 60.0, 22050)
    with pytest.raises(AudioError, match="corrupt or truncated audio data after") as streamed:
        load_audio(cut, 22050)
    with pytest.raises(AudioError, match="corrupt or truncated audio data after") as windowed:
        GenreClassifier.load(tiny["bundle"], max_segments=8).predict(cut)
    assert str(windowed.value).startswith(f"{cut}: ") and "seek" not in str(windowed.value)
    assert str(streamed.value).startswith(f"{cut}: ")


# --------------------------------------------------------------------------------------------------
# A file cut short: answered from what is there, and said to be cut short


def _cut_copy(path, fraction: float):
    """The first ``fraction`` of a file's bytes (a partial download: the header still declares the whole)."""
    data = path.read_bytes()
    cut = path.with_name(f"cut-{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("ext", ["wav", "au", "mp3"])
def test_a_file_cut_short_is_flagged_in_both_reading_modes(tiny, tmp_path, ext):  # noqa: F811
    """The first 40 % of a 60-s song, its header still declaring 60 s, was answered as a 24-s song without a word.
    The window reader (``max_segments``, the CLI's default) and the full stream (``max_segments=0``, the API's
    default, ``--timeline``, and ``embed``) now both say it is cut short and what the header declares."""
    from genre_se.inference import GenreClassifier

    full = tmp_path / f"song.{ext}"
    sf.write(full, noisy_music(60.0, 22050), 22050)
    cut = _cut_copy(full, 0.4)
    bounded = GenreClassifier.load(tiny["bundle"], max_segments=8)
    streamed = GenreClassifier.load(tiny["bundle"], max_segments=0)
    answers = {}
    for mode, classifier in (("windows", bounded), ("stream", streamed)):
        whole = classifier.predict(full)
        assert not whole.truncated and whole.declared_duration is None
        assert whole.to_dict()["truncated"] is False and "declared_duration" not in whole.to_dict()
        answers[mode] = prediction = classifier.predict(cut)
        assert prediction.truncated, mode
        assert prediction.declared_duration == pytest.approx(60.0, abs=0.01)
        assert prediction.duration == pytest.approx(24.0, abs=2.0)
        record = prediction.to_dict()
        assert record["truncated"] is True and record["declared_duration"] == pytest.approx(60.0, abs=0.01)
    assert answers["windows"].n_segments == 8 < answers["windows"].n_segments_in_file  # read in windows
    assert answers["stream"].n_segments == answers["windows"].n_segments_in_file
    assert answers["windows"].duration == pytest.approx(answers["stream"].duration)
    embedding = streamed.embed(cut)
    assert embedding.truncated and embedding.declared_duration == pytest.approx(60.0, abs=0.01)
    assert not streamed.embed(full).truncated and streamed.embed(full).declared_duration is None


def _makes():
    from tests.test_audio import HEALTHY_KINDS

    return list(HEALTHY_KINDS)


@pytest.mark.parametrize("kind", _makes())
def test_a_healthy_file_of_every_make_is_not_flagged_in_either_mode(tiny, tmp_path, kind):  # noqa: F811
    """WAV, AU, AIFF, FLAC, Ogg and MP3 CBR and VBR, with and without an Info frame or tags: an MP3 codec's delay
    and padding, or libmpg123's estimate of a length no header declares, are no alarm."""
    from genre_se.inference import GenreClassifier
    from tests.test_audio import _healthy

    path = _healthy(tmp_path, kind)
    for max_segments in (8, 0):  # 6 s at the tiny bundle's 0.128-s hop: about 45 segments, window-read with 8
        prediction = GenreClassifier.load(tiny["bundle"], max_segments=max_segments).predict(path)
        assert not prediction.truncated and prediction.declared_duration is None, max_segments


def test_the_real_clips_and_gtzan_clips_are_not_flagged_and_their_cut_copies_are(tiny, shared_data,  # noqa: F811
                                                                                  tmp_path):
    """No false alarm on real files (12 LAME VBR MP3s of commercial recordings, GTZAN's 71 WAVs and its 2 .au):
    each decodes exactly the length its header declares, whole or in windows, and neither reading mode flags
    it; copies cut in half are flagged."""
    from genre_se.audio import audio_info, load_audio, open_windows
    from genre_se.inference import GenreClassifier, Prediction

    mp3s = sorted((shared_data / "real-clips").glob("*/*.mp3"))
    wavs = sorted((shared_data / "gtzan-mini" / "genres").glob("*/*.wav"))
    aus = sorted((shared_data / "gtzan-au").glob("*.au"))
    assert len(mp3s) == 12 and len(wavs) == 71 and len(aus) == 2
    files = mp3s + wavs + aus
    for path in files:
        decoded = len(load_audio(path, sr=None))
        assert audio_info(path).declared_frames == decoded, path
        with open_windows(path, 22050) as reader:
            assert reader is not None and reader.frames == decoded, path
    for max_segments in (4, 0):
        predictions = list(GenreClassifier.load(tiny["bundle"], max_segments=max_segments).predict_many(files))
        assert all(isinstance(p, Prediction) for p in predictions)
        assert [str(p.path) for p in predictions if p.truncated] == [], max_segments
    cuts = []
    for path in (mp3s[0], wavs[0], aus[0]):
        local = tmp_path / path.name
        local.write_bytes(path.read_bytes())
        cuts.append(_cut_copy(local, 0.5))
    for max_segments in (4, 0):
        for path, prediction in zip(cuts, GenreClassifier.load(tiny["bundle"], max_segments=max_segments)
                                    .predict_many(cuts)):
            assert prediction.truncated, (path, max_segments)
            assert prediction.declared_duration == pytest.approx(2 * prediction.duration, rel=0.05)


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_bounds_segments_unless_a_timeline_is_asked(tiny, six_minutes, tmp_path, capsys):  # noqa: F811
    from genre_se.cli import main
    from genre_se.inference import DEFAULT_MAX_SEGMENTS

    def predict(*options):
        assert main(["predict", str(six_minutes), "--model", str(tiny["bundle"]), "--format", "json",
                     *options]) == 0
        return json.loads(capsys.readouterr().out)["predictions"][0]

    default = predict()
    assert default["n_segments"] == DEFAULT_MAX_SEGMENTS and default["segments_in_file"] > 2000
    assert predict("--max-segments", "5")["n_segments"] == 5
    everything = predict("--timeline")
    assert everything["n_segments"] == len(everything["timeline"]) == default["segments_in_file"]
    assert "segments_in_file" not in everything and everything["silent_segments"] == 0

    quiet = write(tmp_path / "quiet_end.wav", np.concatenate([tone(BAND_HZ["high"], 2.0), np.zeros(8000)]))
    assert main(["predict", str(quiet), "--model", str(tiny["bundle"]), "--timeline"]) == 0
    table = capsys.readouterr().out
    assert "silent (left out)" in table.splitlines()[0] and table.count("  silent\n") > 3
    assert main(["predict", str(quiet), "--model", str(tiny["bundle"]), "--format", "json",
                 "--silence-db", "off"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["silent_segments"] == 0
    with pytest.raises(SystemExit):
        main(["predict", str(quiet), "--model", str(tiny["bundle"]), "--max-segments", "-1"])


def test_the_pooled_embedding_leaves_silence_out_as_predict_does(tiny, clf, tmp_path, capsys):  # noqa: F811
    """``embed``'s pooled vector is the one predict's SVM head and familiarity check take (silent segments left
    out): a song with a quiet ending used to get the mean over its silence too, another vector than the head's."""
    from genre_se.cli import main
    from genre_se.inference import GenreClassifier, _sources

    sr = FEATURES.sample_rate
    path = write(tmp_path / "tone_then_silence.wav", np.concatenate([tone(BAND_HZ["mid"], 5.0),
                                                                    np.zeros(5 * sr, np.float32)]))
    prediction, embedding = clf.predict(path), clf.embed(path)
    assert prediction.silent.any() and not prediction.all_silent
    np.testing.assert_array_equal(embedding.silent, prediction.silent)
    # what predict computes its mean embedding from (the head's input), through its own model call
    (raw,) = clf._run(_sources([str(path)]), clf._genre_and_embedding_model(), None)
    used = raw.outputs[:, len(clf.labels):][~prediction.silent]
    np.testing.assert_allclose(embedding.pooled, used.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6)
    assert np.abs(embedding.pooled - embedding.segments.mean(axis=0)).max() > 1e-2  # the silence would move it
    everything = GenreClassifier.load(tiny["bundle"], silence_db=None).embed(path)
    np.testing.assert_allclose(everything.pooled, everything.segments.mean(axis=0), rtol=1e-5, atol=1e-6)

    quiet = clf.embed(write(tmp_path / "quiet.wav", np.zeros(3 * sr, np.float32)))
    assert quiet.all_silent and quiet.silent.all()
    np.testing.assert_allclose(quiet.pooled, quiet.segments.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert clf.embed(write(tmp_path / "blip.wav", tone(BAND_HZ["mid"], 0.1))).short and not embedding.short

    # the CLI writes the same vector, says how many segments it left out, and marks them per segment
    code = main(["-q", "embed", str(path), "--model", str(tiny["bundle"]), "-o", str(tmp_path / "e.npz")])
    with np.load(tmp_path / "e.npz") as z:
        assert code == 0 and z["silent_segments"][0] == prediction.silent.sum() and not z["all_silent"][0]
        np.testing.assert_allclose(z["embeddings"][0], embedding.pooled)
    code = main(["-q", "embed", str(path), "--model", str(tiny["bundle"]), "--pool", "none",
                 "-o", str(tmp_path / "s.npz")])
    with np.load(tmp_path / "s.npz") as z:
        assert code == 0 and z["silent"].tolist() == prediction.silent.tolist()
    code = main(["-q", "embed", str(path), "--model", str(tiny["bundle"]), "--silence-db", "off",
                 "-o", str(tmp_path / "all.npz")])
    with np.load(tmp_path / "all.npz") as z:
        assert code == 0 and z["silent_segments"][0] == 0
        np.testing.assert_allclose(z["embeddings"][0], everything.pooled)
    capsys.readouterr()
