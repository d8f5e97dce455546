"""genre_se.embedding_svm: the SVM head on the network's mean clip embeddings (model.classifier: svm), one rule for
train, evaluate and predict."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from genre_se.embedding_svm import EMBEDDING_SVM_FILE, load_embedding_svm
from genre_se.errors import ModelError


@pytest.fixture(scope="module")
def headed(tmp_path_factory):
    """run_train with model.classifier: svm on train/valid/test tone clips."""
    from genre_se.config import load_params
    from genre_se.train import run_train
    from tests.conftest import TINY_PARAMS, split_tone_store, write_params

    root = tmp_path_factory.mktemp("embsvm")
    store, index = split_tone_store(root, seed=4)
    params = load_params(write_params(root / "params.yaml", {**TINY_PARAMS, "train.epochs": 2,
                                                            "model.classifier": "svm"}))
    lines: list[str] = []
    run_train(params, store_dir=store.root, bundle_dir=root / "bundle", state_dir=root / "state",
              live_dir=root / "live", best_params_path=None, log=lines.append)
    return {"root": root, "store": store, "bundle": root / "bundle", "params": params, "log": lines,
            "index": index}


def _mean_embeddings(model, store, rows):
    """Each clip's mean embedding, computed here without the module under test."""
    from genre_se.model import embedding_model

    out = np.asarray(embedding_model(model)(np.asarray(store.segments[rows], dtype=np.float32), training=False),
                     dtype=np.float64)
    return pd.DataFrame(out).groupby(store.table["clip_id"].to_numpy()[rows], sort=False).mean()


def _labels(store, clips):
    return store.table.groupby("clip_id")["label_index"].first().loc[clips].to_numpy()


def test_fusion_and_the_embedding_svm_are_either_or(tmp_path):
    from genre_se.config import ConfigError, load_params
    from tests.conftest import TINY_PARAMS, write_params

    with pytest.raises(ConfigError, match="either-or"):
        load_params(write_params(tmp_path / "p.yaml", {**TINY_PARAMS, "model.classifier": "svm",
                                                      "model.fusion": "svm"}))
    with pytest.raises(ConfigError, match="classifier"):
        load_params(write_params(tmp_path / "q.yaml", {**TINY_PARAMS, "model.classifier": "knn"}))


@pytest.mark.slow
def test_the_train_stage_fits_the_head_on_the_training_clips_mean_embeddings(headed):
    from genre_se.bundle import load_bundle
    from genre_se.fusion import fit_svm

    store, bundle_dir = headed["store"], headed["bundle"]
    bundle, head = load_bundle(bundle_dir), load_embedding_svm(bundle_dir, headed["store"].labels)
    train = _mean_embeddings(bundle.model, store, store.rows("train"))
    by_hand = fit_svm(train.to_numpy(), _labels(store, train.index), store.labels, seed=headed["params"].seed)
    np.testing.assert_allclose(head.probabilities(train.to_numpy()), by_hand.probabilities(train.to_numpy()),
                               atol=1e-6)  # embeddings through another graph: float32 rounding
    assert head.dim == train.shape[1] and len(head.support_vectors) <= len(train)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert meta["model_config"]["classifier"] == "svm"
    assert meta["extra"]["classifier"]["n_parameters"] == head.n_parameters
    assert any(line.startswith("classifier: SVM") for line in headed["log"])


@pytest.mark.slow
def test_evaluate_and_predict_answer_with_the_heads_distribution_the_temperature_fitted_on_it(headed):
    from genre_se.bundle import load_bundle
    from genre_se.calibration import apply_temperature, fit_temperature
    from genre_se.evaluate import evaluate_rows
    from genre_se.inference import GenreClassifier

    store, bundle_dir = headed["store"], headed["bundle"]
    bundle, head = load_bundle(bundle_dir), load_embedding_svm(bundle_dir)
    temperature = bundle.extra["calibration"]["temperature"]
    valid = _mean_embeddings(bundle.model, store, store.rows("valid"))
    valid_probs = head.probabilities(valid.to_numpy())
    labels = _labels(store, valid.index)
    assert temperature == pytest.approx(fit_temperature(valid_probs, np.arange(len(labels)), labels), rel=1e-4)

    test_rows = store.rows("test")
    test = _mean_embeddings(bundle.model, store, test_rows)
    by_hand = head.probabilities(test.to_numpy())
    truth = _labels(store, test.index)
    metrics, predictions = evaluate_rows(bundle.model, store, test_rows, temperature, embedding_svm=head)
    assert metrics["clip"]["accuracy"] == pytest.approx((by_hand.argmax(1) == truth).mean())
    assert set(metrics["clip_cnn"]) == {"accuracy", "macro_f1"}
    np.testing.assert_allclose(predictions["confidence_calibrated"],
                               apply_temperature(by_hand, temperature).max(1), atol=1e-6)

    clip_id = test.index[0]  # a test clip, predicted from its file as a user would
    wav = headed["index"].set_index("clip_id").loc[clip_id, "path"]
    clf = GenreClassifier.load(bundle_dir, backend="keras", silence_db=None)
    answer = clf.predict(wav)
    expected = apply_temperature(head.probabilities(test.loc[[clip_id]].to_numpy()), temperature)[0]
    np.testing.assert_allclose(answer.probabilities, expected, atol=2e-3)  # the store holds float16
    assert set(answer.parts) == {"cnn", "svm"} and clf.provenance()["classifier"]["kind"] == "svm"
    softmax = GenreClassifier.load(bundle_dir, backend="keras", silence_db=None, embedding_svm=False).predict(wav)
    assert softmax.parts is None
    cnn_temperature = bundle.extra["calibration"]["cnn_temperature"]  # the softmax's own, not the head's
    np.testing.assert_allclose(softmax.segment_probabilities, apply_temperature(answer.segment_probabilities,
                                                                               cnn_temperature), atol=1e-5)
    # the LiteRT export gives the same embeddings, so the same answer
    quick = GenreClassifier.load(bundle_dir, backend="litert", silence_db=None).predict(wav)
    np.testing.assert_allclose(quick.probabilities, answer.probabilities, atol=0.02)
    np.testing.assert_allclose(quick.parts["svm"], answer.parts["svm"], atol=0.02)


def test_the_head_answers_from_the_mean_embedding_of_the_audible_segments(headed, tmp_path):
    """Silence before the music takes no part in the file's genre: the head sees the mean embedding of the
    segments that are not near-silent (the pooled vector ``embed`` gives), not one pulled towards silence."""
    from genre_se.inference import GenreClassifier
    from tests.test_inference import BAND_HZ, tone, write

    path = write(tmp_path / "pause_then_high.wav",
                 np.concatenate([np.zeros(8000 * 3, np.float32), tone(BAND_HZ["high"], 1.5, seed=3)]))
    clf = GenreClassifier.load(headed["bundle"], backend="keras")
    answer, embedding = clf.predict(path), clf.embed(path)
    assert answer.silent.any() and not answer.silent.all()
    head = load_embedding_svm(headed["bundle"])
    audible = head.probabilities(embedding.pooled[None, :].astype(np.float64))[0]
    everything = head.probabilities(embedding.segments.mean(axis=0, dtype=np.float64)[None, :])[0]
    np.testing.assert_allclose(answer.parts["svm"], audible, atol=1e-5)
    assert np.abs(everything - audible).max() > 0.01  # the silent segments would have moved the answer

@pytest.mark.slow
def test_the_softmax_alone_is_scaled_by_its_own_temperature_not_the_heads(headed, tmp_path, capsys):
    """--softmax: the bundle's temperature was fitted on the head's distribution, so the softmax answers with its
    own (cnn_temperature, fitted on the validation clips' segments); a bundle written before that was recorded
    answers uncalibrated (T = 1) and says so, rather than scale the softmax by the head's temperature."""
    from genre_se.bundle import load_bundle
    from genre_se.calibration import apply_temperature, fit_temperature
    from genre_se.cli import main
    from genre_se.inference import GenreClassifier, aggregate_segments
    from genre_se.train import predict_rows

    store = headed["store"]
    rows = store.rows("valid")
    record = load_bundle(headed["bundle"]).extra["calibration"]
    codes, _ = pd.factorize(store.table["clip_id"].to_numpy()[rows], sort=False)
    labels = pd.Series(store.table["label_index"].to_numpy()[rows]).groupby(codes).first().to_numpy()
    segments = predict_rows(load_bundle(headed["bundle"]).model, store, rows)
    assert record["cnn_temperature"] == pytest.approx(fit_temperature(segments, codes, labels), rel=1e-6)

    copy = tmp_path / "bundle"  # a head temperature unlike the softmax's, and only the probability flag
    shutil.copytree(headed["bundle"], copy)
    (copy / "familiarity.npz").unlink()
    meta = json.loads((copy / "bundle.json").read_text())
    meta["extra"]["calibration"].update(temperature=3.0, cnn_temperature=0.5, uncertain_below=0.4)
    (copy / "bundle.json").write_text(json.dumps(meta))
    wav = headed["index"]["path"].iloc[-1]
    answer = GenreClassifier.load(copy, backend="keras", silence_db=None).predict(wav)
    raw = answer.segment_probabilities  # with the head on, the network's own softmax
    np.testing.assert_allclose(answer.probabilities, apply_temperature(answer.parts["svm"][None], 3.0)[0], atol=1e-12)
    clf = GenreClassifier.load(copy, backend="keras", silence_db=None, embedding_svm=False)
    alone = clf.predict(wav)
    expected = apply_temperature(raw, 0.5)
    assert clf.temperature == 0.5 and clf.calibration_note is None
    np.testing.assert_allclose(alone.segment_probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(alone.probabilities, aggregate_segments(expected), atol=1e-5)
    assert not alone.short and alone.uncertain == (alone.probabilities.max() < 0.4)

    del meta["extra"]["calibration"]["cnn_temperature"]  # a bundle from before: nothing for the softmax alone
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert GenreClassifier.load(copy, backend="keras").temperature == 3.0  # the head answers: its temperature
    clf = GenreClassifier.load(copy, backend="keras", silence_db=None, embedding_svm=False)
    alone = clf.predict(wav)
    assert clf.temperature == 1.0 and "uncalibrated" in clf.calibration_note
    np.testing.assert_allclose(alone.segment_probabilities, raw, atol=1e-5)
    np.testing.assert_allclose(alone.probabilities, aggregate_segments(raw), atol=1e-5)
    assert alone.uncertain == (alone.probabilities.max() < 0.4)
    args = ["predict", wav, "--model", str(copy), "--format", "json", "--backend", "keras"]
    assert main(args + ["--softmax"]) == 0
    out = capsys.readouterr()
    document = json.loads(out.out)
    assert document["model"]["calibration"]["temperature"] == 1.0 and document["model"]["calibration"]["fit_on"] is None
    assert "T = 1" in document["model"]["calibration"]["note"] and "note:" in out.err and "T = 1" in out.err
    assert main(args) == 0  # the head answers: no note
    out = capsys.readouterr()
    assert "note:" not in out.err and "note" not in json.loads(out.out)["model"]["calibration"]


@pytest.mark.slow
def test_an_installed_bundle_keeps_its_head(headed, tmp_path):
    from genre_se.inference import GenreClassifier
    from genre_se.shipped import install_shipped

    target = install_shipped(headed["bundle"], tmp_path / "shipped", quantize="none")
    assert (target / EMBEDDING_SVM_FILE).read_bytes() == (headed["bundle"] / EMBEDDING_SVM_FILE).read_bytes()
    wav = headed["index"]["path"].iloc[0]
    assert GenreClassifier.load(target, silence_db=None).predict(wav).parts is not None


@pytest.mark.slow
def test_the_cli_says_which_classifier_answered_and_softmax_switches_the_head_off(headed, capsys):
    from genre_se.cli import main

    wav = headed["index"]["path"].iloc[-1]
    args = ["predict", wav, "--model", str(headed["bundle"]), "--format", "json", "--backend", "keras"]
    assert main(args) == 0
    with_head = json.loads(capsys.readouterr().out)
    assert with_head["model"]["classifier"]["kind"] == "svm" and set(with_head["predictions"][0]["parts"]) == {
        "cnn", "svm"}
    assert main(args + ["--softmax"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["model"]["classifier"] == {"kind": "softmax"} and "parts" not in alone["predictions"][0]
    assert main(["model", "summary", "--model", str(headed["bundle"])]) == 0
    assert "Classifier: an SVM on the mean embedding (model.classifier: svm)" in capsys.readouterr().out
    assert main(["model", "summary", "--model", str(headed["bundle"]), "--classes", "3"]) == 1  # was ignored
    assert "--classes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_classifier_command_gives_a_bundle_the_head_the_train_stage_would_have(headed, tmp_path, capsys):
    from genre_se.cli import main

    plain = tmp_path / "plain"
    shutil.copytree(headed["bundle"], plain)
    (plain / EMBEDDING_SVM_FILE).unlink()
    meta = json.loads((plain / "bundle.json").read_text())
    meta["model_config"]["classifier"] = "softmax"
    del meta["extra"]["classifier"]
    meta["extra"]["calibration"]["temperature"] = 1.0
    (plain / "bundle.json").write_text(json.dumps(meta))
    assert main(["-q", "classifier", "--model", str(plain), "--features", str(headed["store"].root)]) == 0
    added, original = load_embedding_svm(plain), load_embedding_svm(headed["bundle"])
    x = np.random.default_rng(0).normal(size=(4, original.dim)) * original.scale + original.mean
    np.testing.assert_allclose(added.probabilities(x), original.probabilities(x), atol=1e-9)
    after = json.loads((plain / "bundle.json").read_text())
    before = json.loads((headed["bundle"] / "bundle.json").read_text())
    assert after["model_config"]["classifier"] == "svm" and after["extra"]["classifier"] == before["extra"]["classifier"]
    assert after["extra"]["calibration"]["temperature"] == pytest.approx(before["extra"]["calibration"]["temperature"])
    # the softmax keeps its own temperature (the auditor's repro: the head's refit must not reach --softmax)
    assert after["extra"]["calibration"]["cnn_temperature"] == pytest.approx(
        before["extra"]["calibration"]["cnn_temperature"])
    # a bundle with late fusion is refused by name
    meta["model_config"]["fusion"] = "svm"
    (plain / "bundle.json").write_text(json.dumps(meta))
    assert main(["-q", "classifier", "--model", str(plain), "--features", str(headed["store"].root)]) != 0
    assert "either-or" in capsys.readouterr().err


@pytest.mark.slow
def test_a_head_for_other_genres_or_another_embedding_size_is_refused(headed, tmp_path):
    from genre_se.fusion import save_svm

    copy = tmp_path / "copy"
    shutil.copytree(headed["bundle"], copy)
    head = load_embedding_svm(copy)
    with pytest.raises(ModelError, match="embeddings of size"):
        load_embedding_svm(copy, dim=head.dim + 1)
    import dataclasses

    save_svm(copy, dataclasses.replace(head, labels=list(reversed(head.labels))), EMBEDDING_SVM_FILE)
    with pytest.raises(ModelError, match="genres"):
        load_embedding_svm(copy, list(head.labels))


@pytest.mark.slow
def test_the_final_model_recipe_fits_the_head_on_every_clip_without_a_temperature(tmp_path):
    """train.fit_all + model.classifier: svm (the gtzan-mini bundle recipe of issue 7): the head sees every clip of
    the store, there are no validation clips for a temperature, and predict answers with the head."""
    from genre_se.bundle import load_bundle
    from genre_se.config import load_params
    from genre_se.inference import GenreClassifier
    from genre_se.train import run_train
    from tests.conftest import TINY_PARAMS, split_tone_store, write_params

    store, index = split_tone_store(tmp_path, seed=5)
    params = load_params(write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "train.epochs": 2,
                                                                "train.fit_all": True, "model.classifier": "svm"}))
    lines: list[str] = []
    run_train(params, store_dir=store.root, bundle_dir=tmp_path / "bundle", state_dir=tmp_path / "state",
              live_dir=tmp_path / "live", best_params_path=None, log=lines.append)
    n_clips = store.table["clip_id"].nunique()
    assert n_clips > len(store.table.iloc[store.rows("train")]["clip_id"].unique())
    assert f"classifier: SVM on the mean embeddings of {n_clips} training clips" in "\n".join(lines)
    assert any("no validation clips (train.fit_all, or an empty valid split), temperature 1" in line for line in lines)
    bundle = load_bundle(tmp_path / "bundle")
    head = load_embedding_svm(tmp_path / "bundle", store.labels)
    every = _mean_embeddings(bundle.model, store, np.arange(len(store.table)))
    assert head.dim == every.shape[1] and len(head.support_vectors) <= n_clips
    # predict answers with that head on the file's mean embedding, untempered (T = 1)
    clip, path = index["clip_id"].iloc[0], index["path"].iloc[0]
    got = GenreClassifier.load(tmp_path / "bundle").predict(path)
    assert set(got.parts) == {"cnn", "svm"}
    np.testing.assert_allclose(got.probabilities, head.probabilities(every.loc[[clip]].to_numpy())[0], atol=1e-4)


@pytest.mark.parametrize("command", ["classifier", "fusion"])
@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_a_seed_out_of_range_is_a_usage_error_not_a_traceback(command, seed, capsys):
    """scikit-learn refuses a seed outside [0, 2**32): say so before loading anything, as params.yaml's seed."""
    from genre_se.cli import main

    with pytest.raises(SystemExit) as usage:
        main([command, "--model", "nowhere", "--features", "nowhere", "--seed", seed])
    assert usage.value.code == 2 and "--seed" in capsys.readouterr().err
