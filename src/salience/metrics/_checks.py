"""Conversion of the metrics' inputs: batches of maps and of masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import reduce_channels, to_numpy
from ..checks import check_finite

__all__ = ["as_map_batch", "as_mask_batch"]


def as_map_batch(
    saliency: Any, name: str = "saliency", *, channels_last: bool = True,
    size: tuple | None = None, reduction: str = "sum",
) -> np.ndarray:
    """Return a batch of 2-D importance maps, shape ``(n, H, W)``, as float64.

    ``(n, H, W, C)`` maps (or ``(n, C, H, W)`` with ``channels_last=False``)
    have their channels reduced by ``reduction`` (see
    :func:`salience.arrays.reduce_channels`; the default ``"sum"`` keeps the
    sign, ``"abs_sum"``, ``"abs_max"`` or ``"l2"`` make magnitudes);
    ``(n, H, W)`` maps are one channel.  NaN or inf values raise a ValueError
    naming the first bad index.  With ``size=(H, W)`` the spatial size must
    match.
    """
    arr = to_numpy(saliency)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 4:
        arr = reduce_channels(arr.astype(np.float64), reduction, 3 if channels_last else 1)
    elif arr.ndim == 3:
        arr = reduce_channels(arr.astype(np.float64), reduction, None)
    else:
        raise ValueError(
            f"{name} must be a batch of maps shaped (n, H, W) or (n, H, W, C), got shape "
            f"{arr.shape}"
        )
    if arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)  # a copy already (astype above)
    check_finite(arr, name)
    if size is not None and tuple(arr.shape[1:]) != tuple(size):
        raise ValueError(
            f"{name} has maps of size {tuple(arr.shape[1:])} but the images are "
            f"{tuple(size)} (height, width)"
        )
    return arr


def as_mask_batch(masks: Any, shape: tuple[int, ...], name: str = "masks") -> np.ndarray:
    """Return boolean masks of exactly ``shape`` ``(n, H, W)``; every mask must be non-empty."""
    arr = to_numpy(masks)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a boolean or 0/1 array, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{name} has shape {arr.shape} but the saliency maps have shape {tuple(shape)}; "
            "give one (H, W) mask per map"
        )
    if arr.dtype != np.bool_:
        check_finite(arr.astype(np.float64), name)
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 or True/False values")
        arr = arr.astype(bool)
    empty = ~arr.reshape(len(arr), -1).any(axis=1)
    if empty.any():
        raise ValueError(
            f"{name}[{int(np.argmax(empty))}] is empty (no pixel set); every image needs a "
            "non-empty region to compare with"
        )
    return arr

