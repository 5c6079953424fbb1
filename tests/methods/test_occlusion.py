"""Occlusion: strides, the box-sum against brute force, layouts, call counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import salience

TARGETS = np.array([0, 1, 2])


def _brute_force(model, image, target, size, value, stride):
    """Occlude each window in turn and add the score drop over the window (channels last)."""
    height, width = image.shape[:2]
    score = model.score(image[None], np.array([target]))[0]
    heat = np.zeros(image.shape)
    for top in range(0, height - size + 1, stride):
        for left in range(0, width - size + 1, stride):
            hidden = image.copy()
            hidden[top : top + size, left : left + size] = value
            drop = score - model.score(hidden[None], np.array([target]))[0]
            heat[top : top + size, left : left + size] += drop
    return heat


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(1, 5),
    stride=st.integers(1, 4),
    height=st.integers(5, 9),
    width=st.integers(5, 9),
    value=st.sampled_from([0.0, -1.0, 0.5]),
    batch_size=st.integers(1, 50),
)
def test_equals_brute_force(size, stride, height, width, value, batch_size, model_classes):
    analytic_cls, _ = model_classes
    model = analytic_cls(shape=(height, width, 2))
    x = np.random.default_rng(height * width).normal(size=(2, height, width, 2))
    maps = salience.Occlusion(size=size, value=value, stride=stride,
                              batch_size=batch_size).explain(model, x, [1, 2])
    windows = len(range(0, height - size + 1, stride)) * len(range(0, width - size + 1, stride))
    assert model.calls == math.ceil(2 * (1 + windows) / batch_size)
    for i, target in enumerate([1, 2]):
        np.testing.assert_allclose(
            maps[i], _brute_force(model, x[i], target, size, value, stride), rtol=1e-9,
            atol=1e-9,
        )


def test_stride_skips_windows(analytic, images):
    dense = salience.Occlusion(size=4, stride=1).explain(analytic, images, TARGETS)
    sparse = salience.Occlusion(size=4, stride=4).explain(analytic, images, TARGETS)
    assert analytic.rows == 3 * (1 + 25) + 3 * (1 + 4)
    assert not np.allclose(dense, sparse)
    np.testing.assert_allclose(
        sparse[0], _brute_force(analytic, images[0], 0, 4, 0.0, 4), rtol=1e-10, atol=1e-12
    )


def test_channels_first_equals_channels_last(model_classes, images):
    analytic_cls, _ = model_classes
    last = analytic_cls()
    first = analytic_cls(shape=(3, 8, 8), channels_last=False)
    first.W, first.V = np.moveaxis(last.W, -1, 1), np.moveaxis(last.V, -1, 1)
    method = salience.Occlusion(size=3, stride=2, value=0.3, batch_size=7)
    maps_last = method.explain(last, images, TARGETS)
    maps_first = method.explain(first, np.moveaxis(images, -1, 1), TARGETS)
    assert maps_first.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(np.moveaxis(maps_first, 1, -1), maps_last, rtol=1e-10)


def test_two_dimensional_images(model_classes, images):
    analytic_cls, _ = model_classes
    model = analytic_cls(shape=(8, 8))
    gray = images[..., 0]
    maps = salience.Occlusion(size=3).explain(model, gray, TARGETS)
    assert maps.shape == gray.shape
    np.testing.assert_allclose(maps[2], _brute_force(model, gray[2], 2, 3, 0.0, 1), rtol=1e-10,
                               atol=1e-12)


def test_input_is_not_modified(analytic, images):
    before = images.copy()
    salience.Occlusion(size=2, value=9).explain(analytic, images, TARGETS)
    np.testing.assert_array_equal(images, before)


def test_window_larger_than_image(analytic, images):
    with pytest.raises(ValueError, match=r"size=9 is larger than the image \(8x8\)"):
        salience.Occlusion(size=9).explain(analytic, images, TARGETS)
    assert analytic.calls == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"size": 0}, ValueError, "size must be a positive int, got 0"),
        ({"stride": 0}, ValueError, "stride must be a positive int, got 0"),
        ({"stride": 1.5}, TypeError, "stride must be a positive int"),
        ({"value": float("nan")}, ValueError, "value must be finite"),
        ({"batch_size": -2}, ValueError, "batch_size must be a positive int, got -2"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        salience.Occlusion(**kwargs)
