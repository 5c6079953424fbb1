"""Occlusion: how much the score drops when a window of the input is hidden."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..arrays import channels_last, from_channels_last, spatial_axes, to_channels_last
from ..checks import check_positive_int
from ..model import OUTPUT_LAYER_VALUES, Model
from ..schedule import run_rows
from .base import Method

__all__ = ["Occlusion"]


class Occlusion(Method):
    """Slide a ``size x size`` window of constant ``value`` over the image.

    Every pixel gets the sum, over all windows covering it, of the score drop
    ``f(x) - f(x with the window occluded)``, in every channel (PAIR
    ``saliency``'s definition).  Windows start every ``stride`` pixels; the
    occluded copies of all images are sent to the model in chunks of
    ``batch_size``, built only one chunk at a time.

    Parameters
    ----------
    size : int
        Window height and width.
    value : float
        What the window is filled with.
    stride : int
        Distance between window positions (1 = every position, as in PAIR).
    batch_size : int
        Largest number of occluded copies per model call.

    References
    ----------
    Zeiler, Fergus. "Visualizing and Understanding Convolutional Networks",
    ECCV 2014. https://arxiv.org/abs/1311.2901
    """

    name = "Occlusion"

    def __init__(
        self, size: int = 15, value: float = 0, stride: int = 1, batch_size: int = 64
    ) -> None:
        self.size = check_positive_int(size, "size")
        self.value = float(value)
        if not np.isfinite(self.value):
            raise ValueError(f"value must be finite, got {value}")
        self.stride = check_positive_int(stride, "stride")
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        h_axis, w_axis = spatial_axes(x.ndim - 1, channels_last(model))
        height, width = x.shape[1 + h_axis], x.shape[1 + w_axis]
        if self.size > min(height, width):
            raise ValueError(
                f"size={self.size} is larger than the image ({height}x{width}); choose a "
                "window no larger than the image"
            )

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        self._check(model, x)
        is_last = channels_last(model)
        h_axis, w_axis = spatial_axes(x.ndim - 1, is_last)
        height, width = x.shape[1 + h_axis], x.shape[1 + w_axis]
        tops = np.arange(0, height - self.size + 1, self.stride)
        lefts = np.arange(0, width - self.size + 1, self.stride)
        per_image = 1 + len(tops) * len(lefts)  # row 0 of each image is unoccluded
        n = len(x)
        owners = np.arange(n * per_image) // per_image
        scores = np.empty(n * per_image, dtype=np.float64)

        def make_rows(start: int, stop: int) -> np.ndarray:
            index = np.arange(start, stop)
            rows = x[owners[index]]  # a fresh copy, x is never touched
            window = index % per_image - 1
            for r, w in enumerate(window):
                if w < 0:
                    continue
                top, left = tops[w // len(lefts)], lefts[w % len(lefts)]
                box: list[Any] = [r, slice(None), slice(None), slice(None)][: x.ndim]
                box[1 + h_axis] = slice(top, top + self.size)
                box[1 + w_axis] = slice(left, left + self.size)
                rows[tuple(box)] = self.value
            return rows

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            scores[start:stop] = outputs[OUTPUT_LAYER_VALUES]

        run_rows(model, [OUTPUT_LAYER_VALUES], owners, make_rows, consume, targets,
                 self.batch_size, self.name)
        per_row = scores.reshape(n, per_image)
        drops = per_row[:, :1] - per_row[:, 1:]  # (n, windows)
        starts = np.zeros((n, height, width))
        starts[:, tops[:, None], lefts[None, :]] = drops.reshape(n, len(tops), len(lefts))
        heat = _window_sums(starts, self.size)  # (n, H, W)
        maps = np.broadcast_to(heat[..., None], (n, height, width, 1))
        maps = to_channels_last(np.zeros_like(x), is_last) + maps
        return from_channels_last(maps, x.ndim, is_last).astype(x.dtype)


def _window_sums(starts: np.ndarray, size: int) -> np.ndarray:
    """For each pixel, the sum of ``starts`` over windows of ``size`` covering it.

    A window starting at (t, l) covers rows t..t+size-1, so pixel (i, j) sums
    starts[t, l] for i-size < t <= i and j-size < l <= j: a box sum by cumsums.
    """
    padded = np.pad(starts, ((0, 0), (size, 0), (size, 0)))
    c = padded.cumsum(axis=1).cumsum(axis=2)
    return c[:, size:, size:] - c[:, :-size, size:] - c[:, size:, :-size] + c[:, :-size, :-size]
