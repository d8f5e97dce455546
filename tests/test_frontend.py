"""Front-end options of the model (issue 10): loudness normalisation (RMS, EBU R128) and PCEN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from genre_se.config import FeatureConfig, ModelConfig, from_dict
from genre_se.errors import ConfigError
from genre_se.features import extract_segments, k_weighting_power, loudness_band_weights, pcen_smoothing
from genre_se.model import LOUDNESS_NAME, PCEN, PCEN_NAME, LoudnessNormalize, build_model, front_end, summary_text

FEATURES = FeatureConfig()  # the real definition: 22.05 kHz, 128 mels, 3-s segments
SMALL = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, segment_frames=16, segment_hop=8)

# ITU-R BS.1770-4, 48 kHz: the time-domain reference the mel-domain measurement must agree with
K_SOS = np.array([[1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
                  [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]])


def bs1770_loudness(y48: np.ndarray, span: tuple[float, float] | None = None) -> float:
    """Ungated loudness (LUFS) of a mono 48 kHz signal over ``span`` (seconds; default: all but the first
    second, where the filter settles), as BS.1770 defines it over one block."""
    import scipy.signal

    weighted = scipy.signal.sosfilt(K_SOS, y48.astype(np.float64))
    start, end = span or (1.0, len(y48) / 48000)
    return float(-0.691 + 10 * np.log10(np.mean(weighted[int(start * 48000) : int(end * 48000)] ** 2)))


def middle_segment(y: np.ndarray, cfg: FeatureConfig = FEATURES) -> np.ndarray:
    """The segment in the middle of a signal (away from the zero padding at either end), (1, mels, T, 1)."""
    segments = extract_segments(y.astype(np.float32), cfg)
    return segments.data[len(segments) // 2][None]


def middle_span(y: np.ndarray, cfg: FeatureConfig = FEATURES) -> tuple[float, float]:
    """Start and end (s) of the samples :func:`middle_segment`'s frames are centred on."""
    start = extract_segments(y.astype(np.float32), cfg).start_frames
    first = int(start[len(start) // 2]) * cfg.hop_length / cfg.sample_rate
    return first, first + cfg.segment_frames * cfg.hop_length / cfg.sample_rate


def level(kind: str, x: np.ndarray, cfg: FeatureConfig = FEATURES) -> float:
    weights, offset = loudness_band_weights(cfg, kind)
    return float(np.asarray(LoudnessNormalize(weights, offset).level(x)).ravel()[0])


def to_rate(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr

    return soxr.resample(y, sr_in, sr_out, quality="HQ").astype(np.float32)


def pink_noise(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
    y = np.fft.irfft(spectrum, n)
    return 0.1 * y / np.sqrt(np.mean(y**2))


# --------------------------------------------------------------------------------------------------
# Loudness


def test_k_weighting_response_is_the_standard_curve():
    db = 10 * np.log10(k_weighting_power([38.0, 100.0, 1000.0, 10000.0]))
    assert -7 < db[0] < -5  # the RLB high-pass
    assert abs(db[2]) < 1.0 and abs(db[3] - 4.0) < 0.2  # flat around 1 kHz, +4 dB shelf above


@pytest.mark.parametrize("freq", [60.0, 200.0, 1000.0, 5000.0])
def test_r128_level_of_a_sine_matches_the_time_domain_measurement(freq):
    t48, t22 = np.arange(6 * 48000) / 48000, np.arange(6 * 22050) / 22050
    expected = bs1770_loudness(0.25 * np.sin(2 * np.pi * freq * t48), middle_span(t22))
    measured = level("r128", middle_segment(0.25 * np.sin(2 * np.pi * freq * t22)))
    assert abs(measured - expected) < 0.5, (freq, measured, expected)


def test_rms_level_of_white_noise_is_its_rms_in_db():
    y = 0.05 * np.random.default_rng(1).normal(size=6 * 22050)
    assert abs(level("rms", middle_segment(y)) - 20 * np.log10(0.05)) < 0.2


def test_r128_level_of_pink_noise_matches_the_time_domain_measurement():
    y22 = to_rate(pink_noise(6, 48000), 48000, 22050)  # what the features can see: below 11 kHz
    expected = bs1770_loudness(to_rate(y22, 22050, 48000), middle_span(y22))
    assert abs(level("r128", middle_segment(y22)) - expected) < 0.5


def test_r128_level_of_a_real_clip_matches_the_time_domain_measurement(shared_data):
    import soundfile as sf

    y, sr = sf.read(shared_data / "gtzan-mini/genres/rock/rock.00003.wav", dtype="float32", frames=22050 * 6)
    expected = bs1770_loudness(to_rate(y, sr, 48000), middle_span(y))
    assert abs(level("r128", middle_segment(y)) - expected) < 0.5


@pytest.mark.parametrize("kind", ["rms", "r128"])
def test_a_clip_20_db_quieter_gives_the_same_features_after_loudness_normalisation(kind):
    rng = np.random.default_rng(2)
    t = np.arange(8 * 22050) / 22050
    y = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 1.5 * t)) + 0.05 * rng.normal(size=t.size))
    loud = extract_segments(y.astype(np.float32), FEATURES).data
    quiet = extract_segments((y * 0.1).astype(np.float32), FEATURES).data
    assert abs(float(np.median(loud - quiet)) - 20.0) < 0.01  # the features themselves move by 20 dB
    weights, offset = loudness_band_weights(FEATURES, kind)
    layer = LoudnessNormalize(weights, offset, target_db=-23.0)
    a, b = np.asarray(layer(loud)), np.asarray(layer(quiet))
    assert np.abs(a - b).max() < 1e-3
    np.testing.assert_allclose(np.asarray(layer.level(a)).ravel(), -23.0, atol=1e-3)  # at the target


def test_silence_is_not_lifted_to_the_target():
    silent = np.full((1, 128, 128, 1), -100.0, dtype=np.float32)  # the power floor
    weights, offset = loudness_band_weights(FEATURES, "r128")
    out = np.asarray(LoudnessNormalize(weights, offset, target_db=-23.0)(silent))
    # lifted only as far as the -70 dB gate allows: by 47 dB, not by the ~100 dB the target would need
    np.testing.assert_allclose(out, -100.0 + (-23.0 + 70.0), atol=1e-3)


def test_loudness_settings_are_checked():
    with pytest.raises(ValueError, match="loudness kind"):
        loudness_band_weights(FEATURES, "lufs")
    with pytest.raises(ConfigError, match="loudness_norm"):
        from_dict(ModelConfig, {"loudness_norm": "ebu"}, "model")
    with pytest.raises(ConfigError, match="loudness_target_db"):
        from_dict(ModelConfig, {"loudness_norm": "r128", "loudness_target_db": 10}, "model")
    with pytest.raises(ConfigError, match="band weights"):
        LoudnessNormalize([0.0, 0.0])


# --------------------------------------------------------------------------------------------------
# PCEN


def test_pcen_equals_librosa_started_at_the_first_frame():
    import librosa
    import scipy.signal

    rng = np.random.default_rng(4)
    x = rng.normal(-40, 15, size=(3, 128, 128, 1)).astype(np.float32)
    smoothing = pcen_smoothing(FEATURES)
    out = np.asarray(PCEN(smoothing)(x))
    for i in range(len(x)):
        energy = 2.0**31 * 10 ** (x[i, ..., 0].astype(np.float64) / 20)
        zi = scipy.signal.lfilter_zi([smoothing], [1, smoothing - 1]) * energy[:, :1]
        expected = librosa.pcen(energy, sr=FEATURES.sample_rate, hop_length=FEATURES.hop_length, zi=zi)
        np.testing.assert_allclose(out[i, ..., 0], expected, rtol=2e-3, atol=2e-3)


def test_pcen_smoothing_is_librosas_for_the_time_constant():
    import librosa

    energy = np.random.default_rng(9).uniform(1e6, 1e9, size=(4, 200))
    by_time = librosa.pcen(energy, sr=22050, hop_length=512, time_constant=0.25)
    by_coefficient = librosa.pcen(energy, b=pcen_smoothing(FEATURES, 0.25))
    np.testing.assert_allclose(by_coefficient, by_time, rtol=1e-9)


def test_pcen_suppresses_a_stationary_background_and_keeps_an_onset():
    x = np.full((1, 16, 64, 1), -30.0, dtype=np.float32)
    x[0, :, 40:44, 0] = -10.0  # a 20 dB burst
    out = np.asarray(PCEN(0.1)(x))[0, :, :, 0]
    assert out[:, 30].std() < 1e-4  # the steady background is flat across bands
    assert out[:, 41].mean() > 2 * out[:, 30].mean()  # the burst stands out
    quieter = np.asarray(PCEN(0.1)(x - 20.0))[0, :, :, 0]
    assert np.abs(quieter[:, 30] - out[:, 30]).max() < 0.05  # the gain control: 20 dB less barely shows


def test_pcen_settings_are_checked():
    with pytest.raises(ConfigError, match="smoothing"):
        PCEN(0.0)
    with pytest.raises(ConfigError, match="PCEN"):
        PCEN(0.1, power=2.0)


# --------------------------------------------------------------------------------------------------
# In the model: built, standardised, saved, exported


def test_model_without_feature_config_is_refused():
    with pytest.raises(ConfigError, match="feature configuration"):
        build_model(ModelConfig(filters=[4, 8], reduction_ratios=2, pcen=True), (16, 16, 1), 3)


def test_front_end_is_none_when_off_and_matches_the_models_layers_when_on():
    assert front_end(ModelConfig(), FEATURES) is None
    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, loudness_norm="r128", pcen=True, input_norm="dataset")
    x = np.random.default_rng(5).normal(-40, 12, size=(4, 16, 16, 1)).astype(np.float32)
    model = build_model(cfg, (16, 16, 1), 3, features=SMALL)
    import keras

    upto = keras.Model(model.inputs, model.get_layer(PCEN_NAME).output)
    np.testing.assert_allclose(front_end(cfg, SMALL)(x), upto.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    text = summary_text(model)
    assert "PCEN" in text and "brought to -23 dB by its own loudness" in text


def test_training_standardisation_describes_the_front_end_output():
    from genre_se.train import standardization_stats

    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, pcen=True)
    x = np.random.default_rng(6).normal(-40, 12, size=(20, 16, 16, 1)).astype(np.float32)
    mean, std = standardization_stats(x, np.arange(20), chunk=7, transform=front_end(cfg, SMALL))
    pcen_out = front_end(cfg, SMALL)(x)
    assert abs(mean - pcen_out.mean()) < 1e-4 and abs(std - pcen_out.std()) < 1e-4
    assert abs(mean - x.mean()) > 10  # not the dB statistics


def test_model_with_loudness_normalisation_is_blind_to_gain():
    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, loudness_norm="rms", input_norm="dataset")
    model = build_model(cfg, (16, 16, 1), 3, mean=0.0, std=10.0, features=SMALL)
    x = np.random.default_rng(7).normal(-40, 12, size=(4, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x - 20.0, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_bundle_and_litert_export_keep_the_front_end(tmp_path):
    from genre_se.bundle import load_bundle, save_bundle
    from genre_se.litert import LiteRTModel, export_litert

    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, loudness_norm="r128", pcen=True, input_norm="dataset")
    model = build_model(cfg, (16, 16, 1), 3, mean=0.5, std=0.2, features=SMALL)
    save_bundle(tmp_path / "b", model, ["a", "b", "c"], dataclasses.asdict(SMALL), dataclasses.asdict(cfg))
    loaded = load_bundle(tmp_path / "b")  # safe mode
    assert isinstance(loaded.model.get_layer(LOUDNESS_NAME), LoudnessNormalize)
    assert isinstance(loaded.model.get_layer(PCEN_NAME), PCEN)
    x = np.random.default_rng(8).normal(-40, 12, size=(5, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    record = export_litert(tmp_path / "b")
    assert record["parity"]["max_abs_diff"]["genre"] < 1e-4
    np.testing.assert_allclose(LiteRTModel(tmp_path / "b" / "model.tflite")(x), model.predict(x, verbose=0),
                               atol=1e-4)


@pytest.mark.slow
def test_pipeline_trains_and_predicts_with_the_front_end(tmp_path, tone_dataset, monkeypatch, capsys):
    """prepare -> features -> train -> evaluate with both options on, then `genre-se predict` (LiteRT fast
    path) on a training file 20 dB quieter: the same answer as at full level."""
    import json

    import soundfile as sf

    from genre_se.bundle import load_bundle
    from genre_se.cli import main
    from tests.conftest import TINY_PARAMS, write_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "data.root": str(tone_dataset), "tune.enabled": False,
                                            "model.loudness_norm": "r128", "model.pcen": True,
                                            "model.input_norm": "dataset"})
    for stage in ("prepare", "features", "train", "evaluate"):
        assert main(["-q", stage]) == 0
    bundle = load_bundle(tmp_path / "models/bundle")
    assert {LOUDNESS_NAME, PCEN_NAME} <= {layer.name for layer in bundle.model.layers}
    assert bundle.model_config["loudness_norm"] == "r128" and bundle.model_config["pcen"] is True
    assert 0.0 <= json.loads((tmp_path / "reports/metrics.json").read_text())["clip"]["accuracy"] <= 1.0

    source = next((tone_dataset / "high").glob("*.wav"))
    y, sr = sf.read(source, dtype="float32")
    sf.write(tmp_path / "quiet.wav", y * 0.1, sr)
    answers = []
    for path in (source, tmp_path / "quiet.wav"):
        capsys.readouterr()
        assert main(["predict", str(path), "--model", "models/bundle", "--format", "json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["predictions"][0])
    assert answers[0]["genre"] == answers[1]["genre"]
    for genre, p in answers[0]["probabilities"].items():
        assert abs(p - answers[1]["probabilities"][genre]) < 0.02


@pytest.mark.parametrize("front", [{"pcen": True}, {"loudness_norm": "r128"}])
def test_export_parity_probes_look_like_log_mel_segments_after_the_front_end(tmp_path, front):
    """The LiteRT parity probes must reach the network at the spread real segments do: drawn at the
    Standardize statistics (which describe the front end's output), PCEN flattened them to near-constant maps."""
    from genre_se.bundle import load_bundle, save_bundle
    from genre_se.litert import _probe_inputs

    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2, input_norm="dataset", **front)
    rng = np.random.default_rng(3)
    t = np.arange(3 * 8000) / 8000
    real = extract_segments((0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
                             ).astype(np.float32), SMALL).data
    after = front_end(cfg, SMALL)(real)
    model = build_model(cfg, (16, 16, 1), 3, mean=float(after.mean()), std=float(after.std()), features=SMALL)
    save_bundle(tmp_path / "b", model, ["a", "b", "c"], dataclasses.asdict(SMALL), dataclasses.asdict(cfg))
    probes = front_end(cfg, SMALL)(_probe_inputs(load_bundle(tmp_path / "b"), 8, 0))
    assert probes.std(axis=(1, 2, 3)).mean() > 0.25 * after.std(axis=(1, 2, 3)).mean()


def test_export_is_refused_when_only_the_embedding_differs(tmp_path, monkeypatch):
    """familiarity, the SVM head and `embed` read the LiteRT embedding: the parity check must cover it."""
    from genre_se.bundle import save_bundle
    from genre_se.errors import ModelError
    from genre_se.litert import EXPORT_FILE, LiteRTModel, export_litert

    cfg = ModelConfig(filters=[4, 8], reduction_ratios=2)
    model = build_model(cfg, (16, 16, 1), 3, mean=-40.0, std=12.0, features=SMALL)
    save_bundle(tmp_path / "b", model, ["a", "b", "c"], dataclasses.asdict(SMALL), dataclasses.asdict(cfg))
    run = LiteRTModel.run
    monkeypatch.setattr(LiteRTModel, "run", lambda self, x: (lambda out: out | {"embedding": out["embedding"] * 1.5})(
        run(self, x)))
    with pytest.raises(ModelError, match="embedding differs"):
        export_litert(tmp_path / "b")
    assert not (tmp_path / "b" / EXPORT_FILE).exists()
