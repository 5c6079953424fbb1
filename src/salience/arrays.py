"""Array conversion and image layout, shared by methods, metrics and the report.

One ``to_numpy`` for anything array-like (numpy, torch tensors on any device,
TensorFlow and JAX arrays), and the helpers that move between a model's layout
(channels first or last, gray images without a channel axis) and the
``(n, H, W, C)`` layout the image methods compute in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "channels_last",
    "from_channels_last",
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
