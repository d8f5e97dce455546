"""The tune stage through the real keras-tuner BayesianOptimization on a tiny tone dataset and a tiny model.

One search is run once per module and reused (train stage, resume, distributed comparisons); every other
search uses its own keras-tuner project directory.
"""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genre_se.config import load_params
from genre_se.errors import ConfigError
from tests.conftest import TINY_PARAMS, make_tone_dataset, write_params

pytestmark = pytest.mark.slow

#: a 3-trial, 1-epoch search over r in [1, 4] on the 4-/8-channel tiny model (val_loss: no ties)
SEARCH = {
    **TINY_PARAMS,
    "tune.enabled": True,
    "tune.mode": "shared",
    "tune.r_min": 1.0,
    "tune.r_max": 4.0,
    "tune.max_trials": 3,
    "tune.epochs": 1,
    "tune.patience": 1,
    "tune.objective": "val_loss",
    "tune.references": [],
}


def params_for(workdir: Path, **overrides):
    path = write_params(workdir / "params.yaml", {**SEARCH, "data.root": str(workdir / "tones"), **overrides})
    return load_params(path)


def tune_in(workdir: Path, params, name: str, log=None, project_root=None):
    """run_tune with every output under ``workdir/name`` (by default its own keras-tuner project root too)."""
    from genre_se.tune import run_tune

    out = workdir / name
    return run_tune(params, store_dir=workdir / "data/features", out_path=out / "best_params.json",
                    trials_path=out / "trials.csv", plot_path=out / "objective.png",
                    project_root=project_root or out / "tuning", log=log)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tone dataset with its index and feature store (built once)."""
    from genre_se.datasets import run_prepare
    from genre_se.feature_store import run_features

    root = tmp_path_factory.mktemp("tune")
    make_tone_dataset(root / "tones")
    params = params_for(root)
    run_prepare(params, index_path=root / "data/index.csv", errors_path=root / "reports/prepare_errors.csv")
    run_features(params, index_path=root / "data/index.csv", out_dir=root / "data/features",
                 cache_dir=root / "data/features-cache", errors_path=root / "reports/features_errors.csv")
    return root


@pytest.fixture(scope="module")
def shared_run(workdir):
    lines = []
    result = tune_in(workdir, params_for(workdir, **{"tune.references": [2.0, "no_se"]}), "shared", log=lines.append)
    return result, lines


def started(lines):
    return [int(m.group(1)) for line in lines if (m := re.match(r"trial (\d+) started", line))]


# --------------------------------------------------------------------------------------------------


def test_disabled_passes_the_configured_ratios_through(tmp_path):
    from genre_se.tune import run_tune

    params = load_params(write_params(tmp_path / "params.yaml",
                                      {**TINY_PARAMS, "tune.enabled": False, "model.reduction_ratios": [3, 5]}))
    result = run_tune(params, store_dir=tmp_path / "missing", out_path=tmp_path / "best.json",
                      trials_path=tmp_path / "trials.csv", plot_path=tmp_path / "plot.png",
                      project_root=tmp_path / "tuning")
    assert json.loads((tmp_path / "best.json").read_text()) == {"source": "params",
                                                                "model": {"reduction_ratios": [3, 5]}}
    assert result.best["model"]["reduction_ratios"] == [3, 5]
    table = pd.read_csv(tmp_path / "trials.csv")
    assert table.empty and {"trial", "objective", "epochs", "seconds"} <= set(table.columns)
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert not (tmp_path / "tuning").exists()  # no search was started
    assert pd.read_csv(tmp_path / "references.csv").empty  # a declared output, present and empty


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"tune.r_min": [1.0, 2.0]}, "tune.r_min"),  # a list in shared mode
        ({"tune.mode": "per_block", "tune.r_min": [1.0, 2.0, 3.0], "tune.r_max": 9.0}, "tune.r_min"),
        ({"tune.mode": "per_block", "tune.r_min": [1.0, 5.0], "tune.r_max": [4.0, 5.0]}, "tune.r_max"),
        ({"tune.r_type": "int", "tune.r_min": 1.5}, "tune.r_min"),
        ({"tune.learning_rate": [0.1]}, "tune.learning_rate"),
        ({"tune.dropout": [0.5, 0.2]}, "tune.dropout"),
        ({"tune.objective": "accuracy"}, "tune.objective"),
        ({"model.se": False}, "model.se"),
        ({"tune.references": [16, "plain"]}, "tune.references"),
        ({"tune.references": [0]}, "tune.references"),
    ],
)
def test_bad_search_spaces_are_named(tmp_path, overrides, key):
    from genre_se.tune import SearchSpace

    with pytest.raises(ConfigError, match=re.escape(key)):
        SearchSpace.from_params(params_for(tmp_path, **overrides))


def test_failing_trials_become_one_clear_error(workdir, monkeypatch):
    from genre_se.errors import ModelError
    from genre_se.tune import SEHyperModel

    def broken_fit(self, hp, model, *args, **kwargs):
        raise ValueError("training exploded")

    monkeypatch.setattr(SEHyperModel, "fit", broken_fit)
    for trials in (1, 3):  # fewer failures than keras-tuner's limit of 3 in a row, and that limit
        with pytest.raises(ModelError, match="training exploded"):
            tune_in(workdir, params_for(workdir, **{"tune.max_trials": trials}), f"broken{trials}")
        assert not (workdir / f"broken{trials}/best_params.json").exists()


def test_shared_search_writes_best_params_table_and_plot(workdir, shared_run):
    from genre_se.model import build_model, se_blocks, se_hidden_units
    from genre_se.tune import SearchSpace

    result, lines = shared_run
    out = workdir / "shared"
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2] and (table["status"] == "COMPLETED").all()
    assert table["r"].between(1.0, 4.0).all() and table["r"].nunique() == 3
    assert np.allclose(table["objective"], table["val_loss"])  # the objective is val_loss here
    assert table["val_clip_accuracy"].between(0, 1).all()
    assert (table["epochs"] == 1).all() and (table["seconds"] > 0).all()
    assert list(table["se_hidden"]) == [f"{se_hidden_units(4, r)}-{se_hidden_units(8, r)}" for r in table["r"]]
    assert started(lines) == [0, 1, 2]

    best = json.loads((out / "best_params.json").read_text())
    winner = table.loc[table["val_loss"].idxmin()]
    assert best["source"] == "tune" and best["trial"] == winner["trial"]
    assert best["model"]["reduction_ratios"] == pytest.approx(winner["r"])
    assert best["objective"] == {"name": "val_loss", "value": pytest.approx(winner["val_loss"])}
    assert result.project_dir == out / "tuning" / best["search"]
    assert (out / "objective.png").stat().st_size > 5000

    # the winning configuration is a valid model with the tuned r in both SE blocks
    values = {"r": best["model"]["reduction_ratios"]}
    params = params_for(workdir)
    cfg = SearchSpace.from_params(params).model_config(params.model, values)
    model = build_model(cfg, (16, 16, 1), 3)
    assert [b.ratio for b in se_blocks(model)] == pytest.approx([values["r"]] * 2)


def test_references_are_trained_under_the_trials_protocol(workdir, shared_run):
    from genre_se.model import build_model

    result, lines = shared_run
    out = workdir / "shared"
    refs = pd.read_csv(out / "references.csv")
    assert list(refs["reference"]) == ["r=2", "no_se"]
    assert (refs["epochs"] == 1).all() and refs["val_loss"].gt(0).all() and refs["val_clip_accuracy"].between(0, 1).all()
    params = params_for(workdir)
    plain = build_model({**dataclasses.asdict(params.model), "se": False}, (16, 16, 1), 3).count_params()
    assert refs.loc[1, "params"] == plain and refs.loc[0, "params"] > plain
    assert refs.loc[0, "se_hidden"] == "2-4" and pd.isna(refs.loc[1, "se_hidden"])
    best = json.loads((out / "best_params.json").read_text())
    assert best["references"]["no_se"]["val_loss"] == pytest.approx(refs.loc[1, "val_loss"])
    assert sum(line.startswith("reference ") for line in lines) == 2

    # Same protocol as the trials (same seed): a reference at a trial's r reproduces that trial's score, and
    # references already trained for this search are not trained again.
    trial_r = float(result.table.loc[0, "r"])
    again = []
    tune_in(workdir, params_for(workdir, **{"tune.references": [trial_r, "no_se"]}), "shared", log=again.append,
            project_root=result.project_dir.parent)
    assert [line.split(":")[0] for line in again if line.startswith("reference ")] == [f"reference r={trial_r:g} done"]
    rerun = pd.read_csv(out / "references.csv")
    assert rerun.loc[0, "val_loss"] == pytest.approx(result.table.loc[0, "val_loss"], rel=1e-4)
    assert rerun.loc[1, "val_loss"] == refs.loc[1, "val_loss"]


def test_per_block_search_gives_one_ratio_per_block_in_its_own_range(workdir):
    from genre_se.model import build_model, se_blocks, se_hidden_units
    from genre_se.train import resolve_model_config

    params = params_for(workdir, **{"tune.mode": "per_block", "tune.r_type": "int", "tune.r_min": [1, 2],
                                    "tune.r_max": [3, 6], "tune.learning_rate": [0.001, 0.1],
                                    "tune.max_trials": 2, "tune.objective": "val_clip_accuracy"})
    tune_in(workdir, params, "per_block")
    out = workdir / "per_block"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 2 and (table["status"] == "COMPLETED").all()
    assert table["r_block1"].between(1, 3).all() and table["r_block2"].between(2, 6).all()
    assert (table[["r_block1", "r_block2"]] % 1 == 0).all().all()  # r_type: int
    assert table["learning_rate"].between(0.001, 0.1).all()
    assert "r" not in table.columns

    best = json.loads((out / "best_params.json").read_text())
    ratios = best["model"]["reduction_ratios"]
    assert isinstance(ratios, list) and len(ratios) == 2 and all(isinstance(r, int) for r in ratios)
    assert 0.001 <= best["train"]["learning_rate"] <= 0.1
    cfg = resolve_model_config(params, out / "best_params.json")
    model = build_model(cfg, (16, 16, 1), 3)
    assert [b.hidden_units for b in se_blocks(model)] == [se_hidden_units(4, ratios[0]), se_hidden_units(8, ratios[1])]


def test_train_stage_uses_the_tuned_ratio(workdir, shared_run):
    from genre_se.bundle import load_bundle
    from genre_se.model import se_blocks
    from genre_se.train import run_train

    best = shared_run[0].best
    params = params_for(workdir, **{"train.epochs": 1})
    run_train(params, store_dir=workdir / "data/features", bundle_dir=workdir / "bundle",
              state_dir=workdir / "train-state", live_dir=workdir / "dvclive",
              best_params_path=workdir / "shared/best_params.json")
    bundle = load_bundle(workdir / "bundle")
    assert bundle.model_config["reduction_ratios"] == pytest.approx(best["model"]["reduction_ratios"])
    assert bundle.model_config["reduction_ratios"] != params.model.reduction_ratios
    assert [b.ratio for b in se_blocks(bundle.model)] == pytest.approx([best["model"]["reduction_ratios"]] * 2)


def test_an_interrupted_search_resumes_where_it_stopped(workdir, shared_run):
    params = params_for(workdir)
    project_root = workdir / "resumed" / "tuning"

    def interrupt_at_trial_1(line):
        if line.startswith("trial 1 started"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune_in(workdir, params, "resumed", log=interrupt_at_trial_1)
    assert not (workdir / "resumed/best_params.json").exists()
    trial_0 = json.loads(next(project_root.glob("*/trial_0/trial.json")).read_text())
    assert trial_0["status"] == "COMPLETED"

    lines = []
    result = tune_in(workdir, params, "resumed", log=lines.append)
    assert "1 of 3 trials completed" in lines[0]
    assert started(lines) == [1, 2]  # trial 0 was not run again; trial 1 was run again
    table = pd.read_csv(workdir / "resumed/trials.csv")
    assert list(table["trial"]) == [0, 1, 2] and (table["status"] == "COMPLETED").all()
    # same seed, same proposals as the uninterrupted search
    assert table["r"].tolist() == pytest.approx(shared_run[0].table["r"].tolist())
    # same search key as the uninterrupted search (same space and data), in this test's own project root
    assert result.project_dir == project_root / shared_run[0].project_dir.name


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_dropped_inside_clear_session_still_stops_the_search(workdir, monkeypatch):
    """Python drops an exception raised in a weakref callback, and clear_session() between trials runs many: a
    Ctrl-C landing there let the search run to its end and exit 0."""
    import signal
    import weakref

    import keras

    real, calls = keras.backend.clear_session, []

    def clear_session_hit_by_ctrl_c(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)
        if len(calls) == 2:  # between trial 0 and trial 1
            class Graph:
                pass

            graph = Graph()
            keep = weakref.ref(graph, lambda _: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))
            del graph  # the callback runs here; its KeyboardInterrupt is printed and dropped
            assert keep() is None

    monkeypatch.setattr(keras.backend, "clear_session", clear_session_hit_by_ctrl_c)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        tune_in(workdir, params_for(workdir), "ctrl-c", log=lines.append)
    assert started(lines) == [0, 1] and not (workdir / "ctrl-c/best_params.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the stage's handler is gone


def test_a_corrupt_project_file_is_named_not_a_traceback(workdir, shared_run):
    """keras-tuner writes oracle.json in place: a crash mid-write leaves half of it; resuming then must say
    which folder is broken and what to do."""
    from genre_se.errors import ModelError

    params = params_for(workdir)

    def interrupt_at_trial_1(line):
        if line.startswith("trial 1 started"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune_in(workdir, params, "cut", log=interrupt_at_trial_1)
    oracle = next((workdir / "cut" / "tuning").glob("*/oracle.json"))
    oracle.write_text(oracle.read_text()[:40])
    with pytest.raises(ModelError, match=r"tuning.*corrupt.*remove the folder"):
        tune_in(workdir, params, "cut")


def test_a_ctrl_c_landing_in_a_project_save_does_not_break_the_search(workdir, monkeypatch):
    """keras-tuner saves trial.json and oracle.json at every trial's start and end; it wrote them in place, so a
    Ctrl-C (or a kill) landing in that save left an empty file and the search could not resume: every finished
    trial was lost. The interrupt here lands in the first file written after trial 1 ends, once its file was
    opened for writing, whichever way it is written (TensorFlow's GFile or a plain Python file)."""
    import pathlib

    from tensorflow.python.lib.io import file_io

    armed = []
    real_gfile_write, real_write_text = file_io.FileIO.write, pathlib.Path.write_text

    def gfile_write(self, data):
        if armed:
            armed.clear()
            self._prewrite_check()  # opened for writing (truncated), then the Ctrl-C
            raise KeyboardInterrupt
        return real_gfile_write(self, data)

    def write_text(self, data, *args, **kwargs):
        if armed:
            armed.clear()
            real_write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(file_io.FileIO, "write", gfile_write)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    params = params_for(workdir)

    def arm_after_trial_1(line):
        if line.startswith("trial 1 done"):
            armed.append(1)

    with pytest.raises(KeyboardInterrupt):
        tune_in(workdir, params, "torn", log=arm_after_trial_1)
    assert not armed  # the interrupt did land in a save
    monkeypatch.undo()
    lines = []
    tune_in(workdir, params, "torn", log=lines.append)  # resumes: no "project file is corrupt"
    assert re.search(r"[12] of 3 trials completed", lines[0])
    assert 0 not in started(lines)  # the finished trial 0 was kept
    table = pd.read_csv(workdir / "torn/trials.csv")
    assert list(table["trial"]) == [0, 1, 2] and (table["status"] == "COMPLETED").all()


def _recording_tuner(trained: list):
    """A stand-in for SETuner.run_executions that records what it was asked to train, and trains nothing."""

    class RecordingTuner:
        def run_executions(self, build, **_):
            trained.append(build())
            return {"val_clip_accuracy": 0.5, "val_loss": 1.0, "epochs": 1, "best_epoch": 1, "seconds": 0.1}, \
                type("M", (), {"count_params": lambda self: 1})()

    return RecordingTuner


def test_a_corrupt_references_cache_is_trained_again(tmp_path):
    from genre_se import tune
    from genre_se.config import ModelConfig, TrainConfig

    trained = []
    FakeTuner = _recording_tuner(trained)

    class FakeHyperModel:
        model_cfg, train_cfg = ModelConfig(filters=[4]), TrainConfig()

        def build_fixed(self, cfg):
            return cfg

    (tmp_path / "references.json").write_text('{"r=16": {"val_clip')
    rows = tune.run_references(FakeHyperModel(), FakeTuner(), tmp_path, [16])
    assert len(trained) == 1 and list(rows["reference"]) == ["r=16"] and "protocol" not in rows.columns
    tune.run_references(FakeHyperModel(), FakeTuner(), tmp_path, [16])
    assert len(trained) == 1  # cached now


def test_more_trials_extend_a_search_and_a_new_space_starts_a_new_one(workdir, shared_run):
    first = shared_run[0]
    lines = []
    extended = tune_in(workdir, params_for(workdir, **{"tune.max_trials": 4}), "extended", log=lines.append,
                       project_root=first.project_dir.parent)
    assert extended.project_dir == first.project_dir and started(lines) == [3]
    assert extended.table["r"].tolist()[:3] == pytest.approx(first.table["r"].tolist())

    lines = []
    other = tune_in(workdir, params_for(workdir, **{"tune.r_max": 6.0, "tune.max_trials": 1}), "extended",
                    log=lines.append, project_root=first.project_dir.parent)
    assert other.project_dir != first.project_dir and first.project_dir.exists()
    assert started(lines) == [0] and len(other.table) == 1 and other.table["r"].between(1.0, 6.0).all()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_two_workers_run_every_trial_once(workdir, shared_run):
    params_for(workdir, **{"tune.max_trials": 4})  # writes workdir/params.yaml for the subprocesses
    out = workdir / "distributed"
    cmd = [sys.executable, "-m", "genre_se", "tune", "--features", "data/features", "--out", str(out / "best.json"),
           "--trials", str(out / "trials.csv"), "--plot", str(out / "objective.png"),
           "--project-dir", str(out / "tuning")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(_free_port()), PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="")
    out.mkdir()
    procs = {}
    try:
        for tuner_id in ("chief", "tuner1", "tuner2"):
            with open(out / f"{tuner_id}.log", "w") as stderr:
                procs[tuner_id] = subprocess.Popen(cmd, cwd=workdir, env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                                                   stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 240
        for tuner_id, proc in procs.items():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs.values():  # only the processes this test started
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    errs = {tuner_id: (out / f"{tuner_id}.log").read_text() for tuner_id in procs}
    for tuner_id, proc in procs.items():
        assert proc.returncode == 0, f"{tuner_id}: {errs[tuner_id][-3000:]}"

    ran = [int(t) for tuner_id in ("tuner1", "tuner2") for t in re.findall(r"^trial (\d+) done", errs[tuner_id], re.M)]
    assert sorted(ran) == [0, 1, 2, 3]  # every trial ran, and on one worker only
    assert not re.search(r"^trial \d+ (started|done)", errs["chief"], re.M)  # the chief only hands out trials
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2, 3] and (table["status"] == "COMPLETED").all()
    single = pd.read_csv(workdir / "shared/trials.csv")
    assert list(table.columns) == list(single.columns)  # same format as a single-machine search
    best = json.loads((out / "best.json").read_text())
    assert best.keys() == shared_run[0].best.keys() - {"references"} and best["trials_completed"] == 4
    # the random start of the search does not depend on who runs the trials
    assert table["r"].tolist()[:3] == pytest.approx(shared_run[0].table["r"].tolist()[:3])
    assert (out / "objective.png").stat().st_size > 5000


def test_the_search_key_ignores_the_fusion_switch_but_not_the_cnn(tmp_path):
    """model.fusion only acts after training: switching it must not restart (or orphan) a search."""
    from types import SimpleNamespace

    import numpy as np

    from genre_se.config import FeatureConfig
    from genre_se.tune import SearchSpace, search_key

    (tmp_path / "segments.csv").write_text("segment,clip_id\n0,a\n")
    store = SimpleNamespace(root=tmp_path, features=FeatureConfig(), segments=np.zeros((1, 4, 4, 1)),
                            content_digest=None)

    def key(**overrides):
        params = params_for(tmp_path, **overrides)
        return search_key(params, SearchSpace.from_params(params), store)

    assert key(**{"model.fusion": "svm"}) == key(**{"model.fusion": "none"})
    assert key(**{"model.filters": [8, 16, 32, 64, 32]}) != key()


def test_search_key_changes_with_the_waveform_copies_trials_train_on(tmp_path):
    """Trials train on train.waveform_augment's copies (training_dataset), so it must be part of the search."""
    from genre_se.config import Params, TrainConfig
    from genre_se.tune import SearchSpace, search_key
    from tests.conftest import split_tone_store

    store, _ = split_tone_store(tmp_path, seed=0)
    mp3 = Params(train=TrainConfig(waveform_augment=["mp3"]))
    pitch = Params(train=TrainConfig(waveform_augment=["pitch"]))
    space = SearchSpace.from_params(mp3)
    assert search_key(mp3, space, store) != search_key(pitch, space, store)


def test_cached_references_are_not_reused_for_another_learning_rate(tmp_path):
    """With tune.learning_rate searched, train.learning_rate is out of the search key, but the references are
    trained at train.learning_rate: a cached reference of another rate must be trained again."""
    from genre_se import tune
    from genre_se.config import ModelConfig, TrainConfig

    trained = []
    FakeTuner = _recording_tuner(trained)

    class FakeHyperModel:
        def __init__(self, lr):
            self.model_cfg, self.train_cfg = ModelConfig(filters=[4]), TrainConfig(learning_rate=lr)

        def build_fixed(self, cfg):
            return (cfg, self.train_cfg.learning_rate)

    tune.run_references(FakeHyperModel(0.001), FakeTuner(), tmp_path, [16])
    tune.run_references(FakeHyperModel(0.3), FakeTuner(), tmp_path, [16])
    assert [lr for _, lr in trained] == [0.001, 0.3]


# --------------------------------------------------------------------------------------------------
# Audit fixes: diverged trials, seed 0, an empty references list, a stale best_params.json


def _nan_probabilities_from_epoch(monkeypatch, first_nan_epoch: int):
    """Every model's validation probabilities become NaN (diverged weights) from its ``first_nan_epoch``."""
    import genre_se.train as train_module

    real, calls = train_module.predict_rows, {}

    def predict_rows(model, *args, **kwargs):
        probs = real(model, *args, **kwargs)
        calls[id(model)] = calls.get(id(model), 0) + 1
        return np.full_like(probs, np.nan) if calls[id(model)] >= first_nan_epoch else probs

    monkeypatch.setattr(train_module, "predict_rows", predict_rows)


def test_a_trial_that_diverges_after_a_good_epoch_reports_that_epoch(workdir, monkeypatch):
    """np.argmin took the NaN val_loss of the diverged epoch 2 for the best: the trial, fine at epoch 1, was
    reported NaN and failed (every trial here: 'no trial completed')."""
    _nan_probabilities_from_epoch(monkeypatch, 2)
    params = params_for(workdir, **{"tune.max_trials": 1, "tune.epochs": 3, "tune.patience": 3})
    result = tune_in(workdir, params, "diverged-late")
    row = result.table.iloc[0]
    assert row["status"] == "COMPLETED" and row["best_epoch"] == 1 and np.isfinite(row["objective"])
    assert row["epochs"] == 2  # stopped at the diverged epoch, not run to tune.epochs
    assert result.best["objective"]["value"] == pytest.approx(row["val_loss"])


def test_a_diverged_model_earns_no_clip_accuracy(workdir, monkeypatch):
    """The argmax of a NaN row is label 0: a model with NaN outputs scored the share of label-0 clips (1/3 here)
    as its val_clip_accuracy, a completed trial the Gaussian process and best_params.json could pick."""
    from genre_se.errors import ModelError

    _nan_probabilities_from_epoch(monkeypatch, 1)
    params = params_for(workdir, **{"tune.max_trials": 1, "tune.objective": "val_clip_accuracy"})
    with pytest.raises(ModelError, match="no trial completed: every trial's val_clip_accuracy was NaN"):
        tune_in(workdir, params, "diverged")
    assert not (workdir / "diverged/best_params.json").exists()


def test_a_failed_search_leaves_no_earlier_search_results_for_train_to_take(workdir, monkeypatch):
    """A search that fails (here every trial diverges) or is killed left the last run's best_params.json, trials
    table and plot in place, and `genre-se train` then applied the earlier search's r as this one's."""
    from genre_se.errors import ModelError

    out = workdir / "stale"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("best_params.json", "trials.csv", "objective.png", "references.csv"):
        (out / name).write_text('{"source": "tune", "model": {"reduction_ratios": 3.0}}')
    _nan_probabilities_from_epoch(monkeypatch, 1)
    params = params_for(workdir, **{"tune.max_trials": 1, "tune.objective": "val_clip_accuracy"})
    with pytest.raises(ModelError, match="no trial completed"):
        tune_in(workdir, params, "stale")
    assert sorted(p.name for p in out.iterdir()) == ["tuning"]  # keras-tuner's project (resumable) only


def test_a_search_refused_before_it_starts_leaves_no_earlier_results_either(workdir):
    """A search that stops at its own checks (here: model.se false, nothing to tune) left the last run's
    best_params.json for train to take, as a failed search did."""
    out = workdir / "refused"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("best_params.json", "trials.csv", "objective.png", "references.csv"):
        (out / name).write_text('{"source": "tune", "model": {"reduction_ratios": 3.0}}')
    with pytest.raises(ConfigError, match="model.se is false"):
        tune_in(workdir, params_for(workdir, **{"model.se": False}), "refused")
    assert not list(out.iterdir())


def test_a_search_too_short_for_the_gaussian_process_says_so(workdir):
    """keras-tuner proposes max(3, 3 x dimensions) random trials before its Gaussian process: the default
    4 trials (shared r) get one Bayesian step, and a per-block search of 5 blocks none at all, silently."""
    from genre_se.tune import SearchSpace, initial_points

    five = {"model.filters": [4, 4, 4, 4, 4], "model.kernel_size": 3, "model.dropout": 0.0}
    assert initial_points(params_for(workdir).tune, SearchSpace.from_params(params_for(workdir))) == 3
    per_block = params_for(workdir, **five, **{"tune.mode": "per_block", "tune.r_min": 1.0, "tune.r_max": 4.0,
                                                "tune.learning_rate": [1e-3, 1e-2]})
    assert initial_points(per_block.tune, SearchSpace.from_params(per_block)) == 18
    assert initial_points(params_for(workdir, **{"tune.initial_points": 2}).tune,
                          SearchSpace.from_params(per_block)) == 2
    lines = []
    tune_in(workdir, params_for(workdir, **{"tune.max_trials": 1, "tune.references": []}), "short-search",
            log=lines.append)
    assert any("all 1 trials are random" in line and "above 3" in line for line in lines), lines


def test_seed_0_proposes_the_same_trials_every_run(workdir):
    """keras-tuner seeds its oracle with ``seed or random.randint(1, 10000)``: params.seed 0 gave another search
    each run."""
    from genre_se.tune import SearchSpace, SEHyperModel, SETuner

    params = params_for(workdir, seed=0)
    space = SearchSpace.from_params(params)

    def first_proposal(name):
        hypermodel = SEHyperModel(space, params.model, params.train, params.tune, (16, 16, 1), 3, 0.0, 1.0)
        tuner = SETuner(hypermodel, params.tune, params.seed, workdir / "seed0", name)
        assert tuner.base_seed == 0  # the trials still train with params.seed
        return tuner.oracle.seed, tuner.oracle.create_trial("tuner0").hyperparameters.values

    assert first_proposal("a") == first_proposal("b")


def test_neighbouring_seeds_propose_different_trials(workdir):
    """keras-tuner draws trial k with ``seed + k``: seeded with params.seed itself, seed 43's trials were seed 42's
    shifted by one, so searches over seeds 42, 43, ... were not independent replicates."""
    from genre_se.tune import SearchSpace, SEHyperModel, SETuner, oracle_seed

    def proposals(seed, n=4):
        params = params_for(workdir, seed=seed, **{"tune.max_trials": n, "tune.initial_points": n})
        hypermodel = SEHyperModel(SearchSpace.from_params(params), params.model, params.train, params.tune,
                                  (16, 16, 1), 3, 0.0, 1.0)
        tuner = SETuner(hypermodel, params.tune, params.seed, workdir / f"neighbours-{seed}", "p")
        values = []
        for i in range(n):
            trial = tuner.oracle.create_trial(f"tuner{i}")
            values.append(tuple(sorted(trial.hyperparameters.values.items())))
        return values

    a, b = proposals(42), proposals(43)
    assert not set(a) & set(b)
    assert len({oracle_seed(s) for s in range(1000)}) == 1000 and all(0 < oracle_seed(s) < 2**31 for s in (0, 2**31 - 1))


def test_an_empty_references_list_still_writes_the_declared_references_table(workdir):
    """dvc.yaml declares reports/tune_references.csv: with tune.references: [] it was not written, so `dvc repro`
    failed ('output does not exist'), and outside DVC an earlier run's table stayed beside the new results."""
    out = workdir / "no-references"
    out.mkdir(parents=True, exist_ok=True)
    (out / "references.csv").write_text("reference,val_loss\nr=16,0.5\n")  # an earlier run's
    tune_in(workdir, params_for(workdir, **{"tune.max_trials": 1, "tune.references": []}), "no-references")
    table = pd.read_csv(out / "references.csv")
    assert table.empty and {"reference", "se_hidden", "val_loss", "params"} <= set(table.columns)


def test_train_ignores_a_searchs_best_params_when_tuning_is_off(tmp_path):
    """tune.enabled: false means "train with params.yaml's values"; a best_params.json an earlier search left at
    the default path applied its r, dropout and learning rate anyway."""
    from genre_se.train import resolve_model_config, resolve_train_config

    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"source": "tune", "model": {"reduction_ratios": [3.5, 7.5], "dropout": 0.3},
                                "train": {"learning_rate": 0.05}}))
    off = params_for(tmp_path, **{"tune.enabled": False})
    assert resolve_model_config(off, best).reduction_ratios == off.model.reduction_ratios
    assert resolve_model_config(off, best).dropout == off.model.dropout
    assert resolve_train_config(off, best).learning_rate == off.train.learning_rate
    on = params_for(tmp_path)
    assert resolve_model_config(on, best).reduction_ratios == [3.5, 7.5]
    assert resolve_train_config(on, best).learning_rate == 0.05
    # tuning off writes its own pass-through file: that one is used
    best.write_text(json.dumps({"source": "params", "model": {"reduction_ratios": [3, 5]}}))
    assert resolve_model_config(off, best).reduction_ratios == [3, 5]
    # a tuned file that no longer fits the model is named as the cause
    best.write_text(json.dumps({"source": "tune", "model": {"reduction_ratios": [3.5, 7.5, 9.0]}}))
    with pytest.raises(ConfigError, match=re.escape(f"{best}: model.reduction_ratios: has 3 entries")):
        resolve_model_config(on, best)


@pytest.mark.parametrize("objective, winner", [("val_clip_accuracy", 2), ("val_loss", 1)])
def test_best_params_take_the_best_completed_trial_in_the_objectives_direction(tmp_path, objective, winner):
    """The trial table decides (no search needed): accuracy is maximised, loss minimised, a trial that did not
    complete never wins whatever its score, and a tie goes to the earlier trial."""
    from genre_se.tune import SearchSpace, best_params

    params = load_params(write_params(tmp_path / "params.yaml", {**SEARCH, "tune.objective": objective}))
    space = SearchSpace.from_params(params)
    table = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4],
        "status": ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "COMPLETED"],
        "r": [1.5, 2.5, 3.5, 4.0, 3.0],
        "se_hidden": ["3-5", "2-3", "1-2", "1-2", "1-3"],
        "objective": {"val_clip_accuracy": [0.5, 0.4, 0.9, 1.0, 0.9], "val_loss": [0.8, 0.3, 0.6, 0.1, 0.3]}[objective],
    })
    best = best_params(table, space, params, "key")
    assert best["trial"] == winner and best["model"]["reduction_ratios"] == table.loc[winner, "r"]
    assert best["objective"] == {"name": objective, "value": table.loc[winner, "objective"]}
    assert best["trials_completed"] == 4 and best["se_hidden"] == table.loc[winner, "se_hidden"]
