"""genre_se.familiarity: embedding distance from the training data, its threshold, storage, and predict's flag."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from genre_se.errors import ConfigError, ModelError
from genre_se.familiarity import (FAMILIARITY_FILE, Familiarity, fit_familiarity, load_familiarity,
                                  save_familiarity)


def _gaussian(n, dim=6, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 3.0, dim)  # unequal variances: a Euclidean distance would rank differently
    return rng.standard_normal((n, dim)) * scales + shift


def test_distance_is_the_mahalanobis_distance_under_the_shrunk_covariance_and_far_clips_are_flagged():
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import LedoitWolf

    train = _gaussian(400)
    reference = [_gaussian(12, seed=s) for s in range(1, 21)]
    stats = fit_familiarity(train, reference, quantile=0.9)
    precision = np.linalg.inv(LedoitWolf().fit(train).covariance_)
    clip = _gaussian(5, seed=99)
    expected = np.mean([mahalanobis(row, train.mean(axis=0), precision) for row in clip])
    assert stats.distance(clip) == pytest.approx(expected, rel=1e-6)
    # the threshold is the 0.9 quantile of the reference clips' own distances
    assert stats.threshold == pytest.approx(np.quantile([stats.distance(c) for c in reference], 0.9))
    assert stats.n_segments == 400 and stats.n_reference == 20
    # a clip moved along the low-variance axis by 3 of its standard deviations is beyond it; an unmoved one is not
    moved = clip + np.eye(6)[0] * 1.5
    assert stats.distance(moved) > stats.threshold > stats.distance(_gaussian(40, seed=7))


def test_bad_inputs_are_clear_errors():
    train, reference = _gaussian(50), [_gaussian(4, seed=1)]
    for quantile in (0, 1.5, True, "0.9"):
        with pytest.raises(ModelError, match="quantile"):
            fit_familiarity(train, reference, quantile)
    with pytest.raises(ModelError, match="reference"):
        fit_familiarity(train, [])
    with pytest.raises(ModelError, match="finite training embeddings"):
        fit_familiarity(np.full((5, 6), np.nan), reference)
    stats = fit_familiarity(train, reference)
    with pytest.raises(ModelError, match=r"\(n, 6\)"):
        stats.distance(np.zeros((3, 5)))
    with pytest.raises(ModelError, match="no segment"):
        stats.distance(np.zeros((0, 6)))


def test_saved_statistics_load_back_and_refuse_another_model_or_damage(tmp_path):
    stats = fit_familiarity(_gaussian(100), [_gaussian(5, seed=2), _gaussian(5, seed=3)], 0.95, model_sha1="abc")
    assert load_familiarity(tmp_path) is None  # none stored: none used
    save_familiarity(tmp_path, stats)
    assert [p.name for p in tmp_path.iterdir()] == [FAMILIARITY_FILE]  # no temporary file left behind
    back = load_familiarity(tmp_path, model_sha1="abc")
    np.testing.assert_array_equal(back.precision, stats.precision)
    assert (back.threshold, back.quantile, back.n_reference) == (stats.threshold, 0.95, 2)
    with pytest.raises(ModelError, match="another model.keras"):
        load_familiarity(tmp_path, model_sha1="def")
    (tmp_path / FAMILIARITY_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match=FAMILIARITY_FILE):
        load_familiarity(tmp_path)
    # an object array (a pickle) is refused, never unpickled
    np.savez(tmp_path / FAMILIARITY_FILE, mean=np.array([object()], dtype=object), precision=np.eye(1),
             meta=np.array("{}"))
    with pytest.raises(ModelError, match="cannot read"):
        load_familiarity(tmp_path)
    mismatched = Familiarity(np.zeros(3), np.eye(4), 1.0, 0.9, 10, 2)
    save_familiarity(tmp_path, mismatched)
    with pytest.raises(ModelError, match="do not fit together"):
        load_familiarity(tmp_path)


def test_params_take_a_quantile_or_null(tmp_path):
    from genre_se.config import load_params
    from tests.conftest import write_params

    assert load_params(write_params(tmp_path / "a.yaml", {"predict.unfamiliar_quantile": None})) \
        .predict.unfamiliar_quantile is None
    for bad in (0, 1.2, True):
        with pytest.raises(ConfigError, match="unfamiliar_quantile"):
            load_params(write_params(tmp_path / "b.yaml", {"predict.unfamiliar_quantile": bad}))


# --------------------------------------------------------------------------------------------------
# The train stage and predict, on a tiny trained model (the calibration tests' fixture)

from tests.test_calibration import trained  # noqa: E402,F401  (a module-scoped fixture)


@pytest.mark.slow
def test_train_stage_stores_statistics_whose_threshold_comes_from_the_validation_clips(trained):  # noqa: F811
    from genre_se.bundle import load_bundle
    from genre_se.fileio import file_sha1
    from genre_se.model import embedding_model

    bundle_dir, store = trained["bundle"], trained["store"]
    stats = load_familiarity(bundle_dir, file_sha1(bundle_dir / "model.keras"))
    record = json.loads((bundle_dir / "bundle.json").read_text())["extra"]["familiarity"]
    assert record == {"threshold": stats.threshold, "quantile": 0.95, "n_segments": len(store.rows("train")),
                      "n_reference": 6, "fit_on": "val"}
    # independently: the validation clips' mean distances, their 0.95 quantile
    embed = embedding_model(load_bundle(bundle_dir).model)
    rows = store.rows("valid")
    vectors = np.asarray(embed(np.asarray(store.segments[rows], dtype=np.float32), training=False), np.float64)
    centred = vectors - stats.mean
    d = np.sqrt(np.einsum("ij,jk,ik->i", centred, stats.precision, centred))
    per_clip = pd.Series(d).groupby(store.table["clip_id"].to_numpy()[rows]).mean()
    assert stats.threshold == pytest.approx(np.quantile(per_clip.to_numpy(), 0.95), rel=1e-5)
    assert any(line.startswith("familiarity: ") for line in trained["log"])


@pytest.mark.slow
def test_predict_flags_a_recording_unlike_the_training_data(trained, tmp_path, capsys):  # noqa: F811
    from genre_se.cli import main
    from genre_se.inference import GenreClassifier
    from tests.test_inference import BAND_HZ, tone, write

    familiar = write(tmp_path / "low.wav", tone(BAND_HZ["low"], 2.0, seed=5))
    rng = np.random.default_rng(0)
    stranger = write(tmp_path / "clicks.wav", np.repeat(rng.choice([-0.9, 0.9], 400), 40).astype(np.float32))
    answers = {}
    for backend in ("litert", "keras"):
        clf = GenreClassifier.load(trained["bundle"], backend=backend)
        answers[backend] = [clf.predict(p) for p in (familiar, stranger)]
        near, far = answers[backend]
        assert near.distance < clf.familiarity.threshold < far.distance
        assert not near.unfamiliar and far.unfamiliar and far.uncertain  # unfamiliar: the answer is a guess
        # the distance is the familiarity of the file's own embeddings, as embed gives them
        assert near.distance == pytest.approx(clf.familiarity.distance(clf.embed(familiar).segments), rel=1e-4)
        # the probabilities are those of the model alone (the embedding pass changes nothing)
        plain = GenreClassifier(clf.bundle, familiarity=False).predict(familiar)
        np.testing.assert_allclose(near.probabilities, plain.probabilities, atol=1e-6)
        assert plain.distance is None and not plain.unfamiliar
    assert answers["litert"][1].distance == pytest.approx(answers["keras"][1].distance, rel=1e-3)

    assert main(["predict", str(familiar), str(stranger), "--model", str(trained["bundle"]), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"]["familiarity"]["n_reference"] == 6
    flags = {r["path"]: (r["unfamiliar"], r["uncertain"]) for r in document["predictions"]}
    assert flags == {str(familiar): (False, flags[str(familiar)][1]), str(stranger): (True, True)}
    assert main(["predict", str(stranger), "--model", str(trained["bundle"])]) == 0
    assert "(uncertain: unlike the training recordings)" in capsys.readouterr().out


@pytest.mark.slow
def test_near_silent_segments_take_no_part_in_the_distance(trained, tmp_path):  # noqa: F811
    """Three seconds of digital silence before the music: silence is far from every training segment, so
    counted it would make an ordinary recording look unfamiliar; the distance is that of the audible segments,
    as the file's genre is."""
    from genre_se.inference import GenreClassifier
    from tests.test_inference import BAND_HZ, tone, write

    path = write(tmp_path / "pause_then_low.wav",
                 np.concatenate([np.zeros(8000 * 3, np.float32), tone(BAND_HZ["low"], 2.0, seed=5)]))
    clf = GenreClassifier.load(trained["bundle"], backend="keras")
    result, embedding = clf.predict(path), clf.embed(path)
    assert result.silent.any() and not result.silent.all()
    np.testing.assert_array_equal(embedding.silent, result.silent)
    audible = clf.familiarity.distance(embedding.segments[~embedding.silent])
    assert result.distance == pytest.approx(audible, rel=1e-4)
    assert clf.familiarity.distance(embedding.segments) > 1.05 * audible  # the silence would have counted

@pytest.mark.slow
def test_statistics_of_another_model_stop_predict_with_a_clear_message(trained, tmp_path, capsys):  # noqa: F811
    from genre_se.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    stats = load_familiarity(bundle)
    save_familiarity(bundle, Familiarity(stats.mean, stats.precision, stats.threshold, stats.quantile,
                                         stats.n_segments, stats.n_reference, model_sha1="0" * 40))
    assert main(["predict", str(tmp_path / "x.wav"), "--model", str(bundle)]) != 0
    err = capsys.readouterr().err
    assert "another model.keras" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_familiarity_command_adds_the_statistics_to_an_older_bundle(trained, tmp_path, capsys):  # noqa: F811
    from genre_se.cli import main

    older = tmp_path / "older"
    shutil.copytree(trained["bundle"], older)
    (older / FAMILIARITY_FILE).unlink()
    meta = json.loads((older / "bundle.json").read_text())
    del meta["extra"]["familiarity"]
    (older / "bundle.json").write_text(json.dumps(meta))
    assert main(["familiarity", "--model", str(older), "--features", str(trained["store"].root)]) == 0
    added, original = load_familiarity(older), load_familiarity(trained["bundle"])
    # the same model and store: the statistics the train stage wrote
    assert added.threshold == pytest.approx(original.threshold, rel=1e-6) and added.model_sha1 == original.model_sha1
    np.testing.assert_allclose(added.precision, original.precision, rtol=1e-6, atol=1e-9)
    assert json.loads((older / "bundle.json").read_text())["extra"]["familiarity"] == added.record()
    # a store of other features is refused by name, not scored
    other = trained["root"] / "bundle.json"  # any path that is not a store
    assert main(["familiarity", "--model", str(older), "--features", str(other.parent / "nowhere")]) != 0
    assert "Traceback" not in capsys.readouterr().err
