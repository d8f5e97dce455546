"""study/ensemble.py: ensembles, SVM fusion and out-of-fold temperature from kept distributions (no training)."""

import numpy as np
import pandas as pd
import pytest
import yaml

from genre_se.calibration import expected_calibration_error
from study import compare, ensemble

LABELS = ["a", "b"]


def _rows(variant, fold, clip, actual, dists, which="test", key="k"):
    """Rows of <out>_probs.csv: one per segment distribution in ``dists``."""
    return [{"variant": variant, "seed": 1, "fold": fold, "set": which, "clip_id": clip, "actual": actual,
             "config_key": key, "a": d[0], "b": d[1]} for d in dists]


def test_an_ensemble_averages_clip_distributions_and_is_scored_per_fold():
    rows = (_rows("m1", 0, "x", "a", [[0.45, 0.55], [0.35, 0.65]])    # m1 wrong on x (0.40)
            + _rows("m2", 0, "x", "a", [[0.9, 0.1], [0.9, 0.1]])       # m2 right and sure: the pair is right
            + _rows("m1", 0, "y", "b", [[0.2, 0.8]]) + _rows("m2", 0, "y", "b", [[0.7, 0.3]])  # pair right (0.45)
            + _rows("svm", 0, "x", "a", [[0.1, 0.9]]) + _rows("svm", 0, "y", "b", [[0.4, 0.6]])
            + _rows("m1", 1, "z", "a", [[0.6, 0.4]]))                  # m2 never answered z: no pair there
    probs = pd.DataFrame(rows)
    clips = ensemble.clip_table(probs, LABELS)
    assert clips.set_index(["variant", "clip_id"]).loc[("m1", "x"), "a"] == pytest.approx(0.40)
    built = ensemble.combined_clips(clips, ["m1", "m2"], "svm", LABELS).set_index(["variant", "clip_id"])
    assert built.loc[("m1+m2", "x"), "a"] == pytest.approx(0.65) and built.loc[("m1+m2", "y"), "b"] == \
        pytest.approx(0.55)
    assert ("m1+m2", "z") not in built.index
    # the fusion of the pair with the SVM averages the pair's and the SVM's clip distributions
    assert built.loc[("(m1+m2)+svm", "x"), "a"] == pytest.approx((0.65 + 0.1) / 2)
    scores = ensemble.fold_scores(built.reset_index(), LABELS).set_index(["variant", "fold"])
    assert scores.loc[("m1", 0), "clip_accuracy"] == 0.5 and scores.loc[("m1+m2", 0), "clip_accuracy"] == 1.0
    assert scores.loc[("svm", 0), "clip_accuracy"] == 0.5 and scores.loc[("m1", 1), "clip_accuracy"] == 1.0
    names = [name for name, _ in ensemble.combinations(["m1", "m2", "m3"], "svm")]
    assert names == ["m1", "m2", "m3", "svm", "m1+m2", "m1+m3", "m2+m3", "m1+m2+m3", "m1+svm", "(m1+m2+m3)+svm"]


def _overconfident(variant, n_folds=4, per_fold=10, seed=0):
    """Clips answered with top probability ~0.95 but right only 60 % of the time: T > 1 should soften them."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(n_folds):
        for i in range(per_fold):
            actual = LABELS[i % 2]
            right = rng.random() < 0.6
            top = rng.uniform(0.9, 0.99)
            p_a = top if (actual == "a") == right else 1 - top
            rows += _rows(variant, fold, f"c{fold}-{i}", actual, [[p_a, 1 - p_a]] * 2)
    rows += _rows(variant, 0, "song.mp3", "a", [[0.05, 0.95]], which="external")   # a sure wrong answer
    return rows


def test_the_out_of_fold_temperature_softens_an_overconfident_model_and_is_scored_cross_fitted():
    probs = pd.DataFrame(_overconfident("m1"))
    table = ensemble.oof_calibration(probs, ["m1"], LABELS, shipped_t=0.5)
    r = table.iloc[0]
    assert r["clips"] == 40 and r["T_oof"] > 1.5
    assert r["ece_cross"] < r["ece_1"] < r["ece_shipped"]  # sharpening (T = 0.5) makes it worse
    test = probs[probs["set"] == "test"].groupby("clip_id")
    dist = test[LABELS].mean().to_numpy()
    labels = test["actual"].first().map({"a": 0, "b": 1}).to_numpy()
    assert r["ece_1"] == pytest.approx(expected_calibration_error(dist, labels))
    # the wrong external answer: top 0.95 at T = 1, softened under the OOF T, sharper under the shipped one
    assert r["ext_wrong_conf_1"] == pytest.approx(0.95)
    assert r["ext_wrong_conf_oof"] < 0.95 < r["ext_wrong_conf_shipped"] and r["ext_answers"] == 1
    assert "| `m1` | 40 |" in ensemble.calibration_markdown(table, 0.5)


def test_report_reads_a_study_and_refuses_missing_members(tmp_path, capsys):
    rows = _overconfident("m1") + _overconfident("m2", seed=1)
    rows += [dict(r, variant="svm") for r in _overconfident("svm", seed=2) if r["set"] == "test"]
    probs = pd.DataFrame(rows)
    # the study's CSV names the rows that count (config_key): m2's fold 3 was recomputed since, so its kept
    # distributions there are stale and the pair is scored on folds 0-2 only
    runs = probs[["variant", "seed", "fold"]].drop_duplicates().assign(config_key="k")
    runs.loc[(runs.variant == "m2") & (runs.fold == 3), "config_key"] = "new"
    out = tmp_path / "ens.csv"
    results = runs.assign(clip_accuracy=0.5, clip_macro_f1=0.5, params=1, train_seconds=1.0, epochs_run=1,
                          best_epoch=1, n_test_clips=10)
    results.to_csv(out, index=False)
    probs.to_csv(compare.probabilities_path(out), index=False)
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"variants": {"svm": "baseline", "m1": {}, "m2": {}}}))
    assert ensemble.main(["--study", str(study), "--out", str(out), "--report", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "| `m1+m2` | 2 CNN |" in text and "| `(m1+m2)+svm` | 2 CNN + SVM |" in text
    pair = [line for line in text.splitlines() if line.startswith("| `m1+m2` |")][0]
    assert pair.split(" | ")[4] == "3"  # folds
    # the combinations' fold scores as a results CSV: an ensemble costs its members' trainings
    assert ensemble.main(["--study", str(study), "--out", str(out), "--report", str(tmp_path / "r.md"),
                          "--scores", str(tmp_path / "combined.csv")]) == 0
    combined = compare.read_results(tmp_path / "combined.csv")
    assert set(combined["variant"]) == {"m1+m2", "m1+svm", "(m1+m2)+svm"}
    assert len(combined[combined.variant == "m1+m2"]) == 3 and (combined["train_seconds"] == 2.0).sum() == 3 + 4
    assert (combined.loc[combined.variant == "(m1+m2)+svm", "train_seconds"] == 3.0).all()
    from study.what_helped import contrast

    c = contrast(pd.concat([results, combined]), "m1+m2", "m1")
    assert c["folds"] == 3 and np.isfinite(c["delta"])
    assert ensemble.main(["--study", str(study), "--out", str(out), "--members", "m1,m3"]) == 1
    assert "'m3' is not a CNN variant" in capsys.readouterr().err
    compare.probabilities_path(out).unlink()
    assert ensemble.main(["--study", str(study), "--out", str(out), "--report", str(tmp_path / "r.md")]) == 1
    assert "no kept distributions" in capsys.readouterr().err


def test_the_svm_is_scored_by_its_own_answers_not_by_its_top_platt_probability():
    # the Platt probabilities say "b" on x, the SVM itself answered "a" (right): alone it is scored by its answer,
    # in a fusion its probabilities count
    rows = _rows("svm", 0, "x", "a", [[0.4, 0.6]]) + _rows("svm", 0, "y", "b", [[0.3, 0.7]]) \
        + _rows("m1", 0, "x", "a", [[0.9, 0.1]]) + _rows("m1", 0, "y", "b", [[0.2, 0.8]])
    clips = ensemble.combined_clips(ensemble.clip_table(pd.DataFrame(rows), LABELS), ["m1"], "svm", LABELS)
    recorded = pd.DataFrame({"variant": "svm", "seed": 1, "fold": 0, "set": "test", "clip_id": ["x", "y"],
                             "predicted": ["a", "b"]})
    own = ensemble.fold_scores(clips, LABELS, recorded).set_index("variant")["clip_accuracy"]
    platt = ensemble.fold_scores(clips, LABELS).set_index("variant")["clip_accuracy"]
    assert own["svm"] == 1.0 and platt["svm"] == 0.5
    assert own["m1+svm"] == platt["m1+svm"] == 1.0  # (0.65, 0.35) on x: the fusion uses the probabilities
    table = ensemble.comparison_table(clips, ["m1"], "svm", LABELS, "m1", recorded)
    assert "| `svm` | SVM | 1.000 ± nan |" in table
    # a recorded variant without a recorded answer for a clip is not scored there (no silent fallback)
    partial = ensemble.answers(clips, LABELS, recorded.iloc[:1])
    assert partial[partial["variant"] == "svm"]["clip_id"].tolist() == ["x"]
