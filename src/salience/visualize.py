"""Turn attribution maps into displayable [0, 1] images.

The two PAIR visualisers live here under snake_case names
(:func:`visualize_image_grayscale`, :func:`visualize_image_diverging`); the PAIR
facade re-exports them under PAIR's names.  Both accept one map or a batch:

- 2-D ``(H, W)``: one single-channel map;
- 3-D ``(H, W, C)``: one map with channels (summed);
- 4-D ``(N, H, W, C)``: a batch, each map scaled by its own percentile.

``channel_axis`` says where the channels are (use 1 or -3 for channels-first maps).
A map with no spread (constant, or all zeros) becomes zeros instead of NaN.

To look at a map, blend it over the picture the model saw::

    x, image = salience.io.load_input("cat.jpg", preset="efficientnet-lite")
    maps = salience.IntegratedGradients().explain(model, x)
    salience.visualize.save_png("ig.png", salience.visualize.overlay(image, maps[0]))

:func:`overlay` and :func:`heatmap` take a map as a method returns it (channels
first or last, a batch of one, a layer-resolution Grad-CAM map) and show
magnitudes from zero (``absolute=True``) or signed values on a diverging scale;
:func:`grid` tiles pictures and :func:`save_png` writes one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import reduce_channels, to_numpy

__all__ = [
    "visualize_image_grayscale",
    "visualize_image_diverging",
    "collapse_channels",
    "normalize",
    "absolute_normalize",
    "to_2d",
    "fit_map",
    "image_size",
    "default_cmap",
    "colour_stops",
    "heatmap",
    "overlay",
    "top_mask",
    "top_regions",
    "grid",
    "to_uint8",
    "save_png",
]


def collapse_channels(maps: np.ndarray, channel_axis: int | None = -1, absolute: bool = False):
    """Sum (optionally absolute) values over channels; return ``(N, H, W)`` and whether
    the input was a single map."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"maps must be (H, W), (H, W, C) or (N, H, W, C), got shape {arr.shape}"
        )
    how = "abs_sum" if absolute else "sum"
    if arr.ndim == 2:
        return reduce_channels(arr, how, None)[None], True
    if channel_axis is None:
        raise ValueError("channel_axis=None needs 2-D maps")
    summed = reduce_channels(arr, how, channel_axis)
    return (summed[None], True) if arr.ndim == 3 else (summed, False)


def _scale(values: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, low: float) -> np.ndarray:
    span = (vmax - vmin)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (values - vmin[:, None, None]) / span
    scaled = np.where(span > 0, scaled, 0.0)  # no spread: nothing to show
    return np.clip(scaled, low, 1)


def visualize_image_grayscale(
    maps: np.ndarray, percentile: float = 99, channel_axis: int | None = -1
) -> np.ndarray:
    """Absolute attribution summed over channels, scaled to [0, 1].

    The minimum maps to 0 and the ``percentile``-th percentile to 1 (larger
    values are clipped), which keeps a few extreme pixels from washing out
    the rest.
    """
    _check_percentile(percentile)
    values, single = collapse_channels(maps, channel_axis, absolute=True)
    flat = values.reshape(len(values), -1)
    out = _scale(values, flat.min(axis=1), np.percentile(flat, percentile, axis=1), 0)
    return out[0] if single else out


def visualize_image_diverging(
    maps: np.ndarray, percentile: float = 99, channel_axis: int | None = -1
) -> np.ndarray:
    """Signed attribution summed over channels, with 0 at 0.5.

    Values are scaled symmetrically by the absolute ``percentile``-th
    percentile ``s``: ``-s`` maps to 0, ``+s`` to 1 (beyond is clipped).
    """
    _check_percentile(percentile)
    values, single = collapse_channels(maps, channel_axis)
    span = np.abs(np.percentile(values.reshape(len(values), -1), percentile, axis=1))
    out = _scale(values, -span, span, -1)
    return out[0] if single else out


def _check_percentile(percentile: float) -> None:
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")


# --- Display helpers for reports: colour overlays, top regions, grids, PNG files ---


def normalize(saliency_map: np.ndarray) -> np.ndarray:
    """Min-max scale one map to [0, 1] (a constant map becomes zeros, never NaN)."""
    arr = np.asarray(saliency_map, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("saliency_map contains NaN or inf")
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def absolute_normalize(saliency_map: np.ndarray) -> np.ndarray:
    """``|map| / max|map|``: magnitude in [0, 1], 0 stays 0 (an all-zero map stays zero)."""
    arr = np.abs(np.asarray(saliency_map, dtype=np.float64))
    peak = float(np.max(arr))
    if not np.isfinite(peak):
        raise ValueError("saliency_map contains NaN or inf")
    return arr / peak if peak > 0 else np.zeros_like(arr)


def to_2d(
    saliency_map: np.ndarray, size: tuple[int, int] | None = None, reduction: str = "sum"
) -> np.ndarray:
    """One map as ``(H, W)``: channels reduced (summed by default), wherever they are.

    ``reduction`` is one of :data:`salience.arrays.REDUCTIONS` (``"sum"``,
    ``"abs_sum"``, ``"abs_max"``, ``"l2"``, ``"max"``); a 2-D map is taken as
    one channel (``"abs_*"`` and ``"l2"`` give its absolute value).

    A 3-D map is read as ``(H, W, C)`` unless ``size`` (the image's height and
    width) says it is ``(C, H, W)``; without ``size`` the smaller of the first
    and last axes is taken as the channels.
    """
    arr = np.asarray(saliency_map, dtype=np.float64)
    if arr.ndim == 2:
        return reduce_channels(arr, reduction, None)
    if arr.ndim != 3:
        raise ValueError(
            f"saliency_map must be (H, W), (H, W, C) or (C, H, W), got shape {arr.shape}"
        )
    if size is not None and tuple(arr.shape[1:]) == tuple(size) != tuple(arr.shape[:2]):
        channels_first = True
    elif size is not None and tuple(arr.shape[:2]) == tuple(size):
        channels_first = False
    else:
        channels_first = arr.shape[0] < arr.shape[-1]
    return reduce_channels(arr, reduction, 0 if channels_first else -1)


def fit_map(saliency_map: Any, size: tuple[int, int], reduction: str = "sum") -> np.ndarray:
    """One map as ``(H, W)`` float64 of the image's ``size``, from what a method returned.

    Takes a map straight from ``explain`` or ``salience.explain(...).maps[name]``:
    ``(H, W)``, channels first ``(C, H, W)`` or last ``(H, W, C)`` (reduced
    by ``reduction``, see :func:`to_2d`; summed by default), a batch of one
    ``(1, ...)``, a torch tensor; a map of another resolution with the image's
    aspect ratio (Grad-CAM at its layer's 7x7) is resized bilinearly.

    Raises
    ------
    ValueError
        A batch of several maps, NaN or inf, or a map whose aspect ratio
        differs from the image's (it was computed on another crop).
    """
    height, width = (int(v) for v in size)
    flat = to_2d(_one_map(saliency_map), (height, width), reduction)
    if not np.isfinite(flat).all():
        raise ValueError("saliency_map contains NaN or inf; nothing sensible can be drawn")
    if flat.shape == (height, width):
        return flat
    h, w = flat.shape
    if abs(h / w - height / width) > 0.02 * height / width:
        raise ValueError(
            f"the map is {h}x{w} but the image is {height}x{width}, another aspect ratio; "
            "draw the map on the image the model saw (the second value of "
            "salience.io.load_input, or Preprocessing.display)"
        )
    from skimage.transform import resize

    return resize(flat, (height, width), order=1, mode="edge", anti_aliasing=False)


def _one_map(saliency_map: Any) -> np.ndarray:
    """One map as float64, a leading batch axis of one dropped; a batch of more is refused."""
    arr = np.asarray(to_numpy(saliency_map), dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] > 1:
        raise ValueError(
            f"saliency_map holds a batch of {arr.shape[0]} maps (shape {arr.shape}); pass one "
            "of them, e.g. maps[0]"
        )
    if arr.ndim == 4:
        return arr[0]
    return arr


def image_size(image: Any) -> tuple[int, int]:
    """Height and width of an image ``(H, W)``, ``(H, W, 1|3|4)`` or ``(1|3, H, W)``."""
    arr = _image_array(image)
    return int(arr.shape[0]), int(arr.shape[1])


def _image_array(image: Any) -> np.ndarray:
    """The image as ``(H, W)`` or ``(H, W, C)`` (channels-first images are moved)."""
    arr = to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"image must be (H, W), (H, W, 1|3|4) or (3, H, W), got shape {arr.shape}"
        )
    return arr


def _scaled(flat: np.ndarray, absolute: bool, percentile: float) -> np.ndarray:
    """Colour positions in [0, 1]: magnitudes from 0 up to the ``percentile``-th
    percentile, or signed values with 0 at 0.5 (symmetric by the absolute percentile)."""
    if absolute:
        _check_percentile(percentile)
        magnitude = np.abs(flat)
        top = float(np.percentile(magnitude, percentile))
        return np.clip(magnitude / top, 0, 1) if top > 0 else np.zeros_like(magnitude)
    return visualize_image_diverging(flat, percentile)


def heatmap(
    saliency_map: np.ndarray,
    cmap: str | None = None,
    absolute: bool = True,
    percentile: float = 99,
    reduction: str = "sum",
) -> np.ndarray:
    """A map coloured with a matplotlib colormap: ``(H, W, 3)`` uint8.

    ``absolute`` shows magnitudes: ``|map|`` from 0 (first colour) to its
    ``percentile``-th percentile (last colour, larger values clipped).
    Otherwise signed values, 0 in the colormap's middle and the ``percentile``-th
    percentile of ``|map|`` at its ends.  ``cmap`` defaults to ``"inferno"`` for
    magnitudes and the diverging ``"bwr"`` (blue negative, white 0, red positive)
    for signed maps.  The map may be any shape :func:`fit_map` takes;
    ``reduction`` says how its channels become one value per pixel (see
    :func:`to_2d`).
    """
    flat = to_2d(_one_map(saliency_map), reduction=reduction)
    values = _scaled(fit_map(flat, flat.shape), absolute, percentile)
    return to_uint8(_colormap(default_cmap(absolute) if cmap is None else cmap)(values)[..., :3])


def default_cmap(absolute: bool) -> str:
    """The colormap :func:`heatmap` and :func:`overlay` use by default."""
    return "inferno" if absolute else "bwr"


def colour_stops(cmap: str, n: int = 11) -> np.ndarray:
    """``n`` evenly spaced colours of a matplotlib colormap, ``(n, 3)`` uint8 (for legends)."""
    return to_uint8(_colormap(cmap)(np.linspace(0, 1, n))[:, :3])


def _colormap(cmap: str):
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(
            f"unknown colormap {cmap!r}; see matplotlib.colormaps (e.g. inferno, jet, viridis)"
        ) from err


def _as_rgb_float(image: Any) -> np.ndarray:
    """An image as ``(H, W, 3)`` floats in [0, 1]; uint8 (or 0..255 ints) and [0, 1] floats
    are taken, other values refused with what to do."""
    arr = _image_array(image)
    if arr.dtype == np.bool_:
        values = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"image has integer values from {arr.min()} to {arr.max()}; give uint8 "
                "(0..255) or floats in [0, 1] (salience.io.load_image scales 16-bit images)"
            )
        values = arr.astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("image contains NaN or inf")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < -1e-6:
            raise ValueError(
                f"image has negative values (down to {low:.3g}): it looks like a normalised "
                "model input; pass the displayable image instead (the second value of "
                "salience.io.load_input), uint8 or floats in [0, 1]"
            )
        if high > 1 + 1e-6:
            raise ValueError(
                f"image has float values up to {high:.4g}; give floats in [0, 1] (divide "
                "by 255) or uint8"
            )
        values = np.clip(values, 0, 1)
    else:
        raise TypeError(f"image must hold numbers, got dtype {arr.dtype}")
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    return values[..., :3]


def overlay(
    image: np.ndarray,
    saliency_map: np.ndarray,
    cmap: str | None = None,
    alpha: float = 0.5,
    absolute: bool = True,
    percentile: float = 99,
    reduction: str = "sum",
) -> np.ndarray:
    """Blend a coloured map over an image: ``(H, W, 3)`` uint8.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` gray or ``(H, W, 3|4)`` colour (or channels first), uint8
        or floats in [0, 1]: the picture the model saw, e.g. the second value
        of :func:`salience.io.load_input`.  A normalised model input is
        refused with a message saying so.
    saliency_map : ndarray or tensor
        One map as a method returned it (see :func:`fit_map`): ``(H, W)``,
        ``(C, H, W)``, ``(H, W, C)`` or ``(1, ...)``; a lower resolution
        with the image's aspect ratio (Grad-CAM's layer) is resized.
    cmap : str, optional
        Matplotlib colormap name (default: see :func:`default_cmap`).
    alpha : float
        Weight of the heatmap, in [0, 1].  A signed map is blended in
        proportion to its magnitude, so where it is 0 the image shows as it is.
    absolute, percentile
        How values are scaled to colours, see :func:`heatmap`.
    reduction : str
        How the map's channels become one value per pixel, see :func:`to_2d`.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    rgb = _as_rgb_float(image)
    values = _scaled(fit_map(saliency_map, rgb.shape[:2], reduction), absolute, percentile)
    colours = _colormap(default_cmap(absolute) if cmap is None else cmap)(values)[..., :3]
    weight = alpha if absolute else alpha * np.abs(2 * values - 1)[..., None]
    return to_uint8((1 - weight) * rgb + weight * colours)


def top_mask(saliency_map: np.ndarray, fraction: float, reduction: str = "sum") -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels whose value is in the top ``fraction``.

    Pixels tied at the threshold are all kept, so region maps (XRAI) keep whole
    regions.  ``reduction``: how channels become one value, see :func:`to_2d`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be within (0, 1], got {fraction}")
    flat = to_2d(saliency_map, reduction=reduction)
    threshold = np.percentile(flat, 100 * (1 - fraction))
    return flat >= threshold


def top_regions(
    image: np.ndarray, saliency_map: np.ndarray, fraction: float = 0.1, background: int = 0,
    reduction: str = "sum",
) -> np.ndarray:
    """The image where the map is in its top ``fraction``, ``background`` elsewhere.

    Returns ``(H, W, 3)`` uint8 (gray images are replicated), as XRAI's "most
    salient 10% / 30%" pictures.
    """
    mask = top_mask(fit_map(saliency_map, image_size(image), reduction), fraction)
    rgb = to_uint8(_as_rgb_float(image))
    out = np.full_like(rgb, int(np.clip(background, 0, 255)))
    out[mask] = rgb[mask]
    return out


def grid(
    images: list[np.ndarray], ncols: int | None = None, pad: int = 2, fill: int = 255
) -> np.ndarray:
    """Tile images (uint8 or [0, 1] floats, gray or colour) into one ``(H, W, 3)`` uint8.

    Cells have the size of the largest image; smaller ones sit top-left.
    """
    if len(images) == 0:
        raise ValueError("images is empty; give at least one image")
    tiles = [to_uint8(_as_rgb_float(img)) for img in images]
    ncols = len(tiles) if ncols is None else int(ncols)
    if ncols <= 0 or pad < 0:
        raise ValueError(f"ncols must be > 0 and pad >= 0, got ncols={ncols}, pad={pad}")
    nrows = -(-len(tiles) // ncols)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    out = np.full(
        (nrows * cell_h + (nrows + 1) * pad, ncols * cell_w + (ncols + 1) * pad, 3),
        int(np.clip(fill, 0, 255)),
        dtype=np.uint8,
    )
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        top, left = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        out[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 images pass through; floats are read as [0, 1] and rounded to 0..255."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or inf")
    return np.clip(np.rint(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)


def save_png(path, image: np.ndarray):
    """Write ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (uint8 or [0, 1] floats) as PNG.

    Returns the path as a :class:`pathlib.Path`.
    """
    from pathlib import Path

    from PIL import Image

    arr = to_uint8(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG", compress_level=1)
    return path
