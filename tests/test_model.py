"""The SE-CNN: SE layer maths, parameter counts, per-block settings, embedding and a wiring (overfit) check."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from genre_se.config import ModelConfig
from genre_se.errors import ConfigError, ModelError
from genre_se.model import (
    SqueezeExcitation,
    Standardize,
    block_table,
    build_model,
    embedding_model,
    excitations,
    se_blocks,
    se_hidden_units,
    summary_text,
)

TINY_SHAPE = (16, 16, 1)


def tiny_config(**overrides) -> ModelConfig:
    settings = {"filters": [4, 8], "reduction_ratios": 2, "dropout": 0.0}
    settings.update(overrides)
    return ModelConfig(**settings)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def numpy_se(x, reduce_kernel, expand_kernel, reduce_bias=None, expand_bias=None):
    """Reference SE: squeeze (mean over H, W), Dense+ReLU, Dense+sigmoid, scale; returns (output, gates)."""
    squeezed = x.mean(axis=(1, 2))
    hidden = squeezed @ reduce_kernel + (0.0 if reduce_bias is None else reduce_bias)
    gates = sigmoid(np.maximum(hidden, 0.0) @ expand_kernel + (0.0 if expand_bias is None else expand_bias))
    return x * gates[:, None, None, :], gates


def hand_param_count(filters, input_shape, n_classes, *, kernel=3, padding="same", bn=True, se=True, r=2.0,
                     se_bias=True, head="gap"):
    """Parameters written out by hand: conv (no bias under BN), BN (4 per channel), SE, dense head."""
    height, width, channels_in = input_shape
    total = 0
    for f in filters:
        total += kernel * kernel * channels_in * f + (0 if bn else f)
        total += 4 * f if bn else 0
        if se:
            hidden = max(1, int(f / r + 0.5))
            total += f * hidden + hidden * f + ((hidden + f) if se_bias else 0)
        if padding == "valid":
            height, width = height - kernel + 1, width - kernel + 1
        height, width, channels_in = height // 2, width // 2, f
    features = channels_in if head == "gap" else height * width * channels_in
    return total + features * n_classes + n_classes


# --------------------------------------------------------------------------------------------------
# se_hidden_units and the SE layer


@pytest.mark.parametrize(
    "channels, ratio, expected",
    [(32, 16, 2), (32, 32, 1), (32, 64, 1), (128, 31.43, 4), (256, 8.5, 30), (40, 16, 3), (56, 16, 4), (1, 16, 1)],
)
def test_se_hidden_units(channels, ratio, expected):
    assert se_hidden_units(channels, ratio) == expected


@pytest.mark.parametrize("ratio", [0, -4, 0.0, float("nan"), float("inf"), "16", True, None])
def test_se_rejects_bad_ratio(ratio):
    with pytest.raises(ConfigError, match="reduction ratio"):
        SqueezeExcitation(ratio)
    with pytest.raises(ConfigError, match="reduction ratio"):
        se_hidden_units(32, ratio)


@pytest.mark.parametrize("use_bias", [True, False])
def test_se_layer_matches_numpy(use_bias):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 8)).astype("float32")
    layer = SqueezeExcitation(4, use_bias=use_bias)
    assert layer.hidden_units is None
    layer.build(x.shape)
    assert layer.hidden_units == 2 and layer.channels == 8
    assert len(layer.weights) == (4 if use_bias else 2)
    weights = {
        "reduce_kernel": rng.normal(size=(8, 2)),
        "expand_kernel": rng.normal(size=(2, 8)),
        "reduce_bias": rng.normal(size=(2,)) if use_bias else None,
        "expand_bias": rng.normal(size=(8,)) if use_bias else None,
    }
    for name, value in weights.items():
        if value is not None:
            getattr(layer, name).assign(value.astype("float32"))
    expected, expected_gates = numpy_se(x, **weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.excitation(x)), expected_gates, rtol=1e-5, atol=1e-6
    )


def test_se_layer_config_round_trip():
    layer = SqueezeExcitation(31.43, use_bias=False, name="se_x")
    clone = SqueezeExcitation.from_config(layer.get_config())
    assert (clone.ratio, clone.use_bias, clone.name) == (31.43, False, "se_x")
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(revived, SqueezeExcitation)
    assert revived.get_config() == layer.get_config()


def test_numpy_scalars_are_accepted():
    assert se_hidden_units(np.int64(64), np.float32(16.0)) == 4
    layer = Standardize(np.float32(-30.0), np.float64(12.5))
    assert (layer.mean, layer.std) == (-30.0, 12.5) and type(layer.mean) is float


def test_standardize_layer():
    layer = Standardize(mean=-30.0, std=12.5)
    x = np.linspace(-80, 0, 24, dtype="float32").reshape(1, 2, 12, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), (x + 30.0) / 12.5, rtol=1e-6)
    clone = Standardize.from_config(layer.get_config())
    assert (clone.mean, clone.std) == (-30.0, 12.5)
    assert layer.weights == []
    for bad_std in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="std"):
            Standardize(0.0, bad_std)


# --------------------------------------------------------------------------------------------------
# build_model: parameter counts


def test_default_model_param_counts():
    # Reference design, r = 16, gap head, 10 classes, input (128, 128, 1), worked by hand:
    #   block  conv (3*3*cin*f)   BN (4f)   SE: C=f, h=f/16, 2*C*h + h + C
    #   1      288                128       2*32*2 + 2 + 32      = 162
    #   2      18,432             256       2*64*4 + 4 + 64      = 580
    #   3      73,728             512       2*128*8 + 8 + 128    = 2,184
    #   4      294,912            1,024     2*256*16 + 16 + 256  = 8,464
    #   5      294,912            512       2*128*8 + 8 + 128    = 2,184
    #   dense 128*10 + 10 = 1,290
    # conv + BN + dense = 685,994; SE adds 13,574 -> 699,568. Flatten: 4*4*128 features -> +19,200.
    config = ModelConfig()
    assert build_model(config, (128, 128, 1), 10).count_params() == 699_568
    assert build_model(ModelConfig(se=False), (128, 128, 1), 10).count_params() == 685_994
    assert build_model(ModelConfig(head="flatten"), (128, 128, 1), 10).count_params() == 718_768
    assert build_model(ModelConfig(se=False, head="flatten"), (128, 128, 1), 10).count_params() == 705_194


@pytest.mark.parametrize("se", [True, False])
@pytest.mark.parametrize("head", ["gap", "flatten"])
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"batch_norm": False},
        {"se_bias": False},
        {"padding": "valid", "kernel_size": 3},
        {"reduction_ratios": 16},  # r > channels: one hidden unit
    ],
)
def test_param_counts_match_formula(se, head, variant):
    config = tiny_config(filters=[4, 8, 6], se=se, head=head, **variant)
    model = build_model(config, (24, 24, 1), 5)
    expected = hand_param_count(
        [4, 8, 6], (24, 24, 1), 5,
        kernel=config.kernel_size, padding=config.padding, bn=config.batch_norm, se=se,
        r=config.reduction_ratios, se_bias=config.se_bias, head=head,
    )
    assert model.count_params() == expected
    assert len(se_blocks(model)) == (3 if se else 0)


def test_se_false_is_the_same_network_without_se():
    with_se = build_model(tiny_config(), TINY_SHAPE, 3)
    without = build_model(tiny_config(se=False), TINY_SHAPE, 3)
    names_with = [layer.name for layer in with_se.layers if not isinstance(layer, SqueezeExcitation)]
    assert names_with == [layer.name for layer in without.layers]
    assert se_blocks(without) == []
    assert with_se.name == "se_cnn" and without.name == "plain_cnn"
    with pytest.raises(ModelError, match="no SE blocks"):
        excitations(without, np.zeros((1, *TINY_SHAPE), "float32"))


# --------------------------------------------------------------------------------------------------
# build_model: per-block settings and validation


def test_per_block_lists_are_applied():
    config = tiny_config(
        filters=[4, 8, 16],
        kernel_size=[3, 5, 1],
        padding=["same", "valid", "same"],
        dropout=[0.0, 0.1, 0.3],
        reduction_ratios=[2, 32, 3.3],
    )
    model = build_model(config, (32, 32, 1), 4)
    assert [model.get_layer(f"block{i}_conv").kernel_size for i in (1, 2, 3)] == [(3, 3), (5, 5), (1, 1)]
    assert [model.get_layer(f"block{i}_conv").padding for i in (1, 2, 3)] == ["same", "valid", "same"]
    assert [model.get_layer(f"block{i}_dropout").rate for i in (1, 2, 3)] == [0.0, 0.1, 0.3]
    assert [block.hidden_units for block in se_blocks(model)] == [2, 1, 5]  # 16 / 3.3 = 4.85 -> 5
    assert [row["se_hidden"] for row in block_table(model)] == [2, 1, 5]


@pytest.mark.parametrize("setting", ["kernel_size", "padding", "dropout", "reduction_ratios"])
@pytest.mark.parametrize("length", [1, 2, 4])
def test_per_block_list_of_wrong_length_names_the_setting(setting, length):
    scalar = getattr(ModelConfig(), setting)
    config = tiny_config(filters=[4, 8, 8], **{setting: [scalar] * length})
    with pytest.raises(ConfigError, match=rf"model\.{setting}: has {length} entries but the model has 3 blocks"):
        build_model(config, TINY_SHAPE, 3)


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match=r"model\.reduction_ratios"):
        build_model(tiny_config(reduction_ratios=[2, 0]), TINY_SHAPE, 3)
    with pytest.raises(ConfigError, match=r"model\.filterz: unknown key"):
        build_model({"filterz": [4]}, TINY_SHAPE, 3)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model(tiny_config(), (16, 16), 3)
    with pytest.raises(ConfigError, match="n_classes"):
        build_model(tiny_config(), TINY_SHAPE, 1)
    with pytest.raises(ConfigError, match="std"):
        build_model(tiny_config(), TINY_SHAPE, 3, std=0.0)


def test_input_too_small_for_the_blocks_names_the_block():
    # 32 -valid conv-> 30 -pool-> 15 -> 13 -> 6 -> 4 -> 2 -> 0 before the pool of block 4
    config = ModelConfig(filters=[4, 4, 4, 4, 4], padding="valid")
    with pytest.raises(ConfigError, match=r"model\.filters: .*0x0 before the 2x2 pool of block 4"):
        build_model(config, (32, 32, 1), 3)
    build_model(ModelConfig(filters=[4, 4, 4], padding="valid"), (32, 32, 1), 3)  # 3 blocks fit


def test_dict_config_is_accepted():
    model = build_model({"filters": [4, 8], "reduction_ratios": [2, 4], "head": "flatten"}, TINY_SHAPE, 3)
    assert [block.hidden_units for block in se_blocks(model)] == [2, 2]
    assert model.get_layer("embedding").output.shape[-1] == 4 * 4 * 8


# --------------------------------------------------------------------------------------------------
# Normalisation, embedding, excitations, summary


def test_normalisation_lives_in_the_model():
    rng = np.random.default_rng(1)
    x = rng.normal(-40.0, 15.0, size=(4, *TINY_SHAPE)).astype("float32")
    normalised = build_model(tiny_config(), TINY_SHAPE, 3, mean=-40.0, std=15.0)
    plain = build_model(tiny_config(), TINY_SHAPE, 3)
    plain.set_weights(normalised.get_weights())
    np.testing.assert_allclose(
        normalised.predict(x, verbose=0), plain.predict((x + 40.0) / 15.0, verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("head, width", [("gap", 8), ("flatten", 4 * 4 * 8)])
def test_embedding_model_shares_weights_with_the_classifier(head, width):
    model = build_model(tiny_config(head=head), TINY_SHAPE, 3)
    embedder = embedding_model(model)
    x = np.random.default_rng(2).normal(size=(5, *TINY_SHAPE)).astype("float32")
    embedding = embedder.predict(x, verbose=0)
    assert embedding.shape == (5, width)
    kernel, bias = model.get_layer("genre").get_weights()
    logits = embedding @ kernel + bias
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), softmax, rtol=1e-4, atol=1e-6)
    assert embedder.get_layer("block1_conv") is model.get_layer("block1_conv")
    conv = model.get_layer("block1_conv")
    conv.kernel.assign(conv.kernel * 3.0)  # a change in the classifier shows in the embedding
    assert not np.allclose(embedder.predict(x, verbose=0), embedding)


def test_embedding_model_needs_a_genre_se_model():
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ModelError, match="no layer named 'embedding'"):
        embedding_model(other)


def test_excitations_match_numpy_on_block_inputs():
    model = build_model(tiny_config(), TINY_SHAPE, 3)
    x = np.random.default_rng(3).normal(size=(6, *TINY_SHAPE)).astype("float32")
    gates = excitations(model, x, batch_size=4)
    blocks = se_blocks(model)
    assert [g.shape for g in gates] == [(6, 4), (6, 8)]
    block_inputs = keras.Model(model.inputs, [b.input for b in blocks]).predict(x, verbose=0)
    for block, maps, block_gates in zip(blocks, block_inputs, gates):
        weights = {v.name: keras.ops.convert_to_numpy(v) for v in block.weights}
        _, expected = numpy_se(maps, **weights)
        np.testing.assert_allclose(block_gates, expected, rtol=1e-4, atol=1e-6)
        assert np.all((block_gates > 0) & (block_gates < 1))


def test_summary_shows_se_hidden_units_per_block():
    config = tiny_config(filters=[32, 64], reduction_ratios=[32, 8])
    text = summary_text(build_model(config, TINY_SHAPE, 3, mean=-50.0, std=20.0))
    assert "block1_se" in text and "SqueezeExcitation" in text and "embedding" in text
    rows = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["block", "filters"])
    for line in lines[start + 2:start + 4]:
        cells = line.split()
        rows[int(cells[0])] = cells
    assert rows[1][1:5] == ["32", "3", "32", "1"]  # r=32 on a 32-channel block: one hidden unit
    assert rows[2][1:5] == ["64", "3", "8", "8"]
    assert "mean=-50, std=20" in text


# --------------------------------------------------------------------------------------------------
# Wiring: a tiny model overfits a tiny random batch


def test_tiny_model_overfits_a_tiny_batch():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, *TINY_SHAPE)).astype("float32")
    y = rng.integers(0, 3, size=12)
    model = build_model(tiny_config(filters=[8, 16]), TINY_SHAPE, 3)
    se_kernel_before = keras.ops.convert_to_numpy(se_blocks(model)[0].reduce_kernel).copy()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=12, epochs=40, verbose=0).history["loss"]
    assert math.isfinite(history[-1])
    assert history[-1] < 0.25 * history[0], history
    assert not np.allclose(keras.ops.convert_to_numpy(se_blocks(model)[0].reduce_kernel), se_kernel_before)


def test_batch_norm_moving_statistics_catch_up_within_a_few_dozen_steps():
    """A small dataset gives a few hundred training steps: the statistics used in inference mode must reach the
    data's within the first epochs, or inference-mode outputs collapse to one class (Keras' default momentum,
    0.99, still has three quarters of its initial 0 after 30 steps)."""
    model = build_model(tiny_config(), TINY_SHAPE, 3)
    bn = model.get_layer("block1_bn")
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(8, 16, 16, 4)).astype("float32")
    for _ in range(30):
        bn(x, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), x.mean(axis=(0, 1, 2)), rtol=0.1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), x.var(axis=(0, 1, 2)), rtol=0.15)


def test_model_summary_refuses_classes_it_cannot_build_instead_of_taking_ten(tmp_path, capsys):
    """`model summary --classes 0` became `args.classes or 10` when --classes lost its default (to refuse it with
    --model): a summary of 10 genres instead of the n_classes error every other count below 2 gets."""
    from pathlib import Path

    from genre_se.cli import main

    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    for classes in ("0", "1"):
        assert main(["model", "summary", "--params", str(params), "--classes", classes]) == 1
        assert f"n_classes must be an int >= 2, got {classes}" in capsys.readouterr().err
    assert main(["model", "summary", "--params", str(params), "--classes", "3"]) == 0
    assert "(batch, 3)" in capsys.readouterr().out
