"""The MFCC + SVM baseline: fixed-length features, and it learns an easy problem through the CV loop."""

import numpy as np

from genre_se.baseline import clip_features, cross_validate


def test_features_have_fixed_length_whatever_the_clip_length():
    rng = np.random.default_rng(0)
    a = clip_features(rng.standard_normal(22050).astype(np.float32) * 0.1)
    b = clip_features(rng.standard_normal(22050 * 3).astype(np.float32) * 0.1)
    tiny = clip_features(np.zeros(100, np.float32))
    assert a.shape == b.shape == tiny.shape and a.ndim == 1 and np.all(np.isfinite(a))


def test_cross_validation_separates_tones_and_tests_each_clip_once():
    rng = np.random.default_rng(1)
    t = np.arange(22050) / 22050
    feats, labels = [], []
    for label, freq in enumerate([220.0, 1760.0]):
        for _ in range(6):
            y = np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t) + 0.05 * rng.standard_normal(len(t))
            feats.append(clip_features(y.astype(np.float32)))
            labels.append(label)
    folds = np.tile(np.arange(3), 4)
    scores = cross_validate(np.stack(feats), np.array(labels), folds)
    assert scores["n_clips"].sum() == 12 and len(scores) == 3
    assert scores["clip_accuracy"].mean() > 0.9
