"""Channel reductions: one function (salience.arrays.reduce_channels) wherever a map
becomes 2-D, and the ``reduction=`` option of the places that use it."""

from __future__ import annotations

import numpy as np
import pytest

from salience.arrays import REDUCTIONS, reduce_channels

MAPS = np.random.default_rng(3).normal(size=(2, 5, 6, 3))  # (n, H, W, C), signed

# Each reduction written out channel by channel, the way its source defines it.
EXPECTED = {
    "sum": MAPS[..., 0] + MAPS[..., 1] + MAPS[..., 2],
    "abs_sum": abs(MAPS[..., 0]) + abs(MAPS[..., 1]) + abs(MAPS[..., 2]),
    "abs_max": np.maximum(np.maximum(abs(MAPS[..., 0]), abs(MAPS[..., 1])), abs(MAPS[..., 2])),
    "l2": (MAPS[..., 0] ** 2 + MAPS[..., 1] ** 2 + MAPS[..., 2] ** 2) ** 0.5,
    "max": np.maximum(np.maximum(MAPS[..., 0], MAPS[..., 1]), MAPS[..., 2]),
}


def test_every_reduction_is_tested():
    assert set(EXPECTED) == set(REDUCTIONS)


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_each_reduction_equals_its_definition_in_either_layout(how):
    np.testing.assert_allclose(reduce_channels(MAPS, how, -1), EXPECTED[how], rtol=1e-14)
    first = np.moveaxis(MAPS, -1, 1)  # (n, C, H, W)
    np.testing.assert_allclose(reduce_channels(first, how, 1), EXPECTED[how], rtol=1e-14)
    np.testing.assert_allclose(reduce_channels(MAPS[0], how, 2), EXPECTED[how][0], rtol=1e-14)


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_maps_without_channels_are_one_channel(how):
    flat = MAPS[..., 0]
    out = reduce_channels(flat, how, None)
    np.testing.assert_allclose(out, reduce_channels(flat[..., None], how, -1), rtol=0)
    assert out.shape == flat.shape


def test_dtypes_and_array_types():
    assert reduce_channels(MAPS.astype(np.float32), "l2").dtype == np.float32
    ints = np.arange(-6, 6).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(reduce_channels(ints, "abs_max"),
                                  np.abs(ints).max(axis=-1).astype(np.float64))
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(reduce_channels(torch.from_numpy(MAPS), "abs_sum"),
                               EXPECTED["abs_sum"], rtol=1e-14)


@pytest.mark.parametrize("how", ["L2", "mean", None, 2])
def test_unknown_reductions_name_the_valid_ones(how):
    with pytest.raises(ValueError, match=r"reduction must be one of 'sum', 'abs_sum', "
                                         r"'abs_max', 'l2', 'max', got "):
        reduce_channels(MAPS, how)


def test_channel_axis_out_of_range():
    with pytest.raises(ValueError, match=r"channel_axis=4 is out of range for maps of shape "
                                         r"\(2, 5, 6, 3\)"):
        reduce_channels(MAPS, "sum", 4)


# --- visualize --------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_to_2d_reduces_with_the_chosen_reduction(how):
    from salience.visualize import to_2d

    np.testing.assert_allclose(to_2d(MAPS[0], reduction=how), EXPECTED[how][0], rtol=1e-14)
    first = np.moveaxis(MAPS[0], -1, 0)  # (C, H, W), found by the image size
    np.testing.assert_allclose(to_2d(first, (5, 6), how), EXPECTED[how][0], rtol=1e-14)


def test_to_2d_keeps_summing_by_default_and_refuses_unknown_reductions():
    from salience.visualize import to_2d

    np.testing.assert_array_equal(to_2d(MAPS[0]), MAPS[0].sum(axis=-1))
    with pytest.raises(ValueError, match="reduction must be one of"):
        to_2d(MAPS[0], reduction="median")


@pytest.mark.parametrize("how", ["abs_max", "l2"])
def test_heatmap_overlay_and_top_regions_take_the_reduction(how):
    from salience import visualize

    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    reduced = EXPECTED[how][0]
    np.testing.assert_array_equal(visualize.heatmap(MAPS[0], reduction=how),
                                  visualize.heatmap(reduced))
    np.testing.assert_array_equal(visualize.overlay(image, MAPS[0], reduction=how),
                                  visualize.overlay(image, reduced))
    np.testing.assert_array_equal(visualize.top_regions(image, MAPS[0], 0.3, reduction=how),
                                  visualize.top_regions(image, reduced, 0.3))
    # a real difference from the default sum, so the option is not ignored
    assert not np.array_equal(visualize.heatmap(MAPS[0], reduction=how),
                              visualize.heatmap(MAPS[0]))


def test_abs_sum_is_pairs_grayscale_reduction():
    saliency = pytest.importorskip("saliency.core")
    from salience.visualize import visualize_image_grayscale

    for image_3d in MAPS:
        np.testing.assert_allclose(
            visualize_image_grayscale(reduce_channels(image_3d, "abs_sum")),
            saliency.VisualizeImageGrayscale(image_3d), rtol=1e-12)
