"""study/domain_gap.py: each recording statistic measures what it says, and the report runs end to end."""

import numpy as np
import pytest
import soundfile as sf

from genre_se.config import FeatureConfig
from genre_se.augment import mel_centre_frequencies
from study import domain_gap

CFG = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, segment_frames=16, segment_hop=8)
HZ = mel_centre_frequencies(CFG)


def _segments(rng, n=4, level=-30.0, spread=6.0):
    return (level + spread * rng.standard_normal((n, CFG.n_mels, CFG.segment_frames, 1))).astype(np.float32)


def test_gain_moves_only_the_level():
    x = _segments(np.random.default_rng(0))
    a = domain_gap.segment_statistics(x, CFG, HZ)
    b = domain_gap.segment_statistics(x + 6.0, CFG, HZ)
    np.testing.assert_allclose(b["level_db"], a["level_db"] + 6.0, atol=1e-3)
    for name in ("dynamics_db", "spread_db", "tilt_db_oct", "bandwidth_hz", "floor_depth_db", "flatness"):
        np.testing.assert_allclose(b[name], a[name], atol=1e-3, err_msg=name)


def test_compression_above_the_median_shrinks_spread_not_floor_depth():
    x = _segments(np.random.default_rng(1))[..., 0].astype(np.float64)
    flat = np.sort(x.reshape(len(x), -1), axis=1)
    upper_middle = flat[:, flat.shape[1] // 2][:, None, None]  # the median's cells stay as they are
    squashed = np.where(x > upper_middle, upper_middle + 0.5 * (x - upper_middle), x)
    a = domain_gap.segment_statistics(x, CFG, HZ)
    b = domain_gap.segment_statistics(squashed, CFG, HZ)
    assert np.all(b["spread_db"] < 0.8 * a["spread_db"])
    np.testing.assert_allclose(b["floor_depth_db"], a["floor_depth_db"], atol=1e-6)


def test_a_louder_frame_raises_dynamics():
    x = np.full((1, CFG.n_mels, CFG.segment_frames), -40.0)
    assert domain_gap.segment_statistics(x, CFG, HZ)["dynamics_db"][0] == pytest.approx(0.0, abs=1e-6)
    x[:, :, ::2] += 10.0  # every other frame 10 dB louder: frame loudness alternates, std 5 dB
    assert domain_gap.segment_statistics(x, CFG, HZ)["dynamics_db"][0] == pytest.approx(5.0, abs=1e-3)


def test_tilt_bandwidth_and_flatness_of_known_spectra():
    slope = -4.5  # dB per octave
    spectrum = slope * np.log2(HZ / 1000.0)
    x = np.repeat(spectrum[None, :, None], CFG.segment_frames, axis=2) - 30.0
    stats = domain_gap.segment_statistics(x, CFG, HZ)
    assert stats["tilt_db_oct"][0] == pytest.approx(slope, abs=1e-6)

    flat = np.full((1, CFG.n_mels, CFG.segment_frames), -30.0)
    assert domain_gap.segment_statistics(flat, CFG, HZ)["flatness"][0] == pytest.approx(1.0, abs=1e-9)
    assert domain_gap.segment_statistics(flat, CFG, HZ)["bandwidth_hz"][0] == pytest.approx(HZ[-1])
    cut = flat.copy()
    cut[:, 20:, :] = -100.0  # nothing above band 19: 70 dB down
    stats = domain_gap.segment_statistics(cut, CFG, HZ)
    assert stats["bandwidth_hz"][0] == pytest.approx(HZ[19])
    assert stats["flatness"][0] < 0.7


def test_bad_segments_are_refused():
    with pytest.raises(ValueError, match="segments must be"):
        domain_gap.segment_statistics(np.zeros((0, CFG.n_mels, 16)), CFG, HZ)
    with pytest.raises(ValueError, match="band frequencies"):
        domain_gap.segment_statistics(np.zeros((1, CFG.n_mels, 16)), CFG, HZ[:-1])


def test_compare_counts_external_files_outside_the_training_range():
    train = [{name: float(i) for name in domain_gap.STATISTICS} for i in range(100)]
    external = [{name: v for name in domain_gap.STATISTICS} for v in (-10.0, 50.0, 200.0, 300.0)]
    rows = domain_gap.compare(train, external)
    assert [r["statistic"] for r in rows] == list(domain_gap.STATISTICS)
    assert rows[0]["below"] == 1 and rows[0]["above"] == 2 and rows[0]["n_external"] == 4
    assert rows[0]["train_median"] == pytest.approx(49.5)
    assert rows[0]["external_median"] == pytest.approx(125.0)


def _tone_folder(root, genres, gain):
    sr = 8000
    t = np.arange(int(1.5 * sr)) / sr
    for i, genre in enumerate(genres):
        (root / genre).mkdir(parents=True)
        for k in range(2):
            y = gain * np.sin(2 * np.pi * (200 + 300 * i + 50 * k) * t)
            sf.write(root / genre / f"{genre}.{k}.wav", y.astype(np.float32), sr)
    return root


def test_main_writes_the_report(tmp_path, capsys):
    from tests.conftest import TINY_PARAMS, write_params

    params = write_params(tmp_path / "params.yaml", TINY_PARAMS)
    train = _tone_folder(tmp_path / "train", ["low", "high"], gain=0.05)
    external = _tone_folder(tmp_path / "external", ["low"], gain=0.5)  # 20 dB louder
    out = tmp_path / "gap.md"
    assert domain_gap.main([str(train), str(external), "--params", str(params), "--out", str(out)]) == 0
    text = out.read_text()
    assert "(4 files)" in text and "(2 files)" in text
    level = next(line for line in text.splitlines() if line.startswith("| `level_db`"))
    assert level.endswith("2 of 2 (0 / 2) |")  # both external files louder than every training file
    low = next(line for line in text.splitlines() if line.startswith("| low |")).split("|")[2]
    train_level, external_level = (float(v) for v in low.split("->"))
    assert external_level - train_level == pytest.approx(20.0, abs=0.15)  # per genre: the same tone 20 dB up
    high = next(line for line in text.splitlines() if line.startswith("| high |")).split("|")[2]
    assert high.strip().endswith("-> -")  # a training genre without external files: its training median only
    assert "Genre from the seven recording statistics alone" in text  # 2 files per genre: a 2-fold CV
    assert "| low | " in text.split("RBF SVM")[1]  # and its answer for each external file
    assert capsys.readouterr().out == text
    clips = tmp_path / "clips.csv"
    clips.write_text("variant,seed,fold,clip_id,actual,predicted,config_key\n"
                     "cnn,42,0,low/low.0,low,high,k\ncnn,42,0,high/high.1,high,high,k\n")
    assert domain_gap.main([str(train), str(external), "--params", str(params), "--clips", str(clips)]) == 0
    assert "| `cnn` | 42 | 1 | " in capsys.readouterr().out  # one wrong answer, compared with the shortcut's


def test_main_names_a_missing_folder(tmp_path, capsys):
    from tests.conftest import TINY_PARAMS, write_params

    params = write_params(tmp_path / "params.yaml", TINY_PARAMS)
    train = _tone_folder(tmp_path / "train", ["low"], gain=0.05)
    assert domain_gap.main([str(train), str(tmp_path / "nope"), "--params", str(params)]) == 2
    assert "nope" in capsys.readouterr().err


def _rows(genre_of, values):
    return [{"path": f"root/{g}/{g}.{i:05d}.wav", "genre": g,
             **{name: v + 0.01 * i * k for k, name in enumerate(domain_gap.STATISTICS)}}
            for i, (g, v) in enumerate(zip(genre_of, values))]


def test_recording_shortcut_finds_a_genre_the_recordings_give_away():
    rng = np.random.default_rng(0)
    genres = ["a", "b", "c"] * 10
    telling = _rows(genres, [{"a": 0.0, "b": 10.0, "c": 20.0}[g] + rng.normal(0, 0.5) for g in genres])
    external = _rows(["b", "c"], [10.2, 19.7])
    shortcut = domain_gap.recording_shortcut(telling, external)
    assert shortcut["cv_accuracy"] == 1.0 and shortcut["chance"] == pytest.approx(1 / 3)
    assert shortcut["external_predicted"] == ["b", "c"]  # fit on every training file
    assert shortcut["cv_predicted"]["b/b.00001"] == "b" and len(shortcut["cv_predicted"]) == 30  # by clip id
    blind = _rows(genres, rng.normal(0, 1, len(genres)))  # statistics unrelated to the genre
    assert domain_gap.recording_shortcut(blind, external)["cv_accuracy"] < 0.7
    with pytest.raises(ValueError, match="at least 2 training files"):
        domain_gap.recording_shortcut(telling[:4], external)  # genres b and c once each


def test_error_match_counts_wrong_answers_that_are_the_shortcuts():
    import pandas as pd

    clips = pd.DataFrame({"variant": "v", "seed": "1", "clip_id": ["a/1", "a/2", "b/1", "b/2"],
                          "actual": ["a", "a", "b", "b"], "predicted": ["b", "c", "b", "a"]})
    # two shortcut CV runs: both answer "b" for a/1 (= the model's wrong answer), a/2 right, b/2 "c" then "a"
    runs = [{"a/1": "b", "a/2": "a", "b/1": "b", "b/2": "c"}, {"a/1": "b", "a/2": "a", "b/1": "a", "b/2": "a"}]
    table = domain_gap.error_match(runs, clips, n_genres=3)
    row = table.iloc[0]
    assert row["wrong"] == 3  # a/1, a/2, b/2
    assert row["match"] == pytest.approx((2 + 0 + 1) / 6)
    assert row["independent"] == pytest.approx((2 + 0 + 2) / 6 / 2)  # shortcut wrong on 4 of 6, then 1 in 2
    assert "| `v` | 1 | 3 | 0.50 | 0.33 |" in domain_gap.error_match_markdown(table)
    unknown = clips.assign(clip_id=["x/1", "x/2", "x/3", "x/4"])  # clips the shortcut never saw: no row
    assert domain_gap.error_match(runs, unknown, n_genres=3).empty


class _BandwidthJudge:
    """A model that learnt the recording: answers ``full`` when a signal has energy above 9.6 kHz."""

    def predict_array(self, y, sr):
        from types import SimpleNamespace

        mono = np.asarray(y, np.float64).mean(axis=1)
        power = np.abs(np.fft.rfft(mono)) ** 2
        share = power[np.fft.rfftfreq(len(mono), 1 / sr) > 9600].sum() / power.sum()
        return SimpleNamespace(genre="full" if share > 1e-6 else "limited")


def test_counterfactual_answers_follow_a_model_that_learnt_the_band_limit(tmp_path):
    from genre_se.robustness import lowpass

    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (44100, 2)).astype(np.float32)
    (tmp_path / "full").mkdir()
    (tmp_path / "limited").mkdir()
    sf.write(tmp_path / "full" / "a.wav", noise, 44100)
    sf.write(tmp_path / "limited" / "b.wav", lowpass(noise, 44100, cutoff_hz=8000.0)[0], 44100)
    external = [{"path": str(tmp_path / g / f), "genre": g} for g, f in (("full", "a.wav"), ("limited", "b.wav"))]
    rows = domain_gap.counterfactual_answers(_BandwidthJudge(), external)
    answer = {(r["genre"], r["transform"]): r["answer"] for r in rows}
    assert answer["full", "untouched"] == "full" and answer["limited", "untouched"] == "limited"
    assert answer["full", "lowpass-9.5k"] == answer["full", "lowpass-8.8k"] == "limited"  # the band is cut
    assert answer["limited", "pink-30dB"] == "full"  # noise fills the top band
    text = domain_gap.counterfactual_markdown(rows, "judge")
    assert "| untouched | 2 of 2 | full 1, limited 1 |  | full 1, limited 1 |" in text
    assert "| lowpass-9.5k | 1 of 2 | full 0, limited 1 | 1 | limited 2 |" in text
    assert len(rows) == 2 * (1 + len(domain_gap._counterfactuals()))


def test_main_names_a_model_it_cannot_load(tmp_path, capsys):
    from tests.conftest import TINY_PARAMS, write_params

    params = write_params(tmp_path / "params.yaml", TINY_PARAMS)
    train = _tone_folder(tmp_path / "train", ["low"], gain=0.05)
    external = _tone_folder(tmp_path / "external", ["low"], gain=0.5)
    missing = tmp_path / "no-bundle"
    assert domain_gap.main([str(train), str(external), "--params", str(params), "--model", str(missing)]) == 2
    assert "no-bundle" in capsys.readouterr().err


def test_segment_changes_move_the_floor_or_the_peaks_around_the_median():
    x = _segments(np.random.default_rng(3))
    m = np.median(x.reshape(len(x), -1), axis=1)[:, None, None, None]
    deeper = domain_gap.SEGMENT_CHANGES["floor 60 % deeper"](x)
    np.testing.assert_allclose(deeper[x >= m], x[x >= m])  # the peaks stay
    np.testing.assert_allclose((m - deeper)[x < m], 1.6 * (m - x)[x < m], atol=1e-4)  # the floor goes 60 % deeper
    squashed = domain_gap.SEGMENT_CHANGES["peaks 40 % compressed"](x)
    np.testing.assert_allclose(squashed[x <= m], x[x <= m])
    np.testing.assert_allclose((squashed - m)[x > m], 0.6 * (x - m)[x > m], atol=1e-4)
    tilted = domain_gap.SEGMENT_CHANGES["EQ tilt +6 dB"](x)
    np.testing.assert_allclose((tilted - x)[:, [0, -1]].mean(axis=(0, 2, 3)), [-6.0, 6.0], atol=1e-4)


class _TiltJudge:
    """A Keras-like model that learnt the EQ: ``bright`` when the top half of the bands outweighs the bottom
    half by more than ``threshold`` dB (mean over the batch)."""

    def __init__(self, threshold):
        self.threshold = threshold

    def predict(self, x, verbose=0):
        half = x.shape[1] // 2
        bright = x[:, half:].mean() - x[:, :half].mean() > self.threshold
        return np.tile([0.0, 1.0] if bright else [1.0, 0.0], (len(x), 1))


def test_segment_counterfactual_answers_follow_a_model_that_learnt_the_eq(tmp_path):
    from genre_se.features import extract_segments

    folder = _tone_folder(tmp_path, ["dark"], gain=0.3)
    external = [{"path": str(p), "genre": "dark"} for p in sorted((folder / "dark").glob("*.wav"))][:1]
    x = extract_segments(external[0]["path"], CFG).data
    judge = _TiltJudge(threshold=float(x[:, CFG.n_mels // 2:].mean() - x[:, :CFG.n_mels // 2].mean()))
    rows = domain_gap.segment_counterfactual_answers(judge, ["dark", "bright"], CFG, external)
    answer = {r["transform"]: r["answer"] for r in rows}
    assert answer["untouched"] == "dark" and answer["EQ tilt +6 dB"] == "bright" and answer["EQ tilt -6 dB"] == "dark"
    assert len(rows) == 1 + len(domain_gap.SEGMENT_CHANGES)
    text = domain_gap.counterfactual_markdown(rows, "judge", "a log-mel change")
    assert "after a log-mel change:" in text and "| EQ tilt +6 dB | 0 of 1 | dark 0 | 1 | bright 1 |" in text
