"""The one feature definition: log-mel spectrogram, cut into fixed-length segments.

Training, evaluation, prediction and embedding all call this module with the :class:`FeatureConfig`
that travels with the model, so features cannot drift between them.

Definition (equal to ``librosa.power_to_db(librosa.feature.melspectrogram(y, center=True,
pad_mode="constant"), ref=ref_power, amin=amin, top_db=None)``):

* frame ``t`` is the window of ``n_fft`` samples centred on sample ``t * hop_length`` (zeros outside the
  signal), Hann-windowed; a signal of ``n`` samples has ``1 + n // hop_length`` frames;
* power spectrum -> mel filter bank (Slaney-normalised, librosa's default) -> dB against a *fixed*
  reference, so a quiet clip stays quiet (no per-clip maximum);
* segments of ``segment_frames`` frames start every ``segment_hop`` frames; when the hop does not land on
  the end, one last segment is aligned to the end so the whole clip is covered; a clip shorter than one
  segment is padded with the dB floor (silence) and the padding is recorded.

The computation is incremental (:class:`LogMelStream`), so an hour-long file is processed block by block
with bounded memory and gives exactly the frames the whole-signal computation gives. The window and filter
bank (:class:`MelFrontend`) come from librosa/scipy, or from the copy a model bundle stores, so serving does
not import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .config import FeatureConfig

__all__ = [
    "LogMelStream",
    "MelFrontend",
    "Segments",
    "log_mel",
    "segment",
    "extract_segments",
    "iter_segment_batches",
    "segment_times",
    "floor_db",
    "n_segments_for",
    "concat_segments",
    "frame_loudness",
    "segment_loudness",
    "segment_start_frames",
    "spread_indices",
    "iter_selected_segments",
    "k_weighting_power",
    "loudness_band_weights",
    "pcen_smoothing",
    "check_mel_bands",
]


def floor_db(cfg: FeatureConfig) -> float:
    """The dB value of silence (the power floor ``amin``), used to pad short clips."""
    return float(10.0 * np.log10(cfg.amin / cfg.ref_power))


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


def check_mel_bands(cfg: FeatureConfig) -> None:
    """Refuse a feature configuration whose mel filter bank has empty bands.

    A band narrower than the FFT's bin spacing (many ``n_mels`` for a small ``n_fft``, or a narrow
    ``fmin``..``fmax``) holds no bin: its value is the dB floor for every input, a band the model can never use.
    librosa only warns about it, so the features stage checks before decoding any audio.

    Raises
    ------
    ConfigError
        Some band is empty; the message names ``features.n_mels`` and how many bands are empty.
    """
    import warnings

    from .errors import ConfigError

    with warnings.catch_warnings():  # librosa's "Empty filters detected": said below, naming the keys
        warnings.simplefilter("ignore", UserWarning)
        basis = _mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    empty = np.flatnonzero(basis.max(axis=1) <= 0)
    if empty.size:
        fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
        raise ConfigError(
            f"features.n_mels: {cfg.n_mels} mel bands over {cfg.fmin:g}-{fmax:g} Hz with n_fft {cfg.n_fft} leave "
            f"{empty.size} of them without an FFT bin (a constant floor for every clip); use fewer mel bands, a "
            "larger features.n_fft or a wider features.fmin..fmax"
        )


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    import scipy.signal

    return scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)


class MelFrontend:
    """The numbers that turn sample frames into log-mel: the Hann window and the mel filter bank.

    Built from librosa and scipy (:meth:`for_config`, the definition), or from arrays stored with a model
    bundle (:meth:`from_arrays`), so prediction needs neither library and their import cost (seconds) is
    not paid at serving time. The filter bank is applied band by band over each filter's non-zero span
    (about 1.5 % of the dense matrix): numpy only, no BLAS threads (which thrash on a busy 2-core machine
    and in worker processes), as fast as a sparse product.

    Parameters
    ----------
    window : ndarray (n_fft,)
        Analysis window, applied to every frame before the FFT.
    basis : ndarray (n_mels, n_fft // 2 + 1)
        Mel filter bank (power spectrum -> mel power).
    """

    def __init__(self, window: np.ndarray, basis: np.ndarray):
        self.window = np.ascontiguousarray(window, dtype=np.float32)
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)
        if self.window.ndim != 1 or self.basis.ndim != 2 or self.basis.shape[1] != self.window.size // 2 + 1:
            raise ValueError(
                f"mel front end: window {self.window.shape} and filter bank {self.basis.shape} do not fit "
                "(expected (n_fft,) and (n_mels, n_fft // 2 + 1))"
            )
        if not (np.isfinite(self.window).all() and np.isfinite(self.basis).all()) or (self.basis < 0).any():
            raise ValueError("mel front end: the window and filter bank must be finite, the bank non-negative")
        self._bands = [self._span(row) for row in self.basis]

    @staticmethod
    def _span(row: np.ndarray) -> tuple[int, int, np.ndarray]:
        nonzero = np.flatnonzero(row)
        if nonzero.size == 0:  # an empty filter (many mels, small n_fft): its mel power is 0, the dB floor
            return 0, 0, row[:0]
        low, high = int(nonzero[0]), int(nonzero[-1]) + 1
        return low, high, row[low:high].copy()

    @classmethod
    def for_config(cls, cfg: FeatureConfig) -> "MelFrontend":
        """The definition: librosa's Slaney mel filter bank and scipy's periodic Hann window (cached)."""
        return _default_frontend(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)

    @classmethod
    def from_arrays(cls, window: np.ndarray, basis: np.ndarray, cfg: FeatureConfig) -> "MelFrontend":
        """Stored arrays, checked against the feature parameters they must serve."""
        frontend = cls(window, basis)
        expected = (cfg.n_mels, cfg.n_fft // 2 + 1)
        if frontend.window.shape != (cfg.n_fft,) or frontend.basis.shape != expected:
            raise ValueError(
                f"mel front end: window {frontend.window.shape} and filter bank {frontend.basis.shape} do not "
                f"match features n_fft={cfg.n_fft}, n_mels={cfg.n_mels} (expected ({cfg.n_fft},) and {expected})"
            )
        return frontend

    @property
    def n_mels(self) -> int:
        return int(self.basis.shape[0])

    @property
    def white_noise_db(self) -> float:
        """Mean mel power (dB) of unit-variance white noise: E|X_k|^2 = sum(w^2) in every FFT bin.

        Subtracting it turns a frame's mean mel power into a level in dB re full scale (white noise of RMS
        1.0 reads 0 dB), whatever n_fft, window, n_mels or rate; see :func:`frame_loudness`.
        """
        if not hasattr(self, "_white_noise_db"):
            gain = float(np.sum(self.window.astype(np.float64) ** 2)) * float(self.basis.sum(axis=1).mean())
            self._white_noise_db = float(10.0 * np.log10(max(gain, 1e-30)))
        return self._white_noise_db

    @property
    def n_fft(self) -> int:
        return int(self.window.size)

    def mel_power(self, power: np.ndarray) -> np.ndarray:
        """(n_frames, n_fft // 2 + 1) power spectra -> (n_mels, n_frames) mel power, float32."""
        out = np.zeros((self.n_mels, power.shape[0]), dtype=np.float32)
        for band, (low, high, weights) in enumerate(self._bands):
            if high > low:
                # einsum without optimize: numpy's own loop, never a BLAS call (no thread pool)
                out[band] = np.einsum("fk,k->f", power[:, low:high], weights)
        return out


@lru_cache(maxsize=8)
def _default_frontend(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> MelFrontend:
    return MelFrontend(_window(n_fft), _mel_basis(sr, n_fft, n_mels, fmin, fmax))


def warm_up(cfg: FeatureConfig) -> None:
    """Build the cached front end (imports librosa) now, e.g. once before forking worker processes."""
    MelFrontend.for_config(cfg)


def _frames_to_db(frames: np.ndarray, cfg: FeatureConfig, frontend: MelFrontend) -> np.ndarray:
    """(n_frames, n_fft) windowless sample frames -> (n_mels, n_frames) log-mel in dB, float32."""
    spectrum = np.fft.rfft(frames * frontend.window, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32, copy=False)
    mel = frontend.mel_power(power)
    return (10.0 * np.log10(np.maximum(mel, cfg.amin)) - 10.0 * np.log10(cfg.ref_power)).astype(np.float32)


class LogMelStream:
    """Incremental log-mel: feed sample blocks, get the spectrogram frames they complete.

    Frames are identical to the whole-signal computation whatever the block sizes, because each frame is
    computed from exactly the same samples (the stream keeps the ``n_fft - hop`` samples of overlap).

    Parameters
    ----------
    cfg : FeatureConfig
        The feature definition; input samples must already be at ``cfg.sample_rate``.
    frames_per_chunk : int
        At most this many frames are transformed at once (bounds the FFT scratch memory).
    frontend : MelFrontend, optional
        Window and filter bank; default :meth:`MelFrontend.for_config` (librosa). A model bundle's stored
        front end gives the same numbers without importing librosa.
    """

    def __init__(self, cfg: FeatureConfig, frames_per_chunk: int = 1024, frontend: MelFrontend | None = None):
        self.cfg = cfg
        self.frames_per_chunk = frames_per_chunk
        self.frontend = MelFrontend.for_config(cfg) if frontend is None else frontend
        # center=True: the signal is preceded by n_fft // 2 zeros.
        self._buffer = np.zeros(cfg.n_fft // 2, dtype=np.float32)
        self._n_samples = 0
        self._n_frames = 0
        self._finished = False

    @property
    def n_samples(self) -> int:
        """Samples fed so far."""
        return self._n_samples

    def _emit(self, limit: int | None = None) -> np.ndarray:
        """Transform every complete frame in the buffer (at most ``limit`` frames)."""
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_length
        available = 0 if len(self._buffer) < n_fft else 1 + (len(self._buffer) - n_fft) // hop
        if limit is not None:
            available = min(available, limit)
        if available == 0:
            return np.zeros((self.cfg.n_mels, 0), dtype=np.float32)
        outputs = []
        for start in range(0, available, self.frames_per_chunk):
            count = min(self.frames_per_chunk, available - start)
            span = self._buffer[start * hop : (start + count - 1) * hop + n_fft]
            frames = np.lib.stride_tricks.sliding_window_view(span, n_fft)[::hop]
            outputs.append(_frames_to_db(frames, self.cfg, self.frontend))
        self._buffer = self._buffer[available * hop :]
        self._n_frames += available
        return np.concatenate(outputs, axis=1)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; return the (n_mels, k) frames now complete (k may be 0)."""
        if self._finished:
            raise RuntimeError("LogMelStream.push() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._n_samples += len(samples)
        self._buffer = np.concatenate([self._buffer, samples])
        return self._emit()

    def finish(self) -> np.ndarray:
        """Flush: pad the end with zeros (center=True) and return the remaining frames."""
        if self._finished:
            return np.zeros((self.cfg.n_mels, 0), dtype=np.float32)
        self._finished = True
        total = 1 + self._n_samples // self.cfg.hop_length
        self._buffer = np.concatenate([self._buffer, np.zeros(self.cfg.n_fft, dtype=np.float32)])
        return self._emit(limit=total - self._n_frames)


def frame_loudness(spec: np.ndarray, cfg: FeatureConfig, frontend: MelFrontend | None = None) -> np.ndarray:
    """Level of each frame of an (n_mels, n_frames) log-mel in dB re full scale (RMS), shape (n_frames,).

    The mean mel power of the frame against that of unit-variance white noise
    (:attr:`MelFrontend.white_noise_db`): white noise of RMS -80 dBFS reads about -80, a full-scale sine about
    +2, digital silence the power floor (-100 dB less the calibration, far below any threshold). It uses the
    features' own dB values with the fixed ``ref_power`` put back, so it never depends on the model's input
    standardisation or on a per-clip maximum. Used to mark near-silent segments.
    """
    frontend = MelFrontend.for_config(cfg) if frontend is None else frontend
    spec = np.asarray(spec, dtype=np.float32)
    if spec.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    # mean over bands of the power 10**(dB/10) (float64: dB values of audio stay far from its limits)
    mean_power_db = 10.0 * np.log10(np.power(10.0, spec.astype(np.float64) / 10.0).mean(axis=0))
    return (mean_power_db + 10.0 * np.log10(cfg.ref_power) - frontend.white_noise_db).astype(np.float32)


# ITU-R BS.1770-4 K-weighting, the published 48 kHz biquads: a +4 dB high shelf (the head) and the RLB
# high-pass. Only their magnitude response is used (at the FFT bins' frequencies), so any rate works.
_K_SHELF = ([1.53512485958697, -2.69169618940638, 1.19839281085285], [1.0, -1.69065929318241, 0.73248077421585])
_K_HIGHPASS = ([1.0, -2.0, 1.0], [1.0, -1.99004745483398, 0.99007225036621])
LOUDNESS_KINDS = ("rms", "r128")


def k_weighting_power(freqs: np.ndarray) -> np.ndarray:
    """Power response |H(f)|^2 of the BS.1770 K-weighting filter at frequencies ``freqs`` (Hz, < 24 kHz)."""
    import scipy.signal

    freqs = np.asarray(freqs, dtype=np.float64)
    response = np.ones_like(freqs)
    for b, a in (_K_SHELF, _K_HIGHPASS):
        _, h = scipy.signal.freqz(b, a, worN=freqs, fs=48000.0)
        response *= np.abs(h) ** 2
    return response


@lru_cache(maxsize=8)
def _loudness_band_weights(cfg: FeatureConfig, kind: str) -> tuple[tuple[float, ...], float]:
    import scipy.optimize

    frontend = MelFrontend.for_config(cfg)
    n_bins = cfg.n_fft // 2 + 1
    freqs = np.arange(n_bins) * cfg.sample_rate / cfg.n_fft
    # Parseval: a stationary signal's mean square is the sum of E|X_k|^2 over the whole spectrum over
    # n_fft * sum(w^2); each one-sided bin but DC (and Nyquist) stands for two.
    per_bin = np.full(n_bins, 2.0)
    per_bin[0] = 1.0
    if cfg.n_fft % 2 == 0:
        per_bin[-1] = 1.0
    per_bin /= cfg.n_fft * float(np.sum(frontend.window.astype(np.float64) ** 2))
    if kind == "r128":
        per_bin *= k_weighting_power(freqs)
    # mel bands -> that spectral weighting: non-negative least squares, so a level is a sum of powers
    weights, _ = scipy.optimize.nnls(frontend.basis.T.astype(np.float64), per_bin)
    offset = 10.0 * np.log10(cfg.ref_power) + (-0.691 if kind == "r128" else 0.0)
    return tuple(float(w) for w in weights), float(offset)


def loudness_band_weights(cfg: FeatureConfig, kind: str) -> tuple[list[float], float]:
    """Per-mel-band weights and a dB offset that turn a log-mel segment into its loudness.

    ``level = offset + 10 log10(mean over frames of sum_m weights[m] * 10 ** (dB[m] / 10))``.

    * ``"rms"``: the signal's mean square in dB re full scale (white noise of RMS 1.0 reads 0 dB);
    * ``"r128"``: the K-weighted mean square minus 0.691 dB, i.e. loudness in LUFS as ITU-R BS.1770 /
      EBU R128 define it; over one 3-s segment it is EBU R128's short-term loudness.

    Computed in the mel domain (the features are all the model sees): the weights are the non-negative
    combination of mel filters closest to the per-bin weighting, within a few tenths of a dB of the
    time-domain measurement on music and noise (tests/test_frontend.py).
    """
    if kind not in LOUDNESS_KINDS:
        raise ValueError(f"loudness kind must be one of {LOUDNESS_KINDS}, got {kind!r}")
    weights, offset = _loudness_band_weights(cfg, kind)
    return list(weights), offset


def pcen_smoothing(cfg: FeatureConfig, time_constant: float = 0.4) -> float:
    """PCEN's per-frame smoothing coefficient for a time constant in seconds (librosa.pcen's formula)."""
    t_frames = time_constant * cfg.sample_rate / cfg.hop_length
    return float((np.sqrt(1.0 + 4.0 * t_frames**2) - 1.0) / (2.0 * t_frames**2))


def log_mel(y: np.ndarray, cfg: FeatureConfig, frontend: MelFrontend | None = None) -> np.ndarray:
    """Log-mel spectrogram (n_mels, 1 + len(y) // hop_length) in dB of a mono signal at ``cfg.sample_rate``."""
    stream = LogMelStream(cfg, frontend=frontend)
    return np.concatenate([stream.push(y), stream.finish()], axis=1)


# --------------------------------------------------------------------------------------------------
# Segmenting


@dataclass
class Segments:
    """Fixed-length log-mel segments of one clip (or one batch of them).

    Attributes
    ----------
    data : ndarray, shape (n_segments, n_mels, segment_frames, 1), float32
    start_frames : ndarray of int64, the first frame of each segment in the clip
    pad_frames : ndarray of int64, how many frames of each segment are padding (clips shorter than a segment)
    n_frames : int, frames of the whole clip (so far, for a batch of a stream)
    loudness_db : ndarray of float32 or None, each segment's loudest frame (:func:`frame_loudness`); set by
        the streaming/selected paths that serve prediction, None from :func:`segment`
    """

    data: np.ndarray
    start_frames: np.ndarray
    pad_frames: np.ndarray
    n_frames: int
    loudness_db: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data)


def _segment_starts(n_frames: int, length: int, hop: int) -> np.ndarray:
    if n_frames <= length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_frames - length + 1, hop, dtype=np.int64)
    if starts[-1] + length < n_frames:
        starts = np.append(starts, n_frames - length)
    return starts


def segment(spec: np.ndarray, cfg: FeatureConfig) -> Segments:
    """Cut an (n_mels, frames) spectrogram into segments of ``cfg.segment_frames``; see the module doc."""
    n_mels, n_frames = spec.shape
    length = cfg.segment_frames
    pad = max(0, length - n_frames)
    if pad:
        spec = np.concatenate([spec, np.full((n_mels, pad), floor_db(cfg), dtype=spec.dtype)], axis=1)
    starts = _segment_starts(n_frames, length, cfg.segment_hop)
    windows = np.lib.stride_tricks.sliding_window_view(spec, length, axis=1)[:, starts]  # (mels, N, length)
    data = np.ascontiguousarray(windows.transpose(1, 0, 2))[..., None].astype(np.float32)
    return Segments(data, starts, np.full(len(starts), pad, dtype=np.int64), n_frames)


def segment_loudness(data: np.ndarray, cfg: FeatureConfig, frontend: MelFrontend | None = None) -> np.ndarray:
    """Each segment's loudest frame (:func:`frame_loudness`) of segments ``(n, n_mels, frames[, 1])``."""
    data = np.asarray(data)
    if data.ndim == 4:
        data = data[..., 0]
    n, n_mels, frames = data.shape
    flat = data.transpose(1, 0, 2).reshape(n_mels, n * frames)  # every segment's frames side by side
    return frame_loudness(flat, cfg, frontend).reshape(n, frames).max(axis=1).astype(np.float32)


def segment_start_frames(n_frames: int, cfg: FeatureConfig) -> np.ndarray:
    """First frame of every segment a clip of ``n_frames`` frames gives (what :func:`segment` cuts)."""
    return _segment_starts(int(n_frames), cfg.segment_frames, cfg.segment_hop)


def spread_indices(n: int, k: int | None) -> np.ndarray:
    """``min(n, k)`` indices into ``range(n)`` spread evenly from the first to the last (all when k is 0/None).

    How a bounded prediction chooses its segments: the first and the last (end-aligned) segment are always
    among them, so the choice covers the whole song.
    """
    if not k or k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 1:
        return np.array([(n - 1) // 2], dtype=np.int64)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)  # spacing >= 1: distinct


def segment_times(start_frames: np.ndarray, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Start and end time in seconds of segments (the centre of their first and last frame + one hop)."""
    start = np.asarray(start_frames, dtype=np.float64) * cfg.hop_length / cfg.sample_rate
    return start, start + cfg.segment_seconds


# --------------------------------------------------------------------------------------------------
# From audio to segments


def _blocks(source, cfg: FeatureConfig, block_seconds: float) -> Iterator[np.ndarray]:
    if isinstance(source, (str, Path)):
        from .audio import iter_audio_blocks

        yield from iter_audio_blocks(source, cfg.sample_rate, block_seconds=block_seconds)
    else:
        y = np.asarray(source, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected a 1-D mono signal, got shape {y.shape}")
        step = max(1, int(block_seconds * cfg.sample_rate))
        for i in range(0, max(len(y), 1), step):
            yield y[i : i + step]


def iter_segment_batches(
    source: str | Path | np.ndarray,
    cfg: FeatureConfig,
    *,
    batch_size: int = 64,
    block_seconds: float = 30.0,
    frontend: MelFrontend | None = None,
    loudness: bool = False,
    only_starts: Iterable[int] | None = None,
) -> Iterator[Segments]:
    """Segments of a file (or a mono array at ``cfg.sample_rate``), in batches, with bounded memory.

    Only about ``batch_size + 1`` segments of spectrogram are held at once, so an hour of audio costs the
    same memory as a minute. Concatenating the batches equals ``segment(log_mel(y), cfg)``. ``frontend``:
    see :class:`LogMelStream`. ``loudness``: also set :attr:`Segments.loudness_db` (prediction leaves
    near-silent segments out; the feature store does not need it, so it does not pay for it).
    ``only_starts``: emit only the segments starting at these frames, plus always the clip's last segment
    (a stream whose length was only estimated still ends where it really ends); the spectrogram is still
    computed throughout, but nothing downstream (the model) sees the others.
    """
    wanted = None if only_starts is None else {int(s) for s in only_starts}
    length, hop = cfg.segment_frames, cfg.segment_hop
    stream = LogMelStream(cfg, frontend=frontend)
    frontend = stream.frontend
    held = np.zeros((cfg.n_mels, 0), dtype=np.float32)  # frames from `held_start` on
    held_start = 0  # clip frame index of held[:, 0]
    next_start = 0  # next regular segment start
    pending: list[np.ndarray] = []
    pending_starts: list[int] = []
    last_emitted = -1

    def batch(data: np.ndarray, starts: np.ndarray, pads: np.ndarray, n_frames: int) -> Segments:
        loud = segment_loudness(data, cfg, frontend) if loudness else None
        return Segments(data, starts, pads, n_frames, loud)

    def flush() -> Segments:
        nonlocal pending, pending_starts
        out = batch(np.stack(pending)[..., None], np.asarray(pending_starts, dtype=np.int64),
                    np.zeros(len(pending), dtype=np.int64), held_start + held.shape[1])
        pending, pending_starts = [], []
        return out

    def take_complete() -> Iterator[Segments]:
        nonlocal held, held_start, next_start, last_emitted
        while next_start + length <= held_start + held.shape[1]:
            if wanted is None or next_start in wanted:
                offset = next_start - held_start
                pending.append(held[:, offset : offset + length])
                pending_starts.append(next_start)
                last_emitted = next_start
            next_start += hop
            if len(pending) == batch_size:
                yield flush()
        # keep only what a later segment (regular or end-aligned) can still need
        keep_from = min(next_start, max(held_start, held_start + held.shape[1] - length))
        held = held[:, keep_from - held_start :].copy()
        held_start = keep_from

    for block in _blocks(source, cfg, block_seconds):
        held = np.concatenate([held, stream.push(block)], axis=1)
        yield from take_complete()
    held = np.concatenate([held, stream.finish()], axis=1)
    yield from take_complete()
    n_frames = held_start + held.shape[1]
    if n_frames < length:  # shorter than one segment: pad with silence, record the padding
        short = segment(held, cfg)
        yield batch(short.data, short.start_frames, short.pad_frames, n_frames)
        return
    end_start = n_frames - length
    if last_emitted < end_start:  # the hop did not land on the end (or that start was not wanted): the last one
        pending.append(held[:, end_start - held_start :])
        pending_starts.append(end_start)
    if pending:
        yield flush()


def extract_segments(source: str | Path | np.ndarray, cfg: FeatureConfig, **kwargs) -> Segments:
    """All segments of one file or mono array (at ``cfg.sample_rate``); streaming under the hood."""
    batches = list(iter_segment_batches(source, cfg, **kwargs))
    return concat_segments(batches)


def concat_segments(batches: Iterable[Segments]) -> Segments:
    """Join the batches of one clip back into one :class:`Segments`."""
    batches = list(batches)
    loudness = [b.loudness_db for b in batches]
    return Segments(
        np.concatenate([b.data for b in batches]).astype(np.float32, copy=False),
        np.concatenate([b.start_frames for b in batches]),
        np.concatenate([b.pad_frames for b in batches]),
        batches[-1].n_frames,
        None if any(x is None for x in loudness) else np.concatenate(loudness),
    )


def iter_selected_segments(
    read,
    start_frames: np.ndarray,
    n_frames: int,
    cfg: FeatureConfig,
    *,
    batch_size: int = 64,
    span_frames: int = 2048,
    frontend: MelFrontend | None = None,
) -> Iterator[Segments]:
    """Segments at chosen start frames, computed from windows of the signal only (a long file's spread).

    ``read(a, b)`` returns the signal's samples ``[a, b)`` at ``cfg.sample_rate`` as float32 of length
    ``b - a``, zeros outside the signal (``a`` may be negative); a segment then needs its frames' samples
    plus ``n_fft // 2`` on each side, nothing else, and its frames are computed exactly as
    :class:`LogMelStream` computes them, so they equal the whole-stream frames up to float rounding (and up
    to what ``read`` changes, e.g. a resampler started at the window). Nearby segments share one window of
    at most ``span_frames`` frames. Segments come in start order, in batches of ``batch_size``, with
    :attr:`Segments.loudness_db`; ``n_frames`` (the whole clip's frames) is recorded in each batch.
    """
    frontend = MelFrontend.for_config(cfg) if frontend is None else frontend
    length, hop, n_fft = cfg.segment_frames, cfg.hop_length, cfg.n_fft
    starts = np.unique(np.asarray(start_frames, dtype=np.int64))
    if starts.size and (starts[0] < 0 or starts[-1] + length > max(int(n_frames), length)):
        raise ValueError(f"segment starts must lie in [0, {int(n_frames) - length}], got {starts[0]}..{starts[-1]}")
    pending: list[np.ndarray] = []
    pending_starts: list[int] = []

    def flush() -> Segments:
        nonlocal pending, pending_starts
        data = np.stack(pending)[..., None]
        batch = Segments(data, np.asarray(pending_starts, dtype=np.int64), np.zeros(len(pending), dtype=np.int64),
                         int(n_frames), segment_loudness(data, cfg, frontend))
        pending, pending_starts = [], []
        return batch

    for span in _spans(starts, length, max(int(span_frames), length)):
        first, count = int(span[0]), int(span[-1]) + length - int(span[0])
        # frame t is centred on sample t * hop: n_fft // 2 samples before the first frame's centre
        a = first * hop - n_fft // 2
        y = np.asarray(read(a, a + (count - 1) * hop + n_fft), dtype=np.float32)
        spec = np.concatenate([
            _frames_to_db(np.lib.stride_tricks.sliding_window_view(
                y[i * hop : (i + min(1024, count - i) - 1) * hop + n_fft], n_fft)[::hop], cfg, frontend)
            for i in range(0, count, 1024)
        ], axis=1)
        for start in span:
            offset = int(start) - first
            pending.append(spec[:, offset : offset + length])
            pending_starts.append(int(start))
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()


def _spans(starts: np.ndarray, length: int, span_frames: int) -> Iterator[np.ndarray]:
    """Group sorted starts into windows: a segment joins the previous one's window when the gap between
    them is under half a segment (reading it costs less than a new window) and the window stays within
    ``span_frames`` frames."""
    group: list[int] = []
    for start in starts:
        if group and (start - group[-1] - length > length // 2 or start + length - group[0] > span_frames):
            yield np.asarray(group, dtype=np.int64)
            group = []
        group.append(int(start))
    if group:
        yield np.asarray(group, dtype=np.int64)


def n_segments_for(n_samples: int, cfg: FeatureConfig) -> int:
    """How many segments a signal of ``n_samples`` samples gives (without computing them)."""
    n_frames = 1 + n_samples // cfg.hop_length
    if n_frames <= cfg.segment_frames:
        return 1
    regular = 1 + (n_frames - cfg.segment_frames) // cfg.segment_hop
    return regular + int((n_frames - cfg.segment_frames) % cfg.segment_hop != 0)

