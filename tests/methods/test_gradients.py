"""Vanilla gradients against exact analytic gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

import salience
from salience.model import INPUT_OUTPUT_GRADIENTS
from salience.schedule import NonFiniteOutputError


def test_equals_exact_gradient(analytic, images):
    maps = salience.Gradients().explain(analytic, images, targets=[0, 1, 2])
    np.testing.assert_allclose(maps, analytic.gradient(images, np.array([0, 1, 2])), rtol=1e-12)
    assert maps.shape == images.shape and maps.dtype == np.float64


@pytest.mark.parametrize("batch_size, calls", [(1, 3), (2, 2), (3, 1), (100, 1)])
def test_batch_equals_one_by_one(batch_size, calls, analytic, images):
    batch = salience.Gradients(batch_size=batch_size).explain(analytic, images, 1)
    assert analytic.calls == calls
    singles = [salience.Gradients().explain(analytic, images[i : i + 1], 1)[0] for i in range(3)]
    np.testing.assert_allclose(batch, np.stack(singles), rtol=1e-12)


def test_targets_forms_agree(analytic, images):
    g = salience.Gradients()
    by_int = g.explain(analytic, images, 2)
    np.testing.assert_array_equal(g.explain(analytic, images, [2, 2, 2]), by_int)
    np.testing.assert_array_equal(g.explain(analytic, images, np.array([2, 2, 2])), by_int)
    np.testing.assert_array_equal(g.explain(analytic, images, np.int64(2)), by_int)


def test_none_targets_explain_top_class(analytic, images):
    top = np.argmax(analytic.predict(images), axis=1)
    maps = salience.Gradients().explain(analytic, images)
    np.testing.assert_allclose(maps, analytic.gradient(images, top), rtol=1e-12)


def test_float32_input_gives_float32_maps(analytic, images):
    maps = salience.Gradients().explain(analytic, images.astype(np.float32), 0)
    assert maps.dtype == np.float32


def test_model_without_predict_gets_none_targets(images):
    seen = []

    def model(x, targets, keys):
        seen.append(targets)
        return {INPUT_OUTPUT_GRADIENTS: np.ones_like(x)}

    maps = salience.Gradients(batch_size=2).explain(model, images)
    assert seen == [None, None]
    np.testing.assert_array_equal(maps, np.ones_like(images))
    assert len(seen) == math.ceil(3 / 2)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_maps_are_new_arrays_even_from_a_reused_buffer(images, batch_size):
    # A model answering every call from one buffer, laid out channels-last in memory
    # (as PyTorch's channels_last tensors arrive): the maps must not alias it.
    buffer = np.zeros((images.shape[0], *images.shape[2:], images.shape[1])).transpose(0, 3, 1, 2)

    def model(x, targets, keys):
        view = buffer[: len(x)]
        view[...] = x
        return {INPUT_OUTPUT_GRADIENTS: view}

    maps = salience.Gradients(batch_size=batch_size).explain(model, images)
    np.testing.assert_array_equal(maps, images)
    assert not np.shares_memory(maps, buffer)
    buffer[...] = -1.0  # the model's next answer leaves the returned maps alone
    np.testing.assert_array_equal(maps, images)


def test_one_image_takes_one_checked_call_like_a_batch(analytic, images):
    # One input of a one-row method skips the row scheduler; same map, same checks.
    one = images[:1]
    calls = analytic.calls
    maps = salience.Gradients().explain(analytic, one, 1)
    assert analytic.calls == calls + 1
    np.testing.assert_array_equal(maps, salience.Gradients().explain(analytic, one, 1,
                                                                       progress=lambda e: None))
    np.testing.assert_allclose(maps, analytic.gradient(one, np.array([1])), rtol=1e-12)
    buffer = np.zeros_like(one)

    def model(x, targets, keys):
        buffer[...] = x
        return {INPUT_OUTPUT_GRADIENTS: buffer}

    got = salience.Gradients().explain(model, one)
    assert not np.shares_memory(got, buffer)
    buffer[...] = np.nan  # the model's next answer: refused, never returned as a map
    with pytest.raises(NonFiniteOutputError, match="row 0 .image 0"):
        salience.Gradients().explain(lambda x, t, k: {INPUT_OUTPUT_GRADIENTS: buffer}, one)
    np.testing.assert_array_equal(got, one)
