"""SmoothGrad with its noise drawn by the torch adapter, on the model's device
(``noise_on="model"``; on this CPU-only machine the device is the CPU)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import salience  # noqa: E402
import salience.torch  # noqa: E402
from salience.methods import SmoothGrad  # noqa: E402


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5)).to(dtype)


@pytest.fixture
def x():
    return np.random.default_rng(1).random((3, 3, 12, 12))


def _documented_maps(net, x, targets, nsamples, stdev_spread, seed, inner, squared):
    """SmoothGrad as its docs describe noise on the model: one int64 seed per row from
    ``numpy.random.default_rng(seed)``, a torch generator seeded with it draws the
    row's float32 standard normals, scaled by the image's range; one autograd pass
    per row."""
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=len(x) * nsamples,
                                                  dtype=np.int64)
    maps = np.zeros_like(x)
    for r, row_seed in enumerate(seeds):
        i = r // nsamples
        z = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(row_seed)))
        scale = stdev_spread * (x[i].max() - x[i].min())
        row = torch.tensor(x[i] + scale * z.double().numpy())[None].requires_grad_(True)
        net(row)[0, targets[i]].backward()
        grad = row.grad[0].numpy()
        one = grad if inner is salience.Gradients else row.detach()[0].numpy() * grad
        maps[i] += (one**2 if squared else one) / nsamples
    return maps


@pytest.mark.parametrize("inner", [salience.Gradients, salience.InputXGradient])
@pytest.mark.parametrize("magnitude", [True, False])
def test_noise_on_the_model_gives_the_documented_maps(inner, magnitude, x):
    net = _net()
    maps = SmoothGrad(inner(batch_size=4), nsamples=5, stdev_spread=0.2, magnitude=magnitude,
                      seed=7, noise_on="model").explain(salience.torch.wrap(net), x, [0, 3, 1])
    expected = _documented_maps(net, x, [0, 3, 1], 5, 0.2, 7, inner, magnitude)
    np.testing.assert_allclose(maps, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_maps_do_not_depend_on_batch_size(dtype, x):
    # float32 batches of several images go to the convolution in channels-last memory
    model = salience.torch.wrap(_net(dtype))
    maps = [SmoothGrad(salience.Gradients(batch_size=b), nsamples=5, seed=2,
                       noise_on="model").explain(model, x, [1, 1, 1]) for b in (1, 4, 15)]
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=tolerance)


def test_the_same_seed_repeats_and_another_differs(x):
    model = salience.torch.wrap(_net())

    def run(seed):
        return SmoothGrad(salience.Gradients(), nsamples=3, seed=seed,
                          noise_on="model").explain(model, x, 0)

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.allclose(run(4), run(5))


def test_noisy_rows_hold_the_asked_noise():
    model = salience.torch.wrap(_net())
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
    np.testing.assert_allclose(noise[3], noise[0], rtol=0, atol=1e-12)
    assert not np.allclose(noise[1], noise[0])
    # rows of a later chunk alone are the rows built with the others
    np.testing.assert_array_equal(
        np.asarray(model.noisy_rows(images, owners[2:], scales, seeds[2:])), host[2:])


def test_auto_draws_on_the_model_only_on_an_accelerator(x, monkeypatch):
    model = salience.torch.wrap(_net())

    def run(noise_on, seed=3, **kwargs):
        return SmoothGrad(salience.Gradients(), nsamples=4, seed=seed, noise_on=noise_on,
                          **kwargs).explain(model, x, 2)

    assert not model.on_accelerator
    np.testing.assert_array_equal(run("auto"), run("host"))
    monkeypatch.setattr(type(model), "on_accelerator", property(lambda self: True))
    np.testing.assert_array_equal(run("auto"), run("model"))
    # a RandomState asks for PAIR's draws, which only the host makes
    legacy = run("auto", seed=np.random.RandomState(3))
    np.testing.assert_array_equal(legacy, run("host", seed=np.random.RandomState(3)))
    # the variance needs every copy's map at once: not streamed, noise on the host
    np.testing.assert_array_equal(run("auto", aggregation="vargrad"),
                                  run("host", aggregation="vargrad"))


def test_threads_sharing_the_model_give_the_serial_maps():
    model = salience.torch.wrap(_net())
    batches = [np.random.default_rng(k).random((2, 3, 12, 12)) for k in range(6)]

    def run(batch):
        return SmoothGrad(salience.Gradients(batch_size=3), nsamples=4, seed=9,
                          noise_on="model").explain(model, batch, [0, 4])

    serial = [run(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(run, batches * 2))
    for k, maps in enumerate(threaded):
        np.testing.assert_array_equal(maps, serial[k % len(batches)])


def test_noise_on_the_model_is_refused_before_the_model_runs(x):
    calls = []

    def numpy_model(rows, targets, keys):
        calls.append(len(rows))
        return {key: np.zeros_like(rows) for key in keys}

    with pytest.raises(ValueError, match="noise_on='model' needs a model that builds"):
        SmoothGrad(salience.Gradients(), seed=0, noise_on="model").explain(numpy_model, x, 0)
    torch_model = salience.torch.wrap(_net())
    with pytest.raises(ValueError, match="one-row method.*IntegratedGradients"):
        SmoothGrad(salience.IntegratedGradients(steps=3), seed=0,
                   noise_on="model").explain(torch_model, x, 0)
    with pytest.raises(ValueError, match="aggregation='vargrad'"):
        SmoothGrad(salience.Gradients(), seed=0, aggregation="vargrad",
                   noise_on="model").explain(torch_model, x, 0)
    with pytest.raises(ValueError, match="noise_on must be one of 'auto', 'host', 'model', "
                                         "got 'gpu'"):
        SmoothGrad(salience.Gradients(), noise_on="gpu")
    assert calls == []
