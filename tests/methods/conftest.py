"""Fixtures shared by the tests of methods that build rows or keep arrays on the
model's device: one small model per adapter set-up (on this CPU-only machine the
device is the CPU)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


class _Framework:
    """A small model of one framework, wrapped by its adapter."""

    channels_last = True

    def images(self, n: int = 3) -> np.ndarray:
        """n images of 10 x 12 pixels and 3 channels, in the model's layout."""
        x = np.random.default_rng(1).random((n, 3, 10, 12))
        return x.transpose(0, 2, 3, 1).copy() if self.channels_last else x

    def assert_threads_get_the_serial_maps(self, method, x: np.ndarray, targets,
                                           runs: int = 8) -> None:
        """``method`` run by four threads sharing this model gives its serial maps."""
        serial = method.explain(self.model, x, targets)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: method.explain(self.model, x, targets),
                                    range(runs)))
        for maps in results:
            np.testing.assert_array_equal(maps, serial)


class _Torch(_Framework):
    """A float64 torch model, channels first."""

    tolerance = 1e-12
    channels_last = False

    def __init__(self):
        torch = pytest.importorskip("torch")
        import salience.torch

        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(4, 5)).double()
        self.model = salience.torch.wrap(self.net)
        self.adapter = salience.torch.TorchModel


class _TorchLast(_Torch):
    """The float64 torch model wrapped channels last (its module permutes the input)."""

    channels_last = True

    def __init__(self):
        super().__init__()
        import torch

        import salience.torch

        class Permuted(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x.permute(0, 3, 1, 2))

        self.model = salience.torch.wrap(Permuted(self.net), channels_last=True)


class _Jax(_Framework):
    """A float32 JAX model, channels last."""

    tolerance = 2e-5
    channels_last = True

    def __init__(self):
        pytest.importorskip("jax")
        import jax.numpy as jnp

        import salience.jax

        weights = np.random.default_rng(0).normal(size=(3 * 10 * 12, 5)).astype(np.float32)
        self.model = salience.jax.wrap(
            lambda p, x: jnp.tanh(x.reshape(len(x), -1) / 4) @ p, weights / 10)
        self.adapter = salience.jax.JaxModel


class _Keras(_Framework):
    """A float32 Keras model, channels last."""

    tolerance = 2e-5
    channels_last = True

    def __init__(self):
        pytest.importorskip("tensorflow")
        keras = pytest.importorskip("keras")
        import salience.keras

        keras.utils.set_random_seed(0)
        self.net = keras.Sequential([
            keras.Input((10, 12, 3)), keras.layers.Conv2D(4, 3, activation="tanh"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
        self.model = salience.keras.wrap(self.net)
        self.adapter = salience.keras.KerasModel


@pytest.fixture(params=[_Torch, _TorchLast, _Jax, _Keras],
                ids=["torch", "torch-channels-last", "jax", "keras"])
def framework(request):
    """Each adapter set-up in turn (torch float64 channels first and last, JAX and
    Keras float32 channels last)."""
    return request.param()


@pytest.fixture
def torch_framework():
    """The float64 torch set-up alone."""
    return _Torch()


@pytest.fixture
def callback_model():
    """A PAIR-style callback model (channels last, gradients of ones) with no device,
    and the list of the row counts it was called with."""
    from salience.model import CallbackModel

    calls: list[int] = []

    def call_model(x, call_model_args=None, expected_keys=None):
        calls.append(len(x))
        return {"INPUT_OUTPUT_GRADIENTS": np.ones_like(x)}

    return CallbackModel(call_model, channels_last=True), calls
