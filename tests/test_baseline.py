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


def test_features_equal_librosas_defaults_computed_from_the_signal_feature_by_feature():
    """One shared STFT and log-mel spectrogram must give what every librosa feature gives from ``y`` itself."""
    import librosa

    rng = np.random.default_rng(2)
    t = np.arange(22050 * 4) / 22050
    y = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.standard_normal(len(t))
         ).astype(np.float32)
    sr = 22050
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20)
    frames = np.concatenate([mfcc, librosa.feature.delta(mfcc), librosa.feature.spectral_centroid(y=y, sr=sr),
                             librosa.feature.spectral_bandwidth(y=y, sr=sr), librosa.feature.spectral_rolloff(y=y, sr=sr),
                             librosa.feature.spectral_flatness(y=y), librosa.feature.spectral_contrast(y=y, sr=sr),
                             librosa.feature.zero_crossing_rate(y), librosa.feature.rms(y=y)])
    tempo = librosa.feature.tempo(onset_envelope=librosa.onset.onset_strength(y=y, sr=sr), sr=sr)[0]
    expected = np.concatenate([frames.mean(1), frames.std(1), [tempo]])
    np.testing.assert_allclose(clip_features(y), expected, rtol=1e-5, atol=1e-6)


def test_cross_validation_never_trains_on_clips_left_out_of_every_fold():
    """Rows of fold -1 (excluded clips: unreadable, or outside the CV) take no part in any fold's training: here
    they are points on label 0's side labelled 1, so an SVM trained with them would miss label 0's clips."""
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [6.0, 6.0]])
    labels = np.repeat([0, 1], 6)
    features = centres[labels] + 0.3 * rng.standard_normal((12, 2))
    folds = np.tile(np.arange(3), 4)
    decoys = centres[0] + 0.3 * rng.standard_normal((40, 2))
    scores = cross_validate(np.vstack([features, decoys]), np.r_[labels, np.ones(40, int)],
                            np.r_[folds, -np.ones(40, int)])
    assert scores["n_clips"].sum() == 12 and list(scores["fold"]) == [0, 1, 2]
    assert (scores["clip_accuracy"] == 1.0).all()
