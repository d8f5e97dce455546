"""params.yaml loading: the shipped file is valid, and every kind of mistake names its key."""

from pathlib import Path

import pytest
import yaml

from genre_se.config import Params, load_params
from genre_se.errors import ConfigError, DatasetError

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
        # the edges of each range: a zero rate, a dropout of everything, a threshold no probability reaches
        ("train.learning_rate", 0.0, "train.learning_rate"),
        ("model.dropout", 1.0, "model.dropout"),
        ("predict.uncertain_below", 1.5, "predict.uncertain_below"),
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


def test_an_override_that_is_not_yaml_is_one_line_naming_the_key(tmp_path, capsys):
    """`-S model.filters=[16,16` (a bracket left open) ended in PyYAML's ParserError traceback."""
    from genre_se import cli

    for value in ("[16,16", "[16, 16]: x"):
        rc = cli.main(["features", "--params", str(ROOT / "params.yaml"), "--index", str(tmp_path / "none.csv"),
                       "-S", f"model.filters={value}"])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "-S model.filters" in err and "not a valid YAML value" in err


def test_scientific_floats_read_as_numbers_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) read `1e-3` as the text '1e-3', so `learning_rate: 1e-3` (a float to DVC, which reads
    params.yaml as YAML 1.2) and `-S train.learning_rate=1e-3` were refused with "expected float, got '1e-3'"."""
    from genre_se.config import parse_value

    assert parse_value("1e-3") == 0.001 and parse_value("1.0e3") == 1000.0 and parse_value("-2.5E+1") == -25.0
    assert parse_value("16") == 16 and isinstance(parse_value("16"), int) and parse_value("abc") == "abc"
    assert parse_value("[1e-4, 1.0e-2]") == [0.0001, 0.01]
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\ntune:\n  learning_rate: [1e-4, 1e-2]\n")
    params = load_params(path, {"features.amin": parse_value("1e-8")})
    assert params.train.learning_rate == 0.001 and params.tune.learning_rate == [0.0001, 0.01]
    assert params.features.amin == 1e-8


def test_overrides_reach_an_empty_section_and_a_file_that_is_no_mapping_is_refused(tmp_path):
    """A section whose keys are all commented out is null: -S into it said "features is not a section"; a file
    holding a list crashed set_dotted with an AttributeError, and one holding 0 or false gave every default."""
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nfeatures:\n  # n_fft: 1024\n")
    assert load_params(path, {"features.n_fft": 1024}).features.n_fft == 1024
    for text, kind in (("- 1\n- 2\n", "list"), ("0\n", "int"), ("false\n", "bool")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"expected a mapping of sections.*got {kind}"):
            load_params(path, {"features.n_fft": 1024})


def test_a_low_pass_range_wholly_above_the_mel_bands_is_refused(tmp_path):
    """train.lowpass_hz cuts the mel bands above a random cutoff: [20000, 30000] at 22050 Hz never cut anything,
    silently; a range that starts below the top band (the study's [6000, 14000]) is kept."""
    raw = shipped()
    raw["train"]["lowpass_hz"] = [20000.0, 30000.0]
    with pytest.raises(ConfigError, match=r"train\.lowpass_hz: low 20000 Hz .*\(11025 Hz"):
        load_params(write(tmp_path, raw))
    raw["train"]["lowpass_hz"] = [6000.0, 14000.0]
    assert load_params(write(tmp_path, raw)).train.lowpass_hz == [6000.0, 14000.0]
    raw["features"]["fmax"] = 5000.0
    with pytest.raises(ConfigError, match=r"train\.lowpass_hz: low 6000 Hz .*\(5000 Hz"):
        load_params(write(tmp_path, raw))


def test_the_features_stage_refuses_mel_bands_no_fft_bin_falls_in(tmp_path):
    """128 mel bands at n_fft 256 (22050 Hz) leave 20 bands empty, a constant floor for every clip: the stage ran
    on with librosa's UserWarning; now it stops before reading the index, naming features.n_mels."""
    from genre_se.feature_store import run_features

    params = load_params(ROOT / "params.yaml", {"features.n_fft": 256, "features.hop_length": 128})
    with pytest.raises(ConfigError, match=r"features\.n_mels: 128 mel bands .* n_fft 256 leave 20 of them"):
        run_features(params, index_path=tmp_path / "none.csv", out_dir=tmp_path / "f", cache_dir=tmp_path / "c",
                     errors_path=tmp_path / "e.csv")
    params = load_params(ROOT / "params.yaml", {"features.n_fft": 512, "features.hop_length": 128})
    with pytest.raises(DatasetError, match="no dataset index"):  # 512: every band has a bin; on to the index
        run_features(params, index_path=tmp_path / "none.csv", out_dir=tmp_path / "f", cache_dir=tmp_path / "c",
                     errors_path=tmp_path / "e.csv")
