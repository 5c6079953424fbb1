"""SmoothGrad with its noise drawn by the model's adapter, on its device
(``noise_on="model"``; on this CPU-only machine the device is the CPU): the torch
adapter (a torch generator per row), the JAX adapter (a threefry key per row) and the
Keras adapter (TensorFlow's stateless normals, a seed per row)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import salience
from salience.methods import SmoothGrad
from salience.model import GUIDED_INPUT_GRADIENTS, INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES


def _torch_net(dtype=None):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5)).to(dtype or torch.float64)


class _Torch:
    """A float64 torch model, its documented noise and its gradient of one row."""

    tolerance = 1e-12

    def __init__(self):
        self.torch = pytest.importorskip("torch")
        import salience.torch

        self.net = _torch_net()
        self.model = salience.torch.wrap(self.net)

    def noise(self, seed, shape):
        generator = self.torch.Generator().manual_seed(int(seed))
        return self.torch.randn(shape, generator=generator).double().numpy()

    def gradient(self, row, target):
        row = self.torch.tensor(row)[None].requires_grad_(True)
        self.net(row)[0, target].backward()
        return row.grad[0].numpy()


class _Jax:
    """A float32 JAX model, its documented noise and its gradient of one row."""

    tolerance = 2e-5

    def __init__(self):
        self.jax = pytest.importorskip("jax")
        import salience.jax

        rng = np.random.default_rng(0)
        self.params = {"w": rng.normal(size=(3 * 12 * 12, 8)).astype(np.float32) / 20,
                       "v": rng.normal(size=(8, 5)).astype(np.float32)}
        self.model = salience.jax.wrap(self._fn, self.params)

    @staticmethod
    def _fn(p, x):
        import jax.numpy as jnp

        return jnp.tanh(x.reshape(len(x), -1) @ p["w"]) @ p["v"]

    def noise(self, seed, shape):
        words = np.array([int(seed) >> 32, int(seed) & 0xFFFFFFFF], dtype=np.uint32)
        key = self.jax.random.wrap_key_data(words, impl="threefry2x32")
        return np.asarray(self.jax.random.normal(key, shape, np.float32))

    def gradient(self, row, target):
        if not hasattr(self, "_gradient"):  # compiled once: eager JAX is slow per row
            self._gradient = self.jax.jit(self.jax.grad(
                lambda r, one_hot: self._fn(self.params, r[None])[0] @ one_hot))
        one_hot = np.eye(5, dtype=np.float32)[target]
        return np.asarray(self._gradient(row.astype(np.float32), one_hot))


class _Keras:
    """A float32 Keras model, its documented noise and its gradient of one row."""

    tolerance = 2e-5

    def __init__(self):
        self.tf = pytest.importorskip("tensorflow")
        keras = pytest.importorskip("keras")
        import salience.keras

        keras.utils.set_random_seed(0)
        self.net = keras.Sequential([keras.Input((3, 12, 12)), keras.layers.Flatten(),
                                     keras.layers.Dense(8, activation="tanh"),
                                     keras.layers.Dense(5)])
        self.model = salience.keras.wrap(self.net)

    def noise(self, seed, shape):
        seed = self.tf.constant([int(seed), 0], self.tf.int64)
        return self.tf.random.stateless_normal(shape, seed=seed).numpy()

    def gradient(self, row, target):
        row = self.tf.constant(row[None].astype(np.float32))
        with self.tf.GradientTape() as tape:
            tape.watch(row)
            score = self.net(row)[0, target]
        return tape.gradient(score, row)[0].numpy()


@pytest.fixture(params=[_Torch, _Jax, _Keras], ids=["torch", "jax", "keras"])
def framework(request):
    return request.param()


@pytest.fixture
def x():
    return np.random.default_rng(1).random((3, 3, 12, 12))


def _documented_maps(framework, x, targets, nsamples, stdev_spread, seed, inner,
                     aggregation):
    """SmoothGrad as its docs describe noise on the model: one int64 seed per row from
    ``numpy.random.default_rng(seed)``, from which the framework draws the row's
    float32 standard normals, scaled by the image's range; one gradient per row;
    the mean of the squared maps, of the maps ("signed mean"), or their unbiased
    variance (two-pass)."""
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=len(x) * nsamples,
                                                  dtype=np.int64)
    maps = np.zeros((len(x), nsamples, *x.shape[1:]))
    for r, row_seed in enumerate(seeds):
        i = r // nsamples
        scale = stdev_spread * (x[i].max() - x[i].min())
        row = x[i] + scale * framework.noise(row_seed, x.shape[1:])
        grad = framework.gradient(row, targets[i])
        maps[i, r % nsamples] = grad if inner is salience.Gradients else row * grad
    if aggregation == "vargrad":
        centred = maps - maps.mean(axis=1, keepdims=True)
        return (centred**2).sum(axis=1) / (nsamples - 1)
    return (maps**2 if aggregation == "mean" else maps).mean(axis=1)


@pytest.mark.parametrize("inner", [salience.Gradients, salience.InputXGradient])
@pytest.mark.parametrize("aggregation", ["mean", "signed mean", "vargrad"])
def test_noise_on_the_model_gives_the_documented_maps(framework, inner, aggregation, x):
    options = {"mean": {"magnitude": True}, "signed mean": {"magnitude": False},
               "vargrad": {"aggregation": "vargrad"}}[aggregation]
    maps = SmoothGrad(inner(batch_size=4), nsamples=5, stdev_spread=0.2, seed=7,
                      noise_on="model", **options).explain(framework.model, x, [0, 3, 1])
    expected = _documented_maps(framework, x, [0, 3, 1], 5, 0.2, 7, inner, aggregation)
    np.testing.assert_allclose(maps, expected, rtol=framework.tolerance,
                               atol=framework.tolerance * np.abs(expected).max())


def _batch_sizes_agree(model, x, rtol):
    maps = [SmoothGrad(salience.Gradients(batch_size=b), nsamples=5, seed=2,
                       noise_on="model").explain(model, x, [1, 1, 1]) for b in (1, 4, 15)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=rtol)


def test_maps_do_not_depend_on_batch_size(framework, x):
    _batch_sizes_agree(framework.model, x, framework.tolerance)


def test_torch_float32_rows_in_channels_last_memory_do_not_depend_on_batch_size(x):
    # float32 batches of several images go to the convolution in channels-last memory
    torch = pytest.importorskip("torch")
    import salience.torch

    _batch_sizes_agree(salience.torch.wrap(_torch_net(torch.float32)), x, 1e-5)


def test_the_same_seed_repeats_and_another_differs(framework, x):
    def run(seed):
        return SmoothGrad(salience.Gradients(), nsamples=3, seed=seed,
                          noise_on="model").explain(framework.model, x, 0)

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.allclose(run(4), run(5))


def test_noisy_rows_hold_the_asked_noise(framework):
    model = framework.model
    images = np.stack([np.full((3, 40, 40), 0.5), np.linspace(-1, 1, 4800).reshape(3, 40, 40)])
    scales = np.array([0.3, 0.05])
    owners = np.array([0, 0, 1, 1, 1])
    seeds = np.array([11, 12, 13, 11, 14])
    rows = model.noisy_rows(images, owners, scales, seeds)
    assert len(rows) == 5 and rows.shape == (5, 3, 40, 40) and rows.dtype == images.dtype
    host = np.asarray(rows)
    noise = (host - images[owners]) / scales[owners, None, None, None]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
    # a row's noise is its seed's alone: seed 11 for image 0 and image 1 alike
    np.testing.assert_allclose(noise[3], noise[0], rtol=0, atol=framework.tolerance * 10)
    assert not np.allclose(noise[1], noise[0])
    # a copy asked for is the caller's own
    np.array(rows, copy=True)[:] = 0
    np.testing.assert_array_equal(np.asarray(rows), host)
    # and no copy cannot be promised of rows that may be on a device (numpy 2's copy=False)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        with pytest.raises(ValueError, match="cannot be had"):
            np.asarray(rows, copy=False)
    # rows of a later chunk alone are the rows built with the others
    np.testing.assert_array_equal(
        np.asarray(model.noisy_rows(images, owners[2:], scales, seeds[2:])), host[2:])


@pytest.mark.filterwarnings("ignore:Guided Backprop found no Relu")  # the Keras model's tanh
def test_a_call_on_device_rows_equals_the_call_on_their_host_copy(framework, x):
    model = framework.model
    rows = model.noisy_rows(x, np.array([0, 2, 2, 1]), np.array([0.1, 0.2, 0.3]),
                            np.arange(4))
    targets = np.array([4, 0, 1, 2])
    key_sets = [[INPUT_OUTPUT_GRADIENTS], [OUTPUT_LAYER_VALUES]]
    if model.supports_guided:
        key_sets.append([GUIDED_INPUT_GRADIENTS])
    for keys in key_sets:
        on_device, on_host = model(rows, targets, keys), model(np.asarray(rows), targets, keys)
        for key in keys:
            np.testing.assert_allclose(on_device[key], on_host[key], rtol=1e-6)


def test_auto_draws_on_the_model_only_on_an_accelerator(framework, x, monkeypatch):
    model = framework.model

    def run(noise_on, seed=3, **kwargs):
        return SmoothGrad(salience.Gradients(), nsamples=4, seed=seed, noise_on=noise_on,
                          **kwargs).explain(model, x, 2)

    auto = SmoothGrad(salience.Gradients(), seed=3)
    assert not model.on_accelerator and auto.resolved_for(model).noise_on == "host"
    np.testing.assert_array_equal(run("auto"), run("host"))
    monkeypatch.setattr(type(model), "on_accelerator", property(lambda self: True))
    assert auto.resolved_for(model).noise_on == "model" and auto.noise_on == "auto"
    np.testing.assert_array_equal(run("auto"), run("model"))
    # a RandomState asks for PAIR's draws, which only the host makes
    legacy = run("auto", seed=np.random.RandomState(3))
    np.testing.assert_array_equal(legacy, run("host", seed=np.random.RandomState(3)))
    np.testing.assert_array_equal(run("auto", aggregation="vargrad"),
                                  run("model", aggregation="vargrad"))
    # a method of several rows per input builds its own rows: noise on the host
    ig = {"method": salience.IntegratedGradients(steps=2)}
    np.testing.assert_array_equal(
        SmoothGrad(nsamples=2, seed=3, noise_on="auto", **ig).explain(model, x, 2),
        SmoothGrad(nsamples=2, seed=3, noise_on="host", **ig).explain(model, x, 2))


def test_threads_sharing_the_model_give_the_serial_maps(framework):
    model = framework.model
    batches = [np.random.default_rng(k).random((2, 3, 12, 12)) for k in range(6)]

    def run(batch):
        return SmoothGrad(salience.Gradients(batch_size=3), nsamples=4, seed=9,
                          noise_on="model").explain(model, batch, [0, 4])

    serial = [run(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(run, batches * 2))
    for k, maps in enumerate(threaded):
        np.testing.assert_array_equal(maps, serial[k % len(batches)])


def test_noise_on_the_model_is_refused_before_the_model_runs(framework, x):
    calls = []

    def numpy_model(rows, targets, keys):
        calls.append(len(rows))
        return {key: np.zeros_like(rows) for key in keys}

    with pytest.raises(ValueError, match="noise_on='model' needs a model that builds"):
        SmoothGrad(salience.Gradients(), seed=0, noise_on="model").explain(numpy_model, x, 0)
    with pytest.raises(ValueError, match="one-row method.*IntegratedGradients"):
        SmoothGrad(salience.IntegratedGradients(steps=3), seed=0,
                   noise_on="model").explain(framework.model, x, 0)
    with pytest.raises(ValueError, match="noise_on must be one of 'auto', 'host', 'model', "
                                         "got 'gpu'"):
        SmoothGrad(salience.Gradients(), noise_on="gpu")
    assert calls == []
