"""Log-mel augmentations for training: gain, recording conditions (EQ tilt, low-pass, compression, noise, pitch
shift, time stretch), SpecAugment masking and mixup, as tf ops on batches ``[batch, n_mels, frames, 1]`` of
the store's dB values (fixed reference, so a gain is an addition).

Every draw is stateless: a batch's transforms draw from its key (:func:`genre_se.train.make_dataset` gives each
batch one, a function of the seed and the epoch) combined with the transform's own stream (:class:`Draw`), so
the augmented batches do not depend on how often or how parallel the pipeline ran, and a resumed training sees
the batches of the run it continues. The waveform augmentations (MP3, pitch, tempo) are
:mod:`genre_se.waveform_augment`'s, precomputed by the features stage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .errors import DatasetError


@enum.unique
class Draw(enum.IntEnum):
    """The stream each augmentation draws from, combined with the batch's key by :func:`draw_seed`. The numbers are
    part of every training's draws: changing one changes the weights a seed gives, as a new seed would."""

    EQ_TILT = 1
    COMPRESSION = 2
    NOISE_SNR = 3
    NOISE_COLOUR = 4
    PITCH_SHIFT = 5
    TIME_STRETCH = 6
    LOWPASS_CUTOFF = 7
    LOWPASS_DEPTH = 8
    GAIN = 100
    FREQ_MASK_WIDTH = 200
    FREQ_MASK_START = 201
    TIME_MASK_WIDTH = 202
    TIME_MASK_START = 203
    MIXUP_WEIGHT_A = 300
    MIXUP_WEIGHT_B = 301
    MIXUP_PARTNER = 302


def draw_seed(key, op: Draw):
    """The stateless seed of one augmentation's draws for one batch: its stream (:class:`Draw`) and the batch's key."""
    import tensorflow as tf

    return tf.stack([tf.cast(key, tf.int64), tf.constant(int(op), tf.int64)])


def random_gain(x, key, gain_db: float, floor_db: float):
    """Waveform gain augmentation, done where it is cheap: the log-mel dB have a fixed reference, so a gain
    of g dB adds g to every value; one uniform g per segment, never below the store's silence floor."""
    import tensorflow as tf

    gain = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], draw_seed(key, Draw.GAIN), -gain_db, gain_db)
    return tf.maximum(x + gain, floor_db)


def mel_centre_frequencies(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of a FeatureConfig: the peaks of librosa's filter bank."""
    import librosa

    fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=fmax)[1:-1]


@dataclass(frozen=True)
class RecordingConditions:
    """Recording-condition augmentation of log-mel batches ``[batch, n_mels, frames, 1]`` (dB, fixed reference).

    Each transform is a cheap tf op on the stored log-mel (no audio is decoded again), with independent draws
    per segment; applied in the order EQ tilt, low-pass, compression, noise, pitch shift, time stretch, values
    kept at or above ``floor_db``. The draws are stateless, derived from one int64 ``key`` per batch.
    """

    eq_tilt_db: float = 0.0
    compression: float = 0.0
    noise_snr_db: tuple | None = None
    pitch_shift_semitones: float = 0.0
    time_stretch: float = 0.0
    floor_db: float = -100.0
    mel_hz: tuple | None = None
    lowpass_hz: tuple | None = None
    lowpass_slope_db: float = TrainConfig.lowpass_slope_db

    def __post_init__(self):  # hashable (tf.function keys on it)
        for name in ("mel_hz", "noise_snr_db", "lowpass_hz"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    @property
    def active(self) -> bool:
        return bool(self.eq_tilt_db > 0 or self.compression > 0 or self.noise_snr_db is not None
                     or self.pitch_shift_semitones > 0 or self.time_stretch > 0 or self.lowpass_hz is not None)

    def check(self, n_mels: int) -> None:
        if self.pitch_shift_semitones > 0 and self.mel_hz is None:
            raise DatasetError("the pitch-shift augmentation needs the mel band frequencies (mel_hz)")
        if self.lowpass_hz is not None and self.mel_hz is None:
            raise DatasetError("the low-pass augmentation needs the mel band frequencies (mel_hz)")
        if self.mel_hz is not None and len(self.mel_hz) != n_mels:
            raise DatasetError(f"the feature store has {n_mels} mel bands but its feature config describes "
                               f"{len(self.mel_hz)}")

    def __call__(self, x, key):
        import tensorflow as tf

        batch = tf.shape(x)[0]

        def uniform(op: Draw, low: float, high: float):
            return tf.random.stateless_uniform([batch], draw_seed(key, op), low, high)

        if self.eq_tilt_db > 0:
            x = eq_tilt(x, uniform(Draw.EQ_TILT, -self.eq_tilt_db, self.eq_tilt_db), self.floor_db)
        if self.lowpass_hz is not None:
            low, high = np.log2(self.lowpass_hz)
            cutoff_hz = tf.pow(2.0, uniform(Draw.LOWPASS_CUTOFF, low, high))  # log-uniform in the range
            x = low_pass(x, cutoff_hz, self.mel_hz,
                         slope_db=self.lowpass_slope_db, depth_db=uniform(Draw.LOWPASS_DEPTH, *LOWPASS_DEPTH_DB))
        if self.compression > 0:
            x = compress(x, self.compression * uniform(Draw.COMPRESSION, 0.0, 1.0))
        if self.noise_snr_db is not None:
            low, high = self.noise_snr_db
            x = add_noise(x, uniform(Draw.NOISE_SNR, low, high), self.floor_db, self.mel_hz,
                          colour=uniform(Draw.NOISE_COLOUR, 0.0, 1.0))
        if self.pitch_shift_semitones > 0:
            s = self.pitch_shift_semitones
            x = pitch_shift(x, uniform(Draw.PITCH_SHIFT, -s, s), self.mel_hz)
        if self.time_stretch > 0:
            r = self.time_stretch
            x = time_stretch(x, uniform(Draw.TIME_STRETCH, 1.0 - r, 1.0 + r))
        return tf.maximum(x, self.floor_db)


def eq_tilt(x, tilt_db, floor_db: float):
    """A linear EQ ramp over the mel bands: band 0 gets ``-tilt``, the top band ``+tilt`` dB (per segment)."""
    import tensorflow as tf

    n_mels = x.shape[1]
    ramp = tf.linspace(-1.0, 1.0, n_mels) if n_mels > 1 else tf.zeros([1])
    return tf.maximum(x + tf.reshape(tilt_db, [-1, 1, 1, 1]) * tf.reshape(ramp, [1, -1, 1, 1]), floor_db)


#: how far under the segment median the low-pass augmentation stops (drawn per segment): from the floor of an
#: analogue transfer (gtzan-mini's band-limited clips: 28-33 dB under the median, study/results/domain_gap.md)
#: down to the empty band of a low-bitrate encoder (the store's silence floor)
LOWPASS_DEPTH_DB = (30.0, 80.0)


def low_pass(x, cutoff_hz, mel_hz, slope_db=TrainConfig.lowpass_slope_db, depth_db=LOWPASS_DEPTH_DB[0]):
    """A steep low-pass (per segment), as a band-limited transfer: a band whose centre lies ``o`` octaves above
    ``cutoff_hz`` loses ``slope_db * o`` dB, but not below ``depth_db`` (a number, or one per segment) under the
    segment's median (a value already under that floor stays where it is). Bands at or under the cutoff are
    untouched.

    The mel bands above 8 kHz span half an octave (about 3 % of an octave apart at 10 kHz), so a filter that
    empties them, as an encoder's does, needs hundreds of dB per octave: 48 dB/octave takes only 20 dB off
    the top band at an 8 kHz cutoff.

    Why: in gtzan-mini the bandwidth nearly names the genre (full band: country, disco, metal, pop), so
    cutting the top of every genre's clips at random takes that shortcut away from the model; and the shipped
    model swings to metal/rock on an empty top band (study/README.md, the recording counterfactual).
    """
    import tensorflow as tf

    band_octaves = tf.constant(np.log2(np.asarray(mel_hz, np.float64)), tf.float32)[None, :]
    cutoff_octaves = tf.math.log(tf.reshape(tf.cast(cutoff_hz, tf.float32), [-1, 1])) / float(np.log(2.0))
    loss = tf.reshape(slope_db * tf.nn.relu(band_octaves - cutoff_octaves), [-1, x.shape[1], 1, 1])
    floor = segment_median(x) - tf.reshape(tf.cast(depth_db, tf.float32), [-1, 1, 1, 1])
    return tf.where(loss > 0, tf.maximum(x - loss, tf.minimum(x, floor)), x)


def segment_median(x):
    """Per-segment median of a batch (the lower one for an even count), shape ``[batch, 1, 1, 1]``."""
    import tensorflow as tf

    n = int(np.prod(x.shape[1:]))
    flat = tf.reshape(x, [-1, n])
    return tf.reshape(tf.sort(flat, axis=1)[:, (n - 1) // 2], [-1, 1, 1, 1])  # a sort beats top_k(n / 2) here


def compress(x, amount):
    """Dynamic range compression in dB: values above the segment's median ``m`` become
    ``m + (x - m) * (1 - amount)``; the median and everything below it are untouched."""
    import tensorflow as tf

    m = segment_median(x)
    k = tf.reshape(1.0 - amount, [-1, 1, 1, 1])
    return tf.where(x > m, m + (x - m) * k, x)


def add_noise(x, snr_db, floor_db: float, mel_hz=None, colour=None):
    """Stationary noise added in the power domain at ``snr_db`` (per segment): total signal power over total
    noise power of the segment. The noise spectrum falls ``3 * colour`` dB per octave over the mel band centres
    (0 white, 1 pink); flat without ``mel_hz``."""
    import tensorflow as tf

    ln10 = float(np.log(10.0))
    power = tf.exp(x * (ln10 / 10.0))
    batch, n_mels, n_frames = tf.shape(x)[0], x.shape[1], x.shape[2]
    if mel_hz is None or colour is None:
        shape = tf.ones([batch, n_mels])
    else:
        octaves = tf.constant(np.log2(np.asarray(mel_hz, np.float64) / 1000.0), tf.float32)
        shape = tf.exp(-tf.reshape(colour, [-1, 1]) * octaves[None, :] * float(np.log(2.0)))
    signal = tf.reduce_sum(power, axis=[1, 2, 3])
    scale = signal / tf.exp(snr_db * (ln10 / 10.0)) / (tf.reduce_sum(shape, axis=1) * n_frames)
    noise = tf.reshape(scale[:, None] * shape, [-1, n_mels, 1, 1])
    return tf.maximum(10.0 / ln10 * tf.math.log(power + noise), floor_db)


def pitch_shift(x, semitones, mel_hz):
    """Shift the spectrum by ``semitones`` (per segment) along the mel axis: band ``i`` (centre ``f_i``) reads
    the spectrum at ``f_i / 2^(k/12)``, its position between the band centres taken in log frequency.

    Values are resampled in the power domain with a triangular kernel: between two source bands it is linear
    interpolation; where the output bands step over more than one source band (a downward shift in the
    linearly spaced low bands) it averages them, so a narrow peak is not skipped. Beyond the lowest or the
    highest band the edge band's value is used.
    """
    import tensorflow as tf

    log_f = np.log2(np.asarray(mel_hz, np.float64))
    n = len(log_f)
    if n < 2:
        return x
    grid = tf.constant(log_f, tf.float32)
    source = grid[None, :] - tf.reshape(semitones, [-1, 1]) / 12.0  # [batch, n_mels], log2 Hz
    lower = tf.clip_by_value(tf.searchsorted(tf.broadcast_to(grid, tf.shape(source)), source, side="right") - 1,
                             0, n - 2)
    g0, g1 = tf.gather(grid, lower), tf.gather(grid, lower + 1)
    pos = tf.cast(lower, tf.float32) + tf.clip_by_value((source - g0) / (g1 - g0), 0.0, 1.0)  # source band index
    step = pos[:, 1:] - pos[:, :-1]
    width = tf.maximum(1.0, 0.5 * (tf.concat([step[:, :1], step], 1) + tf.concat([step, step[:, -1:]], 1)))
    k = tf.range(n, dtype=tf.float32)[None, None, :]
    weights = tf.nn.relu(1.0 - tf.abs(k - pos[:, :, None]) / width[:, :, None])  # [batch, out band, source band]
    weights = weights / tf.reduce_sum(weights, axis=2, keepdims=True)
    ln10 = float(np.log(10.0))
    power = tf.exp(x[..., 0] * (ln10 / 10.0))  # [batch, n_mels, frames]
    return (10.0 / ln10 * tf.math.log(tf.matmul(weights, power)))[..., None]


def time_stretch(x, rate):
    """Resample the time axis (per segment): output frame ``j`` reads frame ``j / rate``, linearly
    interpolated, so a rate below 1 plays the segment faster and above 1 slower. The segment is repeated to fill
    the frames a fast rate runs past its end; a slow rate crops it."""
    import tensorflow as tf

    n_frames = x.shape[2]
    pos = tf.range(n_frames, dtype=tf.float32)[None, :] / tf.reshape(rate, [-1, 1])  # [batch, frames]
    base = tf.floor(pos)
    w = (pos - base)[:, None, :]
    i0 = tf.math.floormod(tf.cast(base, tf.int32), n_frames)
    i1 = tf.math.floormod(i0 + 1, n_frames)
    bands = x[..., 0]
    a = tf.gather(bands, i0, axis=2, batch_dims=1)
    b = tf.gather(bands, i1, axis=2, batch_dims=1)
    return (a * (1.0 - w) + b * w)[..., None]


def spec_augment(x, key, max_freq: float = 0.15, max_time: float = 0.15):
    """SpecAugment-style masking: one frequency band and one time span per segment set to the batch mean."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    n_mels, n_frames = x.shape[1], x.shape[2]
    fill = tf.reduce_mean(x)

    def mask(size, fraction, width_op, start_op):
        width = tf.random.stateless_uniform([batch, 1], draw_seed(key, width_op), 0, int(size * fraction) + 1,
                                            dtype=tf.int32)
        start = tf.random.stateless_uniform([batch, 1], draw_seed(key, start_op), 0, size, dtype=tf.int32)
        idx = tf.range(size)[None, :]
        return (idx >= start) & (idx < start + width)

    freq = mask(n_mels, max_freq, Draw.FREQ_MASK_WIDTH, Draw.FREQ_MASK_START)[:, :, None, None]
    time = mask(n_frames, max_time, Draw.TIME_MASK_WIDTH, Draw.TIME_MASK_START)[:, None, :, None]
    return tf.where(freq | time, fill, x)


def mixup(x, y, key, alpha: float):
    """mixup (Zhang et al. 2018): convex combinations of a batch with its own permutation."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    g1 = tf.random.stateless_gamma([batch], draw_seed(key, Draw.MIXUP_WEIGHT_A), alpha)
    g2 = tf.random.stateless_gamma([batch], draw_seed(key, Draw.MIXUP_WEIGHT_B), alpha)
    lam = g1 / (g1 + g2)
    perm = tf.argsort(tf.random.stateless_uniform([batch], draw_seed(key, Draw.MIXUP_PARTNER)))
    lx = tf.reshape(lam, [-1, 1, 1, 1])
    ly = tf.reshape(lam, [-1, 1])
    return lx * x + (1 - lx) * tf.gather(x, perm), ly * y + (1 - ly) * tf.gather(y, perm)
