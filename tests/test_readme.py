"""README.md runs as written: every ```python block, in order, in one namespace.

The blocks run in a fresh interpreter inside a temporary directory (the README saves its
photo and pictures there), compiled under the file name ``README.md`` with their own line
numbers, so a failure names the block and the README line that raised.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from salience import registry

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Runs the blocks given as (first line, code) pairs in one namespace; on an error prints
# which block failed and the traceback (whose README.md lines are the real ones).
_RUNNER = textwrap.dedent("""
    import json, sys, time, traceback
    blocks = json.loads(sys.stdin.read())
    namespace = {"__name__": "__readme__"}
    for number, (line, code) in enumerate(blocks, 1):
        source = "\\n" * (line - 1) + code
        start, cpu = time.perf_counter(), time.process_time()
        try:
            exec(compile(source, sys.argv[1], "exec"), namespace)
        except BaseException:
            frames = [f for f in traceback.extract_tb(sys.exc_info()[2])
                      if f.filename == sys.argv[1]]
            where = frames[-1].lineno if frames else line
            print(f"README block {number} (starting at line {line}) failed at line {where}:",
                  file=sys.stderr)
            traceback.print_exc()
            sys.exit(1)
        print(f"block {number} ok ({time.perf_counter() - start:.1f} s, "
              f"{time.process_time() - cpu:.1f} s CPU)", flush=True)
""")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line of the block's first code line, code)."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        first_line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((first_line, match.group(1)))
    return blocks


def run_blocks(blocks: list[tuple[int, str]], workdir: Path, filename: str = "README.md",
               timeout: float = 600) -> subprocess.CompletedProcess:
    import json

    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", _RUNNER, filename], input=json.dumps(blocks),
                          capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=timeout)


def test_runner_names_the_failing_block_and_line(tmp_path):
    text = "intro\n\n```python\nx = 1\n```\n\ntext\n```python\ny = x + 1\nz = 1 / 0\n```\n"
    blocks = python_blocks(text)
    assert blocks == [(4, "x = 1\n"), (9, "y = x + 1\nz = 1 / 0\n")]
    done = run_blocks(blocks, tmp_path)
    assert done.returncode == 1
    assert "block 1 ok" in done.stdout
    assert "README block 2 (starting at line 9) failed at line 10" in done.stderr
    assert "ZeroDivisionError" in done.stderr


def test_methods_table_lists_every_registered_method():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    in_table = re.findall(r"^\| `([a-z_+]+)` \|", section, re.M)
    assert sorted(in_table) == sorted(registry.names())
    assert len(in_table) == len(set(in_table))


@pytest.mark.readme
def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    done = run_blocks(blocks, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert done.stdout.count(" ok (") == len(blocks)
    print(done.stdout)  # the time of each block, with -s
    assert (tmp_path / "maps.png").stat().st_size > 10_000  # the quick start's picture
