"""Display helpers: normalising filters, overlays, top regions, grids, PNG files."""

from __future__ import annotations

import numpy as np
import pytest

from salience import visualize as vis


def test_normalize_and_absolute_normalize():
    m = np.array([[-2.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(vis.normalize(m), [[0.0, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(vis.absolute_normalize(m), [[1.0, 0.0], [0.5, 1.0]])
    # constant and zero maps give zeros, never NaN
    np.testing.assert_array_equal(vis.normalize(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    np.testing.assert_array_equal(vis.absolute_normalize(np.zeros((3, 3))), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        vis.normalize(np.array([[np.nan, 1.0]]))
    original = m.copy()
    vis.absolute_normalize(m)
    np.testing.assert_array_equal(m, original)


def test_to_2d_sums_channels_in_either_layout():
    rng = np.random.default_rng(0)
    last = rng.normal(size=(5, 6, 3))
    np.testing.assert_allclose(vis.to_2d(last), last.sum(axis=2))
    first = np.moveaxis(last, -1, 0)
    np.testing.assert_allclose(vis.to_2d(first, size=(5, 6)), last.sum(axis=2))
    np.testing.assert_allclose(vis.to_2d(first), last.sum(axis=2))
    with pytest.raises(ValueError, match="saliency_map must be"):
        vis.to_2d(np.zeros((2, 2, 2, 2)))


def test_heatmap_uses_the_colormap():
    import matplotlib

    m = np.zeros((4, 4))
    m[0, 0] = 1.0
    out = vis.heatmap(m, cmap="viridis", percentile=100)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    cmap = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(out[0, 0], np.rint(np.array(cmap(1.0)[:3]) * 255))
    np.testing.assert_array_equal(out[1, 1], np.rint(np.array(cmap(0.0)[:3]) * 255))
    with pytest.raises(ValueError, match="unknown colormap"):
        vis.heatmap(m, cmap="no-such-map")


def test_overlay_blends_image_and_colours():
    image = np.full((4, 4, 3), 200, dtype=np.uint8)
    m = np.zeros((4, 4))
    m[2, 3] = 5.0
    np.testing.assert_array_equal(vis.overlay(image, m, alpha=0.0), image)
    full = vis.overlay(image, m, alpha=1.0, percentile=100)
    np.testing.assert_array_equal(full, vis.heatmap(m, percentile=100))
    half = vis.overlay(image, m, cmap="gray", alpha=0.5, percentile=100)
    np.testing.assert_allclose(half[2, 3], [227.5] * 3, atol=0.51)  # (200/255 + 1) / 2 * 255
    np.testing.assert_array_equal(half[0, 0], [100] * 3)  # (200/255 + 0) / 2 * 255
    gray = vis.overlay(np.full((4, 4), 200, dtype=np.uint8), m, alpha=0.0)
    assert gray.shape == (4, 4, 3) and (gray == 200).all()
    with pytest.raises(ValueError, match="alpha"):
        vis.overlay(image, m, alpha=1.5)
    with pytest.raises(ValueError, match="the map is 3x3 but the image is 4x4"):
        vis.overlay(image, np.zeros((3, 3)))


def test_top_regions_keeps_the_top_fraction():
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    m = np.arange(100, dtype=float).reshape(10, 10)
    out = vis.top_regions(image, m, fraction=0.1)
    kept = (out != 0).any(axis=2)
    assert kept.sum() == 10 and kept[9].all()  # the last row holds the 10 largest values
    np.testing.assert_array_equal(out[9], image[9])
    assert (out[:9] == 0).all()
    assert vis.top_mask(m, 0.3).sum() == 30
    # tied values (regions) are kept whole
    regions = np.zeros((10, 10))
    regions[:5] = 1.0
    assert vis.top_mask(regions, 0.1).sum() == 50
    with pytest.raises(ValueError, match="fraction"):
        vis.top_regions(image, m, fraction=0)


def test_grid_places_tiles():
    a = np.zeros((2, 3), dtype=np.uint8)
    b = np.full((2, 3, 3), 255, dtype=np.uint8)
    c = np.full((1, 1, 3), 0.5)
    out = vis.grid([a, b, c], ncols=2, pad=1, fill=9)
    assert out.shape == (2 * 2 + 3, 3 * 2 + 3, 3)
    assert (out[1:3, 1:4] == 0).all() and (out[1:3, 5:8] == 255).all()
    assert (out[4, 1] == 128).all() and (out[0] == 9).all()
    with pytest.raises(ValueError, match="empty"):
        vis.grid([])


def test_save_png_round_trip(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = vis.save_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    gray = vis.save_png(tmp_path / "g.png", np.linspace(0, 1, 12).reshape(3, 4))
    loaded = np.asarray(Image.open(gray))
    assert loaded.shape == (3, 4) and loaded[0, 0] == 0 and loaded[-1, -1] == 255
    with pytest.raises(ValueError, match="image must be"):
        vis.save_png(tmp_path / "bad.png", np.zeros((2, 2, 2)))


def test_existing_visualisers_unchanged():
    m = np.array([[[-1.0], [3.0]]])
    np.testing.assert_allclose(vis.visualize_image_grayscale(m, percentile=100), [[0.0, 1.0]])
