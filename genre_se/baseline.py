"""The classic baseline the SE-CNN must beat: clip-level MFCC and spectral statistics with an SVM.

After Tzanetakis & Cook (2002): per clip, the mean and standard deviation over frames of 20 MFCCs, their
deltas, spectral centroid, bandwidth, roll-off, flatness, contrast, zero-crossing rate and RMS, plus the
tempo; standardised, then an RBF SVM (scikit-learn). Same clips, same folds as the CNN, so the comparison
is like for like.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .audio import load_audio
from .errors import DatasetError

SAMPLE_RATE = 22050


def clip_features(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One fixed-length vector of frame statistics for a mono clip."""
    import librosa

    min_len = 16 * 512  # enough frames for the 9-frame delta window
    if len(y) < min_len:
        y = np.pad(y, (0, min_len - len(y)))
    # one STFT and one log-mel spectrogram serve every feature (each would otherwise compute its own: 2x the
    # time); the values are those of librosa's defaults from y (n_fft 2048, hop 512, Hann, centred)
    magnitude = np.abs(librosa.stft(y))
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=magnitude**2, sr=sr))
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=20)
    frames = [
        mfcc,
        librosa.feature.delta(mfcc),
        librosa.feature.spectral_centroid(S=magnitude, sr=sr),
        librosa.feature.spectral_bandwidth(S=magnitude, sr=sr),
        librosa.feature.spectral_rolloff(S=magnitude, sr=sr),
        librosa.feature.spectral_flatness(S=magnitude),
        librosa.feature.spectral_contrast(S=magnitude, sr=sr),
        librosa.feature.zero_crossing_rate(y),
        librosa.feature.rms(y=y),
    ]
    stacked = np.concatenate(frames, axis=0)
    onset = librosa.onset.onset_strength(S=log_mel, sr=sr)
    tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr))[0])
    return np.concatenate([stacked.mean(axis=1), stacked.std(axis=1), [tempo]]).astype(np.float64)


def dataset_features(index: pd.DataFrame, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Feature vectors for every row of an index (readable clips only)."""
    return np.stack([clip_features(load_audio(path, sr), sr) for path in index["path"]])


def make_classifier(seed: int = 0):
    """Standardise, then an RBF SVM."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale", random_state=seed))


def cross_validate(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Clip accuracy and macro-F1 per fold (each fold tested once, trained on the others)."""
    from sklearn.metrics import accuracy_score, f1_score

    rows = []
    for f in np.unique(folds[folds >= 0]):
        test, train = folds == f, (folds != f) & (folds >= 0)
        if len(np.unique(labels[train])) < 2:
            raise DatasetError(f"fold {f}: fewer than two genres to train on")
        clf = make_classifier(seed).fit(features[train], labels[train])
        pred = clf.predict(features[test])
        rows.append({
            "fold": int(f),
            "clip_accuracy": float(accuracy_score(labels[test], pred)),
            "clip_macro_f1": float(f1_score(labels[test], pred, average="macro", zero_division=0)),
            "n_clips": int(test.sum()),
        })
    return pd.DataFrame(rows)
