"""Images on disk (photos bundled with scikit-image and generated files) and tiny
models for dataset runs.  Nothing here downloads anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("zarr")
Image = pytest.importorskip("PIL.Image")

from salience.io import Preprocessing  # noqa: E402

#: The preprocessing of the tiny torch model: 32x32 RGB, channels first, values in [0, 1].
PREP = Preprocessing(size=(32, 32), channels=3, channels_last=False, preset="unit")

#: Both method families: gradient methods (SmoothGrad's noise drawn per image) and XRAI.
METHODS = ["gradients", "smoothgrad", "integrated_gradients", "xrai", "gradcam"]

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page",
          "text", "brick", "grass", "gravel", "cell", "clock", "colorwheel", "hubble_deep_field",
          "immunohistochemistry", "logo", "microaneurysms", "retina", "cat", "checkerboard")


def tiny_net():
    """Two convolutions and a linear layer, fixed weights; 32x32 RGB in, 6 classes out."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 6),
    )
    return net.eval()


class DiesOnce:
    """A model that ends its process (like a killed worker) at its ``at``-th call,
    once across all processes: the marker file says it happened."""

    def __init__(self, model, marker: str, at: int) -> None:
        self._model = model
        self._marker = marker
        self._at = at
        self._calls = 0

    def __call__(self, x, targets, keys):
        self._calls += 1
        if self._calls == self._at and not os.path.exists(self._marker):
            Path(self._marker).write_text(str(os.getpid()))
            os._exit(1)
        return self._model(x, targets, keys)

    def __getattr__(self, name):
        return getattr(self._model, name)


def dies_once_net(marker: str, at: int = 4):
    """A model factory for Ray workers: the tiny net, dying once at its ``at``-th call."""
    import salience.torch

    return DiesOnce(salience.torch.wrap(tiny_net()), marker, at)


def _register_for_ray() -> None:
    # Ray workers cannot import this test module by name: send its functions by value.
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - Ray brings cloudpickle
        return
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_register_for_ray()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One PyTorch thread: on a small shared machine more threads spin-wait for each other."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(image: np.ndarray, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)


def write_dataset(root: Path) -> Path:
    """~40 images in nested folders: scikit-image's photos (RGB, RGBA, grayscale) as
    PNG and JPEG, smooth generated RGB and grayscale images, 16-bit TIFFs and one
    corrupt file."""
    import skimage.data

    for i, name in enumerate(PHOTOS):
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        folder = root / ("photos" if i % 2 else "photos/more")
        if image.ndim == 3 and image.shape[2] == 3 and i % 3 == 0:
            _save(image, folder / f"{name}.jpg", quality=90)
        else:
            _save(image, folder / f"{name}.png")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:48, 0:40]
    for k in range(12):
        phase = rng.uniform(0, 6, size=3)
        rgb = np.stack([np.sin(yy / (4 + k) + phase[c]) * np.cos(xx / (5 + c) - phase[c])
                        for c in range(3)], axis=-1)
        image = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
        if k % 3 == 2:
            _save(image.mean(axis=-1).astype(np.uint8), root / "generated" / f"gray{k:02d}.png")
        else:
            _save(image, root / "generated" / f"rgb{k:02d}.png")
    for k in range(3):  # microscopy-style 16-bit grayscale
        wave = np.sin(yy / (3 + k)) * np.cos(xx / (2 + k)) * 20000 + 30000 + 500 * k
        _save(wave.astype(np.uint16), root / "tiff" / f"cells{k}.tif")
    (root / "generated" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return root


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """The ~40-image folder, written once per test session."""
    return write_dataset(tmp_path_factory.mktemp("images"))


def tiny_model():
    """The tiny net wrapped for salience (Grad-CAM on its last convolution)."""
    import salience.torch

    return salience.torch.wrap(tiny_net(), layer="2")


def explain_here(out: Path, source, methods=METHODS, **kwargs):
    """The local engine on the tiny net with the tiny preprocessing."""
    import salience

    kwargs.setdefault("preprocessing", PREP)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("report_sample", 0)
    return salience.explain_dataset(source, tiny_model(), methods, out, **kwargs)


def assert_same_stores(a, b, atol: float = 1e-6, methods=None) -> None:
    """The same images with the same records (timings aside) and the same maps (of
    ``methods``, default all of ``a``'s)."""
    ra = {r["id"]: r for r in a.records.to_pylist()}
    rb = {r["id"]: r for r in b.records.to_pylist()}
    assert sorted(ra) == sorted(rb)
    assert len(ra) == a.records.num_rows and len(rb) == b.records.num_rows
    for image, x in ra.items():
        y = rb[image]
        for key in ("name", "path", "content_hash", "status", "error", "target",
                    "top_classes", "height", "width"):
            assert x[key] == y[key], (image, key)
        if x["status"] != "ok":
            continue
        np.testing.assert_allclose(x["top_probabilities"], y["top_probabilities"], atol=atol)
        for method in methods or a.methods:
            assert x[f"{method}.status"] == y[f"{method}.status"] == "ok", (image, method)
            ma, mb = a.map(image, method), b.map(image, method)
            scale = max(float(np.abs(ma).max()), 1e-30)
            np.testing.assert_allclose(ma, mb, rtol=0, atol=atol * scale,
                                       err_msg=f"{x['name']} {method}")


@pytest.fixture(scope="session")
def kit():
    """This module's helpers for the tests (conftest modules are not imported by name)."""
    return SimpleNamespace(
        PREP=PREP, METHODS=METHODS, tiny_net=tiny_net, tiny_model=tiny_model,
        dies_once_net=dies_once_net, explain_here=explain_here,
        assert_same_stores=assert_same_stores, write_dataset=write_dataset,
    )
