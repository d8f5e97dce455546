"""Typed parameters, loaded from ``params.yaml`` and validated.

Every section of ``params.yaml`` is a frozen dataclass. :func:`load_params` rejects unknown keys, wrong
types and out-of-range values with a :class:`~genre_se.errors.ConfigError` that names the dotted key
(``features.n_mels``), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

#: Per-block settings accept a scalar (same for every block) or one value per block.
PerBlock = typing.Union[float, list]

#: The largest ``seed``: numpy's global seeding, which Keras' set_random_seed calls, takes 32 bits, and the
#: seeds derived from it (``seed + fold`` in CV, ``seed + 1000 * execution`` in tuning) need headroom below that.
SEED_MAX = 2**31 - 1

DEFAULT_GENRES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _is_number_pair(value) -> bool:
    return len(value) == 2 and all(_is_number(v) for v in value)


def _is_number(value) -> bool:
    """A YAML number: an int or float, not a bool (``true`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_pair(pair, key: str, unit: str, lowest: float, highest: float) -> None:
    """A ``[low, high]`` range setting: two numbers with ``lowest <= low <= high <= highest``."""
    _require(_is_number_pair(pair), key, f"must be null or [low, high] in {unit}, got {pair!r}")
    bounds = f"{lowest:g} <= low <= high" + ("" if highest == float("inf") else f" <= {highest:g}")
    _require(lowest <= pair[0] <= pair[1] <= highest, key, f"needs {bounds} {unit}, got {list(pair)!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled audio is and how it is split."""

    root: str = "data/corpus"
    layout: Literal["auto", "gtzan", "folders", "manifest"] = "auto"
    manifest: str | None = None
    extensions: list = field(default_factory=lambda: ["wav", "au", "flac", "ogg", "mp3"])
    split: Literal["stratified", "gtzan-fault-filtered"] = "stratified"
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def validate(self, p: str) -> None:
        _require(bool(self.root), f"{p}.root", "must not be empty")
        _require(0.0 <= self.val_fraction < 1.0, f"{p}.val_fraction", "must be in [0, 1)")
        _require(0.0 < self.test_fraction < 1.0, f"{p}.test_fraction", "must be in (0, 1)")
        _require(
            self.val_fraction + self.test_fraction < 1.0,
            f"{p}.val_fraction",
            "val_fraction + test_fraction must be < 1 (something must be left to train on)",
        )
        _require(len(self.extensions) > 0, f"{p}.extensions", "must list at least one extension")
        _require(
            self.layout != "manifest" or bool(self.manifest),
            f"{p}.manifest",
            "must be set when layout is 'manifest'",
        )


@dataclass(frozen=True)
class CorpusConfig:
    """The built-in default corpus: synthetic but musically structured clips per genre."""

    genres: list = field(default_factory=lambda: list(DEFAULT_GENRES))
    clips_per_genre: int = 12
    clip_seconds: float = 8.0
    sample_rate: int = 22050

    def validate(self, p: str) -> None:
        for genre in self.genres:  # before the duplicate check: set() needs hashable entries
            _require(isinstance(genre, str) and bool(genre), f"{p}.genres",
                     f"entries must be genre names, got {genre!r}")
        _require(len(self.genres) >= 2, f"{p}.genres", "needs at least two genres")
        _require(len(set(self.genres)) == len(self.genres), f"{p}.genres", "has duplicates")
        _require(self.clips_per_genre >= 1, f"{p}.clips_per_genre", "must be >= 1")
        _require(0.5 <= self.clip_seconds <= 600, f"{p}.clip_seconds", "must be in [0.5, 600]")
        _require(8000 <= self.sample_rate <= 192000, f"{p}.sample_rate", "must be in [8000, 192000]")


@dataclass(frozen=True)
class FeatureConfig:
    """The single log-mel + segmenting definition shared by training, evaluation and inference."""

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    ref_power: float = 1.0
    amin: float = 1e-10
    segment_frames: int = 128
    segment_hop: int = 64
    workers: int = 2

    def validate(self, p: str) -> None:
        _require(8000 <= self.sample_rate <= 192000, f"{p}.sample_rate", "must be in [8000, 192000]")
        _require(self.n_fft >= 16, f"{p}.n_fft", "must be >= 16")
        _require(0 < self.hop_length <= self.n_fft, f"{p}.hop_length", "must be in (0, n_fft]")
        _require(1 <= self.n_mels <= 512, f"{p}.n_mels", "must be in [1, 512]")
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        _require(0.0 <= self.fmin < nyquist, f"{p}.fmin", f"must be in [0, {nyquist:g})")
        _require(self.fmin < fmax <= nyquist, f"{p}.fmax", f"must be in (fmin, {nyquist:g}] or null")
        _require(self.ref_power > 0, f"{p}.ref_power", "must be > 0")
        _require(self.amin > 0, f"{p}.amin", "must be > 0")
        _require(self.segment_frames >= 8, f"{p}.segment_frames", "must be >= 8")
        _require(
            1 <= self.segment_hop <= self.segment_frames,
            f"{p}.segment_hop",
            "must be in [1, segment_frames]",
        )
        _require(self.workers >= 1, f"{p}.workers", "must be >= 1")

    @property
    def segment_seconds(self) -> float:
        """Duration covered by one segment."""
        return self.segment_frames * self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelConfig:
    """The SE-CNN: per-block settings are a scalar or a list with one entry per block."""

    filters: list = field(default_factory=lambda: [32, 64, 128, 256, 128])
    kernel_size: PerBlock = 3
    padding: Any = "same"
    dropout: PerBlock = 0.25
    batch_norm: bool = True
    se: bool = True
    reduction_ratios: PerBlock = 16
    se_bias: bool = True
    head: Literal["gap", "flatten"] = "gap"
    # After the train-split standardisation: "segment" standardises each segment on its own, "frequency" each
    # mel band of each segment over time. Both make the model blind to the recording's gain (a gain is a
    # constant dB offset); "frequency" also to a fixed EQ tilt. Part of the model, so every path applies it.
    input_norm: Literal["dataset", "segment", "frequency"] = "dataset"
    # Front end, before any standardisation (model.LoudnessNormalize, model.PCEN): each segment brought to
    # ``loudness_target_db`` by its own loudness (rms: mean square; r128: K-weighted, the EBU R128 short-term
    # loudness of its 3 s), and/or PCEN instead of the plain log compression (librosa's defaults).
    loudness_norm: Literal["none", "rms", "r128"] = "none"
    loudness_target_db: float = -23.0
    pcen: bool = False
    # Late fusion (genre_se.fusion): "svm" averages the clip distribution with an MFCC + spectral statistics
    # SVM's, trained on the same clips and stored in the bundle as plain arrays. Best in the gtzan-mini
    # cross-validation, worse on real songs, so off by default.
    fusion: Literal["none", "svm"] = "none"
    # The clip answer's classifier (genre_se.embedding_svm): the network's softmax, or "svm", an SVM fitted after
    # training on each training clip's mean embedding and stored in the bundle as plain arrays. Ahead of the
    # softmax in the gtzan-mini cross-validation, behind it on real songs, so off by default.
    classifier: Literal["softmax", "svm"] = "softmax"

    def validate(self, p: str) -> None:
        _require(len(self.filters) >= 1, f"{p}.filters", "needs at least one block")
        _require(self.fusion == "none" or self.classifier == "softmax", f"{p}.classifier",
                 "the embedding SVM (classifier: svm) and late fusion (fusion: svm) are either-or; choose one")
        _require(
            isinstance(self.loudness_target_db, (int, float)) and not isinstance(self.loudness_target_db, bool)
            and -80.0 <= self.loudness_target_db <= 0.0,
            f"{p}.loudness_target_db", f"must be a level in [-80, 0] dB, got {self.loudness_target_db!r}",
        )
        _require(isinstance(self.pcen, bool), f"{p}.pcen", f"must be true or false, got {self.pcen!r}")
        for f in self.filters:
            _require(_is_int(f) and f >= 1, f"{p}.filters",
                     f"entries must be ints >= 1, got {f!r}")
        for name in ("kernel_size", "padding", "dropout", "reduction_ratios"):
            self.per_block(name, key=f"{p}.{name}")
        for k in self.per_block("kernel_size", key=f"{p}.kernel_size"):
            _require(_is_int(k) and k >= 1, f"{p}.kernel_size",
                     f"must be ints >= 1, got {k!r}")
        for pad in self.per_block("padding", key=f"{p}.padding"):
            _require(pad in ("same", "valid"), f"{p}.padding", f"must be 'same' or 'valid', got {pad!r}")
        for d in self.per_block("dropout", key=f"{p}.dropout"):
            _require(_is_number(d) and 0.0 <= d < 1.0, f"{p}.dropout", f"must be in [0, 1), got {d!r}")
        for r in self.per_block("reduction_ratios", key=f"{p}.reduction_ratios"):
            _require(
                _is_number(r) and r > 0,
                f"{p}.reduction_ratios",
                f"must be numbers > 0, got {r!r}",
            )

    @property
    def n_blocks(self) -> int:
        return len(self.filters)

    def per_block(self, name: str, key: str | None = None) -> list:
        """Expand setting ``name`` to one value per block, or raise ConfigError saying why not."""
        value = getattr(self, name)
        key = key or f"model.{name}"
        if isinstance(value, (list, tuple)):
            _require(
                len(value) == self.n_blocks,
                key,
                f"has {len(value)} entries but the model has {self.n_blocks} blocks "
                "(give a scalar or one value per block)",
            )
            return list(value)
        return [value] * self.n_blocks


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    monitor: Literal["val_clip_accuracy", "val_loss"] = "val_clip_accuracy"
    patience: int = 8
    spec_augment: bool = False
    mixup_alpha: float = 0.0
    # Switches for small data, all off by default (study/README.md says which ones cross-validation kept):
    label_smoothing: float = 0.0       # target = (1 - e) one-hot + e / n_classes
    gain_db: float = 0.0               # random gain in [-gain_db, +gain_db] dB per training segment
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    lr_decay_patience: int = 3         # plateau: halve the rate after this many epochs without improvement
    fit_all: bool = False              # train stage only: fit every clip (no valid/test), see run_train
    # train stage: true fits a temperature on the valid split, false keeps T = 1, a number is the temperature
    # itself (e.g. the recipe's out-of-fold T from the cross-validation, study/ensemble.py)
    calibrate: bool | float = True
    # true: TensorFlow's op determinism for the process (tf.config.experimental.enable_op_determinism), so the same
    # seed gives the same weights; without it parallel input pipelines and kernels reorder float sums
    deterministic: bool = True
    # Recording conditions, applied to the log-mel segments in this order (after gain_db), all off by default:
    eq_tilt_db: float = 0.0            # random linear EQ tilt over the mel bands, ends at -t .. +t dB, |t| <= this
    compression: bool | float = False  # above-median dB pulled toward the median by up to this fraction (true: 0.5)
    noise_snr_db: list | None = None   # [low, high]: add coloured (white..pink) noise at a random SNR in dB
    pitch_shift_semitones: float = 0.0  # random shift of the mel axis by up to +-this many semitones
    time_stretch: float = 0.0          # random time-axis resampling rate in [1 - this, 1 + this]
    lowpass_hz: list | None = None     # [low, high]: a steep low-pass at a random cutoff (Hz, log-uniform) per segment
    lowpass_slope_db: float = 480.0    # its roll-off, dB per octave above the cutoff (480: 48 dB in a tenth of one)
    # Waveform augmentations (genre_se.waveform_augment): one precomputed copy of every clip per kind, made
    # by the features stage and drawn from by training only; any of mp3, pitch, tempo.
    waveform_augment: list = field(default_factory=list)

    def validate(self, p: str) -> None:
        _require(self.epochs >= 1, f"{p}.epochs", "must be >= 1")
        _require(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        _require(0 < self.learning_rate < 1, f"{p}.learning_rate", "must be in (0, 1)")
        _require(self.patience >= 1, f"{p}.patience", "must be >= 1")
        _require(self.mixup_alpha >= 0, f"{p}.mixup_alpha", "must be >= 0 (0 turns mixup off)")
        _require(0 <= self.label_smoothing < 1, f"{p}.label_smoothing", "must be in [0, 1) (0 turns it off)")
        _require(0 <= self.gain_db <= 40, f"{p}.gain_db", "must be in [0, 40] dB (0 turns it off)")
        _require(self.lr_decay_patience >= 1, f"{p}.lr_decay_patience", "must be >= 1")
        _require(0 <= self.eq_tilt_db <= 40, f"{p}.eq_tilt_db", "must be in [0, 40] dB (0 turns it off)")
        _require(
            isinstance(self.compression, bool) or 0 <= self.compression <= 1,
            f"{p}.compression",
            f"must be true/false or an amount in [0, 1], got {self.compression!r}",
        )
        _require(isinstance(self.deterministic, bool), f"{p}.deterministic",
                 f"must be true or false, got {self.deterministic!r}")
        _require(
            isinstance(self.calibrate, bool) or (math.isfinite(self.calibrate) and 0.05 <= self.calibrate <= 20),
            f"{p}.calibrate",
            f"must be true/false or a temperature in [0.05, 20], got {self.calibrate!r}",
        )
        if self.noise_snr_db is not None:
            _require_pair(self.noise_snr_db, f"{p}.noise_snr_db", "dB", -20, 100)
        _require(
            0 <= self.pitch_shift_semitones <= 12,
            f"{p}.pitch_shift_semitones",
            "must be in [0, 12] semitones (0 turns it off)",
        )
        _require(0 <= self.time_stretch <= 0.5, f"{p}.time_stretch", "must be in [0, 0.5] (0 turns it off)")
        if self.lowpass_hz is not None:
            _require_pair(self.lowpass_hz, f"{p}.lowpass_hz", "Hz", 500, float("inf"))
        _require(6 <= self.lowpass_slope_db <= 10000, f"{p}.lowpass_slope_db", "must be in [6, 10000] dB per octave")
        from .waveform_augment import KINDS

        kinds = self.waveform_augment
        _require(
            isinstance(kinds, (list, tuple)) and all(k in KINDS for k in kinds) and len(set(kinds)) == len(kinds),
            f"{p}.waveform_augment",
            f"must be a list of distinct kinds from {list(KINDS)}, got {kinds!r}",
        )

    @property
    def compression_amount(self) -> float:
        """``compression`` as a number: false 0, true 0.5 (at most halve the range above the median)."""
        if isinstance(self.compression, bool):
            return 0.5 if self.compression else 0.0
        return float(self.compression)


@dataclass(frozen=True)
class TuneConfig:
    """The Bayesian search (keras-tuner) over SE reduction ratios, and optionally learning rate and dropout.

    ``mode: shared`` searches one r for every block in ``[r_min, r_max]`` (scalars); ``per_block`` one r per
    block, each in its own range (``r_min``/``r_max`` a scalar for every block or one bound per block; the
    count is checked against ``model.filters`` by the tune stage). ``learning_rate``/``dropout`` are
    ``null`` (not searched) or ``[low, high]``. ``max_trials`` is left out of the search's identity, so
    raising it extends a finished search instead of starting over.
    """

    enabled: bool = True
    mode: Literal["shared", "per_block"] = "shared"
    r_min: PerBlock = 8.0
    r_max: PerBlock = 32.0
    r_type: Literal["float", "int"] = "float"
    learning_rate: list | None = None
    dropout: list | None = None
    objective: Literal["val_clip_accuracy", "val_loss"] = "val_clip_accuracy"
    max_trials: int = 4
    executions_per_trial: int = 1
    epochs: int = 3
    patience: int = 2
    initial_points: int | None = None
    # Fixed points trained after the search under the same protocol, for comparison: a number is one shared r,
    # "no_se" the plain CNN. Not part of the search (changing them does not restart it).
    references: list = field(default_factory=lambda: [16, "no_se"])

    def validate(self, p: str) -> None:
        lows, highs = self.r_bounds(p)
        _require(isinstance(self.references, list), f"{p}.references", "must be a list (numbers and/or 'no_se')")
        for ref in self.references:
            _require(
                ref == "no_se" or (isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref > 0),
                f"{p}.references",
                f"entries must be a reduction ratio > 0 or 'no_se', got {ref!r}",
            )
        for low, high in zip(lows, highs):
            _require(high > low, f"{p}.r_max", f"must be > r_min in every block, got {high!r} <= {low!r}")
        if self.r_type == "int":
            for key, values in ((f"{p}.r_min", lows), (f"{p}.r_max", highs)):
                _require(all(float(v).is_integer() for v in values), key, "must be whole numbers when r_type is int")
        self._check_range(self.learning_rate, f"{p}.learning_rate", 0.0, 1.0, low_open=True)
        self._check_range(self.dropout, f"{p}.dropout", 0.0, 1.0, low_open=False)
        _require(self.max_trials >= 1, f"{p}.max_trials", "must be >= 1")
        _require(self.executions_per_trial >= 1, f"{p}.executions_per_trial", "must be >= 1")
        _require(self.epochs >= 1, f"{p}.epochs", "must be >= 1")
        _require(self.patience >= 1, f"{p}.patience", "must be >= 1")
        _require(self.initial_points is None or self.initial_points >= 1, f"{p}.initial_points", "must be >= 1 or null")

    def r_bounds(self, p: str = "tune") -> tuple[list, list]:
        """``(lows, highs)`` as lists: one entry (shared, or a scalar per-block bound) or one per block."""
        lows = self.r_min if isinstance(self.r_min, (list, tuple)) else [self.r_min]
        highs = self.r_max if isinstance(self.r_max, (list, tuple)) else [self.r_max]
        for key, values in ((f"{p}.r_min", lows), (f"{p}.r_max", highs)):
            _require(len(values) >= 1, key, "must not be an empty list")
            for v in values:
                ok = _is_number(v) and v > 0
                _require(ok, key, f"must be numbers > 0, got {v!r}")
            _require(self.mode == "per_block" or len(values) == 1, key, "must be a scalar when mode is 'shared'")
        if len(lows) != len(highs) and min(len(lows), len(highs)) > 1:
            raise ConfigError(f"{p}.r_max: has {len(highs)} entries but r_min has {len(lows)}")
        n = max(len(lows), len(highs))
        return [float(v) for v in lows] * (n // len(lows)), [float(v) for v in highs] * (n // len(highs))

    @staticmethod
    def _check_range(value, key: str, lowest: float, highest: float, low_open: bool) -> None:
        if value is None:
            return
        _require(_is_number_pair(value), key, f"must be null or [low, high], got {value!r}")
        low, high = value
        low_ok = low > lowest if low_open else low >= lowest
        bounds = f"{'(' if low_open else '['}{lowest:g}, {highest:g})"
        _require(low_ok and high < highest and low < high, key, f"needs low < high, both in {bounds}, got {value!r}")


@dataclass(frozen=True)
class EvaluateConfig:
    folds: int = 1
    aggregate: Literal["mean", "vote"] = "mean"

    def validate(self, p: str) -> None:
        _require(self.folds >= 1, f"{p}.folds", "must be >= 1 (1: the fixed train/valid/test split)")


@dataclass(frozen=True)
class PredictConfig:
    """Serving-time settings the train stage stores in the bundle (``genre-se predict`` reads the bundle)."""

    uncertain_below: float = 0.4       # a file whose top probability is below this is marked uncertain
    # a file farther from the training embeddings than this quantile of the validation clips is unfamiliar
    # (genre_se.familiarity); null: no familiarity statistics in the bundle
    unfamiliar_quantile: float | None = 0.95

    def validate(self, p: str) -> None:
        _require(0.0 <= self.uncertain_below <= 1.0, f"{p}.uncertain_below", "must be in [0, 1]")
        q = self.unfamiliar_quantile
        _require(q is None or (not isinstance(q, bool) and isinstance(q, (int, float)) and 0 < q <= 1),
                 f"{p}.unfamiliar_quantile", f"must be in (0, 1] or null, got {q!r}")


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def validate(self, p: str) -> None:
        # numpy's legacy seeding (keras.utils.set_random_seed) refuses 2**32 and above; SEED_MAX leaves headroom
        _require(0 <= self.seed <= SEED_MAX, "seed", f"must be in [0, {SEED_MAX}], got {self.seed}")
        # a CV fold tests on fold f and early-stops on fold f+1: with two folds nothing is left to train on
        _require(self.evaluate.folds != 2 or self.train.fit_all, "evaluate.folds",
                 "2 folds leave no training fold (fold f is tested, fold f+1 early-stops); use 1, 3 or more, or "
                 "train.fit_all: true (the early-stopping fold trains too)")
        # the low-pass cuts the mel bands above its cutoff: a range wholly above the top band never cuts anything
        lowpass = self.train.lowpass_hz
        if lowpass is not None:
            top = self.features.sample_rate / 2 if self.features.fmax is None else self.features.fmax
            _require(lowpass[0] < top, "train.lowpass_hz",
                     f"low {lowpass[0]:g} Hz is at or above the top of the mel bands ({top:g} Hz: features.fmax, or "
                     "features.sample_rate / 2), so no cutoff in the range would take anything away; start it below")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the (simple) type ``hint``; ints are accepted where floats are."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _all_finite(value) -> bool:
    """False for a float (or one in a list) that is inf or nan, which no setting means."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def from_dict(cls: type, raw: Any, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, checking keys, types and ranges."""
    where = prefix or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, key)
            continue
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _type_ok(value, hint):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
        if not _all_finite(value):  # .inf or .nan in YAML: every setting is a finite number where it is one
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if isinstance(value, tuple):
            value = list(value)
        kwargs[name] = value
    obj = cls(**kwargs)
    obj.validate(prefix)
    return obj


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` and ``1.0e3`` as floats as YAML 1.2 does (and DVC, which reads
    ``params.yaml`` itself): YAML 1.1's float needs a dot and a signed exponent, so PyYAML took them for text."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_value(text: str, key: str = "") -> Any:
    """One YAML value as ``params.yaml`` would hold it (``-S KEY=VALUE``'s VALUE), read as :func:`load_params` does.

    Raises
    ------
    ConfigError
        ``text`` is not valid YAML (``[16, 16`` without its bracket); the message names ``key``.
    """
    try:
        return yaml.load(text, Loader=ParamsLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{key or 'value'}: {text!r} is not a valid YAML value ({problem})") from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Load and validate ``params.yaml``; ``overrides`` maps dotted keys to values (``{"train.epochs": 1}``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=ParamsLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:  # an empty file: every default
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (seed, data, features, ...), "
                          f"got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return from_dict(Params, raw)


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """Set ``raw['a']['b'] = value`` for ``dotted == 'a.b'``, creating sections as needed (an empty one, a
    ``features:`` whose keys are all commented out, reads as null and is created too)."""
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[last] = value
