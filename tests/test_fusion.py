"""genre_se.fusion: the MFCC + SVM baseline as plain arrays, its windows, and late fusion in train/evaluate/predict."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from genre_se.errors import DatasetError, ModelError
from genre_se.fusion import (FUSION_FILE, SvmScorer, at_level, fit_svm, fuse, load_svm, save_svm, window_starts,
                             window_statistics)


def _blobs(n_per=12, n_classes=5, dim=7, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per)
    x = rng.normal(size=(len(y), dim))
    x[:, :n_classes] += 1.5 * np.eye(n_classes)[y]
    return x, y


def test_the_numpy_svm_gives_exactly_what_scikit_learn_gives():
    from sklearn.calibration import CalibratedClassifierCV

    from genre_se.baseline import make_classifier

    x, y = _blobs()
    y = np.where(y == 4, 5, y)  # label 4 never trained on: its probability is 0, the others keep their columns
    names = list("abcdef")
    scorer = fit_svm(x, y, names, seed=3)
    reference = CalibratedClassifierCV(make_classifier(3), method="sigmoid", cv=5, ensemble=False).fit(x, y)
    new = np.random.default_rng(1).normal(size=(25, 7)) * 2
    svc_pipeline = reference.calibrated_classifiers_[0].estimator
    np.testing.assert_allclose(scorer.decision(new), svc_pipeline.decision_function(new), atol=1e-10)
    probs = scorer.probabilities(new)
    np.testing.assert_allclose(probs[:, [0, 1, 2, 3, 5]], reference.predict_proba(new), atol=1e-10)
    assert (probs[:, 4] == 0).all() and np.allclose(probs.sum(1), 1)
    # the one-vs-one values are libsvm's, as scikit-learn reports them
    svc_pipeline[-1].decision_function_shape = "ovo"
    np.testing.assert_allclose(scorer.ovo_decision(new), svc_pipeline.decision_function(new), atol=1e-10)
    assert scorer.distribution(new[:3]) == pytest.approx(probs[:3].mean(0))


def test_too_little_to_fit_is_a_clear_error():
    x, y = _blobs(n_per=1, n_classes=4)
    with pytest.raises(ModelError, match="3 genres with 2 training clips"):
        fit_svm(x, y, list("abcd"))
    with pytest.raises(ModelError, match="finite"):
        fit_svm(np.full((10, 3), np.nan), np.arange(10) % 3, list("abc"))


def test_saved_svm_loads_back_without_pickle_and_refuses_damage_or_other_genres(tmp_path):
    x, y = _blobs()
    scorer = fit_svm(x, y, list("abcde"))
    assert load_svm(tmp_path) is None  # none stored: the CNN alone
    save_svm(tmp_path, scorer)
    assert [p.name for p in tmp_path.iterdir()] == [FUSION_FILE]  # no temporary file left behind
    back = load_svm(tmp_path, list("abcde"))
    np.testing.assert_array_equal(back.probabilities(x), scorer.probabilities(x))
    assert back.n_parameters == scorer.n_parameters > 0
    with pytest.raises(ModelError, match="not the model's"):
        load_svm(tmp_path, list("edcba"))
    (tmp_path / FUSION_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="cannot read the SVM"):
        load_svm(tmp_path)
    fields = {name: getattr(scorer, name) for name in ("mean", "scale", "support_vectors", "n_support", "dual_coef",
                                                       "intercept", "classes", "platt_a", "platt_b")}
    np.savez(tmp_path / FUSION_FILE, meta=np.array("{}"), **{**fields, "mean": np.array([object()], dtype=object)})
    with pytest.raises(ModelError, match="cannot read"):  # an object array (a pickle) is never unpickled
        load_svm(tmp_path)
    broken = SvmScorer(**{**fields, "dual_coef": scorer.dual_coef[:, :-1]}, gamma=scorer.gamma,
                       labels=scorer.labels, sample_rate=scorer.sample_rate)
    save_svm(tmp_path, broken)
    with pytest.raises(ModelError, match="do not fit together"):
        load_svm(tmp_path)


def test_windows_cover_a_short_file_whole_and_spread_over_a_long_one():
    sr = 100
    assert window_starts(30 * sr, sr) == [(0, 3000)]
    assert window_starts(59 * sr, sr) == [(0, 5900)]  # under two windows: one, the whole file
    spread = window_starts(3600 * sr, sr, max_windows=8)
    assert len(spread) == 8 and spread[0] == (0, 3000) and spread[-1] == (3600 * sr - 3000, 3600 * sr)
    assert all(b - a == 3000 for a, b in spread) and np.all(np.diff([a for a, _ in spread]) > 0)
    assert len(window_starts(95 * sr, sr, max_windows=8)) == 3  # never more windows than fit
    with pytest.raises(ModelError, match="max_windows"):
        window_starts(100, sr, max_windows=0)


def _music(seconds, sr, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) + 0.05 * rng.standard_normal(len(t))
            ).astype(np.float32)


@pytest.mark.slow
def test_window_statistics_are_the_baselines_of_the_windows_read_by_seek_or_by_stream(tmp_path, monkeypatch):
    import genre_se.audio as audio
    from genre_se.audio import load_audio
    from genre_se.baseline import SAMPLE_RATE, clip_features

    short = tmp_path / "short.wav"
    sf.write(short, _music(4.0, 16000), 16000, subtype="FLOAT")
    np.testing.assert_allclose(window_statistics(short)[0], clip_features(at_level(load_audio(short, SAMPLE_RATE))),
                               rtol=1e-4, atol=1e-6)
    long = tmp_path / "long.wav"  # 95 s: three windows of 30 s, from the start to the end
    sf.write(long, _music(95.0, 8000, seed=1), 8000, subtype="FLOAT")
    whole = load_audio(long, SAMPLE_RATE)
    expected = np.stack([clip_features(at_level(whole[a:b])) for a, b in window_starts(len(whole), SAMPLE_RATE)])
    seek = window_statistics(long)
    assert seek.shape == (3, expected.shape[1])
    # equal within resampling rounding (spectral contrast's quantiles feel it most), and not other windows'
    np.testing.assert_allclose(seek, expected, rtol=0.05, atol=1e-3)
    assert not np.allclose(seek[1], clip_features(at_level(whole[SAMPLE_RATE * 20 : SAMPLE_RATE * 50])), rtol=0.02,
                           atol=1e-3)

    class _NoSeek:  # a format that can only be streamed: the same windows, kept while streaming
        def __init__(self, *a):
            pass

        def __enter__(self):
            return None

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(audio, "open_windows", _NoSeek)
    np.testing.assert_allclose(window_statistics(long), expected, rtol=0.05, atol=1e-3)
    # an array at another rate is resampled to the baseline's rate first
    np.testing.assert_allclose(window_statistics(load_audio(short, 16000), 16000), window_statistics(short),
                               rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The stages and predict on a tiny tone store


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """Features with clip statistics, then run_train with model.fusion: svm (train/valid/test tone clips)."""
    from genre_se.config import load_params
    from genre_se.train import run_train
    from tests.conftest import TINY_PARAMS, split_tone_store, write_params

    root = tmp_path_factory.mktemp("fusion")
    store, index = split_tone_store(root, seed=4, clip_stats=True)
    params = load_params(write_params(root / "params.yaml", {**TINY_PARAMS, "train.epochs": 2,
                                                            "model.fusion": "svm"}))
    lines: list[str] = []
    run_train(params, store_dir=store.root, bundle_dir=root / "bundle", state_dir=root / "state",
              live_dir=root / "live", best_params_path=None, log=lines.append)
    return {"root": root, "store": store, "bundle": root / "bundle", "params": params, "log": lines,
            "index": index}


@pytest.mark.slow
def test_the_store_holds_each_clips_window_statistics_and_the_train_stage_fits_the_svm_on_training_clips(fused):
    from genre_se.baseline import clip_features
    from genre_se.fusion import fit_svm, store_clips

    store, index = fused["store"], fused["index"]
    stats, owners, version = store.clip_stats()
    assert sorted(owners) == sorted(index["clip_id"]) and version == 2  # 1.5-s clips: one window each
    first = index.iloc[0]
    from genre_se.audio import load_audio

    np.testing.assert_allclose(stats[list(owners).index(first.clip_id)],
                               clip_features(at_level(load_audio(first.path))), rtol=1e-4, atol=1e-6)
    svm = load_svm(fused["bundle"], store.labels)
    clips, labels = store_clips(store, store.rows("train"))
    x = stats[[list(owners).index(c) for c in clips]]
    np.testing.assert_allclose(svm.probabilities(x), fit_svm(x, labels, store.labels, seed=fused["params"].seed)
                               .probabilities(x), atol=1e-12)
    meta = json.loads((fused["bundle"] / "bundle.json").read_text())
    assert meta["model_config"]["fusion"] == "svm" and meta["extra"]["fusion"]["n_parameters"] == svm.n_parameters
    assert any(line.startswith("fusion: SVM") for line in fused["log"])


@pytest.mark.slow
def test_a_store_without_statistics_says_how_to_get_them(fused, tmp_path):
    from genre_se.feature_store import FeatureStore
    from genre_se.fusion import fit_store_svm

    plain = tmp_path / "features"
    shutil.copytree(fused["store"].root, plain)
    with np.load(plain / "clip_stats.npz") as z:  # statistics of the first definition (no level, no trim)
        np.savez(plain / "clip_stats.npz", stats=z["stats"], clip_id=z["clip_id"])
    with pytest.raises(DatasetError, match="older definition"):
        fit_store_svm(FeatureStore.open(plain), np.arange(5))
    (plain / "clip_stats.npz").unlink()
    with pytest.raises(DatasetError, match="model.fusion: svm"):
        fit_store_svm(FeatureStore.open(plain), np.arange(5))


def _cnn_clip(model, store, rows):
    out = np.asarray(model(np.asarray(store.segments[rows], dtype=np.float32), training=False), dtype=np.float64)
    frame = pd.DataFrame(out).groupby(store.table["clip_id"].to_numpy()[rows], sort=False).mean()
    return frame


@pytest.mark.slow
def test_each_clips_svm_distribution_in_evaluate_is_the_one_predict_gives_from_its_windows(fused):
    """svm_clip_distributions (train and evaluate) against SvmScorer.distribution (predict): each clip's row is the
    mean over that clip's own windows, a distribution, whatever other clips are asked for with it."""
    from genre_se.fusion import svm_clip_distributions

    store, svm = fused["store"], load_svm(fused["bundle"])
    stats, owners, _ = store.clip_stats()
    owners = np.asarray(owners).astype(str)
    clips = list(dict.fromkeys(store.table["clip_id"].astype(str)))[:5]
    together = svm_clip_distributions(svm, store, clips)
    for clip, row in zip(clips, together):
        np.testing.assert_allclose(row, svm.distribution(stats[owners == clip]), atol=1e-12)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(svm_clip_distributions(svm, store, clips[2:3])[0], together[2], atol=1e-12)

@pytest.mark.slow
def test_evaluate_and_predict_answer_with_the_fused_distribution_the_temperature_fitted_on_it(fused, tmp_path):
    from genre_se.bundle import load_bundle
    from genre_se.calibration import apply_temperature, fit_temperature
    from genre_se.evaluate import evaluate_rows
    from genre_se.fusion import svm_clip_distributions
    from genre_se.inference import GenreClassifier

    store, bundle_dir = fused["store"], fused["bundle"]
    bundle, svm = load_bundle(bundle_dir), load_svm(bundle_dir)
    temperature = bundle.extra["calibration"]["temperature"]
    # the temperature is the one that fits the validation clips' fused distributions
    valid = _cnn_clip(bundle.model, store, store.rows("valid"))
    fused_valid = fuse(valid.to_numpy(), svm_clip_distributions(svm, store, list(valid.index)))
    labels = store.table.groupby("clip_id")["label_index"].first().loc[valid.index].to_numpy()
    assert temperature == pytest.approx(fit_temperature(fused_valid, np.arange(len(labels)), labels), rel=1e-6)

    test_rows = store.rows("test")
    metrics, predictions = evaluate_rows(bundle.model, store, test_rows, temperature, svm=svm)
    cnn = _cnn_clip(bundle.model, store, test_rows)
    by_hand = fuse(cnn.to_numpy(), svm_clip_distributions(svm, store, list(cnn.index)))
    truth = store.table.groupby("clip_id")["label_index"].first().loc[cnn.index].to_numpy()
    assert metrics["clip"]["accuracy"] == pytest.approx((by_hand.argmax(1) == truth).mean())
    assert metrics["clip_cnn"]["accuracy"] == pytest.approx((cnn.to_numpy().argmax(1) == truth).mean())
    assert set(metrics["clip_svm"]) == {"accuracy", "macro_f1"}
    np.testing.assert_allclose(predictions["confidence_calibrated"],
                               apply_temperature(by_hand, temperature).max(1), atol=1e-6)

    clip_id = cnn.index[0]  # a test clip, predicted from its file as a user would
    wav = fused["index"].set_index("clip_id").loc[clip_id, "path"]
    clf = GenreClassifier.load(bundle_dir, backend="keras", silence_db=None)
    answer = clf.predict(wav)
    expected = apply_temperature(fuse(cnn.loc[clip_id].to_numpy(), svm.distribution(window_statistics(wav)))[None],
                                 temperature)[0]
    np.testing.assert_allclose(answer.probabilities, expected, atol=1e-3)  # the store holds float16
    assert clf.provenance()["fusion"]["kind"] == "svm"
    # --no-fusion: the CNN alone, scaled by its own temperature (fitted on the validation clips' segments)
    cnn_temperature = bundle.extra["calibration"]["cnn_temperature"]
    valid_rows = store.rows("valid")
    codes = pd.factorize(store.table["clip_id"].to_numpy()[valid_rows], sort=False)[0]
    assert cnn_temperature == pytest.approx(fit_temperature(
        np.asarray(bundle.model(np.asarray(store.segments[valid_rows], np.float32), training=False), np.float64),
        codes, labels), rel=1e-4)
    alone = GenreClassifier.load(bundle_dir, backend="keras", silence_db=None, fusion=False).predict(wav)
    segments = np.asarray(bundle.model(np.asarray(store.segments[test_rows[store.table["clip_id"].to_numpy()[test_rows]
                                                                           == clip_id]], np.float32), training=False))
    np.testing.assert_allclose(alone.probabilities, np.asarray(apply_temperature(segments, cnn_temperature)).mean(0),
                               atol=1e-3)
    # a bundle from before cnn_temperature: the CNN alone is uncalibrated (T = 1), not scaled by the fused T
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    meta = json.loads((old / "bundle.json").read_text())
    del meta["extra"]["calibration"]["cnn_temperature"]
    (old / "bundle.json").write_text(json.dumps(meta))
    clf = GenreClassifier.load(old, backend="keras", silence_db=None, fusion=False)
    assert clf.temperature == 1.0 and "fused distribution" in clf.calibration_note
    np.testing.assert_allclose(clf.predict(wav).probabilities, segments.mean(0), atol=1e-3)
    assert GenreClassifier.load(old, backend="keras").temperature == temperature
    assert np.abs(alone.probabilities - answer.probabilities).max() > 1e-3  # the SVM changed the answer
    # the LiteRT export serves the same fusion
    quick = GenreClassifier.load(bundle_dir, backend="litert", silence_db=None).predict(wav)
    np.testing.assert_allclose(quick.probabilities, answer.probabilities, atol=0.02)


@pytest.mark.slow
def test_the_evaluate_stage_reports_the_fused_cnn_and_svm_scores(fused, tmp_path):
    from genre_se.evaluate import run_evaluate

    metrics = run_evaluate(fused["params"], store_dir=fused["store"].root, bundle_dir=fused["bundle"],
                           reports_dir=tmp_path / "reports", cv_state_dir=tmp_path / "cv")
    written = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert written["clip_cnn"] == metrics["clip_cnn"] and written["clip_svm"] == metrics["clip_svm"]
    assert written["clip"]["accuracy"] == metrics["clip"]["accuracy"]


@pytest.mark.slow
def test_predict_says_it_fused_and_no_fusion_answers_with_the_cnn_alone(fused, capsys):
    from genre_se.cli import main
    from genre_se.inference import GenreClassifier

    wav = fused["index"]["path"].iloc[-1]
    args = ["predict", wav, "--model", str(fused["bundle"]), "--format", "json", "--backend", "keras"]
    assert main(args) == 0
    with_svm = json.loads(capsys.readouterr().out)
    assert with_svm["model"]["fusion"]["kind"] == "svm"
    assert main(args + ["--no-fusion"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["model"]["fusion"] is None and "parts" not in alone["predictions"][0]
    # the fused answer shows both parts; the CNN part is the CNN alone without the temperature
    parts = with_svm["predictions"][0]["parts"]
    assert set(parts) == {"cnn", "svm"} and len(parts["svm"]) == 3
    untempered = GenreClassifier.load(fused["bundle"], backend="keras", fusion=False)
    untempered.temperature = 1.0
    assert parts["cnn"][0]["probability"] == pytest.approx(untempered.predict(wav).top(1)[0][1], abs=1e-3)
    assert with_svm["predictions"][0]["top"] != alone["predictions"][0]["top"]


@pytest.mark.slow
def test_the_robustness_report_runs_the_fused_answer_and_the_cnn_alone(fused, capsys):
    from genre_se.cli import main

    wav = fused["index"]["path"].iloc[0]
    reports = {}
    for extra in ([], ["--no-fusion"]):
        assert main(["-q", "robustness", wav, "--model", str(fused["bundle"]), "--format", "json", *extra]) == 0
        reports[bool(extra)] = json.loads(capsys.readouterr().out)
    rows = {flag: {r["transform"]: r["tv_distance"] for r in report["files"]} for flag, report in reports.items()}
    assert set(rows[True]) == set(rows[False]) and rows[True] != rows[False]  # two classifiers, same transforms


def test_leading_and_trailing_silence_do_not_move_the_statistics_and_a_silent_window_is_left_out():
    from genre_se.baseline import SAMPLE_RATE as sr
    from genre_se.baseline import clip_features

    music = _music(6.0, sr, seed=3)
    padded = np.concatenate([np.zeros(5 * sr, np.float32), music, np.zeros(2 * sr, np.float32)])
    np.testing.assert_allclose(window_statistics(padded, sr)[0], window_statistics(music, sr)[0], rtol=0.02, atol=1e-3)
    assert not np.allclose(clip_features(padded), clip_features(music), rtol=0.02, atol=1e-3)  # untrimmed they differ
    # a 95-s signal whose first 35 s are silent: the silent window is left out, the other two remain
    long = np.concatenate([np.zeros(35 * sr, np.float32), _music(60.0, sr, seed=4)])
    assert window_statistics(long, sr).shape[0] == 2
    silent = window_statistics(np.zeros(3 * sr, np.float32), sr)  # nothing but silence: still one finite vector
    assert silent.shape[0] == 1 and np.isfinite(silent).all()


def test_the_statistics_are_blind_to_the_recordings_level_as_the_cnn_is():
    from genre_se.baseline import SAMPLE_RATE as sr
    from genre_se.baseline import clip_features

    music = _music(5.0, sr, seed=5)
    quiet = music * np.float32(10 ** (-20 / 20))
    np.testing.assert_allclose(window_statistics(quiet, sr), window_statistics(music, sr), rtol=1e-3, atol=1e-3)
    assert not np.allclose(clip_features(quiet), clip_features(music), rtol=1e-3, atol=1e-3)  # MFCC 0, RMS hear it
    rms = np.sqrt(np.mean(np.square(at_level(quiet), dtype=np.float64)))
    assert 20 * np.log10(rms) == pytest.approx(-20.0, abs=1e-3)


@pytest.mark.slow
def test_the_fusion_command_gives_a_cnn_bundle_the_svm_the_train_stage_would_have(fused, tmp_path, capsys):
    from genre_se.cli import main

    plain = tmp_path / "plain"
    shutil.copytree(fused["bundle"], plain)
    (plain / FUSION_FILE).unlink()
    meta = json.loads((plain / "bundle.json").read_text())
    meta["model_config"]["fusion"] = "none"
    del meta["extra"]["fusion"]
    meta["extra"]["calibration"]["temperature"] = 1.0
    (plain / "bundle.json").write_text(json.dumps(meta))
    assert main(["-q", "fusion", "--model", str(plain), "--features", str(fused["store"].root)]) == 0
    added, original = load_svm(plain), load_svm(fused["bundle"])
    x = np.random.default_rng(0).normal(size=(4, original.dim)) * original.scale + original.mean
    np.testing.assert_allclose(added.probabilities(x), original.probabilities(x), atol=1e-12)
    after = json.loads((plain / "bundle.json").read_text())
    before = json.loads((fused["bundle"] / "bundle.json").read_text())
    assert after["model_config"]["fusion"] == "svm" and after["extra"]["fusion"] == before["extra"]["fusion"]
    assert after["extra"]["calibration"]["temperature"] == pytest.approx(before["extra"]["calibration"]["temperature"])
    assert after["extra"]["calibration"]["cnn_temperature"] == pytest.approx(
        before["extra"]["calibration"]["cnn_temperature"])
    # a store without the statistics is refused by name, nothing written
    bare = tmp_path / "bare"
    shutil.copytree(fused["store"].root, bare)
    (bare / "clip_stats.npz").unlink()
    assert main(["-q", "fusion", "--model", str(plain), "--features", str(bare)]) != 0
    assert "model.fusion: svm" in capsys.readouterr().err


@pytest.mark.slow
def test_the_model_summary_of_a_fusion_bundle_names_its_svm(fused, capsys):
    from genre_se.cli import main

    assert main(["model", "summary", "--model", str(fused["bundle"])]) == 0
    out = capsys.readouterr().out
    svm = load_svm(fused["bundle"])
    assert f"Fused with an MFCC + spectral-statistics SVM (model.fusion: svm): {len(svm.support_vectors)} support" in out
