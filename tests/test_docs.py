"""The commands the docs tell people to type are commands the code accepts.

Every ``genre-se ...`` and ``python -m study.compare ...`` in a fenced shell block of the Markdown docs is parsed by
the real argument parser (nothing runs), and every ``-S key=value`` of a ``dvc exp run`` / ``genre-se`` line is a
valid ``params.yaml`` override. A README example that the CLI refuses (it happened: ``-o``) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "MODEL.md", "study/README.md", "bench/README.md", "docs/tuning.md"]
SHELL = {"bash", "sh", "shell", "console"}
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(\"[^\"]*\"|'[^']*')")


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks marked as shell (```bash and the like)."""
    blocks, body, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, language = [], line[3:].strip().lower()
            else:
                if language in SHELL:
                    blocks.append("\n".join(body) + "\n")
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of the shell blocks: continuations joined, comments dropped, split at | && ; ."""
    commands = []
    for block in shell_blocks(text):
        variables: dict[str, str] = {}  # S="python -m ..." then $S run ...: expanded
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            assignment = ASSIGNMENT.fullmatch(line)
            if assignment:
                variables[assignment[1]] = shlex.split(assignment[2])[0]
                continue
            line = re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), line)
            command: list[str] = []
            for word in shlex.split(line, comments=True) + ["|"]:
                if word in ("|", "&&", ";", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def documented(prefix: list[str]) -> list[tuple[str, list[str]]]:
    """(doc, argv after the prefix) of every documented command that starts with ``prefix``."""
    found = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.is_file():
            continue
        for words in shell_commands(path.read_text(encoding="utf-8")):
            while words and ("=" in words[0] and not words[0].startswith("-")):  # VAR=value cmd
                words = words[1:]
            if words[: len(prefix)] == prefix and not any("$" in w for w in words):
                found.append((doc, words[len(prefix):]))
    return found


def test_shell_commands_split_pipes_continuations_and_comments():
    text = ("```bash\n# a comment\nA=1 genre-se predict x.mp3 \\\n  --top-k 2   # note\ncat a | genre-se predict -\n"
            'G="genre-se embed"\n$G y.wav $HOME\n```\n```python\nnot = "shell"\n```\n')
    assert shell_commands(text) == [["A=1", "genre-se", "predict", "x.mp3", "--top-k", "2"], ["cat", "a"],
                                    ["genre-se", "predict", "-"], ["genre-se", "embed", "y.wav", "$HOME"]]


CLI_EXAMPLES = documented(["genre-se"])


@pytest.mark.parametrize("doc, argv", CLI_EXAMPLES, ids=[" ".join(a)[:60] for _, a in CLI_EXAMPLES])
def test_documented_genre_se_commands_parse(doc, argv):
    from genre_se.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's refusal
        pytest.fail(f"{doc}: `genre-se {' '.join(argv)}` is refused by the CLI (exit {exc.code})")


STUDY_EXAMPLES = documented(["python", "-m", "study.compare"]) + documented([".venv/bin/python", "-m", "study.compare"])


@pytest.mark.parametrize("doc, argv", STUDY_EXAMPLES, ids=[" ".join(a)[:60] for _, a in STUDY_EXAMPLES])
def test_documented_study_commands_parse(doc, argv):
    from study.compare import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `python -m study.compare {' '.join(argv)}` is refused (exit {exc.code})")


def params_overrides() -> list[tuple[str, dict]]:
    """(doc, overrides) of every documented ``dvc exp run`` with ``-S key=value``."""
    found = []
    for doc, argv in documented(["dvc", "exp", "run"]):
        sets = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("-S", "--set-param")]
        if sets:
            found.append((doc, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}))
    return found


def test_docs_have_the_examples_this_test_relies_on():
    """Guards the guard: if the parsing above found nothing, it would check nothing."""
    assert len(CLI_EXAMPLES) >= 5 and params_overrides()


@pytest.mark.parametrize("doc, overrides", params_overrides())
def test_documented_dvc_overrides_are_params(doc, overrides):
    from genre_se.config import load_params

    load_params(ROOT / "params.yaml", overrides)  # an unknown key or a bad value raises ConfigError
