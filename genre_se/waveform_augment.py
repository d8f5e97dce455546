"""Recording-condition augmentations on the waveform, precomputed as extra copies of the training clips.

The log-mel augmentations of :mod:`genre_se.train` cost nothing per epoch but only approximate what an
encoder or a resampler does. These are the real thing, too slow to run per batch, so the features stage
computes one copy of every clip per kind (``train.waveform_augment``), stored beside the originals in the
feature store; training draws from originals and copies, while validation, test, calibration and every
score read the originals only (:meth:`genre_se.feature_store.FeatureStore.copies_of`).

* ``mp3``: a 128 kbit/s MP3 round trip (LAME via libsndfile, :func:`genre_se.robustness.mp3_roundtrip`);
* ``pitch``: a pitch shift by a random amount in [-2, 2] semitones, same duration (``librosa.effects``);
* ``tempo``: a time stretch at a random rate in [0.9, 1.1], same pitch (``librosa.effects``).

The random amount of a copy is a function of the seed, the clip and the kind, so the same params give the
same copies.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["KINDS", "PITCH_SEMITONES", "TEMPO_RANGE", "copy_amount", "augment_waveform"]

KINDS = ("mp3", "pitch", "tempo")
PITCH_SEMITONES = 2.0
TEMPO_RANGE = 0.1
MP3_KBPS = 128


def _rng(seed: int, clip_id: str, kind: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}\0{clip_id}\0{kind}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def copy_amount(seed: int, clip_id: str, kind: str) -> float:
    """The random amount of one copy: semitones (pitch), a rate (tempo), the bitrate in kbit/s (mp3)."""
    if kind not in KINDS:
        raise ValueError(f"waveform augmentation must be one of {KINDS}, got {kind!r}")
    rng = _rng(seed, clip_id, kind)
    if kind == "pitch":
        return float(rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES))
    if kind == "tempo":
        return float(rng.uniform(1.0 - TEMPO_RANGE, 1.0 + TEMPO_RANGE))
    return float(MP3_KBPS)


def augment_waveform(y: np.ndarray, sr: int, kind: str, amount: float) -> np.ndarray:
    """One augmented copy of a mono signal at ``sr``, returned at ``sr`` (float32, 1-D)."""
    y = np.asarray(y, dtype=np.float32)
    if kind == "mp3":
        from .audio import resample
        from .robustness import mp3_roundtrip

        out, out_sr = mp3_roundtrip(y, sr, bitrate_kbps=int(amount))  # 1-D in, 1-D out
        return resample(out, out_sr, sr) if out_sr != sr else np.asarray(out, dtype=np.float32)
    import librosa

    if kind == "pitch":
        return librosa.effects.pitch_shift(y, sr=sr, n_steps=float(amount)).astype(np.float32)
    if kind == "tempo":
        return librosa.effects.time_stretch(y, rate=float(amount)).astype(np.float32)
    raise ValueError(f"waveform augmentation must be one of {KINDS}, got {kind!r}")
