"""Blur IG: the blur matrices, layouts, 2-D images and the path integral."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import salience
from salience.methods.blur_ig import (
    blur_rates,
    blur_sigmas,
    blurred_rows,
    gaussian_blur_matrices,
    gaussian_blur_matrix,
)

TARGETS = np.array([0, 1, 2])


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 40),
    sigma=st.floats(0.001, 60, allow_nan=False),
    seed=st.integers(0, 10),
)
def test_blur_matrix_equals_scipy_constant_mode(size, sigma, seed):
    v = np.random.default_rng(seed).normal(size=size)
    expected = ndimage.gaussian_filter1d(v, sigma, mode="constant")
    np.testing.assert_allclose(gaussian_blur_matrix(size, sigma) @ v, expected, rtol=1e-10,
                               atol=1e-13)


def test_blur_matrix_of_zero_sigma_is_identity():
    np.testing.assert_array_equal(gaussian_blur_matrix(5, 0.0), np.eye(5))


def test_blur_matrix_truncate_matches_scipy():
    v = np.random.default_rng(0).normal(size=30)
    np.testing.assert_allclose(
        gaussian_blur_matrix(30, 3.3, truncate=2.0) @ v,
        ndimage.gaussian_filter1d(v, 3.3, mode="constant", truncate=2.0),
        rtol=1e-10,
        atol=1e-13,
    )


def test_sigmas():
    np.testing.assert_allclose(blur_sigmas(10, 4, False), [0, 2.5, 5, 7.5, 10])
    np.testing.assert_allclose(blur_sigmas(10, 4, True), np.sqrt([0, 2.5, 5, 7.5, 10]))


@pytest.mark.parametrize("max_sigma, steps", [(50, 100), (3.3, 7), (0.7, 10**6)])
@pytest.mark.parametrize("sqrt", [False, True])
def test_sigmas_are_rounded_as_the_python_expression(max_sigma, steps, sqrt):
    sigmas = blur_sigmas(max_sigma, steps, sqrt)
    assert sigmas.shape == (steps + 1,)
    for i in {0, 1, 2, steps // 3, steps - 1, steps}:
        level = i * max_sigma / steps
        assert sigmas[i] == (math.sqrt(level) if sqrt else level)


# ---------------------------------------------------------------- path and rate, plain arrays


def _layout(images):
    """(n, H, W, C) -> the kernels' (n, H, C, W) layout, and back."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2))


@pytest.mark.parametrize("shape", [(9, 6, 3), (8, 8, 1)])
def test_blurred_rows_are_gaussian_blurs_of_their_images(shape):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(2, *shape))
    owners = np.array([0, 0, 1, 1, 1])
    sigmas = np.array([0.0, 0.7, 1.5, 3.0, 0.2])
    k_h = gaussian_blur_matrices(shape[0], sigmas)
    k_w = gaussian_blur_matrices(shape[1], sigmas)
    points, first_pass = blurred_rows(_layout(images), owners, k_h, k_w)
    for r, (owner, sigma) in enumerate(zip(owners, sigmas)):
        expected = ndimage.gaussian_filter(images[owner], [sigma, sigma, 0], mode="constant")
        np.testing.assert_allclose(points[r].transpose(0, 2, 1), expected, rtol=1e-10,
                                   atol=1e-12)
        along_h = ndimage.gaussian_filter1d(images[owner], sigma, axis=0, mode="constant") \
            if sigma > 0 else images[owner]
        np.testing.assert_allclose(first_pass[r].transpose(0, 2, 1), along_h, rtol=1e-10,
                                   atol=1e-12)


def test_blur_rates_are_the_forward_difference_of_the_blurs():
    rng = np.random.default_rng(6)
    shape, step = (10, 7, 2), 0.05
    images = rng.normal(size=(2, *shape))
    owners = np.array([0, 1, 1])
    sigmas = np.array([0.0, 1.2, 2.5])
    at_h, after_h = (gaussian_blur_matrices(shape[0], s) for s in (sigmas, sigmas + step))
    at_w, after_w = (gaussian_blur_matrices(shape[1], s) for s in (sigmas, sigmas + step))
    _, first_pass = blurred_rows(_layout(images), owners, at_h, at_w)
    rates = blur_rates(_layout(images), owners, first_pass, (after_h - at_h) / step,
                       (after_w - at_w) / step, after_w)

    def blur(image, sigma):
        return ndimage.gaussian_filter(image, [sigma, sigma, 0], mode="constant")

    for r, (owner, sigma) in enumerate(zip(owners, sigmas)):
        expected = (blur(images[owner], sigma + step) - blur(images[owner], sigma)) / step
        np.testing.assert_allclose(rates[r].transpose(0, 2, 1), expected, rtol=1e-8,
                                   atol=1e-10)


def _by_hand(model, image, target, max_sigma, steps, grad_step=0.01, sqrt=False):
    """The Blur IG sum written out with scipy's filter, one path point at a time."""
    sigmas = blur_sigmas(max_sigma, steps, sqrt)
    total = np.zeros_like(image)
    spatial = [1.0, 1.0] + [0.0] * (image.ndim - 2)

    def blur(s):
        return image if s == 0 else ndimage.gaussian_filter(image, [s * a for a in spatial],
                                                            mode="constant")

    for i in range(steps):
        point = blur(sigmas[i])
        slope = (blur(sigmas[i] + grad_step) - point) / grad_step
        grad = model.gradient(point[None], np.array([target]))[0]
        total += (sigmas[i + 1] - sigmas[i]) * slope * grad
    return -total


@pytest.mark.parametrize("sqrt", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_equals_the_sum_written_out(sqrt, batch_size, analytic, images):
    maps = salience.BlurIG(max_sigma=6, steps=10, sqrt=sqrt, batch_size=batch_size).explain(
        analytic, images, TARGETS
    )
    assert analytic.calls == math.ceil(30 / batch_size)
    for i in range(3):
        np.testing.assert_allclose(
            maps[i], _by_hand(analytic, images[i], TARGETS[i], 6, 10, sqrt=sqrt), rtol=1e-9,
            atol=1e-12,
        )



class _ChannelsFirst:
    """A channels-last model seen through (n, C, H, W) inputs and gradients."""

    channels_last = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, targets, keys):
        out = dict(self.inner(np.moveaxis(x, 1, -1), targets, keys))
        key = salience.INPUT_OUTPUT_GRADIENTS
        out[key] = np.moveaxis(out[key], -1, 1)
        return out


@pytest.mark.parametrize("channels_last", [True, False])
def test_non_square_images_equal_the_sum_written_out(channels_last, model_classes):
    # H and W get different blur matrices: an image taller than wide, in both layouts.
    analytic = model_classes[0](shape=(9, 6, 3))
    image = np.random.default_rng(4).normal(size=(9, 6, 3))
    model, x = (analytic, image[None]) if channels_last else (
        _ChannelsFirst(analytic), np.moveaxis(image, -1, 0)[None])
    maps = salience.BlurIG(max_sigma=5, steps=8, batch_size=3).explain(model, x, 1)
    got = maps[0] if channels_last else np.moveaxis(maps[0], 0, -1)
    np.testing.assert_allclose(got, _by_hand(analytic, image, 1, 5, 8), rtol=1e-9, atol=1e-12)

def test_path_runs_from_blurred_to_sharp(images):
    seen = []

    def model(x, targets, keys):
        seen.append(x.copy())
        return {salience.INPUT_OUTPUT_GRADIENTS: np.zeros_like(x)}

    salience.BlurIG(max_sigma=4, steps=4, batch_size=100).explain(model, images[:1])
    path = seen[0]
    np.testing.assert_array_equal(path[0], images[0])  # sigma 0 first, as in PAIR
    np.testing.assert_allclose(
        path[2], ndimage.gaussian_filter(images[0], [2, 2, 0], mode="constant"), rtol=1e-10
    )


def test_channels_first_equals_channels_last(model_classes, images):
    analytic_cls, _ = model_classes
    last = analytic_cls()
    first = analytic_cls(shape=(3, 8, 8), channels_last=False)
    first.W, first.V = np.moveaxis(last.W, -1, 1), np.moveaxis(last.V, -1, 1)
    method = salience.BlurIG(max_sigma=5, steps=8, batch_size=5)
    maps_last = method.explain(last, images, TARGETS)
    maps_first = method.explain(first, np.moveaxis(images, -1, 1), TARGETS)
    np.testing.assert_allclose(np.moveaxis(maps_first, 1, -1), maps_last, rtol=1e-10)


def test_two_dimensional_images(model_classes, images):
    analytic_cls, _ = model_classes
    flat = analytic_cls(shape=(8, 8))
    one_channel = analytic_cls(shape=(8, 8, 1))
    one_channel.W, one_channel.V = flat.W[..., None], flat.V[..., None]
    gray = images[..., 0]
    method = salience.BlurIG(max_sigma=5, steps=8, batch_size=3)
    maps = method.explain(flat, gray, TARGETS)
    assert maps.shape == gray.shape
    np.testing.assert_allclose(maps, method.explain(one_channel, gray[..., None], TARGETS)[..., 0],
                               rtol=1e-10)
    np.testing.assert_allclose(maps[1], _by_hand(flat, gray[1], 1, 5, 8), rtol=1e-9)


def test_float32_inputs_keep_their_dtype(analytic, images):
    maps = salience.BlurIG(max_sigma=3, steps=5).explain(analytic, images.astype(np.float32), 0)
    assert maps.dtype == np.float32


def test_non_image_inputs_are_rejected(analytic):
    with pytest.raises(ValueError, match="needs images shaped"):
        salience.BlurIG().explain(analytic, np.zeros((2, 4)), 0)
    assert analytic.calls == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a positive int, got 0"),
        ({"max_sigma": -1}, "max_sigma must be a finite number >= 0, got -1"),
        ({"grad_step": 0}, "grad_step must be > 0"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        salience.BlurIG(**kwargs)


def test_float32_inputs_keep_the_blur_rate_accurate():
    # The sigma-derivative of the blur is a difference of two nearly equal blurs;
    # float32 rows must not lose it to cancellation (was ~5e-4 relative off).
    rng = np.random.default_rng(3)
    image = rng.random((1, 48, 40, 3))
    weights = rng.normal(size=image.shape[1:])

    class Tanh:
        channels_last = True

        def __call__(self, x, targets, keys):
            t = np.tanh(weights * np.asarray(x, dtype=np.float64))
            return {salience.INPUT_OUTPUT_GRADIENTS: 2 * t * (1 - t**2) * weights}

    method = salience.BlurIG(max_sigma=20, steps=30, batch_size=7)
    exact = method.explain(Tanh(), image)
    single = method.explain(Tanh(), image.astype(np.float32))
    assert single.dtype == np.float32
    assert np.abs(single - exact).max() <= 1e-5 * np.abs(exact).max()


def test_runs_with_the_same_settings_share_their_kernels_read_only(analytic, images):
    # The path's Gaussians are computed once per (size, levels, grad_step), and the
    # shared arrays cannot be changed by a run.
    from salience.methods.blur_ig import _path_kernels

    _path_kernels.cache_clear()
    method = salience.BlurIG(max_sigma=7, steps=9)
    first = method.explain(analytic, images, TARGETS)
    misses = _path_kernels.cache_info().misses
    again = method.explain(analytic, images, TARGETS)
    assert _path_kernels.cache_info().misses == misses and _path_kernels.cache_info().hits > 0
    np.testing.assert_array_equal(again, first)
    kernels = _path_kernels(images.shape[1], blur_sigmas(7, 9, False)[:-1].tobytes(), 0.01)
    with pytest.raises(ValueError, match="read-only"):
        kernels.at[0, 0] = 1.0
