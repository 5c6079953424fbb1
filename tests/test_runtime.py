import ctypes
import sys

import numpy as np
import pytest

from salience.runtime import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux only")
def test_retain_freed_memory_applies_on_glibc_and_is_idempotent():
    try:
        is_glibc = hasattr(ctypes.CDLL("libc.so.6"), "gnu_get_libc_version")
    except OSError:
        is_glibc = False
    if not is_glibc:
        pytest.skip("not glibc")
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
    # Large arrays still allocate, fill and free normally afterwards.
    block = np.ones((64, 1 << 20), np.float32)
    assert float(block.sum()) == 64 * (1 << 20)
    del block


def test_cli_keeps_freed_memory(monkeypatch, tmp_path):
    import salience.runtime
    from salience import cli

    calls = []
    monkeypatch.setattr(salience.runtime, "retain_freed_memory", lambda: calls.append(1))
    with pytest.raises(cli.CliError):
        cli.run_explain([tmp_path / "missing.png"], methods="no-such-method", out=tmp_path / "r",
                        quiet=True)
    assert calls == [1]


def test_usable_cores_follows_the_affinity(monkeypatch):
    import os

    from salience import runtime

    assert 1 <= runtime.usable_cores() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        assert runtime.usable_cores() == 1
