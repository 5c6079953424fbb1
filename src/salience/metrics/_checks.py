"""Argument checks shared by the metrics: maps, masks, fractions."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._validate import check_finite

__all__ = ["as_map_batch", "as_mask_batch", "check_fraction", "normalise01"]


def as_map_batch(
    saliency: Any, name: str = "saliency", *, channels_last: bool = True, size: tuple | None = None
) -> np.ndarray:
    """Return a batch of 2-D importance maps, shape ``(n, H, W)``, as float64.

    ``(n, H, W)`` maps are taken as they are.  ``(n, H, W, C)`` maps (or
    ``(n, C, H, W)`` with ``channels_last=False``) are summed over the channel
    axis; apply ``abs`` first if the sign should not matter.  NaN or inf values
    raise a ValueError naming the first bad index.  With ``size=(H, W)`` the
    spatial size must match.
    """
    if hasattr(saliency, "detach") and hasattr(saliency, "cpu"):
        saliency = saliency.detach().cpu().numpy()
    arr = np.asarray(saliency)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 4:
        arr = arr.sum(axis=3 if channels_last else 1, dtype=np.float64)
    elif arr.ndim != 3:
        raise ValueError(
            f"{name} must be a batch of maps shaped (n, H, W) or (n, H, W, C), got shape "
            f"{arr.shape}"
        )
    if arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = arr.astype(np.float64)
    check_finite(arr, name)
    if size is not None and tuple(arr.shape[1:]) != tuple(size):
        raise ValueError(
            f"{name} has maps of size {tuple(arr.shape[1:])} but the images are "
            f"{tuple(size)} (height, width)"
        )
    return arr


def as_mask_batch(masks: Any, shape: tuple[int, ...], name: str = "masks") -> np.ndarray:
    """Return boolean masks of exactly ``shape`` ``(n, H, W)``; every mask must be non-empty."""
    if hasattr(masks, "detach") and hasattr(masks, "cpu"):
        masks = masks.detach().cpu().numpy()
    arr = np.asarray(masks)
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


def check_fraction(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A real number in (0, 1] (or [0, 1] with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def normalise01(maps: np.ndarray) -> np.ndarray:
    """Scale each map of a batch to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    out = np.divide(flat - low, span, out=np.zeros_like(flat, dtype=np.float64), where=span > 0)
    return out.reshape(maps.shape)
