"""Array conversion and image layout, shared by methods, metrics and the report.

One ``to_numpy`` for anything array-like (numpy, torch tensors on any device,
TensorFlow and JAX arrays), the helpers that move between a model's layout
(channels first or last, gray images without a channel axis) and the
``(n, H, W, C)`` layout the image methods compute in, and
:func:`reduce_channels`, the one place where a map's channels become one value
per pixel (for display, metrics and region ranking).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "REDUCTIONS",
    "SIGNED_REDUCTIONS",
    "channels_last",
    "from_channels_last",
    "reduce_channels",
    "spatial_axes",
    "to_channels_last",
    "to_numpy",
    "working_dtype",
]


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor is detached and moved to the CPU first
    (TensorFlow and JAX arrays convert through ``np.asarray`` by themselves)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def working_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; everything else (uint8, int, float16) becomes float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def channels_last(model: Any) -> bool:
    """The model's layout; PAIR callbacks and plain callables are channels last."""
    return bool(getattr(model, "channels_last", True))


def spatial_axes(input_ndim: int, is_channels_last: bool) -> tuple[int, int]:
    """Axes of height and width within one input (no batch axis).

    A 2-D input is (H, W); a 3-D input is (H, W, C) or (C, H, W).
    """
    if input_ndim == 2:
        return (0, 1)
    if input_ndim == 3:
        return (0, 1) if is_channels_last else (1, 2)
    raise ValueError(
        f"this method needs images shaped (H, W), (H, W, C) or (C, H, W); got inputs with "
        f"{input_ndim} dimensions per item"
    )


def to_channels_last(batch: np.ndarray, is_channels_last: bool) -> np.ndarray:
    """View a batch of images as (n, H, W, C) (a 2-D image gets C = 1)."""
    if batch.ndim == 3:
        return batch[..., None]
    if batch.ndim == 4:
        return batch if is_channels_last else np.moveaxis(batch, 1, -1)
    raise ValueError(
        f"expected a batch of images (n, H, W), (n, H, W, C) or (n, C, H, W), got shape "
        f"{batch.shape}"
    )


def from_channels_last(batch: np.ndarray, like_ndim: int, is_channels_last: bool) -> np.ndarray:
    """Inverse of :func:`to_channels_last`; ``like_ndim`` is the original batch's ndim."""
    if like_ndim == 3:
        return batch[..., 0]
    return batch if is_channels_last else np.moveaxis(batch, -1, 1)


#: How :func:`reduce_channels` turns a map's channels into one value per pixel.
REDUCTIONS = {
    "sum": "the signed sum over channels (keeps the sign)",
    "abs_sum": "the sum of absolute values over channels (PAIR's VisualizeImageGrayscale)",
    "abs_max": "the largest absolute value over channels (Xplique's attribution maps)",
    "l2": "the Euclidean norm over channels",
    "max": "the largest signed value over channels (PAIR's XRAI ranking)",
}
#: The reductions whose result keeps the map's sign (the others are magnitudes).
SIGNED_REDUCTIONS = ("sum", "max")


def reduce_channels(maps: Any, how: str = "sum", channel_axis: int | None = -1) -> np.ndarray:
    """Reduce the channel axis of attribution maps to one value per pixel.

    Parameters
    ----------
    maps : array_like
        One map or a batch, e.g. ``(n, H, W, C)`` or ``(n, C, H, W)``, as
        numpy or any array :func:`to_numpy` converts.
    how : {'sum', 'abs_sum', 'abs_max', 'l2', 'max'}
        ``'sum'``: ``sum_c m_c``; ``'abs_sum'``: ``sum_c |m_c|`` (PAIR's
        grayscale visualisation); ``'abs_max'``: ``max_c |m_c|`` (Xplique);
        ``'l2'``: ``sqrt(sum_c m_c^2)``; ``'max'``: ``max_c m_c`` (PAIR's XRAI).
        See :data:`REDUCTIONS`.
    channel_axis : int or None
        The channel axis of ``maps``.  None: the maps have no channel axis
        (one channel), so they keep their shape and only the reduction's
        treatment of one value applies (``|m|`` for ``'abs_sum'``,
        ``'abs_max'`` and ``'l2'``; ``m`` itself for ``'sum'`` and ``'max'``).

    Returns
    -------
    ndarray
        ``maps`` without the channel axis, in the maps' float dtype (float64
        for integer maps).
    """
    from .checks import check_reduction  # checks imports this module

    how = check_reduction(how)
    arr = to_numpy(maps)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if channel_axis is None:
        return np.abs(arr) if how in ("abs_sum", "abs_max", "l2") else arr
    if not -arr.ndim <= channel_axis < arr.ndim:
        raise ValueError(
            f"channel_axis={channel_axis} is out of range for maps of shape {arr.shape}"
        )
    if how == "sum":
        return arr.sum(axis=channel_axis)
    if how == "abs_sum":
        return np.abs(arr).sum(axis=channel_axis)
    if how == "abs_max":
        return np.abs(arr).max(axis=channel_axis)
    if how == "l2":
        return np.sqrt(np.square(arr).sum(axis=channel_axis))
    return arr.max(axis=channel_axis)
