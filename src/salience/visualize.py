"""Turn attribution maps into displayable [0, 1] images.

The two PAIR visualisers live here under snake_case names
(:func:`visualize_image_grayscale`, :func:`visualize_image_diverging`); the PAIR
facade re-exports them under PAIR's names.  Both accept one map or a batch:

- 2-D ``(H, W)``: one single-channel map;
- 3-D ``(H, W, C)``: one map with channels (summed);
- 4-D ``(N, H, W, C)``: a batch, each map scaled by its own percentile.

``channel_axis`` says where the channels are (use 1 or -3 for channels-first maps).
A map with no spread (constant, or all zeros) becomes zeros instead of NaN.
"""

from __future__ import annotations

import numpy as np

from .arrays import reduce_channels

__all__ = [
    "visualize_image_grayscale",
    "visualize_image_diverging",
    "collapse_channels",
    "normalize",
    "absolute_normalize",
    "to_2d",
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
    if size is not None:
        channels_first = tuple(arr.shape[1:]) == tuple(size) and tuple(arr.shape[:2]) != tuple(size)
    else:
        channels_first = arr.shape[0] < arr.shape[-1]
    return reduce_channels(arr, reduction, 0 if channels_first else -1)


def _image_size(image: np.ndarray) -> tuple[int, int]:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, 1|3|4), got shape {arr.shape}")
    return int(arr.shape[0]), int(arr.shape[1])


def _display_values(saliency_map, size, absolute: bool, percentile: float) -> np.ndarray:
    flat = to_2d(saliency_map, size)
    if flat.shape != tuple(size):
        raise ValueError(
            f"the map is {flat.shape[0]}x{flat.shape[1]} but the image is {size[0]}x{size[1]}; "
            "resize the map (or the image) first"
        )
    if absolute:
        return visualize_image_grayscale(flat, percentile)
    return visualize_image_diverging(flat, percentile)


def heatmap(
    saliency_map: np.ndarray,
    cmap: str = "inferno",
    absolute: bool = True,
    percentile: float = 99,
    reduction: str = "sum",
) -> np.ndarray:
    """A map coloured with a matplotlib colormap: ``(H, W, 3)`` uint8.

    ``absolute`` shows magnitudes (scaled like :func:`visualize_image_grayscale`);
    otherwise signed values around the colormap's middle (as
    :func:`visualize_image_diverging`; use a diverging colormap such as ``"bwr"``).
    ``reduction`` says how the map's channels become one value per pixel (see
    :func:`to_2d`).
    """
    flat = to_2d(saliency_map, reduction=reduction)
    values = _display_values(flat, flat.shape, absolute, percentile)
    return to_uint8(_colormap(cmap)(values)[..., :3])


def _colormap(cmap: str):
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(
            f"unknown colormap {cmap!r}; see matplotlib.colormaps (e.g. inferno, jet, viridis)"
        ) from err


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    _image_size(arr)
    values = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        values = values / 255.0
    values = np.clip(values, 0, 1)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    return values[..., :3]


def overlay(
    image: np.ndarray,
    saliency_map: np.ndarray,
    cmap: str = "inferno",
    alpha: float = 0.5,
    absolute: bool = True,
    percentile: float = 99,
    reduction: str = "sum",
) -> np.ndarray:
    """Blend a coloured map over an image: ``(H, W, 3)`` uint8.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` gray or ``(H, W, 3|4)`` colour; uint8, or floats in [0, 1].
    saliency_map : ndarray
        ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` attribution of the same size
        (channels are summed).
    cmap : str
        Matplotlib colormap name.
    alpha : float
        Weight of the heatmap, in [0, 1].
    absolute, percentile
        How values are scaled to colours, see :func:`heatmap`.
    reduction : str
        How the map's channels become one value per pixel, see :func:`to_2d`.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    size = _image_size(image)
    values = _display_values(to_2d(saliency_map, size, reduction), size, absolute, percentile)
    colours = _colormap(cmap)(values)[..., :3]
    return to_uint8((1 - alpha) * _as_rgb_float(image) + alpha * colours)


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
    size = _image_size(image)
    mask = top_mask(to_2d(saliency_map, size, reduction), fraction)
    if mask.shape != size:
        raise ValueError(
            f"the map is {mask.shape[0]}x{mask.shape[1]} but the image is {size[0]}x{size[1]}"
        )
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
