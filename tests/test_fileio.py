"""Atomic outputs: complete or absent, and a place that cannot take them is named before any work."""

from __future__ import annotations

import pytest

from genre_se.errors import OutputError
from genre_se.fileio import atomic_path, check_writable, write_text


def test_atomic_path_writes_whole_files_and_names_the_output_when_it_cannot(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.txt"
    assert write_text(target, "hello").read_text() == "hello"  # folders made on the way
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "failed.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")  # the caller's own error passes through unchanged
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"^{blocker / 'out.txt'}: cannot write here"):
        write_text(blocker / "out.txt", "never")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        write_text(tmp_path / "new", "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "new"]  # no temporary left behind


def test_check_writable_fails_early_and_creates_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert check_writable(tmp_path / "not" / "yet" / "out.npz") == tmp_path / "not" / "yet" / "out.npz"
    assert check_writable(tmp_path / "folder-to-be", folder=True) and check_writable(tmp_path, folder=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_writable(blocker, folder=True)
    with pytest.raises(OutputError, match="a-file is not a folder"):
        check_writable(blocker / "inside" / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
