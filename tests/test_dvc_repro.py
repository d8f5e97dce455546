"""`dvc repro` in a temporary copy of the repository with tiny params: the whole pipeline, then a no-op."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS, write_params

pytestmark = pytest.mark.slow

TINY_CORPUS = {
    "corpus.genres": ["disco", "metal", "classical"],
    "corpus.clips_per_genre": 5,
    "corpus.clip_seconds": 2.0,
    "corpus.sample_rate": 8000,
}


@pytest.fixture
def repo_copy(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files += [str(p.relative_to(ROOT)) for p in (ROOT / ".dvc").rglob("*") if p.is_file() and "tmp" not in p.parts]
    dest = tmp_path / "repo"
    for rel in set(files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    write_params(dest / "params.yaml", {**TINY_PARAMS, **TINY_CORPUS})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)
    return dest, env


def dvc(repo, env, *args):
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def test_dvc_repro_runs_everything_then_nothing(repo_copy):
    repo, env = repo_copy
    first = dvc(repo, env, "repro")
    for stage in ("corpus", "prepare", "features", "tune", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["clip"]["accuracy"] <= 1.0
    assert (repo / "models/bundle/bundle.json").exists()
    assert len(list((repo / "data/corpus").rglob("*.wav"))) == 15

    declared = set()
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            declared |= {next(iter(e)) if isinstance(e, dict) else e for e in stage.get(kind, [])}
    written = {p.relative_to(repo).as_posix() for folder in ("reports", "dvclive") for p in (repo / folder).rglob("*")
               if p.is_file()}
    undeclared = {w for w in written if not any(w == d or w.startswith(d.rstrip("/") + "/") for d in declared)}
    assert not undeclared, f"the stages wrote files no stage declares (dvc exp/plots cannot see them): {undeclared}"

    second = dvc(repo, env, "repro")
    assert "Running stage" not in second  # nothing changed, nothing re-runs

    shown = dvc(repo, env, "metrics", "show")
    assert "clip.accuracy" in shown
    dvc(repo, env, "plots", "show", "-o", "plots_html")
    assert (repo / "plots_html/index.html").exists()

    # a params change re-runs exactly the stages that depend on it
    write_params(repo / "params.yaml", {**TINY_PARAMS, **TINY_CORPUS, "train.epochs": 2})
    third = dvc(repo, env, "repro")
    assert "Running stage 'train'" in third and "Running stage 'evaluate'" in third
    assert "Running stage 'features'" not in third and "Running stage 'corpus'" not in third
    assert "Running stage 'tune'" not in third  # train.epochs is the train stage's own, not a trial's


#: the module whose function each stage runs (cli.py dispatches to it)
STAGE_MODULES = {"corpus": "corpus", "prepare": "datasets", "features": "feature_store", "tune": "tune",
                 "train": "train", "evaluate": "evaluate"}
#: left out of the deps on purpose (dvc.yaml's header): they do not compute any output
PLUMBING = {"cli", "config", "errors", "fileio", "interrupts", "quiet", "__init__"}


def _module_level_imports(name: str) -> set[str]:
    import ast

    tree = ast.parse((ROOT / "genre_se" / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


def test_every_stage_depends_on_the_code_it_runs():
    """DVC re-runs a stage only when a dep changed: a stage missing its own module, or one that module imports
    at load time, would keep stale outputs after a code change (tune listed no code at all)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for stage, module in STAGE_MODULES.items():
        deps = {Path(d).stem for d in stages[stage]["deps"] if d.startswith("genre_se/") and d.endswith(".py")}
        needed, todo = set(), [module]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += _module_level_imports(name)
        assert needed - PLUMBING <= deps, f"dvc.yaml stage {stage} lacks {sorted(needed - PLUMBING - deps)}"
    for path in (d for stage in stages.values() for d in stage.get("deps", []) if d.startswith("genre_se/")):
        assert (ROOT / path).exists(), f"dvc.yaml names {path}, which does not exist"


def _module_imports_closure(modules: set[str]) -> set[str]:
    needed, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in needed and name not in PLUMBING and (ROOT / "genre_se" / f"{name}.py").exists():
            needed.add(name)
            todo += _module_level_imports(name)
    return needed


def test_every_listed_module_brings_its_own_imports():
    """A module a stage lists runs with what it imports at load time: evaluate lists train.py (the CV trains each
    fold) but not features.py, which train.py imports (the input pipeline's floor_db, model.py's front end)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for stage, spec in stages.items():
        deps = {Path(d).stem for d in spec["deps"] if d.startswith("genre_se/") and d.endswith(".py")}
        missing = _module_imports_closure(deps) - deps
        assert not missing, f"dvc.yaml stage {stage} lacks {sorted(missing)}, imported by modules it lists"


def test_the_evaluate_stage_lists_what_its_scoring_imports_inside_functions():
    """metrics.aggregate_clips imports results.rank_genres inside the function (evaluate.aggregate: vote breaks a
    tied vote with it): the load-time closure above misses it, and an edit of the tie rule kept stale metrics."""
    import ast

    import yaml

    deps = {Path(d).stem for d in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][
        "evaluate"]["deps"] if d.startswith("genre_se/")}
    for module in ("evaluate", "metrics"):
        tree = ast.parse((ROOT / "genre_se" / f"{module}.py").read_text(encoding="utf-8"))
        used = {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert used - PLUMBING <= deps, (module, sorted(used - PLUMBING - deps))


def test_the_features_stage_lists_what_computes_the_waveform_copies():
    """waveform_augment imports its MP3 round trip from robustness.py inside a function (the load-time closure
    above misses it): the mp3 copies are features outputs, so an edit there must re-run the stage."""
    import ast

    import yaml

    tree = ast.parse((ROOT / "genre_se" / "waveform_augment.py").read_text(encoding="utf-8"))
    used = {node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    deps = {Path(d).stem for d in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][
        "features"]["deps"] if d.startswith("genre_se/")}
    assert "robustness" in used and used - PLUMBING <= deps, sorted(used - PLUMBING - deps)


def _params_read(module: str) -> set[str]:
    """The dotted ``params.<...>`` attribute chains a module reads (outermost chains, dunders cut off)."""
    import ast

    from genre_se.tune import TRIAL_TRAIN_FIELDS

    tree = ast.parse((ROOT / "genre_se" / f"{module}.py").read_text(encoding="utf-8"))
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    found = set()
    for node in ast.walk(tree):  # trial_train_config(params.train) reads only the trial's fields of it
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "trial_train_config":
            inner |= {id(arg) for arg in node.args}
            found |= {f"train.{name}" for name in TRIAL_TRAIN_FIELDS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, base = [], node
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "params":
                parts = list(reversed(parts))
                cut = next((i for i, p in enumerate(parts) if p.startswith("__")), len(parts))
                found.add(".".join(parts[:min(cut, 2)]))
    return found


#: params keys a stage reads but leaves out of dvc.yaml on purpose (they never change an output)
UNLISTED = {"features.workers"}


def test_every_stage_lists_the_params_it_reads():
    """DVC re-runs a stage only when a listed param changed: the train stage records data.root in the bundle
    (training_data.root, builtin_corpus) but did not list it, so a new data.root with the same features kept a
    bundle naming the old one."""
    import dataclasses

    import yaml

    from genre_se.config import Params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    defaults = Params()
    for stage, module in STAGE_MODULES.items():
        listed = set(stages[stage].get("params", []))

        def covered(key):
            return key in UNLISTED or any(key == k or key.startswith(k + ".") for k in listed)

        for key in _params_read(module):
            section = getattr(defaults, key.split(".")[0])
            if "." not in key and dataclasses.is_dataclass(section):  # a whole section: each of its fields
                assert all(covered(f"{key}.{f.name}") for f in dataclasses.fields(section)), \
                    f"dvc.yaml stage {stage} reads params.{key} but lists only some of it"
            else:
                assert covered(key), f"dvc.yaml stage {stage} reads params.{key} but does not list it"


def test_the_tune_stage_lists_what_trials_train_with_and_not_the_train_stage_settings():
    """A trial trains with trial_train_config(params.train) only, so dvc.yaml lists those fields: a change of the
    train stage's own epochs, patience or schedule (a bundle recipe's -S flags) no longer reruns the search."""
    import dataclasses

    from genre_se.config import TrainConfig
    from genre_se.tune import TRIAL_TRAIN_FIELDS, trial_train_config

    listed = set(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["tune"]["params"])
    assert {k for k in listed if k.startswith("train")} == {f"train.{name}" for name in TRIAL_TRAIN_FIELDS}
    own = TrainConfig(epochs=7, patience=2, monitor="val_loss", lr_schedule="cosine", lr_decay_patience=1,
                      fit_all=True, calibrate=False)
    assert trial_train_config(own) == TrainConfig()  # none of them reaches a trial
    changed = TrainConfig(batch_size=8, spec_augment=True, gain_db=3.0)
    assert trial_train_config(changed) == changed
    others = {f.name for f in dataclasses.fields(TrainConfig)} - set(TRIAL_TRAIN_FIELDS)
    assert others == {"epochs", "patience", "monitor", "lr_schedule", "lr_decay_patience", "fit_all", "calibrate"}


def test_the_outputs_git_keeps_are_not_gitignored():
    """Outputs with cache: false (the metrics, plots and reports) live in Git: `dvc exp run` commits them with each
    experiment, and `dvc exp show` / `dvc plots diff` read them from there. Git-ignored, every experiment showed
    '!' for every metric and no plot."""
    import yaml

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    kept = []
    for stage in spec["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    (path, opts), = entry.items()
                    if (opts or {}).get("cache", True) is False:
                        kept.append(path)
    assert "reports/metrics.json" in kept and "dvclive/metrics.json" in kept
    for path in kept:
        probe = path if Path(path).suffix else f"{path}/x.tsv"  # a folder: a file inside it
        out = subprocess.run(["git", "check-ignore", "--no-index", "-v", probe], cwd=ROOT, capture_output=True,
                             text=True)
        assert out.returncode == 1, f"{path} has cache: false but is git-ignored ({out.stdout.strip()})"
