"""`dvc repro` in a temporary copy of the repository with tiny params: the whole pipeline, then a no-op."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
