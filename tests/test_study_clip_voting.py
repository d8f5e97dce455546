"""study/clip_voting.py: clip rules (mean, vote, geometric) scored from a study's kept segment distributions."""

import numpy as np
import pandas as pd
import pytest

from study import clip_voting, compare

LABELS = ["a", "b"]


def _rows(fold, clip, actual, dists, which="test", variant="m1"):
    return [{"variant": variant, "seed": 1, "fold": fold, "set": which, "clip_id": clip, "actual": actual,
             "config_key": "k", "a": d[0], "b": d[1]} for d in dists]


def test_each_rule_makes_the_clip_distribution_it_says():
    segments = np.array([[0.6, 0.4], [0.6, 0.4], [0.01, 0.99]])
    # mean: (0.403, 0.597) -> b; vote: two segments of three say a; geometric: the segment that all but rules
    # a out weighs most -> b, normalised
    assert clip_voting.clip_rule(segments, "mean") == pytest.approx([1.21 / 3, 1.79 / 3])
    assert clip_voting.clip_rule(segments, "vote") == pytest.approx([2 / 3, 1 / 3])
    geo = np.exp(np.log(segments).mean(axis=0))
    assert clip_voting.clip_rule(segments, "geometric") == pytest.approx(geo / geo.sum())
    # a probability of exactly 0 is floored, not a veto that makes the distribution NaN
    assert np.isfinite(clip_voting.clip_rule(np.array([[0.0, 1.0], [1.0, 0.0]]), "geometric")).all()
    with pytest.raises(clip_voting.GenreSEError, match="unknown clip rule"):
        clip_voting.clip_rule(segments, "median")


def test_a_tied_vote_is_scored_as_predict_answers_it():
    """Votes tie 1-1; the mean of the segments says b. Scored by the label that sorts first, the study
    measured a vote rule that predict --aggregate vote does not apply."""
    frame = pd.DataFrame(_rows(0, "x", "b", [[0.55, 0.45], [0.1, 0.9]]))
    scores = clip_voting.rule_scores(frame, LABELS, rules=("vote",))
    assert scores["clip_accuracy"].tolist() == [1.0]


def _study(tmp_path, recorded_accuracy=0.5):
    """A study CSV and its kept distributions: fold 0 has clip x (the rules disagree: mean says b, vote a;
    actual a) and clip y (every rule right); fold 1 one clip every rule gets right; one external file."""
    rows = (_rows(0, "x", "a", [[0.6, 0.4], [0.6, 0.4], [0.01, 0.99]]) + _rows(0, "y", "b", [[0.2, 0.8]] * 2)
            + _rows(1, "z", "a", [[0.9, 0.1]] * 2) + _rows(0, "song.mp3", "a", [[0.7, 0.3]], which="external"))
    out = tmp_path / "study.csv"
    pd.DataFrame({"variant": "m1", "seed": 1, "fold": [0, 1], "clip_accuracy": [recorded_accuracy, 1.0],
                  "clip_macro_f1": 0.5, "params": 7, "train_seconds": 3.0, "epochs_run": 30, "best_epoch": 30,
                  "n_test_clips": [2, 1], "config_key": "k"}).to_csv(out, index=False)
    pd.DataFrame(rows).to_csv(compare.probabilities_path(out), index=False)
    return out


def test_the_study_is_scored_per_rule_and_written_as_results_rows(tmp_path, capsys):
    out = _study(tmp_path)
    scores_csv, report = tmp_path / "rules.csv", tmp_path / "rules.md"
    assert clip_voting.main(["--out", str(out), "--members", "m1", "--scores", str(scores_csv),
                             "--report", str(report)]) == 0
    rows = compare.read_results(scores_csv).set_index(["variant", "fold"])
    assert set(rows.index.get_level_values("variant")) == {"m1_vote", "m1_geometric"}
    assert rows.loc[("m1_vote", 0), "clip_accuracy"] == 1.0      # vote gets x right
    assert rows.loc[("m1_geometric", 0), "clip_accuracy"] == 0.5  # geometric, like mean, says b on x
    assert rows.loc[("m1_vote", 1), "clip_accuracy"] == 1.0
    assert (rows["train_seconds"] == 3.0).all() and (rows["params"] == 7).all()  # a rule costs no training
    assert rows.loc[("m1_vote", 0), "external_top1"] == 1.0
    text = report.read_text()
    vote = [line for line in text.splitlines() if line.startswith("| `m1` | vote |")][0]
    assert "+0.250" in vote and "| 1/1/0 |" in vote and "| 2 (1) |" in vote
    # what_helped pairs the rows with the member's own
    from study.what_helped import contrast

    c = contrast(pd.concat([compare.read_results(out), compare.read_results(scores_csv)]), "m1_vote", "m1")
    assert c["delta"] == pytest.approx(0.25) and c["won"] == 1 and c["tied"] == 1


def test_distributions_that_do_not_reproduce_the_recorded_accuracy_are_refused(tmp_path, capsys):
    out = _study(tmp_path, recorded_accuracy=1.0)  # the mean rule gives fold 0 0.5: not what was scored
    assert clip_voting.main(["--out", str(out), "--scores", str(tmp_path / "r.csv"),
                             "--report", str(tmp_path / "r.md"), "--members", "m1"]) == 1
    assert "not the distributions the study scored" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_missing_members_and_per_clip_answers_are_refused(tmp_path, capsys):
    out = _study(tmp_path)
    assert clip_voting.main(["--out", str(out), "--members", "m9", "--scores", str(tmp_path / "r.csv"),
                             "--report", str(tmp_path / "r.md")]) == 1
    assert "no kept distributions of m9" in capsys.readouterr().err
    probs = pd.read_csv(compare.probabilities_path(out))
    probs.drop_duplicates(["fold", "set", "clip_id"]).to_csv(compare.probabilities_path(out), index=False)
    assert clip_voting.main(["--out", str(out), "--members", "m1", "--scores", str(tmp_path / "r.csv"),
                             "--report", str(tmp_path / "r.md")]) == 1
    assert "need a CNN's segments" in capsys.readouterr().err
    compare.probabilities_path(out).unlink()
    assert clip_voting.main(["--out", str(out), "--members", "m1"]) == 1
    assert "no kept distributions" in capsys.readouterr().err
