"""Output directories that salience may replace: a manifest of its own files, atomic writes.

Every directory salience writes (the HTML report, later the dataset store)
goes through this module, so the same rules hold everywhere:

- an output directory holds a manifest (:data:`MANIFEST_NAME`) listing every
  file salience wrote there;
- an existing directory is replaced only when asked to (``overwrite``) and
  only when everything in it is listed in its manifest: a single file or
  folder the user added there makes salience refuse, naming it;
- new content is written into a hidden temporary sibling (``.NAME.tmp-*``)
  and renamed into place at the end, so the directory is either the complete
  new output or the previous one;
- a temporary carries a lock file naming the process that writes it; one
  left behind by a killed process is removed by the next write to the same
  directory, and nothing that lacks such a lock (or a manifest listing all of
  its content) is ever deleted.

API: :func:`check_output_dir` (may ``out`` be written?), :func:`write_atomically`
(a context manager yielding the temporary directory to fill),
:func:`clean_stale_temporaries`, :func:`read_manifest` and
:func:`is_salience_output` (a directory salience wrote or is writing, which
must never be read back as input).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._version import __version__

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "OutputDirError",
    "check_output_dir",
    "clean_stale_temporaries",
    "is_salience_output",
    "read_manifest",
    "write_atomically",
]

GENERATOR = "salience"
#: File listing what salience wrote in an output directory.
MANIFEST_NAME = "salience-manifest.json"
#: File naming the process that writes a temporary directory.
LOCK_NAME = ".salience-lock.json"


class OutputDirError(ValueError):
    """The output directory cannot be (re)written: it is a file, exists, or holds foreign files."""


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of an output directory salience wrote, or None if it has none (or a bad one)."""
    data = _read_json(Path(directory) / MANIFEST_NAME)
    if data is None or data.get("generator") != GENERATOR:
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(_is_plain_relative(f) for f in files):
        return None
    return data


def _is_plain_relative(name: Any) -> bool:
    """A relative posix path that stays inside its directory (no ``..``, ``.``, empty parts)."""
    return (isinstance(name, str) and not name.startswith("/")
            and all(part not in ("", ".", "..") for part in name.split("/")))


def is_salience_output(directory: str | Path) -> bool:
    """Whether ``directory`` holds a salience manifest or write lock (never read it as input)."""
    directory = Path(directory)
    return (directory / MANIFEST_NAME).is_file() or (directory / LOCK_NAME).is_file()


def check_output_dir(out: str | Path, overwrite: bool, *, option: str = "--out") -> Path:
    """Check that ``out`` may be written; call it before doing any work.

    Parameters
    ----------
    out : path
        The output directory; it need not exist.
    overwrite : bool
        Whether an existing output of salience may be replaced.
    option : str
        How the user named ``out`` (used in messages).

    Returns
    -------
    Path
        ``out`` as a Path.

    Raises
    ------
    OutputDirError
        ``out`` is a file or a symbolic link; it exists and ``overwrite`` is
        false; or it holds something its manifest does not list (then even
        ``overwrite`` does not replace it).
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputDirError(f"{option} {str(out)!r} exists and is not a directory")
    if not out.exists():
        return out
    if not overwrite:
        raise OutputDirError(
            f"{option} {str(out)!r} already exists; pass --overwrite to replace it, or choose "
            "another directory"
        )
    foreign = _first_foreign(out)
    if foreign is not None:
        why = ("which salience did not write there" if read_manifest(out) is not None else
               f"and no {MANIFEST_NAME}, so it is not a salience output")
        raise OutputDirError(
            f"{option} {str(out)!r} holds {foreign!r} {why}; refusing to replace it even with "
            "--overwrite (nothing was deleted). Move that away or choose another directory"
        )
    return out


def _first_foreign(directory: Path) -> str | None:
    """The first entry (sorted, relative path) not listed in the manifest; None if all are own."""
    manifest = read_manifest(directory)
    own = set(manifest["files"]) if manifest else set()
    own_dirs = {p for f in own for p in _parents(f)}
    allowed = own | {MANIFEST_NAME, LOCK_NAME} if manifest else {LOCK_NAME}
    for relative, is_dir in _entries(directory):
        if is_dir:
            if relative not in own_dirs:
                return relative + "/"
        elif relative not in allowed:
            return relative
    return None


def _parents(relative: str) -> list[str]:
    parts = relative.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _entries(directory: Path) -> Iterator[tuple[str, bool]]:
    """Every entry below ``directory`` as (relative posix path, is a real directory), sorted;
    symbolic links are entries, never followed."""
    stack = [(directory, "")]
    found: list[tuple[str, bool]] = []
    while stack:
        path, prefix = stack.pop()
        with os.scandir(path) as scan:
            for entry in scan:
                relative = prefix + entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                found.append((relative, is_dir))
                if is_dir:
                    stack.append((Path(entry.path), relative + "/"))
    return iter(sorted(found))


@contextmanager
def write_atomically(
    out: str | Path, overwrite: bool, *, kind: str, option: str = "--out"
) -> Iterator[Path]:
    """Write a new output directory next to ``out`` and put it in place at the end.

    Yields a new empty temporary directory beside ``out``; fill it.  When the
    block ends without an exception every file in it is listed in a manifest
    and the directory replaces ``out``: a previous output is removed file by
    file from its manifest (anything else found there is left alone).  On an
    exception the temporary directory is removed and ``out`` is untouched.
    Temporaries left by killed salience processes are cleaned up first.

    Parameters
    ----------
    out : path
        The output directory.
    overwrite : bool
        Replace a previous salience output in ``out``.
    kind : str
        What is written (``"report"``, ``"dataset"``), recorded in the manifest.
    option : str
        How the user named ``out`` (used in messages).

    Raises
    ------
    OutputDirError
        As :func:`check_output_dir`, checked both before and after writing.
    """
    out = check_output_dir(out, overwrite, option=option)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_lock(tmp, out.name)
        yield tmp
        _write_manifest(tmp, kind)
        _make_readable(tmp)
        _install(tmp, out, overwrite, option)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_manifest(directory: Path, kind: str) -> None:
    files = [rel for rel, is_dir in _entries(directory) if not is_dir and rel != LOCK_NAME]
    manifest = {
        "generator": GENERATOR, "kind": kind, "version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "files": files,
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _make_readable(path: Path) -> None:
    # mkdtemp makes a private (0700) directory; give the output the usual permissions.
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)


def _install(tmp: Path, out: Path, overwrite: bool, option: str) -> None:
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        (out / LOCK_NAME).unlink()
        return
    check_output_dir(out, overwrite, option=option)  # still only our own files?
    _write_lock(out, out.name)  # the previous output is in flux from here on
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        (out / LOCK_NAME).unlink()
        raise
    (out / LOCK_NAME).unlink()
    _remove_own(old)


def _remove_own(directory: Path) -> bool:
    """Delete the files ``directory``'s manifest lists (and the manifest, the lock, then empty
    folders); anything else stays.  Returns whether ``directory`` is gone."""
    manifest = read_manifest(directory)
    own = set(manifest["files"]) if manifest else set()
    own |= {MANIFEST_NAME, LOCK_NAME}
    # Walk the real entries (links are never followed), deepest first.
    for relative, is_dir in sorted(_entries(directory), reverse=True):
        if is_dir:
            _rmdir_if_empty(directory / relative)
        elif relative in own:
            (directory / relative).unlink()
    return _rmdir_if_empty(directory)


def _rmdir_if_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def _write_lock(directory: Path, target: str) -> None:
    lock = {"generator": GENERATOR, "target": target, "host": socket.gethostname(),
            "pid": os.getpid(), "created": datetime.now(timezone.utc).isoformat()}
    (directory / LOCK_NAME).write_text(json.dumps(lock), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owner_is_gone(lock: dict[str, Any]) -> bool:
    """Whether the process named by a lock has ended (False when that cannot be known)."""
    pid = lock.get("pid")
    if lock.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's live process
        return False
    return False


def clean_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove what killed salience processes left beside ``out``.

    Looks only at hidden siblings named ``.OUT.tmp-*`` and ``.OUT.old-*`` that
    are real directories holding a salience lock file for ``out`` whose process
    (on this host) has ended.  A temporary that never got a manifest is removed
    whole (only its writer put files there); one with a manifest loses only the
    files listed in it.

    Returns
    -------
    list of Path
        The directories removed.
    """
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    prefixes = (f".{out.name}.tmp-", f".{out.name}.old-")
    for sibling in sorted(out.parent.iterdir()):
        if not sibling.name.startswith(prefixes) or sibling.is_symlink() or not sibling.is_dir():
            continue
        lock = _read_json(sibling / LOCK_NAME)
        if lock is None or lock.get("generator") != GENERATOR or lock.get("target") != out.name:
            continue
        if not _owner_is_gone(lock):
            continue
        if read_manifest(sibling) is None and sibling.name.startswith(prefixes[0]):
            shutil.rmtree(sibling, ignore_errors=True)
            gone = not sibling.exists()
        else:
            gone = _remove_own(sibling)
        if gone:
            removed.append(sibling)
    return removed
