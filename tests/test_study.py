"""The SE study (study/compare.py) on tiny tone data, and the training switches it compares."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from genre_se.calibration import calibration_error
from genre_se.config import ConfigError, FeatureConfig, TrainConfig, load_params
from genre_se.feature_store import FeatureStore
from study import compare
from study import summary as tables
from tests.conftest import TINY_PARAMS, make_tone_dataset, write_params


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A 3-genre tone dataset, its params, a study file and the prepared work folder (3 folds)."""
    root = tmp_path_factory.mktemp("study")
    tones = make_tone_dataset(root / "tones")
    params = write_params(root / "params.yaml", {**TINY_PARAMS, "data.root": str(tones), "evaluate.folds": 3})
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "params": str(params),
        "set": {"train.epochs": 2},
        "seeds": [42, 7],
        "variants": {"svm": "baseline", "no_se": {"model.se": False}, "se": {"model.reduction_ratios": 2},
                     "se_tuned": {"model.reduction_ratios": "tuned"}},
    }, sort_keys=False))
    study = compare.load_study(study_file)
    work = root / "work"
    clips, segments = compare.prepare_work(study, work)
    assert clips == 18 and segments > 18
    (work / "best_params.json").write_text(json.dumps({"model": {"reduction_ratios": 4}}))
    return study, work


def test_study_scores_every_variant_on_the_same_folds_and_resumes(tiny_study, tmp_path, monkeypatch):
    study, work = tiny_study
    out = tmp_path / "study.csv"
    results = compare.run_study(study, work / "features", work / "index.csv", out, state_root=tmp_path / "state",
                                best_params_path=work / "best_params.json", variants=["svm", "no_se", "se"],
                                quick=True)
    saved = pd.read_csv(out)
    assert list(saved.columns) == compare.CSV_COLUMNS + compare.OPTIONAL_COLUMNS and len(saved) == len(results) == 3 * 3  # 3 variants x 3 folds
    assert set(saved["seed"]) == {42}  # --quick: one seed
    for _, runs in saved.groupby("variant"):
        assert sorted(runs["fold"]) == [0, 1, 2] and runs["n_test_clips"].sum() == 18  # each clip tested once
    assert saved[["clip_accuracy", "clip_macro_f1"]].stack().between(0, 1).all()
    params = saved.groupby("variant")["params"].first()
    assert params["se"] > params["no_se"] > 0  # the SE blocks add their weights
    assert (saved.loc[saved.variant != "svm", "epochs_run"] == 1).all()  # quick: one epoch
    assert (saved["train_seconds"] > 0).all()
    assert saved.loc[saved.variant == "svm", "clip_accuracy"].mean() > 0.9  # tones are easy for MFCCs
    # the per-clip predictions beside the CSV: every clip once per variant, and they give each row's accuracy
    clips = compare.read_clip_predictions(compare.clip_predictions_path(out))
    assert clips.groupby("variant")["clip_id"].nunique().to_dict() == {"svm": 18, "no_se": 18, "se": 18}
    assert set(clips["clip_id"]) == set(FeatureStore.open(work / "features").table["clip_id"])
    from_clips = clips.assign(hit=clips.actual == clips.predicted).groupby(["variant", "fold"])["hit"].mean()
    assert from_clips.to_numpy() == pytest.approx(saved.set_index(["variant", "fold"]).loc[from_clips.index,
                                                                                          "clip_accuracy"].to_numpy())
    # the CNN keeps each answer's top probability (pooled clip ECE), the SVM has none
    cnn = clips[clips.variant != "svm"]
    assert cnn["confidence"].between(1 / 3, 1).all() and clips.loc[clips.variant == "svm", "confidence"].isna().all()
    pooled = tables.pooled_calibration(clips, saved, "se")
    se_clips = cnn[cnn.variant == "se"]
    assert pooled["clip_ece_n"] == 18 and pooled["clip_ece"] == pytest.approx(
        calibration_error(se_clips["confidence"].to_numpy(), (se_clips.actual == se_clips.predicted).to_numpy()))
    assert tables.pooled_calibration(clips, saved, "svm") == {}
    assert "clip ECE (pooled; clips)" in tables.summary_markdown(tables.summarize(saved, ["svm", "se"], "svm", clips),
                                                                  "svm")

    # a second run skips every row already there: no training at all
    def boom(*args, **kwargs):
        raise AssertionError("retrained a finished fold")

    monkeypatch.setattr(compare, "run_cnn_fold", boom)
    monkeypatch.setattr(compare, "run_baseline_fold", boom)
    again = compare.run_study(study, work / "features", work / "index.csv", out, state_root=tmp_path / "state",
                              variants=["svm", "no_se", "se"], quick=True)
    assert len(again) == 9

    summary = tables.summarize(again, list(study.variants), reference="svm")
    assert list(summary["variant"]) == ["svm", "no_se", "se"]
    se = summary.set_index("variant").loc["se"]
    assert se["runs"] == 3 and se["clip_accuracy_mean"] == pytest.approx(saved[saved.variant == "se"].clip_accuracy.mean())
    table = tables.summary_markdown(summary, "svm")
    assert table.count("\n") == 2 + 3 and "±" in table and "`no_se`" in table
    assert "per seed" not in table  # one seed: no repeatability column
    two_seeds = pd.concat([again, again.assign(seed=7, clip_accuracy=0.5)])
    by_seed = tables.summarize(two_seeds, ["se"]).set_index("variant").loc["se", "seed_means"]
    assert by_seed == f"{0.5:.3f} / {saved[saved.variant == 'se'].clip_accuracy.mean():.3f}"  # seed 7, then 42
    assert "clip accuracy per seed" in tables.summary_markdown(tables.summarize(two_seeds, ["se"]))
    with_clips = tables.summarize(again, list(study.variants), reference="svm", clips=clips).set_index("variant")
    assert with_clips.loc["se", "clips_paired"] == 18  # every clip, paired with the SVM's answer on it
    assert "sign test p" in tables.summary_markdown(with_clips.reset_index(), "svm")


def test_detectable_difference_and_pairs_needed_invert_each_other():
    """(t[.975] + t[.8]) * sd / sqrt(n): 5 folds of sd 0.08 resolve only ~0.13 (t-table, 4 df: 2.776 + 0.941);
    for many pairs it approaches the normal (1.960 + 0.842)."""
    assert tables.detectable_difference(0.08, 5) == pytest.approx((2.776 + 0.941) * 0.08 / 5 ** 0.5, rel=1e-3)
    assert tables.detectable_difference(0.08, 10_000) == pytest.approx(2.802 * 0.08 / 100, rel=1e-3)
    n = tables.pairs_needed(0.08, 0.03)
    assert 56 <= n <= 60 and tables.detectable_difference(0.08, n) <= 0.03 < tables.detectable_difference(0.08, n - 1)
    n = tables.pairs_needed(0.164, 0.05)
    assert tables.detectable_difference(0.164, n) <= 0.05 < tables.detectable_difference(0.164, n - 1)
    assert tables.detectable_difference(0.08, 20, power=0.9) > tables.detectable_difference(0.08, 20)
    assert np.isnan(tables.detectable_difference(0.08, 2)) and np.isnan(tables.detectable_difference(np.nan, 5))
    with pytest.raises(ValueError, match="effect"):
        tables.pairs_needed(0.08, 0.0)
    assert tables.pairs_needed(0.08, 10.0) == 3  # a huge effect: the fewest pairs whose spread means anything
    # in the summary: per variant, from its own paired fold differences against the reference
    results = pd.DataFrame({"variant": ["r"] * 4 + ["v"] * 4, "seed": 1, "fold": [0, 1, 2, 3] * 2,
                            "clip_accuracy": [0.5, 0.6, 0.7, 0.8, 0.6, 0.6, 0.9, 0.8], "clip_macro_f1": 0.5,
                            "params": 1, "train_seconds": 1.0, "epochs_run": 1})
    row = tables.summarize(results, ["r", "v"], reference="r").set_index("variant").loc["v"]
    diffs = np.array([0.1, 0.0, 0.2, 0.0])
    assert row["detectable_delta"] == pytest.approx(tables.detectable_difference(diffs.std(ddof=1), 4))
    table = tables.summary_markdown(tables.summarize(results, ["r", "v"], reference="r"), "r")
    assert "detectable Δ (80 % power)" in table and f"{row['detectable_delta']:.3f}" in table


def test_detectable_difference_allows_for_overlapping_folds_as_the_corrected_t_test_does():
    """The verdicts go by Nadeau & Bengio's corrected t-test, whose variance is (1/n + n_test/n_train) s^2, so the
    difference the folds can detect must use the same variance: with a holdout ratio of 0.25 it stops shrinking with
    more seeds (floor (z[.975] + z[.8]) * sd * 0.5), and pairs_needed says where no number of folds is enough."""
    from study import what_helped

    assert tables.detectable_difference(0.08, 25, holdout_ratio=0.25) == pytest.approx(
        (2.064 + 0.857) * 0.08 * (1 / 25 + 0.25) ** 0.5, rel=1e-3)
    assert tables.detectable_difference(0.08, 25, holdout_ratio=0.0) == tables.detectable_difference(0.08, 25)
    assert tables.detectable_difference(0.08, 100_000, holdout_ratio=0.25) == pytest.approx(2.802 * 0.08 * 0.5,
                                                                                            rel=1e-3)
    with pytest.raises(ValueError, match="no number of folds"):
        tables.pairs_needed(0.08, 0.05, holdout_ratio=0.25)  # the session-7 table's "23 folds" is out of reach
    n = tables.pairs_needed(0.08, 0.15, holdout_ratio=0.25)
    assert (tables.detectable_difference(0.08, n, holdout_ratio=0.25) <= 0.15
            < tables.detectable_difference(0.08, n - 1, holdout_ratio=0.25))
    # what_helped reports both, the corrected one from the reference's holdout ratio
    results = pd.DataFrame({"variant": ["b"] * 5 + ["v"] * 5, "seed": 1, "fold": list(range(5)) * 2,
                            "clip_accuracy": [0.5, 0.6, 0.7, 0.8, 0.6, 0.6, 0.6, 0.9, 0.8, 0.7],
                            "n_test_clips": [15, 14, 14, 14, 14] * 2})
    c = what_helped.contrast(results, "v", "b")
    sd = np.std([0.1, 0.0, 0.2, 0.0, 0.1], ddof=1)
    assert c["detectable_corrected"] == pytest.approx(
        tables.detectable_difference(sd, 5, holdout_ratio=14.2 / (71 - 14.2)))
    assert c["detectable_corrected"] > c["detectable"]


def _clip_rows(variant, hits, key="k", seed=1):
    return pd.DataFrame({"variant": variant, "seed": seed, "fold": 0, "clip_id": [f"c{i}" for i in range(len(hits))],
                         "actual": "a", "predicted": ["a" if h else "b" for h in hits], "config_key": key})


def test_paired_clips_counts_discordant_clips_and_runs_the_exact_sign_test():
    # the variant is right on clips 0-9, the reference on 9 and 10-11: better 9 (0-8), worse 2 (10, 11)
    variant = _clip_rows("v", [True] * 10 + [False] * 2)
    reference = _clip_rows("r", [False] * 9 + [True] * 3)
    stale = _clip_rows("v", [False] * 12, key="old", seed=2)  # a seed whose row was recomputed since: ignored
    results = pd.DataFrame({"variant": ["v", "r", "v"], "seed": [1, 1, 2], "fold": 0, "config_key": ["k", "k", "new"]})
    out = tables.paired_clips(pd.concat([variant, reference, stale]), results, "v", "r")
    assert out["clips_paired"] == 12 and (out["clips_better"], out["clips_worse"]) == (9, 2)
    assert out["clips_p"] == pytest.approx(2 * sum(__import__("math").comb(11, i) for i in range(3)) / 2 ** 11)
    assert tables.paired_clips(variant, results, "v", "r") == {}  # nothing paired: no test


class FixedModel:
    """Stands in for a Keras model: segment probabilities chosen by the test, per file (by segment count)."""

    def __init__(self, by_length: dict):
        self.by_length = by_length

    def predict(self, x, verbose=0):
        return np.tile(self.by_length[len(x)], (len(x), 1))


def test_external_scores_per_file_and_per_song():
    # song "a" (label 0): excerpts right, wrong, right -> 2/3 files, song right; song "b" (label 1): wrong.
    segments = [np.zeros((n, 2, 2), "float32") for n in (1, 2, 3, 4)]
    probs = {1: [0.6, 0.4], 2: [0.0, 1.0], 3: [0.9, 0.1], 4: [0.7, 0.3]}
    paths = ["x/g/a-1of3.mp3", "x/g/a-2of3.mp3", "x/g/a-3of3.mp3", "x/h/b-1of1.mp3"]
    external = compare.ExternalSet(segments, np.array([0, 0, 0, 1]), ["g/a", "g/a", "g/a", "h/b"], paths)
    scores = compare.external_scores(FixedModel({k: np.array(v) for k, v in probs.items()}), external, ["g", "h"])
    files = scores.pop("external_files")
    kept = scores.pop("external_probs")  # every segment's whole distribution, one row per segment
    assert scores == {"external_top1": pytest.approx(2 / 4), "external_song_top1": pytest.approx(1 / 2)}
    assert kept["clip_id"].tolist() == ["g/a-1of3.mp3"] + ["g/a-2of3.mp3"] * 2 + ["g/a-3of3.mp3"] * 3 + [
        "h/b-1of1.mp3"] * 4
    assert set(kept["set"]) == {"external"} and kept["actual"].tolist() == ["g"] * 6 + ["h"] * 4
    assert kept[["g", "h"]].to_numpy().tolist() == [[0.6, 0.4]] + [[0.0, 1.0]] * 2 + [[0.9, 0.1]] * 3 + [
        [0.7, 0.3]] * 4
    assert files["clip_id"].tolist() == ["g/a-1of3.mp3", "g/a-2of3.mp3", "g/a-3of3.mp3", "h/b-1of1.mp3"]
    assert files["actual"].tolist() == ["g", "g", "g", "h"] and files["predicted"].tolist() == ["g", "h", "g", "g"]
    assert files["confidence"].tolist() == pytest.approx([0.6, 1.0, 0.9, 0.7])  # each file's top probability


def test_external_by_genre_shows_the_share_right_and_the_usual_answer():
    rows = pd.DataFrame({"variant": "v", "seed": 1, "fold": [0, 0, 0, 1, 1, 1], "config_key": "k",
                         "clip_id": ["jazz/a", "jazz/b", "pop/c"] * 2, "actual": ["jazz", "jazz", "pop"] * 2,
                         "predicted": ["country", "jazz", "pop", "country", "country", "jazz"]})
    stale = rows.assign(variant="v", seed=2, config_key="old", predicted="jazz")  # recomputed since: ignored
    results = pd.DataFrame({"variant": "v", "seed": [1, 1, 2], "fold": [0, 1, 0], "config_key": ["k", "k", "new"]})
    table = tables.external_by_genre(pd.concat([rows, stale]), results, ["w", "v"])
    assert "| variant | jazz | pop | answers |" in table
    assert "| `v` | 0.25 (country) | 0.50 (" in table and table.rstrip().endswith("| 6 |")
    assert tables.external_by_genre(rows.iloc[:0], results) == ""
    # with confidences: the mean over all answers and over the wrong ones
    sure = tables.external_by_genre(rows.assign(confidence=[0.9, 0.5, 0.7, 0.9, 0.9, 0.3]), results, ["v"])
    assert "| mean confidence (all / wrong) | answers |" in sure and "| 0.70 / 0.75 | 6 |" in sure


def test_study_scores_fold_models_on_an_external_folder(tiny_study, tmp_path):
    study, work = tiny_study
    external = make_tone_dataset(tmp_path / "external", labels=("low", "high", "unknown"), per_label=2, seed=9)
    for path in sorted(external.glob("*/*.wav")):  # two excerpts of one song per genre
        path.rename(path.with_name(f"{path.parent.name}-song-{int(path.stem[-1]) + 1}of2-at0s.wav"))
    loaded = compare.load_external(external, ["low", "mid", "high"], FeatureStore.open(work / "features").features)
    assert len(loaded.paths) == 4 and sorted(set(loaded.songs)) == ["high/high-song", "low/low-song"]
    assert sorted(loaded.labels.tolist()) == [0, 0, 2, 2]  # "unknown" is not a genre of the store: skipped
    with_external = compare.Study(study.variants, study.seeds, study.overrides, study.params_path, str(external))
    results = compare.run_study(with_external, work / "features", work / "index.csv", tmp_path / "s.csv",
                                state_root=tmp_path / "state", variants=["svm", "se"], quick=True)
    cnn, svm = results[results.variant == "se"], results[results.variant == "svm"]
    assert cnn["external_top1"].between(0, 1).all() and cnn["external_top1"].notna().all()
    # the SVM of every fold is scored on the same files: it gets the "low" tones (200 Hz) right and calls the
    # external "high" ones (800 Hz, this dataset's second band) "mid", as it learnt: exactly half
    assert (svm["external_top1"] == 0.5).all() and (svm["external_song_top1"] == 0.5).all()
    assert pd.read_csv(tmp_path / "s.csv")["external_song_top1"].notna().sum() == 6
    # each fold model's answer on each external file, beside the CSV; they give the rows' external top-1
    files = compare.read_clip_predictions(compare.external_predictions_path(tmp_path / "s.csv"))
    assert len(files) == 2 * 3 * 4  # 2 variants x 3 folds x 4 files
    assert sorted(set(files["clip_id"])) == ["high/high-song-1of2-at0s.wav", "high/high-song-2of2-at0s.wav",
                                             "low/low-song-1of2-at0s.wav", "low/low-song-2of2-at0s.wav"]
    hits = files.assign(hit=files.actual == files.predicted).groupby(["variant", "fold"])["hit"].mean()
    assert hits.to_numpy() == pytest.approx(results.set_index(["variant", "fold"]).loc[hits.index,
                                                                                       "external_top1"].to_numpy())
    by_genre = tables.external_by_genre(files, results, ["svm", "se"])
    assert "| `svm` | 0.00 (mid) | 1.00 (low) |  | 12 |" in by_genre  # the SVM keeps no confidence
    assert files.loc[files.variant == "se", "confidence"].between(1 / 3, 1).all()
    # every answer's distribution too: a CNN file's is the mean of its segments', the SVM's one row per file
    probs = compare.read_probabilities(compare.probabilities_path(tmp_path / "s.csv"), ["low", "mid", "high"])
    outside = probs[probs["set"] == "external"]
    per_file = outside.groupby(["variant", "fold", "clip_id"])[["low", "mid", "high"]].mean()
    assert len(per_file) == 2 * 3 * 4 and outside[outside.variant == "svm"].groupby(["fold", "clip_id"]).size().eq(1).all()
    cnn_files = files[files.variant == "se"].set_index(["variant", "fold", "clip_id"])
    assert per_file.loc[cnn_files.index].max(axis=1).to_numpy() == pytest.approx(cnn_files["confidence"].to_numpy())
    table = tables.summary_markdown(tables.summarize(results, ["svm", "se"], "svm"), "svm")
    assert "external top-1 (songs)" in table
    with pytest.raises(compare.DatasetError, match="not found"):
        compare.load_external(tmp_path / "nowhere", ["low"], {})


def test_study_runs_the_robustness_report_on_each_fold_models_test_clips(tiny_study, tmp_path, monkeypatch):
    import genre_se.robustness as robustness

    study, work = tiny_study
    seen = []
    real = robustness.robustness_report

    def recording(classifier, paths, *args, **kwargs):
        seen.append(list(paths))
        return real(classifier, seen[-1], *args, **kwargs)

    monkeypatch.setattr(robustness, "robustness_report", recording)
    robust = compare.Study(study.variants, study.seeds, study.overrides, study.params_path, None, True)
    results = compare.run_study(robust, work / "features", work / "index.csv", tmp_path / "r.csv",
                                state_root=tmp_path / "state", variants=["svm", "se"], quick=True)
    cnn = results[results.variant == "se"]
    assert cnn["robustness_agreement"].between(0, 1).all() and cnn["robustness_tv"].between(0, 1).all()
    assert results[results.variant == "svm"]["robustness_agreement"].isna().all()
    # each fold model saw exactly its own test clips: together every clip once
    index = pd.read_csv(work / "index.csv")
    assert len(seen) == 3 and sorted(p for paths in seen for p in paths) == sorted(index["path"])
    assert sum(len(paths) for paths in seen) == int(cnn["n_test_clips"].sum())
    assert "robustness agreement" in tables.summary_markdown(tables.summarize(results, ["svm", "se"], "svm"), "svm")
    # per transform, beside the results: one row per fold model and transform; the row's mean is their mean
    per_transform = compare.read_robustness(compare.robustness_path(tmp_path / "r.csv"))
    assert set(per_transform["variant"]) == {"se"} and len(per_transform) == 3 * len(robustness.TRANSFORMS)
    assert set(per_transform["transform"]) == set(robustness.TRANSFORMS)
    means = per_transform.groupby("fold")["top1_agree"].mean()
    np.testing.assert_allclose(means.to_numpy(), cnn.set_index("fold")["robustness_agreement"].loc[means.index])
    table = tables.robustness_by_transform(per_transform, results, ["svm", "se"])
    row = next(line for line in table.splitlines() if line.startswith("| `se` |"))
    assert row.endswith("| 3 |") and "`svm`" not in table  # three fold models; the SVM has no report
    assert tables.robustness_by_transform(per_transform, results.iloc[:0]) == ""  # no current rows: nothing
    with pytest.raises(ConfigError, match="robustness"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("variants: {a: {}}\nrobustness: sometimes\n")
        compare.load_study(bad)


def test_a_changed_variant_is_recomputed(tiny_study, tmp_path, monkeypatch):
    study, work = tiny_study
    out = tmp_path / "study.csv"
    calls = []

    def fake_fold(store, params, folds_of_rows, fold, k, seed, state_dir, log=None, bundle_dir=None, external=None,
                  robustness_paths=None, init_offset=0):
        calls.append(params.model.reduction_ratios)
        return {"clip_accuracy": 0.5, "clip_macro_f1": 0.5, "params": 1, "train_seconds": 0.1, "epochs_run": 1,
                "best_epoch": 1, "n_test_clips": 6}

    monkeypatch.setattr(compare, "run_cnn_fold", fake_fold)
    def run(s):
        return compare.run_study(s, work / "features", work / "index.csv", out,
                                 best_params_path=work / "best_params.json", variants=["se_tuned"], quick=True)

    run(study)
    assert calls == [4, 4, 4]  # the r of best_params.json
    run(study)
    assert len(calls) == 3
    changed = compare.Study({**study.variants, "se_tuned": {"model.reduction_ratios": 3}}, study.seeds,
                            study.overrides, study.params_path)
    assert len(run(changed)) == 3 and calls[3:] == [3, 3, 3]


def test_rows_of_seeds_left_alone_with_another_configuration_are_named(tiny_study, tmp_path, monkeypatch, capsys):
    """--seeds keeps the other seeds' rows even where the variant changed since; the run must say so, or every
    summary pools two configurations under one variant name (a resumed, unchanged run says nothing)."""
    study, work = tiny_study

    def fake_fold(*args, **kwargs):
        return {"clip_accuracy": 0.5, "clip_macro_f1": 0.5, "params": 1, "train_seconds": 0.1, "epochs_run": 1,
                "best_epoch": 1, "n_test_clips": 6}

    monkeypatch.setattr(compare, "run_cnn_fold", fake_fold)
    out = tmp_path / "study.csv"

    def run(s, seeds):
        return compare.run_study(s, work / "features", work / "index.csv", out, variants=["se"], seeds=seeds)

    run(study, [42, 7])
    run(study, [7])
    assert "warning" not in capsys.readouterr().err  # nothing changed: nothing to say
    changed = compare.Study({**study.variants, "se": {"model.reduction_ratios": 3}}, study.seeds, study.overrides,
                            study.params_path)
    results = run(changed, [7])  # seed 7 recomputed with r = 3, seed 42's rows (r = 2) kept
    err = capsys.readouterr().err
    assert "warning: se seed 42: 3 row(s)" in err and "--seeds 42" in err and "seed 7" not in err
    assert results.groupby("seed")["config_key"].nunique().to_dict() == {7: 1, 42: 1}
    run(changed, [42])  # recomputed: nothing left to warn about
    run(changed, [7])
    assert "warning" not in capsys.readouterr().err


def test_each_seed_deals_its_own_stratified_folds(tiny_study):
    study, work = tiny_study
    store = FeatureStore.open(work / "features")
    index = pd.read_csv(work / "index.csv")
    params = load_params(study.params_path, study.overrides)
    same = compare.row_folds(store, index, params, params.seed, 3)
    np.testing.assert_array_equal(same, store.table["fold"].to_numpy())  # the prepare stage's folds
    other = compare.row_folds(store, index, params, params.seed + 1, 3)
    assert not np.array_equal(other, same)
    per_clip = pd.DataFrame({"clip": store.table["clip_id"], "label": store.table["label"], "fold": other})
    assert (per_clip.groupby("clip")["fold"].nunique() == 1).all()  # a clip never straddles folds
    clips = per_clip.drop_duplicates("clip")
    assert (clips.groupby(["label", "fold"]).size() == 2).all()  # 6 clips per label over 3 folds
    from genre_se.evaluate import cv_fold_rows

    train, valid, test = cv_fold_rows(other, 1, 3)
    assert set(other[test]) == {1} and set(other[valid]) == {2} and set(other[train]) == {0}
    train, valid, test = cv_fold_rows(other, 1, 3, fit_all=True)
    assert set(other[test]) == {1} and len(valid) == 0 and set(other[train]) == {0, 2}


@pytest.mark.parametrize("fit_all", [False, True])
def test_cv_folds_never_train_on_the_test_fold_or_on_excluded_rows(fit_all):
    """Rows of fold -1 (unreadable, or left out by a fault filter) take part in no fold; every other row is
    tested exactly once over the k folds and never trained on in the fold that tests it."""
    from genre_se.evaluate import cv_fold_rows

    folds_of_rows = np.array([0, 1, 2, -1, 0, 1, 2, -1, 2, 0])
    tested = []
    for fold in range(3):
        train, valid, test = cv_fold_rows(folds_of_rows, fold, 3, fit_all=fit_all)
        assert set(folds_of_rows[test]) == {fold}
        used = np.concatenate([train, valid, test])
        assert len(np.unique(used)) == len(used) == 8 and -1 not in folds_of_rows[used]  # disjoint, all dealt rows
        assert fold not in set(folds_of_rows[train]) and fold not in set(folds_of_rows[valid])
        tested += test.tolist()
    assert sorted(tested) == np.flatnonzero(folds_of_rows >= 0).tolist()

def test_pipeline_cv_honours_fit_all_like_the_study(tiny_study, monkeypatch):
    """evaluate.cross_validate (the evaluate stage's k-fold) trains each fold the way the study does."""
    import genre_se.train as train_module
    from genre_se.evaluate import cross_validate

    study, work = tiny_study
    store = FeatureStore.open(work / "features")
    folds = store.table["fold"].to_numpy()
    seen = []
    real = train_module.train_model

    def recording(store, model_cfg, train_cfg, *, train_rows, valid_rows, **kwargs):
        seen.append((set(folds[train_rows]), len(valid_rows)))
        return real(store, model_cfg, train_cfg, train_rows=train_rows, valid_rows=valid_rows, **kwargs)

    monkeypatch.setattr(train_module, "train_model", recording)
    params = load_params(study.params_path, {**study.overrides, "train.fit_all": True, "train.epochs": 1})
    result = cross_validate(store, params, params.model, work / "cv-state")
    assert result["folds"] == 3
    assert seen == [({1, 2}, 0), ({0, 2}, 0), ({0, 1}, 0)]  # every fold but the test one; nothing validated


def test_pipeline_cv_refuses_a_store_dealt_into_other_folds(tiny_study, monkeypatch):
    """A store prepared with 3 folds and evaluate.folds: 4 (or 2 with fit_all) would test some clips never, or
    no clip in fold 3: named before any training, with what to run."""
    import genre_se.train as train_module
    from genre_se.errors import DatasetError
    from genre_se.evaluate import cross_validate

    study, work = tiny_study
    store = FeatureStore.open(work / "features")
    monkeypatch.setattr(train_module, "train_model", lambda *a, **k: pytest.fail("trained on a mismatched store"))
    for k in (4, 2):
        params = load_params(study.params_path, {**study.overrides, "train.fit_all": True, "evaluate.folds": k})
        with pytest.raises(DatasetError, match=f"dealt into 3 folds but evaluate.folds is {k}.*prepare"):
            cross_validate(store, params, params.model, work / "cv-state")


def test_study_file_and_tuned_ratio_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: {a: 3}\n")
    with pytest.raises(ConfigError, match="variants.a"):
        compare.load_study(bad)
    bad.write_text("variants: {a: baseline}\nseeds: []\n")
    with pytest.raises(ConfigError, match="seeds"):
        compare.load_study(bad)
    bad.write_text("variants: {a: baseline}\nrepeats: 3\n")
    with pytest.raises(ConfigError, match="repeats: unknown key"):
        compare.load_study(bad)
    with pytest.raises(ConfigError, match="nope.json"):
        compare.tuned_ratios(tmp_path / "nope.json")


def test_cli_quick_run_writes_csv_and_summary(tiny_study, tmp_path, capsys):
    study_file = tmp_path / "one.yaml"
    _, work = tiny_study
    params_path = compare.load_study(next(work.parent.glob("study.yaml"))).params_path
    external = make_tone_dataset(tmp_path / "external", labels=("low", "high"), per_label=1, seed=3)
    study_file.write_text(yaml.safe_dump({"params": params_path, "seeds": [1], "variants": {"svm": "baseline"},
                                          "external": str(external)}))
    out, summary = tmp_path / "r.csv", tmp_path / "r.md"
    code = compare.main(["run", "--study", str(study_file), "--work", str(work), "--out", str(out),
                         "--summary", str(summary), "-S", "evaluate.folds=3", "-q"])
    assert code == 0 and len(pd.read_csv(out)) == 3
    assert "`svm`" in summary.read_text() and "`svm`" in capsys.readouterr().out
    summary.unlink()
    assert compare.main(["summary", "--study", str(study_file), "--out", str(out), "--summary", str(summary)]) == 0
    assert "`svm`" in summary.read_text()  # re-rendered from the CSV alone, nothing trained
    assert "| variant | high | low | answers |" in summary.read_text()  # + the external files per genre
    assert compare.main(["run", "--study", str(study_file), "--work", str(work), "--out", str(out),
                         "-S", "evaluate.folds=4", "-q"]) == 1  # the store was built with 3 folds
    assert "evaluate.folds" in capsys.readouterr().err


def test_seeds_option_runs_only_the_named_repeat_seeds(tiny_study, tmp_path, capsys):
    _, work = tiny_study
    params_path = compare.load_study(next(work.parent.glob("study.yaml"))).params_path
    study_file = tmp_path / "two.yaml"
    study_file.write_text(yaml.safe_dump({"params": params_path, "seeds": [1, 2], "variants": {"svm": "baseline"}}))
    out, summary = tmp_path / "r.csv", tmp_path / "r.md"
    args = ["run", "--study", str(study_file), "--work", str(work), "--out", str(out), "--summary", str(summary), "-q"]
    assert compare.main(args + ["--seeds", "2"]) == 0
    assert set(pd.read_csv(out)["seed"]) == {2} and len(pd.read_csv(out)) == 3
    assert compare.main(args) == 0  # later, the rest: seed 2's rows stay, seed 1's are added
    assert sorted(pd.read_csv(out).groupby("seed").size().items()) == [(1, 3), (2, 3)]
    assert compare.main(args + ["--seeds", "3"]) == 1 and "--seeds: 3 is not in the study" in capsys.readouterr().err
    assert compare.main(args + ["--seeds", "x"]) == 1 and "comma-separated integers" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Training switches


def test_new_switches_are_validated_and_off_by_default():
    cfg = TrainConfig()
    assert cfg.label_smoothing == 0 and cfg.gain_db == 0 and cfg.lr_schedule == "constant"
    shipped = load_params(compare.Path(__file__).resolve().parents[1] / "params.yaml").train
    assert shipped.label_smoothing == 0 and shipped.gain_db == 0 and shipped.lr_schedule == "constant"
    for key, value in (("label_smoothing", 1.0), ("gain_db", -1.0), ("lr_schedule", "step"),
                       ("lr_decay_patience", 0)):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            load_params(compare.Path(__file__).resolve().parents[1] / "params.yaml", {f"train.{key}": value})


def test_cosine_and_plateau_schedules():
    from genre_se.train import plateau_decay, scheduled_learning_rate

    cos = TrainConfig(learning_rate=0.01, epochs=10, lr_schedule="cosine")
    rates = [scheduled_learning_rate(cos, e, 123.0) for e in range(10)]
    assert rates[0] == pytest.approx(0.01) and rates[5] == pytest.approx(0.005)
    assert all(a > b for a, b in itertools.pairwise(rates)) and rates[-1] > 0
    const = TrainConfig(learning_rate=0.01)
    assert scheduled_learning_rate(const, 7, 123.0) == 0.01 and plateau_decay(const, 0.01, 3) == 0.01
    plateau = TrainConfig(learning_rate=0.01, lr_schedule="plateau", lr_decay_patience=2)
    lr = 0.01
    seen = []
    for wait in (1, 2, 3, 4, 0, 1):
        lr = plateau_decay(plateau, lr, wait)
        seen.append(lr)
    assert seen == pytest.approx([0.01, 0.005, 0.005, 0.0025, 0.0025, 0.0025])
    assert scheduled_learning_rate(plateau, 9, 0.0025) == 0.0025


def _store(tmp_path, data: np.ndarray, labels_per_row) -> FeatureStore:
    table = pd.DataFrame({"segment": range(len(data)), "clip_id": [f"c{i}" for i in range(len(data))],
                          "label_index": labels_per_row, "split": "train"})
    return FeatureStore(tmp_path, data, table, ["a", "b"], FeatureConfig())


def test_gain_shifts_each_segment_by_one_amount_within_range_and_respects_the_floor(tmp_path):
    from genre_se.train import make_dataset

    rng = np.random.default_rng(0)
    data = rng.uniform(-60, -10, size=(64, 4, 6, 1)).astype(np.float16)
    data[:, 0, 0, 0] = -100.0  # silence: stays at the floor whatever the gain
    store = _store(tmp_path, data, np.arange(64) % 2)
    rows = np.arange(64)
    (x, _), = make_dataset(store, rows, 64, shuffle=False, seed=0, n_classes=2, gain_db=6.0, floor_db=-100.0)
    diff = x.numpy()[:, 1:, :, 0] - data[:, 1:, :, 0].astype(np.float32)
    per_segment = diff.reshape(64, -1)
    assert np.allclose(per_segment, per_segment[:, :1], atol=1e-3)  # one gain per segment
    gains = per_segment[:, 0]
    assert np.all(np.abs(gains) <= 6.0 + 1e-3) and gains.std() > 1.0  # spread over the range
    assert gains.min() < -3.0 and gains.max() > 3.0  # cuts as well as boosts: uniform in [-6, 6] dB
    assert np.all(x.numpy()[:, 0, 0, 0] >= -100.0)
    (plain, _), = make_dataset(store, rows, 64, shuffle=False, seed=0, n_classes=2)
    np.testing.assert_array_equal(plain.numpy(), data.astype(np.float32))  # off: untouched


def test_label_smoothing_and_cosine_reach_the_training_loop(tmp_path):
    import keras

    from genre_se.config import ModelConfig
    from genre_se.train import train_model

    rng = np.random.default_rng(1)
    data = rng.normal(size=(24, 8, 8, 1)).astype(np.float16)
    labels = np.arange(24) % 2
    data[labels == 1] += 2
    store = _store(tmp_path, data, labels)

    class Live:
        step = 0

        def __init__(self):
            self.rates = []

        def log_metric(self, name, value):
            if name == "train/learning_rate":
                self.rates.append(value)

        def next_step(self):
            pass

    live = Live()
    cfg = TrainConfig(epochs=3, batch_size=8, learning_rate=0.01, label_smoothing=0.2, lr_schedule="cosine")
    result = train_model(store, ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2), cfg,
                         train_rows=np.arange(16), valid_rows=np.arange(16, 24), seed=0,
                         state_dir=tmp_path / "state", live=live)
    assert live.rates == pytest.approx([0.01, 0.0075, 0.0025])
    y = np.eye(2, dtype=np.float32)[[0, 1]]
    p = np.array([[0.7, 0.3], [0.4, 0.6]], dtype=np.float32)
    smoothed = y * 0.8 + 0.1
    expected = float(np.mean(-(smoothed * np.log(p)).sum(axis=1)))
    assert float(keras.ops.convert_to_numpy(result.model.loss(y, p))) == pytest.approx(expected, rel=1e-4)


def test_fit_all_trains_the_final_model_on_every_clip(tiny_study, tmp_path):
    from genre_se.bundle import load_bundle
    from genre_se.train import run_train

    study, work = tiny_study
    params = load_params(study.params_path, {"train.epochs": 1, "train.fit_all": True})
    run_train(params, work / "features", tmp_path / "bundle", tmp_path / "state", tmp_path / "live",
              best_params_path=None)
    assert load_bundle(tmp_path / "bundle").extra["train_clips"] == 18  # not only the train split's clips
    held_out = load_params(study.params_path, {"train.epochs": 1})
    run_train(held_out, work / "features", tmp_path / "b2", tmp_path / "s2", tmp_path / "l2", best_params_path=None)
    assert load_bundle(tmp_path / "b2").extra["train_clips"] < 18


def test_kept_fold_models_give_excitations_of_every_clip_held_out(tiny_study, tmp_path):
    from study import excitations

    study, work = tiny_study
    compare.run_study(study, work / "features", work / "index.csv", tmp_path / "s.csv", state_root=tmp_path / "st",
                      variants=["se"], quick=True, keep_models=["se"])
    bundles = tmp_path / "st" / "bundles" / "se" / "seed42"
    assert sorted(p.name for p in bundles.iterdir()) == ["fold0", "fold1", "fold2"]
    analyses = excitations.fold_excitations(bundles, work / "features")
    assert len(analyses) == 3
    held_out = sorted(c for a in analyses for c in a.trained.clip_ids)
    assert held_out == sorted(pd.read_csv(work / "index.csv")["clip_id"])  # every clip once, by its own fold model
    assert all(len(a.untrained) == 3 and a.untrained[0].clip_ids == a.trained.clip_ids for a in analyses)
    summary = excitations.fold_summary(analyses)
    per_fold = [a.trained.summary().set_index("block").loc["block2_se", "eta_squared"] for a in analyses]
    row = summary.set_index("block").loc["block2_se"]
    # a dead SE block (every gate constant: possible on tiny data, see study/README.md) has no eta squared:
    # the summary averages the folds that have one
    if np.isfinite(per_fold).any():
        assert row["eta_squared_mean"] == pytest.approx(np.nanmean(per_fold))
    else:
        assert np.isnan(row["eta_squared_mean"])
    assert row["folds"] == 3 and row["clips"] == 18
    # what training added: the trained statistic minus the mean of the untrained copies', fold by fold
    folds = excitations.fold_table(analyses)
    fold0 = folds[(folds["fold"] == 0) & (folds["block"] == "block2_se")].iloc[0]
    copies = [c.summary().set_index("block").loc["block2_se", "genre_spread"] for c in analyses[0].untrained]
    assert fold0["genre_spread_untrained"] == pytest.approx(np.mean(copies))
    assert fold0["genre_spread_gain"] == pytest.approx(fold0["genre_spread"] - np.mean(copies))
    gains = folds[folds["block"] == "block2_se"]["eta_squared_excess_gain"]
    assert row["eta_squared_excess_gain_mean"] == pytest.approx(gains.mean(), nan_ok=True)
    assert row["eta_squared_excess_gain_folds_above"] == (gains > 0).sum()
    block2 = folds[folds["block"] == "block2_se"]
    hits = (block2["nearest_genre"].fillna(0) * block2["nearest_genre_clips"]).sum()
    assert row["nearest_genre_clips"] == block2["nearest_genre_clips"].sum()  # clips pooled over the folds
    if row["nearest_genre_clips"]:
        assert row["nearest_genre_pooled"] == pytest.approx(hits / row["nearest_genre_clips"])
    per_clip = excitations.clip_hits(analyses)
    clips2 = per_clip[per_clip["block"] == "block2_se"]
    assert len(clips2) == row["nearest_genre_clips"] and clips2["untrained"].between(0, 1).all()
    assert clips2["trained"].mean() == pytest.approx(row["nearest_genre_pooled"], nan_ok=True)
    assert row["nearest_genre_better"] == (clips2["trained"] > clips2["untrained"]).sum()
    assert folds["model"].iloc[0] == "seed42/fold0"
    twice = excitations.fold_excitations([bundles, bundles], work / "features", controls=0)  # e.g. two seeds
    assert [a.name for a in twice] == [f"seed42/fold{i}" for i in (0, 1, 2)] * 2
    assert excitations.fold_summary(twice).iloc[0]["folds"] == 6
    out = tmp_path / "exc.png"
    assert excitations.main(["--bundles", str(bundles), "--features", str(work / "features"), "--out", str(out),
                             "--controls", "1"]) == 0
    assert out.stat().st_size > 5000 and len(pd.read_csv(tmp_path / "exc.csv")) == 2  # one row per SE block
    assert len(pd.read_csv(tmp_path / "exc_folds.csv")) == 2 * 3  # and one per block and fold
    markdown = excitations.markdown_table(summary).splitlines()
    assert len(markdown) == 2 + 2 and markdown[3].startswith("| block2_se | ")
    assert f"({int(row['nearest_genre_clips'])})" in markdown[3]
    assert excitations.main(["--bundles", str(bundles), "--features", str(work / "features"), "--out", str(out),
                             "--controls", "0", "--markdown", str(tmp_path / "exc.md")]) == 2  # no control, no table
    assert excitations.main(["--bundles", str(bundles), "--features", str(work / "features"), "--out", str(out),
                             "--controls", "-1"]) == 2


def test_nearest_genre_test_counts_clips_better_and_worse_than_the_untrained_copies():
    from study import excitations

    hits = pd.DataFrame({"fold": 0, "block": ["b1"] * 12 + ["b2"] * 4, "clip_id": [f"c{i}" for i in range(16)],
                         "trained": [True] * 11 + [False] + [True, False, True, False],
                         "untrained": [0.0] * 10 + [1.0, 1.0] + [1.0, 0.0, 1.0, 0.0], "copies": 1})
    table = excitations.nearest_genre_test(hits).set_index("block")
    assert table.loc["b1", "nearest_genre_better"] == 10 and table.loc["b1", "nearest_genre_worse"] == 1
    assert table.loc["b1", "nearest_genre_p"] == pytest.approx(2 * (1 + 11) / 2**11)  # one copy: the sign test
    assert table.loc["b2", "nearest_genre_better"] == 0 and np.isnan(table.loc["b2", "nearest_genre_p"])


def test_fit_all_in_cv_trains_on_every_fold_but_the_test_one(tiny_study, tmp_path, monkeypatch):
    import genre_se.evaluate
    import genre_se.train

    study, work = tiny_study
    store = FeatureStore.open(work / "features")
    folds = store.table["fold"].to_numpy()
    seen = {}

    class Model:
        def count_params(self):
            return 7

        def __call__(self, x, training=False):  # a uniform softmax: run_cnn_fold keeps every distribution
            return np.full((len(x), len(store.labels)), 1 / len(store.labels), "float32")

    def fake_train(store, model_cfg, train_cfg, *, train_rows, valid_rows, seed, state_dir, log=None):
        seen.update(train=train_rows, valid=valid_rows)
        return genre_se.train.TrainResult(Model(), 0.0, 1.0, 1, 0.0, 1, 0)

    monkeypatch.setattr(genre_se.train, "train_model", fake_train)
    monkeypatch.setattr(genre_se.evaluate, "evaluate_rows",
                        lambda model, store, rows: ({"clip": {"accuracy": 1.0, "macro_f1": 1.0}, "n_clips": 6},
                                                    pd.DataFrame({"clip_id": [], "actual": [], "predicted": [],
                                                                  "confidence": []})))
    for fit_all, train_folds, valid_folds in ((False, {2}, {1}), (True, {1, 2}, set())):
        params = load_params(study.params_path, {"train.fit_all": fit_all})
        row = compare.run_cnn_fold(store, params, folds, 0, 3, 42, tmp_path / "s")
        assert set(folds[seen["train"]]) == train_folds and set(folds[seen["valid"]]) == valid_folds
        assert len(row["probs"]) == int(np.sum(folds == 0))  # one distribution per test segment


def test_step_timing_compares_variants_under_equal_conditions(tiny_study, capsys):
    from study import timing

    study, _ = tiny_study
    results = timing.step_times({"no_se": {"model.se": False}, "se": {}}, study.params_path, rounds=2)
    assert set(results) == {"no_se", "se"} and results["se"]["params"] > results["no_se"]["params"]
    assert all(r["seconds_per_step"] > 0 for r in results.values())
    assert timing.main(["--params", study.params_path, "--rounds", "1", "--variants", "a=model.se=false", "b="]) == 0
    assert "| `b` |" in capsys.readouterr().out


def test_prepare_stores_the_waveform_copies_any_variant_asks_for(tmp_path):
    tones = make_tone_dataset(tmp_path / "tones", per_label=3)
    params = write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "data.root": str(tones), "evaluate.folds": 3})
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "params": str(params), "set": {"train.epochs": 1}, "seeds": [42],
        "variants": {"plain": {"model.reduction_ratios": 2},
                     "copies": {"model.reduction_ratios": 2, "train.waveform_augment": ["tempo"]}},
    }, sort_keys=False))
    study = compare.load_study(study_file)
    compare.prepare_work(study, tmp_path / "work")
    store = FeatureStore.open(tmp_path / "work" / "features")
    assert set(store.augmented["augment"]) == {"tempo"}
    assert set(store.augmented["clip_id"]) == set(store.table["clip_id"])
    results = compare.run_study(study, tmp_path / "work" / "features", tmp_path / "work" / "index.csv",
                                tmp_path / "out.csv", state_root=tmp_path / "state")
    assert set(results["variant"]) == {"plain", "copies"} and len(results) == 6


@pytest.mark.parametrize("path", sorted(p for p in (compare.Path(__file__).resolve().parents[1] / "study").glob("*.yaml")
                                        if p.name != "what_helped.yaml"),  # the contrasts, tested below
                         ids=lambda p: p.name)
def test_every_study_file_of_the_repository_is_valid(path, monkeypatch):
    """The study files a reader is told to run load, and every CNN variant is a valid params.yaml."""
    monkeypatch.chdir(path.parents[1])
    study = compare.load_study(path)
    for name in study.cnn_variants():
        if study.variants[name].get("model.reduction_ratios") == compare.TUNED:
            continue  # needs the tune step's best_params.json
        compare.variant_params(study, name)


def test_a_variant_runs_only_on_a_store_built_with_its_features(tiny_study, tmp_path, monkeypatch):
    study, work = tiny_study
    built = FeatureStore.open(work / "features").features
    wider = compare.Study({"wide": {"features.fmax": built.sample_rate / 4}}, study.seeds, study.overrides,
                          study.params_path)
    monkeypatch.setattr(compare, "run_cnn_fold", lambda *a, **k: pytest.fail("trained on the wrong store"))
    with pytest.raises(ConfigError, match=r"variants.wide: features.fmax is 2000.0 but the feature store .* "
                                          r"was built with None; .*-S features.fmax=2000.0"):
        compare.run_study(wider, work / "features", work / "index.csv", tmp_path / "s.csv", quick=True)
    # the configuration key names the store's features only where they differ from the defaults
    import dataclasses

    assert compare._feature_key(FeatureConfig()) == ()
    assert compare._feature_key(dataclasses.replace(FeatureConfig(), workers=1)) == ()
    assert compare._feature_key(dataclasses.replace(FeatureConfig(), fmax=8000.0)) == (("features", {"fmax": 8000.0}),)


def test_what_helped_pairs_each_change_with_its_reference_on_the_same_folds(tmp_path):
    from study import what_helped

    def runs(variant, accuracies, seed=1):
        return pd.DataFrame({"variant": variant, "seed": seed, "fold": range(len(accuracies)),
                             "clip_accuracy": accuracies, "clip_macro_f1": 0.5, "params": 1, "train_seconds": 1.0,
                             "epochs_run": 1, "best_epoch": 1, "n_test_clips": 14, "config_key": "k"})

    (tmp_path / "results").mkdir()
    pd.concat([runs("base", [0.5, 0.6, 0.7, 0.8]), runs("new", [0.6, 0.6, 0.9, 0.8, 0.9])]).to_csv(
        tmp_path / "results" / "a.csv", index=False)
    runs("base", [0.4, 0.6, 0.7, 0.8]).to_csv(tmp_path / "results" / "b.csv", index=False)  # listed last: wins
    spec = tmp_path / "what.yaml"
    spec.write_text("results: [results/a.csv, results/b.csv, results/missing.csv]\n"
                    "contrasts:\n  - {change: more, variant: new, reference: base, verdict: kept}\n")
    csvs, contrasts = what_helped.load_contrasts(spec)
    pooled = what_helped.pooled_results(csvs)
    assert len(pooled) == 9  # the shared base runs once each
    c = what_helped.contrast(pooled, "new", "base")
    diffs = np.array([0.2, 0.0, 0.2, 0.0])  # fold 4 of "new" has no partner
    assert c["folds"] == 4 and c["delta"] == pytest.approx(diffs.mean()) and (c["won"], c["tied"], c["lost"]) == (2, 2, 0)
    assert c["detectable"] == pytest.approx(tables.detectable_difference(diffs.std(ddof=1), 4))
    out = tmp_path / "what.md"
    assert what_helped.main(["--contrasts", str(spec), "--out", str(out)]) == 0
    assert "| more | `new` vs `base` | 0.725 vs 0.625 | +0.100 | 2/2/0 | 4 (1) |" in out.read_text()
    # with each side's answers per clip beside its results CSV: the clip-level sign test, on the answers of the
    # rows' configuration only (a stale key's answers and a clip only one side answered do not count)
    def answers(variant, right, key="k"):
        return pd.DataFrame({"variant": variant, "seed": 1, "fold": 0, "clip_id": [f"c{i}" for i in range(len(right))],
                             "actual": "a", "predicted": ["a" if r else "b" for r in right], "config_key": key})
    pd.concat([answers("new", [1, 1, 1, 1, 0, 1]), answers("base", [1, 1, 1, 1, 1], key="old")]).to_csv(
        tmp_path / "results" / "a_clips.csv", index=False)
    answers("base", [1, 0, 0, 0, 1]).to_csv(tmp_path / "results" / "b_clips.csv", index=False)
    clips = what_helped.pooled_clips(csvs, pooled)
    assert set(clips["config_key"]) == {"k"} and len(clips) == 11
    assert what_helped.main(["--contrasts", str(spec), "--out", str(out)]) == 0
    p_t, p_corrected = what_helped.fold_t_tests(pd.Series(diffs), what_helped.holdout_ratio(pooled, "base"))
    assert (p_t, p_corrected) == (pytest.approx(c["p_t"]), pytest.approx(c["p_corrected"]))
    assert f"| 4 (1) | {c['detectable']:.3f} / {c['detectable_corrected']:.3f} | {p_t:.2g} / {p_corrected:.2g} " \
        "| 3/1 of 5 (p 0.62) |  |  | kept |" \
        in out.read_text()  # c1-c3 better, c4 worse; neither measured robustness nor answered real songs
    spec.write_text("results: [results/a.csv]\ncontrasts:\n  - {change: x, variant: nope, reference: base, verdict: y}\n")
    assert what_helped.main(["--contrasts", str(spec), "--out", str(out)]) == 1
    spec.write_text("results: [results/a.csv]\ncontrasts:\n  - {change: x, variant: new}\n")
    with pytest.raises(ConfigError, match="exactly the keys"):
        what_helped.load_contrasts(spec)


def test_what_helped_counts_each_clip_once_and_corrects_the_t_test_for_overlapping_folds():
    from scipy.stats import ttest_1samp

    from study import what_helped

    # two seeds: c0 right twice by "new", once by "base" (better); c1 right once each (a tie, not counted twice)
    clips = pd.DataFrame({"variant": ["new"] * 4 + ["base"] * 4, "seed": [1, 1, 2, 2] * 2,
                          "clip_id": ["c0", "c1"] * 4, "actual": "a",
                          "predicted": ["a", "a", "a", "b", "a", "b", "b", "a"]})
    assert tables.clip_sign_test(clips, "new", "base") == {"clips_paired": 2, "clips_better": 1, "clips_worse": 0,
                                                          "clips_p": 1.0}
    assert tables.clip_sign_test(clips, "new", "missing") == {}
    # the plain t-test is scipy's; the corrected one (Nadeau & Bengio) is never more confident, and equal at 0 overlap
    diffs = pd.Series([0.1, 0.0, 0.2, 0.05, 0.1])
    plain, corrected = what_helped.fold_t_tests(diffs, 0.25)
    assert plain == pytest.approx(ttest_1samp(diffs, 0).pvalue) and corrected > plain
    assert what_helped.fold_t_tests(diffs, 0.0)[1] == pytest.approx(plain)
    assert np.isnan(what_helped.fold_t_tests(pd.Series([0.1, 0.1]), 0.25)).all()  # no spread: no test
    # n_test / n_train from the rows: 5 folds of 14-15 clips of 71
    rows = pd.DataFrame({"variant": "v", "seed": 1, "fold": range(5), "n_test_clips": [15, 14, 14, 14, 14]})
    assert what_helped.holdout_ratio(rows, "v") == pytest.approx(14.2 / (71 - 14.2))


def test_what_helped_pairs_robustness_and_real_song_answers_by_fold_model(tmp_path):
    """The robustness and real-clips columns compare the same fold models as the accuracy columns: a fold only one
    side measured, or a stale configuration's answers, does not count."""
    from study import what_helped

    def runs(variant, robustness, external):
        return pd.DataFrame({"variant": variant, "seed": 1, "fold": range(len(robustness)), "clip_accuracy": 0.5,
                             "clip_macro_f1": 0.5, "params": 1, "train_seconds": 1.0, "epochs_run": 1,
                             "best_epoch": 1, "n_test_clips": 14, "config_key": "k",
                             "robustness_agreement": robustness, "external_top1": external})

    (tmp_path / "results").mkdir()
    pd.concat([runs("new", [0.9, 0.8, 0.7], [0.5, 0.5, 1.0]),
               runs("base", [0.6, 0.6, np.nan], [0.0, 0.5, 0.0])]).to_csv(tmp_path / "results" / "a.csv", index=False)
    spec = tmp_path / "what.yaml"
    spec.write_text("results: [results/a.csv]\n"
                    "contrasts:\n  - {change: more, variant: new, reference: base, verdict: kept}\n")
    csvs, _ = what_helped.load_contrasts(spec)
    pooled = what_helped.pooled_results(csvs)
    # fold 2's robustness only "new" measured: it is left out of both means
    assert what_helped.paired_scores(pooled, "new", "base", "robustness_agreement") == {
        "variant": pytest.approx(0.85), "reference": pytest.approx(0.6), "runs": 2}
    assert what_helped.paired_scores(pooled, "new", "missing", "external_top1") == {}
    out = tmp_path / "what.md"
    assert what_helped.main(["--contrasts", str(spec), "--out", str(out)]) == 0
    assert "| 0.850 vs 0.600 | 0.667 vs 0.167 | kept |" in out.read_text()  # no answers kept: the shares right

    def answers(variant, fold, right, key="k"):
        return pd.DataFrame({"variant": variant, "seed": 1, "fold": fold,
                             "clip_id": [f"s{i}" for i in range(len(right))], "actual": "a",
                             "predicted": ["a" if r else "b" for r in right], "config_key": key})

    pd.concat([answers("new", 0, [1, 1, 0, 1]), answers("base", 0, [0, 1, 0, 0]),
               answers("new", 1, [1, 1, 1, 1]), answers("base", 1, [0, 0, 0, 0], key="old"),  # stale: not paired
               answers("new", 2, [1, 0, 1, 1])]).to_csv(tmp_path / "results" / "a_external.csv", index=False)
    external = what_helped.pooled_external(csvs, pooled)
    assert len(external) == 16  # the stale answers dropped
    assert what_helped.paired_answers(external, "new", "base") == {
        "answers": 4, "variant_right": 3, "reference_right": 1, "only_variant": 2, "only_reference": 0,
        "p": pytest.approx(0.5)}
    assert what_helped.paired_answers(external, "new", "missing") == {}
    assert what_helped.main(["--contrasts", str(spec), "--out", str(out)]) == 0
    assert "| 0.850 vs 0.600 | 3 vs 1 of 4 (2/0, p 0.5) | kept |" in out.read_text()


def test_the_repository_what_helped_names_measured_variants():
    from study import what_helped

    csvs, contrasts = what_helped.load_contrasts(what_helped.HERE / "what_helped.yaml")
    pooled = what_helped.pooled_results(csvs)
    for row in contrasts:
        assert what_helped.contrast(pooled, row["variant"], row["reference"])["folds"] >= 2, row["change"]


def test_probabilities_of_every_answer_are_kept_and_an_init_offset_trains_another_member(tiny_study, tmp_path):
    """<out>_probs.csv holds each answer's whole distribution: a CNN clip's mean over its segment rows is the
    distribution behind its recorded answer and confidence; ``study.init_offset`` re-initialises on the same folds."""
    study, work = tiny_study
    members = compare.Study({"svm": "baseline", "se": {"model.reduction_ratios": 2},
                             "se_b": {"model.reduction_ratios": 2, compare.INIT_OFFSET: 1000}},
                            study.seeds, study.overrides, study.params_path)
    out = tmp_path / "members.csv"
    results = compare.run_study(members, work / "features", work / "index.csv", out, state_root=tmp_path / "state",
                                quick=True)
    labels = list(FeatureStore.open(work / "features").labels)
    probs = compare.read_probabilities(compare.probabilities_path(out), labels)
    assert list(probs.columns) == compare.PROB_ID_COLUMNS + labels and set(probs["set"]) == {"test"}
    assert probs[labels].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)
    clip_probs = probs.groupby(["variant", "fold", "clip_id"])[labels].mean()
    assert clip_probs.groupby("variant").size().to_dict() == {"svm": 18, "se": 18, "se_b": 18}
    answers = compare.read_clip_predictions(compare.clip_predictions_path(out)).set_index(
        ["variant", "fold", "clip_id"])
    cnn = answers[answers.index.get_level_values("variant") != "svm"]
    mean = clip_probs.loc[cnn.index]
    assert (mean.idxmax(axis=1) == cnn["predicted"]).all()
    assert mean.max(axis=1).to_numpy() == pytest.approx(cnn["confidence"].to_numpy(), abs=1e-6)
    assert probs[probs.variant == "svm"].groupby(["fold", "clip_id"]).size().eq(1).all()  # one row per SVM clip
    # same folds, other initial weights: other distributions, and its own configuration key
    a, b = (clip_probs.loc[v].sort_index() for v in ("se", "se_b"))
    assert (a.index == b.index).all() and not np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-4)
    keys = results.groupby("variant")["config_key"].first()
    assert keys["se"] != keys["se_b"]
    with pytest.raises(ConfigError, match=r"variants.bad: study.init_offset: must be an int >= 0, got -1"):
        compare.init_offset(compare.Study({"bad": {compare.INIT_OFFSET: -1}}, [42]), "bad")


def test_a_configuration_key_of_digits_only_stays_a_string_in_every_csv(tmp_path):
    """Hex keys are sometimes all digits ("123456789012"): read as numbers they stopped matching the same key of
    another file, and the summary failed on merging int64 with object (a CI failure, depending on the hash)."""
    from study.summary import current_rows

    run = {"variant": "svm", "seed": 1, "fold": 0, "config_key": "012345678912"}
    results = {c: 0 for c in compare.CSV_COLUMNS} | run
    pd.DataFrame([results]).to_csv(tmp_path / "r.csv", index=False)
    pd.DataFrame([run | {"clip_id": "a", "actual": "x", "predicted": "x"}]).to_csv(tmp_path / "c.csv", index=False)
    read, clips = compare.read_results(tmp_path / "r.csv"), compare.read_clip_predictions(tmp_path / "c.csv")
    assert read["config_key"].tolist() == clips["config_key"].tolist() == ["012345678912"]  # leading zero kept
    assert len(current_rows(clips, read)) == 1


def test_a_second_run_on_the_same_results_csv_is_refused_while_the_first_holds_it(tmp_path):
    """Each run rewrites its CSVs whole from memory: two at once would drop each other's rows."""
    out = tmp_path / "results.csv"
    with compare.exclusive(out):
        with pytest.raises(ConfigError, match="another study.compare run"):
            with compare.exclusive(out):
                pass
        with compare.exclusive(tmp_path / "other.csv"):  # another CSV is another lock
            pass
    with compare.exclusive(out):  # released: the next run goes ahead
        pass


def test_an_svm_on_the_kept_fold_models_embeddings_is_scored_against_their_softmax(tiny_study, tmp_path, capsys,
                                                                                    monkeypatch):
    import dataclasses

    from study import fold_embeddings

    study, work = tiny_study
    tones = compare.Path(study.params_path).parent / "tones"
    from genre_se.datasets import read_index
    from genre_se.robustness import TRANSFORMS

    # the tones as "external files" (every genre known); the robustness report of every fold model recorded
    study = dataclasses.replace(study, external=str(tones), robustness=True)
    out, state = tmp_path / "s.csv", tmp_path / "st"
    compare.run_study(study, work / "features", work / "index.csv", out, state_root=state, variants=["se"],
                      quick=True, keep_models=["se"])
    scores, familiar, robust = fold_embeddings.score_kept_models(
        study, work / "features", state, out, ["se"], log=None, index=read_index(work / "index.csv"),
        scratch=tmp_path / "scratch", cache=tmp_path / "cache")
    # a rerun reads each fold's robustness from the cache (same model.keras) and measures only a changed model
    measured = []
    real = fold_embeddings.head_robustness
    monkeypatch.setattr(fold_embeddings, "head_robustness", lambda folder, *a: measured.append(folder) or real(
        folder, *a))
    kept = tmp_path / "cache" / "se" / "seed42" / "fold1.csv"
    kept.write_text(kept.read_text().replace(kept.read_text().splitlines()[1].split(",")[-1], "0" * 40))
    _, _, again = fold_embeddings.score_kept_models(
        study, work / "features", state, out, ["se"], log=None, index=read_index(work / "index.csv"),
        scratch=tmp_path / "scratch", cache=tmp_path / "cache")
    assert [m.name for m in measured] == ["fold1"]
    pd.testing.assert_frame_equal(again, robust)
    # both heads' robustness from one pass: the softmax's is the one the study recorded for the same model
    assert len(robust) == 3 * 2 * len(TRANSFORMS) and set(robust["transform"]) == set(TRANSFORMS)
    soft = scores[scores["head"] == "softmax"]
    assert soft["robustness_agreement"].to_numpy() == pytest.approx(soft["recorded_robustness"].to_numpy(), abs=1e-9)
    head = scores[scores["head"] == "embsvm"].set_index("fold")["robustness_agreement"]
    by_transform = robust[robust["head"] == "embsvm"].groupby("fold")["top1_agree"].mean()
    assert head.to_numpy() == pytest.approx(by_transform.loc[head.index].to_numpy())
    # the familiarity flag, cross-fitted on each fold's test clips: every clip of the study checked once
    assert len(familiar) == 3 and familiar["checked"].sum() == 18
    assert (familiar["false_alarms"] <= familiar["checked"]).all() and familiar["external_flagged"].between(0, 1).all()
    assert len(scores) == 3 * 2 and set(scores["head"]) == {"softmax", "embsvm"}
    recorded = compare.read_results(out).set_index("fold")["clip_accuracy"]
    soft = scores[scores["head"] == "softmax"].set_index("fold")
    assert soft["clip_accuracy"].to_numpy() == pytest.approx(recorded.loc[soft.index].to_numpy())
    assert scores[["clip_accuracy", "clip_macro_f1", "external_top1"]].stack().between(0, 1).all()
    # tones are easy once embedded: the SVM head, fitted on the other folds' clips, answers the external files
    # (the same tones) better than chance (3 genres)
    assert scores.loc[scores["head"] == "embsvm", "external_top1"].mean() > 0.5
    for row in scores.itertuples():  # each test clip's answer kept for the pooled ECE
        assert np.mean(row.test_correct) == pytest.approx(row.clip_accuracy) and 0 < min(row.test_confidence)
        assert 1 / 3 <= row.external_confidence <= 1
    rows = fold_embeddings.results_rows(scores, out)
    assert set(rows["variant"]) == {"se_embsvm"} and len(rows) == 3
    # each test clip's answer once per fold model, keyed like the results rows (the clip-level sign test)
    answers = fold_embeddings.clip_rows(scores, rows)
    assert len(answers) == 18 and answers["clip_id"].is_unique and set(answers["config_key"]) == set(rows["config_key"])
    right = answers.assign(ok=answers["actual"] == answers["predicted"]).groupby("fold")["ok"].mean()
    assert right.to_numpy() == pytest.approx(rows.set_index("fold")["clip_accuracy"].loc[right.index].to_numpy())
    # a model that is not the one the study scored is refused
    results = compare.read_results(out)
    results.loc[results.fold == 1, "clip_accuracy"] = 2.0
    results.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(fold_embeddings.GenreSEError, match="not the model the study scored"):
        fold_embeddings.score_kept_models(study, work / "features", state, tmp_path / "other.csv", ["se"], log=None)
    text = fold_embeddings.report_markdown(scores, familiar, robust)
    assert "## Robustness of each head" in text and "| `se` | 3 |" in text
    assert fold_embeddings.main(["--study", str(compare.Path(study.params_path).parent / "study.yaml"),
                                "--work", str(work), "--state", str(state), "--results", str(out),
                                "--variants", "no_se"]) == 1
    assert "no kept fold models of 'no_se'" in capsys.readouterr().err
    report = tmp_path / "head.md"
    assert fold_embeddings.main(["--study", str(compare.Path(study.params_path).parent / "study.yaml"),
                                "--work", str(work), "--state", str(state), "--results", str(out), "--variants",
                                "se", "--scores", str(tmp_path / "head.csv"), "--report", str(report),
                                "--familiarity", str(tmp_path / "fam.csv")]) == 0
    assert "| `se` | 3 (1) |" in report.read_text() and "| `se` | 3 | 18 |" in report.read_text()
    assert len(pd.read_csv(tmp_path / "fam.csv")) == 3
    assert len(compare.read_results(tmp_path / "head.csv")) == 3
    assert len(pd.read_csv(tmp_path / "head_clips.csv")) == 18
    # every head's whole row kept (per-clip lists included): a later run on fewer kept models (fold 2's gone, as
    # fold models are not kept across machines) keeps fold 2's rows and replaces those it scores again
    heads = fold_embeddings.heads_path(tmp_path / "head.csv")
    written = fold_embeddings.read_heads(heads)  # as scored above, but for the robustness this run did not measure
    pd.testing.assert_frame_equal(written, scores[written.columns])
    first = {name: pd.read_csv(tmp_path / name) for name in ("head.csv", "head_clips.csv", "fam.csv")}
    first_report = report.read_text()
    stale = fold_embeddings.read_heads(heads)
    stale.loc[stale["fold"] == 0, "clip_accuracy"] = -1.0  # what a rescored model's rows must replace
    fold_embeddings.write_heads(heads, stale)
    import shutil
    shutil.rmtree(state / "bundles" / "se" / "seed42" / "fold2")
    argv = ["--study", str(compare.Path(study.params_path).parent / "study.yaml"), "--work", str(work), "--state",
            str(state), "--results", str(out), "--variants", "se", "--scores", str(tmp_path / "head.csv"),
            "--report", str(report), "--familiarity", str(tmp_path / "fam.csv")]
    assert fold_embeddings.main(argv) == 0
    pd.testing.assert_frame_equal(fold_embeddings.read_heads(heads), written)
    for name, table in first.items():
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), table)
    assert report.read_text() == first_report
    assert fold_embeddings.main([*argv, "--fresh"]) == 0  # only what is scored now
    assert sorted(fold_embeddings.read_heads(heads)["fold"].unique()) == [0, 1]
    assert len(pd.read_csv(tmp_path / "fam.csv")) == 2 and "| `se` | 2 (1) |" in report.read_text()
    heads.unlink()  # the earlier rows cannot be kept without their whole rows: refused, not dropped
    assert fold_embeddings.main(argv) == 1 and "pass --fresh" in capsys.readouterr().err
    heads.write_text("variant,seed\nse,42\n")
    assert fold_embeddings.main(argv) == 1 and "not a heads table" in capsys.readouterr().err


def test_merged_runs_keep_every_fold_model_once_the_newest_scores_first_seen_variant_order():
    from study.fold_embeddings import merge_runs

    kept = pd.DataFrame({"variant": ["a", "a", "b", "b"], "seed": [42, 43, 42, 42], "fold": [0, 0, 0, 1],
                         "head": ["softmax"] * 4, "score": [1.0, 2.0, 3.0, 4.0]})
    fresh = pd.DataFrame({"variant": ["c", "b", "a"], "seed": [42, 42, 44], "fold": [0, 1, 0],
                          "head": ["softmax"] * 3, "score": [5.0, 6.0, 7.0]})
    merged = merge_runs(kept, fresh)
    assert list(zip(merged["variant"], merged["seed"], merged["fold"], merged["score"])) == [
        ("a", 42, 0, 1.0), ("a", 43, 0, 2.0), ("a", 44, 0, 7.0), ("b", 42, 0, 3.0), ("b", 42, 1, 6.0),
        ("c", 42, 0, 5.0)]
    pd.testing.assert_frame_equal(merge_runs(None, fresh), fresh)
    pd.testing.assert_frame_equal(merge_runs(kept, fresh.iloc[:0]), kept)


def _three_genre_store():
    """30 clips of 3 genres, 4 segments each (a store's labels and table), and 6 test clips, 2 per genre."""
    from types import SimpleNamespace

    labels = np.repeat([0, 1, 2], 10)
    clip_ids = [f"c{i}" for i in range(30)]
    store = SimpleNamespace(labels=["a", "b", "c"], table=pd.DataFrame(
        {"clip_id": np.repeat(clip_ids, 4), "label_index": np.repeat(labels, 4)}))
    return labels, clip_ids, store, [c for i, c in enumerate(clip_ids) if i % 5 == 0]


def test_the_classic_svm_heads_are_fitted_on_the_training_clips_and_fused_with_each_head():
    from types import SimpleNamespace

    from genre_se.fusion import fit_svm
    from study import fold_embeddings

    rng = np.random.default_rng(0)
    labels, clip_ids, store, test = _three_genre_store()
    probs = rng.dirichlet(np.ones(3), size=120)
    # embeddings that say nothing of the genre; statistics that do (one window per clip, two for c0)
    seen = {"embeddings": rng.normal(size=(120, 5)), "probs": probs,
            "external_embeddings": [rng.normal(size=(3, 5)) for _ in range(3)],
            "external_probs": [rng.dirichlet(np.ones(3), size=3) for _ in range(3)]}
    stats = {c: rng.normal(loc=4.0 * y, size=(2 if c == "c0" else 1, 6)) for c, y in zip(clip_ids, labels)}
    external = SimpleNamespace(labels=np.array([0, 1, 2]))
    classic = {"clips": stats, "external": [rng.normal(loc=4.0 * y, size=(2, 6)) for y in range(3)]}
    scores, _ = fold_embeddings.head_scores(seen, store, test, external, seed=3, classic=classic)
    assert set(scores) == {"softmax", "embsvm", "mfcc", "softmax+mfcc", "embsvm+mfcc"}
    assert scores["mfcc"]["clip_accuracy"] == 1.0 and scores["mfcc"]["external_top1"] == 1.0
    assert scores["embsvm+mfcc"]["clip_accuracy"] >= scores["embsvm"]["clip_accuracy"]
    # the classic SVM saw the training clips' windows only (c0's two among them), never a test clip's
    train = [c for c in clip_ids if c not in test]
    own = fit_svm(np.concatenate([stats[c] for c in train]), np.concatenate(
        [np.full(len(stats[c]), y) for c, y in zip(clip_ids, labels) if c not in test]), store.labels, seed=3)
    expected = np.stack([own.distribution(stats[c]) for c in test])
    truth = labels[[clip_ids.index(c) for c in test]]
    assert scores["mfcc"]["test_confidence"] == pytest.approx(expected.max(axis=1).tolist())
    assert scores["mfcc"]["test_correct"] == (expected.argmax(axis=1) == truth).tolist()
    # without statistics: the two heads alone, as before
    assert set(fold_embeddings.head_scores(seen, store, test, external, seed=3)[0]) == {"softmax", "embsvm"}
    # the report pairs each classic head with the SVM head over the folds
    rows = pd.DataFrame([{"variant": "v", "seed": 1, "fold": f, "head": h, **score} for f in (0, 1)
                         for h, score in scores.items()])
    text = "\n".join(fold_embeddings.heads_markdown(rows, fold_embeddings.CLASSIC_HEADS))
    mfcc_delta = scores["mfcc"]["clip_accuracy"] - scores["embsvm"]["clip_accuracy"]
    assert f"| `v` | `mfcc` | 2 | 1.000 | {mfcc_delta:+.3f} | 2/0/0 |" in text and "`softmax+mfcc`" in text


def test_the_probe_heads_fit_segments_and_block_statistics_of_the_training_clips_only():
    from types import SimpleNamespace

    from genre_se.fusion import fit_svm
    from study import fold_embeddings

    rng = np.random.default_rng(1)
    labels, clip_ids, store, test = _three_genre_store()
    # segment embeddings that name the genre; block statistics that do not
    seen = {"embeddings": rng.normal(loc=3.0 * np.repeat(labels, 4)[:, None], size=(120, 5)),
            "probs": rng.dirichlet(np.ones(3), size=120), "block_stats": rng.normal(size=(120, 8)),
            "external_embeddings": [rng.normal(loc=3.0 * y, size=(3, 5)) for y in range(3)],
            "external_probs": [rng.dirichlet(np.ones(3), size=3) for _ in range(3)],
            "external_block_stats": [rng.normal(size=(3, 8)) for _ in range(3)]}
    external = SimpleNamespace(labels=np.array([0, 1, 2]))
    scores, _ = fold_embeddings.head_scores(seen, store, test, external, seed=3, probe_heads=True)
    assert set(scores) == {"softmax", "embsvm", "segsvm", "blocksvm"}
    assert scores["segsvm"]["clip_accuracy"] == 1.0 and scores["segsvm"]["external_top1"] == 1.0
    # the segment SVM saw the training clips' segments only; a test clip's answer is the mean of its segments'
    train = ~np.isin(store.table["clip_id"], test)
    own = fit_svm(seen["embeddings"][train], store.table["label_index"][train].to_numpy(), store.labels, seed=3,
                  max_windows=1)
    first = own.probabilities(seen["embeddings"][store.table["clip_id"].to_numpy() == test[0]]).mean(axis=0)
    assert scores["segsvm"]["test_confidence"][0] == pytest.approx(first.max())
    # block statistics of pure noise: no better than a coin over the 3 genres, far from the segments' 1.0
    assert scores["blocksvm"]["clip_accuracy"] < 1.0
    rows = pd.DataFrame([{"variant": "v", "seed": 1, "fold": f, "head": h, **score} for f in (0, 1)
                         for h, score in scores.items()])
    text = "\n".join(fold_embeddings.heads_markdown(rows, fold_embeddings.PROBE_HEADS))
    delta = scores["segsvm"]["clip_accuracy"] - scores["embsvm"]["clip_accuracy"]
    assert f"| `v` | `segsvm` | 2 | 1.000 | {delta:+.3f} |" in text and "`blocksvm`" in text
    assert {fold_embeddings.HEAD_VARIANTS[h] for h in fold_embeddings.PROBE_HEADS} == {"_segsvm", "_blocksvm"}


@pytest.mark.parametrize("se", [True, False])
def test_block_statistics_pool_every_blocks_output_by_mean_and_std(se):
    from genre_se.model import build_model
    from study.fold_embeddings import GenreSEError, block_statistics_model

    model = build_model({"filters": [4, 8, 6], "reduction_ratios": 2, "se": se}, (16, 16, 1), 3)
    stats = block_statistics_model(model)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    got = np.asarray(stats(x, training=False))
    assert got.shape == (2, 2 * (4 + 8 + 6))
    # the last block's means are the embedding the softmax reads (global average pooling)
    from genre_se.model import embedding_model

    assert got[:, 2 * (4 + 8):2 * (4 + 8) + 6] == pytest.approx(np.asarray(embedding_model(model)(x)), abs=1e-5)
    assert (got[:, 4:8] >= 0).all()  # standard deviations
    import keras

    with pytest.raises(GenreSEError, match="no conv blocks"):
        block_statistics_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_familiarity_is_cross_fitted_on_the_test_clips_and_flags_far_files():
    from types import SimpleNamespace

    from study import fold_embeddings

    rng = np.random.default_rng(0)
    clip_ids = np.repeat([f"c{i}" for i in range(30)], 10)       # 30 clips x 10 segments, 4-dim embeddings
    store = SimpleNamespace(table=pd.DataFrame({"clip_id": clip_ids}))
    seen = {"embeddings": rng.normal(size=(300, 4)),
            "external_embeddings": [rng.normal(loc=8.0, size=(10, 4)) for _ in range(3)]}  # far from training
    test = [f"c{i}" for i in range(20, 30)]
    got = fold_embeddings.familiarity_scores(seen, store, test, seed=1)
    assert got["checked"] == 10 and got["false_alarms"] <= 2 and got["external_flagged"] == 1.0
    assert got["auc"] == 1.0  # every far file lies beyond every held-out clip
    # the threshold comes from held-out clips only: a test clip far away raises a false alarm or the threshold
    seen["embeddings"][clip_ids == "c29"] += 8.0
    shifted = fold_embeddings.familiarity_scores(seen, store, test, seed=1)
    assert shifted["false_alarms"] > got["false_alarms"] or shifted["threshold"] > got["threshold"] + 1
    with pytest.raises(fold_embeddings.GenreSEError, match="at least 2 test clips"):
        fold_embeddings.familiarity_scores(seen, store, ["c0"], seed=1)


def test_rewriting_a_results_csv_leaves_its_rows_unchanged(tmp_path):
    # every finished fold rewrites the whole CSV: the rows already there must come back byte for byte, or a
    # study in progress churns every earlier row's last digit
    from genre_se.fileio import write_csv
    path = tmp_path / "results.csv"
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({column: rng.random(4) for column in compare.CSV_COLUMNS})
    rows["variant"], rows["config_key"] = "v", "0123"
    rows.loc[0, "clip_accuracy"] = 0.16666666666666666       # the fast parser reads it back as ...6666
    rows["robustness_tv"] = [0.12781511398728196, np.nan, 0.5, 0.25]  # an optional column, empty in older rows
    write_csv(path, rows)
    before = path.read_bytes()
    assert ",0.12781511398728196\n" in path.read_text() and ",\n" in path.read_text()
    write_csv(path, compare.read_results(path)[compare.CSV_COLUMNS + ["robustness_tv"]])
    assert path.read_bytes() == before


@pytest.mark.parametrize("switch", [{"model.classifier": "svm"}, {"model.fusion": "svm"}])
def test_a_study_refuses_to_score_a_clip_head_it_would_not_measure(tmp_path, switch):
    from genre_se.errors import DatasetError

    params = load_params(write_params(tmp_path / "params.yaml", {**TINY_PARAMS, **switch}))
    with pytest.raises(DatasetError, match="study.fold_embeddings|study.ensemble"):
        compare.run_cnn_fold(None, params, np.zeros(4, dtype=int), 0, 2, 0, tmp_path / "state")


def test_the_heads_ece_pools_the_test_clips_of_every_fold():
    from study.fold_embeddings import pooled_ece

    rows = pd.DataFrame({"test_confidence": [[0.9, 0.9], [0.9]], "test_correct": [[True, False], [True]]})
    assert pooled_ece(rows) == pytest.approx(0.9 - 2 / 3)  # one bin: accuracy 2/3 at confidence 0.9 (mean per fold: 0.25)


def test_nearest_genre_test_holds_its_level_when_the_trained_model_is_one_more_untrained_copy():
    """Three copies and a 25 % hit rate: under 'training added nothing' a trained miss beside a copy's hit
    (worse) is likelier than a trained hit beside a copy's miss (better); the test must not call that a loss."""
    from study import excitations

    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(200):
        models = rng.random((4, 200)) < 0.25  # 200 clips, the trained model and 3 copies alike
        hits = pd.DataFrame({"fold": 0, "block": "b", "clip_id": np.arange(200), "trained": models[0],
                             "untrained": models[1:].mean(axis=0), "copies": 3})
        rejections += excitations.nearest_genre_test(hits).iloc[0]["nearest_genre_p"] < 0.05
    assert rejections < 0.1 * 200  # about 5 %; the plain sign test of better against worse: about 90 %


def test_pooled_nearest_genre_of_the_untrained_copies_skips_folds_where_they_are_dead():
    from genre_se.analyze import ClassExcitations
    from study import excitations

    labels = np.repeat(np.arange(4), 5)
    rng = np.random.default_rng(0)

    def exc(clips):
        means = np.stack([clips[labels == g].mean(0) for g in range(4)])
        return ClassExcitations(list("abcd"), ["b"], [means], [clips], labels, [f"c{i}" for i in range(20)])

    def signal():
        return np.eye(4)[labels] @ rng.standard_normal((4, 6)) + 0.3 * rng.standard_normal((20, 6))

    analyses = [excitations.FoldAnalysis(exc(signal()), [exc(np.full((20, 6), 0.5))]),  # the copy dead
                excitations.FoldAnalysis(exc(signal()), [exc(rng.standard_normal((20, 6)))])]
    row = excitations.fold_summary(analyses).iloc[0]
    alive = excitations.fold_table(analyses)["nearest_genre_untrained"][1]
    assert row["nearest_genre_untrained_pooled"] == pytest.approx(alive)  # not alive / 2: a dead copy is no miss
    assert row["nearest_genre_clips"] == len(excitations.clip_hits(analyses)) == 20
    half = [excitations.FoldAnalysis(exc(signal()), [exc(np.full((20, 6), 0.5)), exc(rng.standard_normal((20, 6)))])]
    assert len(excitations.clip_hits(half)) == excitations.fold_summary(half).iloc[0]["nearest_genre_clips"] == 20
    dead = [excitations.FoldAnalysis(exc(signal()), [exc(np.full((20, 6), 0.5))])]
    assert np.isnan(excitations.fold_summary(dead).iloc[0]["nearest_genre_untrained_pooled"])
