"""The built-in default corpus: short synthetic clips with real musical structure per genre.

The corpus lets ``dvc repro`` run end to end with no download and no large files in git. Each clip is
rendered by a small vectorised numpy synth (drum one-shots, wavetable oscillators with envelopes,
distortion and FFT filters) from a per-genre arrangement on a 16-step grid: a tempo range, drum
patterns, a bass line, a chord progression and instruments typical of the genre. Key, tempo, start
offset, instrument choice, mix levels, tone, noise and gain vary at random, and several genres share
instruments, so a classifier has to use rhythm and harmony as well as timbre.

Everything is drawn from one :class:`numpy.random.Generator` per clip, seeded from
``(seed, genre, clip index)``, so the corpus is byte-for-byte reproducible and growing
``corpus.clips_per_genre`` leaves the existing clips unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .config import DEFAULT_GENRES, CorpusConfig, Params
from .errors import ConfigError, DatasetError
from .fileio import atomic_dir, check_replaceable

#: Genres the synth knows; a clip's seed uses the genre's position here, so it does not depend on
#: which genres (or in which order) ``corpus.genres`` lists.
GENRES: tuple[str, ...] = tuple(DEFAULT_GENRES)

#: Tempo range (BPM) of each genre's clips.
TEMPO_BPM: dict[str, tuple[float, float]] = {
    "blues": (70, 120),
    "classical": (60, 100),
    "country": (100, 150),
    "disco": (110, 130),
    "hiphop": (80, 100),
    "jazz": (100, 180),
    "metal": (150, 200),
    "pop": (95, 125),
    "reggae": (60, 90),
    "rock": (110, 150),
}

#: File in the corpus folder that records the settings and marks the folder as ours to replace.
MARKER = ".genre-se-corpus"

_WHOLE_BAR = "X..............."
_TABLE_SIZE = 16384  # nearest-sample lookup in a table this long is about 75 dB clean
_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_QUALITIES = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10),
    "5": (0, 7, 12),
}


# --------------------------------------------------------------------------------------------------
# Signal helpers


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _response(freqs: np.ndarray, sr: int, low: float | None, high: float | None, order: int) -> np.ndarray:
    """Magnitude response of a Butterworth-shaped high-pass at ``low`` times a low-pass at ``high``."""
    gain = np.ones_like(freqs)
    if low:
        gain /= np.sqrt(1.0 + (low / np.maximum(freqs, 1e-3)) ** (2 * order))
    if high:
        gain /= np.sqrt(1.0 + (freqs / min(high, 0.49 * sr)) ** (2 * order))
    return gain


def _band(x: np.ndarray, sr: int, low: float | None = None, high: float | None = None, order: int = 2):
    """Zero-phase band filter in the frequency domain (cheap, no scipy)."""
    n_fft = 1 << (len(x) - 1).bit_length()  # a power of two: fast, and less wrap-around
    spectrum = np.fft.rfft(x, n_fft) * _response(np.fft.rfftfreq(n_fft, 1.0 / sr), sr, low, high, order)
    return np.fft.irfft(spectrum, n_fft)[: len(x)]


def _noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """Band-limited white noise with unit RMS; the band is clamped below Nyquist."""
    high = min(high, 0.45 * sr)
    low = min(low, 0.5 * high)
    x = _band(rng.standard_normal(max(n, 16)), sr, low, high)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _distort(x: np.ndarray, drive: float) -> np.ndarray:
    """Soft-clipping overdrive; ``drive`` around 2 is crunch, 20+ is metal."""
    peak = np.max(np.abs(x)) + 1e-12
    return np.tanh(drive * x / peak) / np.tanh(drive)


def _add(buffer: np.ndarray, x: np.ndarray, start: int) -> None:
    """Add ``x`` into ``buffer`` at sample ``start``, cropping whatever falls outside."""
    if start >= len(buffer) or start + len(x) <= 0:
        return
    lo = max(0, -start)
    hi = min(len(x), len(buffer) - start)
    buffer[start + lo : start + hi] += x[lo:hi]


# --------------------------------------------------------------------------------------------------
# Pitched instruments: band-limited wavetables with envelopes


def _table(amps: np.ndarray) -> np.ndarray:
    """One cycle of sum_h amps[h-1] sin(2 pi h x), sampled at ``_TABLE_SIZE`` points."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
    spectrum[1 : len(amps) + 1] = -0.5j * _TABLE_SIZE * np.asarray(amps)
    return np.fft.irfft(spectrum, _TABLE_SIZE)


def _osc(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read ``table`` at ``phase`` (in cycles, >= 0)."""
    return table[(phase * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)]


Spectrum = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Tone:
    """A pitched instrument: a body spectrum that sustains or decays and a bright attack spectrum."""

    body: Spectrum
    bright: Spectrum | None = None
    attack: float = 0.005
    tau: float = np.inf  # decay time constant of the body
    sustain: float = 1.0  # level the body decays to
    bright_tau: float = 0.1
    release: float = 0.05
    voices: int = 1
    detune_cents: float = 0.0
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # fraction of the frequency
    tremolo_hz: float = 0.0
    tremolo_depth: float = 0.0
    max_harmonics: int = 24
    tables: dict = field(default_factory=dict, compare=False, repr=False)  # (part, n harmonics) -> table

    def _table(self, part: str, n_harmonics: int) -> np.ndarray:
        key = (part, n_harmonics)
        if key not in self.tables:
            self.tables[key] = _table(getattr(self, part)(np.arange(1, n_harmonics + 1)))
        return self.tables[key]

    def play(self, midi: float, seconds: float, sr: int) -> np.ndarray:
        """Render one note held for ``seconds`` (plus its release tail)."""
        f0 = _midi_hz(midi)
        n = int((seconds + 4.0 * self.release) * sr)
        if self.sustain == 0.0:
            n = min(n, int(6.0 * self.tau * sr))  # silent (-52 dB) after that anyway
        n = max(n, 1)
        t = np.arange(n) / sr
        gate = np.ones(n)  # attack, release and tremolo: shared by the body and the bright attack
        n_attack = min(n, int(self.attack * sr))
        gate[:n_attack] = t[:n_attack] / self.attack
        n_held = int(seconds * sr)
        if n_held < n:
            gate[n_held:] *= np.exp(-(t[n_held:] - seconds) / self.release)
        if self.tremolo_depth:
            gate *= 1.0 - self.tremolo_depth * (0.5 + 0.5 * np.sin(2 * np.pi * self.tremolo_hz * t))
        n_harmonics = max(1, min(self.max_harmonics, int(0.45 * sr / f0)))  # band-limited: no aliasing
        body_table = self._table("body", n_harmonics)
        n_bright = min(n, int(5.0 * self.bright_tau * sr)) if self.bright else 0
        bright_table = self._table("bright", n_harmonics) if n_bright else None
        body = np.zeros(n)
        bright = np.zeros(n_bright)
        if self.vibrato_depth:
            cycles = np.cumsum(f0 * (1 + self.vibrato_depth * np.sin(2 * np.pi * self.vibrato_hz * t))) / sr
        else:
            cycles = f0 * t
        for v in range(self.voices):
            ratio = 2 ** (self.detune_cents * (v - (self.voices - 1) / 2) / 1200)
            phase = cycles * ratio + 0.37 * v
            body += _osc(body_table, phase)
            if n_bright:
                bright += _osc(bright_table, phase[:n_bright])
        if self.sustain < 1.0:
            body *= self.sustain + (1.0 - self.sustain) * np.exp(-t / self.tau)
        out = gate * body
        if n_bright:
            out[:n_bright] += gate[:n_bright] * np.exp(-t[:n_bright] / self.bright_tau) * bright
        return out / self.voices


def _saw(h):
    return 1.0 / h


def _instrument(kind: str, rng: np.random.Generator) -> _Tone:
    """Draw one instance of an instrument family (its exact timbre varies from clip to clip)."""
    if kind == "piano":
        roll = _u(rng, 1.8, 2.6)
        return _Tone(
            body=lambda h: h**-roll,
            bright=lambda h: 0.6 * h**-1.0 * np.exp(-h / 14),
            attack=0.003,
            tau=_u(rng, 0.6, 1.4),
            sustain=0.0,
            bright_tau=_u(rng, 0.08, 0.2),
            release=0.12,
            voices=1,
            detune_cents=_u(rng, 1, 4),
        )
    if kind == "epiano":
        return _Tone(
            body=lambda h: np.where(h == 1, 1.0, np.where(h == 2, 0.12, 0.0)),
            bright=lambda h: np.where(np.isin(h, (3, 7)), 0.25, 0.0),
            attack=0.004,
            tau=_u(rng, 0.8, 1.8),
            sustain=0.1,
            bright_tau=0.05,
            release=0.15,
            tremolo_hz=_u(rng, 3.5, 6),
            tremolo_depth=_u(rng, 0.1, 0.35),
        )
    if kind == "strings":
        return _Tone(
            body=lambda h: np.exp(-h / 12) / h,
            attack=_u(rng, 0.08, 0.3),
            release=_u(rng, 0.15, 0.35),
            voices=2,
            detune_cents=_u(rng, 5, 12),
            vibrato_hz=_u(rng, 4.5, 6.0),
            vibrato_depth=_u(rng, 0.002, 0.005),
        )
    if kind == "pad":
        return _Tone(
            body=_saw,
            attack=_u(rng, 0.02, 0.12),
            release=_u(rng, 0.1, 0.3),
            voices=2,
            detune_cents=_u(rng, 8, 20),
            max_harmonics=40,
        )
    if kind == "organ":
        bars = {1: 1.0, 2: _u(rng, 0.4, 0.9), 3: _u(rng, 0.2, 0.7), 4: _u(rng, 0.2, 0.5), 6: 0.25, 8: 0.2}
        return _Tone(
            body=lambda h: np.array([bars.get(int(k), 0.0) for k in h]),
            attack=0.006,
            release=0.03,
            tremolo_hz=_u(rng, 5.5, 7),
            tremolo_depth=_u(rng, 0.0, 0.25),
        )
    if kind == "pluck":  # steel-string guitar: plucked near the bridge, bright and twangy
        where = _u(rng, 0.08, 0.2)
        return _Tone(
            body=lambda h: h**-2.0,
            bright=lambda h: np.abs(np.sin(np.pi * h * where)) / h**0.7,
            attack=0.002,
            tau=_u(rng, 0.4, 1.0),
            sustain=0.0,
            bright_tau=_u(rng, 0.06, 0.2),
            release=0.05,
            max_harmonics=40,
        )
    if kind == "guitar":  # the clean signal that a track-level overdrive distorts
        return _Tone(body=lambda h: h**-1.2, attack=0.003, tau=_u(rng, 0.8, 2.0), sustain=0.3, release=0.04)
    if kind == "bass_synth":
        cutoff = _u(rng, 3, 9)
        return _Tone(body=lambda h: np.exp(-h / cutoff) / h, attack=0.004, tau=0.3, sustain=0.6, release=0.04)
    if kind == "bass_upright":
        return _Tone(
            body=lambda h: np.array([1.0, 0.6, 0.3, 0.15, 0.08, 0.04])[: len(h)],
            attack=0.01,
            tau=_u(rng, 0.3, 0.6),
            sustain=0.1,
            release=0.06,
            max_harmonics=6,
        )
    if kind == "bass_sub":
        return _Tone(body=lambda h: np.where(h == 1, 1.0, np.where(h == 2, 0.08, 0.0)), attack=0.01, release=0.08)
    if kind == "bass_pick":
        return _Tone(body=lambda h: h**-1.5, attack=0.003, tau=_u(rng, 0.3, 0.7), sustain=0.4, release=0.04)
    raise ValueError(f"unknown instrument {kind!r}")


# --------------------------------------------------------------------------------------------------
# Drum one-shots


def _kick(rng, sr, f_hi=(110, 170), f_lo=(42, 60), sweep=(0.02, 0.05), decay=(0.12, 0.3), click=(0.05, 0.3)):
    """Pitch-swept sine with a click: the frequency falls from ``f_hi`` to ``f_lo``."""
    d = _u(rng, *decay)
    n = int(5 * d * sr)
    t = np.arange(n) / sr
    low = _u(rng, *f_lo)
    freq = low + (_u(rng, *f_hi) - low) * np.exp(-t / _u(rng, *sweep))
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / d)
    return body + _u(rng, *click) * _noise(rng, n, sr, 1500, 8000) * np.exp(-t / 0.003)


def _snare(rng, sr, tone=(160, 250), decay=(0.07, 0.18), high=(5000, 10000), tone_mix=(0.2, 0.5)):
    """Noise burst (the wires) plus a short tone (the shell)."""
    d = _u(rng, *decay)
    n = int(5 * d * sr)
    t = np.arange(n) / sr
    mix = _u(rng, *tone_mix)
    wires = _noise(rng, n, sr, 700, _u(rng, *high)) * np.exp(-t / d)
    shell = np.sin(2 * np.pi * _u(rng, *tone) * t) * np.exp(-t / 0.04)
    return (1 - mix) * 0.5 * wires + mix * shell


def _clang(rng, sr, n, base):
    """The classic six-square-wave metallic cluster, for hats, rides and crashes."""
    t = np.arange(n) / sr
    ratios = np.array([1.0, 1.483, 1.932, 2.546, 2.63, 3.897])
    freqs = np.minimum(base * ratios * _u(rng, 0.9, 1.1), 0.4 * sr)
    return np.sign(np.sin(2 * np.pi * freqs[:, None] * t[None, :])).sum(axis=0) / 6


def _hat(rng, sr, decay=(0.02, 0.05)):
    """Closed (short ``decay``) or open (long) hi-hat: high-passed metal and noise."""
    d = _u(rng, *decay)
    n = int(5 * d * sr)
    t = np.arange(n) / sr
    raw = 0.5 * _clang(rng, sr, n, _u(rng, 300, 420)) + _noise(rng, n, sr, 5000, 14000)
    return _band(raw, sr, low=min(6500, 0.3 * sr)) * np.exp(-t / d)


def _ride(rng, sr, decay=(0.6, 1.4)):
    """Ride cymbal: a metallic ping with a long shimmer and a little bell."""
    d = _u(rng, *decay)
    n = int(3 * d * sr)
    t = np.arange(n) / sr
    shimmer = _band(_clang(rng, sr, n, _u(rng, 450, 650)) + 0.7 * _noise(rng, n, sr, 3000, 12000), sr, 2500)
    bell = np.sin(2 * np.pi * _u(rng, 2500, 3500) * t) * np.exp(-t / 0.25)
    return (0.6 * shimmer * np.exp(-t / d) + 0.3 * bell) * (0.4 + 0.6 * np.exp(-t / 0.03))


def _crash(rng, sr):
    d = _u(rng, 0.8, 1.8)
    n = int(3 * d * sr)
    t = np.arange(n) / sr
    raw = _clang(rng, sr, n, _u(rng, 350, 500)) + 1.5 * _noise(rng, n, sr, 2500, 14000)
    return _band(raw, sr, low=min(3000, 0.3 * sr)) * np.exp(-t / d)


def _clap(rng, sr):
    """Three quick noise bursts and a short tail."""
    n = int(0.3 * sr)
    t = np.arange(n) / sr
    env = np.exp(-t / _u(rng, 0.05, 0.1))
    for k in range(3):
        env += (t >= 0.011 * k) * np.exp(-np.maximum(t - 0.011 * k, 0) / 0.004) * 2
    return _noise(rng, n, sr, 900, 5000) * env * 0.4


def _rim(rng, sr):
    """Rimshot / cross-stick: a short high knock (the reggae one-drop snare)."""
    n = int(0.12 * sr)
    t = np.arange(n) / sr
    knock = np.sin(2 * np.pi * _u(rng, 400, 600) * t) + 0.6 * np.sin(2 * np.pi * _u(rng, 1500, 2000) * t)
    return knock * np.exp(-t / 0.02) + 0.3 * _noise(rng, n, sr, 2000, 9000) * np.exp(-t / 0.01)


def _brush(rng, sr):
    """Brush on a snare: soft, slow-attack noise."""
    n = int(0.4 * sr)
    t = np.arange(n) / sr
    return _noise(rng, n, sr, 1500, 7000) * np.minimum(t / 0.015, 1) * np.exp(-t / 0.08) * 0.5


# --------------------------------------------------------------------------------------------------
# Arrangement: a 16-step grid with swing, rubato and human timing


def _steps(pattern: str) -> np.ndarray:
    """``"X.x.o..."`` -> per-step velocity (X accent, x normal, o ghost, . rest)."""
    return np.array([{"X": 1.0, "x": 0.7, "o": 0.4, ".": 0.0}[c] for c in pattern])


def _place(pitch_class: int, lowest: int) -> int:
    """The lowest MIDI note with ``pitch_class`` at or above ``lowest``."""
    return lowest + (pitch_class - lowest) % 12


def _chord(key: int, degree: int, quality: str, lowest: int) -> list[int]:
    root = _place(key + degree, lowest)
    return [root + i for i in _QUALITIES[quality]]


class _Song:
    """Collects drum hits and notes on a 16-step-per-bar grid and mixes them into one clip.

    The clip starts at a random point of the first bar; the render buffer has room before the clip so
    that notes and cymbals begun before it ring into it.
    """

    def __init__(self, rng, seconds, sr, bpm, swing=0.5, rubato=0.0, jitter=0.004):
        self.rng, self.seconds, self.sr, self.bpm = rng, seconds, sr, bpm
        self.beat = 60.0 / bpm
        self.swing = swing  # where the off-beat 8th falls within the beat (0.5 straight, 2/3 shuffle)
        self.rubato = rubato  # peak fractional tempo deviation
        self.rubato_period = _u(rng, 6, 12)  # beats
        self.rubato_phase = _u(rng, 0, 2 * np.pi)
        self.jitter = jitter
        self.offset = _u(rng, 0, 4 * self.beat)
        self.n_bars = int(np.ceil((seconds + self.offset) / (4 * self.beat * (1 - rubato)))) + 1
        self.pad = int(2.0 * sr)
        self.n = int(round(seconds * sr))
        self.layers: list[np.ndarray] = []

    # -- time ---------------------------------------------------------------------------------
    def clock(self, steps) -> np.ndarray:
        """Seconds from the clip start of (fractional) grid ``steps``, with swing and rubato."""
        beats = np.asarray(steps, dtype=float) / 4.0
        whole = np.floor(beats)
        frac = beats - whole
        r = self.swing
        warped = np.where(frac < 0.5, frac * 2 * r, r + (frac - 0.5) * 2 * (1 - r))
        b = whole + warped
        amp = self.rubato * self.beat * self.rubato_period / (2 * np.pi)
        wobble = amp * (np.sin(2 * np.pi * b / self.rubato_period + self.rubato_phase) - np.sin(self.rubato_phase))
        return b * self.beat + wobble - self.offset

    def times(self, steps) -> np.ndarray:
        steps = np.asarray(steps, dtype=float)
        return self.clock(steps) + self.rng.normal(0.0, self.jitter, steps.shape)

    def pattern(self, variants: list[str], p_alt=0.25, vel_jitter=0.15):
        """Absolute steps and velocities: one variant per bar (mostly the first), humanised."""
        steps, vels = [], []
        for bar in range(self.n_bars):
            pick = 0 if len(variants) == 1 or self.rng.random() > p_alt else self.rng.integers(1, len(variants))
            v = _steps(variants[pick])
            on = np.nonzero(v)[0]
            steps.append(bar * len(v) + on)
            vels.append(v[on])
        vel = np.concatenate(vels)
        vel = vel * self.rng.uniform(1 - vel_jitter, 1, len(vel))
        return np.concatenate(steps).astype(float), vel

    # -- layers -------------------------------------------------------------------------------
    def hits(self, shot: np.ndarray, steps_vels, level_db: float) -> None:
        steps, vels = steps_vels
        buffer = np.zeros(self.pad + self.n)
        starts = np.round(self.times(steps) * self.sr).astype(np.int64) + self.pad
        for start, vel in zip(starts, vels):
            _add(buffer, vel * shot, start)
        self._layer(buffer, level_db)

    def notes(self, tone: _Tone, notes, level_db: float, fx=None, strum=0.0) -> None:
        """``notes``: (step, length in steps, [midi pitches], velocity); ``fx`` maps the track buffer.

        Repeated notes (same pitch and length) are rendered once: riffs and bass lines repeat a lot.
        """
        buffer = np.zeros(self.pad + self.n)
        if notes:
            steps = np.array([note[0] for note in notes], dtype=float)
            lengths = np.array([note[1] for note in notes], dtype=float)
            starts = self.times(steps)
            held = np.round((self.clock(steps + lengths) - self.clock(steps)) * self.sr).astype(int)
            rendered: dict[tuple, np.ndarray] = {}
            for (_, _, pitches, vel), start, n_held in zip(notes, starts, held):
                if start > self.seconds or vel <= 0:
                    continue
                for k, midi in enumerate(pitches):
                    key = (midi, n_held)
                    if key not in rendered:
                        rendered[key] = tone.play(midi, n_held / self.sr, self.sr)
                    at = int(round((start + k * strum) * self.sr)) + self.pad
                    _add(buffer, (vel / np.sqrt(len(pitches))) * rendered[key], at)
        if fx is not None:
            buffer = fx(buffer)
        self._layer(buffer, level_db)

    def _layer(self, buffer, level_db):
        clip = buffer[self.pad : self.pad + self.n]
        peak = np.max(np.abs(clip))
        if peak > 0:
            self.layers.append(clip * (10 ** (level_db / 20) / peak))

    def mix(self) -> np.ndarray:
        """Sum the layers, then a random tone (EQ), hiss and gain; the peak ends at most 0.9.

        EQ and hiss are applied in one trip through the frequency domain, the costliest step here.
        """
        rng, sr, n = self.rng, self.sr, self.n
        out = np.sum(self.layers, axis=0) if self.layers else np.zeros(n)
        spectrum = np.fft.rfft(out)
        freqs = np.fft.rfftfreq(n, 1.0 / sr)
        spectrum *= _response(freqs, sr, low=_u(rng, 20, 60), high=_u(rng, 0.2, 0.45) * sr, order=1)
        signal_rms = np.sqrt(2.0 * np.sum(np.abs(spectrum) ** 2)) / n + 1e-9  # Parseval
        hiss_shape = np.ones_like(freqs)
        if rng.random() < 0.5:  # darker, pink-ish hiss
            hiss_shape = _response(freqs, sr, None, _u(rng, 1000, 4000), order=1)
            hiss_shape /= np.sqrt(np.mean(hiss_shape**2))
        white = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))  # unit variance in time
        spectrum += white * np.sqrt(n / 2) * hiss_shape * signal_rms * 10 ** (-_u(rng, 25, 45) / 20)
        out = np.fft.irfft(spectrum, n)
        peak = np.max(np.abs(out)) + 1e-12
        return (out * (0.9 * 10 ** (-_u(rng, 0, 6) / 20) / peak)).astype(np.float32)


def _chords_per_bar(song, key, progression, lowest, start=0):
    """The chord (MIDI pitches) and root pitch class of every bar."""
    chords = []
    for bar in range(song.n_bars):
        degree, quality = progression[(bar + start) % len(progression)]
        chords.append((_chord(key, degree, quality, lowest), (key + degree) % 12, quality))
    return chords


def _comp(chords, rhythm: str, length: float, vel=0.8):
    """Play each bar's chord on the steps of ``rhythm`` for ``length`` steps."""
    accents = _steps(rhythm)
    return [
        (bar * 16 + s, length, pitches, vel * accents[s])
        for bar, (pitches, _, _) in enumerate(chords)
        for s in np.nonzero(accents)[0]
    ]


def _bass_line(chords, steps_intervals, lowest, length, vel=0.9):
    """Per bar, bass notes at the given steps, as intervals above the bar's root."""
    notes = []
    for bar, (_, root, _) in enumerate(chords):
        base = _place(root, lowest)
        for step, interval in steps_intervals:
            notes.append((bar * 16 + step, length, [base + interval], vel))
    return notes


def _melody(rng, chords, key, scale, rhythm: str, lowest, length_scale=1.0, vel=0.8):
    """A stepwise random-walk tune in the key that lands on a chord tone at each bar start."""
    pool = np.array([p for p in range(lowest, lowest + 19) if (p - key) % 12 in scale])
    on = np.nonzero(_steps(rhythm))[0]
    gaps = np.diff(np.append(on, 16))
    idx = len(pool) // 2
    notes = []
    for bar, (_, root, quality) in enumerate(chords):
        for s, gap in zip(on, gaps):
            idx = int(np.clip(idx + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(pool) - 1))
            if s == 0:
                tones = {(root + i) % 12 for i in _QUALITIES[quality]}
                near = [j for j in range(len(pool)) if pool[j] % 12 in tones]
                idx = min(near, key=lambda j: abs(j - idx))
            notes.append((bar * 16 + s, gap * length_scale, [int(pool[idx])], vel))
    return notes


# --------------------------------------------------------------------------------------------------
# Genres


def _song(genre, rng, seconds, sr, **timing) -> _Song:
    return _Song(rng, seconds, sr, _u(rng, *TEMPO_BPM[genre]), **timing)


def _blues(rng, seconds, sr):
    """12-bar shuffle (swung 8ths, 12/8 feel), dominant 7ths, boogie bass, optional bluesy lead."""
    song = _song("blues", rng, seconds, sr, swing=_u(rng, 0.64, 0.7), jitter=0.006)
    key = int(rng.integers(12))
    twelve_bar = [0, 5 if rng.random() < 0.5 else 0, 0, 0, 5, 5, 0, 0, 7, 5, 0, 7]
    start = int(rng.choice([0, 4, 8]))
    chords = _chords_per_bar(song, key, [(d, "7") for d in twelve_bar], 50, start=start)
    kick = song.pattern(["X.......X.......", "X.......X.....x."])
    song.hits(_kick(rng, sr, decay=(0.15, 0.3)), kick, _u(rng, -5, -2))
    song.hits(_snare(rng, sr), song.pattern(["....X.......X...", "....X.......X.o."]), _u(rng, -6, -3))
    top = _ride(rng, sr) if rng.random() < 0.4 else _hat(rng, sr)
    song.hits(top, song.pattern(["X.x.X.x.X.x.X.x."]), _u(rng, -14, -8))
    boogie = [(0, 0), (2, 4), (4, 7), (6, 9), (8, 10), (10, 9), (12, 7), (14, 4)]
    bass = _instrument(rng.choice(["bass_upright", "bass_pick"]), rng)
    song.notes(bass, _bass_line(chords, boogie, 36, 1.8), _u(rng, -4, -1))
    kind = rng.choice(["guitar", "organ", "piano"])
    rhythm = rng.choice(["..x...x...x...x.", "X.x.X.x.X.x.X.x.", _WHOLE_BAR])
    drive = _u(rng, 2, 5)
    fx = (lambda b: _distort(b, drive)) if kind == "guitar" else None
    comp = _comp(chords, rhythm, 16 if rhythm == _WHOLE_BAR else 1.5)
    song.notes(_instrument(kind, rng), comp, _u(rng, -7, -3), fx=fx)
    if rng.random() < 0.6:
        lead = _melody(rng, chords, key, (0, 3, 5, 6, 7, 10), "X...x.x...X.....", 62)
        kind = rng.choice(["guitar", "piano"])
        fx = (lambda b: _distort(b, 3)) if kind == "guitar" else None
        song.notes(_instrument(kind, rng), lead, _u(rng, -9, -5), fx=fx)
    return song, key, "major"


def _classical(rng, seconds, sr):
    """No drums: sustained strings and/or Alberti-bass piano under a tune, with rubato."""
    song = _song("classical", rng, seconds, sr, rubato=_u(rng, 0.08, 0.25), jitter=0.012)
    key = int(rng.integers(12))
    minor = rng.random() < 0.5
    if minor:
        progs = [[(0, "min"), (5, "min"), (7, "maj"), (0, "min")], [(0, "min"), (8, "maj"), (5, "min"), (7, "7")]]
    else:
        progs = [[(0, "maj"), (5, "maj"), (7, "maj"), (0, "maj")], [(0, "maj"), (9, "min"), (2, "min"), (7, "7")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 55)
    texture = rng.choice(["strings", "piano", "both"])
    if texture in ("strings", "both"):
        strings = _instrument("strings", rng)
        song.notes(strings, _comp(chords, _WHOLE_BAR, 16.5), _u(rng, -6, -3))
        song.notes(strings, _bass_line(chords, [(0, 0), (8, 0)], 36, 8.5), _u(rng, -6, -3))
    if texture in ("piano", "both"):
        piano = _instrument("piano", rng)
        alberti = [(s, (0, 2, 1, 2)[(s // 2) % 4]) for s in range(0, 16, 2)]
        arpeggio = [
            (bar * 16 + s, 2.5, [pitches[min(i, len(pitches) - 1)]], 0.5)
            for bar, (pitches, _, _) in enumerate(chords)
            for s, i in alberti
        ]
        song.notes(piano, arpeggio, _u(rng, -8, -4))
        song.notes(piano, _bass_line(chords, [(0, 0), (8, 7)], 36, 7.5), _u(rng, -8, -4))
    lead = _instrument("strings" if texture == "strings" else rng.choice(["piano", "strings"]), rng)
    rhythm = rng.choice(["X.......x.......", "X...x...x...x...", "X.....x.x...x..."])
    song.notes(lead, _melody(rng, chords, key, _MINOR if minor else _MAJOR, rhythm, 67), _u(rng, -4, -1))
    return song, key, "minor" if minor else "major"


def _country(rng, seconds, sr):
    """Train beat (brushed 16ths) or two-beat, boom-chick bass, strummed and twangy plucked guitar."""
    song = _song("country", rng, seconds, sr, jitter=0.004)
    key = int(rng.integers(12))
    progs = [[(0, "maj"), (5, "maj"), (0, "maj"), (7, "maj")], [(0, "maj"), (0, "maj"), (7, "maj"), (0, "maj")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 52)
    song.hits(_kick(rng, sr, decay=(0.1, 0.2)), song.pattern(["X.......X......."]), _u(rng, -5, -2))
    if rng.random() < 0.6:
        song.hits(_brush(rng, sr), song.pattern(["xooxXooxxooxXoox"]), _u(rng, -7, -3))
    else:
        song.hits(_snare(rng, sr), song.pattern(["....X.......X..."]), _u(rng, -7, -3))
        song.hits(_hat(rng, sr), song.pattern(["x.x.x.x.x.x.x.x."]), _u(rng, -14, -9))
    song.notes(_instrument("bass_pick", rng), _bass_line(chords, [(0, 0), (8, -5)], 40, 6), _u(rng, -4, -1))
    strum = _instrument(rng.choice(["pluck", "pluck", "piano"]), rng)
    song.notes(strum, _comp(chords, "....X.......X...", 3), _u(rng, -6, -3), strum=_u(rng, 0.008, 0.02))
    rhythm = rng.choice(["X.x.x.x.X.x.x.x.", "X...x.x.X...x..."])
    twang = _melody(rng, chords, key, (0, 2, 4, 7, 9), rhythm, 64)
    song.notes(_instrument("pluck", rng), twang, _u(rng, -6, -2))
    return song, key, "major"


def _disco(rng, seconds, sr):
    """Four-on-the-floor, open hats on the off-beats, octave bass, strings or guitar chucks."""
    song = _song("disco", rng, seconds, sr, jitter=0.002)
    key = int(rng.integers(12))
    progs = [[(0, "m7"), (5, "m7")], [(0, "m7"), (10, "maj"), (8, "maj7"), (7, "min")], [(0, "maj7"), (2, "m7")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 55)
    song.hits(_kick(rng, sr, decay=(0.12, 0.22)), song.pattern(["X...X...X...X..."]), _u(rng, -4, -1))
    backbeat = _clap(rng, sr) if rng.random() < 0.5 else _snare(rng, sr)
    song.hits(backbeat, song.pattern(["....X.......X..."]), _u(rng, -7, -4))
    song.hits(_hat(rng, sr, decay=(0.12, 0.25)), song.pattern(["..X...X...X...X."]), _u(rng, -10, -6))
    song.hits(_hat(rng, sr), song.pattern(["x.x.x.x.x.x.x.x.", "xxxxxxxxxxxxxxxx"]), _u(rng, -17, -12))
    octaves = [(s, 0 if (s // 2) % 2 == 0 else 12) for s in range(0, 16, 2)]
    bass = _instrument(rng.choice(["bass_synth", "bass_pick"]), rng)
    song.notes(bass, _bass_line(chords, octaves, 33, 1.6), _u(rng, -4, -1))
    if rng.random() < 0.5:
        song.notes(_instrument("strings", rng), _comp(chords, _WHOLE_BAR, 16), _u(rng, -9, -5))
    else:
        song.notes(_instrument("pluck", rng), _comp(chords, ".xx..xx..xx..xx.", 0.6), _u(rng, -9, -5))
    if rng.random() < 0.6:
        song.notes(_instrument("pad", rng), _comp(chords, _WHOLE_BAR, 16), _u(rng, -12, -8))
    return song, key, "minor"


def _hiphop(rng, seconds, sr):
    """Boom-bap: sparse booming kick, hard backbeat, lazy hats, sub bass on the kicks, lo-fi keys loop."""
    song = _song("hiphop", rng, seconds, sr, swing=_u(rng, 0.5, 0.6), jitter=0.006)
    key = int(rng.integers(12))
    progs = [[(0, "m7"), (8, "maj7")], [(0, "m7"), (5, "m7")], [(0, "m7"), (0, "m7"), (3, "maj7"), (10, "maj")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 52)
    kicks = ["X......x..X.....", "X.........X..x..", "X......X.X......"]
    first = int(rng.integers(len(kicks)))
    kicks = [kicks[first]] + kicks[:first] + kicks[first + 1 :]
    boom = _kick(rng, sr, f_lo=(40, 52), decay=(0.25, 0.45), click=(0.1, 0.4))
    song.hits(boom, song.pattern(kicks, p_alt=0.2), _u(rng, -3, -1))
    backbeat = _clap(rng, sr) if rng.random() < 0.4 else _snare(rng, sr, decay=(0.1, 0.2))
    song.hits(backbeat, song.pattern(["....X.......X..."]), _u(rng, -5, -2))
    song.hits(_hat(rng, sr), song.pattern(["x.x.x.x.x.x.x.x.", "x.x.x.x.x.xxx.x."]), _u(rng, -15, -10))
    sub = [(s, 0) for s in np.nonzero(_steps(kicks[0]))[0]]
    song.notes(_instrument("bass_sub", rng), _bass_line(chords, sub, 28, 3.5), _u(rng, -3, 0))
    lofi = _u(rng, 2500, 5000)
    keys = _instrument(rng.choice(["epiano", "piano", "strings"]), rng)
    loop = _comp(chords, rng.choice(["X.......X.......", _WHOLE_BAR]), 7)
    song.notes(keys, loop, _u(rng, -10, -6), fx=lambda b: _band(b, sr, 150, lofi))
    return song, key, "minor"


def _jazz(rng, seconds, sr):
    """Swung ride (ding, ding-da), hi-hat on 2 and 4, walking bass, ii-V-I 7th chords comped."""
    song = _song("jazz", rng, seconds, sr, swing=_u(rng, 0.6, 0.68), jitter=0.007)
    key = int(rng.integers(12))
    progs = [[(2, "m7"), (7, "7"), (0, "maj7"), (9, "7")], [(2, "m7"), (7, "7"), (0, "maj7"), (0, "maj7")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 53)
    song.hits(_ride(rng, sr), song.pattern(["X...x.x.X...x.x."], vel_jitter=0.25), _u(rng, -6, -3))
    song.hits(_hat(rng, sr, decay=(0.02, 0.04)), song.pattern(["....x.......x..."]), _u(rng, -16, -11))
    if rng.random() < 0.6:  # feathered kick
        feather = _kick(rng, sr, f_hi=(90, 120), decay=(0.15, 0.3))
        song.hits(feather, song.pattern(["o...o...o...o..."]), _u(rng, -16, -10))
    ghosts = ["..........o.....", "......o.......o.", "...............o", "..o.......o....."]
    snare = _brush(rng, sr) if rng.random() < 0.5 else _snare(rng, sr)
    song.hits(snare, song.pattern(ghosts, p_alt=0.8), _u(rng, -16, -10))
    walking = []
    for bar, (_, root, quality) in enumerate(chords):
        base = _place(root, 36)
        approach = _place(chords[(bar + 1) % len(chords)][1], 36) + rng.choice([-1, 1])
        line = [base, base + _QUALITIES[quality][1], base + 7, approach]  # root, 3rd, 5th, approach note
        if rng.random() < 0.5:
            line[1:3] = [base + 7, base + _QUALITIES[quality][3]]  # root, 5th, 7th, approach note
        walking += [(bar * 16 + 4 * k, 3.6, [int(p)], 0.85) for k, p in enumerate(line)]
    song.notes(_instrument("bass_upright", rng), walking, _u(rng, -3, 0))
    charleston = _steps(rng.choice(["X.....x.........", "......x.......x.", "X.......x......."]))
    comp = [  # rootless voicings: 3rd, 5th, 7th and the 9th
        (bar * 16 + s, 1.8, pitches[1:] + [pitches[0] + 14], 0.6 * charleston[s])
        for bar, (pitches, _, _) in enumerate(chords)
        for s in np.nonzero(charleston)[0]
    ]
    song.notes(_instrument(rng.choice(["piano", "epiano"]), rng), comp, _u(rng, -8, -4))
    return song, key, "major"


def _metal(rng, seconds, sr):
    """Fast double kick, blast or backbeat snare, palm-muted chugs of heavily distorted power chords."""
    song = _song("metal", rng, seconds, sr, jitter=0.002)
    key = int(rng.integers(12))
    progs = [
        [(0, "5"), (0, "5"), (1, "5"), (0, "5")],
        [(0, "5"), (8, "5"), (10, "5"), (0, "5")],
        [(0, "5"), (3, "5"), (1, "5"), (0, "5")],
    ]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 38)
    double = _kick(rng, sr, f_hi=(130, 200), decay=(0.06, 0.12), click=(0.4, 0.8))
    song.hits(double, song.pattern(["XxXxXxXxXxXxXxXx", "X.X.X.X.X.X.X.X."], p_alt=0.3), _u(rng, -4, -1))
    snare = _snare(rng, sr, decay=(0.08, 0.15))
    song.hits(snare, song.pattern(["....X.......X...", "..X...X...X...X."], p_alt=0.3), _u(rng, -4, -1))
    if rng.random() < 0.5:
        song.hits(_hat(rng, sr, decay=(0.04, 0.1)), song.pattern(["X.x.X.x.X.x.X.x."]), _u(rng, -12, -8))
    else:
        song.hits(_ride(rng, sr, decay=(0.3, 0.6)), song.pattern(["X...X...X...X..."]), _u(rng, -12, -8))
    song.hits(_crash(rng, sr), song.pattern([_WHOLE_BAR, "................"], p_alt=0.5), _u(rng, -10, -6))
    chug = _steps(rng.choice(["XxxxXxxxXxXxXxxx", "XxxXxxXxXxxXxxXx", "XxXxXxXxXxXxXxXx"]))
    riff = [  # accents ring, the rest is palm-muted
        (bar * 16 + s, 4 if chug[s] == 1.0 else 0.7, pitches, 1.0)
        for bar, (pitches, _, _) in enumerate(chords)
        for s in np.nonzero(chug)[0]
    ]
    drive, cabinet = _u(rng, 15, 40), _u(rng, 4000, 6500)
    guitar_fx = lambda b: _band(_distort(b, drive), sr, 80, cabinet)  # noqa: E731
    song.notes(_instrument("guitar", rng), riff, _u(rng, -2, 0), fx=guitar_fx)
    bass = [(step, 0.7, [pitches[0] - 12], vel) for step, _, pitches, vel in riff]
    song.notes(_instrument("bass_pick", rng), bass, _u(rng, -6, -3), fx=lambda b: _distort(b, 3))
    return song, key, "minor"


def _pop(rng, seconds, sr):
    """Steady backbeat, bright detuned-saw pads on I-V-vi-IV, 8th-note synth bass, arpeggios."""
    song = _song("pop", rng, seconds, sr, jitter=0.002)
    key = int(rng.integers(12))
    progs = [
        [(0, "maj"), (7, "maj"), (9, "min"), (5, "maj")],
        [(9, "min"), (5, "maj"), (0, "maj"), (7, "maj")],
        [(0, "maj"), (5, "maj"), (9, "min"), (7, "maj")],
    ]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 57)
    song.hits(_kick(rng, sr), song.pattern(["X.......X.x.....", "X.....X...X....."]), _u(rng, -4, -1))
    backbeat = _clap(rng, sr) if rng.random() < 0.5 else _snare(rng, sr)
    song.hits(backbeat, song.pattern(["....X.......X..."]), _u(rng, -6, -3))
    song.hits(_hat(rng, sr), song.pattern(["x.x.x.x.x.x.x.x.", "x.xxx.x.x.xxx.x."]), _u(rng, -15, -10))
    song.notes(_instrument("pad", rng), _comp(chords, _WHOLE_BAR, 16), _u(rng, -6, -2))
    eighths = [(s, 0) for s in range(0, 16, 2)]
    song.notes(_instrument("bass_synth", rng), _bass_line(chords, eighths, 36, 1.6), _u(rng, -5, -2))
    if rng.random() < 0.6:
        arpeggio = [
            (bar * 16 + s, 1.5, [pitches[(s // 2) % len(pitches)] + 12], 0.6)
            for bar, (pitches, _, _) in enumerate(chords)
            for s in range(0, 16, 2)
        ]
        song.notes(_instrument(rng.choice(["pluck", "piano"]), rng), arpeggio, _u(rng, -11, -7))
    if rng.random() < 0.5:
        hook = _melody(rng, chords, key, _MAJOR, "X...x.x.X...x...", 69)
        song.notes(_instrument("pad", rng), hook, _u(rng, -8, -4))
    return song, key, "major"


def _reggae(rng, seconds, sr):
    """One drop (kick and rim together on beat 3 only), off-beat skank chords, deep melodic bass."""
    song = _song("reggae", rng, seconds, sr, swing=_u(rng, 0.5, 0.6), jitter=0.005)
    key = int(rng.integers(12))
    minor = rng.random() < 0.5
    if minor:
        progs = [[(0, "min"), (5, "min")], [(0, "min"), (10, "maj")]]
    else:
        progs = [[(0, "maj"), (5, "maj")], [(0, "maj"), (5, "maj"), (7, "maj"), (5, "maj")]]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 57)
    song.hits(_kick(rng, sr, decay=(0.15, 0.3)), song.pattern(["........X......."]), _u(rng, -4, -1))
    drop = _rim(rng, sr) if rng.random() < 0.6 else _snare(rng, sr)
    song.hits(drop, song.pattern(["........X......."]), _u(rng, -6, -3))
    song.hits(_hat(rng, sr), song.pattern(["x.x.x.x.x.x.x.x.", "x.xxx.x.x.x.x.xx"]), _u(rng, -15, -10))
    scale = (0, 3, 5, 7, 10) if minor else (0, 2, 4, 7, 9)
    riff_steps = sorted(rng.choice([0, 2, 3, 6, 7, 10, 11, 12, 14], size=5, replace=False))
    riff = [(int(s), int(rng.choice(scale)) + (12 if rng.random() < 0.2 else 0)) for s in riff_steps]
    song.notes(_instrument("bass_sub", rng), _bass_line(chords, riff, 31, 2.5), _u(rng, -2, 0))
    skank = _instrument(rng.choice(["pluck", "organ", "piano"]), rng)
    thin = lambda b: _band(b, sr, 400, None)  # noqa: E731
    song.notes(skank, _comp(chords, "....X.......X...", 0.8), _u(rng, -7, -3), fx=thin)
    if rng.random() < 0.5:  # organ "bubble"
        bubble = _comp(chords, "..x...x...x...x.", 0.7, vel=0.5)
        song.notes(_instrument("organ", rng), bubble, _u(rng, -12, -8))
    return song, key, "minor" if minor else "major"


def _rock(rng, seconds, sr):
    """8th-note hats, backbeat snare, overdriven power chords, root-note 8th bass."""
    song = _song("rock", rng, seconds, sr, jitter=0.003)
    key = int(rng.integers(12))
    progs = [
        [(0, "5"), (10, "5"), (5, "5"), (0, "5")],
        [(0, "5"), (5, "5"), (7, "5"), (5, "5")],
        [(0, "5"), (8, "5"), (10, "5"), (0, "5")],
    ]
    chords = _chords_per_bar(song, key, progs[rng.integers(len(progs))], 40)
    kick = song.pattern(["X.......X.X.....", "X.....X.X.......", "X.X.....X.X....."])
    song.hits(_kick(rng, sr), kick, _u(rng, -4, -1))
    song.hits(_snare(rng, sr), song.pattern(["....X.......X...", "....X.......X.xx"], p_alt=0.15), _u(rng, -4, -1))
    top = _hat(rng, sr, decay=(0.03, 0.08)) if rng.random() < 0.7 else _ride(rng, sr)
    song.hits(top, song.pattern(["X.x.X.x.X.x.X.x."]), _u(rng, -12, -8))
    if rng.random() < 0.5:
        song.hits(_crash(rng, sr), song.pattern([_WHOLE_BAR]), _u(rng, -12, -8))
    rhythm = rng.choice(["X.x.X.x.X.x.X.x.", "X.....x.X.....x.", _WHOLE_BAR])
    drive, cabinet = _u(rng, 4, 10), _u(rng, 5000, 8000)
    guitar_fx = lambda b: _band(_distort(b, drive), sr, 80, cabinet)  # noqa: E731
    comp = _comp(chords, rhythm, 16 if rhythm == _WHOLE_BAR else 1.8, vel=1.0)
    song.notes(_instrument("guitar", rng), comp, _u(rng, -3, -1), fx=guitar_fx)
    eighths = [(s, -12) for s in range(0, 16, 2)]
    song.notes(_instrument("bass_pick", rng), _bass_line(chords, eighths, 40, 1.7), _u(rng, -5, -2))
    return song, key, "major"


_GENRE_SYNTHS = {
    "blues": _blues,
    "classical": _classical,
    "country": _country,
    "disco": _disco,
    "hiphop": _hiphop,
    "jazz": _jazz,
    "metal": _metal,
    "pop": _pop,
    "reggae": _reggae,
    "rock": _rock,
}


# --------------------------------------------------------------------------------------------------
# Public API


def _check_genres(genres) -> None:
    unknown = [g for g in genres if g not in _GENRE_SYNTHS]
    if unknown:
        known = ", ".join(GENRES)
        raise ConfigError(f"corpus.genres: unknown genre {unknown[0]!r} (the built-in corpus knows: {known})")


def _synthesize(genre: str, rng: np.random.Generator, seconds: float, sr: int) -> tuple[np.ndarray, float, str]:
    """Render one clip; return the audio, its tempo in BPM and its key ("A minor")."""
    _check_genres([genre])
    song, key, mode = _GENRE_SYNTHS[genre](rng, float(seconds), int(sr))
    return song.mix(), round(song.bpm, 2), f"{_PITCH_NAMES[key]} {mode}"


def synthesize_clip(genre: str, rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """One synthetic clip of ``genre``: float32 mono in [-1, 1], ``round(seconds * sr)`` samples.

    Raises
    ------
    ConfigError
        If ``genre`` is not one of :data:`GENRES`.
    """
    return _synthesize(genre, rng, seconds, sr)[0]


def clip_rng(seed: int, genre: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``genre``: independent of the other clips and of the genre list."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), GENRES.index(genre), int(index)]))


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    """16-bit PCM mono WAV via the standard library, so the bytes depend on the samples only."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sr))
        out.writeframes(pcm.tobytes())


def is_builtin_corpus(root: str | Path) -> bool:
    """Whether ``root`` is a corpus `genre-se corpus` generated (synthetic pieces, not music to learn genre
    from): a model trained on it is a pipeline demo, and predict says so."""
    return (Path(root) / MARKER).is_file()


def _marker_text(cfg: CorpusConfig, seed: int) -> str:
    settings = {"seed": int(seed), **dataclasses.asdict(cfg)}
    return json.dumps(settings, sort_keys=True) + "\n"


def generate_corpus(cfg: CorpusConfig, out_dir, seed: int) -> pd.DataFrame:
    """Write ``out_dir/<genre>/<genre>.NNNNN.wav`` for every genre and clip; return the clip table.

    The layout and names are GTZAN's, so the dataset indexer reads the corpus like GTZAN. The files are
    rendered into a temporary sibling folder that then replaces ``out_dir`` whole, with a
    :data:`MARKER` file (the settings used) that marks the folder as safe to replace next time.

    Returns
    -------
    pandas.DataFrame
        One row per clip: ``clip_id, path, label, seconds, tempo_bpm, key``.

    Raises
    ------
    ConfigError
        ``corpus.genres`` names a genre the synth does not know.
    DatasetError
        ``out_dir`` is a file, or a non-empty folder that this function did not write.
    """
    _check_genres(cfg.genres)
    out_dir = Path(out_dir)
    # replacing out_dir deletes what was there: a mistyped --out must not wipe a user's folder
    check_replaceable(out_dir, MARKER, "a corpus `genre-se corpus` wrote", DatasetError)
    rows = []
    with atomic_dir(out_dir) as staging:
        for genre in cfg.genres:
            (staging / genre).mkdir()
            for index in range(cfg.clips_per_genre):
                rng = clip_rng(seed, genre, index)
                audio, bpm, key = _synthesize(genre, rng, cfg.clip_seconds, cfg.sample_rate)
                name = f"{genre}.{index:05d}"
                _write_wav(staging / genre / f"{name}.wav", audio, cfg.sample_rate)
                path = str(out_dir / genre / f"{name}.wav")
                rows.append((name, path, genre, len(audio) / cfg.sample_rate, bpm, key))
        (staging / MARKER).write_text(_marker_text(cfg, seed), encoding="utf-8")
    return pd.DataFrame(rows, columns=["clip_id", "path", "label", "seconds", "tempo_bpm", "key"])


def run_corpus(params: Params, out_dir="data/corpus") -> pd.DataFrame:
    """The ``corpus`` stage: generate the default corpus from ``params.corpus`` and ``params.seed``."""
    return generate_corpus(params.corpus, out_dir, params.seed)
