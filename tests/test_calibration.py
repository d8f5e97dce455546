"""Calibrated confidence: ECE, temperature scaling, the train stage's fit, evaluate's report and `predict`'s
uncertain flag.

The numeric tests use synthetic probabilities whose true calibration is known; the stage tests train a tiny
model on noisy tones (a few seconds) with a validation split, so there is something to fit on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from genre_se.calibration import (
    T_MAX,
    T_MIN,
    Calibration,
    apply_temperature,
    calibrate,
    clip_distributions,
    expected_calibration_error,
    fit_temperature,
)
from genre_se.errors import ModelError


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ece_by_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Textbook ECE, written independently of the module: bins (lo, hi], the first one [0, hi]."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.sum() / len(conf) * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return total


def sample_labels(probs: np.ndarray, rng) -> np.ndarray:
    """One label per row drawn from that row's distribution (so ``probs`` is calibrated for them)."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


# --------------------------------------------------------------------------------------------------
# ECE


def test_ece_of_a_hand_computed_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bin of 0.9: accuracy 1/2, gap 0.4, weight 2/4; 0.6: gap 0.4, weight 1/4; 0.7: gap 0.3, weight 1/4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2 + 0.1 + 0.075, abs=1e-12)
    # the same from the answers alone: each top probability and whether it was right
    from genre_se.calibration import calibration_error

    assert calibration_error([0.9, 0.9, 0.6, 0.7], [True, False, True, True]) == pytest.approx(0.375, abs=1e-12)


def test_a_confidence_on_a_bin_edge_belongs_to_the_bin_it_closes():
    """Bins are (b / n, (b + 1) / n]: with 4 bins a top probability of exactly 0.5 is in (0.25, 0.5], not with
    0.625 in (0.5, 0.75]; that decides the ECE when the two answers differ (binary fractions: no rounding)."""
    from genre_se.calibration import calibration_error, reliability_bins

    bins = reliability_bins([0.5, 0.625, 1.0, 0.0], [True, False, True, False], n_bins=4)
    assert bins["counts"].tolist() == [1, 1, 1, 1]  # 0 goes to the first bin, 1 to the last
    np.testing.assert_array_equal(bins["accuracy"], [0.0, 1.0, 0.0, 1.0])
    # apart: |1 - 0.5| and |0 - 0.625|, each of weight 1/2; pooled in one bin they would give |0.5 - 0.5625|
    assert calibration_error([0.5, 0.625], [True, False], n_bins=4) == pytest.approx(0.5625, abs=1e-12)

def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    n, c = 20000, 4
    conf = rng.uniform(0.4, 1.0, n)
    top = rng.integers(0, c, n)
    right = rng.random(n) < conf
    labels = np.where(right, top, (top + rng.integers(1, c, n)) % c)
    calibrated = np.repeat(((1 - conf) / (c - 1))[:, None], c, axis=1)
    calibrated[np.arange(n), top] = conf
    ece = expected_calibration_error(calibrated, labels)
    assert ece < 0.02 and ece == pytest.approx(ece_by_loop(calibrated, labels), abs=1e-12)

    sure = np.full((n, c), 0.01 / (c - 1))
    sure[np.arange(n), top] = 0.99
    # every sample is in the top bin with confidence 0.99 and accuracy ~ mean(conf) = 0.7
    expected = 0.99 - right.mean()
    assert expected_calibration_error(sure, labels) == pytest.approx(expected, abs=1e-9)
    assert expected > 0.25


def test_ece_rejects_mismatched_inputs():
    with pytest.raises(ModelError, match="labels"):
        expected_calibration_error(np.full((3, 2), 0.5), np.array([0, 1]))
    with pytest.raises(ModelError, match="no samples"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int))


# --------------------------------------------------------------------------------------------------
# Temperature scaling


def test_apply_temperature_identities():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (50, 6))
    probs = softmax(logits)
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)  # bit for bit: old bundles unchanged
    for t in (0.3, 2.5):
        scaled = apply_temperature(probs, t)
        np.testing.assert_allclose(scaled, softmax(logits / t), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-12)
    assert (apply_temperature(probs, 3.0).max(axis=1) < probs.max(axis=1)).all()  # T > 1 softens
    np.testing.assert_allclose(apply_temperature(probs, 1e6), 1 / 6, atol=1e-4)  # T -> inf: uniform
    # a zero probability stays finite (clipped) and the row still sums to 1
    edge = apply_temperature(np.array([[1.0, 0.0, 0.0]]), 2.0)
    assert np.isfinite(edge).all() and edge.sum() == pytest.approx(1.0) and edge[0, 0] > 0.99
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ModelError, match="temperature"):
            apply_temperature(probs, bad)


@pytest.mark.parametrize("t_true", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(int(t_true * 10))
    logits = rng.normal(0, 3, (4000, 5))
    labels = sample_labels(softmax(logits / t_true), rng)  # the truth is softmax(z / T0) ...
    given = softmax(logits)  # ... the model says softmax(z)
    t = fit_temperature(given, np.arange(len(labels)), labels)
    assert t == pytest.approx(t_true, rel=0.15)
    record = calibrate(given, np.arange(len(labels)), labels, uncertain_below=0.3)
    assert record.temperature == t and record.fit_on == "val" and record.n_clips == 4000
    assert record.nll_after < record.nll_before
    assert record.ece_after < record.ece_before and record.ece_after < 0.03
    assert record.ece_before == pytest.approx(ece_by_loop(given, labels), abs=1e-12)


def test_fit_on_multi_segment_clips_minimises_the_clip_nll_of_the_mean():
    rng = np.random.default_rng(3)
    n_clips, per_clip, c = 300, 4, 3
    clip_index = np.repeat(np.arange(n_clips), per_clip)
    labels = rng.integers(0, c, n_clips)
    logits = rng.normal(0, 1, (len(clip_index), c)) * 4
    logits[np.arange(len(clip_index)), labels[clip_index]] += 2.5  # informative but over-confident
    probs = softmax(logits)
    order = rng.permutation(len(clip_index))  # segments need not be grouped by clip
    probs, clip_index = probs[order], clip_index[order]

    def clip_nll(t: float) -> float:  # independent: pandas groupby mean of the scaled segments
        scaled = pd.DataFrame(softmax(np.log(probs) / t)).groupby(clip_index).mean().to_numpy()
        return float(-np.log(scaled[np.arange(n_clips), labels]).mean())

    t = fit_temperature(probs, clip_index, labels, prior_sigma=None)
    assert T_MIN < t < T_MAX and abs(t - 1.0) > 0.1  # the data are miscalibrated: T moves
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 400))
    assert clip_nll(t) <= min(clip_nll(g) for g in grid) + 1e-6
    assert clip_nll(t) < clip_nll(1.0)
    # with the default weak prior, 300 clips are plenty of evidence: T barely moves
    assert fit_temperature(probs, clip_index, labels) == pytest.approx(t, rel=0.02)
    # the clip rule is the inference rule (mean of segment probabilities)
    from genre_se.inference import aggregate_segments

    clips = clip_distributions(probs, clip_index, n_clips, temperature=t)
    np.testing.assert_allclose(clips[7], aggregate_segments(apply_temperature(probs[clip_index == 7], t)), atol=1e-15)


def test_the_prior_keeps_a_small_perfectly_separated_split_from_sending_t_to_zero():
    # 6 clips, every one right with top probability ~0.41: plain NLL keeps falling as T -> 0
    rng = np.random.default_rng(5)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.full((6, 3), 0.29) + rng.uniform(0, 0.01, (6, 3))
    probs[np.arange(6), labels] = 0.41
    probs /= probs.sum(axis=1, keepdims=True)
    index = np.arange(6)
    assert fit_temperature(probs, index, labels, prior_sigma=None) == pytest.approx(T_MIN, rel=1e-3)
    t = fit_temperature(probs, index, labels, prior_sigma=1.0)
    assert T_MIN * 1.5 < t < 1.0  # sharpened (the split says the model is under-confident), not to the bound

    def objective(temp):  # independent: mean clip NLL + (log T)^2 / (2 sigma^2 n)
        p = softmax(np.log(probs) / temp)
        return float(-np.log(p[index, labels]).mean() + np.log(temp) ** 2 / (2 * 6))

    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 2000))
    assert objective(t) <= min(objective(g) for g in grid) + 1e-7
    with pytest.raises(ModelError, match="prior_sigma"):
        fit_temperature(probs, index, labels, prior_sigma=0.0)


def test_vote_cannot_be_calibrated_and_bad_records_are_refused():
    with pytest.raises(ModelError, match="vote"):
        fit_temperature(np.full((2, 2), 0.5), np.array([0, 1]), np.array([0, 1]), aggregate="vote")
    assert Calibration.from_dict(None) == Calibration(temperature=1.0, uncertain_below=0.4)
    with pytest.raises(ModelError, match="extra.calibration.temperature"):
        Calibration.from_dict({"temperature": 0})
    with pytest.raises(ModelError, match="uncertain_below"):
        Calibration.from_dict({"temperature": 1.5, "uncertain_below": 1.5})


def test_params_validate_the_threshold(tmp_path):
    from genre_se.config import load_params
    from genre_se.errors import ConfigError
    from tests.conftest import write_params

    params = load_params(write_params(tmp_path / "params.yaml", {}))
    assert params.predict.uncertain_below == 0.4 and params.train.calibrate is True
    with pytest.raises(ConfigError, match="predict.uncertain_below"):
        load_params(write_params(tmp_path / "params.yaml", {"predict.uncertain_below": 1.2}))


# --------------------------------------------------------------------------------------------------
# The stages and predict, on a tiny trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """run_train on a tone store with train/valid/test clips, as the train stage runs it."""
    from genre_se.config import load_params
    from genre_se.train import run_train
    from tests.conftest import TINY_PARAMS, split_tone_store, write_params

    root = tmp_path_factory.mktemp("calib")
    store, _ = split_tone_store(root, seed=3)
    params = load_params(write_params(root / "params.yaml", {**TINY_PARAMS, "train.epochs": 2,
                                                            "predict.uncertain_below": 0.35}))
    lines: list[str] = []
    run_train(params, store_dir=store.root, bundle_dir=root / "bundle", state_dir=root / "state",
              live_dir=root / "live", best_params_path=None, log=lines.append)
    return {"root": root, "store": store, "bundle": root / "bundle", "params": params, "log": lines}


def _valid_clip_probs(model, store, temperature: float):
    """Independently: the model's valid segment outputs, scaled, averaged per clip with pandas."""
    rows = store.rows("valid")
    out = np.asarray(model(np.asarray(store.segments[rows], dtype=np.float32), training=False), dtype=np.float64)
    scaled = softmax(np.log(np.clip(out, 1e-12, None)) / temperature)
    table = store.table.iloc[rows]
    frame = pd.DataFrame(scaled).groupby(table["clip_id"].to_numpy(), sort=False).mean()
    labels = table.groupby("clip_id", sort=False)["label_index"].first().loc[frame.index].to_numpy()
    return frame.to_numpy(), labels


@pytest.mark.slow
def test_train_stage_stores_the_fitted_calibration(trained):
    from genre_se.bundle import load_bundle
    from genre_se.litert import load_litert_bundle

    bundle = load_bundle(trained["bundle"])
    record = bundle.extra["calibration"]
    assert record["fit_on"] == "val" and record["n_clips"] == 6 and record["uncertain_below"] == 0.35
    t = record["temperature"]
    assert T_MIN <= t <= T_MAX
    raw, labels = _valid_clip_probs(bundle.model, trained["store"], 1.0)
    assert record["ece_before"] == pytest.approx(ece_by_loop(raw, labels), abs=1e-5)
    scaled, _ = _valid_clip_probs(bundle.model, trained["store"], t)
    assert record["ece_after"] == pytest.approx(ece_by_loop(scaled, labels), abs=1e-5)

    def objective(temp):  # mean clip NLL + the prior on log T (sigma 1)
        p, _ = _valid_clip_probs(bundle.model, trained["store"], temp)
        nll = float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())
        return nll + np.log(temp) ** 2 / (2 * len(labels))

    best_on_grid = min(objective(g) for g in np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 60)))
    assert objective(t) <= best_on_grid + 1e-4 and objective(t) <= objective(1.0) + 1e-9
    assert record["nll_after"] <= record["nll_before"]
    assert record["cnn_temperature"] == t  # no head: the softmax's own temperature is the bundle's
    assert any(line.startswith("calibration on 6 validation clips") for line in trained["log"])
    assert trained["log"][0].startswith("reduction ratios ")  # and whence (train._ratios_source)
    # the fast path reads the same bundle.json
    assert load_litert_bundle(trained["bundle"]).extra["calibration"] == record


@pytest.mark.slow
def test_no_validation_clips_or_calibrate_off_keep_temperature_one(trained):
    from genre_se.bundle import load_bundle
    from genre_se.train import calibration_record

    store = trained["store"]
    record = calibration_record(None, store, np.zeros(0, dtype=np.int64), True, 0.3)  # train.fit_all
    assert record["temperature"] == 1.0 and record["fit_on"] is None and record["ece_before"] is None
    assert record["cnn_temperature"] == 1.0
    assert record["uncertain_below"] == 0.3
    model = load_bundle(trained["bundle"]).model
    record = calibration_record(model, store, store.rows("valid"), False, 0.4)  # train.calibrate: false
    assert record["temperature"] == 1.0 and record["fit_on"] is None and record["n_clips"] == 6
    assert record["cnn_temperature"] == 1.0
    assert record["ece_before"] == record["ece_after"]


@pytest.mark.slow
def test_a_given_temperature_is_stored_and_scored_on_the_validation_clips(trained):
    """train.calibrate: <number> (a T fitted elsewhere, e.g. out of fold): stored as is, with the validation
    clips' ECE under it; with no validation clips it is still stored."""
    from genre_se.bundle import load_bundle
    from genre_se.calibration import apply_temperature, clip_distributions, expected_calibration_error
    from genre_se.train import calibration_record, predict_rows

    store, model = trained["store"], load_bundle(trained["bundle"]).model
    rows = store.rows("valid")
    lines = []
    record = calibration_record(model, store, rows, 2.5, 0.4, lines.append)
    assert record["temperature"] == 2.5 and record["fit_on"] == "fixed" and record["n_clips"] == 6
    assert record["cnn_temperature"] == 2.5
    codes, _ = pd.factorize(store.table["clip_id"].to_numpy()[rows])
    labels = pd.Series(store.table["label_index"].to_numpy()[rows]).groupby(codes).first().to_numpy()
    probs = predict_rows(model, store, rows)
    assert record["ece_after"] == pytest.approx(expected_calibration_error(
        clip_distributions(probs, codes, 6, 2.5), labels))
    assert record["ece_before"] == pytest.approx(expected_calibration_error(clip_distributions(probs, codes, 6),
                                                                            labels))
    assert not np.allclose(apply_temperature(probs, 2.5), probs)
    assert lines == [f"calibration on 6 validation clips: temperature 2.500 (given), clip ECE "
                     f"{record['ece_before']:.3f} -> {record['ece_after']:.3f}"]
    held_out_none = calibration_record(None, store, np.zeros(0, dtype=np.int64), 0.8, 0.4)  # train.fit_all
    assert held_out_none["temperature"] == 0.8 and held_out_none["fit_on"] == "fixed"
    assert held_out_none["cnn_temperature"] == 0.8


def test_the_softmax_temperature_is_optional_checked_and_older_records_still_load():
    """extra.calibration.cnn_temperature: the CNN softmax's own temperature (when a head or fusion answers, the
    bundle's temperature is fitted on theirs). Older records lack it: their temperature is the softmax's when the
    bundle has neither, else the softmax has none (None: T = 1)."""
    old = Calibration.from_dict({"temperature": 0.4, "fit_on": "val", "n_clips": 10})
    assert old.cnn_temperature is None
    assert old.softmax_temperature(has_head=False) == 0.4
    assert old.softmax_temperature(has_head=True) is None
    new = Calibration.from_dict({"temperature": 0.4, "cnn_temperature": 0.7})
    assert new.softmax_temperature(True) == new.softmax_temperature(False) == 0.7
    assert Calibration.from_dict(new.to_dict()) == new and new.to_dict()["cnn_temperature"] == 0.7
    for bad in (0, -1.0, float("nan"), "0.5", True):
        with pytest.raises(ModelError, match="extra.calibration.cnn_temperature"):
            Calibration.from_dict({"temperature": 0.4, "cnn_temperature": bad})


def test_params_accept_a_temperature_for_calibrate(tmp_path):
    from genre_se.config import load_params
    from genre_se.errors import ConfigError
    from tests.conftest import write_params

    assert load_params(write_params(tmp_path / "p.yaml", {"train.calibrate": 1.6})).train.calibrate == 1.6
    for bad in (0.0, 50, "yes"):
        with pytest.raises(ConfigError, match="train.calibrate"):
            load_params(write_params(tmp_path / "p.yaml", {"train.calibrate": bad}))


@pytest.mark.slow
def test_an_interrupted_evaluate_leaves_no_old_report_beside_new_ones(trained, tmp_path, monkeypatch):
    """A kill while the reports were written left a mix: the new metrics.json beside the last run's plots.
    The old set goes first and metrics.json comes last, so an interrupted write leaves files missing (and
    no metrics.json), never stale ones; the next run writes the whole set."""
    import genre_se.evaluate
    from genre_se.evaluate import REPORTS, run_evaluate

    reports = tmp_path / "reports"
    reports.mkdir()
    for name in REPORTS:
        (reports / name).write_text("stale")
    (reports / "prepare_errors.csv").write_text("another stage's")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(genre_se.evaluate, "plot_reliability", killed)
    kwargs = dict(store_dir=trained["store"].root, bundle_dir=trained["bundle"], reports_dir=reports)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(trained["params"], **kwargs)
    left = {p.name: p.read_bytes() for p in reports.iterdir()}
    assert b"stale" not in [left[name] for name in REPORTS if name in left]
    assert "metrics.json" not in left and "reliability.png" not in left
    assert {"cv_folds.csv", "per_class.csv", "predictions.csv", "confusion_matrix.png"} <= set(left)
    assert left["prepare_errors.csv"] == b"another stage's"
    monkeypatch.undo()
    run_evaluate(trained["params"], **kwargs)
    assert {"metrics.json", "reliability.png"} <= {p.name for p in reports.iterdir()}
    assert json.loads((reports / "metrics.json").read_text())["n_clips"] > 0


@pytest.mark.slow
def test_evaluate_reports_raw_and_calibrated_ece(trained):
    from genre_se.bundle import load_bundle
    from genre_se.evaluate import run_evaluate

    reports = trained["root"] / "reports"
    metrics = run_evaluate(trained["params"], store_dir=trained["store"].root, bundle_dir=trained["bundle"],
                           reports_dir=reports)
    bundle = load_bundle(trained["bundle"])
    t = bundle.extra["calibration"]["temperature"]
    written = json.loads((reports / "metrics.json").read_text())
    assert written["temperature"] == pytest.approx(t)
    store = trained["store"]
    rows = store.rows("test")
    out = np.asarray(bundle.model(np.asarray(store.segments[rows], dtype=np.float32), training=False), np.float64)
    table = store.table.iloc[rows]
    labels = table.groupby("clip_id", sort=False)["label_index"].first().to_numpy()
    predictions = pd.read_csv(reports / "predictions.csv")
    for key, column, temp in (("ece", "confidence", 1.0), ("ece_calibrated", "confidence_calibrated", t)):
        clips = pd.DataFrame(softmax(np.log(np.clip(out, 1e-12, None)) / temp)).groupby(
            table["clip_id"].to_numpy(), sort=False).mean().to_numpy()
        assert written["clip"][key] == pytest.approx(ece_by_loop(clips, labels), abs=1e-5)
        np.testing.assert_allclose(predictions[column], clips.max(axis=1), atol=1e-5)
    assert (reports / "reliability.png").stat().st_size > 1000
    assert metrics["clip"]["accuracy"] == written["clip"]["accuracy"]


@pytest.mark.slow
def test_predict_applies_the_temperature_and_flags_uncertain_answers(trained, tmp_path, capsys):
    from genre_se.cli import main
    from genre_se.inference import GenreClassifier
    from tests.test_inference import BAND_HZ, tone, write

    # between two bands, so the answer is not saturated at probability 1; such a mixture is unlike every
    # training tone, so this test reads a copy of the bundle without its familiarity statistics: here only the
    # probability threshold decides (test_familiarity.py tests the other flag)
    between = 0.5 * tone(BAND_HZ["low"] * 2, 2.0) + 0.5 * tone(BAND_HZ["mid"], 2.0, seed=1)
    path = write(tmp_path / "between.wav", between)
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    (bundle / "familiarity.npz").unlink()
    trained = {**trained, "bundle": bundle}
    clf = GenreClassifier.load(trained["bundle"])
    t = json.loads((trained["bundle"] / "bundle.json").read_text())["extra"]["calibration"]["temperature"]
    assert clf.runtime == "litert" and clf.temperature == t and clf.uncertain_below == 0.35
    raw = GenreClassifier(dataclasses.replace(clf.bundle, extra={})).predict(path)  # an uncalibrated twin
    assert raw.uncertain == (raw.probabilities.max() < 0.4)  # no calibration: the default threshold
    calibrated = clf.predict(path)
    expected = apply_temperature(raw.segment_probabilities, t)
    np.testing.assert_allclose(calibrated.segment_probabilities, expected, atol=1e-12)
    np.testing.assert_allclose(calibrated.probabilities, expected.mean(axis=0), atol=1e-12)
    top = calibrated.probabilities.max()
    assert top < 1.0 and calibrated.uncertain == (top < 0.35)

    def predict(*extra):
        assert main(["predict", str(path), "--model", str(trained["bundle"]), *extra]) == 0
        return capsys.readouterr().out

    for threshold, flag in (("0", False), ("1", True), (f"{top + 1e-6:.9f}", True), (f"{top - 1e-6:.9f}", False)):
        record = json.loads(predict("--format", "json", "--uncertain-below", threshold))["predictions"][0]
        assert record["uncertain"] is flag, threshold
        assert [g["genre"] for g in record["top"]] == [g for g, _ in calibrated.top(3)]  # top-k kept
        assert record["top"][0]["probability"] == pytest.approx(top, abs=1e-9)
    document = json.loads(predict("--format", "json"))
    assert document["model"]["calibration"] == {"temperature": t, "fit_on": "val", "uncertain_below": 0.35}
    assert "(uncertain)" in predict("--uncertain-below", "1") and "(uncertain)" not in predict("--uncertain-below", "0")
    csv_path = tmp_path / "out.csv"
    predict("--format", "csv", "--uncertain-below", "1", "--output", str(csv_path))
    table = pd.read_csv(csv_path)
    assert list(table.columns) == ["path", "duration", "n_segments", "genre_1", "probability_1", "genre_2",
                                   "probability_2", "genre_3", "probability_3", "uncertain", "unfamiliar",
                                   "short", "all_silent", "distance", "truncated", "declared_duration"]
    assert table["uncertain"].tolist() == [True] and table["unfamiliar"].isna().all()  # not measured
    assert table["distance"].isna().all() and table["short"].tolist() == [False]
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(path), "--model", str(trained["bundle"]), "--uncertain-below", "1.5"])
    assert usage.value.code == 2
    with pytest.raises(ModelError, match="uncertain_below"):
        GenreClassifier(clf.bundle, uncertain_below=-0.1)


@pytest.mark.slow
def test_evaluate_cross_validates_at_the_bundles_learning_rate(trained, monkeypatch):
    """A learning rate the tune stage searched reaches the bundle (best_params.json), not params.train: the CV
    folds must train at the bundle's rate, as they already take its tuned model settings."""
    import dataclasses

    from genre_se import evaluate
    from genre_se.bundle import load_bundle

    recorded = load_bundle(trained["bundle"]).extra["train_config"]["learning_rate"]
    params = trained["params"]
    untuned = dataclasses.replace(params, train=dataclasses.replace(params.train, learning_rate=recorded * 7),
                                  evaluate=dataclasses.replace(params.evaluate, folds=2))
    seen = {}

    def fake_cv(store, params, model_cfg, state_root, log=None, train_cfg=None):
        seen["train"] = train_cfg if train_cfg is not None else params.train
        return {"per_fold": [{"fold": 0, "clip_accuracy": 1.0}], "clip_accuracy": 1.0}

    monkeypatch.setattr(evaluate, "cross_validate", fake_cv)
    evaluate.run_evaluate(untuned, store_dir=trained["store"].root, bundle_dir=trained["bundle"],
                          reports_dir=trained["root"] / "reports-cv", cv_state_dir=trained["root"] / "cv-state")
    assert seen["train"].learning_rate == pytest.approx(recorded)
    assert seen["train"].epochs == params.train.epochs  # the rest of the recipe is params.train's


def test_an_unfitted_record_of_a_bundle_with_a_head_is_the_softmaxs_too():
    """T = 1 never fitted (fit_on None) is the same for any distribution: no 'fitted on the head' note."""
    from genre_se.calibration import Calibration

    assert Calibration(temperature=1.0, fit_on=None).softmax_temperature(has_head=True) == 1.0
    assert Calibration(temperature=0.5, fit_on="val").softmax_temperature(has_head=True) is None
    assert Calibration(temperature=0.5, fit_on="val").softmax_temperature(has_head=False) == 0.5
    assert Calibration(temperature=0.5, fit_on="val", cnn_temperature=0.7).softmax_temperature(has_head=True) == 0.7
