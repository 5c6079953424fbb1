"""Blur IG with its path points and rates made by the model's adapter, on its device
(``blur_on="model"``; on this CPU-only machine the device is the CPU): the adapters'
``filtered_rows`` against numpy's Toeplitz products, and the maps against the host's."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience.methods.blur_ig import gaussian_kernels, toeplitz_stack


def _spy(monkeypatch, adapter):
    calls = []
    original = adapter.filtered_rows

    def spy(self, images, owners, terms, axes):
        calls.append(len(owners))
        return original(self, images, owners, terms, axes)

    monkeypatch.setattr(adapter, "filtered_rows", spy)
    return calls


@pytest.mark.filterwarnings("error")  # torch warned of a tensor sharing a read-only array
def test_filtered_rows_are_the_sum_of_the_terms_toeplitz_products(framework):
    x = framework.images()
    axes = (0, 1) if framework.channels_last else (1, 2)
    rng = np.random.default_rng(2)
    owners = np.array([1, 1, 2, 2, 2])  # not from image 0: the adapter takes a slice
    blur = (gaussian_kernels(10, np.array([0.0, 0.5, 1, 3, 50])),
            gaussian_kernels(12, np.array([0.7, 0, 2, 5, 50])))
    other = (rng.normal(size=(5, 19)), rng.normal(size=(5, 23)))  # not symmetric
    rows = framework.model.filtered_rows(x, owners, [blur, other], axes)
    assert rows.shape == (5, *x.shape[1:]) and len(rows) == 5

    planes = x if not framework.channels_last else x.transpose(0, 3, 1, 2)
    want = np.zeros((5, *planes.shape[1:]))
    for k_h, k_w in (blur, other):
        a_h, a_w = toeplitz_stack(k_h), toeplitz_stack(k_w)
        want += a_h[:, None] @ planes[owners] @ np.swapaxes(a_w, -1, -2)[:, None]
    got = np.asarray(rows)
    got = got.transpose(0, 3, 1, 2) if framework.channels_last else got
    assert np.abs(got - want).max() <= framework.tolerance * np.abs(want).max()


def test_torch_filters_rows_without_a_channel_axis():
    torch = pytest.importorskip("torch")
    import salience.torch

    model = salience.torch.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(120, 2)))
    x = np.random.default_rng(3).random((2, 10, 12)).astype(np.float32)
    k_h, k_w = gaussian_kernels(10, np.array([1.0, 2.0])), gaussian_kernels(12, np.array([3.0, 0.0]))
    got = np.asarray(model.filtered_rows(x, np.array([0, 1]), [(k_h, k_w)], (0, 1)))
    want = toeplitz_stack(k_h) @ x @ toeplitz_stack(k_w).transpose(0, 2, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_blur_ig_on_the_model_gives_the_host_maps(framework, monkeypatch, batch_size):
    x = framework.images()
    host = salience.BlurIG(steps=12, batch_size=batch_size, blur_on="host").explain(
        framework.model, x, [0, 1, 2])
    calls = _spy(monkeypatch, framework.adapter)
    on_model = salience.BlurIG(steps=12, batch_size=batch_size, blur_on="model").explain(
        framework.model, x, [0, 1, 2])
    # each chunk: its points, then its rates
    chunks = -(-36 // batch_size)
    assert len(calls) == 2 * chunks and sum(calls) == 2 * 36
    assert on_model.shape == x.shape and on_model.dtype == x.dtype
    assert np.isfinite(on_model).all() and np.abs(on_model).max() > 0
    assert np.abs(on_model - host).max() <= 10 * framework.tolerance * np.abs(host).max()


def test_auto_blurs_on_the_model_only_on_an_accelerator(framework, monkeypatch):
    x = framework.images(2)
    method = salience.BlurIG(steps=6)
    assert method.blur_on == "auto"
    assert method.resolved_for(framework.model).blur_on == "host"
    calls = _spy(monkeypatch, framework.adapter)
    method.explain(framework.model, x, [0, 1])
    assert calls == []  # on a CPU the host blurs, as fast and as PAIR does
    monkeypatch.setattr(framework.adapter, "on_accelerator", property(lambda self: True))
    resolved = method.resolved_for(framework.model)
    assert resolved.blur_on == "model" and method.blur_on == "auto"  # a copy
    assert salience.BlurIG(blur_on="host").resolved_for(framework.model).blur_on == "host"
    method.explain(framework.model, x, [0, 1])
    assert len(calls) == 2  # one chunk: its points and its rates


def test_blur_on_the_model_needs_an_adapter_that_filters_and_fails_before_any_call(callback_model):
    model, calls = callback_model
    x = np.random.default_rng(0).random((1, 8, 8, 3))
    with pytest.raises(ValueError, match="blur_on='model' needs a model .* has no filtered_rows"):
        salience.BlurIG(steps=4, blur_on="model").explain(model, x)
    assert calls == []
    # 'auto' falls back to the host there
    assert salience.BlurIG(steps=4).explain(model, x).shape == x.shape
    with pytest.raises(ValueError, match=r"blur_on must be one of 'auto', 'host', 'model', "
                                         r"got 'gpu'"):
        salience.BlurIG(blur_on="gpu")


def test_threads_sharing_one_model_get_the_serial_maps(framework):
    framework.assert_threads_get_the_serial_maps(
        salience.BlurIG(steps=10, batch_size=4, blur_on="model"), framework.images(2), [0, 1])


def test_smoothgrad_over_blur_ig_on_the_model(monkeypatch, torch_framework):
    # The noise is the host's (Blur IG has several rows per input); the blur the model's.
    torch_model = torch_framework
    x = torch_model.images(2)
    calls = _spy(monkeypatch, torch_model.adapter)
    smooth = salience.SmoothGrad(salience.BlurIG(steps=5, blur_on="model"), nsamples=3, seed=0)
    on_model = smooth.explain(torch_model.model, x, [0, 1])
    assert len(calls) > 0
    host = salience.SmoothGrad(salience.BlurIG(steps=5, blur_on="host"), nsamples=3,
                               seed=0).explain(torch_model.model, x, [0, 1])
    np.testing.assert_allclose(on_model, host, rtol=1e-9, atol=1e-12 * np.abs(host).max())


def test_smoothgrad_resolves_the_blur_of_the_method_it_wraps(monkeypatch, torch_framework):
    # A stored run records the wrapped method's settings too: its blur_on must be decided.
    torch_model = torch_framework
    smooth = salience.SmoothGrad(salience.BlurIG(steps=5), nsamples=3, seed=0)
    assert smooth.resolved_for(torch_model.model).method.blur_on == "host"
    monkeypatch.setattr(torch_model.adapter, "on_accelerator", property(lambda self: True))
    resolved = smooth.resolved_for(torch_model.model)
    assert resolved.method.blur_on == "model" and resolved.noise_on == "host"
    assert smooth.method.blur_on == "auto" and resolved is not smooth  # copies
    explicit = salience.SmoothGrad(salience.Gradients(), noise_on="host")
    assert explicit.resolved_for(torch_model.model) is explicit  # nothing to decide


def test_rows_read_back_from_the_adapter_are_never_written_into():
    # An adapter's host copy of its rows may be memory it keeps (a CPU tensor's, or a
    # cache): Blur IG weighs the rates by the gradients in a new array.
    from salience._adapter import DeviceRows
    from salience.model import INPUT_OUTPUT_GRADIENTS

    class Fixed:
        channels_last = True

        def __init__(self):
            self.rows = np.random.default_rng(0).random((8, 6, 6, 3))
            self.kept = self.rows.copy()

        def filtered_rows(self, images, owners, terms, axes):
            return DeviceRows(self.rows[:len(owners)], images[:1], np.asarray)

        def __call__(self, x, targets, keys):
            return {INPUT_OUTPUT_GRADIENTS: np.full(x.shape, 2.0)}

    model = Fixed()
    x = np.random.default_rng(1).random((1, 6, 6, 3))
    salience.BlurIG(steps=8, blur_on="model").explain(model, x)
    np.testing.assert_array_equal(model.rows, model.kept)


def test_images_without_a_channel_axis_blur_on_the_model_as_on_the_host():
    torch = pytest.importorskip("torch")
    import salience.torch

    torch.manual_seed(0)
    model = salience.torch.wrap(torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(120, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double())
    x = np.random.default_rng(4).random((2, 10, 12))
    host = salience.BlurIG(steps=9, batch_size=5, blur_on="host").explain(model, x, [0, 2])
    on_model = salience.BlurIG(steps=9, batch_size=5, blur_on="model").explain(model, x, [0, 2])
    assert on_model.shape == x.shape and np.abs(host).max() > 0
    np.testing.assert_allclose(on_model, host, rtol=0, atol=1e-12 * np.abs(host).max())


def test_toeplitz_index_gathers_each_kernel_tap_onto_its_diagonal():
    from salience._adapter import toeplitz_index

    index = toeplitz_index(4)
    kernel = np.arange(7.0)  # offsets -3 .. 3
    np.testing.assert_array_equal(kernel[index], toeplitz_stack(kernel[None])[0])
    assert index is toeplitz_index(4) and not index.flags.writeable  # shared, read-only


def test_smoothgrad_names_the_same_noise_places_every_row_place_setting_takes():
    from salience.methods.base import ROW_PLACES
    from salience.methods.smoothgrad import NOISE_PLACES

    assert tuple(NOISE_PLACES) == ROW_PLACES
