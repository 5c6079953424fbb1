"""Grad-CAM: class activation maps weighted by pooled layer gradients."""

from __future__ import annotations

import functools

import numpy as np
from skimage.transform import resize as skimage_resize

from ..arrays import channels_last, spatial_axes
from ..checks import check_positive_int
from ..model import CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS, Model
from .base import Method, collect_rows

__all__ = ["GradCAM"]


class GradCAM(Method):
    """Gradient-weighted class activation mapping.

    The map is ``ReLU(sum_k w_k A_k)`` where ``A_k`` are the chosen layer's
    channels and ``w_k`` the spatial mean of the score's gradient with respect
    to them.  The model must return ``CONVOLUTION_LAYER_VALUES`` and
    ``CONVOLUTION_OUTPUT_GRADIENTS`` (adapters do when given ``layer=``).

    Parameters
    ----------
    resize : bool
        Scale each map to [0, 1] by its maximum and resize it (bilinear) to the
        input's height and width, as PAIR ``saliency`` does.  Otherwise return
        the raw layer-resolution map.
    broadcast : bool
        With ``resize``, repeat the map over the input's channels so the result
        is shaped exactly like ``x``.  Otherwise maps are ``(n, H, W)``.
    batch_size : int
        Largest number of inputs per model call.

    References
    ----------
    Selvaraju et al. "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017. https://arxiv.org/abs/1610.02391
    """

    name = "GradCAM"

    def __init__(self, resize: bool = True, broadcast: bool = False, batch_size: int = 32) -> None:
        self.resize = bool(resize)
        self.broadcast = bool(broadcast)
        if self.broadcast and not self.resize:
            raise ValueError("broadcast=True needs resize=True (maps must have the input's size)")
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        is_last = channels_last(model)
        h_axis, w_axis = spatial_axes(x.ndim - 1, is_last)
        out = collect_rows(
            model, x, targets, [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS],
            self.batch_size, self.name,
        )
        cams = class_activation_maps(
            out[CONVOLUTION_LAYER_VALUES], out[CONVOLUTION_OUTPUT_GRADIENTS], is_last
        )
        if not self.resize:
            return cams.astype(x.dtype)
        size = (x.shape[1 + h_axis], x.shape[1 + w_axis])
        maps = resize_maps(normalise_by_max(cams), size)
        if self.broadcast and x.ndim == 4:
            maps = np.broadcast_to(np.expand_dims(maps, 3 if is_last else 1), x.shape)
        return np.ascontiguousarray(maps, dtype=x.dtype)


def class_activation_maps(values: np.ndarray, grads: np.ndarray, is_channels_last: bool):
    """ReLU of the gradient-weighted sum of layer channels, one map per row."""
    if values.ndim != 4 or values.shape != grads.shape:
        raise ValueError(
            "Grad-CAM needs layer values and gradients shaped (n, h, w, channels) or "
            f"(n, channels, h, w), got values {values.shape} and gradients {grads.shape}"
        )
    values, grads = values.astype(np.float64), grads.astype(np.float64)
    if is_channels_last:
        weights = grads.mean(axis=(1, 2))
        cams = np.einsum("nhwk,nk->nhw", values, weights)
    else:
        weights = grads.mean(axis=(2, 3))
        cams = np.einsum("nkhw,nk->nhw", values, weights)
    return np.maximum(cams, 0)


def normalise_by_max(cams: np.ndarray) -> np.ndarray:
    """Divide each map by its maximum when that is positive (all-zero maps stay zero)."""
    peaks = cams.reshape(len(cams), -1).max(axis=1)
    safe = np.where(peaks > 0, peaks, 1.0)
    return cams / safe[:, None, None]


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a stack of 2-D maps (scikit-image's rules, one call)."""
    if maps.shape[1:] == tuple(size):
        return maps
    (h, w), (height, width) = maps.shape[1:], size
    if height < h or width < w:  # downsampling: scikit-image also anti-aliases
        return skimage_resize(maps, (len(maps), *size))
    # Upsampling is separable and linear: two small matrices reproduce
    # scikit-image's bilinear zoom exactly, at a fraction of its cost.
    return _upsampling_matrix(h, height) @ maps @ _upsampling_matrix(w, width).T


@functools.lru_cache(maxsize=16)
def _upsampling_matrix(size: int, new_size: int) -> np.ndarray:
    """Rows: scikit-image's bilinear weights of each output pixel over the inputs."""
    return skimage_resize(np.eye(size), (new_size, size), anti_aliasing=False)
