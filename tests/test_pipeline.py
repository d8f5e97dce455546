"""End to end through the real stages (CLI, no mocks) on a tiny generated dataset with a tiny model."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from genre_se.cli import main
from genre_se.evaluate import CV_FOLD_COLUMNS
from tests.conftest import TINY_PARAMS, write_params

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path, tone_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "data.root": str(tone_dataset)})
    return tmp_path


def run(*argv):
    assert main(["-q", *argv]) == 0


def test_stages_end_to_end(workdir):
    run("prepare")
    run("features")
    run("tune")
    run("train")
    run("evaluate")
    from genre_se.bundle import load_bundle

    bundle = load_bundle(workdir / "models/bundle")
    assert bundle.labels == ["high", "low", "mid"]
    assert bundle.feature_config.sample_rate == 8000
    # where the model learned, for predict's note (tones, not the built-in corpus)
    assert bundle.extra["training_data"]["builtin_corpus"] is False
    store_meta = json.loads((workdir / "data/features/meta.json").read_text())
    assert bundle.extra["training_data"]["features_sha1"] == store_meta["content_sha1"]
    assert len(store_meta["content_sha1"]) == 40

    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    assert metrics["in_sample"] is False  # the test clips were held out
    for level in ("clip", "segment"):
        for key in ("accuracy", "macro_f1"):
            assert 0.0 <= metrics[level][key] <= 1.0
    index = pd.read_csv(workdir / "data/index.csv")
    n_test = int((index["split"] == "test").sum())
    assert metrics["n_clips"] == n_test
    predictions = pd.read_csv(workdir / "reports/predictions.csv")
    assert len(predictions) == n_test and set(predictions["clip_id"]) == set(index[index.split == "test"].clip_id)
    per_class = pd.read_csv(workdir / "reports/per_class.csv")
    assert per_class["support"].sum() == n_test
    assert (workdir / "reports/confusion_matrix.png").stat().st_size > 1000
    live = json.loads((workdir / "dvclive/metrics.json").read_text())
    assert "val" in live and "train" in live
    # the tones are trivially separable: a working pipeline learns them
    assert metrics["segment"]["accuracy"] > 0.5


def test_no_clip_straddles_splits(workdir):
    run("prepare")
    run("features")
    table = pd.read_csv(workdir / "data/features/segments.csv")
    assert (table.groupby("clip_id")["split"].nunique() == 1).all()


@pytest.mark.parametrize("fit_all", [False, True])
def test_kfold_reports_mean_and_std(workdir, capsys, fit_all):
    """The CV (fold f+1 early-stops, or with train.fit_all trains too). With fit_all (the final bundle's recipe)
    the bundle saw the test clips: its test-split numbers are marked in-sample, and the CV gives held-out ones."""
    write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(workdir / "tones"),
                                           "evaluate.folds": 3, "train.epochs": 1, "train.fit_all": fit_all})
    for stage in ("prepare", "features", "tune", "train", "evaluate"):
        run(stage)
    assert ("test clips, IN-SAMPLE (train.fit_all" in capsys.readouterr().err) is fit_all
    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    assert metrics["in_sample"] is fit_all
    cv = metrics["cv"]
    assert cv["folds"] == 3 and 0 <= cv["clip_accuracy_mean"] <= 1 and cv["clip_accuracy_std"] >= 0
    folds = pd.read_csv(workdir / "reports/cv_folds.csv")
    assert len(folds) == 3 and folds["n_clips"].sum() == 18  # every clip tested exactly once
    assert list(folds.columns) == list(CV_FOLD_COLUMNS)  # the header a run without folds writes
    assert cv["std_ddof"] == 1 and cv["clip_accuracy_std"] == pytest.approx(folds["clip_accuracy"].std(ddof=1))
    if not fit_all:  # back to one split: no stale per-fold table beside metrics without cv
        write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(workdir / "tones"),
                                               "evaluate.folds": 1, "train.epochs": 1})
        run("evaluate")
        assert "cv" not in json.loads((workdir / "reports/metrics.json").read_text())
        assert pd.read_csv(workdir / "reports/cv_folds.csv").empty  # the header alone (a declared DVC output)


def test_training_resumes_after_being_killed(workdir):
    run("prepare")
    run("features")
    run("tune")
    write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(workdir / "tones"),
                                           "train.epochs": 40, "train.patience": 40})
    state = workdir / "models/train-state/state.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genre_se", "train"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 40
    out = subprocess.run([sys.executable, "-m", "genre_se", "train", "-S", "train.epochs=" + str(done + 2)],
                         cwd=workdir, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resumed after epoch {done}" in out.stderr
    assert f"epoch {done + 1}/" in out.stderr and "epoch 1/" not in out.stderr
    assert not state.exists()  # finished: state cleared
    steps = json.loads((workdir / "dvclive/metrics.json").read_text())["step"]
    assert steps == done + 1  # DVCLive continued the curve instead of restarting it (0-based step)


def test_prepare_notes_a_genre_with_no_test_clip(workdir, capsys):
    import shutil

    from tests.conftest import make_tone_dataset

    root = make_tone_dataset(workdir / "uneven", per_label=6)
    for extra in sorted((root / "high").iterdir())[1:]:  # high keeps one clip: it can only train
        extra.unlink() if extra.is_file() else shutil.rmtree(extra)
    write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(root)})
    run("prepare")
    err = capsys.readouterr().err
    assert "note: no test clip of high (1 clip)" in err and "low (" not in err


def test_bad_data_root_is_a_clear_error(workdir, capsys):
    write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(workdir / "nope")})
    assert main(["prepare"]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_kfold_with_fusion_scores_the_fused_answer_and_each_part(workdir):
    write_params(workdir / "params.yaml", {**TINY_PARAMS, "data.root": str(workdir / "tones"), "tune.enabled": False,
                                           "evaluate.folds": 3, "train.epochs": 1, "model.fusion": "svm"})
    for stage in ("prepare", "features", "tune", "train", "evaluate"):
        run(stage)
    assert (workdir / "data/features/clip_stats.npz").is_file() and (workdir / "models/bundle/svm.npz").is_file()
    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    assert {"clip_cnn", "clip_svm"} <= set(metrics)
    folds = pd.read_csv(workdir / "reports/cv_folds.csv")
    assert {"cnn_clip_accuracy", "svm_clip_accuracy"} <= set(folds.columns) and folds["n_clips"].sum() == 18
    assert metrics["cv"]["svm_clip_accuracy_mean"] == pytest.approx(folds["svm_clip_accuracy"].mean())
    assert metrics["cv"]["clip_accuracy_mean"] == pytest.approx(folds["clip_accuracy"].mean())
