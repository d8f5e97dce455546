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
