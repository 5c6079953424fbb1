import ctypes
import sys

import numpy as np
import pytest

from salience.runtime import retain_freed_memory


def _is_glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "gnu_get_libc_version")
    except OSError:
        return False


needs_glibc = pytest.mark.skipif(not _is_glibc(), reason="mallopt is glibc's (Linux)")


@needs_glibc
def test_retain_freed_memory_applies_on_glibc_and_is_idempotent():
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
    # Large arrays still allocate, fill and free normally afterwards.
    block = np.ones((64, 1 << 20), np.float32)
    assert float(block.sum()) == 64 * (1 << 20)
    del block


@needs_glibc
def test_threads_reuse_the_kept_memory_instead_of_faulting_it_in_again():
    # A new thread per run (as the row scheduler's helper) allocating and freeing more
    # than one of glibc's 64 MiB per-thread heaps: without one arena for all threads
    # every run page-faults its memory in again (~1100 minor faults here).
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import resource, threading
        import numpy as np
        from salience.runtime import retain_freed_memory
        assert retain_freed_memory()

        def work():
            blocks = [np.ones(8 << 20) for _ in range(3)]  # 3 x 64 MiB
            del blocks

        faults = []
        for _ in range(4):
            thread = threading.Thread(target=work)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            thread.start()
            thread.join()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(max(faults[1:]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout.strip()) < 100, out.stdout


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
