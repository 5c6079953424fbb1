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
    with pytest.raises(ValueError, match="the map is 3x5 but the image is 4x4, another aspect"):
        vis.overlay(image, np.zeros((3, 5)))


def test_overlay_takes_a_map_as_methods_return_it():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    last = rng.normal(size=(12, 10, 3))
    expected = vis.overlay(image, last.sum(axis=-1))
    first = np.moveaxis(last, -1, 0)
    for form in (last, first, first[None], last[None], last.sum(-1)[None]):
        np.testing.assert_array_equal(vis.overlay(image, form), expected)
    with pytest.raises(ValueError, match=r"a batch of 2 maps .*maps\[0\]"):
        vis.overlay(image, np.stack([first, first]))
    nan = last.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        vis.overlay(image, nan)


def test_a_layer_resolution_map_is_resized_to_the_image():
    from skimage.transform import resize

    cam = np.zeros((3, 4))
    cam[1, 2] = 1.0  # Grad-CAM at its layer's resolution, 4x smaller than the image
    image = np.full((12, 16), 100, dtype=np.uint8)
    resized = vis.fit_map(cam, (12, 16))
    assert resized.shape == (12, 16)
    np.testing.assert_allclose(resized, resize(cam, (12, 16), order=1, mode="edge",
                                               anti_aliasing=False))
    assert np.unravel_index(resized.argmax(), resized.shape) in {(r, c) for r in range(4, 8)
                                                                 for c in range(8, 12)}
    np.testing.assert_array_equal(vis.overlay(image, cam), vis.overlay(image, resized))
    assert vis.top_regions(image, cam, 0.1).any()


def test_overlay_takes_uint8_or_unit_float_images_and_says_what_else_to_do():
    m = np.random.default_rng(1).random((5, 6))
    image = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    reference = vis.overlay(image, m)
    np.testing.assert_array_equal(vis.overlay(image / 255.0, m), reference)
    np.testing.assert_array_equal(vis.overlay(np.moveaxis(image, -1, 0), m), reference)
    with pytest.raises(ValueError, match="float values up to 2.*divide by 255"):
        vis.overlay(image.astype(np.float32), m)
    with pytest.raises(ValueError, match="normalised model input.*load_input"):
        vis.overlay((image / 255.0 - 0.5) / 0.25, m)
    with pytest.raises(ValueError, match="integer values from 4000 to 4000"):
        vis.overlay(np.full((5, 6), 4000, dtype=np.uint16), m)


def test_magnitudes_start_at_zero_and_signed_maps_diverge():
    import matplotlib

    offset = np.array([[10.0, 11.0]])
    out = vis.heatmap(offset, percentile=100)  # magnitudes: 0 is the first colour
    inferno = matplotlib.colormaps["inferno"]
    np.testing.assert_array_equal(out[0, 0], np.rint(np.array(inferno(10 / 11)[:3]) * 255))
    signed = np.array([[-2.0, 0.0, 2.0]])
    colours = vis.heatmap(signed, absolute=False, percentile=100)
    assert colours[0, 0, 2] > colours[0, 0, 0] and colours[0, 2, 0] > colours[0, 2, 2]
    image = np.full((1, 3, 3), 90, dtype=np.uint8)
    blended = vis.overlay(image, signed, absolute=False, alpha=0.8, percentile=100)
    np.testing.assert_array_equal(blended[0, 1], [90, 90, 90])  # no attribution: the image
    assert (blended[0, 0] != 90).any() and (blended[0, 2] != 90).any()


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


def test_photo_to_overlay_in_a_few_lines(tmp_path, model_classes):
    from PIL import Image

    import salience
    from salience.io import load_input

    analytic_cls, _ = model_classes
    model = analytic_cls(shape=(3, 16, 16), channels_last=False)
    photo = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    x, image = load_input(tmp_path / "photo.jpg", preset="imagenet", size=16)
    maps = salience.IntegratedGradients(steps=5).explain(model, x)  # (1, 3, 16, 16)
    result = salience.explain(model, x, ["gradients", "smoothgrad"])
    tiles = [image, vis.overlay(image, maps[0]), vis.overlay(image, maps, absolute=False),
             vis.overlay(image, result.maps["smoothgrad"][0])]
    picture = vis.save_png(tmp_path / "maps.png", vis.grid(tiles))
    assert np.asarray(Image.open(picture)).shape == (16 + 4, 4 * 16 + 5 * 2, 3)
