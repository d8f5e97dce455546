"""classification_scores on test splits that lack a genre."""

import math

import pytest

from genre_se.metrics import classification_scores


def test_macro_f1_leaves_out_a_genre_absent_from_test_and_never_predicted():
    scores = classification_scores([0, 1, 0, 1], [0, 1, 0, 1], ["a", "b", "c"])
    assert scores["accuracy"] == 1.0
    assert scores["macro_f1"] == 1.0  # was 2/3: the absent genre counted as F1 = 0
    absent = scores["per_class"]["c"]
    assert absent["support"] == 0 and math.isnan(absent["recall"]) and math.isnan(absent["f1"])
    assert scores["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]  # still every label


def test_a_genre_predicted_but_absent_still_costs_macro_f1():
    scores = classification_scores([0, 1, 0, 1], [0, 1, 2, 1], ["a", "b", "c"])
    assert scores["per_class"]["c"]["precision"] == 0.0 and scores["per_class"]["c"]["f1"] == 0.0
    assert abs(scores["macro_f1"] - (2 / 3 + 1 + 0) / 3) < 1e-12
    never = classification_scores([0, 1, 2], [0, 0, 0], ["a", "b", "c"])["per_class"]["b"]
    assert never["recall"] == 0.0 and never["f1"] == 0.0  # present, never predicted: 0, not NaN


def test_vote_counts_segments_top_genres_and_breaks_ties_by_the_mean():
    import numpy as np

    from genre_se.metrics import aggregate_clips

    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.0, 1.0],  # clip a: mean says 1, two votes of three say 0
                      [0.1, 0.9], [0.6, 0.4]])             # clip b: one vote each; the mean (0.35, 0.65) says 1
    ids, labels = ["a", "a", "a", "b", "b"], [0, 0, 0, 1, 1]
    mean = aggregate_clips(ids, probs, labels)
    vote = aggregate_clips(ids, probs, labels, how="vote")
    assert mean["pred"].tolist() == [1, 1] and vote["pred"].tolist() == [0, 1]  # label order would say 0 for b
    np.testing.assert_allclose(np.stack(vote["probs"]), [[2 / 3, 1 / 3], [0.5, 0.5]])
    assert vote["n_segments"].tolist() == [3, 2] and vote["label"].tolist() == [0, 1]


def test_evaluate_scores_the_clip_rule_evaluate_aggregate_names(tmp_path, monkeypatch):
    """evaluate.aggregate: vote scores what `predict --aggregate vote` answers (the key used to allow only mean)."""
    import numpy as np

    import genre_se.train
    from genre_se.config import load_params
    from genre_se.evaluate import evaluate_rows
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    rows = store.rows("test")
    clip_ids = store.table["clip_id"].to_numpy()[rows]
    truth = store.label_indices[rows]
    n = len(store.labels)
    # every test clip: one segment is sure of the next genre, the others lean to the truth by a margin that adds
    # up to less than that one's, so the mean answers the next genre and the vote the truth
    probs = np.zeros((len(rows), n))
    for clip in np.unique(clip_ids):
        at = np.flatnonzero(clip_ids == clip)
        assert len(at) >= 3  # two segments would tie the vote
        right, other = truth[at[0]], (truth[at[0]] + 1) % n
        probs[at[0], other] = 1.0
        probs[at[1:], right] = 0.6
        probs[at[1:], other] = 0.6 - 0.5 / (len(at) - 1)
    probs /= probs.sum(axis=1, keepdims=True)
    monkeypatch.setattr(genre_se.train, "predict_rows", lambda model, store, rows: probs)
    (tmp_path / "params.yaml").write_text("{}\n")
    assert load_params(tmp_path / "params.yaml", {"evaluate.aggregate": "vote"}).evaluate.aggregate == "vote"
    by_mean, _ = evaluate_rows(None, store, rows)
    by_vote, predictions = evaluate_rows(None, store, rows, aggregate="vote")
    assert by_mean["clip"]["accuracy"] == 0.0 and by_vote["clip"]["accuracy"] == 1.0
    assert (predictions["actual"] == predictions["predicted"]).all()


def test_confusion_matrix_rows_are_the_actual_genre_and_columns_the_predicted_one():
    """evaluate's PNG labels rows "actual" and columns "predicted": two "a" clips (one answered "b") and one "b"
    clip answered "c". A symmetric example cannot tell the orientation, nor precision from recall."""
    scores = classification_scores([0, 0, 1], [0, 1, 2], ["a", "b", "c"])
    assert scores["confusion_matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    a, b, c = (scores["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert (b["precision"], b["recall"], b["support"]) == (0.0, 0.0, 1)
    assert c["precision"] == 0.0 and c["support"] == 0 and math.isnan(c["recall"])
    assert abs(scores["macro_f1"] - (2 / 3 + 0 + 0) / 3) < 1e-12 and abs(scores["accuracy"] - 1 / 3) < 1e-12


def test_clip_aggregation_means_each_clips_own_segments_in_first_seen_order():
    """Interleaved segments of two clips: each clip's distribution is the mean of its rows only, counted once."""
    import numpy as np

    from genre_se.metrics import aggregate_clips

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.0, 1.0]])
    clips = aggregate_clips(["y", "x", "y", "x", "x"], probs, labels=[0, 1, 0, 1, 1])
    assert list(clips.index) == ["y", "x"] and clips["n_segments"].tolist() == [2, 3]
    np.testing.assert_allclose(clips.loc["y", "probs"], [0.8, 0.2])
    np.testing.assert_allclose(clips.loc["x", "probs"], [0.2, 0.8])
    assert clips["pred"].tolist() == [0, 1] and clips["label"].tolist() == [0, 1]


@pytest.mark.parametrize("aggregate", ["mean", "vote"])
def test_evaluate_scores_the_answer_predict_gives_from_tempered_segments(tmp_path, monkeypatch, aggregate):
    """predict aggregates the tempered segment probabilities; a temperature can move a clip's mean (or a tied
    vote's tie-break) to another genre, and evaluate scored the untempered answer."""
    import numpy as np

    import genre_se.train
    from genre_se.calibration import apply_temperature
    from genre_se.evaluate import evaluate_rows
    from genre_se.inference import aggregate_segments
    from genre_se.results import rank_genres
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    rows = store.rows("test")
    clip_ids = store.table["clip_id"].to_numpy()[rows]
    pattern = np.array([[0.90, 0.09, 0.01], [0.02, 0.58, 0.40]])  # mean says 0; at T = 4 the tempered mean says 1
    probs = np.zeros((len(rows), len(store.labels)))
    for clip in np.unique(clip_ids):
        at = np.flatnonzero(clip_ids == clip)
        probs[at[: len(at) // 2 * 2], :3] = np.tile(pattern, (len(at) // 2, 1))
        if len(at) % 2:
            probs[at[-1], :3] = [0.3, 0.3, 0.4]  # its vote ties all three; it barely moves the means
    monkeypatch.setattr(genre_se.train, "predict_rows", lambda model, store, rows: probs)
    _, predictions = evaluate_rows(None, store, rows, temperature=4.0, aggregate=aggregate)
    expected, untempered = [], []
    for clip in predictions["clip_id"]:
        tempered = apply_temperature(probs[clip_ids == clip], 4.0)
        expected.append(store.labels[rank_genres(aggregate_segments(tempered, aggregate), tempered.mean(axis=0))[0]])
        plain = probs[clip_ids == clip]
        untempered.append(store.labels[rank_genres(aggregate_segments(plain, aggregate), plain.mean(axis=0))[0]])
    assert predictions["predicted"].tolist() == expected
    assert expected != untempered  # the example can tell the two
