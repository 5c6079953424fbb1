"""``salience --help``, ``methods`` and ``models`` start without importing a framework
(checked in a fresh interpreter through sys.modules, never by the clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("typer")

SRC = Path(__file__).resolve().parents[1] / "src"

PROBE = """
import json, sys
sys.argv = ["salience", *sys.argv[1:]]
from salience.cli import main
try:
    main()
except SystemExit as done:
    code = done.code
else:
    code = 0
heavy = ("torch", "tensorflow", "keras", "jax", "scipy", "matplotlib", "PIL")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}),
      file=sys.stderr)
"""


def _loaded(*args: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    report = json.loads(run.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), run.stderr[-2000:]
    assert run.stdout.strip(), "the command printed nothing"
    return report["loaded"]


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["models"], []])
def test_listing_commands_import_no_framework(args):
    frameworks = {"torch", "tensorflow", "keras", "jax"}
    assert frameworks.isdisjoint(_loaded(*args))


@pytest.mark.parametrize("args", [["--help"], ["models"], ["explain", "--help"]])
def test_help_and_models_skip_scipy_and_plotting_too(args):
    # the start-up cost of the package: scipy alone is about half a second of CPU
    assert _loaded(*args) == []


def test_the_package_imports_names_when_first_used():
    code = ("import sys, salience; before = 'salience.runner' in sys.modules; "
            "from salience import explain, IntegratedGradients; "
            "print(before, explain.__module__, IntegratedGradients.__module__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=300, check=True)
    assert run.stdout.split() == ["False", "salience.runner",
                                  "salience.methods.integrated_gradients"]
