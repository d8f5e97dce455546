"""Per-input standardisation (model.input_norm): the maths, gain blindness, and every path applying it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from genre_se.config import FeatureConfig, ModelConfig, from_dict
from genre_se.errors import ConfigError
from genre_se.features import extract_segments
from genre_se.model import INSTANCE_NORM_NAME, InstanceStandardize, build_model, summary_text

SHAPE = (16, 16, 1)


def normalised_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """What the first conv block sees: the model's input after its normalisation layers."""
    probe = keras.Model(model.inputs, model.get_layer(INSTANCE_NORM_NAME).output)
    return np.asarray(probe(x, training=False))


@pytest.mark.parametrize("mode, axes", [("segment", (1, 2, 3)), ("frequency", (2,))])
def test_instance_standardize_matches_numpy(mode, axes):
    x = np.random.default_rng(0).normal(-40, 12, size=(3, 8, 10, 1)).astype("float32")
    x[:, 2] += 15.0  # one louder band: "frequency" must remove it, "segment" must keep it
    layer = InstanceStandardize(mode, epsilon=1e-2)
    mean = x.mean(axis=axes, keepdims=True)
    expected = (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-2)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-4)
    clone = InstanceStandardize.from_config(layer.get_config())
    assert (clone.mode, clone.epsilon) == (mode, 1e-2) and layer.weights == []


def test_silent_input_stays_finite():
    out = np.asarray(InstanceStandardize("frequency")(np.full((1, 4, 6, 1), -100.0, "float32")))
    assert np.all(out == 0.0)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.input_norm"):
        from_dict(ModelConfig, {"input_norm": "loudness"}, "model")
    with pytest.raises(ConfigError, match="input_norm"):
        InstanceStandardize("global")


@pytest.mark.parametrize("mode", ["segment", "frequency"])
def test_model_output_is_blind_to_a_constant_db_offset(mode):
    x = np.random.default_rng(1).normal(-40, 12, size=(4, *SHAPE)).astype("float32")
    model = build_model(ModelConfig(filters=[4, 8], reduction_ratios=2, input_norm=mode), SHAPE, 3,
                        mean=-40.0, std=12.0)
    np.testing.assert_allclose(model.predict(x, verbose=0), model.predict(x - 20.0, verbose=0), atol=1e-5)
    dataset_only = build_model(ModelConfig(filters=[4, 8], reduction_ratios=2), SHAPE, 3, mean=-40.0, std=12.0)
    assert INSTANCE_NORM_NAME not in [layer.name for layer in dataset_only.layers]
    assert f"per {mode}" in summary_text(model)


def _gain_diff(y: np.ndarray, cfg: FeatureConfig, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """|difference| of the normalised model input between a clip and the same clip 20 dB quieter, and the
    mask of bins where the quiet copy sits on the power floor (features.amin), where no offset can survive."""
    loud = extract_segments(y, cfg).data
    quiet = extract_segments(y * 10 ** (-20 / 20), cfg).data
    floored = quiet <= 10 * np.log10(cfg.amin) + 1e-3
    assert abs(float(np.median(loud - quiet)) - 20.0) < 0.01  # the features themselves do move by 20 dB
    model = build_model(ModelConfig(filters=[4, 8], reduction_ratios=2, input_norm=mode), loud.shape[1:], 3,
                        mean=-40.0, std=15.0)
    return np.abs(normalised_input(model, loud) - normalised_input(model, quiet)), floored


@pytest.mark.parametrize("mode", ["segment", "frequency"])
def test_a_clip_20_db_quieter_gives_the_same_normalised_features(mode):
    cfg = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, segment_frames=32, segment_hop=16)
    rng = np.random.default_rng(2)
    t = np.arange(4 * 8000) / 8000
    y = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.normal(size=t.size)
    diff, floored = _gain_diff(y.astype("float32"), cfg, mode)
    assert not floored.any() and diff.max() < 1e-3


@pytest.mark.parametrize("mode", ["segment", "frequency"])
def test_a_real_gtzan_clip_20_db_quieter_gives_the_same_normalised_features(shared_data, mode):
    import soundfile as sf

    y, sr = sf.read(shared_data / "gtzan-mini/genres/classical/classical.00001.wav", dtype="float32",
                    frames=22050 * 8)
    assert sr == 22050
    diff, floored = _gain_diff(y, FeatureConfig(), mode)
    # A quiet classical transfer: 20 dB down, ~2 % of its bins (top bands) fall onto the -100 dB floor and
    # lose their offset; everything else stays put.
    assert floored.mean() < 0.05
    assert diff.mean() < 0.01 and np.percentile(diff, 95) < 0.05
    if mode == "segment":
        assert diff[~floored].max() < 0.05


def test_bundle_and_litert_export_keep_the_normalisation(tmp_path):
    """Saved, loaded in safe mode and exported to LiteRT, the model still standardises each segment itself."""
    import dataclasses

    from genre_se.bundle import load_bundle, save_bundle
    from genre_se.litert import LiteRTModel, export_litert

    cfg = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8)
    model_cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, input_norm="segment")
    model = build_model(model_cfg, SHAPE, 3, mean=-40.0, std=15.0)
    save_bundle(tmp_path / "b", model, ["a", "b", "c"], dataclasses.asdict(cfg), dataclasses.asdict(model_cfg))
    loaded = load_bundle(tmp_path / "b")
    x = np.random.default_rng(3).normal(-40, 12, size=(5, *SHAPE)).astype("float32")
    assert isinstance(loaded.model.get_layer(INSTANCE_NORM_NAME), InstanceStandardize)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    record = export_litert(tmp_path / "b")
    assert record["parity"]["max_abs_diff"]["genre"] < 1e-5
    fast = LiteRTModel(tmp_path / "b" / "model.tflite")
    np.testing.assert_allclose(fast(x - 20.0), model.predict(x, verbose=0), atol=1e-5)
