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

__all__ = ["visualize_image_grayscale", "visualize_image_diverging", "collapse_channels"]


def collapse_channels(maps: np.ndarray, channel_axis: int | None = -1, absolute: bool = False):
    """Sum (optionally absolute) values over channels; return ``(N, H, W)`` and whether
    the input was a single map."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"maps must be (H, W), (H, W, C) or (N, H, W, C), got shape {arr.shape}"
        )
    values = np.abs(arr) if absolute else arr
    if arr.ndim == 2:
        return values[None], True
    if channel_axis is None:
        raise ValueError("channel_axis=None needs 2-D maps")
    summed = values.sum(axis=channel_axis)
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
