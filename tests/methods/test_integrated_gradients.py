"""Integrated Gradients: completeness, exact linear answers and every baseline form."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import salience
from salience.methods.integrated_gradients import resolve_baselines

TARGETS = np.array([0, 1, 2])


def _ig(steps=25, baseline=None, **kw):
    return salience.IntegratedGradients(steps=steps, baseline=baseline, **kw)


@pytest.mark.parametrize("baseline", [None, 0.3, "per-input"])
def test_completeness_on_nonlinear_model(baseline, analytic, images):
    if baseline == "per-input":
        baseline = np.random.default_rng(7).normal(size=images.shape)
    base = resolve_baselines(baseline, images)[:, 0]
    maps = _ig(steps=2000, baseline=baseline, batch_size=500).explain(analytic, images, TARGETS)
    gap = analytic.score(images, TARGETS) - analytic.score(base, TARGETS)
    assert np.all(np.abs(gap) > 1)  # a non-trivial check
    np.testing.assert_allclose(maps.reshape(3, -1).sum(axis=1), gap, rtol=2e-3)


def test_few_steps_are_not_complete_on_nonlinear_model(analytic, images):
    # the completeness check above could not pass by accident
    maps = _ig(steps=2).explain(analytic, images, TARGETS)
    gap = analytic.score(images, TARGETS) - analytic.score(np.zeros_like(images), TARGETS)
    assert not np.allclose(maps.reshape(3, -1).sum(axis=1), gap, rtol=2e-3)


@pytest.mark.parametrize("steps", [1, 2, 25])
def test_linear_model_is_exact(steps, linear, images):
    baseline = np.full(images.shape[1:], -0.5)
    maps = _ig(steps=steps, baseline=baseline).explain(linear, images, TARGETS)
    np.testing.assert_allclose(maps, (images - baseline) * linear.V[TARGETS], rtol=1e-12)


def test_path_points_include_both_ends(images):
    seen = []

    def model(x, targets, keys):
        seen.append(x.copy())
        return {salience.INPUT_OUTPUT_GRADIENTS: np.zeros_like(x)}

    _ig(steps=5, baseline=1.0, batch_size=100).explain(model, images[:1], None)
    alphas = np.linspace(0, 1, 5)
    expected = 1.0 + alphas[:, None, None, None] * (images[0] - 1.0)
    np.testing.assert_allclose(seen[0], expected, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(batch_size=st.integers(1, 80), steps=st.integers(1, 12))
def test_batch_size_only_changes_call_count(batch_size, steps, model_classes):
    analytic_cls, _ = model_classes
    x = np.random.default_rng(3).normal(size=(3, 8, 8, 3))
    one = analytic_cls()
    expected = _ig(steps=steps, baseline=[None, 0.2], batch_size=1).explain(one, x, TARGETS)
    model = analytic_cls()
    maps = _ig(steps=steps, baseline=[None, 0.2], batch_size=batch_size).explain(model, x, TARGETS)
    np.testing.assert_allclose(maps, expected, rtol=1e-9, atol=1e-13)
    assert model.calls == math.ceil(3 * 2 * steps / batch_size)


def test_batch_equals_one_by_one(analytic, images):
    batch = _ig(steps=9, batch_size=10).explain(analytic, images, TARGETS)
    singles = [_ig(steps=9).explain(analytic, images[i : i + 1], TARGETS[i])[0] for i in range(3)]
    np.testing.assert_allclose(batch, np.stack(singles), rtol=1e-10)


def test_none_is_zeros_and_scalar_is_constant(linear, images):
    none = _ig(baseline=None).explain(linear, images, TARGETS)
    np.testing.assert_allclose(none, _ig(baseline=0.0).explain(linear, images, TARGETS))
    np.testing.assert_allclose(none, images * linear.V[TARGETS], rtol=1e-12)
    scalar = _ig(baseline=0.7).explain(linear, images, TARGETS)
    np.testing.assert_allclose(scalar, (images - 0.7) * linear.V[TARGETS], rtol=1e-12)


def test_shared_array_and_one_per_row(linear, images):
    rng = np.random.default_rng(0)
    shared = rng.normal(size=images.shape[1:])
    per_row = rng.normal(size=images.shape)
    np.testing.assert_allclose(
        _ig(baseline=shared).explain(linear, images, TARGETS),
        (images - shared) * linear.V[TARGETS],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        _ig(baseline=per_row).explain(linear, images, TARGETS),
        (images - per_row) * linear.V[TARGETS],
        rtol=1e-12,
    )


def test_callable_baseline_receives_the_batch(linear, images):
    seen = []

    def blurred_mean(x):
        seen.append(x.shape)
        return x.mean(axis=(1, 2), keepdims=True) * np.ones_like(x)

    maps = _ig(baseline=blurred_mean).explain(linear, images, TARGETS)
    assert seen and set(seen) == {images.shape}  # checked before the model runs, then used
    base = images.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (images - base) * linear.V[TARGETS], rtol=1e-12)


def test_list_of_baselines_averages_their_maps(analytic, images):
    specs = [None, 0.5, np.full(images.shape[1:], -1.0)]
    together = _ig(steps=6, baseline=specs, batch_size=7).explain(analytic, images, TARGETS)
    apart = [_ig(steps=6, baseline=s).explain(analytic, images, TARGETS) for s in specs]
    np.testing.assert_allclose(together, np.mean(apart, axis=0), rtol=1e-10)
    assert analytic.rows == 3 * 6 * 3 + 3 * 3 * 6


def test_uniform_baseline_is_seeded_and_within_each_inputs_range(images):
    x = images * np.array([1.0, 3.0, 0.1])[:, None, None, None]
    a = resolve_baselines("uniform", x, 5)[:, 0]
    np.testing.assert_array_equal(a, resolve_baselines("uniform", x, 5)[:, 0])
    assert not np.allclose(a, resolve_baselines("uniform", x, 6)[:, 0])
    for base, image in zip(a, x):
        assert image.min() <= base.min() and base.max() <= image.max()
        assert base.std() > 0.2 * image.std()  # spread over the range, not a constant


def test_uniform_baseline_through_explain(linear, images):
    maps = _ig(baseline="uniform", seed=3).explain(linear, images, TARGETS)
    base = resolve_baselines("uniform", images, 3)[:, 0]
    np.testing.assert_allclose(maps, (images - base) * linear.V[TARGETS], rtol=1e-12)
    np.testing.assert_array_equal(maps, _ig(baseline="uniform", seed=3).explain(linear, images,
                                                                                TARGETS))


def test_tensor_baseline_is_accepted(linear, images):
    torch = pytest.importorskip("torch")
    base = torch.full(images.shape[1:], 0.25, dtype=torch.float64)
    np.testing.assert_allclose(
        _ig(baseline=base).explain(linear, images, TARGETS),
        _ig(baseline=0.25).explain(linear, images, TARGETS),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("zeros", ValueError, "baseline string must be 'uniform'"),
        ([], ValueError, "baseline list is empty"),
        (np.zeros((8, 8)), ValueError, r"baseline has shape \(8, 8\)"),
        (np.zeros((2, 8, 8, 3)), ValueError, r"batch's shape \(3, 8, 8, 3\)"),
        (np.array(["a"]), TypeError, "baseline must be numeric"),
        (lambda x: np.zeros(5), ValueError, r"baseline has shape \(5,\)"),
    ],
)
def test_bad_baselines(spec, error, match, analytic, images):
    with pytest.raises(error, match=match):
        _ig(baseline=spec).explain(analytic, images, TARGETS)
    assert analytic.calls == 0


def test_several_uniform_baselines_are_different_draws(images):
    both = resolve_baselines(["uniform", "uniform"], images, 0)
    assert not np.allclose(both[:, 0], both[:, 1])
    np.testing.assert_array_equal(both, resolve_baselines(["uniform", "uniform"], images, 0))


@pytest.mark.parametrize("build", [
    lambda seed: salience.IntegratedGradients(baseline="uniform", seed=seed),
    lambda seed: salience.GuidedIG(baseline="uniform", seed=seed),
    lambda seed: salience.XRAI(baselines=["uniform"], seed=seed),
])
def test_bad_seed_is_rejected_when_the_method_is_built(build):
    with pytest.raises(TypeError, match="seed must be None, an int"):
        build("abc")


_PATH_METHODS = {
    "IntegratedGradients": lambda b: salience.IntegratedGradients(steps=3, baseline=b),
    "GuidedIG": lambda b: salience.GuidedIG(steps=3, baseline=b),
    "XRAI": lambda b: salience.XRAI(steps=3, baselines=[b]),
}


@pytest.mark.parametrize("name", list(_PATH_METHODS))
@pytest.mark.parametrize("baseline", [
    0.5 + 0j,
    np.zeros((8, 8, 3), dtype=np.complex64),
    lambda x: x * (1 + 1j),
], ids=["scalar", "array", "callable"])
def test_complex_baselines_are_refused_like_complex_inputs(name, baseline, analytic, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way: refused, not truncated
        with pytest.raises(TypeError, match="baseline must be real, got dtype complex"):
            _PATH_METHODS[name](baseline).explain(analytic, images, 0)
        with pytest.raises(TypeError, match="x must be real, got dtype complex"):
            _PATH_METHODS[name](None).explain(analytic, images.astype(np.complex128), 0)
    assert analytic.calls == 0


def test_complex_inputs_are_refused_by_blur_ig(analytic, images):
    with pytest.raises(TypeError, match="x must be real, got dtype complex"):
        salience.BlurIG(steps=3).explain(analytic, images + 0j, 0)
    assert analytic.calls == 0
