"""Shared fixtures: tiny generated datasets and parameter files, so tests never need real data."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_PARAMS = {
    "features.sample_rate": 8000,
    "features.n_fft": 256,
    "features.hop_length": 128,
    "features.n_mels": 16,
    "features.segment_frames": 16,
    "features.segment_hop": 8,
    "features.workers": 1,
    "model.filters": [4, 8],
    "model.dropout": 0.0,
    "model.reduction_ratios": 2,
    "train.epochs": 3,
    "train.batch_size": 16,
    "train.learning_rate": 0.01,
    "train.patience": 5,
    "tune.max_trials": 2,
    "tune.epochs": 1,
}


def write_params(path: Path, overrides: dict) -> Path:
    """params.yaml = the shipped one with dotted overrides applied."""
    from genre_se.config import set_dotted

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    path.write_text(yaml.safe_dump(raw))
    return path


def make_tone_dataset(root: Path, labels=("low", "mid", "high"), per_label=6, seconds=1.5, sr=8000, seed=0):
    """Folder-per-genre tree of noisy tones, one pitch band per label: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    base = {label: 200 * 2 ** (2 * i) for i, label in enumerate(labels)}
    t = np.arange(int(seconds * sr)) / sr
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(per_label):
            f = base[label] * rng.uniform(0.9, 1.1)
            y = 0.5 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(root / label / f"{label}.{k:05d}.wav", y.astype(np.float32), sr, subtype="PCM_16")
    return root


def split_tone_store(root: Path, seed: int, **store_options):
    """A feature store of 15 tone clips (3 labels) with train, valid (clips 0, 1) and test (clip 4) splits, as
    the train stage sees one; returns the store and its index. ``store_options`` go to ``build_store``."""
    import pandas as pd

    from genre_se.feature_store import build_store
    from tests.test_inference import FEATURES

    files = sorted(make_tone_dataset(root / "tones", per_label=5, seconds=1.5, seed=seed).rglob("*.wav"))
    split = {"0": "valid", "1": "valid", "4": "test"}
    index = pd.DataFrame({"clip_id": [f.stem for f in files], "path": [str(f) for f in files],
                          "label": [f.parent.name for f in files], "status": "ok",
                          "split": [split.get(f.stem[-1], "train") for f in files]})
    store, failures = build_store(index, FEATURES, root / "features", root / "cache", workers=1, **store_options)
    assert failures.empty
    return store, index


@pytest.fixture
def tone_dataset(tmp_path):
    return make_tone_dataset(tmp_path / "tones")


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
