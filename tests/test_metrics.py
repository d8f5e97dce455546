"""classification_scores on test splits that lack a genre."""

import math

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
