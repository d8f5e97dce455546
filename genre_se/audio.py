"""Decode any audio file to mono float32 at a target rate, whole or in bounded-memory blocks.

One decoding road serves everything: the file is decoded in fixed native-rate reads, each read is mixed
down to mono and fed through one streaming ``soxr`` resampler. :func:`load_audio` concatenates that stream
and :func:`iter_audio_blocks` re-cuts it into blocks, so both give bit-identical samples and an hour-long
file never has to sit in memory to be blocked.

Decoding uses libsndfile (via ``soundfile``: WAV, Sun/NeXT .au, AIFF, FLAC, Ogg Vorbis/Opus, MP3). A file
libsndfile rejects but whose extension names an audio format is retried with ``audioread`` (ffmpeg,
GStreamer or Python's own WAV/AIFF/AU readers, whichever is installed), which is how .m4a/.aac decode where
ffmpeg exists. Every failure is an :class:`~genre_se.errors.AudioError` whose message starts with the file.
A truncated file (a partial download) decodes what is there, and :func:`cut_short` tells it from a whole one by
the length its header still declares (:attr:`AudioInfo.declared_frames`); an MP3 whose middle is missing or
damaged, which libmpg123 would silently splice together, is an error (see :data:`_MPG123_RESYNCED`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError
from .quiet import native_stderr_captured, native_stderr_silenced

#: File extensions (lower case, no dot) that name audio formats genre-se tries to decode.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    "wav",
    "wave",
    "au",
    "snd",
    "aif",
    "aiff",
    "aifc",
    "flac",
    "ogg",
    "oga",
    "opus",
    "mp3",
    "m4a",
    "aac",
)

#: Extensions only an ``audioread`` backend (in practice ffmpeg) can decode; libsndfile cannot.
_FALLBACK_ONLY_EXTENSIONS = frozenset({"m4a", "aac"})

#: Native-rate frames decoded per read. Fixed (never derived from the block size) so that every
#: consumer of the stream sees the same reads and therefore bit-identical resampler output.
READ_FRAMES = 65536

#: soxr quality preset used everywhere ('HQ' is what librosa calls soxr_hq).
RESAMPLE_QUALITY = "HQ"

#: libsndfile formats whose seek is sample-exact. MP3 seeking in libsndfile/mpg123 is approximate, and
#: libsndfile 1.2.2 lands 14-16 samples off when it seeks into an Ogg stream's last page, so an offset into
#: an MP3 or an Ogg file is reached by decoding and discarding instead (tests/test_audio.py).
_EXACT_SEEK_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AU", "AIFF", "FLAC", "CAF"})

#: Seconds decoded before (and after) a window read by :class:`WindowReader`, so the resampler's start-up
#: (and end) transient lies outside the window. soxr HQ's transient is a few ms (tests: 10 ms already give
#: the whole-stream samples within 3e-7).
WINDOW_CONTEXT_SECONDS = 0.1

#: Largest sample magnitude accepted (240 dB above full scale). Float files hold any value, and integer PCM
#: stored as float without scaling reaches 2.1e9, which decodes fine (the features do not overflow below
#: about 1e15); but beyond about 2e16 a frame's float32 power spectrum overflows to infinity, so every such
#: file (a corrupt float file with one wild sample among them) got the same meaningless answer.
MAX_SAMPLE_MAGNITUDE = 1e12

#: libmpg123's note when it lost the frame sync inside the stream and found it again further on ("Note: Skipped
#: 38 bytes in input."): it dropped what lay between and joined the audio either side with no gap, so the file's
#: middle is missing or damaged (bytes cut out, a bad stretch overwritten). It is the only report of that splice:
#: the read succeeds, and a LAME/Xing header's frame count cannot tell a missing middle from a missing end. Not
#: printed for a healthy file (CBR, VBR, Xing/Info, ID3 tags, seeks), a truncated one, or tags and junk after the
#: last frame (those end "Hit end of (available) data during resync"). With "Giving up resync" the read fails.
_MPG123_RESYNCED = re.compile(r"Skipped (\d+) bytes in input")

#: Native frames a healthy file may decode short of the length its header declares before it counts as cut short.
#: An MP3 decoder trims the encoder's delay and padding (at most 576 + 529 + 1152 = 2257 frames) only where a LAME
#: tag says how many, and libmpg123 drops a last frame that is itself cut or damaged (1152 more): 4608, four
#: MPEG-1 Layer III frames, is more than the 3409 a healthy file loses at most that way (and over twice the delay
#: and padding alone; 0.1 s at 44.1 kHz; the exact formats lose nothing). A partial download loses far more.
#: Measured: every real clip and GTZAN clip decodes exactly its declared length (tests/test_whole_song.py).
TRUNCATION_SLACK_FRAMES = 4608

#: libsndfile's log line for a WAV, AU or AIFF whose data chunk claims more bytes than the file holds: it reads
#: what is there (``frames`` counts only that) and notes "data : 1058400 (should be 529178)". For an AIFF it
#: also notes the frame count its COMM chunk declares.
_LOG_DATA_TOO_LONG = re.compile(r"^\s*(?:data|Data Size|SSND)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_LOG_COMM_FRAMES = re.compile(r"Frame count read from 'COMM' chunk \((\d+)\) not equal")

#: Bytes per sample of the PCM encodings, whose declared data size divides into frames exactly.
_PCM_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
              "ULAW": 1, "ALAW": 1}

#: A data size at or above this (about 2 GiB) is a streaming writer's placeholder (ffmpeg writes 0xFFFFFFFF, others
#: 0x7FFFFFFF or 0x7FFFF000 when the output cannot seek back), not a length.
_PLACEHOLDER_DATA_BYTES = 0x7FFF0000


def _window_seek_formats() -> frozenset[str]:
    """Formats whose window reads may seek: the exact ones, and MP3 from libsndfile 1.1 on (mpg123's
    sample-accurate seek; checked against a sequential decode in tests/test_whole_song.py). Not OGG:
    libsndfile 1.2.2 lands 16 samples off when it seeks into a stream's last page, so an end window of an
    Ogg file would not be the stream's; Ogg files are streamed whole."""
    try:
        version = tuple(int(part) for part in sf.__libsndfile_version__.split(".")[:2])
    except (AttributeError, ValueError):  # pragma: no cover - an unusual soundfile build
        version = (0, 0)
    return (_EXACT_SEEK_FORMATS - {"OGG"}) | ({"MP3"} if version >= (1, 1) else set())


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about its audio (``frames`` is approximate for MP3).

    ``frames`` is what the decoder will read (libsndfile counts only the data a WAV, AU or AIFF file really
    holds). ``declared_frames`` is the length the header declares, where it declares one that can be trusted: the
    data size of a WAV, AU or AIFF header (more than ``frames`` when the file is cut short), FLAC's STREAMINFO, the
    frame count of an MP3's Xing/Info frame. None where nothing declares a length the decoding could fall short
    of: Ogg (its length is read from its last page), an MP3 without an Info frame (libmpg123 estimates its length
    from the file's size), a streaming writer's placeholder size, a file only audioread reads. Filled by
    :func:`audio_info`; the info of an open decoder leaves it None (decoding needs no declared length).
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float
    format: str
    declared_frames: int | None = None

    @property
    def declared_duration(self) -> float | None:
        """Seconds the header declares (None where it declares none that can be trusted)."""
        if self.declared_frames is None or self.sample_rate <= 0:
            return None
        return self.declared_frames / self.sample_rate


# --------------------------------------------------------------------------- public API


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header (no decoding where the format allows it).

    Raises
    ------
    AudioError
        The file is missing, a directory, empty, unreadable, not audio, or declares no samples.
    """
    checked = _check_path(path)
    with _open_decoder(checked) as decoder:
        return replace(decoder.info, declared_frames=decoder.declared_frames())


def load_audio(
    path: str | os.PathLike,
    sr: int | None = 22050,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode a file to a 1-D float32 mono signal at ``sr`` Hz.

    Parameters
    ----------
    path : str or PathLike
        Any file libsndfile (or an audioread backend) can decode.
    sr : int or None
        Target sample rate; ``None`` keeps the file's own rate.
    offset, duration : float
        Seconds (at the file's native rate) to skip, and to keep (``None``: to the end).

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n,)``; channels are averaged. Silence is valid, an empty result is not.

    Raises
    ------
    AudioError
        On any failure, with a message naming the file and the cause.
    """
    checked = _check_path(path)
    pieces = list(_mono_stream(checked, sr, offset, duration))
    if not pieces:
        raise AudioError(_no_samples_message(checked, offset))
    return np.concatenate(pieces)


def iter_audio_blocks(
    path: str | os.PathLike, sr: int | None = 22050, *, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Yield consecutive 1-D float32 mono blocks of ``block_seconds`` (the last may be shorter).

    The file is decoded and resampled incrementally, so memory stays bounded by one block plus one
    :data:`READ_FRAMES` read however long the file is (it never reads the whole file at once, e.g. with
    ``sf.read``). ``np.concatenate(list(iter_audio_blocks(p, sr)))`` equals ``load_audio(p, sr)`` exactly,
    because :func:`load_audio` concatenates the very same stream.

    Raises
    ------
    AudioError
        Path and argument problems at call time; decoding problems while iterating.
    """
    checked = _check_path(path)
    _check_sr(checked, sr)
    if not (isinstance(block_seconds, (int, float)) and math.isfinite(block_seconds) and block_seconds > 0):
        raise AudioError(
            f"{checked}: block_seconds must be a positive number of seconds, got {block_seconds!r}"
        )
    return _blocks_of(checked, sr, block_seconds)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a signal (1-D, or ``(frames, channels)``) with soxr at :data:`RESAMPLE_QUALITY`.

    Returns float32; the same rate returns a float32 copy.
    """
    for name, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if not _is_positive_int(rate):
            raise AudioError(f"resample: {name} must be a positive integer, got {rate!r}")
    signal = np.asarray(y, dtype=np.float32)
    if signal.ndim not in (1, 2):
        raise AudioError(f"resample: expected a 1-D or (frames, channels) array, got shape {signal.shape}")
    if orig_sr == target_sr or signal.shape[0] == 0:
        return signal.copy()
    return np.asarray(soxr.resample(signal, orig_sr, target_sr, quality=RESAMPLE_QUALITY), dtype=np.float32)


def cut_short(info: AudioInfo | None, decoded_seconds: float) -> bool:
    """Whether a file is cut short: the audio that decodes (``decoded_seconds``) ends more than
    :data:`TRUNCATION_SLACK_FRAMES` before the length its header declares (a partial download keeps the whole
    file's header). False where the header declares no length that can be trusted (``info.declared_frames``)."""
    if info is None or info.declared_frames is None or info.sample_rate <= 0:
        return False
    return info.declared_frames - decoded_seconds * info.sample_rate > TRUNCATION_SLACK_FRAMES


@contextmanager
def open_windows(path: str | os.PathLike, sr: int):
    """Open a file for window reads at ``sr`` Hz: a :class:`WindowReader`, or None when the file must be
    streamed instead (not a libsndfile format, no reliable seek, no frame count); closed on exit.

    Raises
    ------
    AudioError
        The path is missing, a directory, empty or unopenable.
    """
    checked = _check_path(path)
    _check_sr(checked, sr)
    try:
        with native_stderr_silenced():
            handle = sf.SoundFile(_sndfile_name(checked))
    except (sf.SoundFileError, RuntimeError, OSError, TypeError, ValueError):
        yield None  # not libsndfile's: the stream (audioread) reads it, or says why it cannot
        return
    with handle:
        reader = WindowReader(checked, _SoundFileDecoder(checked, handle), sr)
        yield reader if reader.seekable else None


class WindowReader:
    """Random access to a file's mono signal at a target rate: seek, decode a window, resample it.

    ``read(a, b)`` gives the samples ``[a, b)`` of the signal :func:`load_audio` would return (zeros outside
    it), decoding only the window plus :data:`WINDOW_CONTEXT_SECONDS` on each side. The resampler is
    started at a native frame that maps exactly onto an output sample (a multiple of
    ``native_sr / gcd(native_sr, sr)``), so after the context its output is the whole stream's within
    float rounding. Only :attr:`seekable` files can be read this way (libsndfile formats with a reliable
    seek and a frame count); the rest must be streamed.
    """

    def __init__(self, path: str, decoder, sr: int):
        self.path = path
        self.sr = int(sr)
        self.info: AudioInfo = decoder.info
        self._decoder = decoder
        self.seekable = (
            isinstance(decoder, _SoundFileDecoder)
            and self.info.format in _window_seek_formats()
            and bool(decoder._handle.seekable())
            and self.info.frames > 0
        )
        #: Frames that really decode: the header's count, or less for a truncated file (see _readable_frames)
        self.frames = self._readable_frames() if self.seekable else self.info.frames
        self.seekable = self.seekable and self.frames > 0
        native = self.info.sample_rate
        gcd = math.gcd(native, self.sr)
        self._native_step, self._out_step = native // gcd, self.sr // gcd
        self._context = 0 if native == self.sr else math.ceil(WINDOW_CONTEXT_SECONDS * self.sr)

    @property
    def n_samples(self) -> int:
        """Samples of the signal at ``sr`` (the resampled length of the frames that decode)."""
        return round(self.frames * self.sr / self.info.sample_rate)

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 samples ``[start, stop)`` at ``sr`` (``start`` may be negative); zeros outside the signal."""
        if not self.seekable:
            raise AudioError(f"{self.path}: cannot read windows of this file (format {self.info.format})")
        start, stop = int(start), int(stop)
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        lo = max(start - self._context, 0)
        lo -= lo % self._out_step  # an output sample that is exactly a native frame
        native_lo = lo // self._out_step * self._native_step
        if stop <= 0 or native_lo >= self.frames:
            return out
        native_hi = math.ceil((stop + self._context) * self._native_step / self._out_step) + 1
        # libmpg123 reports the bit reservoir a seek cut off ("part2_3_length too large"); the context absorbs it
        with native_stderr_silenced():
            pieces = list(self._native(native_lo, native_hi))
        y = np.concatenate(list(_resample_stream(iter(pieces), self.info.sample_rate, self.sr)) or [out[:0]])
        # y[k] is output sample lo + k
        first = max(start, lo)
        piece = y[first - lo : stop - lo]
        out[first - start : first - start + piece.size] = piece
        return out

    def _readable_frames(self) -> int:
        """The header's frame count if its last frame decodes, else where the data really ends.

        A truncated file (a partial download) keeps a header that claims the whole length: past the real end
        an MP3 seek still "succeeds" and reads nothing, so windows there would come back as zeros, counted as
        silent segments of a song that long. One read at the declared end checks it; only a file that fails it
        pays a bisection (about 20 seeks) and a short sequential read to the last frame.
        """
        declared = self.info.frames
        if self._decodes_at(declared - 1):
            return declared
        if not self._decodes_at(0):
            return 0
        good, bad = 0, declared - 1
        while bad - good > READ_FRAMES:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if self._decodes_at(middle) else (good, middle)
        end = good
        try:
            with native_stderr_silenced():
                for block in self._native(good, bad + 1):
                    end += block.shape[0]
        except _SplicedStream:
            raise
        except AudioError:  # a broken last frame (FLAC): the data ends where decoding stopped
            pass
        return end

    def _decodes_at(self, frame: int) -> bool:
        """Whether a frame decodes. The first probe (the declared end) walks an MP3's frames, so a stream spliced
        on the way raises :class:`_SplicedStream` here, as the sequential decode would."""
        try:
            with native_stderr_silenced():  # libmpg123 complains about the cut frame
                self._decoder._seek(frame)
                return self._decoder._read(1, frame).shape[0] > 0
        except _SplicedStream:
            raise
        except AudioError:
            return False

    def _native(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Mono native frames ``[start, stop)`` (fewer at the end of the file), in READ_FRAMES reads."""
        decoder = self._decoder
        position = decoder._seek(start)
        while position < stop:
            block = decoder._read(min(READ_FRAMES, stop - position), position)
            if block.shape[0] == 0:
                return
            position += block.shape[0]
            yield _downmix(self.path, block)


# --------------------------------------------------------------------------- the decoding road


def _blocks_of(path: str, sr: int | None, block_seconds: float) -> Iterator[np.ndarray]:
    """Generator behind :func:`iter_audio_blocks` (so argument errors there are raised eagerly)."""
    with _open_decoder(path) as decoder:
        out_sr = decoder.info.sample_rate if sr is None else sr
        block_len = max(1, int(round(block_seconds * out_sr)))
        produced_any = False
        for block in _rechunk(_decoded_mono(path, decoder, sr, 0.0, None), block_len):
            produced_any = True
            yield block
    if not produced_any:
        raise AudioError(_no_samples_message(path, 0.0))


def _mono_stream(path: str, sr: int | None, offset: float, duration: float | None) -> Iterator[np.ndarray]:
    """Open ``path`` and stream its mono, resampled window ``[offset, offset + duration)``."""
    _check_sr(path, sr)
    with _open_decoder(path) as decoder:
        yield from _decoded_mono(path, decoder, sr, offset, duration)


def _decoded_mono(
    path: str, decoder, sr: int | None, offset: float, duration: float | None
) -> Iterator[np.ndarray]:
    """Decoded, mixed-down, resampled pieces of an open decoder's window (the one shared road)."""
    native_sr = decoder.info.sample_rate
    start, stop = _frame_window(path, native_sr, offset, duration)
    mono = (_downmix(path, block) for block in decoder.blocks(start, stop))
    yield from _resample_stream(mono, native_sr, native_sr if sr is None else sr)


def _downmix(path: str, block: np.ndarray) -> np.ndarray:
    """Average ``(frames, channels)`` to ``(frames,)`` float32, refusing NaN/inf samples and samples beyond
    :data:`MAX_SAMPLE_MAGNITUDE`."""
    mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
    check_samples(path, mono)
    return mono


def check_samples(where: str, samples: np.ndarray) -> None:
    """Refuse NaN/inf samples and samples beyond :data:`MAX_SAMPLE_MAGNITUDE`: an AudioError naming ``where``
    (a file, or "array input")."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0  # one pass: NaN or inf anywhere shows in the max
    if not math.isfinite(peak):
        raise AudioError(f"{where}: contains non-finite samples (NaN or infinity)")
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(f"{where}: sample values up to {peak:.3g}, far beyond full scale (1.0): not audio at any "
                         "scale (corrupt float data)")


def _resample_stream(pieces: Iterable[np.ndarray], in_sr: int, out_sr: int) -> Iterator[np.ndarray]:
    """Feed pieces through one streaming soxr resampler (identity when the rates match)."""
    if in_sr == out_sr:
        yield from pieces
        return
    stream = soxr.ResampleStream(in_sr, out_sr, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    for piece in pieces:
        out = stream.resample_chunk(np.ascontiguousarray(piece, dtype=np.float32))
        if out.size:
            yield out
    tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
    if tail.size:
        yield tail


def _rechunk(pieces: Iterable[np.ndarray], block_len: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of 1-D pieces into new arrays of ``block_len`` (the last may be shorter)."""
    pending: list[np.ndarray] = []
    pending_len = 0
    for piece in pieces:
        while piece.size:
            take = min(block_len - pending_len, piece.size)
            pending.append(piece[:take])
            pending_len += take
            piece = piece[take:]
            if pending_len == block_len:
                yield np.concatenate(pending)
                pending, pending_len = [], 0
    if pending_len:
        yield np.concatenate(pending)


def _frame_window(path: str, native_sr: int, offset: float, duration: float | None) -> tuple[int, int | None]:
    """Native-rate ``[start, stop)`` frames for an offset/duration in seconds (``stop`` None: to EOF)."""
    if not (isinstance(offset, (int, float)) and math.isfinite(offset) and offset >= 0):
        raise AudioError(f"{path}: offset must be a finite number of seconds >= 0, got {offset!r}")
    start = int(round(offset * native_sr))
    if duration is None:
        return start, None
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise AudioError(f"{path}: duration must be a positive number of seconds or None, got {duration!r}")
    return start, start + max(1, int(round(duration * native_sr)))


# --------------------------------------------------------------------------- decoders


class _SplicedStream(AudioError):
    """An MP3 whose decoder skipped data mid-stream (see :data:`_MPG123_RESYNCED`); never a truncated file."""


def _resync_skip(notes: str) -> int | None:
    """Bytes libmpg123 skipped to find its way back into the stream, or None (also when it gave up: that read
    fails by itself, as a file that breaks off there)."""
    match = _MPG123_RESYNCED.search(notes.split("Giving up resync")[0])  # a splice before the give-up counts
    return None if match is None else int(match.group(1))


class _SoundFileDecoder:
    """libsndfile reader that decodes in :data:`READ_FRAMES` reads and reads MP3 to EOF."""

    def __init__(self, path: str, handle: sf.SoundFile):
        self._path = path
        self._handle = handle
        self.info = AudioInfo(
            path=path,
            sample_rate=int(handle.samplerate),
            channels=int(handle.channels),
            frames=int(handle.frames),
            duration=handle.frames / handle.samplerate if handle.samplerate > 0 else 0.0,
            format=str(handle.format),
        )

    def declared_frames(self) -> int | None:
        """The length the header declares (:func:`_declared_frames`): read for :func:`audio_info` only, not on
        every open (an MP3 costs a look at its first frame)."""
        return _declared_frames(self._path, self._handle)

    def blocks(self, start: int, stop: int | None) -> Iterator[np.ndarray]:
        """Yield ``(n, channels)`` float32 arrays for frames ``[start, stop)``."""
        seeks_exactly = self.info.format in _EXACT_SEEK_FORMATS
        if start and seeks_exactly and start >= self.info.frames:
            return  # these formats' frame counts are exact: the window lies past the end
        position = self._seek(start) if start and seeks_exactly else 0
        while stop is None or position < stop:
            want = READ_FRAMES if stop is None else min(READ_FRAMES, stop - position)
            block = self._read(want, position, locate=True)
            if block.shape[0] == 0:
                return
            first, position = position, position + block.shape[0]
            if position > start:  # decode-and-discard reaches an MP3 offset exactly
                yield block[max(0, start - first) :]

    def _seek(self, frame: int) -> int:
        # a seek forward makes libmpg123 walk the frames on the way: a splice there shows now (the window reader)
        with self._notes() as notes:
            try:
                position = int(self._handle.seek(frame))
            except (sf.SoundFileError, RuntimeError, OSError) as exc:
                raise AudioError(f"{self._path}: cannot seek to frame {frame} ({_reason(exc)})") from exc
        self._refuse_splice(notes)
        return position

    def _notes(self):
        """Capture fd 2 around a libmpg123 call (MP3 only): its notes are the only sign of a spliced stream."""
        return native_stderr_captured() if self.info.format == "MP3" else contextlib.nullcontext(None)

    def _refuse_splice(self, notes) -> None:
        """Raise :class:`_SplicedStream` if libmpg123 resynchronised mid-stream during the call ``notes`` watched."""
        skipped = None if notes is None else _resync_skip(notes.text)
        if skipped is None:
            return
        seconds = self._decodable_until(0, None) / self.info.sample_rate
        raise _SplicedStream(
            f"{self._path}: corrupt audio data after {seconds:.2f} s (the MP3 stream breaks off there and "
            f"resumes {skipped} bytes further on: part of the file is missing or damaged)"
        )

    def _read(self, frames: int, position: int, locate: bool = False) -> np.ndarray:
        """Decode up to ``frames`` frames at ``position``; an empty array means end of file.

        A failed read returns nothing, so the error knows only the block's start; ``locate`` (the sequential
        decode, not the window reader's probes) finds where decoding really stops, for the message."""
        out = np.empty((frames, self.info.channels), dtype=np.float32)
        # libmpg123 prints its resync notes to fd 2 mid-stream; the AudioError below says it once, in our words
        try:
            with self._notes() as notes:
                got = _readf_float(self._handle, out)
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            good = self._decodable_until(position, position + frames) if locate else position
            seconds = good / self.info.sample_rate
            raise AudioError(
                f"{self._path}: corrupt or truncated audio data after {seconds:.2f} s ({_reason(exc)})"
            ) from exc
        self._refuse_splice(notes)
        return out[:got]

    def _decodable_until(self, start: int, stop: int | None, step: int = 4096) -> int:
        """The frame in ``[start, stop)`` (``stop`` None: to the end) where decoding fails or an MP3 stream is
        spliced, to ``step`` frames, read on a fresh handle (MP3 from the beginning: its seeks are approximate);
        ``start`` when that cannot be found. The error path only."""
        position = start
        try:
            with native_stderr_silenced():
                handle = sf.SoundFile(_sndfile_name(self._path))
        except (sf.SoundFileError, RuntimeError, OSError, TypeError, ValueError):
            return start
        out = np.empty((step, self.info.channels), dtype=np.float32)
        with handle, native_stderr_silenced():
            try:
                exact = self.info.format in _EXACT_SEEK_FORMATS
                reached = int(handle.seek(start)) if start and exact else 0
                while stop is None or reached < stop:
                    with self._notes() as notes:
                        got = _readf_float(handle, out)
                    if got == 0 or (notes is not None and _resync_skip(notes.text) is not None):
                        break
                    reached += got
                    position = max(start, reached if stop is None else min(reached, stop))
            except (sf.SoundFileError, RuntimeError, OSError):
                pass
        return position


def _declared_frames(path: str, handle: sf.SoundFile) -> int | None:
    """The length the header declares, in frames (see :attr:`AudioInfo.declared_frames`), from what libsndfile
    read: its log of a data chunk longer than the file (WAV, AU, AIFF), else its frame count where that is the
    header's (the exact formats, FLAC, an MP3 with a Xing/Info frame count)."""
    frames, fmt = int(handle.frames), str(handle.format)
    if frames <= 0:
        return None
    try:
        log = handle.extra_info
    except (sf.SoundFileError, RuntimeError, AttributeError):  # pragma: no cover - an unusual soundfile build
        log = ""
    claimed = _LOG_DATA_TOO_LONG.search(log or "")
    if claimed is not None:
        declared_bytes, held_bytes = int(claimed.group(1)), int(claimed.group(2))
        if declared_bytes >= _PLACEHOLDER_DATA_BYTES or held_bytes <= 0:
            return None
        comm = _LOG_COMM_FRAMES.search(log)
        if comm is not None:  # AIFF: the frame count itself
            return int(comm.group(1))
        width = _PCM_BYTES.get(str(handle.subtype))
        if width is not None and fmt in ("WAV", "WAVEX", "AU"):
            return declared_bytes // (width * int(handle.channels))
        return round(frames * declared_bytes / held_bytes)  # compressed data (ADPCM...): the frames those bytes hold
    if fmt == "MP3":
        return frames if _mp3_counts_its_frames(path) else None
    return frames if fmt in _EXACT_SEEK_FORMATS else None


#: Side-information bytes between an MPEG audio Layer III frame's header and a Xing/Info tag:
#: (MPEG-1, mono) -> offset. MPEG-2 and 2.5 ("lsf") carry half as much.
_XING_OFFSET = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}


def _mp3_counts_its_frames(path: str) -> bool:
    """Whether an MP3's first frame is a Xing/Info frame holding a frame count: the only header from which
    libmpg123 takes an exact length. Without one (older CBR encoders, a Fraunhofer VBRI header, which libmpg123
    does not read) it estimates the length from the file's size and the first frame's bitrate, which for a VBR
    file can be far off either way. Neither libsndfile nor libmpg123 says which it did, so this looks: the ID3v2
    tag skipped, the first Layer III frame header within 64 KiB, the tag after its side information.
    Anything unexpected answers False (the length is then not trusted, so nothing is flagged)."""
    try:
        with open(path, "rb") as file:
            head = file.read(10)
            start = 0
            if len(head) == 10 and head[:3] == b"ID3":
                start = 10 + sum((b & 0x7F) << (21 - 7 * i) for i, b in enumerate(head[6:10]))
                start += 10 if head[5] & 0x10 else 0  # a footer
            file.seek(start)
            data = file.read(65536)
    except OSError:
        return False
    for at in range(len(data) - 4):
        b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
        # frame sync, Layer III, a bitrate index and a sample rate index that exist
        if (data[at] != 0xFF or b1 & 0xE0 != 0xE0 or (b1 >> 3) & 3 == 1 or (b1 >> 1) & 3 != 1 or b2 >> 4 in (0, 15)
                or (b2 >> 2) & 3 == 3):
            continue
        mpeg1, mono = (b1 >> 3) & 3 == 3, b3 >> 6 == 3
        tag = at + 4 + (0 if b1 & 1 else 2) + _XING_OFFSET[(mpeg1, mono)]  # 2 bytes of CRC when protected
        return data[tag : tag + 4] in (b"Xing", b"Info") and bool(data[tag + 7 : tag + 8] and data[tag + 7] & 1)
    return False


def _readf_float(handle: sf.SoundFile, out: np.ndarray) -> int:
    """Fill ``out`` from the current position; return the number of frames decoded.

    soundfile's public ``read`` re-seeks after every call (and trusts the header's frame count). For
    MP3 that re-seek is approximate in libsndfile 1.2, which corrupts chunked decoding, and header
    counts are estimates. So call ``sf_readf_float`` directly and check libsndfile's error state.
    """
    lib = getattr(sf, "_snd", None)
    ffi = getattr(sf, "_ffi", None)
    if lib is None or ffi is None:  # pragma: no cover - a future soundfile without these internals
        return handle.read(out=out).shape[0]
    pointer = ffi.cast("float *", ffi.from_buffer(out))
    got = int(lib.sf_readf_float(handle._file, pointer, out.shape[0]))
    if lib.sf_error(handle._file) != 0:
        reason = ffi.string(lib.sf_strerror(handle._file)).decode("utf-8", "replace")
        raise RuntimeError(_clean_reason(reason))
    return max(got, 0)


class _AudioreadDecoder:
    """Fallback for files libsndfile rejects: ``audioread`` yields 16-bit interleaved buffers."""

    def __init__(self, path: str, handle):
        self._path = path
        self._handle = handle
        sample_rate, channels = int(handle.samplerate), int(handle.channels)
        seconds = float(handle.duration or 0.0)
        self.info = AudioInfo(
            path=path,
            sample_rate=sample_rate,
            channels=channels,
            frames=int(round(seconds * sample_rate)),
            duration=seconds,
            format=Path(path).suffix.lstrip(".").upper() or "UNKNOWN",
        )

    def declared_frames(self) -> None:
        """audioread declares no length that can be trusted (see :attr:`AudioInfo.declared_frames`)."""
        return None

    def blocks(self, start: int, stop: int | None) -> Iterator[np.ndarray]:
        """Yield ``(n, channels)`` float32 arrays for frames ``[start, stop)`` (decode and discard)."""
        position = 0
        try:
            for buffer in self._handle:
                block = np.frombuffer(buffer, dtype="<i2").reshape(-1, self.info.channels)
                first, position = position, position + block.shape[0]
                lo = max(start - first, 0)
                hi = block.shape[0] if stop is None else min(stop - first, block.shape[0])
                if hi > lo:
                    yield block[lo:hi].astype(np.float32) / np.float32(32768.0)
                if stop is not None and position >= stop:
                    return
        except AudioError:
            raise
        except Exception as exc:  # audioread backends raise their own zoo of types
            raise AudioError(f"{self._path}: corrupt or truncated audio data ({_reason(exc)})") from exc


@contextmanager
def _open_decoder(path: str):
    """Open ``path`` with libsndfile, else (known audio extension) audioread; close it afterwards."""
    try:
        with native_stderr_silenced():  # libmpg123 notes on corrupt mp3
            handle = sf.SoundFile(_sndfile_name(path))
    except (sf.SoundFileError, RuntimeError, OSError, TypeError, ValueError) as exc:
        handle, sndfile_reason = None, _reason(exc)
        if "not a regular file" in sndfile_reason and Path(path).is_file():
            # libsndfile's words for a file whose content it cannot parse; the file itself is fine
            sndfile_reason = "unrecognised format or corrupt data"
    if handle is not None:
        with handle:
            decoder = _SoundFileDecoder(path, handle)
            _require_samples(decoder.info)
            yield decoder
        return
    with _open_fallback(path, sndfile_reason) as decoder:
        yield decoder  # its header duration may be unknown (0): emptiness shows when decoding ends


@contextmanager
def _open_fallback(path: str, sndfile_reason: str):
    """audioread for a known audio extension; otherwise (or if it fails too) an AudioError."""
    extension = Path(path).suffix.lstrip(".").lower()
    message = f"{path}: not a readable audio file ({sndfile_reason})"
    if extension not in AUDIO_EXTENSIONS:
        raise AudioError(message)
    try:
        import audioread

        handle = audioread.audio_open(path)
    except Exception as exc:  # NoBackendError, DecodeError subclasses, OSError, ...
        if extension in _FALLBACK_ONLY_EXTENSIONS:
            message = message[:-1] + f"; fallback decoder: {_fallback_reason(exc)})"
        raise AudioError(message) from exc
    try:
        yield _AudioreadDecoder(path, handle)
    finally:
        handle.close()


def _fallback_reason(exc: BaseException) -> str:
    if type(exc).__name__ == "NoBackendError":
        return "no ffmpeg or GStreamer decoder is installed"
    return str(exc).strip() or f"could not decode it ({type(exc).__name__})"


# --------------------------------------------------------------------------- checks and messages


def _check_path(path: str | os.PathLike) -> str:
    """Return ``path`` as a string after ruling out missing, directory, empty and unopenable files."""
    try:
        text = os.fspath(path)
    except TypeError as exc:
        raise AudioError(f"{path!r}: not a file path") from exc
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if os.path.isdir(text):
        raise AudioError(f"{text}: is a directory")
    if not os.path.exists(text):
        raise AudioError(f"{text}: file not found")
    try:
        status = os.stat(text)
        if not stat.S_ISREG(status.st_mode):  # a pipe's size reads 0, and open() of a named pipe can block
            raise AudioError(f"{text}: not a regular file (a pipe or a device); to pipe audio in, give the path "
                             "'-' and send it to standard input")
        size = status.st_size
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise AudioError(f"{text}: cannot be opened ({exc.strerror or exc})") from exc
    if size == 0:
        raise AudioError(f"{text}: empty file (0 bytes)")
    return text


def _sndfile_name(path: str) -> str | bytes:
    """The name libsndfile opens: on POSIX the file's own bytes, since soundfile encodes a str strictly as
    UTF-8 and a name that is not UTF-8 (``caf\\udce9.flac`` from an old Latin-1 archive) would fail."""
    return path if os.name == "nt" else os.fsencode(path)


def _check_sr(path: str, sr: int | None) -> None:
    if sr is not None and not _is_positive_int(sr):
        raise AudioError(f"{path}: sr must be a positive integer or None, got {sr!r}")


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _require_samples(info: AudioInfo) -> None:
    if info.frames <= 0 or info.sample_rate <= 0 or info.channels <= 0:
        raise AudioError(f"{info.path}: no audio samples (the header declares none; empty or truncated file)")


def _no_samples_message(path: str, offset: float) -> str:
    if offset:
        return f"{path}: no audio samples at or after offset {offset:g} s"
    return f"{path}: no audio samples"


def _reason(exc: BaseException) -> str:
    """libsndfile's own words where available, without soundfile's 'Error opening ...' prefix."""
    text = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    text = text or type(exc).__name__
    return _clean_reason(str(text))


def _clean_reason(text: str) -> str:
    return text.strip().rstrip(".").strip() or "unknown error"
