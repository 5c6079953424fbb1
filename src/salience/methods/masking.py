"""Masked copies of images, shared by the methods that score them (Score-CAM,
RISE, LIME, Kernel SHAP): a spatial mask in [0, 1] keeps the image where it is 1
and shows a baseline value where it is 0, the same over every channel."""

from __future__ import annotations

import numpy as np

from ..arrays import spatial_axes
from ..numeric import owner_runs

__all__ = ["apply_masks", "image_size"]


def image_size(x: np.ndarray, is_channels_last: bool) -> tuple[int, int]:
    """Height and width of the images of a batch ``x`` (n, *input_shape)."""
    h_axis, w_axis = spatial_axes(x.ndim - 1, is_channels_last)
    return x.shape[1 + h_axis], x.shape[1 + w_axis]


def apply_masks(
    images: np.ndarray, owners: np.ndarray, masks: np.ndarray, is_channels_last: bool,
    baseline: float = 0.0,
) -> np.ndarray:
    """Row ``r``: ``baseline + (images[owners[r]] - baseline) * masks[r]``, in the
    images' dtype.

    ``images`` (n, *input_shape); ``owners`` the rows' images, sorted (runs of
    rows of one image); ``masks`` (m, H, W), broadcast over the channel axis
    wherever the layout puts it.  Each image is read in place, once per run of
    its rows, not gathered into a copy per row first.
    """
    h_axis, w_axis = spatial_axes(images.ndim - 1, is_channels_last)
    shape = [len(masks)] + [1] * (images.ndim - 1)
    shape[1 + h_axis], shape[1 + w_axis] = masks.shape[1:]
    # In the images' precision throughout: no float64 copies of float32 rows.
    masks = masks.astype(images.dtype, copy=False).reshape(shape)
    rows = np.empty((len(masks), *images.shape[1:]), images.dtype)
    base = images.dtype.type(baseline)
    for a, b in owner_runs(owners):
        image = images[owners[a]]
        if baseline == 0:
            np.multiply(image, masks[a:b], out=rows[a:b])
        else:
            np.multiply(image - base, masks[a:b], out=rows[a:b])
            rows[a:b] += base
    return rows
