"""Atomic outputs: complete or absent, and a place that cannot take them is named before any work."""

from __future__ import annotations

import pytest

from genre_se.errors import ConfigError, ModelError, OutputError
from genre_se.fileio import atomic_path, check_writable, read_json_object, write_text


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



def test_outputs_get_the_usual_permissions_not_the_temporary_files_private_ones(tmp_path):
    """mkstemp makes its file 0600: an output left so could not be read by the group (a shared models/ folder);
    it gets 0666 less the umask, as open() would have given it."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(write_text(tmp_path / "a.json", "{}").stat().st_mode) == 0o644
        os.umask(0o002)
        assert stat.S_IMODE(write_text(tmp_path / "b.json", "{}").stat().st_mode) == 0o664
    finally:
        os.umask(old)

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


@pytest.mark.parametrize(
    "content, message",
    [(None, "cannot read"), ('{"model": {', "corrupt, not valid JSON"), (b"\xff\xfe{", "corrupt, not valid JSON"),
     ("[1, 2]", "corrupt, expected a JSON object, got list")],
)
def test_read_json_object_names_the_file_and_raises_the_callers_error(tmp_path, content, message):
    path = tmp_path / "record.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ModelError, match=f"^{path}: {message}"):
        read_json_object(path, ModelError)


def test_read_json_object_returns_the_object(tmp_path):
    path = tmp_path / "record.json"
    path.write_text('{"a": [1, 2], "b": {"c": null}}')
    assert read_json_object(path, ConfigError) == {"a": [1, 2], "b": {"c": None}}


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"),
                                              ('{"model": [16]}', "'model' must be a mapping")])
def test_a_corrupt_best_params_file_is_a_config_error_naming_it(tmp_path, content, message):
    """The tune stage's output is read by train; a hand-edited or truncated one is named, not a traceback."""
    from genre_se.config import Params
    from genre_se.train import resolve_model_config

    path = tmp_path / "best_params.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"{path}: .*{message}"):
        resolve_model_config(Params(), path)


def test_a_killed_writers_temporaries_are_swept_and_a_live_ones_kept(tmp_path):
    """SIGKILL runs no ``finally``: its temporary sibling (as large as the output) stays. The next writer of
    the same output removes those of dead processes of this machine, and puts back a previous output moved
    aside by a writer killed between its two renames; a live writer's temporaries, and another machine's (a
    shared folder: its PIDs mean nothing here), are left alone."""
    import os
    import subprocess
    import sys

    from genre_se.fileio import _HOST, atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "features"
    stale = tmp_path / f".features.tmp-{dead_pid}@{_HOST}-abc123"
    stale.mkdir()
    (stale / "segments.npy").write_bytes(b"x" * 1000)
    notes_tmp = tmp_path / f".notes.txt.tmp-{dead_pid}@{_HOST}-q1.tmp"
    notes_tmp.write_text("another output's")
    live = tmp_path / f".features.tmp-{os.getppid()}@{_HOST}-zz"  # the test runner's parent: alive
    live.mkdir()
    remote = tmp_path / f".features.tmp-{dead_pid}@elsewhere_{_HOST}-zz"  # another machine's writer
    remote.mkdir()
    huge = tmp_path / f".features.tmp-{10**30}@{_HOST}-zz"  # not a PID this system has: left alone
    huge.mkdir()
    with atomic_dir(out) as staging:
        (staging / "meta.json").write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["features", live.name, remote.name, huge.name, notes_tmp.name])

    with atomic_path(tmp_path / "notes.txt") as tmp:
        tmp.write_text("new")
    assert not notes_tmp.exists()

    # killed after moving the previous output aside, before moving the new one in: the previous one comes back
    os.replace(out, tmp_path / f".features.old-{dead_pid}@{_HOST}")
    with pytest.raises(RuntimeError):
        with atomic_dir(out):
            raise RuntimeError("this writer fails too")
    assert (out / "meta.json").read_text() == "{}"
