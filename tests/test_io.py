"""Image reading and preprocessing for the command line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from salience.io import (  # noqa: E402
    ImageReadError,
    LargeImageWarning,
    Preprocessing,
    find_images,
    load_image,
    load_input,
    search_images,
)


def test_load_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    rgba = np.dstack([rgb, np.full((5, 6), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    gray16 = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "micro.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "micro.tif"), [[0, 64], [128, 255]])
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray).convert("P").save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png"), gray)


def test_unreadable_images_raise_a_clear_error(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match="text.png: not a readable image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageReadError, match="no such file") as missing:
        load_image(tmp_path / "missing.png")
    # the reason alone, for messages that name the file already
    assert missing.value.reason == "no such file"
    assert missing.value.path == tmp_path / "missing.png"
    assert str(missing.value) == f"{tmp_path / 'missing.png'}: no such file"


def test_find_images_recurses_and_sorts(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b.png", "sub/c.tif"]
    assert find_images([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images([tmp_path / "nope"])


def test_gray_is_replicated_for_three_channels_and_rgb_becomes_luma_for_one():
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    three = Preprocessing(size=(2, 2), channels=3, preset="unit").model_input([gray])
    assert three.shape == (1, 3, 2, 2)
    for c in range(3):
        np.testing.assert_allclose(three[0, c], gray / 255.0, rtol=1e-6)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 100
    one = Preprocessing(size=(2, 2), channels=1, channels_last=True, preset="raw")
    out = one.model_input([rgb])
    assert out.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(out[..., 0], np.rint(0.587 * 100))


def test_normalisation_presets_and_overrides():
    img = np.full((2, 2, 3), 255, dtype=np.uint8)
    x = Preprocessing(size=(2, 2), preset="imagenet").model_input([img])
    np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    custom = Preprocessing(size=(2, 2), mean=(0.5,), std=(0.25,)).model_input([img])
    np.testing.assert_allclose(custom, 2.0)
    gray_model = Preprocessing(size=(2, 2), channels=1, preset="imagenet")
    np.testing.assert_allclose(gray_model.normalisation()[1], [np.mean([0.485, 0.456, 0.406])])
    with pytest.raises(ValueError, match="valid presets"):
        Preprocessing(preset="nope")
    with pytest.raises(ValueError, match="mean has 2 values but the model takes 3"):
        Preprocessing(mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="std must hold positive"):
        Preprocessing(std=(0.0,))


def test_resize_modes_and_large_image_warning():
    wide = np.zeros((10, 40, 3), dtype=np.uint8)
    wide[:, 15:25] = 255  # a bright centre band
    squash = Preprocessing(size=(10, 10), resize="squash")
    crop = Preprocessing(size=(10, 10), resize="crop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4x the input is not "far larger"
        squashed = squash.display(wide)
    assert squashed.shape == (10, 10, 3) and squashed[:, 0].max() == 0  # whole width kept
    centre = crop.display(wide)
    assert centre.shape == (10, 10, 3) and (centre == 255).all()  # only the centre band
    with pytest.warns(LargeImageWarning, match="far larger than the model input"):
        Preprocessing(size=(4, 4)).display(np.zeros((17, 3), dtype=np.uint8), "big.png")


def test_the_default_resize_keeps_the_aspect_ratio():
    wide = np.zeros((10, 40, 3), dtype=np.uint8)
    wide[:, 15:25] = 255
    default = Preprocessing(size=(10, 10))
    assert default.resize == "crop"
    np.testing.assert_array_equal(default.display(wide),
                                  Preprocessing(size=(10, 10), resize="crop").display(wide))
    with pytest.raises(ValueError, match="resize must be 'crop' or 'squash', got 'fit'"):
        Preprocessing(resize="fit")


def _stripes(height, width):
    """Vertical black and white stripes 10 pixels wide, with a gray edge on the left."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for left in range(0, width, 20):
        image[:, left:left + 10] = 255
    image[:, :5] = 128
    return image


def test_load_input_gives_the_model_input_and_the_picture_it_shows(tmp_path):
    Image.fromarray(_stripes(100, 300)).save(tmp_path / "wide.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a photo far larger than the size is the usual case
        x, image = load_input(tmp_path / "wide.png", preset="efficientnet-lite", size=50)
    assert x.shape == (1, 3, 50, 50) and x.dtype == np.float32
    assert image.shape == (50, 50, 3) and image.dtype == np.uint8
    # halved, not stretched: stripes stay 5 pixels wide; the left edge is cut away
    row = image[25, :, 0]
    edges = np.flatnonzero(np.diff(row > 127))
    assert set(np.diff(edges)) == {5} and not (row == 128).any()
    prep = Preprocessing(size=(50, 50), preset="efficientnet-lite")
    with pytest.warns(LargeImageWarning):
        np.testing.assert_array_equal(image, prep.display(_stripes(100, 300)))
    expected = (image / np.float32(255) - 0.498) / 0.502
    np.testing.assert_allclose(x[0], expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)
    last, _ = load_input(tmp_path / "wide.png", preset="efficientnet-lite", size=50,
                         channels_last=True)
    np.testing.assert_array_equal(last[0], x[0].transpose(1, 2, 0))


def test_load_input_takes_several_images_gray_ones_and_arrays(tmp_path):
    gray = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (30, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    x, images = load_input([tmp_path / "gray.png", _stripes(40, 40)], size=(20, 30),
                           preset="unit")
    assert x.shape == (2, 3, 20, 30) and isinstance(images, list)
    assert images[0].shape == (20, 30) and images[1].shape == (20, 30, 3)
    np.testing.assert_allclose(x[0, 0], images[0] / 255, atol=1e-6)  # gray replicated
    np.testing.assert_array_equal(x[0, 0], x[0, 2])
    one, _ = load_input(str(tmp_path / "gray.png"), size=20, channels=1, preset="unit")
    assert one.shape == (1, 1, 20, 20)


def test_load_input_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=r"image 0 must be a path or a uint8 image .*float64"):
        load_input(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match=r"image 1 .*shape \(3, 8, 8\)"):
        load_input([np.zeros((8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8)])
    with pytest.raises(ValueError, match="source is empty"):
        load_input([])
    with pytest.raises(ValueError, match=r"size must be an int or \(height, width\)"):
        load_input(np.zeros((8, 8), np.uint8), size=(1.5, 2))
    with pytest.raises(ValueError, match="unknown normalisation preset 'resnet'"):
        load_input(np.zeros((8, 8), np.uint8), preset="resnet")
    with pytest.raises(ImageReadError, match="nope.png: no such file"):
        load_input(tmp_path / "nope.png")


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def names(found, root):
    return [p.relative_to(root).as_posix() for p in found]


def test_salience_outputs_and_the_output_folder_are_never_read(tmp_path):
    from salience.outdir import write_atomically

    touch(tmp_path / "in" / "a.png")
    with write_atomically(tmp_path / "in" / "report", False, kind="report") as tmp:
        touch(tmp / "images" / "a.png")
    touch(tmp_path / "in" / "out" / "b.png")  # the --out of this run, not yet a report
    search = search_images([tmp_path / "in"], exclude=[tmp_path / "in" / "out"])
    assert names(search.files, tmp_path / "in") == ["a.png"]
    [note] = search.notes
    assert "salience output folder(s)" in note and "report" in note and "out" in note
    # named directly, a report folder or a file in it is left out too
    inner = search_images([tmp_path / "in" / "report" / "images" / "a.png",
                           tmp_path / "in" / "report"])
    assert inner.files == [] and len(inner.notes) == 1
    assert find_images([tmp_path / "in"]) == [tmp_path / "in" / "a.png",
                                              tmp_path / "in" / "out" / "b.png"]


def test_links_leading_outside_a_folder_are_skipped_unless_followed(tmp_path):
    secret = touch(tmp_path / "private" / "secret.png")
    (tmp_path / "private" / "more.png").write_bytes(b"")
    root = tmp_path / "in"
    touch(root / "a.png")
    (root / "evil.png").symlink_to(secret)
    (root / "inside.png").symlink_to(root / "a.png")
    (root / "linked").symlink_to(tmp_path / "private")
    (root / "loop").symlink_to(root)
    search = search_images([root])
    assert names(search.files, root) == ["a.png", "inside.png"]
    [note] = search.notes
    assert note.startswith("skipped 2 symbolic link(s) leading outside") and "evil.png" in note
    assert "--follow-symlinks" in note
    followed = search_images([root], follow_symlinks=True)
    assert names(followed.files, root) == ["a.png", "evil.png", "inside.png",
                                           "linked/more.png", "linked/secret.png"]
    assert followed.notes == []
    assert search_images([root / "evil.png"]).files == [root / "evil.png"]  # named directly


def test_images_too_large_for_the_memory_limit_are_refused_before_decoding(tmp_path,
                                                                          png_claiming):
    from salience.io import ImageTooLargeError, decode_bytes

    big = png_claiming(tmp_path / "big.png", 9000, 8000)
    need = decode_bytes(9000, 8000, "RGB")
    assert 9000 * 8000 * 3 < need < 9000 * 8000 * 30
    with pytest.raises(ImageTooLargeError, match=r"big.png: 9000x8000 pixels \(RGB\) would "
                       r"take about 1.22 GB of memory to decode, more than the limit of 1 GB"):
        load_image(big, max_bytes=10**9)
    with pytest.raises(ImageReadError, match="not a readable image"):  # it is really truncated
        load_image(big, max_bytes=need)
    gray = png_claiming(tmp_path / "gray.png", 9000, 8000, mode="L")
    assert decode_bytes(9000, 8000, "L") < need
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(gray, max_bytes=10**9)  # 1 byte per pixel: under the limit, then decoded


def test_float_images_keep_their_scaling_with_nan_and_inf(tmp_path):
    values = np.array([[np.nan, 0.0], [2.0, 4.0], [np.inf, -np.inf]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"),
                                  [[0, 0], [128, 255], [255, 0]])
