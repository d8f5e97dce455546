"""The model shipped inside the package: complete, safe to load, calibrated, described by MODEL.md, used by
`genre-se predict` on a fresh machine (no models/bundle) and installed only through `genre-se install-model`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genre_se.errors import ModelError
from genre_se.inference import SHIPPED_BUNDLE
from genre_se.litert import file_sha1

ROOT = Path(__file__).resolve().parents[1]
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def test_the_package_ships_a_complete_bundle():
    from genre_se.shipped import OPTIONAL_FILES, SHIPPED_FILES

    assert SHIPPED_BUNDLE.is_dir(), "genre_se/pretrained/gtzan-mini is missing: run scripts/train_shipped_model.sh"
    names = {p.name for p in SHIPPED_BUNDLE.iterdir()}
    assert set(SHIPPED_FILES) <= names <= set(SHIPPED_FILES + OPTIONAL_FILES)  # no state
    assert "familiarity.npz" in names and "svm.npz" not in names  # the CNN alone, with its unfamiliar flag
    assert sum(p.stat().st_size for p in SHIPPED_BUNDLE.iterdir()) < 16 * 2**20
    assert '"pretrained/*/*"' in (ROOT / "pyproject.toml").read_text()  # package data, so pip installs it


def test_the_shipped_model_loads_safely_on_both_runtimes_and_agrees():
    from genre_se.bundle import load_bundle
    from genre_se.litert import load_litert_bundle

    keras_bundle = load_bundle(SHIPPED_BUNDLE)  # Keras safe mode
    fast = load_litert_bundle(SHIPPED_BUNDLE)  # raises if the export is stale
    assert keras_bundle.labels == fast.labels == GTZAN_GENRES
    calibration = keras_bundle.extra["calibration"]
    assert calibration["fit_on"] == "val" and 0.05 < calibration["temperature"] < 20
    # the package ships the int8 export (twice the files/s; same top-1 as float32 on the 71 gtzan-mini clips)
    assert fast.export["quantize"] == "int8" and fast.export["parity"]["max_abs_diff"]["genre"] < 0.05
    x = np.random.default_rng(0).normal(-30, 15, size=(16, *fast.input_shape)).astype("float32")
    exact, quantized = keras_bundle.model.predict(x, verbose=0), fast.model(x)
    np.testing.assert_allclose(quantized, exact, atol=0.05)
    top2 = np.sort(exact, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1  # int8 may swap a near-tie, never a clear winner
    assert (quantized.argmax(axis=1) == exact.argmax(axis=1))[clear].all()


def test_the_shipped_models_softmax_keeps_its_own_temperature():
    """The shipped bundle has no head and no fusion and predates cnn_temperature: its temperature was fitted on its
    softmax, so prediction applies it unchanged, without a note."""
    from genre_se.inference import GenreClassifier

    meta = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text())
    assert "cnn_temperature" not in meta["extra"]["calibration"]
    for switch in ({}, {"embedding_svm": False, "fusion": False}):
        clf = GenreClassifier.load(SHIPPED_BUNDLE, **switch)
        assert clf.temperature == meta["extra"]["calibration"]["temperature"] and clf.calibration_note is None
        assert clf.provenance()["calibration"] == {"temperature": clf.temperature, "fit_on": "val",
                                                   "uncertain_below": 0.4}


def test_model_card_describes_this_very_model():
    card = (ROOT / "MODEL.md").read_text()
    meta = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text())
    # the card names the checksum of the model it describes: retrain without updating it and this fails
    assert file_sha1(SHIPPED_BUNDLE / "model.keras")[:12] in card
    assert f"T = {meta['extra']['calibration']['temperature']:.2f}" in card
    assert f"distance {meta['extra']['familiarity']['threshold']:.1f}" in card  # the unfamiliar threshold
    for section in ("Training data", "k-fold", "real-clips", "Calibration", "Known limits"):
        assert section.lower() in card.lower(), section


def test_fresh_install_predicts_with_the_shipped_model(tmp_path):
    """A new user: no models/ here, no --model; the answer comes from the shipped model, and it says so."""
    sr = 22050
    t = np.arange(6 * sr) / sr
    song = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t))
    sf.write(tmp_path / "song.wav", song.astype("float32"), sr)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "genre_se", "predict", "song.wav", "--format", "json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "using the shipped default model" in done.stderr
    result = json.loads(done.stdout)
    assert result["model"]["bundle"]["shipped"] is True and result["model"]["runtime"]["name"] == "litert"
    (first,) = result["predictions"]
    assert set(first["probabilities"]) == set(GTZAN_GENRES) and first["genre"] in GTZAN_GENRES
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4 and isinstance(first["uncertain"], bool)
    # the shipped model carries familiarity statistics: every answer says whether the recording is unlike its data
    assert result["model"]["familiarity"]["n_reference"] == 10 and isinstance(first["unfamiliar"], bool)
    assert first["distance"] > 0 and first["uncertain"] >= first["unfamiliar"]


def test_install_model_checks_the_bundle_then_copies_it_atomically(tmp_path):
    from genre_se.shipped import install_shipped

    target = tmp_path / "site" / "gtzan-mini"
    installed = install_shipped(SHIPPED_BUNDLE, target, quantize="none")  # as it is: a verbatim copy
    assert installed == target
    assert all(file_sha1(target / name) == file_sha1(SHIPPED_BUNDLE / name) for name in os.listdir(SHIPPED_BUNDLE))
    install_shipped(SHIPPED_BUNDLE, tmp_path / "int8")  # the default re-exports with int8 weights, checked
    assert json.loads((tmp_path / "int8" / "litert.json").read_text())["quantize"] == "int8"
    assert file_sha1(tmp_path / "int8" / "model.keras") == file_sha1(SHIPPED_BUNDLE / "model.keras")

    stale = tmp_path / "stale"
    shutil.copytree(SHIPPED_BUNDLE, stale)
    (stale / "model.tflite").unlink()
    with pytest.raises(ModelError, match="model.tflite"):
        install_shipped(stale, target)
    assert file_sha1(target / "model.tflite") == file_sha1(SHIPPED_BUNDLE / "model.tflite")  # untouched

    meta = json.loads((stale / "bundle.json").read_text())
    shutil.copy2(SHIPPED_BUNDLE / "model.tflite", stale / "model.tflite")
    del meta["extra"]["calibration"]
    (stale / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="calibration"):
        install_shipped(stale, target)
    assert not re.search(r"\.gtzan-mini\.", " ".join(os.listdir(target.parent)))  # no temp dir left behind


def test_install_model_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    """`install-model B --target ~/models` meant "into that folder": replacing it would delete the user's files."""
    from genre_se.shipped import install_shipped

    mine = tmp_path / "models"
    (mine / "other").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ModelError, match="not a model bundle"):
        install_shipped(SHIPPED_BUNDLE, mine, quantize="none")
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "other").is_dir()
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(ModelError, match="not a directory"):
        install_shipped(SHIPPED_BUNDLE, a_file, quantize="none")
    assert a_file.read_text() == "mine"
    installed = install_shipped(SHIPPED_BUNDLE, tmp_path / "gtzan-mini", quantize="none")
    install_shipped(SHIPPED_BUNDLE, installed, quantize="none")  # an installed model is replaced, as before


def test_train_script_installs_into_this_checkout(tmp_path):
    """scripts/train_shipped_model.sh says it installs into genre_se/pretrained/gtzan-mini, but it called
    `install-model` without --target: the model went to the package of whichever genre_se the command imports
    (another checkout's, with a shared editable environment, or site-packages), not this checkout's."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "fake-genre-se"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "GENRE_SE": str(fake), "WORK": str(tmp_path / "work"), "INSTALL": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_shipped_model.sh"), "-S", "train.epochs=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[1] for c in calls] == ["prepare", "features", "train", "evaluate", "install-model"]
    assert all("-S train.epochs=1" in c for c in calls[:4])
    install = calls[-1].split()
    target = install[install.index("--target") + 1]
    assert (ROOT / target).resolve() == SHIPPED_BUNDLE.resolve()  # the script runs from the repository root
