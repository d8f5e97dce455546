"""Training building blocks: model selection rule, normalisation statistics, the tf.data input."""

import numpy as np
import pandas as pd

from genre_se.config import FeatureConfig
from genre_se.feature_store import FeatureStore
from genre_se.train import _score, make_dataset, standardization_stats


def test_clip_accuracy_ties_are_broken_by_validation_loss():
    a = _score({"clip_accuracy": 0.8, "loss": 0.9}, {}, monitor_max=True)
    b = _score({"clip_accuracy": 0.8, "loss": 0.5}, {}, monitor_max=True)
    c = _score({"clip_accuracy": 0.85, "loss": 2.0}, {}, monitor_max=True)
    assert b > a and c > b
    # monitoring the loss: lower loss wins whatever the accuracy
    assert _score({"clip_accuracy": 0.1, "loss": 0.4}, {}, False) > _score({"clip_accuracy": 0.9, "loss": 0.5}, {}, False)
    # no validation split: the training loss decides
    assert _score({}, {"loss": 0.3}, True) > _score({}, {"loss": 0.4}, True)


def test_standardization_stats_match_numpy_on_the_selected_rows():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4, 5, 1)).astype(np.float16)
    rows = np.array([3, 1, 40, 41, 7, 9, 11])
    mean, std = standardization_stats(data, rows, chunk=3)
    ref = data[np.sort(rows)].astype(np.float64)
    assert abs(mean - ref.mean()) < 1e-9
    assert abs(std - ref.std()) < 1e-9


def test_dataset_yields_the_requested_rows_with_one_hot_labels(tmp_path):
    segments = np.arange(12 * 2 * 3, dtype=np.float16).reshape(12, 2, 3, 1)
    table = pd.DataFrame({"segment": range(12), "clip_id": [f"c{i // 2}" for i in range(12)],
                          "label_index": [i % 3 for i in range(12)], "split": "train"})
    store = FeatureStore(tmp_path, segments, table, ["a", "b", "c"], FeatureConfig())
    rows = np.array([10, 2, 5, 7])
    seen_x, seen_y = [], []
    for x, y in make_dataset(store, rows, 3, shuffle=True, seed=1, n_classes=3):
        seen_x.append(x.numpy()[:, 0, 0, 0])
        seen_y.append(y.numpy())
    firsts = np.concatenate(seen_x)
    assert sorted(firsts.tolist()) == sorted(segments[rows, 0, 0, 0].astype(np.float32).tolist())
    labels = np.concatenate(seen_y)
    for value, onehot in zip(firsts, labels):
        row = int(value) // 6
        assert onehot.argmax() == row % 3 and onehot.sum() == 1.0
