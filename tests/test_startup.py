"""Start-up: ``import salience``, the methods, an adapter and ``salience --help``,
``methods`` and ``models`` load no framework and no heavy library they do not use
(checked in a fresh interpreter through sys.modules, never by the clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    pytest.importorskip("typer")
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


# numpy's heavier companions, imported only by the methods, metrics or reports that use them
# (scipy and scikit-image alone are about half a second of CPU), and the frameworks.
HEAVY = {"scipy", "skimage", "threadpoolctl", "matplotlib", "PIL", "jinja2", "typer", "rich",
         "pandas", "pyarrow", "zarr", "ray"}
FRAMEWORKS = {"torch", "tensorflow", "keras", "tf_keras", "jax", "jaxlib", "flax"}


def _packages_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running ``statement`` in a fresh interpreter."""
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "import salience",
    "import salience.methods, salience.runner, salience.registry",
    "from salience import explain, IntegratedGradients, GradCAM, ScoreCAM, LIME, XRAI",
    "import salience.core, salience.tf1",
])
def test_importing_the_package_and_its_methods_loads_nothing_heavy(statement):
    loaded = _packages_after(statement)
    assert "salience" in loaded
    assert not loaded & (HEAVY | FRAMEWORKS), sorted(loaded & (HEAVY | FRAMEWORKS))


def test_explaining_with_a_callback_model_loads_nothing_heavy():
    loaded = _packages_after(
        "import numpy as np, salience\n"
        "from salience.model import INPUT_OUTPUT_GRADIENTS, CallbackModel\n"
        "def call(x, call_model_args=None, expected_keys=None):\n"
        "    return {INPUT_OUTPUT_GRADIENTS: 2 * x}\n"
        "x = np.ones((2, 4, 4, 3), np.float32)\n"
        "for method in (salience.Gradients(), salience.IntegratedGradients(steps=4),\n"
        "               salience.SmoothGrad(salience.Gradients(), nsamples=2)):\n"
        "    assert method.explain(CallbackModel(call), x, targets=None).shape == x.shape\n"
    )
    assert not loaded & (HEAVY | FRAMEWORKS), sorted(loaded & (HEAVY | FRAMEWORKS))


FIRST_CALLS = {
    "torch": ("import torch, numpy as np",
              "net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),\n"
              "                          torch.nn.Linear(4 * 6 * 6, 3))\n"
              "model = salience.torch.wrap(net, layer='0')\n"
              "x = np.ones((2, 3, 8, 8), np.float32)\n"),
    "jax": ("import jax, jax.numpy as jnp, numpy as np",
            "model = salience.jax.wrap(lambda x: jnp.sum(x, axis=(1, 2)))\n"
            "x = np.ones((2, 8, 8, 3), np.float32)\n"),
}


@pytest.mark.parametrize("framework", sorted(FIRST_CALLS))
def test_the_first_adapter_call_adds_no_heavy_library_to_the_framework(framework):
    pytest.importorskip(framework)
    setup, call = FIRST_CALLS[framework]
    alone = _packages_after(setup)
    with_salience = _packages_after(
        f"{setup}\nimport salience\n{call}"
        "maps = salience.IntegratedGradients(steps=4).explain(model, x, targets=[0, 1])\n"
        "assert maps.shape == x.shape\n"
    )
    added = with_salience - alone - set(sys.stdlib_module_names)
    assert "salience" in added
    assert not added & (HEAVY | FRAMEWORKS), sorted(added & (HEAVY | FRAMEWORKS))
