"""The import rules of ARCHITECTURE.md, checked on the source.

Every ``import`` in ``src/salience`` (module level and inside functions) is
resolved to the salience module or third-party package it names, and each
layer may only reach the layers ARCHITECTURE.md allows.  A module added
anywhere must be given a layer here, so no file escapes the rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "salience"

FRAMEWORKS = {"torch", "tensorflow", "keras", "tf_keras", "jax", "jaxlib", "flax", "ray",
              "onnxruntime"}

# Layer of each module, by its dotted name under ``salience`` (a package name
# covers its submodules).  Lower layers come first.
LAYERS = {
    "model": "base", "arrays": "base", "numeric": "base", "checks": "base",
    "runtime": "base", "concurrency": "base", "schedule": "base", "progress": "base",
    "methods": "methods",
    "_adapter": "adapters", "torch": "adapters", "keras": "adapters", "jax": "adapters",
    "blackbox": "adapters", "tf1._model": "adapters", "_tensorflow": "adapters",
    "registry": "evaluation", "runner": "evaluation", "visualize": "evaluation",
    "metrics": "evaluation",
    "core": "facades", "tf1": "facades",
    "io": "application", "loading": "application", "report": "application",
    "dataset": "application", "cli": "application", "demo": "application",
    "outdir": "application", "zoo": "application", "_version": "base",
}

ALLOWED = {
    "base": {"base"},
    "methods": {"base", "methods"},
    "adapters": {"base", "adapters"},
    "evaluation": {"base", "methods", "adapters", "evaluation"},
    "facades": {"base", "methods", "adapters", "evaluation", "facades"},
    "application": {"base", "methods", "adapters", "evaluation", "facades", "application"},
}

# Frameworks each layer may import (adapters their own, lazily or not).
FRAMEWORKS_ALLOWED = {
    "base": set(), "methods": set(), "evaluation": set(), "facades": {"tensorflow"},
    "adapters": FRAMEWORKS, "application": FRAMEWORKS,
}

# Deliberate exceptions, each with its reason.
EXCEPTIONS = {
    # Saying which methods a scores-only model can run needs the method list.
    ("blackbox", "registry"),
    # The sanity check randomises a model's weights: framework work, done through the
    # adapters' public helpers.
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(name: str) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:k]))
        if layer is not None:
            return layer
    return None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Absolute names imported by a file (``salience.x.y`` or a top-level package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(["salience", *up, *([node.module] if node.module else [])])
            for alias in node.names:
                # ``from . import x`` may name a module: record the deeper name.
                found.append((f"{base}.{alias.name}" if not node.module or node.level else base,
                              node.lineno))
    return found


def _files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in _files()
               if _module_name(p) and _layer(_module_name(p)) is None]
    assert not missing, f"give these modules a layer in tests/test_architecture.py: {missing}"


# Known breaches being mended on their branches; strict, so a mended one must leave this list.
PENDING: dict[str, str] = {}


def _marked(path: Path):
    reason = PENDING.get(_module_name(path))
    return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=reason)) if reason \
        else path


@pytest.mark.parametrize("path", [_marked(p) for p in _files()],
                         ids=lambda p: _module_name(p) or "salience")
def test_imports_follow_the_layers(path):
    module = _module_name(path)
    if not module:  # the package's __init__ re-exports the public API
        return
    layer = _layer(module)
    problems = []
    for name, line in _imports(path, module):
        top = name.split(".")[0]
        if top == "salience":
            target = name.split(".", 1)[1] if "." in name else ""
            if not target:
                problems.append(f"line {line}: imports the salience package itself")
                continue
            target_layer = _layer(target)
            if target_layer is None:  # a name re-exported by a package, e.g. `from .. import x`
                target_layer = _layer(target.rsplit(".", 1)[0]) if "." in target else None
            if target_layer is None:
                problems.append(f"line {line}: imports salience.{target}, which has no layer")
            elif (target_layer not in ALLOWED[layer]
                  and (module.split(".")[0], target.split(".")[0]) not in EXCEPTIONS):
                problems.append(f"line {line}: {layer} module imports salience.{target} "
                                f"({target_layer})")
        elif top in FRAMEWORKS and top not in FRAMEWORKS_ALLOWED[layer]:
            problems.append(f"line {line}: {layer} module imports the framework {top}")
    assert not problems, f"salience.{module} breaks ARCHITECTURE.md:\n" + "\n".join(problems)


def test_threads_are_started_in_one_place():
    starters = ("ThreadPoolExecutor", "threading.Thread(", "Thread(target")
    offenders = [_module_name(p) for p in _files()
                 if _module_name(p) != "concurrency"
                 and any(s in p.read_text(encoding="utf-8") for s in starters)]
    assert not offenders, f"threads are started outside salience.concurrency: {offenders}"
