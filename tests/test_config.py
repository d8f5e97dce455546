"""params.yaml loading: the shipped file is valid, and every kind of mistake names its key."""

from pathlib import Path

import pytest
import yaml

from genre_se.config import Params, load_params
from genre_se.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def shipped():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_load_and_match_defaults_where_documented():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.features.sample_rate == 22050
    assert params.features.n_fft == 2048 and params.features.hop_length == 512 and params.features.n_mels == 128
    assert params.features.segment_frames == 128 and params.features.segment_hop == 64
    assert params.model.filters == [32, 64, 128, 256, 128]
    # every key in the file is one the loader knows (round trip through the dataclasses)
    assert set(shipped()) == set(params.to_dict())


@pytest.mark.parametrize(
    "dotted, value, needle",
    [
        ("features.n_mels", 0, "features.n_mels"),
        ("features.hop_length", 4096, "features.hop_length"),
        ("features.fmax", 20000.0, "features.fmax"),
        ("features.segment_hop", 500, "features.segment_hop"),
        ("data.test_fraction", 1.5, "data.test_fraction"),
        ("data.layout", "zip", "data.layout"),
        ("train.epochs", "ten", "train.epochs"),
        ("model.head", "dense", "model.head"),
        ("model.reduction_ratios", [16, 16], "model.reduction_ratios"),
        ("model.reduction_ratios", 0, "model.reduction_ratios"),
        ("model.dropout", [0.1, 0.2, 0.3, 0.4, 1.2], "model.dropout"),
        ("model.se", "yes", "model.se"),
        # per-block entries of the wrong type: named, not a TypeError from a comparison
        ("model.dropout", [0.1, "a", 0.1, 0.1, 0.1], "model.dropout"),
        ("model.dropout", [0.1, None, 0.1, 0.1, 0.1], "model.dropout"),
        ("model.filters", [32, True], "model.filters"),  # a bool is not a filter count
        ("model.kernel_size", [True, 3, 3, 3, 3], "model.kernel_size"),
        ("corpus.genres", [["blues"], ["jazz"]], "corpus.genres"),
        ("corpus.genres", ["blues", None], "corpus.genres"),
        # numpy's and Keras' global seeding take 0 <= seed < 2**32, and derived seeds (seed + 1000 x execution
        # in tuning) need headroom below it
        ("seed", 2**32, "seed"),
        ("seed", 2**32 - 1, "seed"),
    ],
)
def test_bad_values_name_the_key(tmp_path, dotted, value, needle):
    raw = shipped()
    section, _, key = dotted.rpartition(".")
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_params(write(tmp_path, raw))


def test_unknown_keys_are_rejected_with_their_dotted_name(tmp_path):
    raw = shipped()
    raw["features"]["n_mel"] = 64
    with pytest.raises(ConfigError, match=r"features\.n_mel: unknown key"):
        load_params(write(tmp_path, raw))
    raw = shipped()
    raw["trainig"] = {}
    with pytest.raises(ConfigError, match="trainig: unknown key"):
        load_params(write(tmp_path, raw))


def test_per_block_settings_accept_scalar_or_one_per_block(tmp_path):
    raw = shipped()
    raw["model"]["reduction_ratios"] = [8, 16, 31.43, 16, 8]
    params = load_params(write(tmp_path, raw))
    assert params.model.per_block("reduction_ratios") == [8, 16, 31.43, 16, 8]
    assert params.model.per_block("kernel_size") == [3] * 5


def test_overrides_and_ints_where_floats_expected():
    params = load_params(ROOT / "params.yaml", {"train.learning_rate": 0.01, "features.fmin": 20})
    assert params.features.fmin == 20.0 and isinstance(params.features.fmin, float)
    assert params.train.learning_rate == 0.01
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_params(ROOT / "params.yaml", {"train.learning_rate": 1})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("features: 3\n")
    with pytest.raises(ConfigError, match="features: expected a mapping"):
        load_params(bad)


def test_two_folds_are_refused_when_the_params_are_loaded():
    """evaluate.folds: 2 leaves no training fold (one tests, the next early-stops): refuse it at load time with
    the key named, not after the whole pipeline ran with 'the train split has no segments'."""
    from genre_se.config import EvaluateConfig, from_dict

    with pytest.raises(ConfigError, match="evaluate.folds"):
        from_dict(Params, {"evaluate": {"folds": 2}})
    assert from_dict(Params, {"evaluate": {"folds": 2}, "train": {"fit_all": True}}).evaluate.folds == 2
    assert from_dict(EvaluateConfig, {"folds": 3}, "evaluate").folds == 3


@pytest.mark.parametrize("key, value", [("train.mixup_alpha", float("inf")), ("features.amin", float("inf")),
                                        ("features.ref_power", float("inf")), ("tune.r_max", float("inf")),
                                        ("train.learning_rate", float("nan")),
                                        ("model.reduction_ratios", [16, float("inf"), 16, 16, 16])])
def test_non_finite_numbers_are_refused(key, value):
    from genre_se.config import from_dict, set_dotted

    raw = {}
    set_dotted(raw, key, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(Params, raw)


def test_a_ctrl_c_while_the_command_line_is_built_is_one_line_not_a_traceback(capsys, monkeypatch):
    """build_parser imports the inference module (numpy and friends): a Ctrl-C in the first fraction of a
    second of any `genre-se` command printed a traceback instead of the usual 'interrupted', exit 130."""
    from genre_se import cli

    def ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", ctrl_c)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
