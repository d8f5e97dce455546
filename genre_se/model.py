"""The SE-CNN: Squeeze-and-Excitation blocks on a small 2-D CNN over log-mel segments.

Layer names are stable (``block{i}_conv``, ``block{i}_se``, ``embedding``, ``genre``; blocks count from 1)
because analysis, the embedding model and :func:`summary_text` find layers by name, also in a loaded model.
The input normalisation (train-split mean/std) is a layer of the model, so a saved model is complete.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import keras
from keras import ops

from .config import FeatureConfig, ModelConfig, from_dict
from .errors import ConfigError, ModelError

INPUT_NAME = "spectrogram"
STANDARDIZE_NAME = "standardize"
INSTANCE_NORM_NAME = "instance_standardize"
LOUDNESS_NAME = "loudness_normalize"
PCEN_NAME = "pcen"
EMBEDDING_NAME = "embedding"
OUTPUT_NAME = "genre"
BN_MOMENTUM = 0.9
_BLOCK_LAYER = re.compile(r"^block(\d+)_(\w+)$")


def se_hidden_units(channels: int, ratio: float) -> int:
    """Hidden width of an SE bottleneck: ``max(1, round(channels / ratio))``.

    ``ratio`` is the reduction ratio *r* of Hu et al. (a divisor, may be a float such as 31.43). Rounding
    is half-up (40 / 16 = 2.5 gives 3), not Python's half-to-even, which would give 2 for 40 / 16 but 4 for
    56 / 16. ``max(1, ...)`` keeps a bottleneck when r exceeds the channel count.
    """
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ConfigError(f"SE channels must be an int >= 1, got {channels!r}")
    is_number = isinstance(ratio, numbers.Real) and not isinstance(ratio, bool)
    if not is_number or not math.isfinite(ratio) or ratio <= 0:
        raise ConfigError(f"SE reduction ratio must be a finite number > 0, got {ratio!r}")
    return max(1, int(math.floor(int(channels) / float(ratio) + 0.5)))


@keras.saving.register_keras_serializable(package="genre_se")
class SqueezeExcitation(keras.layers.Layer):
    """Channel attention (Hu et al., 2018) for ``(batch, H, W, C)`` feature maps.

    Squeeze: global average over H and W. Excitation: Dense(hidden, ReLU) -> Dense(C, sigmoid), with
    ``hidden = se_hidden_units(C, ratio)``. The input is scaled channel-wise by the excitation.

    Parameters
    ----------
    ratio : float
        Reduction ratio r (> 0); the bottleneck width is known after ``build`` as :attr:`hidden_units`.
    use_bias : bool
        Whether both dense steps have a bias.
    """

    def __init__(self, ratio: float, use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        se_hidden_units(1, ratio)  # reject r <= 0 (and non-numbers) now, not at build time
        self.ratio = float(ratio)
        self.use_bias = bool(use_bias)
        self.channels: int | None = None
        self._hidden_units: int | None = None

    @property
    def hidden_units(self) -> int | None:
        """Bottleneck width; ``None`` until the layer is built (it depends on the input channels)."""
        return self._hidden_units

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ModelError(f"{self.name}: expects (batch, H, W, C) with known C, got {tuple(input_shape)}")
        self.channels = int(input_shape[-1])
        self._hidden_units = se_hidden_units(self.channels, self.ratio)
        c, h = self.channels, self._hidden_units
        self.reduce_kernel = self.add_weight(shape=(c, h), initializer="glorot_uniform", name="reduce_kernel")
        self.expand_kernel = self.add_weight(shape=(h, c), initializer="glorot_uniform", name="expand_kernel")
        if self.use_bias:
            self.reduce_bias = self.add_weight(shape=(h,), initializer="zeros", name="reduce_bias")
            self.expand_bias = self.add_weight(shape=(c,), initializer="zeros", name="expand_bias")

    def excitation(self, inputs):
        """The per-channel gates in (0, 1), shape ``(batch, C)``, for feature maps ``(batch, H, W, C)``."""
        return self.excite(ops.mean(inputs, axis=(1, 2)))

    def excite(self, squeezed):
        """Gates from already squeezed (channel-mean) vectors ``(batch, C)``."""
        hidden = ops.matmul(squeezed, self.reduce_kernel)
        if self.use_bias:
            hidden = hidden + self.reduce_bias
        gates = ops.matmul(ops.relu(hidden), self.expand_kernel)
        if self.use_bias:
            gates = gates + self.expand_bias
        return ops.sigmoid(gates)

    def call(self, inputs):
        return inputs * self.excitation(inputs)[:, None, None, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "ratio": self.ratio, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="genre_se")
class Standardize(keras.layers.Layer):
    """Fixed ``(x - mean) / std`` with train-split statistics, stored in the model's config (no weights)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for key, value in (("mean", mean), ("std", std)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"input normalisation {key} must be a finite number, got {value!r}")
        if std <= 0:
            raise ConfigError(f"input normalisation std must be > 0, got {std!r}")
        self.mean = float(mean)
        self.std = float(std)

    def call(self, inputs):
        return (inputs - self.mean) / self.std

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="genre_se")
class InstanceStandardize(keras.layers.Layer):
    """Standardise each input on its own: over the whole segment, or per mel band over time.

    A gain change shifts a log-mel segment by a constant number of dB; subtracting the segment's own mean
    removes it exactly (away from the power floor), so loud masters and quiet transfers look alike.
    ``epsilon`` (in the squared units of the input) keeps silent or constant inputs finite.
    """

    MODES = ("segment", "frequency")

    def __init__(self, mode: str = "segment", epsilon: float = 1e-2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ConfigError(f"model.input_norm: must be one of {self.MODES} for instance standardisation, got {mode!r}")
        if not (isinstance(epsilon, numbers.Real) and epsilon > 0):
            raise ConfigError(f"instance standardisation epsilon must be > 0, got {epsilon!r}")
        self.mode = mode
        self.epsilon = float(epsilon)

    def call(self, inputs):
        # inputs: (batch, n_mels, frames, channels); "frequency" keeps one statistic per mel band.
        axes = (1, 2, 3) if self.mode == "segment" else (2,)
        mean = ops.mean(inputs, axis=axes, keepdims=True)
        var = ops.mean(ops.square(inputs - mean), axis=axes, keepdims=True)
        return (inputs - mean) * ops.rsqrt(var + self.epsilon)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="genre_se")
class LoudnessNormalize(keras.layers.Layer):
    """Bring each log-mel segment to ``target_db`` by its own loudness: a gain, i.e. a dB offset.

    The level is ``offset_db + 10 log10(mean over frames of sum_m band_weights[m] * 10 ** (x[m] / 10))``
    (:func:`genre_se.features.loudness_band_weights`: RMS or EBU R128's K-weighted loudness); a segment
    quieter than ``gate_db`` (BS.1770's absolute gate, -70) is lifted as if it were at the gate, so
    silence stays near the floor instead of being amplified to the target. No weights: the numbers live
    in the config, so a saved model carries them.
    """

    def __init__(self, band_weights: list, offset_db: float = 0.0, target_db: float = -23.0,
                 gate_db: float = -70.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        weights = [float(w) for w in band_weights]
        if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ConfigError("loudness normalisation: band weights must be finite, >= 0 and not all 0")
        for key, value in (("offset_db", offset_db), ("target_db", target_db), ("gate_db", gate_db)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"loudness normalisation {key} must be a finite number, got {value!r}")
        self.band_weights = weights
        self.offset_db, self.target_db, self.gate_db = float(offset_db), float(target_db), float(gate_db)

    def build(self, input_shape: tuple) -> None:
        if input_shape[1] != len(self.band_weights):
            raise ModelError(f"loudness normalisation: {len(self.band_weights)} band weights for "
                             f"{input_shape[1]} mel bands")
        super().build(input_shape)

    def level(self, inputs):
        """Each input's level in dB (not gated), shape (batch, 1, 1, 1)."""
        weights = ops.reshape(ops.convert_to_tensor(self.band_weights, dtype=inputs.dtype), (1, -1, 1, 1))
        power = ops.exp(inputs * (math.log(10.0) / 10.0))
        mean_square = ops.mean(ops.sum(power * weights, axis=1, keepdims=True), axis=(2, 3), keepdims=True)
        return self.offset_db + ops.log(mean_square + 1e-30) * (10.0 / math.log(10.0))

    def call(self, inputs):
        return inputs + (self.target_db - ops.maximum(self.level(inputs), self.gate_db))

    def get_config(self) -> dict:
        return {**super().get_config(), "band_weights": self.band_weights, "offset_db": self.offset_db,
                "target_db": self.target_db, "gate_db": self.gate_db}


@keras.saving.register_keras_serializable(package="genre_se")
class PCEN(keras.layers.Layer):
    """Per-channel energy normalisation (Wang et al. 2017) of each segment, instead of plain log compression.

    On the segment's mel magnitude ``E = 2**31 * 10 ** (x / 20)`` (librosa's recommended integer scale):
    ``(E / (eps + M) ** gain + bias) ** power - bias ** power``, with ``M`` the first-order smoother
    ``M[t] = (1 - s) M[t - 1] + s E[t]`` started at ``M[-1] = E[0]``. The recursion over a segment's frames
    is written as one matrix product (exact, and exportable to LiteRT); equal to ``librosa.pcen`` with
    that initial state (tests/test_frontend.py). Each segment on its own, so every path gives the same.
    """

    def __init__(self, smoothing: float, gain: float = 0.98, bias: float = 2.0, power: float = 0.5,
                 eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(smoothing, numbers.Real) and 0 < smoothing <= 1):
            raise ConfigError(f"PCEN smoothing must be in (0, 1], got {smoothing!r}")
        if not (0 <= gain <= 1 and bias >= 0 and 0 < power <= 1 and eps > 0):
            raise ConfigError(f"PCEN: need 0 <= gain <= 1, bias >= 0, 0 < power <= 1, eps > 0 "
                              f"(got {gain}, {bias}, {power}, {eps})")
        self.smoothing, self.gain, self.bias, self.power, self.eps = (
            float(smoothing), float(gain), float(bias), float(power), float(eps))

    def smoother_matrix(self, frames: int):
        """(frames, frames) matrix W with M = E @ W along time (numpy, float32)."""
        import numpy as np

        s = self.smoothing
        t = np.arange(frames)
        lag = t[None, :] - t[:, None]  # W[k, t]: weight of frame k in M[t]
        matrix = np.where(lag >= 0, s * (1.0 - s) ** np.maximum(lag, 0), 0.0)
        matrix[0, :] += (1.0 - s) ** (t + 1)
        return matrix.astype(np.float32)

    def build(self, input_shape: tuple) -> None:
        self._matrix = ops.convert_to_tensor(self.smoother_matrix(int(input_shape[2])))
        super().build(input_shape)

    def call(self, inputs):
        energy = ops.exp(inputs[..., 0] * (math.log(10.0) / 20.0) + 31.0 * math.log(2.0))  # (batch, mels, T)
        smooth = ops.matmul(energy, ops.cast(self._matrix, energy.dtype))
        normalised = energy * ops.exp(-self.gain * ops.log(self.eps + smooth))
        return (ops.power(normalised + self.bias, self.power) - self.bias**self.power)[..., None]

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing, "gain": self.gain, "bias": self.bias,
                "power": self.power, "eps": self.eps}


def front_end_layers(config: ModelConfig, features: FeatureConfig | None) -> list:
    """Fresh front-end layers (loudness normalisation, PCEN) of a model config, in the order the model
    applies them; empty when both are off. They need the feature definition (bands, hop, rate)."""
    layers = []
    if config.loudness_norm == "none" and not config.pcen:
        return layers
    if features is None:
        raise ConfigError("model.loudness_norm / model.pcen need the feature configuration to build the model")
    if config.loudness_norm != "none":
        from .features import loudness_band_weights

        weights, offset = loudness_band_weights(features, config.loudness_norm)
        layers.append(LoudnessNormalize(weights, offset, config.loudness_target_db, name=LOUDNESS_NAME))
    if config.pcen:
        from .features import pcen_smoothing

        layers.append(PCEN(pcen_smoothing(features), name=PCEN_NAME))
    return layers


def front_end(config: ModelConfig | dict, features: FeatureConfig | None):
    """The model's front end as a numpy function of a batch of dB segments, or None when it has none.

    What the train-split standardisation statistics are computed on, so they describe what the
    :class:`Standardize` layer actually receives.
    """
    layers = front_end_layers(_as_model_config(config), features)
    if not layers:
        return None

    def apply(batch):
        x = ops.convert_to_tensor(batch, dtype="float32")
        for layer in layers:
            x = layer(x)
        return ops.convert_to_numpy(x)

    return apply


# --------------------------------------------------------------------------------------------------
# Building


def _as_model_config(config: ModelConfig | dict) -> ModelConfig:
    """Accept a ModelConfig or its dict (as stored in a bundle) and validate it."""
    if isinstance(config, ModelConfig):
        config.validate("model")
        return config
    if isinstance(config, dict):
        return from_dict(ModelConfig, config, "model")
    raise ConfigError(f"model: expected a ModelConfig or a mapping, got {type(config).__name__}")


def _check_input(input_shape: tuple, n_classes: int) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    is_size = [isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape]
    if len(shape) != 3 or not all(is_size):
        raise ConfigError(
            f"input_shape must be three ints >= 1 (n_mels, frames, channels), got {input_shape!r}"
        )
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"n_classes must be an int >= 2, got {n_classes!r}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _check_spatial(config: ModelConfig, input_shape: tuple[int, int, int]) -> None:
    """Fail early, naming the block, when convolutions and 2x2 pools shrink the map to nothing."""
    height, width = input_shape[:2]
    for i, (k, pad) in enumerate(zip(config.per_block("kernel_size"), config.per_block("padding")), start=1):
        if pad == "valid":
            height, width = height - k + 1, width - k + 1
        if height < 2 or width < 2:
            raise ConfigError(
                f"model.filters: input {input_shape} is too small for {config.n_blocks} blocks; the feature "
                f"map is {max(height, 0)}x{max(width, 0)} before the 2x2 pool of block {i} "
                "(use fewer blocks, 'same' padding, smaller kernels or a larger input)"
            )
        height, width = height // 2, width // 2


def _conv_block(x, i: int, filters: int, kernel: int, padding: str, dropout: float, cfg: ModelConfig, ratio):
    """Conv -> [BN] -> ReLU -> MaxPool 2x2 -> Dropout -> [SE]; the conv has no bias when BN follows it."""
    x = keras.layers.Conv2D(
        filters, kernel, padding=padding, use_bias=not cfg.batch_norm, name=f"block{i}_conv"
    )(x)
    if cfg.batch_norm:
        # momentum 0.9, not Keras' 0.99: on small datasets (a few hundred steps) the moving statistics
        # must converge within the first epochs, or inference-mode outputs collapse to one class.
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = keras.layers.Dropout(dropout, name=f"block{i}_dropout")(x)
    if cfg.se:
        x = SqueezeExcitation(ratio, use_bias=cfg.se_bias, name=f"block{i}_se")(x)
    return x


def build_model(
    config: ModelConfig | dict,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    name: str | None = None,
    features: FeatureConfig | None = None,
) -> keras.Model:
    """Build the (uncompiled) SE-CNN, or the plain CNN when ``config.se`` is false.

    Parameters
    ----------
    config : ModelConfig or dict
        Validated here; a per-block list of the wrong length raises ConfigError naming the key.
    input_shape : tuple
        ``(n_mels, frames, 1)`` of one segment.
    n_classes : int
        Number of genre labels; the softmax output layer is named ``genre``.
    mean, std : float
        Train-split statistics, applied by a :class:`Standardize` layer so the model is self-contained.
    name : str, optional
        Model name; defaults to ``se_cnn`` or ``plain_cnn``.
    features : FeatureConfig, optional
        The feature definition; required when ``loudness_norm`` or ``pcen`` is on (their layers depend on
        the mel bands, hop and rate). ``mean``/``std`` then describe the front end's output (:func:`front_end`).
    """
    cfg = _as_model_config(config)
    shape = _check_input(input_shape, n_classes)
    _check_spatial(cfg, shape)
    inputs = keras.Input(shape=shape, name=INPUT_NAME)
    x = inputs
    for layer in front_end_layers(cfg, features):
        x = layer(x)
    x = Standardize(mean, std, name=STANDARDIZE_NAME)(x)
    if cfg.input_norm != "dataset":
        x = InstanceStandardize(cfg.input_norm, name=INSTANCE_NORM_NAME)(x)
    per_block = zip(
        cfg.filters,
        cfg.per_block("kernel_size"),
        cfg.per_block("padding"),
        cfg.per_block("dropout"),
        cfg.per_block("reduction_ratios"),
    )
    for i, (filters, kernel, padding, dropout, ratio) in enumerate(per_block, start=1):
        x = _conv_block(x, i, filters, kernel, padding, dropout, cfg, ratio)
    if cfg.head == "gap":
        embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_NAME)(x)
    else:
        embedding = keras.layers.Flatten(name=EMBEDDING_NAME)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(embedding)
    return keras.Model(inputs, outputs, name=name or ("se_cnn" if cfg.se else "plain_cnn"))


# --------------------------------------------------------------------------------------------------
# Views on a built (or loaded) model


def _layer(model: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        raise ModelError(f"model {model.name!r} has no layer named {name!r}; not a genre-se model") from None


def embedding_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s weights that outputs the ``embedding`` (the classifier's input)."""
    return keras.Model(model.inputs[0], _layer(model, EMBEDDING_NAME).output, name=f"{model.name}_embedding")


def se_blocks(model: keras.Model) -> list[SqueezeExcitation]:
    """The SE layers in block order (empty for the plain-CNN baseline)."""
    return [layer for layer in model.layers if isinstance(layer, SqueezeExcitation)]


def excitations(model: keras.Model, x, batch_size: int = 64) -> list:
    """Every SE block's gates for inputs ``x``: one ``(n, C)`` numpy array per block, in block order.

    A side model outputs each block's squeezed input (channel means, small), and the block's own weights
    turn those into gates; a Keras layer node has a single output, so the gates cannot be tapped directly.
    """
    blocks = se_blocks(model)
    if not blocks:
        raise ModelError(f"model {model.name!r} has no SE blocks (built with se: false?)")
    squeezed = [keras.layers.GlobalAveragePooling2D()(block.input) for block in blocks]
    squeeze_model = keras.Model(model.inputs, squeezed)
    channel_means = squeeze_model.predict(x, batch_size=batch_size, verbose=0)
    if not isinstance(channel_means, (list, tuple)):
        channel_means = [channel_means]
    return [ops.convert_to_numpy(block.excite(means)) for block, means in zip(blocks, channel_means)]


def block_table(model: keras.Model) -> list[dict]:
    """One row per conv block: filters, kernel, r, SE hidden units, SE params and all block params."""
    blocks: dict[int, dict] = {}
    for layer in model.layers:
        match = _BLOCK_LAYER.match(layer.name)
        if not match:
            continue
        number = int(match.group(1))
        row = blocks.setdefault(
            number,
            {"block": number, "filters": None, "kernel": None, "ratio": None, "se_hidden": None,
             "se_params": 0, "params": 0},
        )
        row["params"] += layer.count_params()
        if isinstance(layer, keras.layers.Conv2D):
            row["filters"], row["kernel"] = layer.filters, layer.kernel_size[0]
        elif isinstance(layer, SqueezeExcitation):
            row.update(ratio=layer.ratio, se_hidden=layer.hidden_units, se_params=layer.count_params())
    return [blocks[i] for i in sorted(blocks)]


def _format_table(header: tuple, rows: list[tuple], align_left: int = 0) -> str:
    """Plain-text table; the first ``align_left`` columns are left-aligned, the rest right-aligned."""
    cells = [tuple(header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]

    def line(row: tuple) -> str:
        return "  ".join(
            cell.ljust(w) if c < align_left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in cells[1:]])


def _layer_rows(model: keras.Model) -> list[tuple]:
    rows = []
    for layer in model.layers:
        shape = str(tuple(layer.output.shape)).replace("None", "batch")
        rows.append((layer.name, type(layer).__name__, shape, f"{layer.count_params():,}"))
    return rows


def _block_rows(model: keras.Model) -> list[tuple]:
    return [
        (
            r["block"],
            r["filters"],
            r["kernel"],
            "-" if r["ratio"] is None else f"{r['ratio']:g}",
            "-" if r["se_hidden"] is None else r["se_hidden"],
            f"{r['se_params']:,}",
            f"{r['params']:,}",
        )
        for r in block_table(model)
    ]


def summary_text(model: keras.Model) -> str:
    """The layer table plus a per-block table showing each SE block's ratio r and hidden width.

    Plain text (not Keras' rich table, which is cut at 80 columns when captured), so a user sees e.g.
    that r=32 on a 32-channel block leaves a single hidden unit.
    """
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    parts = [
        f"Model: {model.name}",
        _format_table(("layer", "type", "output shape", "params"), _layer_rows(model), align_left=3),
        f"Total params: {total:,} (trainable {trainable:,}, non-trainable {total - trainable:,})",
        "",
        "Per-block SE settings (SE hidden = max(1, round(filters / r))):",
        _format_table(
            ("block", "filters", "kernel", "r", "SE hidden", "SE params", "block params"), _block_rows(model)
        ),
    ]
    parts.append("")  # the input path, in the order the model applies it
    loudness = [layer for layer in model.layers if isinstance(layer, LoudnessNormalize)]
    if loudness:
        parts += [f"Each segment brought to {loudness[0].target_db:g} dB by its own loudness"]
    if any(isinstance(layer, PCEN) for layer in model.layers):
        parts += ["PCEN instead of plain log compression (per segment)"]
    standardize = [layer for layer in model.layers if isinstance(layer, Standardize)]
    if standardize:
        parts += [f"Input normalisation: mean={standardize[0].mean:g}, std={standardize[0].std:g}"]
    instance = [layer for layer in model.layers if isinstance(layer, InstanceStandardize)]
    if instance:
        parts += [f"Then each input standardised on its own: per {instance[0].mode}"]
    return "\n".join(parts) + "\n"
