"""RISE: the paper's mask recipe written out mask by mask, batching, layouts, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.transform import resize

import salience
from salience.methods.rise import draw_rise_grids


def rise_by_hand(model, image, target, n_masks, grid_size, p, seed, baseline=0.0):
    """One mask at a time: upsample the grid (bilinear, scikit-image, as the paper's
    code), crop at the shift, score the masked image, add score * mask."""
    height, width = image.shape[:2]
    grids, shifts = draw_rise_grids(np.random.default_rng(seed), n_masks, grid_size, p,
                                    (height, width))
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    total = np.zeros((height, width))
    for grid, (dy, dx) in zip(grids, shifts):
        assert 0 <= dy < cell_h and 0 <= dx < cell_w
        big = resize(grid, ((grid_size + 1) * cell_h, (grid_size + 1) * cell_w), order=1,
                     mode="reflect", anti_aliasing=False)
        mask = big[dy:dy + height, dx:dx + width]
        masked = baseline + (image - baseline) * mask[:, :, None]
        total += model.score(masked[None], np.array([target]))[0] * mask
    return total / (n_masks * p)


@pytest.mark.parametrize("baseline", [0.0, -0.5])
def test_rise_equals_the_recipe_mask_by_mask(analytic, images, baseline):
    targets = np.array([0, 2, 1])
    maps = salience.RISE(n_masks=40, grid_size=3, p=0.4, baseline=baseline, seed=7,
                         batch_size=16).explain(analytic, images, targets)
    assert maps.shape == images.shape
    for i in range(3):
        expected = rise_by_hand(analytic, images[i], targets[i], 40, 3, 0.4, 7, baseline)
        for c in range(3):
            np.testing.assert_allclose(maps[i, :, :, c], expected, rtol=1e-10, atol=1e-12)


def test_grids_keep_cells_with_probability_p():
    grids, shifts = draw_rise_grids(np.random.default_rng(0), 4000, 7, 0.3, (224, 224))
    assert set(np.unique(grids)) == {0.0, 1.0}
    assert abs(grids.mean() - 0.3) < 0.01
    assert shifts.min() == 0 and shifts.max() == 31  # shifts within one 32-pixel cell


@pytest.mark.parametrize("batch_size", [1, 7, 200])
def test_batch_size_changes_calls_not_maps(analytic, images, batch_size):
    reference = salience.RISE(n_masks=30, grid_size=4, seed=1, batch_size=30).explain(
        analytic, images, 1)
    analytic.calls = 0
    maps = salience.RISE(n_masks=30, grid_size=4, seed=1, batch_size=batch_size).explain(
        analytic, images, 1)
    assert analytic.calls == math.ceil(3 * 30 / batch_size)
    assert analytic.rows == 3 * 30 + 3 * 30
    np.testing.assert_allclose(maps, reference, rtol=1e-12)


def test_same_seed_same_map_other_seed_other_map(analytic, images):
    a = salience.RISE(n_masks=20, grid_size=4, seed=3).explain(analytic, images, 0)
    b = salience.RISE(n_masks=20, grid_size=4, seed=3).explain(analytic, images, 0)
    c = salience.RISE(n_masks=20, grid_size=4, seed=4).explain(analytic, images, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_channels_first_and_gray_images_equal_channels_last(model_classes):
    analytic_cls, _ = model_classes
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3))
    last = salience.RISE(n_masks=25, grid_size=3, seed=0).explain(analytic_cls(), x, 1)
    first_model = analytic_cls(shape=(3, 8, 8), channels_last=False)
    first_model.W = np.moveaxis(analytic_cls().W, -1, 1)
    first_model.V = np.moveaxis(analytic_cls().V, -1, 1)
    first = salience.RISE(n_masks=25, grid_size=3, seed=0).explain(
        first_model, np.moveaxis(x, -1, 1), 1)
    np.testing.assert_allclose(np.moveaxis(first, 1, -1), last, rtol=1e-10)
    gray = salience.RISE(n_masks=25, grid_size=3, seed=0).explain(
        analytic_cls(shape=(8, 8)), x[..., 0], 1)
    assert gray.shape == (2, 8, 8)


def test_a_score_that_counts_kept_pixels_gives_a_flat_map():
    # f(x * M) = sum(M): pixel j gets E[sum(M) M_j] / p, the same everywhere up to
    # sampling noise (the shifted crops make the masks' statistics uniform).
    def model(x, targets, keys):
        return {"OUTPUT_LAYER_VALUES": x.reshape(len(x), -1).sum(axis=1)}

    maps = salience.RISE(n_masks=2000, grid_size=4, seed=0).explain(model, np.ones((1, 16, 16)))
    assert maps.std() / maps.mean() < 0.05
