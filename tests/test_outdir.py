"""Output directories: manifests, replacing only salience's own files, stale temporaries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from salience.outdir import (
    LOCK_NAME,
    MANIFEST_NAME,
    OutputDirError,
    check_output_dir,
    clean_stale_temporaries,
    is_salience_output,
    read_manifest,
    write_atomically,
)


def write(out, files, overwrite=False):
    with write_atomically(out, overwrite, kind="test") as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return out


def tree(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def test_manifest_lists_every_file_and_nothing_else_is_left(tmp_path):
    out = write(tmp_path / "out", {"index.html": "a", "maps/x.png": "b"})
    assert tree(out) == ["index.html", "maps", "maps/x.png", MANIFEST_NAME]
    manifest = read_manifest(out)
    assert manifest["files"] == ["index.html", "maps/x.png"] and manifest["kind"] == "test"
    assert is_salience_output(out) and not is_salience_output(tmp_path)
    assert siblings(out) == []


def test_overwrite_replaces_own_files_only_when_asked(tmp_path):
    out = write(tmp_path / "out", {"old.txt": "1", "sub/old.png": "2"})
    with pytest.raises(OutputDirError, match="already exists; pass --overwrite"):
        write(out, {"new.txt": "3"})
    assert (out / "old.txt").read_text() == "1"
    write(out, {"new.txt": "3"}, overwrite=True)
    assert tree(out) == sorted([MANIFEST_NAME, "new.txt"])
    assert siblings(out) == []


@pytest.mark.parametrize("added", ["notes.txt", "mydata/", "maps/mine.png", "maps/deep/"])
def test_anything_added_to_a_previous_output_blocks_overwrite(tmp_path, added):
    out = write(tmp_path / "out", {"index.html": "a", "maps/x.png": "b"})
    target = out / added
    if added.endswith("/"):
        target.mkdir()
    else:
        target.write_text("precious")
    before = tree(out)
    with pytest.raises(OutputDirError, match=f"holds '{added}' which salience did not write"):
        check_output_dir(out, overwrite=True)
    with pytest.raises(OutputDirError, match="nothing was deleted"):
        write(out, {"new.txt": "x"}, overwrite=True)
    assert tree(out) == before and siblings(out) == []


def test_a_summary_json_is_not_a_manifest(tmp_path):
    # issue 18: any folder with a salience summary.json counted as a report
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"generator": "salience"}))
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputDirError, match=f"no {MANIFEST_NAME}, so it is not a salience"):
        write(out, {"index.html": "x"}, overwrite=True)
    assert tree(out) == ["summary.json", "thesis.tex"]


def test_empty_directory_may_be_used_with_overwrite(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    write(out, {"a": "1"}, overwrite=True)
    assert tree(out) == ["a", MANIFEST_NAME]


def test_files_and_links_are_never_output_directories(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
    real = write(tmp_path / "real", {"a": "1"})
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputDirError, match="is not a directory"):
        check_output_dir(tmp_path / "link", overwrite=True)
    assert check_output_dir(tmp_path / "new", overwrite=False) == tmp_path / "new"


def test_links_inside_an_output_are_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.png").write_text("keep")
    (victim / "a").write_text("keep")
    out = write(tmp_path / "out", {"a": "1", "sub/x.png": "2"})
    (out / "a").unlink()
    (out / "a").symlink_to(victim / "a")  # an own name, now a link: only the link goes
    write(out, {"b": "3"}, overwrite=True)
    assert (victim / "a").read_text() == "keep" and tree(out) == sorted(["b", MANIFEST_NAME])
    out = write(tmp_path / "out2", {"sub/x.png": "2"})
    (out / "sub" / "x.png").unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(victim)  # an own folder replaced by a link
    with pytest.raises(OutputDirError, match="holds 'sub'"):
        write(out, {"b": "3"}, overwrite=True)
    assert sorted(p.name for p in victim.iterdir()) == ["a", "x.png"]


def test_a_manifest_naming_paths_outside_is_not_a_manifest(tmp_path):
    (tmp_path / "victim.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps(
        {"generator": "salience", "files": ["../victim.txt", "a"]}))
    (out / "a").write_text("x")
    assert read_manifest(out) is None
    with pytest.raises(OutputDirError):
        check_output_dir(out, overwrite=True)
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_a_failure_while_writing_leaves_the_old_output_and_no_temporary(tmp_path):
    out = write(tmp_path / "out", {"a": "old"})
    with pytest.raises(RuntimeError, match="boom"):
        with write_atomically(out, True, kind="test") as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("boom")
    assert (out / "a").read_text() == "old" and siblings(out) == []


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from salience.outdir import write_atomically

    with write_atomically(sys.argv[1], True, kind="test") as tmp:
        (tmp / "half.png").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_writer(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], env=env)
    assert proc.returncode == -signal.SIGKILL


def test_temporaries_of_a_killed_writer_are_cleaned_by_the_next_write(tmp_path):
    out = write(tmp_path / "out", {"a": "old"})
    killed_writer(out)
    [stale] = siblings(out)
    assert stale.startswith(".out.tmp-") and (tmp_path / stale / "half.png").exists()
    assert (out / "a").read_text() == "old"
    write(out, {"a": "new"}, overwrite=True)
    assert siblings(out) == [] and (out / "a").read_text() == "new"


def test_only_own_stale_temporaries_are_removed(tmp_path):
    out = tmp_path / "out"
    killed_writer(out)
    [stale] = siblings(out)

    def fake(name, lock):
        path = tmp_path / name
        path.mkdir()
        (path / "data.txt").write_text("keep")
        if lock is not None:
            (path / LOCK_NAME).write_text(json.dumps(lock))
        return path

    dead_pid = json.loads((tmp_path / stale / LOCK_NAME).read_text())["pid"]
    host = socket.gethostname()
    kept = [
        fake(".out.tmp-nolock", None),  # not ours: no lock
        fake(".out.tmp-alive", {"generator": "salience", "target": "out", "host": host,
                                "pid": os.getpid()}),  # its writer is running
        fake(".out.tmp-otherhost", {"generator": "salience", "target": "out",
                                    "host": host + "-elsewhere", "pid": dead_pid}),
        fake(".out.tmp-othertarget", {"generator": "salience", "target": "other",
                                      "host": host, "pid": dead_pid}),
        fake(".other.tmp-x", {"generator": "salience", "target": "out", "host": host,
                              "pid": dead_pid}),
        fake("out.tmp-visible", {"generator": "salience", "target": "out", "host": host,
                                 "pid": dead_pid}),
    ]
    assert clean_stale_temporaries(out) == [tmp_path / stale]
    for path in kept:
        assert (path / "data.txt").read_text() == "keep"
