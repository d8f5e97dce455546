"""Robustness report: how much a prediction moves when the same music is delivered differently.

Each transform is one small pure function ``(y, sr) -> (y2, sr2)`` over a 1-D mono or ``(frames, channels)``
signal (the shape is kept unless the transform says otherwise): gain with a soft limiter, an MP3 round trip,
resampling to 44.1/48 kHz stereo, a low-pass, pink noise at a stated SNR, dynamic range compression and
leading silence. :data:`TRANSFORMS` names the set the issue asks for with its parameters bound.

:func:`robustness_report` predicts every file untouched and under every transform, both through
:meth:`GenreClassifier.predict_array <genre_se.inference.GenreClassifier.predict_array>` on the same
native-rate, channel-preserving signal, so the only difference between the two predictions is the transform.
Per file and transform it records top-1 agreement and the total-variation distance between the two clip
distributions; :func:`summarize` reduces that to one row per transform.

Only numpy, scipy, soundfile and soxr are used (no TensorFlow here). Library code: no printing; failures
are :class:`~genre_se.errors.GenreSEError` subclasses naming the file.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import soundfile as sf

from .errors import AudioError, GenreSEError

if TYPE_CHECKING:
    from .inference import Failure

__all__ = [
    "OUTPUT_FORMATS",
    "REPORT_COLUMNS",
    "TRANSFORMS",
    "FileRobustness",
    "add_pink_noise",
    "apply_gain",
    "compress_dynamics",
    "file_robustness",
    "format_report",
    "iter_robustness",
    "load_channels",
    "lowpass",
    "mp3_bitrate_kbps",
    "mp3_roundtrip",
    "pink_noise",
    "prepend_silence",
    "report_frame",
    "robustness_report",
    "soft_limit",
    "summarize",
    "to_stereo",
    "top1_agreement",
    "total_variation",
    "write_mp3",
]

Transform = Callable[[np.ndarray, int], tuple[np.ndarray, int]]

OUTPUT_FORMATS = ("table", "csv", "json")

#: MPEG Layer III sample rates: MPEG-1 (32-48 kHz) and MPEG-2 (16-24 kHz). MPEG-2.5 (8-12 kHz) tops out
#: at 64 kbit/s, so lower rates are resampled up to 16 kHz before encoding.
_MPEG1_RATES = (32000, 44100, 48000)
_MPEG2_RATES = (16000, 22050, 24000)
#: Layer III bitrates (kbit/s) by bitrate index 1..14, per MPEG version.
_MPEG1_L3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_L3_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


# --------------------------------------------------------------------------------------------------
# Shapes


def _as_2d(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(frames, channels)`` float32 view/copy of a signal, and whether it was 1-D (to restore later)."""
    signal = np.asarray(y, dtype=np.float32)
    if signal.ndim == 1:
        return signal[:, None], True
    if signal.ndim == 2:
        return signal, False
    raise AudioError(f"robustness: expected a 1-D or (frames, channels) signal, got shape {signal.shape}")


def _restore(signal: np.ndarray, was_1d: bool) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float32)
    return signal[:, 0] if was_1d else signal


def _db_to_amplitude(db: float) -> float:
    return 10.0 ** (db / 20.0)


# --------------------------------------------------------------------------------------------------
# Transforms: one small pure function each


def soft_limit(y: np.ndarray, knee_db: float = -3.0) -> np.ndarray:
    """Smooth (tanh) limiter: identity below the knee, approaches but never exceeds full scale above it.

    The curve is continuous with slope 1 at the knee, so a loud master is squashed the way a soft clipper
    squashes it rather than hard-clipped; samples below the knee are bit-identical.
    """
    signal = np.asarray(y, dtype=np.float32)
    knee = _db_to_amplitude(knee_db)
    if not 0.0 < knee < 1.0:
        raise AudioError(f"soft_limit: knee_db must be below 0 dBFS, got {knee_db!r}")
    magnitude = np.abs(signal.astype(np.float64))
    over = magnitude > knee
    if not over.any():
        return signal.copy()
    headroom = 1.0 - knee
    limited = knee + headroom * np.tanh((magnitude[over] - knee) / headroom)
    out = signal.copy()
    out[over] = (np.sign(signal[over]) * np.minimum(limited, 1.0)).astype(np.float32)
    return out


def apply_gain(y: np.ndarray, sr: int, *, db: float, limit: bool = True) -> tuple[np.ndarray, int]:
    """Scale by ``db`` decibels, then (``limit``) :func:`soft_limit` so a boost cannot exceed full scale."""
    scaled = np.asarray(y, dtype=np.float32) * np.float32(_db_to_amplitude(db))
    return (soft_limit(scaled) if limit else scaled), sr


def mp3_bitrate_kbps(path: str | os.PathLike) -> int:
    """Bitrate (kbit/s) in the first MPEG Layer III frame header of a file (an ID3v2 tag is skipped).

    Used to check that the encoder really wrote the bitrate asked for, since soundfile only exposes a
    0..1 ``compression_level``.
    """
    data = Path(path).read_bytes()[: 1 << 16]
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
        start = 10 + size + (10 if data[5] & 0x10 else 0)
    for i in range(start, len(data) - 3):
        if data[i] != 0xFF or (data[i + 1] & 0xE0) != 0xE0:
            continue
        version_bits, layer_bits, index = (data[i + 1] >> 3) & 3, (data[i + 1] >> 1) & 3, data[i + 2] >> 4
        if layer_bits != 1 or version_bits == 1 or not 1 <= index <= 14:
            continue  # not a Layer III header (or a reserved/free-format value): keep looking
        table = _MPEG1_L3_KBPS if version_bits == 3 else _MPEG2_L3_KBPS
        return table[index - 1]
    raise AudioError(f"{path}: no MPEG Layer III frame header found")


def _mp3_encoding_rate(sr: int) -> int:
    """The MPEG-1/2 rate to encode a signal of rate ``sr`` at: ``sr`` itself when allowed, else the next one up
    (48 kHz above that)."""
    allowed = sorted(_MPEG1_RATES + _MPEG2_RATES)
    return next((rate for rate in allowed if rate >= sr), allowed[-1])


def _compression_level(bitrate_kbps: int, encode_sr: int) -> float:
    """soundfile's ``compression_level`` that makes libsndfile's CBR encoder pick ``bitrate_kbps``.

    libsndfile maps level c in [0, 1] linearly onto the version's bitrate range (MPEG-1: 320 -> 32,
    MPEG-2: 160 -> 8) and truncates to an integer, so aim a quarter kbit/s above the target.
    """
    table = _MPEG1_L3_KBPS if encode_sr in _MPEG1_RATES else _MPEG2_L3_KBPS
    if bitrate_kbps not in table:
        raise AudioError(f"mp3_roundtrip: {bitrate_kbps} kbit/s is not a Layer III bitrate at {encode_sr} Hz "
                         f"(allowed: {', '.join(map(str, table))})")
    top, bottom = table[-1], table[0]
    return min(1.0, max(0.0, (top - (bitrate_kbps + 0.25)) / (top - bottom)))


def mp3_roundtrip(y: np.ndarray, sr: int, *, bitrate_kbps: int = 128) -> tuple[np.ndarray, int]:
    """Encode to a constant-bitrate MP3 (LAME, via libsndfile) in a temp file and decode it back.

    A rate MPEG cannot carry at this bitrate is resampled to the next MPEG-1/2 rate first (and returned at
    it). MP3 carries one or two channels: more (a 5.1 file) are mixed down to mono first and come back as
    one channel (the model hears their mean either way). The written file's frame header is checked to carry
    ``bitrate_kbps``. The decoder trims LAME's delay and padding when the file has its gapless info, so the
    length usually comes back exactly; it may differ by at most one codec delay (about 1105-2257 samples)
    otherwise.
    """
    from .audio import resample

    signal, was_1d = _as_2d(y)
    if signal.shape[1] > 2:
        signal = signal.mean(axis=1, keepdims=True, dtype=np.float32)
    encode_sr = _mp3_encoding_rate(int(sr))
    if encode_sr != sr:
        signal = resample(signal, int(sr), encode_sr)
    with tempfile.TemporaryDirectory(prefix="genre-se-mp3-") as folder:
        path = Path(folder) / "roundtrip.mp3"
        write_mp3(path, signal, encode_sr, bitrate_kbps=bitrate_kbps)
        decoded, decoded_sr = load_channels(path)
    return _restore(decoded, was_1d), decoded_sr


def write_mp3(path: str | os.PathLike, y: np.ndarray, sr: int, *, bitrate_kbps: int = 128) -> Path:
    """Write a constant-bitrate MP3 at an MPEG-1/2 rate ``sr`` and check its frame header says ``bitrate_kbps``.

    Samples are clipped to full scale first, as any PCM source feeding an encoder would be.

    Raises
    ------
    AudioError
        ``sr`` is not an MPEG-1/2 rate, ``y`` has more than two channels, the bitrate is not a Layer III
        bitrate there, or the encoder wrote another bitrate than asked.
    """
    channels = 1 if np.ndim(y) == 1 else np.shape(y)[1]
    if channels > 2:  # libsndfile's own words for it are "Format not recognised"
        raise AudioError(f"write_mp3: MP3 carries one or two channels, got {channels}; mix them down first")
    if sr not in _MPEG1_RATES + _MPEG2_RATES:
        raise AudioError(f"write_mp3: {sr} Hz is not an MPEG-1/2 sample rate "
                         f"({', '.join(map(str, sorted(_MPEG1_RATES + _MPEG2_RATES)))})")
    level = _compression_level(bitrate_kbps, sr)
    sf.write(path, np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0), sr, format="MP3",
             subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=level)
    written = mp3_bitrate_kbps(path)
    if written != bitrate_kbps:
        raise AudioError(f"{path}: the encoder wrote {written} kbit/s, not {bitrate_kbps} kbit/s "
                         f"(compression_level {level:.4f} at {sr} Hz)")
    return Path(path)


def to_stereo(y: np.ndarray, sr: int, *, target_sr: int) -> tuple[np.ndarray, int]:
    """Resample (soxr HQ) to ``target_sr`` as two channels: mono is duplicated, stereo kept, more than two
    channels are mixed down to mono first."""
    from .audio import resample

    signal, _ = _as_2d(y)
    if signal.shape[1] == 1 or signal.shape[1] > 2:
        signal = np.repeat(signal.mean(axis=1, keepdims=True), 2, axis=1)
    return resample(signal, int(sr), int(target_sr)), int(target_sr)


def lowpass(y: np.ndarray, sr: int, *, cutoff_hz: float = 8000.0) -> tuple[np.ndarray, int]:
    """Ideal (brick-wall, zero-phase) low-pass: every DFT bin above ``cutoff_hz`` is zeroed, per channel.

    Ideal rather than a realistic filter so that "no energy above 8 kHz" holds exactly and the report
    measures what the model loses with the band, not a particular filter's transition band.
    """
    from scipy import fft

    signal, was_1d = _as_2d(y)
    n = signal.shape[0]
    if cutoff_hz >= sr / 2 or n == 0:
        return _restore(signal.copy(), was_1d), sr
    spectrum = fft.rfft(signal, axis=0)
    spectrum[fft.rfftfreq(n, 1.0 / sr) > cutoff_hz] = 0
    return _restore(fft.irfft(spectrum, n, axis=0), was_1d), sr


def pink_noise(shape: tuple[int, ...], sr: int, *, seed: int = 0, fmin_hz: float = 20.0) -> np.ndarray:
    """Unit-power pink (1/f power, -3 dB/octave) Gaussian noise from fmin_hz to Nyquist, independent per channel.

    Bins below ``fmin_hz`` are zeroed: a 1/f spectrum taken down to the lowest DFT bin would put a large
    share of its power into inaudible sub-sonic drift, and an SNR should count noise one can hear.
    """
    from scipy import fft

    n = shape[0]
    white = np.random.default_rng(seed).standard_normal(shape)
    freqs = fft.rfftfreq(n, 1.0 / sr)
    weights = np.zeros_like(freqs)
    audible = freqs >= max(fmin_hz, freqs[1] if n > 1 else 0.0)
    weights[audible] = 1.0 / np.sqrt(freqs[audible])
    spectrum = fft.rfft(white, axis=0) * (weights if white.ndim == 1 else weights[:, None])
    noise = fft.irfft(spectrum, n, axis=0)
    power = float(np.mean(noise**2))
    return noise / math.sqrt(power) if power > 0 else noise


def add_pink_noise(y: np.ndarray, sr: int, *, snr_db: float = 20.0, seed: int = 0) -> tuple[np.ndarray, int]:
    """Add :func:`pink_noise` scaled so that signal power / noise power is exactly ``snr_db``.

    Powers are means of squares over all samples and channels. Silence stays silence (its SNR is
    undefined). Not clipped: clipping would change the SNR it states.
    """
    signal, was_1d = _as_2d(y)
    signal_power = float(np.mean(signal.astype(np.float64) ** 2)) if signal.size else 0.0
    if signal_power == 0.0:
        return _restore(signal.copy(), was_1d), sr
    noise = pink_noise(signal.shape, sr, seed=seed) * math.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    return _restore(signal + noise, was_1d), sr


def compress_dynamics(
    y: np.ndarray,
    sr: int,
    *,
    threshold_db: float = -24.0,
    ratio: float = 4.0,
    attack_ms: float = 5.0,
    release_ms: float = 50.0,
    block_ms: float = 1.0,
    makeup: bool = True,
) -> tuple[np.ndarray, int]:
    """Feed-forward RMS compressor, stereo-linked, with automatic make-up gain: a broadcast/mastering chain.

    The detector is the mean power over channels in ``block_ms`` blocks, smoothed with attack/release
    one-pole ballistics (the only sequential step, run at block rate); above ``threshold_db`` (dBFS RMS)
    the level is reduced by ``1 - 1/ratio`` of the excess. The block gains are interpolated to samples.
    With ``makeup`` the output is rescaled to the input's RMS (so this changes dynamics, not loudness;
    gain is its own transform) and :func:`soft_limit` keeps it in full scale. Audio that never crosses
    the threshold comes back unchanged.
    """
    if ratio < 1.0:
        raise AudioError(f"compress_dynamics: ratio must be >= 1, got {ratio!r}")
    signal, was_1d = _as_2d(y)
    n = signal.shape[0]
    if n == 0:
        return _restore(signal.copy(), was_1d), sr
    hop = max(1, round(block_ms * 1e-3 * sr))
    n_blocks = -(-n // hop)
    power = np.mean(signal.astype(np.float64) ** 2, axis=1)
    block_power = np.pad(power, (0, n_blocks * hop - n)).reshape(n_blocks, hop).mean(axis=1)
    block_power[-1] *= hop / (n - (n_blocks - 1) * hop)  # the last block's mean over its real samples
    envelope = _ballistics(block_power, hop / sr, attack_ms * 1e-3, release_ms * 1e-3)
    level_db = 10.0 * np.log10(np.maximum(envelope, 1e-12))
    gain_db = -np.maximum(level_db - threshold_db, 0.0) * (1.0 - 1.0 / ratio)
    if not gain_db.any():
        return _restore(signal.copy(), was_1d), sr
    centres = (np.arange(n_blocks) + 0.5) * hop - 0.5
    gain = np.interp(np.arange(n), centres, 10.0 ** (gain_db / 20.0))
    out = signal * gain[:, None]
    if makeup:
        out_rms, in_rms = math.sqrt(float(np.mean(out**2))), math.sqrt(float(np.mean(signal.astype(np.float64) ** 2)))
        out = soft_limit(out * (in_rms / out_rms if out_rms > 0 else 1.0))
    return _restore(out, was_1d), sr


def _ballistics(power: np.ndarray, step_s: float, attack_s: float, release_s: float) -> np.ndarray:
    """One-pole envelope follower: fast (attack) when the power rises, slow (release) when it falls."""
    attack = math.exp(-step_s / attack_s) if attack_s > 0 else 0.0
    release = math.exp(-step_s / release_s) if release_s > 0 else 0.0
    envelope = np.empty(len(power))
    level = float(power[0])
    for k, value in enumerate(power.tolist()):
        coefficient = attack if value > level else release
        level = coefficient * level + (1.0 - coefficient) * value
        envelope[k] = level
    return envelope


def prepend_silence(y: np.ndarray, sr: int, *, seconds: float = 5.0) -> tuple[np.ndarray, int]:
    """``round(seconds * sr)`` frames of digital silence before the audio, on every channel."""
    signal, was_1d = _as_2d(y)
    zeros = np.zeros((round(seconds * sr), signal.shape[1]), dtype=np.float32)
    return _restore(np.concatenate([zeros, signal]), was_1d), sr


#: The issue's transforms, in report order: name -> ``(y, sr) -> (y2, sr2)``.
TRANSFORMS: dict[str, Transform] = {
    "gain-20dB": functools.partial(apply_gain, db=-20.0),
    "gain-6dB": functools.partial(apply_gain, db=-6.0),
    "gain+6dB": functools.partial(apply_gain, db=6.0),
    "mp3-128k": functools.partial(mp3_roundtrip, bitrate_kbps=128),
    "stereo-44.1k": functools.partial(to_stereo, target_sr=44100),
    "stereo-48k": functools.partial(to_stereo, target_sr=48000),
    "lowpass-8k": functools.partial(lowpass, cutoff_hz=8000.0),
    "pink-noise-20dB": functools.partial(add_pink_noise, snr_db=20.0),
    "compression": compress_dynamics,
    "silence-5s": functools.partial(prepend_silence, seconds=5.0),
}


# --------------------------------------------------------------------------------------------------
# Loading with channels kept


def load_channels(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file at its native rate with its channels: ``((frames, channels) float32, sr)``.

    The same decoders as :func:`genre_se.audio.load_audio` (so MP3 is read to its true end), without the
    mono mix: stereo transforms and the untouched reference then start from the file's real channels.
    ``max_seconds``: only that many seconds from the middle of a longer file (by its header's length; a
    truncated file whose data ends before that middle gives its first ``max_seconds`` instead).
    """
    from .audio import _check_path, _open_decoder, check_samples

    checked = _check_path(path)
    with _open_decoder(checked) as decoder:
        sr = decoder.info.sample_rate
        start, stop = 0, None
        if max_seconds is not None and decoder.info.frames > max_seconds * sr:
            start = (decoder.info.frames - int(max_seconds * sr)) // 2
            stop = start + int(max_seconds * sr)
        blocks = list(decoder.blocks(start, stop))
    if not blocks and start:  # the header claims more than there is (a partial download): read from the start
        with _open_decoder(checked) as decoder:
            blocks = list(decoder.blocks(0, stop - start))
    if not blocks:
        raise AudioError(f"{checked}: no audio samples")
    signal = np.concatenate(blocks).astype(np.float32, copy=False)
    check_samples(checked, signal)  # refused as predict refuses it, naming the file, not an "array input"
    return signal, int(sr)


# --------------------------------------------------------------------------------------------------
# Comparing distributions


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` of two distributions (0: identical, 1: disjoint)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"total_variation: shapes differ ({p.shape} vs {q.shape})")
    return float(0.5 * np.abs(p - q).sum())


def top1_agreement(p: np.ndarray, q: np.ndarray) -> bool:
    """Whether both distributions have the same most probable class (first index on ties, as argmax)."""
    return int(np.argmax(p)) == int(np.argmax(q))


# --------------------------------------------------------------------------------------------------
# The report


@dataclass
class FileRobustness:
    """One file's untouched prediction and one row per transform (see :func:`robustness_report`)."""

    path: str
    reference_genre: str
    rows: list[dict]


def file_robustness(classifier, path: str | os.PathLike, transforms: dict[str, Transform] | None = None,
                    max_seconds: float | None = None) -> FileRobustness:
    """Predict one file untouched and under each transform; compare each prediction with the untouched one.

    Raises
    ------
    GenreSEError
        The file cannot be read, or a transform or prediction fails (the message names file and transform).
    """
    transforms = TRANSFORMS if transforms is None else transforms
    path = os.fspath(path)
    signal, sr = load_channels(path, max_seconds)
    try:
        reference = classifier.predict_array(signal, sr)
    except GenreSEError as exc:  # array-input messages do not name the file
        raise type(exc)(f"{path}: {exc}") from exc
    rows = []
    for name, transform in transforms.items():
        try:
            changed, changed_sr = transform(signal, sr)
            prediction = classifier.predict_array(changed, changed_sr)
        except GenreSEError as exc:
            raise type(exc)(f"{path}: transform {name}: {exc}") from exc
        except Exception as exc:  # a numerical/codec failure fails this file, not the batch
            raise AudioError(f"{path}: transform {name} failed ({type(exc).__name__}: {exc})") from exc
        rows.append({
            "path": path,
            "transform": name,
            "reference_genre": reference.genre,
            "genre": prediction.genre,
            "top1_agree": prediction.genre == reference.genre,  # the answers shown, ties broken as predict's
            "tv_distance": total_variation(reference.probabilities, prediction.probabilities),
        })
    return FileRobustness(path, reference.genre, rows)


def iter_robustness(classifier, paths: Iterable[str | os.PathLike], transforms: dict[str, Transform] | None = None,
                    max_seconds: float | None = None) -> Iterator[FileRobustness | Failure]:
    """:func:`file_robustness` for each path in order; a file that fails yields an inference ``Failure``."""
    from .inference import Failure

    for path in paths:
        try:
            yield file_robustness(classifier, path, transforms, max_seconds)
        except GenreSEError as exc:
            yield Failure(os.fspath(path), exc)


REPORT_COLUMNS = ["path", "transform", "reference_genre", "genre", "top1_agree", "tv_distance"]


def robustness_report(classifier, paths: Iterable[str | os.PathLike], transforms: dict[str, Transform] | None = None,
                      failures: list | None = None, max_seconds: float | None = None) -> pd.DataFrame:
    """Per file x transform: top-1 agreement with the untouched audio and the TV distance between the two.

    Parameters
    ----------
    classifier
        Anything with ``predict_array(y, sr)`` returning an object with ``probabilities`` and ``genre``
        (a :class:`~genre_se.inference.GenreClassifier`).
    failures : list, optional
        If given, files that fail are appended to it as ``Failure`` and skipped; otherwise the first
        failure is raised.
    max_seconds : float, optional
        Only that many seconds from the middle of each longer file (:func:`load_channels`); None: all of it.
        Every transform holds a few copies of the signal, so an hour-long file needs gigabytes without it.

    Returns
    -------
    pandas.DataFrame
        Columns ``path, transform, reference_genre, genre, top1_agree, tv_distance``.
    """
    results = []
    for result in iter_robustness(classifier, paths, transforms, max_seconds):
        if isinstance(result, FileRobustness):
            results.append(result)
        elif failures is None:
            raise result.error
        else:
            failures.append(result)
    return report_frame(results)


def report_frame(results: Iterable[FileRobustness]) -> pd.DataFrame:
    """The per file x transform table of :func:`robustness_report` from :func:`iter_robustness` results."""
    return pd.DataFrame([row for result in results for row in result.rows], columns=REPORT_COLUMNS)


def summarize(report: pd.DataFrame) -> pd.DataFrame:
    """One row per transform (first-seen order): files, top-1 agreement rate, mean and max TV distance."""
    order = list(dict.fromkeys(report["transform"]))
    grouped = report.groupby("transform", sort=False)
    summary = pd.DataFrame({
        "files": grouped["path"].nunique(),
        "agreement": grouped["top1_agree"].mean(),
        "mean_tv": grouped["tv_distance"].mean(),
        "max_tv": grouped["tv_distance"].max(),
    })
    return summary.reindex(order).rename_axis("transform").reset_index()


def format_report(report: pd.DataFrame, fmt: str = "table", *, per_file: bool = False,
                  failures: list | None = None, provenance: dict | None = None) -> str:
    """The report as text: the per-transform summary (or, ``per_file``, every row) as a table or CSV; JSON
    holds both, with the failed files and the model's provenance."""
    if fmt not in OUTPUT_FORMATS:
        raise AudioError(f"robustness: output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    summary = summarize(report)
    if fmt == "json":
        document = {
            "model": provenance,
            "summary": summary.to_dict(orient="records"),
            "files": report.to_dict(orient="records"),
            "errors": [{"path": f.path, "error": f.message} for f in failures or []],
        }
        return json.dumps(document, indent=2, default=_jsonable) + "\n"
    table = report if per_file else summary
    if fmt == "csv":
        buffer = io.StringIO()
        table.to_csv(buffer, index=False, float_format="%.6g", lineterminator="\n")
        return buffer.getvalue()
    return _text_table(table, per_file) + "\n"


def _text_table(table: pd.DataFrame, per_file: bool) -> str:
    if per_file:
        shown = table.assign(tv_distance=table["tv_distance"].map("{:.4f}".format))
    else:
        shown = table.assign(
            agreement=table["agreement"].map("{:.1%}".format),
            mean_tv=table["mean_tv"].map("{:.4f}".format),
            max_tv=table["max_tv"].map("{:.4f}".format),
        ).rename(columns={"agreement": "top-1 agree", "mean_tv": "mean TV", "max_tv": "max TV"})
    return shown.to_string(index=False)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
