"""Model bundle: atomic save, safe-mode load with identical predictions, and a ModelError for every defect."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from genre_se.fileio import umask

import genre_se
from genre_se import bundle as bundle_module
from genre_se.bundle import FORMAT_VERSION, load_bundle, save_bundle
from genre_se.config import FeatureConfig, ModelConfig
from genre_se.errors import ConfigError, ModelError
from genre_se.model import build_model, embedding_model, se_blocks

SHAPE = (16, 16, 1)
LABELS = ["blues", "jazz", "metal"]
FEATURES = FeatureConfig(n_mels=16, segment_frames=16, segment_hop=8)
CONFIG = ModelConfig(filters=[4, 8], reduction_ratios=[2, 31.43], dropout=0.0)


@pytest.fixture()
def model():
    keras.utils.set_random_seed(7)
    return build_model(CONFIG, SHAPE, len(LABELS), mean=-42.5, std=17.25)


@pytest.fixture()
def batch():
    return np.random.default_rng(0).normal(-40.0, 15.0, size=(5, *SHAPE)).astype("float32")


@pytest.fixture()
def saved(tmp_path, model):
    return save_bundle(tmp_path / "bundle", model, LABELS, FEATURES, CONFIG, extra={"val_accuracy": 0.5})


def test_round_trip_gives_identical_predictions(tmp_path, model, batch, saved):
    assert saved == tmp_path / "bundle"
    assert sorted(p.name for p in saved.iterdir()) == ["bundle.json", "model.keras"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left behind
    assert saved.stat().st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's 0700
    loaded = load_bundle(saved)
    np.testing.assert_array_equal(loaded.model.predict(batch, verbose=0), model.predict(batch, verbose=0))
    np.testing.assert_array_equal(
        embedding_model(loaded.model).predict(batch, verbose=0), embedding_model(model).predict(batch, verbose=0)
    )
    assert loaded.labels == LABELS
    assert loaded.features == dataclasses.asdict(FEATURES)
    assert loaded.feature_config == FEATURES
    assert loaded.model_config == dataclasses.asdict(CONFIG)
    assert loaded.extra == {"val_accuracy": 0.5}
    assert loaded.normalisation == (-42.5, 17.25)
    assert loaded.input_shape == SHAPE
    assert [b.hidden_units for b in se_blocks(loaded.model)] == [2, 1]
    assert [b.ratio for b in se_blocks(loaded.model)] == [2.0, 31.43]
    meta = json.loads((saved / "bundle.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["genre_se_version"] == genre_se.__version__ == loaded.genre_se_version
    assert set(meta) == {
        "format_version", "labels", "features", "model_config", "genre_se_version", "created", "extra"
    }



def test_labels_keep_the_models_output_order_not_an_alphabetical_one(tmp_path, model):
    """Label i names output i: a bundle of genres in any other order than the alphabet's (a manifest's labels, a
    store built with its own order) must load them in that order, or every prediction is named wrongly."""
    order = ["metal", "blues", "jazz"]
    loaded = load_bundle(save_bundle(tmp_path / "bundle", model, order, FEATURES, CONFIG))
    assert loaded.labels == order
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["labels"] == order

def test_a_trained_model_is_saved_without_its_optimizer_state(tmp_path, model, batch):
    """Adam's moments would triple the file and serve no prediction; the weights and BN statistics stay."""
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    y = np.eye(len(LABELS), dtype="float32")[[0, 1, 2, 0, 1]]
    model.fit(batch, y, epochs=2, verbose=0)  # moving statistics and optimizer moments are no longer initial
    loaded = load_bundle(save_bundle(tmp_path / "trained", model, LABELS, FEATURES, CONFIG))
    np.testing.assert_allclose(loaded.model.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)
    assert getattr(loaded.model, "optimizer", None) is None
    import io
    import zipfile

    import h5py

    model.save(tmp_path / "with_optimizer.keras")  # what a plain save would have shipped
    for path, has_optimizer in ((tmp_path / "with_optimizer.keras", True), (tmp_path / "trained/model.keras", False)):
        with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
            assert ("optimizer" in h5) == has_optimizer


def test_configs_may_be_given_as_dicts(tmp_path, model):
    path = save_bundle(tmp_path / "b", model, LABELS, dataclasses.asdict(FEATURES), {"filters": [4, 8]})
    loaded = load_bundle(path)
    assert loaded.model_config == dataclasses.asdict(ModelConfig(filters=[4, 8]))
    assert loaded.extra == {}


def test_save_validates_before_writing(tmp_path, model):
    target = tmp_path / "b"
    with pytest.raises(ModelError, match="2 labels but the model outputs 3"):
        save_bundle(target, model, LABELS[:2], FEATURES, CONFIG)
    with pytest.raises(ModelError, match="duplicates"):
        save_bundle(target, model, ["a", "a", "b"], FEATURES, CONFIG)
    with pytest.raises(ConfigError, match=r"features\.n_mels"):
        save_bundle(target, model, LABELS, {"n_mels": 0}, CONFIG)
    with pytest.raises(ModelError, match="not JSON-serialisable"):
        save_bundle(target, model, LABELS, FEATURES, CONFIG, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_an_existing_bundle(tmp_path, model, saved):
    other = build_model(CONFIG, SHAPE, 3, mean=1.0, std=2.0)
    save_bundle(saved, other, ["x", "y", "z"], FEATURES, CONFIG)
    loaded = load_bundle(saved)
    assert loaded.labels == ["x", "y", "z"] and loaded.normalisation == (1.0, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_failed_save_keeps_the_old_bundle(tmp_path, model, batch, saved, monkeypatch):
    def disk_full(model, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module, "_save_keras_model", disk_full)
    with pytest.raises(ModelError, match="cannot write the model bundle"):
        save_bundle(saved, model, ["x", "y", "z"], FEATURES, CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    loaded = load_bundle(saved)
    assert loaded.labels == LABELS
    np.testing.assert_array_equal(loaded.model.predict(batch, verbose=0), model.predict(batch, verbose=0))


def test_failed_swap_restores_the_old_bundle(tmp_path, model, saved, monkeypatch):
    real_replace = os.replace

    def failing_swap(src, dst):
        name = Path(src).name
        if Path(dst) == saved and name.startswith(".bundle.") and ".old-" not in name:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_swap)
    with pytest.raises(ModelError, match="cannot write the model bundle"):
        save_bundle(saved, model, ["x", "y", "z"], FEATURES, CONFIG)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert load_bundle(saved).labels == LABELS


def test_save_refuses_to_replace_what_is_not_a_bundle(tmp_path, model):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not a model bundle; refusing"):
        save_bundle(folder, model, LABELS, FEATURES, CONFIG)
    assert (folder / "todo.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        save_bundle(a_file, model, LABELS, FEATURES, CONFIG)
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory is fine (e.g. made by DVC)
    save_bundle(empty, model, LABELS, FEATURES, CONFIG)
    assert load_bundle(empty).labels == LABELS


# --------------------------------------------------------------------------------------------------
# Loading a damaged bundle


def _edit_meta(path: Path, edit) -> None:
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize(
    "damage, file_name, message",
    [
        (lambda p: (p / "bundle.json").unlink(), "bundle.json", "missing; not a genre-se model bundle"),
        (lambda p: (p / "model.keras").unlink(), "model.keras", "missing; the model bundle is incomplete"),
        (lambda p: _edit_meta(p, lambda m: m.pop("format_version")), "bundle.json", "no format_version"),
        (lambda p: _edit_meta(p, _set("format_version", 2)), "bundle.json", "format_version 2 is not supported"),
        (lambda p: _edit_meta(p, _set("format_version", "1")), "bundle.json", "format_version '1' is not supp"),
        (lambda p: _edit_meta(p, _set("labels", ["a", "b"])), "bundle.json", "2 labels but the model outputs 3"),
        (lambda p: _edit_meta(p, _set("labels", "abc")), "bundle.json", "labels must be a list"),
        (lambda p: _edit_meta(p, _set("features", {"n_mels": 0})), "bundle.json", r"features\.n_mels"),
        (lambda p: _edit_meta(p, _set("model_config", None)), "bundle.json", "model_config must be a JSON obj"),
        (lambda p: (p / "bundle.json").write_text('{"format_version": 1, "lab'), "bundle.json", "not valid JSON"),
        (lambda p: (p / "bundle.json").write_text("[1, 2]"), "bundle.json", "expected a JSON object"),
        (lambda p: (p / "model.keras").write_bytes(b"\x00garbage" * 50), "model.keras", "cannot load the Keras"),
        (
            lambda p: (p / "model.keras").write_bytes((p / "model.keras").read_bytes()[:2000]),
            "model.keras",
            "cannot load the Keras model",
        ),
    ],
)
def test_damaged_bundle_raises_model_error_naming_the_file(saved, damage, file_name, message):
    damage(saved)
    with pytest.raises(ModelError, match=message) as error:
        load_bundle(saved)
    assert str(saved / file_name) in str(error.value)


def test_missing_bundle_directory(tmp_path):
    with pytest.raises(ModelError, match="model bundle not found"):
        load_bundle(tmp_path / "nowhere")


def test_load_uses_keras_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    doubled = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    unsafe = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(doubled))
    path = save_bundle(tmp_path / "unsafe", unsafe, LABELS, FEATURES, CONFIG)
    with pytest.raises(ModelError, match="cannot load the Keras model.*Lambda"):
        load_bundle(path)
    keras.saving.load_model(path / "model.keras", safe_mode=False, compile=False)  # the file itself is fine
