"""Class-wise SE excitations (genre_se.analyze, `genre-se analyze`) and the notebook that shows them,
executed top to bottom on a tiny bundle so it cannot rot."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from genre_se.analyze import ClassExcitations, class_excitations, excitation_figure, split_rows
from genre_se.cli import main
from tests.conftest import ROOT, TINY_PARAMS, make_tone_dataset, write_params

NOTEBOOK = ROOT / "notebooks" / "se_excitations.ipynb"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The pipeline's outputs on tiny tone data: a feature store and a trained (2-block) SE-CNN bundle."""
    from genre_se.bundle import load_bundle
    from genre_se.config import load_params
    from genre_se.datasets import run_prepare
    from genre_se.feature_store import FeatureStore, run_features
    from genre_se.train import run_train

    root = tmp_path_factory.mktemp("analyze")
    tones = make_tone_dataset(root / "tones")
    params = load_params(write_params(root / "params.yaml", {**TINY_PARAMS, "data.root": str(tones),
                                                             "train.epochs": 2}))
    run_prepare(params, root / "index.csv", root / "prepare_errors.csv")
    run_features(params, root / "index.csv", root / "features", root / "cache", root / "features_errors.csv")
    run_train(params, root / "features", root / "bundle", root / "state", root / "live", best_params_path=None)
    return {"root": root, "bundle": load_bundle(root / "bundle"), "store": FeatureStore.open(root / "features")}


def test_excitations_are_clip_means_averaged_per_genre(outputs):
    from genre_se.model import excitations

    bundle, store = outputs["bundle"], outputs["store"]
    rows = split_rows(store, "valid,test")
    exc = class_excitations(bundle, store, rows, batch_size=7)  # batches cut through clips
    assert exc.blocks == ["block1_se", "block2_se"] and exc.labels == ["high", "low", "mid"]
    assert [m.shape for m in exc.means] == [(3, 4), (3, 8)]
    table = store.table.iloc[rows]
    assert sorted(exc.clip_ids) == sorted(table["clip_id"].unique())
    gates = excitations(bundle.model, np.asarray(store.segments[rows], dtype=np.float32))
    for block, (means, segment_gates) in enumerate(zip(exc.means, gates)):
        per_clip = pd.DataFrame(segment_gates).groupby(table["clip_id"].to_numpy()).mean()
        label_of = table.groupby("clip_id")["label_index"].first()
        expected = per_clip.groupby(label_of.loc[per_clip.index].to_numpy()).mean().to_numpy()
        np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)
        assert np.all((means > 0) & (means < 1))
    assert exc.clips_per_genre.sum() == len(exc.clip_ids)



def test_a_clips_excitation_is_the_mean_over_its_own_segments_when_clips_differ_in_length(outputs):
    """Clips of unequal length (here one clip cut to its last segments): each clip's mean divides by its own
    segment count, and the genre mean weighs every clip once whatever its length."""
    from genre_se.model import excitations

    bundle, store = outputs["bundle"], outputs["store"]
    rows = split_rows(store, "valid,test")
    clip_ids = store.table["clip_id"].to_numpy()
    first_clip = clip_ids[rows[0]]
    rows = np.r_[rows[clip_ids[rows] == first_clip][-2:], rows[clip_ids[rows] != first_clip]]
    exc = class_excitations(bundle, store, rows, batch_size=5)
    table = store.table.iloc[np.sort(rows)]
    assert table["clip_id"].value_counts().nunique() > 1  # the clips' lengths differ
    gates = excitations(bundle.model, np.asarray(store.segments[np.sort(rows)], dtype=np.float32))
    label_of = table.groupby("clip_id")["label_index"].first()
    for block, segment_gates in enumerate(gates):
        per_clip = pd.DataFrame(segment_gates).groupby(table["clip_id"].to_numpy()).mean().loc[exc.clip_ids]
        np.testing.assert_allclose(exc.clip_means[block], per_clip.to_numpy(), rtol=1e-5, atol=1e-6)
        expected = per_clip.groupby(label_of.loc[per_clip.index].to_numpy()).mean()
        np.testing.assert_allclose(exc.means[block][expected.index], expected.to_numpy(), rtol=1e-5, atol=1e-6)

def test_a_genre_without_clips_gets_nan_and_no_line(outputs):
    store = outputs["store"]
    rows = np.flatnonzero(store.table["label"].isin(["low", "mid"]).to_numpy())
    exc = class_excitations(outputs["bundle"], store, rows)
    assert np.all(np.isnan(exc.means[0][0])) and not np.any(np.isnan(exc.means[0][1:]))
    fig = excitation_figure(exc)
    assert [len(ax.lines) for ax in fig.axes[:2]] == [2, 2]


def test_summary_measures_class_specificity():
    labels = np.repeat([0, 1, 2], 4)
    rng = np.random.default_rng(0)
    general = 0.5 + 0.01 * rng.standard_normal((12, 6))  # the same whatever the genre
    specific = np.where(labels[:, None] == np.arange(6)[None, :] % 3, 0.9, 0.1) + 0.01 * rng.standard_normal((12, 6))
    means = [np.stack([c[labels == g].mean(axis=0) for g in range(3)]) for c in (general, specific)]
    exc = ClassExcitations(["a", "b", "c"], ["block1_se", "block2_se"], means, [general, specific], labels,
                           [f"clip{i}" for i in range(12)])
    summary = exc.summary().set_index("block")
    assert summary.loc["block2_se", "eta_squared"] > 0.95 and summary.loc["block2_se", "eta_squared_excess"] > 0.7
    chance = (3 - 1) / (12 - 1)  # expected eta squared of pure noise: (groups - 1) / (n - 1)
    assert summary.loc["block1_se", "eta_squared_chance"] == pytest.approx(chance, abs=0.05)
    assert abs(summary.loc["block1_se", "eta_squared_excess"]) < 0.2  # the general block: chance level
    assert summary.loc["block1_se", "genre_spread"] < 0.02 and summary.loc["block2_se", "genre_spread"] > 0.3
    one_each = ClassExcitations(["a", "b"], ["b1"], [specific[:2]], [specific[:2]], np.array([0, 1]), ["x", "y"])
    assert np.isnan(one_each.summary()["eta_squared"][0])  # one clip per genre: not measurable
    dead = np.full((12, 6), 0.7)  # a dead SE bottleneck: the same gates for every input
    constant = ClassExcitations(["a", "b", "c"], ["b1"], [dead[:3]], [dead], labels, exc.clip_ids)
    assert np.isnan(constant.summary()["eta_squared"][0]) and constant.summary()["genre_spread"][0] < 1e-9
    frame = exc.to_frame()
    assert len(frame) == 2 * 3 * 6 and set(frame.columns) == {"block", "genre", "channel", "excitation", "clips"}


def test_nearest_genre_asks_whether_each_held_out_clips_gates_point_to_its_genre():
    from genre_se.analyze import nearest_genre_hits

    labels = np.repeat([0, 1, 2, 3], 3)
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((4, 8))
    clips = 0.5 + 1e-3 * (centres[labels] + 0.2 * rng.standard_normal((12, 8)))  # faint but genre-driven gates
    hits = nearest_genre_hits(clips, labels)
    assert hits.shape == (12,) and hits.all()
    noise = rng.standard_normal((12, 8))
    assert nearest_genre_hits(noise, labels).mean() < 0.6  # chance: about 1 in 4
    # the clip itself never counts toward its own genre: two identical clips of different genres and a third
    # clip equal to the first, of the second's genre, would be "right" if the clip were left in
    tricky = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.2]])
    assert nearest_genre_hits(tricky, np.array([0, 1, 0, 1])).tolist() == [False, False, False, False]
    one_each = nearest_genre_hits(noise[:4], np.arange(4))
    assert one_each.size == 0  # no genre with a second clip: nothing to ask
    assert nearest_genre_hits(np.full((12, 8), 0.3), labels).size == 0  # a dead block
    assert nearest_genre_hits(noise[:6], np.zeros(6, dtype=int)).size == 0  # one genre: right whatever the gates
    exc = ClassExcitations(["a", "b", "c", "d"], ["b1"], [np.stack([clips[labels == g].mean(0) for g in range(4)])],
                           [clips], labels, [f"c{i}" for i in range(12)])
    row = exc.summary(permutations=30).iloc[0]
    assert row["nearest_genre"] == 1.0 and row["nearest_genre_clips"] == 12 and row["nearest_genre_chance"] < 0.5


def test_analyze_command_writes_the_figure_and_table(outputs, tmp_path, capsys):
    root = outputs["root"]
    png, csv = tmp_path / "exc.png", tmp_path / "exc.csv"
    code = main(["-q", "analyze", "--model", str(root / "bundle"), "--features", str(root / "features"),
                 "--split", "all", "--out", str(png), "--table", str(csv)])
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    table = pd.read_csv(csv)
    assert len(table) == 3 * (4 + 8) and table.groupby("genre")["clips"].first().sum() == 18
    err = capsys.readouterr().err
    assert "block2_se" in err and "nearest genre" in err and "untrained copy" in err
    assert main(["-q", "analyze", "--model", str(root / "bundle"), "--features", str(root / "features"),
                 "--split", "holdout", "--out", str(png)]) == 1
    assert "--split" in capsys.readouterr().err


def test_analyze_sets_every_statistic_beside_an_untrained_copys(outputs):
    """The input's genre differences reach the gates through any weights: each statistic comes with the same
    clips through an untrained copy of the model (fresh weights, same architecture and normalisation), and the
    bundle's own model is left as it was."""
    from genre_se.analyze import run_analyze, untrained_copy

    root, bundle, store = outputs["root"], outputs["bundle"], outputs["store"]
    before = [w.copy() for w in bundle.model.get_weights()]
    copy = untrained_copy(bundle, seed=3)
    after = bundle.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert copy.model is not bundle.model and copy.normalisation == bundle.normalisation
    trained_w, fresh_w = bundle.model.get_weights(), copy.model.get_weights()
    assert [w.shape for w in trained_w] == [w.shape for w in fresh_w]
    assert not all(np.array_equal(a, b) for a, b in zip(trained_w, fresh_w))

    exc = run_analyze(root / "bundle", root / "features", split="all")
    summary = exc.summary(permutations=20)
    control = class_excitations(untrained_copy(outputs["bundle"]), store, split_rows(store, "all"))
    np.testing.assert_allclose(summary["genre_spread_untrained"], control.summary(permutations=20)["genre_spread"])
    assert np.isfinite(summary["genre_spread_untrained"]).all()
    np.testing.assert_allclose(summary["nearest_genre_untrained"], control.summary(permutations=20)["nearest_genre"])
    assert not np.allclose(summary["genre_spread_untrained"], summary["genre_spread"])


def test_analyze_refuses_an_unwritable_output_before_the_work_and_writes_neither(outputs, tmp_path, capsys,
                                                                                  monkeypatch):
    """A --table that cannot be written was found only after the excitations, with the PNG already written
    and exit 1: half the output. Both places are checked first, as embed and robustness check theirs."""
    from genre_se import analyze

    root = outputs["root"]
    blocker = tmp_path / "reports"
    blocker.write_text("a file where a folder is needed")
    png = tmp_path / "exc.png"
    monkeypatch.setattr(analyze, "class_excitations", lambda *a, **k: pytest.fail("computed before the check"))
    for out, table in ((png, blocker / "exc.csv"), (blocker / "exc.png", tmp_path / "exc.csv")):
        code = main(["-q", "analyze", "--model", str(root / "bundle"), "--features", str(root / "features"),
                     "--out", str(out), "--table", str(table)])
        assert code == 1 and "cannot write here" in capsys.readouterr().err
        assert not png.exists() and not (tmp_path / "exc.csv").exists()


def _code_cells(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_notebook_runs_top_to_bottom(outputs, tmp_path, monkeypatch):
    """Every code cell, in order, in one namespace (what a kernel does, without needing Jupyter)."""
    root = outputs["root"]
    out = tmp_path / "nb.png"
    monkeypatch.setenv("GENRE_SE_MODEL", str(root / "bundle"))
    monkeypatch.setenv("GENRE_SE_FEATURES", str(root / "features"))
    monkeypatch.setenv("GENRE_SE_OUT", str(out))
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace = {"__name__": "__main__"}
    cells = _code_cells(NOTEBOOK)
    assert len(cells) >= 4
    for number, source in enumerate(cells):
        exec(compile(source, f"{NOTEBOOK.name}[code cell {number}]", "exec"), namespace)  # noqa: S102 (the notebook's own code)
    assert out.stat().st_size > 5000
    assert list(namespace["summary"]["block"]) == ["block1_se", "block2_se"]
    assert "genre_spread_untrained" in namespace["summary"].columns  # the control the notebook's text promises
    assert "nearest_genre_untrained" in namespace["summary"].columns
    assert namespace["ROOT"] == ROOT


def test_notebook_runs_in_a_jupyter_kernel(outputs, tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e '.[test]')")
    root = outputs["root"]
    out = tmp_path / "kernel.png"
    env = {"GENRE_SE_MODEL": str(root / "bundle"), "GENRE_SE_FEATURES": str(root / "features"),
           "GENRE_SE_OUT": str(out)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert out.stat().st_size > 5000
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_pooling_analyses_of_one_model_equals_one_analysis_of_all_their_clips(outputs):
    from genre_se.analyze import clip_rows, combine

    bundle, store = outputs["bundle"], outputs["store"]
    clips = sorted(store.table["clip_id"].unique())
    halves = [clip_rows(store, clips[::2]), clip_rows(store, clips[1::2])]
    pooled = combine([class_excitations(bundle, store, rows) for rows in halves])
    whole = class_excitations(bundle, store, np.arange(len(store.table)))
    assert sorted(pooled.clip_ids) == sorted(whole.clip_ids)
    for a, b in zip(pooled.means, whole.means):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    with pytest.raises(Exception, match="fold"):
        split_rows(store, "fold0")  # this store was built without k-fold folds
    with pytest.raises(Exception, match="nope"):
        clip_rows(store, ["nope"])



def test_split_rows_unites_the_splits_and_folds_named(tmp_path):
    """``--split valid,test`` analyses the clips of both splits, ``fold1,fold2`` of both folds, ``all`` every row."""
    from genre_se.config import FeatureConfig
    from genre_se.feature_store import FeatureStore

    splits = ["train", "valid", "test", "train", "valid", "test", "train", "train"]
    table = pd.DataFrame({"segment": range(8), "clip_id": [f"c{i}" for i in range(8)], "label_index": 0,
                          "split": splits, "fold": [0, 1, 2, 0, 1, 2, 1, 2]})
    store = FeatureStore(tmp_path, np.zeros((8, 2, 2, 1), np.float16), table, ["a"], FeatureConfig())
    assert split_rows(store, "valid,test").tolist() == [1, 2, 4, 5]
    assert split_rows(store, "test, valid").tolist() == [1, 2, 4, 5]
    assert split_rows(store, "train").tolist() == [0, 3, 6, 7]
    assert split_rows(store, "fold1,fold2").tolist() == [1, 2, 4, 5, 6, 7]
    assert split_rows(store, "all").tolist() == list(range(8))

def test_analyze_warns_when_the_clips_are_the_bundles_training_clips(outputs):
    from genre_se.analyze import not_held_out, run_analyze, too_few_clips

    root = outputs["root"]
    notes = []
    exc = run_analyze(root / "bundle", root / "features", split="test", warn=notes.append)
    # held out; the tiny test split may be too small to measure, which is said (and only that)
    few = too_few_clips(exc.clip_labels)
    assert notes == ([] if few is None else [f"{few}: try more clips (--split valid,test)"])
    notes.clear()
    run_analyze(root / "bundle", root / "features", split="train,test", warn=notes.append)
    assert notes == ["in-sample: the train split is what the bundle trained on"]
    extra = outputs["bundle"].extra
    assert not_held_out(extra, ["a"], {"train"}, store_digest="another store's") is None  # its splits are not ours
    assert "train.fit_all" in not_held_out({**extra, "train_config": {"fit_all": True}}, ["a"], {"test"})


def test_analyze_says_why_when_the_split_has_too_few_clips_to_measure():
    """gtzan-mini's 5-fold test split holds one clip per genre: every statistic came out 'nan' without a word."""
    from genre_se.analyze import too_few_clips

    one_each = np.array([0, 1, 2, 3])
    assert "more clips than genres" in too_few_clips(one_each)
    assert "two genres" in too_few_clips(np.array([2, 2, 2]))
    assert too_few_clips(np.array([0, 0, 1, 1, 2])) is None
    exc = ClassExcitations(labels=["x", "y", "z"], blocks=["b"], means=[np.zeros((3, 2))],
                           clip_means=[np.random.default_rng(0).random((3, 2))], clip_labels=np.array([0, 1, 2]),
                           clip_ids=["a", "b", "c"])
    row = exc.summary(permutations=5).iloc[0]
    assert np.isnan(row["eta_squared"]) and np.isnan(row["nearest_genre"])  # what the warning explains
