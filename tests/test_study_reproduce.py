"""Reproducing and extending the study: resume, --quick, kept fold models, summaries, interrupts (a helper's review)."""

import dataclasses
import shutil

import pandas as pd
import pytest

from genre_se.config import ConfigError
from study import compare
from tests.conftest import ROOT
from tests.test_study import tiny_study  # noqa: F401 (the fixture)


def _fake_row(*args, **kwargs):
    return {"clip_accuracy": 0.5, "clip_macro_f1": 0.5, "params": 1, "train_seconds": 1.0, "epochs_run": 1,
            "best_epoch": 1, "n_test_clips": 6}


def test_quick_is_one_epoch_even_for_a_variant_that_sets_its_epochs(tiny_study, tmp_path, monkeypatch):  # noqa: F811
    """README: `--quick` (one seed, one epoch per fold) for a smoke test. gtzan_mini.yaml's se_r16 (15 epochs),
    small_data.yaml's epochs30/epochs60 set train.epochs themselves, and the variant's keys win over --quick."""
    study, work = tiny_study
    study = dataclasses.replace(study, variants={"long": {"model.se": False, "train.epochs": 5}})
    epochs = []
    monkeypatch.setattr(compare, "run_cnn_fold",
                        lambda store, params, *a, **k: epochs.append(params.train.epochs) or _fake_row())
    compare.run_study(study, work / "features", work / "index.csv", tmp_path / "s.csv", state_root=tmp_path / "st",
                      quick=True)
    assert epochs and set(epochs) == {1}


def test_a_typo_in_a_later_variant_is_reported_before_any_fold_runs(tiny_study, tmp_path, monkeypatch):  # noqa: F811
    """A bad key in the last variant surfaced only after every earlier variant had run (hours on gtzan-mini)."""
    study, work = tiny_study
    study = dataclasses.replace(study, variants={"svm": "baseline", "bad": {"model.sqeeze": False}})

    def boom(*args, **kwargs):
        raise AssertionError("ran a fold before checking every variant")

    monkeypatch.setattr(compare, "run_baseline_fold", boom)
    with pytest.raises(ConfigError, match="sqeeze"):
        compare.run_study(study, work / "features", work / "index.csv", tmp_path / "s.csv",
                          state_root=tmp_path / "st")


def test_keep_models_keeps_the_fold_models_of_rows_already_done(tiny_study, tmp_path):  # noqa: F811
    """README: `run_gtzan_mini.sh --keep-models se_r16` then `study.excitations`: rows already in the CSV are
    skipped, so nothing is kept for them (and excitations then silently averages the folds that were rerun)."""
    study, work = tiny_study
    args = (study, work / "features", work / "index.csv", tmp_path / "s.csv")
    compare.run_study(*args, state_root=tmp_path / "st", variants=["se"], quick=True)
    compare.run_study(*args, state_root=tmp_path / "st", variants=["se"], quick=True, keep_models=["se"])
    bundles = tmp_path / "st" / "bundles" / "se" / "seed42"
    assert bundles.is_dir() and sorted(p.name for p in bundles.iterdir()) == ["fold0", "fold1", "fold2"]


def test_analyze_says_so_when_the_clips_are_not_held_out_from_the_bundle(tiny_study, tmp_path, capsys):  # noqa: F811
    """`genre-se analyze` ('on held-out clips') takes the store's split as held out; a fold bundle records its
    own test clips (extra.test_clips) and a train.fit_all bundle trained on every clip, but neither is checked."""
    from genre_se.cli import main

    study, work = tiny_study
    compare.run_study(study, work / "features", work / "index.csv", tmp_path / "s.csv", state_root=tmp_path / "st",
                      variants=["se"], quick=True, keep_models=["se"])
    fold0 = tmp_path / "st" / "bundles" / "se" / "seed42" / "fold0"
    from genre_se.bundle import load_bundle
    from genre_se.feature_store import FeatureStore

    store = FeatureStore.open(work / "features")
    test = set(store.table.loc[store.table["split"] == "test", "clip_id"])
    assert test - set(load_bundle(fold0).extra["test_clips"])  # the store's test split overlaps its training clips
    main(["analyze", "--model", str(fold0), "--features", str(work / "features"), "--split", "test",
          "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err.lower()
    assert "in-sample" in err or "trained on" in err


def test_summary_of_a_missing_results_csv_is_an_error_not_an_empty_table(tiny_study, tmp_path):  # noqa: F811
    """A mistyped --out (gtzan_mini.cvs) overwrote the committed summary with an empty table, exit 0."""
    study, work = tiny_study
    md = tmp_path / "summary.md"
    rc = compare.main(["summary", "--study", str(work.parent / "study.yaml"), "--out", str(tmp_path / "typo.cvs"),
                       "--summary", str(md)])
    assert rc != 0 and not md.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_dropped_inside_clear_session_still_stops_the_study(tiny_study, tmp_path, monkeypatch):  # noqa: F811
    """Same bug 8af7f19 fixed in tune: study.compare calls keras.backend.clear_session() after every fold
    (compare.py:359); a Ctrl-C raised in one of its weakref callbacks is printed and dropped and the run goes on."""
    import signal
    import weakref

    import keras

    study, work = tiny_study
    real = keras.backend.clear_session

    def hit(*args, **kwargs):
        real(*args, **kwargs)

        class Graph:
            pass

        graph = Graph()
        keep = weakref.ref(graph, lambda _: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))
        del graph
        assert keep() is None

    monkeypatch.setattr(keras.backend, "clear_session", hit)
    with pytest.raises(KeyboardInterrupt):
        compare.run_study(study, work / "features", work / "index.csv", tmp_path / "s.csv",
                          state_root=tmp_path / "st", variants=["no_se"], quick=True)
    assert len(pd.read_csv(tmp_path / "s.csv")) == 1  # stopped after the fold it hit; that fold's row is kept


def test_what_helped_names_a_missing_contrasts_file_in_one_line(tmp_path, capsys):
    from study import what_helped

    assert what_helped.main(["--contrasts", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "w.md")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_the_committed_gtzan_mini_rows_are_current_for_gtzan_mini_yaml(shared_data, tmp_path, monkeypatch):
    """README: run_gtzan_mini.sh 'resumable: finishes what the table above lacks'. Since params.yaml's
    model.input_norm became 'segment' (8c3fcb4), gtzan_mini.yaml (which reads params.yaml and does not pin it)
    gives every CNN variant a new configuration key: a rerun retrains all 20 finished CNN folds with per-segment
    standardisation and replaces the committed (dataset-norm) rows."""
    monkeypatch.chdir(ROOT)
    study = compare.load_study("study/gtzan_mini.yaml")
    work = tmp_path / "work"
    compare.prepare_work(study, work)
    out = tmp_path / "gtzan_mini.csv"
    shutil.copy(ROOT / "study/results/gtzan_mini.csv", out)

    def boom(*args, **kwargs):
        raise AssertionError("retrained a fold whose row is committed")

    monkeypatch.setattr(compare, "run_cnn_fold", boom)
    monkeypatch.setattr(compare, "run_baseline_fold", boom)
    compare.run_study(study, work / "features", work / "index.csv", out, state_root=tmp_path / "st", seeds=[42],
                      variants=["svm", "se_r16", "no_se", "se_r16_plain", "se_r16_es"])


def test_what_helped_names_a_listed_results_csv_that_does_not_exist(tmp_path, capsys):
    """A study not run yet (or a typo in 'results') leaves its rows out of every verdict: said on stderr."""
    from study import what_helped

    row = {"variant": "base", "seed": 42, "fold": 0, "clip_accuracy": 0.5, "clip_macro_f1": 0.5, "params": 1,
           "train_seconds": 1.0, "epochs_run": 1, "best_epoch": 1, "n_test_clips": 6, "config_key": "k"}
    pd.DataFrame([row, {**row, "variant": "new"}]).to_csv(tmp_path / "a.csv", index=False)
    spec = tmp_path / "what.yaml"
    spec.write_text("results: [a.csv, smal_data.csv]\n"
                    "contrasts:\n  - {change: more, variant: new, reference: base, verdict: kept}\n")
    assert what_helped.main(["--contrasts", str(spec), "--out", str(tmp_path / "w.md")]) == 0
    assert "smal_data.csv does not exist" in capsys.readouterr().err


def test_timing_and_compare_name_bad_input_in_one_line(tmp_path, capsys):
    from study import timing

    assert timing.main(["--variants", "a=model.sqeeze=false", "--rounds", "1"]) == 1
    assert "timing: error:" in capsys.readouterr().err
    assert compare.main(["run", "--study", str(ROOT / "study/small_data.yaml"), "--work", str(tmp_path / "nope")]) == 1
    assert "study.compare prepare" in capsys.readouterr().err


def test_an_unknown_reference_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare, "run_study", lambda *a, **k: pytest.fail("ran before checking --reference"))
    assert compare.main(["run", "--study", str(ROOT / "study/small_data.yaml"), "--work", str(tmp_path),
                         "--reference", "epoch30"]) == 1
    assert "--reference: 'epoch30' is not in the study" in capsys.readouterr().err


def test_the_readme_bundle_recipe_is_the_cross_validated_one():
    """README's `dvc exp run -S ...` for the gtzan-mini bundle must train what the study cross-validated
    (small_data.yaml's set + e30_kept, answered by the SVM head on its embeddings as study.fold_embeddings scores
    it): it ran with params.yaml's train.patience 8 against the CV's 6."""
    import re

    import yaml

    from genre_se.config import load_params

    study = yaml.safe_load((ROOT / "study/small_data.yaml").read_text(encoding="utf-8"))
    wanted = {**study["set"], **study["variants"]["e30_kept"], "model.classifier": "svm"}
    defaults = load_params(ROOT / "params.yaml")

    def default(key):
        section, name = key.split(".")
        return getattr(getattr(defaults, section), name)

    for readme in ("README.md", "study/README.md"):
        text = (ROOT / readme).read_text(encoding="utf-8")
        command = re.search(r"dvc exp run -S data\.root=\S+gtzan-mini/genres -S tune\.enabled=false(.*?)\n```",
                            text, re.S).group(1)
        given = {k: yaml.safe_load(v) for k, v in re.findall(r"-S (\S+?)=(\S+)", command)}
        for key, value in wanted.items():
            if key in ("data.root", "evaluate.folds"):  # where the data is; the CV itself
                continue
            if value != default(key):
                assert key in given and given[key] == value, f"{readme}: the recipe lacks -S {key}={value}"


@pytest.mark.parametrize("skip_tune", [False, True])
def test_the_study_script_runs_prepare_tune_run_and_skip_tune_keeps_best_params(tmp_path, skip_tune):
    """`run_gtzan_mini.sh` calls the three steps with its arguments going to `run`; SKIP_TUNE=1 leaves out the tune
    step (to rerun se_tuned at a given r), and refuses before any step when there is no best_params.json to keep."""
    import os
    import subprocess

    (tmp_path / "study").mkdir()
    shutil.copy(ROOT / "study/run_gtzan_mini.sh", tmp_path / "study")
    calls = tmp_path / "calls.txt"
    python = tmp_path / "fake-python"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "SKIP_TUNE": "1" if skip_tune else "0"}
    script = ["bash", str(tmp_path / "study/run_gtzan_mini.sh"), "--variants", "svm"]
    if skip_tune:
        out = subprocess.run(script, env=env, capture_output=True, text=True)
        assert out.returncode == 2 and "best_params.json is missing" in out.stderr and not calls.exists()
        (tmp_path / "study/work/gtzan").mkdir(parents=True)
        (tmp_path / "study/work/gtzan/best_params.json").write_text("{}")
    out = subprocess.run(script, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    steps = [line.split()[2] for line in calls.read_text().splitlines()]  # -m study.compare STEP ...
    assert steps == (["prepare", "run"] if skip_tune else ["prepare", "tune", "run"])
    assert calls.read_text().splitlines()[-1].endswith("--variants svm")
