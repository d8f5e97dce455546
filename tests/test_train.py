"""Training building blocks: model selection rule, normalisation statistics, the tf.data input."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

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
    # with the model's front end: the statistics of what the standardisation layer receives
    mean, std = standardization_stats(data, rows, chunk=3, transform=lambda block: 2.0 * block[:, :2] + 1.0)
    assert abs(mean - (2.0 * ref[:, :2] + 1.0).mean()) < 1e-6
    assert abs(std - (2.0 * ref[:, :2]).std()) < 1e-6


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


def test_every_epoch_covers_each_row_once_in_a_new_order_ending_with_the_short_batch(tmp_path):
    """make_dataset over several epochs: each epoch is steps_per_epoch batches holding every requested row once
    (the last batch the short one), a shuffle draws a new order every epoch, and shuffle=False keeps the given
    order."""
    from genre_se.train import steps_per_epoch

    segments = np.arange(13, dtype=np.float16).reshape(13, 1, 1, 1) * np.ones((1, 2, 3, 1), np.float16)
    table = pd.DataFrame({"segment": range(13), "clip_id": [f"c{i}" for i in range(13)],
                          "label_index": [i % 2 for i in range(13)], "split": "train"})
    store = FeatureStore(tmp_path, segments, table, ["a", "b"], FeatureConfig())
    rows = np.array([12, 0, 3, 4, 5, 7, 8, 9, 10, 11])
    steps = steps_per_epoch(len(rows), 4)
    assert steps == 3
    batches = [x.numpy()[:, 0, 0, 0].astype(int).tolist()
               for x, _ in make_dataset(store, rows, 4, shuffle=True, seed=2, n_classes=2, epochs=(0, 4))]
    assert len(batches) == 4 * steps
    epochs = [batches[e * steps : (e + 1) * steps] for e in range(4)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(row for batch in epoch for row in batch) == sorted(rows.tolist())  # every row once
    orders = {tuple(tuple(b) for b in epoch) for epoch in epochs}
    assert len(orders) == 4  # a new order every epoch
    plain = [x.numpy()[:, 0, 0, 0].astype(int).tolist()
             for x, _ in make_dataset(store, rows, 4, shuffle=False, seed=2, n_classes=2, epochs=(0, 2))]
    given = [sorted(rows[i : i + 4].tolist()) for i in range(0, 10, 4)]  # each batch is read in row order
    assert plain == given + given


def test_the_deterministic_pipeline_logs_no_tensorflow_error_line(tmp_path):
    """Under op determinism (train.deterministic, the default) tf.data's make_deterministic rewrite turned the
    pipeline's parallel maps into MapDataset nodes still carrying `use_unbounded_threadpool`, and TensorFlow logged
    an E-level "NodeDef mentions attribute use_unbounded_threadpool" line on every training. Run in a child
    process: determinism cannot be switched off again, and the line is written by C++ to the process's stderr."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import numpy as np, pandas as pd, tensorflow as tf\n"
        "from genre_se.config import FeatureConfig\n"
        "from genre_se.feature_store import FeatureStore\n"
        "from genre_se.train import enable_determinism, make_dataset\n"
        "enable_determinism()\n"
        "tf.random.set_seed(0)\n"
        "segments = np.zeros((8, 2, 3, 1), np.float16)\n"
        "table = pd.DataFrame({'segment': range(8), 'clip_id': [f'c{i}' for i in range(8)],\n"
        "                      'label_index': [i % 2 for i in range(8)], 'split': 'train'})\n"
        f"store = FeatureStore({str(tmp_path)!r}, segments, table, ['a', 'b'], FeatureConfig())\n"
        "ds = make_dataset(store, np.arange(8), 4, shuffle=True, seed=1, n_classes=2, gain_db=3.0)\n"
        "print(sum(1 for _ in ds))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the package's default level
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "2", proc.stderr
    assert "use_unbounded_threadpool" not in proc.stderr, proc.stderr


def test_the_same_seed_trains_the_same_weights(tmp_path, monkeypatch):
    """train.deterministic (the default): two trainings with one seed give identical weights, augmentations on
    (without op determinism, a parallel input pipeline and threaded kernels made them differ by 0.17)."""
    import genre_se.train
    from genre_se.config import load_params
    from genre_se.feature_store import build_store
    from genre_se.train import train_model
    from tests.conftest import TINY_PARAMS, make_tone_dataset, write_params
    from tests.test_inference import FEATURES

    files = sorted(make_tone_dataset(tmp_path / "tones", per_label=4, seconds=1.5, seed=3).rglob("*.wav"))
    index = pd.DataFrame({"clip_id": [f.stem for f in files], "path": [str(f) for f in files],
                          "label": [f.parent.name for f in files], "status": "ok",
                          "split": ["valid" if f.stem.endswith("0") else "train" for f in files]})
    store, _ = build_store(index, FEATURES, tmp_path / "features", tmp_path / "cache", workers=1)
    params = load_params(write_params(tmp_path / "params.yaml", {
        **TINY_PARAMS, "train.epochs": 2, "train.spec_augment": True, "train.mixup_alpha": 0.2, "train.gain_db": 6.0}))
    assert params.train.deterministic is True

    def weights(seed, state):
        result = train_model(store, params.model, params.train, train_rows=store.rows("train"),
                             valid_rows=store.rows("valid"), seed=seed, state_dir=tmp_path / state)
        return np.concatenate([w.ravel() for w in result.model.get_weights()])

    first, again, other = weights(42, "a"), weights(42, "b"), weights(43, "c")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)  # the seed still matters
    # false leaves TensorFlow alone (it cannot be switched off once on, so only the call is checked)
    calls = []
    monkeypatch.setattr(genre_se.train, "enable_determinism", lambda: calls.append(1))
    off = dataclasses.replace(params.train, deterministic=False, epochs=1)
    train_model(store, params.model, off, train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1,
                state_dir=tmp_path / "d")
    assert calls == []
    train_model(store, params.model, dataclasses.replace(off, deterministic=True), train_rows=store.rows("train"),
                valid_rows=store.rows("valid"), seed=1, state_dir=tmp_path / "e")
    assert calls == [1]


def test_the_training_time_of_a_resumed_run_counts_its_earlier_epochs(tmp_path):
    """An interrupted run resumes; the time it reports is its fitting time over both sessions, not only the
    resumed epochs (the study's training time per model would otherwise shrink whenever a run was resumed)."""
    import json

    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.feature_store import build_store
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import make_tone_dataset
    from tests.test_inference import FEATURES

    files = sorted(make_tone_dataset(tmp_path / "tones", per_label=3, seconds=1.5, seed=5).rglob("*.wav"))
    index = pd.DataFrame({"clip_id": [f.stem for f in files], "path": [str(f) for f in files],
                          "label": [f.parent.name for f in files], "status": "ok", "split": "train"})
    store, _ = build_store(index, FEATURES, tmp_path / "features", tmp_path / "cache", workers=1)
    model, rows, state = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2), store.rows("train"), tmp_path / "s"
    first = train_model(store, model, TrainConfig(epochs=2, patience=5), train_rows=rows, valid_rows=rows[:0],
                        seed=1, state_dir=state)
    saved = json.loads((state / STATE_FILE).read_text())
    assert first.resumed_from == 0 and first.train_seconds == saved["train_seconds"] > 0
    # the session before took much longer than this one will (as if interrupted after a long epoch)
    (state / STATE_FILE).write_text(json.dumps({**saved, "train_seconds": 1000.0}))
    resumed = train_model(store, model, TrainConfig(epochs=3, patience=5), train_rows=rows, valid_rows=rows[:0],
                          seed=1, state_dir=state)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 3
    assert 1000.0 < resumed.train_seconds < 1000.0 + 600
    # a state written before the time was recorded resumes too, counting from its resume
    old = json.loads((state / STATE_FILE).read_text())
    del old["train_seconds"]
    (state / STATE_FILE).write_text(json.dumps(old))
    again = train_model(store, model, TrainConfig(epochs=4, patience=5), train_rows=rows, valid_rows=rows[:0],
                        seed=1, state_dir=state)
    assert again.resumed_from == 3 and 0 < again.train_seconds < 600


def test_a_state_folder_holding_other_files_is_refused_not_deleted(tmp_path):
    """`genre-se train --state ~/work`: the state folder is deleted when training starts afresh and when it
    ends, so a folder holding anything but a training state is refused before any work."""
    import pytest

    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.errors import OutputError
    from genre_se.feature_store import build_store
    from genre_se.train import train_model
    from tests.conftest import make_tone_dataset
    from tests.test_inference import FEATURES

    files = sorted(make_tone_dataset(tmp_path / "tones", per_label=2, seconds=1.0, seed=5).rglob("*.wav"))
    index = pd.DataFrame({"clip_id": [f.stem for f in files], "path": [str(f) for f in files],
                          "label": [f.parent.name for f in files], "status": "ok", "split": "train"})
    store, _ = build_store(index, FEATURES, tmp_path / "features", tmp_path / "cache", workers=1)
    model, rows = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2), store.rows("train")
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a training state"):
        train_model(store, model, TrainConfig(epochs=1), train_rows=rows, valid_rows=rows[:0], seed=1, state_dir=mine)
    assert (mine / "notes.txt").read_text() == "precious"
    state = tmp_path / "state"
    train_model(store, model, TrainConfig(epochs=1), train_rows=rows, valid_rows=rows[:0], seed=1, state_dir=state)
    train_model(store, model, TrainConfig(epochs=2), train_rows=rows, valid_rows=rows[:0], seed=1, state_dir=state)


def test_training_state_key_changes_with_the_store_content(tmp_path):
    """An interrupted train run must not resume on a feature store of other audio/labels (same counts)."""
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import _state_key
    from tests.conftest import split_tone_store

    a, _ = split_tone_store(tmp_path / "a", seed=0)
    b, _ = split_tone_store(tmp_path / "b", seed=1)
    assert not np.array_equal(np.asarray(a.segments), np.asarray(b.segments))
    model, train = ModelConfig(filters=[4]), TrainConfig()
    assert _state_key(model, train, a, a.rows("train"), 42) != _state_key(model, train, b, b.rows("train"), 42)


def test_the_state_key_leaves_out_the_budget_but_not_a_cosine_curves_length_the_rows_or_the_seed(tmp_path):
    """A longer train.epochs or another patience resumes the same run, except under the cosine schedule, whose
    curve spans train.epochs (resuming would continue another curve); other training rows or another seed are
    another run."""
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import _state_key

    segments = np.zeros((20, 2, 3, 1), np.float16)
    table = pd.DataFrame({"segment": range(20), "clip_id": [f"c{i}" for i in range(20)],
                          "label_index": [i % 2 for i in range(20)], "split": "train"})
    store = FeatureStore(tmp_path, segments, table, ["a", "b"], FeatureConfig())
    model, rows = ModelConfig(filters=[4]), np.arange(10)

    def key(cfg, rows=rows, seed=0):
        return _state_key(model, cfg, store, rows, seed)

    assert key(TrainConfig(epochs=5, patience=3)) == key(TrainConfig(epochs=9, patience=1))
    assert key(TrainConfig(epochs=5, lr_schedule="plateau")) == key(TrainConfig(epochs=9, lr_schedule="plateau"))
    cosine = TrainConfig(epochs=5, lr_schedule="cosine")
    assert key(cosine) != key(dataclasses.replace(cosine, epochs=9))
    assert key(cosine) == key(dataclasses.replace(cosine, patience=1))
    assert key(TrainConfig()) != key(TrainConfig(), rows=np.arange(10, 20))  # as many rows, other ones
    assert key(TrainConfig()) != key(TrainConfig(), seed=1)


def test_training_curves_of_an_abandoned_run_are_not_continued(tmp_path):
    """An interrupted run's state of other params starts training afresh, and so must DVCLive (dvc.yaml keeps
    dvclive/ with persist: true): no steps 0..n of the old run followed by 0..m of the new one."""
    import json

    from genre_se.config import ModelConfig, Params, TrainConfig
    from genre_se.train import STATE_FILE, run_train
    from tests.conftest import split_tone_store
    from tests.test_inference import FEATURES

    store, _ = split_tone_store(tmp_path, seed=0)
    params = Params(features=FEATURES, model=ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2),
                    train=TrainConfig(epochs=2, batch_size=16))
    state, live = tmp_path / "state", tmp_path / "dvclive"
    state.mkdir()
    (state / STATE_FILE).write_text(json.dumps({"key": "another-run", "epoch": 3}))  # of other params
    tsv = live / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tloss\n0\t9.0\n1\t8.0\n2\t7.0\n")
    run_train(params, store_dir=store.root, bundle_dir=tmp_path / "bundle", state_dir=state, live_dir=live,
              best_params_path=None)
    steps = [int(line.split("\t")[0]) for line in tsv.read_text().splitlines()[1:]]
    assert steps == [0, 1]


def test_a_dropped_ctrl_c_stops_training_at_the_next_epoch_end_with_the_state_saved(tmp_path):
    """A Ctrl-C raised where Python drops it (a weakref callback) is noted (genre_se.interrupts); the loop
    re-raises it after the epoch's state is written, so a rerun resumes there."""
    import json

    from genre_se import interrupts
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2)
    with interrupts.interrupts_noted():
        interrupts._INTERRUPTED.set()  # as the handler does when its KeyboardInterrupt is dropped
        with pytest.raises(KeyboardInterrupt):
            train_model(store, model, TrainConfig(epochs=3, batch_size=16), train_rows=store.rows("train"),
                        valid_rows=store.rows("valid"), seed=1, state_dir=tmp_path / "state")
    assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["epoch"] == 1


def test_a_kill_between_the_checkpoint_files_resumes_from_the_last_whole_epoch(tmp_path, monkeypatch):
    """After each epoch the best weights, the last model and state.json were written one after the other under
    fixed names: a kill after the model's rename but before state.json's left the epoch-N model under an epoch
    N-1 state, and the rerun trained epoch N again on top of it (an epoch repeated, the bundle mislabelled)."""
    import json

    import keras

    import genre_se.train
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2)
    rows = dict(train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1)
    train_model(store, model, TrainConfig(epochs=1, batch_size=16), state_dir=tmp_path / "one", **rows)

    real = genre_se.train.write_json

    def killed_before_the_state_of_epoch_2(path, obj):
        if str(path).endswith(STATE_FILE) and obj.get("epoch") == 2:
            raise KeyboardInterrupt  # as a SIGKILL here: the epoch's model files are in place, its state is not
        return real(path, obj)

    monkeypatch.setattr(genre_se.train, "write_json", killed_before_the_state_of_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_model(store, model, TrainConfig(epochs=2, batch_size=16), state_dir=tmp_path / "cut", **rows)
    monkeypatch.undo()

    def last_weights(state_dir):
        state = json.loads((state_dir / STATE_FILE).read_text())
        last = keras.saving.load_model(state_dir / state.get("last_file", "last.keras"), compile=False)
        return state["epoch"], np.concatenate([w.ravel() for w in last.get_weights()])

    epoch, weights = last_weights(tmp_path / "cut")
    reference_epoch, reference = last_weights(tmp_path / "one")
    assert epoch == reference_epoch == 1
    np.testing.assert_array_equal(weights, reference)  # the state's model is epoch 1's, not epoch 2's
    resumed = train_model(store, model, TrainConfig(epochs=2, batch_size=16), state_dir=tmp_path / "cut", **rows)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2


def test_a_state_of_the_fixed_name_layout_resumes_and_keeps_its_best_weights(tmp_path):
    """A train state written before checkpoints carried their epoch (last.keras, best.weights.h5, no file names in
    state.json) must still resume; an epoch that does not improve must not prune its best weights."""
    import json

    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import BEST_WEIGHTS, LAST_MODEL, STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2)
    state_dir = tmp_path / "s"
    rows = dict(train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1, state_dir=state_dir)
    train_model(store, model, TrainConfig(epochs=1, batch_size=16), **rows)
    state = json.loads((state_dir / STATE_FILE).read_text())
    (state_dir / state.pop("last_file")).rename(state_dir / LAST_MODEL)
    (state_dir / state.pop("best_file")).rename(state_dir / BEST_WEIGHTS)
    state.pop("waits")
    state.pop("seed_states")  # nor the seed generators' states (before the draws were functions of the epoch)
    state["best_key"] = [float("inf")] * len(state["best_key"])  # nothing beats it: epoch 2 does not improve
    (state_dir / STATE_FILE).write_text(json.dumps(state))
    lines = []
    resumed = train_model(store, model, TrainConfig(epochs=2, batch_size=16), log=lines.append, **rows)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2 and resumed.best_epoch == 1
    assert (state_dir / BEST_WEIGHTS).exists()  # still named by the state: the best weights are epoch 1's
    assert any("saved by an earlier genre-se" in line for line in lines)  # it will not match an uninterrupted run


def test_a_state_trained_past_a_smaller_budget_starts_afresh(tmp_path):
    """train.epochs and train.patience are left out of the state key so a longer budget resumes; a state that
    went on past a smaller one was resumed as finished, and the bundle came from more epochs than asked."""
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import _trained_past, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2)
    rows = dict(train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1, state_dir=tmp_path / "s")
    assert train_model(store, model, TrainConfig(epochs=3, batch_size=16), **rows).epochs_run == 3
    lines = []
    again = train_model(store, model, TrainConfig(epochs=2, batch_size=16), log=lines.append, **rows)
    assert again.resumed_from == 0 and again.epochs_run == 2 and again.best_epoch <= 2
    assert any("starting afresh" in line for line in lines)
    # patience: a run that would have stopped before the state's last epoch
    state = {"epoch": 3, "waits": [0, 1, 2]}
    assert _trained_past(state, TrainConfig(epochs=5, patience=2)) is None  # stops after epoch 3: the same run
    assert "patience" in _trained_past(state, TrainConfig(epochs=5, patience=1))  # would stop after epoch 2
    assert _trained_past({"epoch": 3}, TrainConfig(epochs=5, patience=1)) is None  # an older state: resumed
    assert _trained_past({"epoch": 3}, TrainConfig(epochs=3)) is None  # a finished run of the same budget
    assert "train.epochs: 2" in _trained_past({"epoch": 3}, TrainConfig(epochs=2))


def test_a_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    """Interrupted after epoch 1 and resumed, a run trains on the very batches (shuffle order, gain, EQ,
    SpecAugment, mixup draws) and dropout masks of the run it continues: every draw is a function of the seed
    and the epoch, not of how often the input was iterated, and dropout's seed state is saved with the
    train state (Keras saves none with a model). They differed by 0.005-0.02 before."""
    import json

    import keras

    from genre_se import interrupts
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4, 4], dropout=0.3, reduction_ratios=2)
    cfg = TrainConfig(epochs=3, patience=9, batch_size=16, gain_db=6.0, eq_tilt_db=3.0, spec_augment=True,
                      mixup_alpha=0.2)
    rows = dict(train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1)

    def last_weights(state_dir):
        state = json.loads((state_dir / STATE_FILE).read_text())
        last = keras.saving.load_model(state_dir / state["last_file"], compile=False)
        return np.concatenate([w.ravel() for w in last.get_weights()])

    straight = train_model(store, model, cfg, state_dir=tmp_path / "straight", **rows)
    with interrupts.interrupts_noted():
        interrupts._INTERRUPTED.set()  # a Ctrl-C: the loop stops at the end of epoch 1, its state saved
        with pytest.raises(KeyboardInterrupt):
            train_model(store, model, cfg, state_dir=tmp_path / "cut", **rows)
    resumed = train_model(store, model, cfg, state_dir=tmp_path / "cut", **rows)
    assert resumed.resumed_from == 1 and resumed.epochs_run == straight.epochs_run == 3
    np.testing.assert_array_equal(last_weights(tmp_path / "cut"), last_weights(tmp_path / "straight"))
    assert resumed.best_epoch == straight.best_epoch
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in resumed.model.get_weights()]),
                                  np.concatenate([w.ravel() for w in straight.model.get_weights()]))


def test_a_diverged_epoch_is_never_kept_and_a_run_that_never_converged_fails(tmp_path, monkeypatch):
    """NaN probabilities score the share of label-0 clips as clip accuracy, so a diverged epoch could become
    the "best" one and the bundle NaN weights. Now the epoch is not kept, training stops there with the last
    finite best epoch, and a run diverged from its first epoch fails with advice instead of saving NaNs."""
    import json

    import genre_se.train
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.errors import ModelError
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4, 4], dropout=0.0, reduction_ratios=2)
    rows = dict(train_rows=store.rows("train"), valid_rows=store.rows("valid"), seed=1)
    real, calls = genre_se.train.clip_scores, []

    def diverging_in_epoch_2(*args, **kwargs):
        calls.append(1)
        scores = real(*args, **kwargs)
        if len(calls) == 2:  # as NaN weights score: loss NaN, every clip "label 0", here all of them right
            return {**scores, "loss": float("nan"), "clip_accuracy": 1.0}
        return scores

    monkeypatch.setattr(genre_se.train, "clip_scores", diverging_in_epoch_2)
    lines = []
    result = train_model(store, model, TrainConfig(epochs=4, patience=9, batch_size=16),
                         state_dir=tmp_path / "s", log=lines.append, **rows)
    assert len(calls) == 2  # stopped at the diverged epoch
    assert result.best_epoch == 1 and result.epochs_run == 1 and result.best_score < 1.0
    assert json.loads((tmp_path / "s" / STATE_FILE).read_text())["epoch"] == 1  # the diverged epoch not saved
    assert "training diverged" in lines[-1] and "epoch 1's weights" in lines[-1]
    monkeypatch.undo()
    with pytest.raises(ModelError, match=r"diverged in epoch 1 .*lower train.learning_rate"):
        train_model(store, model, TrainConfig(epochs=2, batch_size=16, learning_rate=1e10),
                    state_dir=tmp_path / "nan", **rows)


def test_early_stopping_counts_patience_keeps_ties_out_and_returns_the_best_epochs_weights(tmp_path, monkeypatch):
    """Scripted validation scores: the best epoch is the first to reach the best score (a tie does not move it),
    training stops once ``patience`` epochs in a row have not improved, the model handed back holds the best
    epoch's weights (not the last epoch's), and ``monitor: val_loss`` picks by the loss alone."""
    import json

    import keras

    import genre_se.train
    from genre_se.config import ModelConfig, TrainConfig
    from genre_se.train import STATE_FILE, train_model
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    model = ModelConfig(filters=[4], dropout=0.0, reduction_ratios=2)
    rows = {"train_rows": store.rows("train"), "valid_rows": store.rows("valid"), "seed": 1}
    # (clip accuracy, loss) per epoch: epoch 2 is best, epoch 3 ties it, epoch 4 is worse by accuracy but has the
    # lowest loss, epochs 5-6 are worse by both
    script = [(0.5, 1.0), (0.8, 0.9), (0.8, 0.9), (0.7, 0.5), (0.6, 2.0), (0.6, 2.0)]

    def scripted(calls):
        def clip_scores(*args, **kwargs):
            accuracy, loss = script[len(calls)]
            calls.append(1)
            return {"loss": loss, "accuracy": accuracy, "clip_accuracy": accuracy}
        return clip_scores

    calls = []
    monkeypatch.setattr(genre_se.train, "clip_scores", scripted(calls))
    state_dir = tmp_path / "acc"
    result = train_model(store, model, TrainConfig(epochs=6, patience=2, batch_size=16), state_dir=state_dir, **rows)
    # epochs 3 and 4 do not improve on epoch 2: patience 2 is spent after epoch 4
    assert (result.epochs_run, len(calls)) == (4, 4)
    assert result.best_epoch == 2 and result.best_score == 0.8
    state = json.loads((state_dir / STATE_FILE).read_text())
    assert state["waits"] == [0, 0, 1, 2] and state["best_file"] == "best-2.weights.h5"
    last = keras.saving.load_model(state_dir / state["last_file"], compile=False)
    last_weights = np.concatenate([w.ravel() for w in last.get_weights()])
    last.load_weights(state_dir / state["best_file"])
    kept = np.concatenate([w.ravel() for w in result.model.get_weights()])
    np.testing.assert_array_equal(kept, np.concatenate([w.ravel() for w in last.get_weights()]))
    assert not np.array_equal(kept, last_weights)  # epoch 4's weights were trained on: not those

    calls = []
    monkeypatch.setattr(genre_se.train, "clip_scores", scripted(calls))
    by_loss = train_model(store, model, TrainConfig(epochs=4, patience=2, batch_size=16, monitor="val_loss"),
                          state_dir=tmp_path / "loss", **rows)
    assert by_loss.best_epoch == 4 and by_loss.best_score == 0.5  # the lowest loss, whatever its accuracy


def test_clip_scores_judge_a_clip_by_the_mean_of_its_segments_and_diverged_weights_score_nan(tmp_path):
    """Validation scores on hand-made probabilities (the "model" reads them off the segments): segment accuracy
    counts segments, clip accuracy the argmax of each clip's mean probability; non-finite outputs score NaN, not
    the share of label-0 clips."""
    from genre_se.train import clip_scores

    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6],  # clip a (label 0): mean 0.57 / 0.43, right
                      [0.3, 0.7], [0.6, 0.4],              # clip b (label 1): mean 0.45 / 0.55, right
                      [0.8, 0.2]])                         # clip c (label 1): wrong
    labels = [0, 0, 0, 1, 1, 1]
    table = pd.DataFrame({"segment": range(6), "clip_id": list("aaabbc"), "label_index": labels, "split": "valid"})
    store = FeatureStore(tmp_path, probs.astype(np.float16)[:, None, :, None], table, ["x", "y"], FeatureConfig())

    def model(x, training=False):
        return x[:, 0, :, 0]

    rows = np.arange(6)
    scores = clip_scores(model, store, rows, batch_size=4)  # batches cut through clip b
    stored = store.segments[:, 0, :, 0].astype(np.float64)
    assert scores["accuracy"] == pytest.approx(2 / 6)  # segments 0 and 3
    assert scores["clip_accuracy"] == pytest.approx(2 / 3)  # clips a and b
    assert scores["loss"] == pytest.approx(-np.mean(np.log(stored[rows, labels])), rel=1e-6)
    assert clip_scores(model, store, rows[3:])["clip_accuracy"] == pytest.approx(0.5)  # only clips b and c

    def diverged(x, training=False):
        return np.full((len(x), 2), np.nan, np.float32)

    assert all(np.isnan(v) for v in clip_scores(diverged, store, rows).values())


def test_the_train_stage_says_where_its_reduction_ratios_come_from(tmp_path):
    """Without a best_params.json (a `genre-se train` before any `genre-se tune`, or after a failed one) the
    stage trained with params.yaml's r without a word; the log now says which r and whence."""
    import json

    from genre_se.config import ModelConfig, Params, TrainConfig, TuneConfig
    from genre_se.train import _ratios_source

    params = Params(model=ModelConfig(filters=[4], reduction_ratios=2), train=TrainConfig(epochs=1))
    missing, tuned, passed = tmp_path / "none.json", tmp_path / "tuned.json", tmp_path / "passed.json"
    tuned.write_text(json.dumps({"source": "tune", "model": {"reduction_ratios": 3.5}}))
    passed.write_text(json.dumps({"source": "params", "model": {"reduction_ratios": 2}}))
    assert "no tuned value" in _ratios_source(params, missing) and "genre-se tune" in _ratios_source(params, missing)
    assert _ratios_source(params, tuned) == f"tuned: {tuned}"
    off = Params(model=params.model, train=params.train, tune=TuneConfig(enabled=False))
    assert "tune.enabled is false" in _ratios_source(off, tuned)  # an earlier search's file is not used
    assert "passed through" in _ratios_source(off, passed)
    no_se = Params(model=ModelConfig(filters=[4], se=False), train=params.train)
    assert "no SE blocks" in _ratios_source(no_se, tuned)
