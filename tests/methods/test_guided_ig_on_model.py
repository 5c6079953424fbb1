"""Guided IG with its walk on the model's device (``select_on="model"``; on this
CPU-only machine the device is the CPU): the framework-neutral step against the
host's tuned one, and the maps of every adapter against the host's."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience.methods.guided_ig.selection import (
    NUMPY_OPS,
    StepTarget,
    advance_rows,
    advance_rows_with,
)


@pytest.fixture
def walking(framework):
    """``framework`` with what its ``array_ops`` needs: JAX's 64-bit arrays, turned
    on for the test only."""
    if not hasattr(framework.model, "array_ops"):
        pytest.fail(f"{type(framework.model).__name__} has no array_ops")
    jax = None
    if framework.adapter.__module__ == "salience.jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        yield framework
    finally:
        if jax is not None:
            jax.config.update("jax_enable_x64", False)


def _spy(monkeypatch, adapter):
    """Count the rows each call of ``adapter`` gets already on its device."""
    from salience._adapter import DeviceRows

    calls = []
    original = adapter.__call__

    def spy(self, x, targets, keys):
        calls.append((isinstance(x, DeviceRows), len(x)))
        return original(self, x, targets, keys)

    monkeypatch.setattr(adapter, "__call__", spy)
    return calls


def _paths(rng, rows, features):
    """Weights with zeros (features with no way to go), positions on the way, and
    gradients with ties."""
    weights = rng.random((rows, features))
    weights[rng.random((rows, features)) < 0.1] = 0
    t = np.where(weights == 0, 1.0, rng.random((rows, features)) * 0.3)
    grads = np.round(rng.normal(size=(rows, features)), 1).astype(np.float32)
    return t, weights, np.abs(grads)


@pytest.mark.parametrize("max_dist", [0.0, 0.02, 0.3, 1.0])
def test_the_framework_neutral_step_is_the_host_step(max_dist):
    rng = np.random.default_rng(0)
    t, weights, abs_grad = _paths(rng, 5, 300)
    l1_total = weights.sum(axis=1)
    moved = 0
    for step in range(3, 20, 4):
        target = StepTarget.of(step, 20, max_dist)
        for fraction in (0.0, 0.1, 0.25, 1.0):
            k = int(np.floor((300 - 1) * fraction))
            host = t.copy()
            advance_rows(host, weights, abs_grad, target, k, l1_total)
            neutral = advance_rows_with(NUMPY_OPS, t, weights, abs_grad, target, k, l1_total)
            np.testing.assert_allclose(neutral, host, rtol=0, atol=1e-13)
            # the rows reached the step's L1 target, or all their features their limit
            left = l1_total - (weights * neutral).sum(axis=1)
            stuck = ((neutral >= target.upper) | (weights == 0)).all(axis=1)
            assert (np.isclose(left, l1_total * target.l1_left, rtol=1e-9) | stuck
                    | (left < l1_total * target.l1_left)).all()
            moved += int((neutral != t).any())
    assert moved >= 12  # the steps moved features


@pytest.mark.filterwarnings("error")  # e.g. torch on a tensor sharing a read-only array
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_guided_ig_on_the_model_gives_the_host_maps(walking, monkeypatch, batch_size):
    x = walking.images()
    settings = dict(steps=8, batch_size=batch_size, baseline=[np.zeros_like(x[0]),
                                                               np.full_like(x[0], 0.5)])
    host = salience.GuidedIG(select_on="host", **settings).explain(walking.model, x, [0, 1, 2])
    calls = _spy(monkeypatch, walking.adapter)
    on_model = salience.GuidedIG(select_on="model", **settings).explain(
        walking.model, x, [0, 1, 2])
    # 3 images x 2 baselines, lockstep: one schedule per step, the points on the device
    rows = [n for on_device, n in calls if on_device]
    assert len(rows) == len(calls) == 8 * -(-6 // batch_size) and sum(rows) == 8 * 6
    assert on_model.shape == x.shape and on_model.dtype == np.float64
    assert np.isfinite(on_model).all() and np.abs(on_model).max() > 0
    assert np.abs(on_model - host).max() <= 1e-9 * np.abs(host).max()


def test_rows_advance_on_the_device_in_groups_as_together(torch_framework, monkeypatch):
    from salience.methods.guided_ig import selection, walk

    x = torch_framework.images(3)
    method = salience.GuidedIG(steps=6, select_on="model", baseline=[np.zeros_like(x[0]),
                                                                     np.ones_like(x[0])])
    together = method.explain(torch_framework.model, x, [0, 1, 2])
    groups = []
    original = selection.advance_rows_with

    def spy(ops, t, *args):
        groups.append(len(t))
        return original(ops, t, *args)

    monkeypatch.setattr(walk, "advance_rows_with", spy)
    monkeypatch.setattr(walk, "_DEVICE_GROUP_VALUES", 2 * x[0].size + 1)  # 2 of the 6 rows
    grouped = method.explain(torch_framework.model, x, [0, 1, 2])
    assert groups == [2, 2, 2] * 6
    np.testing.assert_allclose(grouped, together, rtol=0, atol=1e-14 * np.abs(together).max())


def test_auto_walks_on_the_model_only_on_an_accelerator(walking, monkeypatch):
    x = walking.images(2)
    method = salience.GuidedIG(steps=4)
    assert method.select_on == "auto"
    assert method.resolved_for(walking.model).select_on == "host"
    calls = _spy(monkeypatch, walking.adapter)
    method.explain(walking.model, x, [0, 1])
    assert calls and not any(on_device for on_device, _ in calls)  # the host's, as PAIR's
    monkeypatch.setattr(walking.adapter, "on_accelerator", property(lambda self: True))
    resolved = method.resolved_for(walking.model)
    assert resolved.select_on == "model" and method.select_on == "auto"  # a copy
    calls.clear()
    method.explain(walking.model, x, [0, 1])
    assert calls and all(on_device for on_device, _ in calls)


def test_select_on_the_model_needs_an_adapter_with_array_ops_and_fails_before_any_call(callback_model):
    model, calls = callback_model
    x = np.random.default_rng(0).random((1, 6, 6, 3))
    with pytest.raises(ValueError, match="select_on='model' needs a model .* has no array_ops"):
        salience.GuidedIG(steps=4, select_on="model").explain(model, x, [0])
    assert calls == []
    assert salience.GuidedIG(steps=4).explain(model, x, [0]).shape == x.shape  # auto: host
    with pytest.raises(ValueError, match=r"select_on must be one of 'auto', 'host', 'model', "
                                         r"got 'cuda'"):
        salience.GuidedIG(select_on="cuda")


def test_jax_walks_on_its_device_only_with_64_bit_arrays(monkeypatch):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import salience.jax

    assert not jax.config.read("jax_enable_x64")
    model = salience.jax.wrap(lambda p, x: jnp.tanh(x.reshape(len(x), -1)) @ p,
                              np.ones((12, 2), dtype=np.float32))
    assert model.array_ops() is None
    x = np.random.default_rng(0).random((1, 2, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"JaxModel.array_ops\(\) returned None here"):
        salience.GuidedIG(steps=3, select_on="model").explain(model, x, [0])
    # on an accelerator 'auto' then keeps the host
    monkeypatch.setattr(salience.jax.JaxModel, "on_accelerator", property(lambda self: True))
    assert salience.GuidedIG(steps=3).resolved_for(model).select_on == "host"


def test_threads_sharing_one_model_get_the_serial_maps(walking):
    walking.assert_threads_get_the_serial_maps(
        salience.GuidedIG(steps=5, batch_size=3, select_on="model"), walking.images(2), [0, 1],
        runs=6)


def test_smoothgrad_resolves_the_walk_of_the_guided_ig_it_wraps(monkeypatch, torch_framework):
    smooth = salience.SmoothGrad(salience.GuidedIG(steps=3), nsamples=2, seed=0)
    assert smooth.resolved_for(torch_framework.model).method.select_on == "host"
    monkeypatch.setattr(torch_framework.adapter, "on_accelerator", property(lambda self: True))
    assert smooth.resolved_for(torch_framework.model).method.select_on == "model"
    x = torch_framework.images(1)
    on_model = salience.SmoothGrad(salience.GuidedIG(steps=3, select_on="model"), nsamples=2,
                                   seed=0).explain(torch_framework.model, x, [1])
    host = salience.SmoothGrad(salience.GuidedIG(steps=3, select_on="host"), nsamples=2,
                               seed=0).explain(torch_framework.model, x, [1])
    np.testing.assert_allclose(on_model, host, rtol=0, atol=1e-9 * np.abs(host).max())


def test_torch_has_no_array_ops_on_a_device_without_float64(torch_framework, monkeypatch):
    import torch

    real_zeros = torch.zeros

    def no_float64(*args, dtype=None, **kwargs):
        if dtype == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")
        return real_zeros(*args, dtype=dtype, **kwargs)

    import salience.torch

    model = salience.torch.wrap(torch_framework.net)
    monkeypatch.setattr(torch, "zeros", no_float64)
    assert model.array_ops() is None
    assert salience.GuidedIG(steps=3).resolved_for(model).select_on == "host"
