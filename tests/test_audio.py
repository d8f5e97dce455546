"""Tests for genre_se.audio: decoding, mixing down, resampling, blocks and every failure as AudioError."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genre_se.audio import (
    AUDIO_EXTENSIONS,
    AudioInfo,
    audio_info,
    iter_audio_blocks,
    load_audio,
    resample,
)
from genre_se.errors import AudioError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG_SEED = 1234


# ----------------------------------------------------------------------------- helpers


def _pcm16_noise(frames: int, channels: int = 1, seed: int = RNG_SEED) -> np.ndarray:
    """Random samples that are exact 16-bit values, so a PCM_16 round trip is lossless."""
    rng = np.random.default_rng(seed)
    ints = rng.integers(-20000, 20000, size=(frames, channels))
    samples = (ints / 32768.0).astype(np.float32)
    return samples[:, 0] if channels == 1 else samples


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, data: np.ndarray, sr: int, **kwargs) -> Path:
    sf.write(str(path), data, sr, **kwargs)
    return path


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.fixture
def stereo_wav(tmp_path) -> Path:
    """3 s of 44.1 kHz stereo noise: longer than one READ_FRAMES read, so reads are really chunked."""
    return _write(tmp_path / "stereo.wav", _pcm16_noise(3 * 44100, channels=2), 44100, subtype="PCM_16")


@pytest.fixture
def stereo_mp3(tmp_path) -> Path:
    left, right = _sine(440, 44100, 3.0), _sine(660, 44100, 3.0, amp=0.3)
    return _write(tmp_path / "stereo.mp3", np.stack([left, right], axis=1), 44100)


# ----------------------------------------------------------------------------- constants and info


def test_extensions_are_lower_case_without_dots_and_cover_the_usual_formats():
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in AUDIO_EXTENSIONS)
    assert {"wav", "au", "snd", "flac", "ogg", "oga", "mp3"} <= set(AUDIO_EXTENSIONS)
    assert len(set(AUDIO_EXTENSIONS)) == len(AUDIO_EXTENSIONS)


def test_audio_info_reads_the_header(tmp_path):
    path = _write(tmp_path / "x.flac", _pcm16_noise(12345, channels=2), 16000, subtype="PCM_16")
    info = audio_info(path)  # a PathLike is accepted
    assert info == AudioInfo(str(path), 16000, 2, 12345, 12345 / 16000, "FLAC", declared_frames=12345)
    with pytest.raises(AttributeError):
        info.frames = 1  # frozen


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("name", "write_kwargs"),
    [
        ("pcm16.wav", {"subtype": "PCM_16"}),
        ("float.wav", {"subtype": "FLOAT"}),
        ("pcm16.flac", {"subtype": "PCM_16"}),
        ("pcm16.au", {"subtype": "PCM_16"}),
        ("pcm16.snd", {"format": "AU", "subtype": "PCM_16"}),
    ],
)
def test_lossless_round_trip_at_native_rate_is_exact(tmp_path, name, write_kwargs):
    original = _pcm16_noise(70000)
    path = _write(tmp_path / name, original, 22050, **write_kwargs)
    y = load_audio(path, sr=None)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, original)
    np.testing.assert_array_equal(load_audio(str(path), sr=22050), original)  # same rate: untouched


@pytest.mark.parametrize(
    ("name", "write_kwargs"), [("x.mp3", {}), ("x.ogg", {}), ("x.oga", {"format": "OGG"})]
)
def test_lossy_round_trip_keeps_the_waveform(tmp_path, name, write_kwargs):
    original = _sine(440, 22050, 2.0) + _sine(1234, 22050, 2.0, amp=0.2)
    path = _write(tmp_path / name, original, 22050, **write_kwargs)
    y = load_audio(path, sr=None)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(original)) <= 2048  # codec padding at most
    assert _correlation(y, original) > 0.95


def test_chunked_mp3_decoding_matches_a_one_shot_decode(stereo_mp3):
    # soundfile's public chunked read re-seeks MP3 approximately; ours must not drift.
    one_shot, sr = sf.read(str(stereo_mp3), dtype="float32")
    y = load_audio(stereo_mp3, sr=None)
    assert len(y) == len(one_shot) and sr == 44100
    np.testing.assert_allclose(y, one_shot.mean(axis=1), atol=1e-6)


# ----------------------------------------------------------------------------- resampling


def test_a_44k_sine_comes_out_at_22050_with_the_right_length_and_frequency(tmp_path):
    path = _write(tmp_path / "sine44k.wav", _sine(1000, 44100, 2.0), 44100, subtype="FLOAT")
    y = load_audio(path, sr=22050)
    assert y.dtype == np.float32 and len(y) == 2 * 22050
    assert abs(_peak_hz(y, 22050) - 1000) < 1.0
    middle = y[2000:-2000]
    assert 0.45 < np.max(np.abs(middle)) < 0.55  # amplitude kept


def test_upsampling_keeps_frequency_and_length(tmp_path):
    path = _write(tmp_path / "sine16k.flac", _sine(440, 16000, 1.5), 16000)
    y = load_audio(path, sr=22050)
    assert len(y) == round(1.5 * 22050)
    assert abs(_peak_hz(y, 22050) - 440) < 1.0


def test_resample_function_agrees_with_the_loader(tmp_path):
    signal = _sine(700, 44100, 1.0)
    path = _write(tmp_path / "m.wav", signal, 44100, subtype="FLOAT")
    out = resample(signal, 44100, 22050)
    assert out.dtype == np.float32 and out.shape == (22050,)
    np.testing.assert_allclose(out, load_audio(path, sr=22050), atol=1e-6)
    same = resample(signal.astype(np.float64), 44100, 44100)
    assert same.dtype == np.float32 and np.array_equal(same, signal) and same is not signal
    assert resample(np.zeros((4410, 2)), 44100, 22050).shape == (2205, 2)
    assert resample(np.zeros(0), 44100, 22050).shape == (0,)



def test_downsampling_is_soxr_hq_quality_flat_to_near_nyquist_and_free_of_aliases(tmp_path):
    """The loader's resampler at soxr HQ (librosa's soxr_hq): a 7 kHz tone (7/8 of the new Nyquist) keeps its level
    within 0.02 dB, and a 10 kHz tone above the new Nyquist folds back at 6 kHz at least 140 dB down (a quick
    or low quality resampler lets the alias through or droops near Nyquist)."""
    sr = 44100
    path = _write(tmp_path / "tones.wav", _sine(1000, sr, 2.0) + _sine(10000, sr, 2.0), sr, subtype="FLOAT")
    y = load_audio(path, sr=16000).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    alias = spectrum[(freqs > 5900) & (freqs < 6100)].max() / spectrum[(freqs > 900) & (freqs < 1100)].max()
    assert 20 * np.log10(alias) < -140
    high = load_audio(_write(tmp_path / "7k.wav", _sine(7000, sr, 2.0), sr, subtype="FLOAT"), sr=16000)
    rms = np.sqrt(np.mean(np.asarray(high[2000:-2000], np.float64) ** 2))
    assert 20 * np.log10(rms / (0.5 / np.sqrt(2))) == pytest.approx(0.0, abs=0.02)

@pytest.mark.parametrize(("orig", "target"), [(0, 22050), (44100, -1), (44100.5, 22050), (44100, None)])
def test_resample_rejects_bad_rates(orig, target):
    with pytest.raises(AudioError, match="resample"):
        resample(np.zeros(100, dtype=np.float32), orig, target)


# ----------------------------------------------------------------------------- mixing down


def test_opposite_channels_cancel_and_equal_channels_stay(tmp_path):
    x = _sine(300, 22050, 1.0)
    opposite = _write(tmp_path / "opp.wav", np.stack([x, -x], axis=1), 22050, subtype="FLOAT")
    equal = _write(tmp_path / "eq.wav", np.stack([x, x], axis=1), 22050, subtype="FLOAT")
    assert np.max(np.abs(load_audio(opposite, sr=None))) < 1e-7
    np.testing.assert_array_equal(load_audio(equal, sr=None), x)


def test_many_channels_are_averaged(tmp_path):
    channels = _pcm16_noise(5000, channels=6)
    path = _write(tmp_path / "six.wav", channels, 22050, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, sr=None), channels.mean(axis=1), atol=1e-7)


# ----------------------------------------------------------------------------- offset and duration


@pytest.mark.parametrize("fixture_name", ["stereo_wav", "stereo_mp3"])
def test_offset_and_duration_cut_exactly_at_the_native_rate(request, fixture_name):
    path = request.getfixturevalue(fixture_name)
    full = load_audio(path, sr=None)
    part = load_audio(path, sr=None, offset=1.7, duration=0.5)
    start = round(1.7 * 44100)
    np.testing.assert_array_equal(part, full[start : start + round(0.5 * 44100)])
    np.testing.assert_array_equal(load_audio(path, sr=None, offset=2.0), full[2 * 44100 :])


@pytest.mark.parametrize("offset", [1.0, 4.9, 4.97])
def test_an_offset_into_an_ogg_files_last_page_is_exact(tmp_path, offset):
    """libsndfile 1.2.2 seeks 14-16 samples wrong inside an Ogg stream's last page; decode-and-discard is exact."""
    sr = 22050
    t = np.arange(5 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)).astype(np.float32)
    sf.write(tmp_path / "x.ogg", y, sr, format="OGG", subtype="VORBIS")
    full = load_audio(tmp_path / "x.ogg", sr=None)
    start = round(offset * sr)
    np.testing.assert_array_equal(load_audio(tmp_path / "x.ogg", sr=None, offset=offset), full[start:])


def test_offset_and_duration_with_resampling_give_the_resampled_length(stereo_wav):
    part = load_audio(stereo_wav, sr=22050, offset=0.5, duration=1.25)
    assert abs(len(part) - 1.25 * 22050) <= 1  # 27562.5 samples: soxr rounds up
    tail = load_audio(stereo_wav, sr=22050, offset=2.5, duration=10.0)  # runs past the end: what is there
    assert len(tail) == round(0.5 * 22050)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"offset": 5.0}, "no audio samples"),
        ({"offset": -1.0}, "offset"),
        ({"offset": float("nan")}, "offset"),
        ({"duration": 0.0}, "duration"),
        ({"duration": -2.0}, "duration"),
        ({"sr": 0}, "sr"),
        ({"sr": 22050.0}, "sr"),
    ],
)
def test_bad_windows_and_rates_raise_audio_error(stereo_wav, kwargs, words):
    with pytest.raises(AudioError, match=words) as caught:
        load_audio(stereo_wav, **kwargs)
    assert str(stereo_wav) in str(caught.value)


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("sr", [None, 22050, 16000])
@pytest.mark.parametrize("block_seconds", [0.25, 1.0, 1.3, 30.0])
def test_blocks_concatenate_to_load_audio(stereo_wav, sr, block_seconds):
    blocks = list(iter_audio_blocks(stereo_wav, sr, block_seconds=block_seconds))
    expected = load_audio(stereo_wav, sr)
    np.testing.assert_array_equal(np.concatenate(blocks), expected)
    block_len = round(block_seconds * (sr or 44100))
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    assert all(len(b) == block_len for b in blocks[:-1]) and 0 < len(blocks[-1]) <= block_len


def test_mp3_blocks_concatenate_to_load_audio(stereo_mp3):
    blocks = list(iter_audio_blocks(stereo_mp3, 22050, block_seconds=0.4))
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(stereo_mp3, 22050))


def test_blocks_are_independent_arrays(stereo_wav):
    blocks = list(iter_audio_blocks(stereo_wav, None, block_seconds=0.5))
    snapshot = [b.copy() for b in blocks]
    blocks[0][:] = 9.0
    assert all(np.array_equal(b, s) for b, s in zip(blocks[1:], snapshot[1:]))


@pytest.mark.parametrize("block_seconds", [0, -1.0, float("inf"), "3"])
def test_bad_block_seconds_raise_at_call_time(stereo_wav, block_seconds):
    with pytest.raises(AudioError, match="block_seconds"):
        iter_audio_blocks(stereo_wav, block_seconds=block_seconds)


def test_blocks_never_decode_the_whole_file_at_once(tmp_path, monkeypatch):
    """Memory note: iter_audio_blocks reads READ_FRAMES at a time, never sf.read() of the whole file."""
    seconds, sr = 60, 44100
    long_file = _write(tmp_path / "long.wav", _pcm16_noise(seconds * sr, channels=2), sr, subtype="PCM_16")

    def refuse(*args, **kwargs):
        raise AssertionError("whole-file read called")

    monkeypatch.setattr(sf, "read", refuse)
    monkeypatch.setattr(sf.SoundFile, "read", refuse)
    tracemalloc.start()
    try:
        total = sum(len(block) for block in iter_audio_blocks(long_file, 22050, block_seconds=1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == seconds * 22050
    whole_file_bytes = seconds * sr * 2 * 4  # float32 stereo decode of the file: ~21 MB
    assert peak < whole_file_bytes / 5, f"peak {peak} bytes"


# ----------------------------------------------------------------------------- silence


def test_silent_file_loads_as_zeros(tmp_path):
    path = _write(tmp_path / "silence.wav", np.zeros((22050, 2), dtype=np.float32), 44100, subtype="PCM_16")
    y = load_audio(path, sr=22050)
    assert len(y) == 11025 and y.dtype == np.float32 and not np.any(y)
    assert not np.any(np.concatenate(list(iter_audio_blocks(path, None, block_seconds=0.1))))


# ----------------------------------------------------------------------------- failures


def _header_only_wav(tmp_path: Path) -> Path:
    source = _write(tmp_path / "source.wav", _pcm16_noise(1000), 22050, subtype="PCM_16")
    path = tmp_path / "header_only.wav"
    path.write_bytes(source.read_bytes()[:44])  # 44-byte canonical header, no data
    return path


def _cut_in_header(tmp_path: Path) -> Path:
    source = _write(tmp_path / "source2.wav", _pcm16_noise(1000), 22050, subtype="PCM_16")
    path = tmp_path / "cut_in_header.wav"
    path.write_bytes(source.read_bytes()[:20])
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(RNG_SEED).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 50)
    return path


def _text_named_mp3(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio either\n" * 50)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _nan_wav(tmp_path: Path) -> Path:
    samples = _sine(100, 8000, 0.5)
    samples[100] = np.nan
    return _write(tmp_path / "nan.wav", samples, 8000, subtype="FLOAT")


def _wild_sample_wav(tmp_path: Path) -> Path:
    samples = _sine(100, 8000, 0.5)
    samples[100] = 3e38  # finite, but its power spectrum overflows float32: the features were all inf
    return _write(tmp_path / "wild.wav", samples, 8000, subtype="FLOAT")


BAD_FILES = {
    "missing": (lambda tmp: tmp / "missing.wav", "file not found"),
    "directory": (lambda tmp: tmp, "is a directory"),
    "empty": (_empty, r"empty file \(0 bytes\)"),
    "header only": (_header_only_wav, "no audio samples"),
    "cut in header": (_cut_in_header, "not a readable audio file"),
    "random bytes": (_random_bytes, "not a readable audio file"),
    "text file": (_text_file, "not a readable audio file"),
    "text named .mp3": (_text_named_mp3, "not a readable audio file"),
    "NaN samples": (_nan_wav, "non-finite"),
    "wild float sample": (_wild_sample_wav, r"sample values up to 3e\+38, far beyond full scale"),
}
READERS = {
    "audio_info": audio_info,
    "load_audio": load_audio,
    "iter_audio_blocks": lambda p: list(iter_audio_blocks(p)),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_every_bad_file_raises_audio_error_naming_file_and_cause(tmp_path, case, reader):
    make, cause = BAD_FILES[case]
    path = make(tmp_path)
    if case in ("NaN samples", "wild float sample") and reader == "audio_info":
        assert audio_info(path).frames == 4000  # the header is fine; only decoding finds the NaN
        return
    with pytest.raises(AudioError, match=cause) as caught:
        READERS[reader](path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "Error opening" not in message and "LibsndfileError" not in message


def test_float_samples_far_above_full_scale_but_not_wild_decode_unchanged(tmp_path):
    """Integer PCM stored as float without scaling (up to 2^31) is loud, not corrupt: it still decodes."""
    samples = _sine(100, 8000, 0.5, amp=2.0**31)
    path = _write(tmp_path / "unscaled.wav", samples, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, sr=None), samples)


def test_header_claiming_more_data_than_present_decodes_what_is_there(tmp_path):
    original = _pcm16_noise(20000)
    source = _write(tmp_path / "full.wav", original, 22050, subtype="PCM_16")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(source.read_bytes()[: 44 + 2 * 8000])  # header still says 20000 frames
    np.testing.assert_array_equal(load_audio(truncated, sr=None), original[:8000])


def test_mp3_cut_in_half_decodes_the_first_part(stereo_mp3, tmp_path):
    full = load_audio(stereo_mp3, sr=None)
    half = tmp_path / "half.mp3"
    data = stereo_mp3.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    y = load_audio(half, sr=None)
    assert 0.3 * len(full) < len(y) < 0.7 * len(full)
    np.testing.assert_allclose(y[:20000], full[:20000], atol=1e-6)


def test_flac_cut_in_half_raises_audio_error(tmp_path):
    path = _write(tmp_path / "full.flac", _pcm16_noise(3 * 44100), 44100)
    cut = tmp_path / "cut.flac"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="corrupt or truncated") as caught:
        load_audio(cut)
    assert str(cut) in str(caught.value)


# ----------------------------------------------------------------------------- audioread fallback


class _FakeAudioread:
    """Stands in for an audioread backend (ffmpeg is not installed on the test machine)."""

    def __init__(self, samples: np.ndarray, sr: int):
        self.samplerate, self.channels = sr, samples.shape[1]
        self.duration = samples.shape[0] / sr
        self._bytes = (samples * 32768).astype("<i2").tobytes()
        self.closed = False

    def __iter__(self):
        step = 1000 * 2 * self.channels
        for i in range(0, len(self._bytes), step):
            yield self._bytes[i : i + step]

    def close(self):
        self.closed = True


def test_fallback_decodes_what_libsndfile_cannot(tmp_path, monkeypatch):
    import audioread

    samples = _pcm16_noise(9000, channels=2)
    fake = _FakeAudioread(samples, 44100)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 200)
    monkeypatch.setattr(audioread, "audio_open", lambda p: fake)
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames, info.format) == (44100, 2, 9000, "M4A")
    np.testing.assert_array_equal(load_audio(path, sr=None), samples.mean(axis=1, dtype=np.float32))
    np.testing.assert_array_equal(load_audio(path, sr=None, offset=1500 / 44100, duration=0.05),
                                  samples.mean(axis=1, dtype=np.float32)[1500 : 1500 + 2205])
    assert fake.closed


def test_fallback_without_a_backend_says_so(tmp_path, monkeypatch):
    import audioread
    from audioread.exceptions import NoBackendError

    def no_backend(path):
        raise NoBackendError()

    monkeypatch.setattr(audioread, "audio_open", no_backend)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(AudioError, match="no ffmpeg or GStreamer decoder") as caught:
        load_audio(path)
    assert str(caught.value).startswith(f"{path}: not a readable audio file")


def test_unknown_extensions_are_not_retried_with_audioread(tmp_path, monkeypatch):
    import audioread

    def must_not_be_called(path):
        raise AssertionError("fallback tried for a non-audio extension")

    monkeypatch.setattr(audioread, "audio_open", must_not_be_called)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(_text_file(tmp_path))


def test_fallback_decode_errors_become_audio_errors(tmp_path, monkeypatch):
    import audioread

    class Broken(_FakeAudioread):
        def __iter__(self):
            yield b"\x00\x00" * 2 * 100
            raise OSError("pipe closed")

    monkeypatch.setattr(audioread, "audio_open", lambda p: Broken(np.zeros((10, 2), np.float32), 8000))
    path = tmp_path / "broken.aac"
    path.write_bytes(b"\x01" * 300)
    with pytest.raises(AudioError, match="pipe closed"):
        load_audio(path)


# ----------------------------------------------------------------------------- shared real data


@pytest.mark.parametrize("genre", ["blues", "classical"])
def test_gtzan_au_and_wav_give_the_same_samples(genre):
    au = SHARED_DATA / "gtzan-au" / f"{genre}.00000.au"
    wav = SHARED_DATA / "gtzan-mini" / "genres" / genre / f"{genre}.00000.wav"
    if not (au.is_file() and wav.is_file()):
        pytest.skip(f"shared GTZAN data not found under {SHARED_DATA}")
    info = audio_info(au)
    assert (info.format, info.sample_rate, info.channels) == ("AU", 22050, 1)
    from_au = load_audio(au, sr=22050)
    from_wav = load_audio(wav, sr=22050)
    assert len(from_au) == info.frames > 29 * 22050
    np.testing.assert_array_equal(from_au, from_wav)
    assert np.any(from_au)


def test_corrupt_mp3_gives_one_plain_message_and_no_decoder_chatter(tmp_path):
    """libmpg123 prints its own notes to fd 2, and libsndfile calls unparsable content 'not a regular
    file'; the user must see neither, only our one-line reason naming the file."""
    import subprocess
    import sys

    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"garbage that is not an mpeg stream\n" * 3)
    code = (
        "from genre_se.audio import load_audio\n"
        "from genre_se.errors import AudioError\n"
        f"try:\n    load_audio({str(bad)!r})\nexcept AudioError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr == ""
    assert str(bad) in out.stdout and "regular file" not in out.stdout
    assert "unrecognised format or corrupt data" in out.stdout


def test_mp3_corrupt_mid_stream_fails_plainly_without_decoder_chatter(tmp_path):
    """A damaged stretch inside an MP3 (4 KB of zeros) makes libmpg123 print resync notes to fd 2 while the
    stream is decoded, not only when the file is opened; the user must see only our error naming the file."""
    import subprocess
    import sys

    t = np.arange(22050 * 6) / 22050
    good = tmp_path / "good.mp3"
    sf.write(good, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050, format="MP3")
    data = good.read_bytes()
    middle = len(data) // 2
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(data[:middle] + bytes(4096) + data[middle + 4096 :])
    code = (
        "from genre_se.audio import iter_audio_blocks, load_audio\n"
        "from genre_se.errors import AudioError\n"
        f"for read in (load_audio, lambda p: list(iter_audio_blocks(p))):\n"
        f"    try:\n        read({str(bad)!r})\n    except AudioError as e:\n        print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(str(bad) in line and "corrupt or truncated audio data" in line for line in lines)
    # where: the damage is at 3.0 s; a failed read returns nothing, so the block's start (0.00 s here) is all the
    # error itself knows, and the decoder finds the real place by re-reading in small steps
    import re

    seconds = [float(re.search(r"after ([0-9.]+) s", line).group(1)) for line in lines]
    assert all(2.0 <= s <= 3.05 for s in seconds), seconds


# ----------------------------------------------------------------------------- MP3 with its middle missing
#
# libmpg123 meets a stretch it cannot parse, skips to the next frame header it finds and carries on: a file
# with a chunk cut out of its middle decodes without an error, the two sides joined, and a LAME file's Xing
# header still declares the whole length. A truncated file must still decode what is there.

#: kbps of MPEG-1 Layer III by the header's bitrate index
_MPEG1_L3_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)


def _frame_size(data: bytes, at: int = 0) -> int:
    """Bytes of the 44.1 kHz MPEG-1 Layer III frame starting at ``at`` (all frames libsndfile's LAME writes here)."""
    assert data[at] == 0xFF and data[at + 1] & 0xFE == 0xFA and (data[at + 2] >> 2) & 3 == 0, data[at : at + 4].hex()
    return 144000 * _MPEG1_L3_KBPS[data[at + 2] >> 4] // 44100 + ((data[at + 2] >> 1) & 1)


def _frame_starts(data: bytes) -> list[int]:
    """Where the frames of an MP3 start, after its ID3v2 tag if any (a walk from header to header)."""
    at = 10 + sum((b & 0x7F) << (21 - 7 * i) for i, b in enumerate(data[6:10])) if data[:3] == b"ID3" else 0
    starts = []
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] & 0xFE == 0xFA:
        starts.append(at)
        at += _frame_size(data, at)
    return starts


def _id3v2(size: int) -> bytes:
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + bytes(size)


#: an APE tag (header, one item, footer) after the last frame: libmpg123 tries to resync over it to the end
_APE_TAG = b"".join(
    [b"APETAGEX", (2000).to_bytes(4, "little"), (48).to_bytes(4, "little"), (1).to_bytes(4, "little"), bytes(12),
     (5).to_bytes(4, "little"), bytes(4), b"Title\x00hello",
     b"APETAGEX", (2000).to_bytes(4, "little"), (48).to_bytes(4, "little"), (1).to_bytes(4, "little"), bytes(12)]
)

MP3_KINDS = ("vbr_xing", "cbr_info", "cbr_plain", "tagged", "cbr_plain_ape")


def _mp3(tmp_path: Path, kind: str, seconds: float = 6.0) -> Path:
    """A 44.1 kHz stereo MP3 of a given make, all from libsndfile's LAME: ``vbr_xing`` (the default: VBR with a
    Xing/LAME header), ``cbr_info`` (CBR with LAME's Info header), ``cbr_plain`` (CBR without any header frame,
    as older encoders write), ``tagged`` (VBR with ID3v2 before and ID3v1 after), ``cbr_plain_ape`` (an APE
    tag after the last frame), ``vbr_plain`` (VBR without a header frame, starting with a quiet second: its
    first frame is small, so libmpg123 estimates a length far beyond the real one from the file's size)."""
    rng = np.random.default_rng(RNG_SEED)
    t = np.arange(int(44100 * seconds)) / 44100
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t)  # louder and quieter stretches: frame sizes vary in VBR
    left = 0.3 * swell * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
    signal = np.stack([left, right], axis=1).astype(np.float32)
    if kind == "vbr_plain":
        signal[:44100] *= 1e-4
    cbr = kind.startswith("cbr")
    options = {"bitrate_mode": "CONSTANT", "compression_level": 0.5} if cbr else {}
    path = _write(tmp_path / f"{kind}.mp3", signal, 44100, format="MP3", **options)
    data = path.read_bytes()
    assert (b"Info" if cbr else b"Xing") in data[:200]  # what LAME writes into the first frame
    if kind.endswith("_plain") or kind == "cbr_plain_ape":
        data = data[_frame_size(data) :]
        assert b"Info" not in data[:200] and b"Xing" not in data[:200] and data[0] == 0xFF
    if kind == "vbr_plain":  # and the first audio frame, a large one: the next, of the quiet second, is small
        data = data[_frame_size(data) :]
    if kind == "tagged":
        data = _id3v2(3000) + data + b"TAG" + b" " * 125
    if kind == "cbr_plain_ape":
        data = data + _APE_TAG
    path.write_bytes(data)
    return path


def _damaged(path: Path, damage: str) -> Path:
    """A copy with a third of its frames cut out (a bad concatenation, a lost stretch of a download) or one frame
    header overwritten (a bad sector). Cut 100 bytes into one frame and 300 into another, so the two sides never
    meet on a frame boundary: a cut that does is a valid stream to any decoder, and cannot be detected."""
    data = path.read_bytes()
    starts = _frame_starts(data)
    if damage == "a third cut out":
        data = data[: starts[len(starts) // 3] + 100] + data[starts[2 * len(starts) // 3] + 300 :]
    else:  # 300 bytes from 100 before a frame header, never 0xFF (no byte of them can pass for a frame's sync)
        at = starts[len(starts) // 2] - 100
        junk = np.random.default_rng(RNG_SEED).integers(0, 255, 300, dtype=np.uint8).tobytes()
        data = data[:at] + junk + data[at + 300 :]
    bad = path.with_name(f"bad-{path.name}")
    bad.write_bytes(data)
    return bad


def _seconds_after(message: str) -> float:
    import re

    return float(re.search(r"after ([0-9.]+) s", message).group(1))


@pytest.mark.parametrize("damage", ["a third cut out", "a frame header overwritten"])
@pytest.mark.parametrize("kind", ["vbr_xing", "cbr_info", "cbr_plain", "tagged"])
def test_an_mp3_whose_middle_is_missing_is_corrupt_not_spliced(tmp_path, capfd, kind, damage):
    """libmpg123 used to splice such a file silently (a 20-s clip with a third cut out decoded as 13 s, its
    header still saying 20). Its resync is the only sign; every reader reports it, naming the file and where
    the stream breaks (the cut at 2.0 s of 6, the overwritten header at 3.0 s), and nothing reaches fd 2."""
    from genre_se.audio import _window_seek_formats, open_windows

    bad = _damaged(_mp3(tmp_path, kind), damage)
    messages = []
    for read in (lambda p: load_audio(p, 22050), lambda p: list(iter_audio_blocks(p, 22050))):
        with pytest.raises(AudioError) as caught:
            read(bad)
        messages.append(str(caught.value))
    if "MP3" in _window_seek_formats():  # the window reader (long files) probes the end first: same verdict
        with pytest.raises(AudioError) as caught, open_windows(bad, 22050):
            pass
        messages.append(str(caught.value))
    assert len(set(messages)) == 1, messages
    message = messages[0]
    assert message.startswith(f"{bad}: corrupt audio data after ") and "missing or damaged" in message
    where = 2.0 if damage == "a third cut out" else 3.0
    assert where - 0.6 <= _seconds_after(message) <= where + 0.1, message
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("kind", MP3_KINDS)
def test_healthy_and_truncated_mp3s_of_every_kind_decode_without_a_false_alarm(tmp_path, capfd, kind):
    """The resync check must not fire on a healthy file (an APE tag after the last frame makes libmpg123 try to
    resync to the end of the file), nor on a truncated one, which decodes what is there; window reads agree."""
    from genre_se.audio import _window_seek_formats, open_windows

    path = _mp3(tmp_path, kind)
    whole = load_audio(path, sr=None)
    if kind in ("vbr_xing", "tagged", "cbr_info"):  # the LAME header gives the exact length
        assert len(whole) == 6 * 44100
    else:
        assert abs(len(whole) - 6 * 44100) < 3 * 1152
    half = tmp_path / f"half-{path.name}"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    part = load_audio(half, sr=None)
    assert 0.3 * len(whole) < len(part) < 0.7 * len(whole)
    np.testing.assert_allclose(part[:44100], whole[:44100], atol=1e-6)
    if "MP3" in _window_seek_formats():
        for file, signal in ((path, whole), (half, part)):
            with open_windows(file, 44100) as reader:
                assert reader is not None and reader.n_samples == len(signal)
                np.testing.assert_allclose(reader.read(len(signal) - 3000, len(signal)), signal[-3000:], atol=1e-5)
    assert capfd.readouterr().err == ""


def test_the_real_clips_decode_and_copies_with_their_middle_cut_out_fail(tmp_path):
    """The shared real-world clips (LAME 3.100 VBR, Xing header) decode without alarm; copies of them with a third
    cut out are refused, copies cut in half decode their first part."""
    clips = sorted((SHARED_DATA / "real-clips").glob("*/*.mp3"))
    if not clips:
        pytest.skip(f"shared real-clips not found under {SHARED_DATA}")
    for clip in clips:
        whole = load_audio(clip, sr=None)
        assert len(whole) == audio_info(clip).frames
        data = clip.read_bytes()
        cut = tmp_path / f"cut-{clip.name}"
        cut.write_bytes(data[: len(data) // 3] + data[2 * len(data) // 3 :])
        with pytest.raises(AudioError, match="corrupt audio data after .* missing or damaged"):
            load_audio(cut, sr=None)
        half = tmp_path / f"half-{clip.name}"
        half.write_bytes(data[: len(data) // 2])
        assert 0.3 * len(whole) < len(load_audio(half, sr=None)) < 0.7 * len(whole)


def test_captured_native_stderr_is_returned_and_never_shown(capfd):
    from genre_se.quiet import native_stderr_captured

    with native_stderr_captured() as notes:
        os.write(2, b"Note: Skipped 38 bytes in input.\n")
    assert notes.text == "Note: Skipped 38 bytes in input.\n"
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")  # fd 2 is back
    assert capfd.readouterr().err == "after\n"


def _non_utf8_name(folder: Path, name: bytes) -> Path:
    """A file name that is not valid UTF-8 (old Latin-1 archives); Python spells it with surrogate escapes."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        path.touch()
    except (OSError, UnicodeError):
        pytest.skip("this file system accepts only UTF-8 names")
    return path


@pytest.mark.parametrize("suffix", [b".flac", b".wav", b".ogg"])
def test_a_file_name_that_is_not_utf8_decodes(tmp_path, suffix):
    """soundfile encodes a str path strictly as UTF-8, which a surrogate-escaped name is not."""
    from genre_se.audio import open_windows

    plain = _write(tmp_path / f"plain{suffix.decode()}", _pcm16_noise(4000), 8000)
    expected = load_audio(plain, sr=None)
    odd = _non_utf8_name(tmp_path, b"caf\xe9" + suffix)
    os.replace(plain, odd)
    assert audio_info(odd).frames == 4000
    np.testing.assert_array_equal(load_audio(odd, sr=None), expected)
    np.testing.assert_array_equal(np.concatenate(list(iter_audio_blocks(odd, sr=None))), expected)
    with open_windows(odd, 8000) as reader:
        assert reader is not None or suffix == b".ogg"  # Ogg is streamed, never window-read


@pytest.mark.parametrize("kind", ["process substitution", "named pipe"])
def test_a_pipe_is_refused_as_not_a_file_not_called_empty(tmp_path, kind):
    """``genre-se predict <(ffmpeg ... -f wav -)`` names a pipe: its size reads 0, but it is not an empty file,
    and a named pipe must not block the batch in open(); standard input ('-') is the way to pipe audio in."""
    wav = _write(tmp_path / "a.wav", _pcm16_noise(800), 8000).read_bytes()
    if kind == "process substitution":
        read_end, write_end = os.pipe()
        path = f"/dev/fd/{read_end}"
        keep = [read_end, write_end]
    else:
        path = tmp_path / "fifo.wav"
        os.mkfifo(path)
        write_end = os.open(path, os.O_RDWR)  # a writer is attached, so an open() for reading cannot hang here
        keep = [write_end]
    try:
        os.write(write_end, wav)
        for reader in READERS.values():
            with pytest.raises(AudioError, match="not a regular file") as caught:
                reader(path)
            assert str(caught.value).startswith(f"{path}: ") and "empty" not in str(caught.value)
    finally:
        for fd in keep:
            os.close(fd)


def test_progress_bar_writes_wait_for_fd2_to_come_back():
    """The decoding thread points fd 2 at /dev/null (or a capture) while it reads an MP3; a progress bar written
    by the main thread meanwhile was lost. LockedStderr waits for it. In a child process: sys.stderr must be
    the real fd 2 (pytest's capture writes around it)."""
    import subprocess
    import sys

    code = (
        "import sys, threading, time\n"
        "from genre_se.quiet import LockedStderr, native_stderr_silenced\n"
        "silenced = threading.Event()\n"
        "def decoder():\n"
        "    with native_stderr_silenced():\n"
        "        silenced.set()\n"
        "        time.sleep(0.3)\n"
        "for name, stream in (('plain', sys.stderr), ('locked', LockedStderr())):\n"
        "    silenced.clear()\n"
        "    thread = threading.Thread(target=decoder)\n"
        "    thread.start()\n"
        "    silenced.wait(5)\n"
        "    stream.write(f'{name} bar\\n')\n"
        "    stream.flush()\n"
        "    thread.join()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "locked bar" in out.stderr
    assert "plain bar" not in out.stderr  # what happened to the bar before: the test can tell


# ----------------------------------------------------------------------------- files cut short
#
# A partial download keeps the header of the whole file. libsndfile reads what is there, and the length the
# header declares (AudioInfo.declared_frames) tells a cut file from a whole one (cut_short).


def _cut(path: Path, fraction: float) -> Path:
    """The first ``fraction`` of a file's bytes, as a partial download leaves it."""
    data = path.read_bytes()
    cut = path.with_name(f"cut-{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def _decoded_seconds(path: Path) -> float:
    info = audio_info(path)
    return len(load_audio(path, sr=None)) / info.sample_rate


def _healthy(tmp_path: Path, kind: str) -> Path:
    """A 6-s file of each make the tests write: PCM containers, FLAC, Ogg, and MP3s of every kind."""
    if kind in MP3_KINDS or kind == "vbr_plain":
        return _mp3(tmp_path, kind)
    if kind == "mp3_mpeg2_mono":  # 16 kHz mono: MPEG-2 Layer III, whose Xing tag sits after 9 bytes of side info
        return _write(tmp_path / "lsf.mp3", _sine(440, 16000, 6.0) + 0.01 * _pcm16_noise(96000), 16000)
    extension, subtype = kind.split("_", 1) if "_" in kind else (kind, None)
    return _write(tmp_path / f"x.{extension}", _pcm16_noise(6 * 44100, channels=2), 44100,
                  **({"subtype": subtype} if subtype else {}))


#: every make of file the tests write, and whether its header declares a length a cut copy can be held to
HEALTHY_KINDS = {"wav": True, "au": True, "aiff": True, "flac": True, "ogg": False, "wav_FLOAT": True,
                 "wav_IMA_ADPCM": True,
                 "vbr_xing": True, "cbr_info": True, "tagged": True, "mp3_mpeg2_mono": True,
                 "cbr_plain": False, "cbr_plain_ape": False, "vbr_plain": False}


@pytest.mark.parametrize("kind", list(HEALTHY_KINDS))
def test_a_healthy_file_of_every_make_is_not_cut_short(tmp_path, kind):
    from genre_se.audio import cut_short

    path = _healthy(tmp_path, kind)
    info = audio_info(path)
    seconds = _decoded_seconds(path)
    assert not cut_short(info, seconds)
    if HEALTHY_KINDS[kind]:
        assert info.declared_duration == pytest.approx(seconds, abs=0.03)
    else:
        assert info.declared_frames is None  # nothing in the file declares its length
    if kind == "vbr_plain":  # libmpg123's estimate: were it trusted, every such file would look cut short
        assert info.frames > 1.5 * seconds * info.sample_rate


@pytest.mark.parametrize("kind", list(HEALTHY_KINDS))
def test_a_file_cut_in_half_is_cut_short_where_its_header_declares_a_length(tmp_path, kind):
    """A WAV/AU/AIFF header's data size, an MP3's Xing/Info frame count: a cut copy decodes half of what they
    declare. Ogg and MP3s without an Info frame declare nothing (their length is read from what is there), so a
    cut copy cannot be told; a cut FLAC fails to decode instead (tests/test_whole_song.py)."""
    from genre_se.audio import cut_short

    whole = _healthy(tmp_path, kind)
    cut = _cut(whole, 0.5)
    info = audio_info(cut)
    if kind == "flac":
        assert info.declared_duration == pytest.approx(6.0)
        with pytest.raises(AudioError, match="corrupt or truncated"):
            load_audio(cut, sr=None)
        return
    seconds = _decoded_seconds(cut)
    assert 2.0 < seconds < 4.0
    assert cut_short(info, seconds) is HEALTHY_KINDS[kind]
    if HEALTHY_KINDS[kind]:
        assert info.declared_duration == pytest.approx(6.0, abs=0.02)  # PCM exact, ADPCM to a block
        assert not cut_short(info, info.declared_duration - 0.9 * 4608 / info.sample_rate)  # within the slack
    assert not cut_short(None, seconds)


@pytest.mark.parametrize("placeholder", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_a_streaming_writers_placeholder_size_declares_no_length(tmp_path, placeholder):
    """ffmpeg writing a WAV to a pipe leaves 0xFFFFFFFF as the data size (others 0x7FFFFFFF, 0x7FFFF000): the
    file is whole, its length unknown to the header; an AU's -1 says "unknown" by the format's own rule."""
    from genre_se.audio import cut_short

    wav = _write(tmp_path / "piped.wav", _pcm16_noise(8000), 8000, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = placeholder.to_bytes(4, "little")
    data[4:8] = placeholder.to_bytes(4, "little")
    wav.write_bytes(bytes(data))
    au = _write(tmp_path / "piped.au", _pcm16_noise(8000), 8000, subtype="PCM_16")
    data = bytearray(au.read_bytes())
    data[8:12] = b"\xff\xff\xff\xff"
    au.write_bytes(bytes(data))
    for path in (wav, au):
        info = audio_info(path)
        assert info.frames == 8000 and len(load_audio(path, sr=None)) == 8000
        assert info.declared_frames in (None, 8000) and not cut_short(info, 1.0)
