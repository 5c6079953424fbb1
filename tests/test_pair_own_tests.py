"""PAIR's own unit tests (shipped in the installed ``saliency==0.2.1`` wheel), run
against salience's facades.

Each ``saliency/{core,tf1,metrics}/*_test.py`` file of the wheel is executed as
a module of a private package whose submodules are salience's: a PAIR test's
``from . import occlusion`` gets :mod:`salience.core` (or :mod:`salience.tf1`,
or :mod:`salience.metrics`), and ``from . import xrai`` the module
:mod:`salience.core.xrai` itself, so the tests' ``mock.patch`` of
``xrai.IntegratedGradients`` reaches the class salience's XRAI uses.  No PAIR
library code runs but ``blur_ig.gaussian_blur``, which computes an expected
value (below).  The test classes are collected here by pytest.

What the harness changes, and why (the tests themselves are unchanged):

- ``core/blur_ig_test.py`` computes its expected baseline with PAIR's
  ``blur_ig.gaussian_blur``; that helper is given from the reference (it is an
  expected value, not code under test).
- ``tf1/grad_cam_test.py`` builds its graph with ``tf.keras`` layers written
  for Keras 2, whose op names (``Conv/BiasAdd:0``) it looks up; Keras 3 names
  them otherwise, so that module's ``tf.keras`` is ``tf_keras`` (Keras 2).
- ``metrics/pic_test.py`` reads ``doberman.png`` from PAIR's source tree,
  which the wheel does not ship; scikit-image's bundled ``chelsea`` photo (a
  cat, uint8 RGB) stands in.
- PAIR's ``tf1/base_test.py`` switches TensorShape to TF1 behaviour; it is
  switched back after each test so that no other test sees it.

No PAIR test is deselected: all of PAIR's core, tf1 and metrics tests pass.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import unittest
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

saliency = pytest.importorskip("saliency")

import salience.core  # noqa: E402
import salience.core.xrai  # noqa: E402
import salience.metrics  # noqa: E402

PAIR_DIR = Path(saliency.__file__).parent
PACKAGE = "_pair_tests_on_salience"


def _package(name: str, submodules: dict[str, types.ModuleType]) -> None:
    package = types.ModuleType(name)
    package.__path__ = []  # a package: relative imports resolve in sys.modules
    sys.modules[name] = package
    for sub, module in submodules.items():
        sys.modules[f"{name}.{sub}"] = module
        setattr(package, sub, module)


def _namespace(name: str, source: types.ModuleType, **extra) -> types.ModuleType:
    """A module holding ``source``'s public names (plus ``extra``)."""
    module = types.ModuleType(name)
    module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("_")})
    module.__dict__.update(extra)
    return module


def _load(subpackage: str) -> list[types.ModuleType]:
    modules = []
    for path in sorted((PAIR_DIR / subpackage).glob("*_test.py")):
        name = f"{PACKAGE}.{subpackage}.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # mock.patch(__name__ + ...) looks the module up here
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def _collect(prefix: str, modules: list[types.ModuleType], overrides=None) -> None:
    """Put a subclass of every PAIR TestCase into this module for pytest."""
    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, unittest.TestCase) and \
                    value.__module__ == module.__name__:
                body = dict((overrides or {}).get(value.__name__, {}))
                body["__module__"] = __name__
                name = f"{prefix}{value.__name__}"
                globals()[name] = type(name, (value,), body)


_package(PACKAGE, {})

# ---------------------------------------------------------------- core
from saliency.core.blur_ig import gaussian_blur as _pair_gaussian_blur  # noqa: E402

_CORE = {name: _namespace(f"{PACKAGE}.core.{name}", salience.core)
         for name in ("base", "gradients", "integrated_gradients", "guided_ig", "occlusion",
                      "grad_cam", "visualization")}
_CORE["blur_ig"] = _namespace(f"{PACKAGE}.core.blur_ig", salience.core,
                              gaussian_blur=_pair_gaussian_blur)
_CORE["xrai"] = salience.core.xrai
_package(f"{PACKAGE}.core", _CORE)
_collect("TestPairCore", _load("core"))

# ---------------------------------------------------------------- metrics
_package(f"{PACKAGE}.metrics", {"pic": _namespace(f"{PACKAGE}.metrics.pic", salience.metrics)})


def _chelsea(self):
    import skimage.data

    self.img = skimage.data.chelsea()


_collect("TestPairMetrics", _load("metrics"), {"PicTest": {"setUp": _chelsea}})

# ---------------------------------------------------------------- tf1
if importlib.util.find_spec("tensorflow") is not None:
    import tensorflow as tf
    import tf_keras

    import salience.tf1

    class _KerasTwo:
        """``tensorflow.compat.v1`` with ``keras`` = ``tf_keras``."""

        keras = tf_keras

        def __getattr__(self, name):
            return getattr(tf.compat.v1, name)

    _package(f"{PACKAGE}.tf1", {
        name: _namespace(f"{PACKAGE}.tf1.{name}", salience.tf1)
        for name in ("base", "blur_ig", "grad_cam", "gradients", "guided_backprop", "guided_ig",
                     "integrated_gradients", "occlusion", "utils", "visualization", "xrai")
    })
    _TF1 = _load("tf1")
    for _module in _TF1:
        if _module.__name__.endswith(".grad_cam_test"):
            _module.tf = _KerasTwo()
    _collect("TestPairTF1", _TF1)

    @pytest.fixture(autouse=True)
    def _restore_tensorshape_behaviour():
        v2 = isinstance(tf.TensorShape([1])[0], int)  # TF1 behaviour gives a Dimension
        yield
        if v2:
            tf.compat.v1.enable_v2_tensorshape()
        else:
            tf.compat.v1.disable_v2_tensorshape()


def test_every_pair_test_file_is_collected():
    files = {f"{p.parent.name}/{p.stem}" for sub in ("core", "tf1", "metrics")
             for p in (PAIR_DIR / sub).glob("*_test.py")}
    assert len(files) == 18, sorted(files)  # 8 core, 9 tf1, 1 metrics files in 0.2.1
    loaded = {name.split(".", 1)[1].replace(".", "/") for name in sys.modules
              if name.startswith(PACKAGE + ".") and name.endswith("_test")}
    if importlib.util.find_spec("tensorflow") is None:
        files = {f for f in files if not f.startswith("tf1/")}
    assert loaded == files
