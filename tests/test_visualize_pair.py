"""The two PAIR visualisers in salience.visualize: batches, 2-D maps, layouts, no NaN."""

from __future__ import annotations

import numpy as np
import pytest
import saliency.core as pair
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from salience.visualize import visualize_image_diverging, visualize_image_grayscale

FUNCS = {
    "grayscale": (visualize_image_grayscale, pair.VisualizeImageGrayscale),
    "diverging": (visualize_image_diverging, pair.VisualizeImageDiverging),
}


@pytest.mark.parametrize("name", FUNCS)
def test_batch_equals_one_by_one(name):
    ours, _ = FUNCS[name]
    maps = np.random.default_rng(0).normal(size=(4, 6, 5, 3))
    maps[1] *= 100  # each map is scaled by its own percentile
    batch = ours(maps, percentile=95)
    assert batch.shape == (4, 6, 5)
    for i in range(4):
        np.testing.assert_allclose(batch[i], ours(maps[i], percentile=95), rtol=1e-12)


@pytest.mark.parametrize("name", FUNCS)
def test_two_dimensional_map_equals_one_channel_map(name):
    ours, reference = FUNCS[name]
    flat = np.random.default_rng(1).normal(size=(7, 9))
    np.testing.assert_allclose(ours(flat), ours(flat[..., None]), rtol=1e-12)
    np.testing.assert_allclose(ours(flat), reference(flat[..., None]), rtol=1e-12)


@pytest.mark.parametrize("name", FUNCS)
def test_channels_first(name):
    ours, _ = FUNCS[name]
    maps = np.random.default_rng(2).normal(size=(3, 4, 6, 5))
    np.testing.assert_allclose(
        ours(maps, channel_axis=1), ours(np.moveaxis(maps, 1, -1)), rtol=1e-12
    )


@pytest.mark.parametrize("name", FUNCS)
def test_constant_maps_in_a_batch_give_zeros(name):
    ours, _ = FUNCS[name]
    maps = np.random.default_rng(3).normal(size=(3, 5, 5, 3))
    maps[1] = 0.0
    out = ours(maps)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], 0)
    assert out[0].max() > 0 and out[2].max() > 0


def test_constant_nonzero_grayscale_map_gives_zeros():
    out = visualize_image_grayscale(np.full((2, 4, 4, 3), -3.0))
    np.testing.assert_array_equal(out, 0)


@settings(max_examples=40, deadline=None)
@given(
    attribution=arrays(
        np.float64, (5, 4, 2),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    percentile=st.floats(1, 100),
)
def test_never_nan_and_pair_wherever_pair_is_defined(attribution, percentile):
    for ours, reference in FUNCS.values():
        out = ours(attribution, percentile=percentile)
        assert np.isfinite(out).all()
        assert out.min() >= -1 and out.max() <= 1
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = reference(attribution, percentile=percentile)
        if np.isfinite(expected).all():
            np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", FUNCS)
def test_bad_arguments(name):
    ours, _ = FUNCS[name]
    with pytest.raises(ValueError, match="percentile must be within"):
        ours(np.ones((3, 3)), percentile=101)
    with pytest.raises(ValueError, match=r"maps must be .*got shape \(3,\)"):
        ours(np.ones(3))
