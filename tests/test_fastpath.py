"""The fast prediction path: LiteRT export + stored mel front end, equal to the Keras path and the features.

Feature parity: the bundle's stored window and filter bank give the training features (``features.log_mel``
with librosa's filter bank) within 1e-4 dB, and so does the sparse product genre-se used before. Prediction
parity: the export gives the Keras model's probabilities (and embeddings) on the tiny trained bundle of
``test_inference``, same top-1. The fast CLI path imports neither TensorFlow/Keras nor librosa/scipy/pandas.
The benchmark scripts run in their smoke mode so they cannot rot (no timing is asserted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genre_se.config import FeatureConfig
from genre_se.errors import ModelError
from tests.conftest import SHARED_DATA, TINY_PARAMS, write_params
from tests.test_inference import BAND_HZ, FEATURES, tiny, tone  # noqa: F401  (tiny: shared bundle fixture)

ROOT = Path(__file__).resolve().parents[1]
GTZAN = SHARED_DATA / "gtzan-mini" / "genres"
DEFAULT = FeatureConfig()
DB_TOLERANCE = 1e-4


def noise_and_tone(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.1 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def stored_frontend(tmp_path: Path, cfg: FeatureConfig):
    """The front end as a bundle stores it (frontend.npz) and the fast path reads it back."""
    from genre_se.litert import _load_frontend, _write_frontend

    path = tmp_path / "frontend.npz"
    _write_frontend(cfg, path)
    return _load_frontend(path, cfg)


def sparse_reference(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel with a scipy CSR filter-bank product: genre-se's previous implementation, independent of
    the band product both paths now share."""
    import librosa
    import scipy.signal
    import scipy.sparse

    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                fmax=cfg.fmax).astype(np.float32)
    window = scipy.signal.get_window("hann", cfg.n_fft, fftbins=True).astype(np.float32)
    padded = np.concatenate([np.zeros(cfg.n_fft // 2, np.float32), y, np.zeros(cfg.n_fft // 2, np.float32)])
    n_frames = 1 + len(y) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length][:n_frames]
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = scipy.sparse.csr_array(basis) @ power.T
    return (10 * np.log10(np.maximum(mel, cfg.amin)) - 10 * np.log10(cfg.ref_power)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Feature parity


@pytest.mark.parametrize("cfg", [DEFAULT, FEATURES, dataclasses.replace(DEFAULT, fmin=30.0, fmax=8000.0, n_mels=64)])
def test_stored_front_end_gives_the_training_features(tmp_path, cfg):
    from genre_se.features import MelFrontend, log_mel

    y = noise_and_tone(2.3, cfg.sample_rate)
    frontend = stored_frontend(tmp_path, cfg)
    definition = MelFrontend.for_config(cfg)  # librosa + scipy
    np.testing.assert_array_equal(frontend.basis, definition.basis)
    np.testing.assert_array_equal(frontend.window, definition.window)
    fast, training = log_mel(y, cfg, frontend=frontend), log_mel(y, cfg)
    assert fast.shape == training.shape == (cfg.n_mels, 1 + len(y) // cfg.hop_length)
    assert np.abs(fast - training).max() <= DB_TOLERANCE
    assert np.abs(fast - sparse_reference(y, cfg)).max() <= DB_TOLERANCE


def test_stored_front_end_on_a_real_gtzan_clip(tmp_path):
    if not GTZAN.is_dir():
        pytest.skip(f"shared GTZAN clips not found at {GTZAN}")
    from genre_se.audio import load_audio
    from genre_se.features import extract_segments, log_mel

    path = GTZAN / "blues" / "blues.00000.wav"
    y = load_audio(path, DEFAULT.sample_rate)
    frontend = stored_frontend(tmp_path, DEFAULT)
    fast = log_mel(y, DEFAULT, frontend=frontend)
    assert np.abs(fast - log_mel(y, DEFAULT)).max() <= DB_TOLERANCE
    assert np.abs(fast - sparse_reference(y, DEFAULT)).max() <= DB_TOLERANCE
    served = extract_segments(path, DEFAULT, frontend=frontend)  # the file road prediction takes
    assert np.abs(served.data - extract_segments(path, DEFAULT).data).max() <= DB_TOLERANCE


def test_a_front_end_for_other_features_is_refused(tmp_path):
    from genre_se.litert import _load_frontend, _write_frontend

    _write_frontend(FEATURES, tmp_path / "frontend.npz")
    other = dataclasses.replace(FEATURES, fmax=3000.0)
    with pytest.raises(ModelError, match="frontend.npz: built for features"):
        _load_frontend(tmp_path / "frontend.npz", other)
    from genre_se.features import MelFrontend

    with pytest.raises(ValueError, match="do not fit"):
        MelFrontend(np.ones(256, np.float32), np.ones((16, 100), np.float32))


# --------------------------------------------------------------------------------------------------
# Export and prediction parity


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):  # noqa: F811
    """A copy of the tiny trained bundle with its float32 LiteRT export."""
    from genre_se.litert import export_litert

    bundle = tmp_path_factory.mktemp("exported") / "bundle"
    shutil.copytree(tiny["bundle"], bundle)
    record = export_litert(bundle)
    return bundle, record


@pytest.fixture(scope="module")
def classifiers(exported):
    from genre_se.inference import GenreClassifier

    bundle, _ = exported
    return GenreClassifier.load(bundle, backend="keras"), GenreClassifier.load(bundle)


def test_export_writes_the_files_and_records_its_parity(exported):
    bundle, record = exported
    assert {"model.tflite", "frontend.npz", "litert.json"} <= {p.name for p in bundle.iterdir()}
    assert json.loads((bundle / "litert.json").read_text()) == record
    assert record["quantize"] == "none" and record["parity"]["max_abs_diff"]["genre"] < 1e-5
    from genre_se.litert import file_sha1

    assert record["source_sha1"] == file_sha1(bundle / "model.keras")



def test_an_export_that_answers_otherwise_than_keras_is_refused(tiny, tmp_path, monkeypatch):  # noqa: F811
    """The parity check compares the largest difference on the probes with the tolerance: one probability off by
    1e-3 (a mean over all outputs would hide it) or an embedding off by 1 % of its RMS stops the export."""
    from genre_se import litert

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny["bundle"], bundle)
    real = litert.LiteRTModel.run

    def nudged(output, by):
        def run(self, x):
            out = {name: value.copy() for name, value in real(self, x).items()}
            out[output][0, 0] += by(out[output])  # one value of one probe
            return out
        return run

    monkeypatch.setattr(litert.LiteRTModel, "run", nudged("genre", lambda _: 1e-3))
    with pytest.raises(ModelError, match=r"LiteRT model differs from Keras by 0\.001 in probability"):
        litert.export_litert(bundle)
    def one_percent_of_the_rms(e):
        return 1e-2 * float(np.sqrt(np.mean(np.square(e, dtype=np.float64))))

    monkeypatch.setattr(litert.LiteRTModel, "run", nudged("embedding", one_percent_of_the_rms))
    with pytest.raises(ModelError, match=r"LiteRT embedding differs from Keras by 0\.01\d* of its RMS"):
        litert.export_litert(bundle)
    monkeypatch.undo()
    assert litert.export_litert(bundle)["parity"]["max_abs_diff"]["genre"] < 1e-5


def test_litert_predictions_equal_keras(tiny, classifiers):  # noqa: F811
    keras_clf, fast_clf = classifiers
    assert (keras_clf.runtime, fast_clf.runtime) == ("keras", "litert")
    paths = list(tiny["index"]["path"])  # every clip, including the one whose segments disagree
    for slow, fast in zip(keras_clf.predict_many(paths), fast_clf.predict_many(paths)):
        assert fast.genre == slow.genre
        np.testing.assert_array_equal(fast.segment_starts, slow.segment_starts)
        np.testing.assert_allclose(fast.segment_probabilities, slow.segment_probabilities, atol=1e-5)
        np.testing.assert_allclose(fast.probabilities, slow.probabilities, atol=1e-5)
    for label, hz in BAND_HZ.items():  # the export still tells the bands apart
        assert fast_clf.predict_array(tone(hz, 2.0, seed=5), 8000).genre == label


def test_litert_embeddings_equal_keras(tiny, classifiers):  # noqa: F811
    keras_clf, fast_clf = classifiers
    path = tiny["index"]["path"].iloc[-1]
    slow, fast = keras_clf.embed(path), fast_clf.embed(path)
    assert fast.segments.shape == slow.segments.shape
    np.testing.assert_allclose(fast.segments, slow.segments, atol=1e-4, rtol=1e-4)


def test_batch_sizes_do_not_change_litert_outputs(classifiers):
    _, fast_clf = classifiers
    model = fast_clf.bundle.model
    x = np.random.default_rng(1).normal(-50, 20, size=(7, *model.input_shape)).astype(np.float32)
    whole = model(x)
    one_by_one = np.concatenate([model(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(one_by_one, whole)
    np.testing.assert_array_equal(model(x[:3]), whole[:3])
    with pytest.raises(ModelError, match="expects a batch"):
        model(x[:, :4])


def test_int8_export_stays_close_to_keras(tiny, exported, tmp_path):  # noqa: F811
    from genre_se.inference import GenreClassifier
    from genre_se.litert import export_litert

    bundle = tmp_path / "int8"
    shutil.copytree(exported[0], bundle)
    record = export_litert(bundle, quantize="int8")
    assert record["quantize"] == "int8" and record["parity"]["max_abs_diff"]["genre"] <= 0.05
    keras_clf, fast_clf = GenreClassifier.load(bundle, backend="keras"), GenreClassifier.load(bundle)
    paths = list(tiny["index"]["path"])
    for slow, fast in zip(keras_clf.predict_many(paths), fast_clf.predict_many(paths)):
        assert fast.genre == slow.genre
        np.testing.assert_allclose(fast.probabilities, slow.probabilities, atol=0.02)


def test_int8_export_stores_int8_weights(tmp_path):
    """The tiny bundle's tensors are below the converter's 1024-element quantisation threshold; this
    model's are not, so its int8 export must hold int8 weights."""
    import keras

    from genre_se.bundle import save_bundle
    from genre_se.config import ModelConfig
    from genre_se.litert import export_litert

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=[4, 64], dropout=0.0, reduction_ratios=2)
    from genre_se.model import build_model

    model = build_model(config, (16, 16, 1), 3, mean=-50.0, std=20.0)
    bundle = save_bundle(tmp_path / "bundle", model, ["a", "b", "c"], FEATURES, config)
    record = export_litert(bundle, quantize="int8")
    assert record["parity"]["max_abs_diff"]["genre"] <= 0.05
    assert int8_tensors(bundle / "model.tflite") >= 2  # the 64-filter conv and the SE dense kernels


def int8_tensors(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return sum(detail["dtype"] == np.int8 for detail in Interpreter(model_path=str(path)).get_tensor_details())


def test_float32_export_has_no_int8_tensors(exported):
    assert int8_tensors(exported[0] / "model.tflite") == 0


def test_mean_aggregation_is_the_evaluate_stage_arithmetic():
    import pandas as pd

    from genre_se.inference import aggregate_segments
    from genre_se.metrics import aggregate_clips

    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=37)
    expected = aggregate_clips(pd.Series(["c"] * 37), probs)["probs"].iloc[0]
    np.testing.assert_array_equal(aggregate_segments(probs, "mean"), expected)  # same bits


# --------------------------------------------------------------------------------------------------
# Which runtime serves, and what it imports


def _fast_cli(argv: list[str]) -> dict:
    """Run the CLI in a fresh interpreter; report its exit code, stdout and the heavy modules it imported."""
    code = (
        "import io, json, sys, contextlib\n"
        "from genre_se.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = main({argv!r})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'librosa', 'scipy', 'pandas', 'numba', 'sklearn'})\n"
        "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fast_cli_path_imports_no_tensorflow_and_no_librosa(exported, tiny, tmp_path):  # noqa: F811
    bundle, _ = exported
    clip = tiny["index"]["path"].iloc[0]
    predicted = _fast_cli(["-q", "predict", clip, "--model", str(bundle), "--format", "json"])
    assert predicted["rc"] == 0 and predicted["heavy"] == []
    document = json.loads(predicted["out"])
    assert document["model"]["runtime"] == {"name": "litert", "quantize": "none"}
    assert len(document["predictions"]) == 1
    embedded = _fast_cli(["-q", "embed", clip, "--model", str(bundle), "--output", str(tmp_path / "e.npz")])
    assert embedded["rc"] == 0 and embedded["heavy"] == []
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (1, 8)


def test_keras_backend_and_bundles_without_export_use_tensorflow(exported, tiny, capsys):  # noqa: F811
    from genre_se.cli import main

    clip = tiny["index"]["path"].iloc[0]
    old = _fast_cli(["-q", "predict", clip, "--model", str(tiny["bundle"]), "--format", "json"])
    assert old["rc"] == 0 and "tensorflow" in old["heavy"]
    assert json.loads(old["out"])["model"]["runtime"] == {"name": "keras"}
    assert main(["-q", "predict", clip, "--model", str(exported[0]), "--backend", "keras", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["runtime"] == {"name": "keras"}


def test_cli_export_command(tiny, tmp_path, capsys):  # noqa: F811
    from genre_se.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny["bundle"], bundle)
    assert main(["-q", "export", "--model", str(bundle)]) == 0
    assert "LiteRT export (none" in capsys.readouterr().err
    assert (bundle / "litert.json").is_file()
    assert main(["-q", "export", "--model", str(tmp_path / "nowhere")]) == 1
    assert "model bundle not found" in capsys.readouterr().err

    # without --model: models/bundle here, never the shipped model (an export rewrites files in the bundle)
    from genre_se.inference import SHIPPED_BUNDLE

    before = {p.name: p.stat().st_mtime_ns for p in SHIPPED_BUNDLE.iterdir()}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["-q", "export"]) == 1
    finally:
        os.chdir(cwd)
    assert "models/bundle" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in SHIPPED_BUNDLE.iterdir()} == before


def test_an_export_from_another_model_is_refused(exported, tmp_path):
    import keras

    from genre_se.inference import GenreClassifier

    bundle = tmp_path / "stale"
    shutil.copytree(exported[0], bundle)
    model = keras.saving.load_model(bundle / "model.keras", safe_mode=True, compile=False)
    model.get_layer("genre").kernel.assign(np.zeros(model.get_layer("genre").kernel.shape))
    model.save(bundle / "model.keras")  # replaced by hand, export left behind
    with pytest.raises(ModelError, match=r"litert\.json: the export was made from another model\.keras"):
        GenreClassifier.load(bundle)
    assert GenreClassifier.load(bundle, backend="keras").runtime == "keras"  # Keras still serves it


def test_incomplete_export_is_a_clear_error(exported, tmp_path):
    from genre_se.inference import GenreClassifier, uses_litert

    bundle = tmp_path / "partial"
    shutil.copytree(exported[0], bundle)
    (bundle / "frontend.npz").unlink()
    with pytest.raises(ModelError, match="frontend.npz: missing"):
        GenreClassifier.load(bundle)
    (bundle / "litert.json").unlink()  # no record: not an export, so Keras serves
    assert not uses_litert(bundle) and GenreClassifier.load(bundle).runtime == "keras"
    with pytest.raises(ModelError, match="has no LiteRT export"):
        GenreClassifier.load(bundle, backend="litert")


def _shipped_copy(tmp_path: Path) -> Path:
    from genre_se.inference import SHIPPED_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    return bundle


@pytest.mark.parametrize("labels, message", [([None] * 10, "non-empty strings"), (["rock"] * 10, "duplicates")])
def test_litert_checks_the_labels_as_keras_does(tmp_path, labels, message):
    from genre_se.inference import GenreClassifier

    bundle = _shipped_copy(tmp_path)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**meta, "labels": labels}))
    with pytest.raises(ModelError, match=rf"bundle\.json: labels .*{message}"):
        GenreClassifier.load(bundle, backend="litert")


def test_litert_names_a_missing_model_keras(tmp_path):
    from genre_se.inference import GenreClassifier

    bundle = _shipped_copy(tmp_path)
    (bundle / "model.keras").unlink()  # not "an export from another model.keras": there is none
    with pytest.raises(ModelError, match=r"model\.keras: missing"):
        GenreClassifier.load(bundle, backend="litert")


def test_train_stage_writes_the_export(tiny, tmp_path):  # noqa: F811
    from genre_se.config import load_params
    from genre_se.inference import GenreClassifier
    from genre_se.train import run_train

    params = load_params(write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "train.epochs": 1}))
    lines = []
    run_train(params, store_dir=tiny["store"].root, bundle_dir=tmp_path / "bundle", state_dir=tmp_path / "state",
              live_dir=tmp_path / "live", best_params_path=None, log=lines.append)
    assert (tmp_path / "bundle" / "litert.json").is_file()
    assert any(line.startswith("LiteRT export") for line in lines)
    assert GenreClassifier.load(tmp_path / "bundle").runtime == "litert"


# --------------------------------------------------------------------------------------------------
# Benchmarks: smoke runs (nothing timed is asserted)


def _bench(script: str, capsys) -> str:
    """Run a benchmark script's ``main(["--smoke"])`` in this process (TensorFlow is already imported here,
    which saves a start per script); its children are still real processes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"genre_se_bench_{Path(script).stem}", ROOT / "bench" / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    capsys.readouterr()
    assert module.main(["--smoke"]) == 0
    return capsys.readouterr().out


def _rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose first header cell starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_bench_predict_smoke(capsys):
    out = _bench("bench_predict.py", capsys)
    methods = ["keras", "litert", "litert-int8"]
    cold, warm, memory = (_rows(out, header) for header in ("cold start", "warm folder", "peak RSS"))
    assert [r[0] for r in cold] == [r[0] for r in warm] == methods
    assert cold[0][3] == "1.0x" and warm[0][3] == "1.0x"  # the reference row is itself
    assert all(float(r[1]) > 0 for r in cold + warm)
    assert [r[0] for r in memory] == methods[1:]  # smoke: no Keras memory child (a second TensorFlow start)
    assert [r[-1] for r in memory] == ["no", "no"]  # the fast paths never import TensorFlow
    assert warm[1][-1] == "2/2"  # the float32 export agrees with Keras on the smoke clips
    assert out.count("Machine: ") == 1


def test_bench_train_smoke(capsys):
    out = _bench("bench_train.py", capsys)
    free, deterministic = _rows(out, "training")
    assert (free[0], deterministic[0]) == ("SE-CNN (model params)", "SE-CNN, op determinism")
    assert float(free[3]) > 0 and float(free[6]) > 0 and free[5] == "1.00x" and float(deterministic[5][:-1]) > 0
    se, plain = _rows(out, "model ")
    assert (se[0], plain[0]) == ("with SE", "without SE")
    assert int(se[1].replace(",", "")) > int(plain[1].replace(",", ""))  # SE blocks add parameters
    assert plain[2] == "1.000x" and float(se[4].rstrip("x")) > 1.0  # ... and FLOPs
    assert out.count("Machine: ") == 1
