"""Grad-CAM: class activation maps weighted by pooled layer gradients."""

from __future__ import annotations

import numpy as np

from .cam_base import GradientCAMMethod, position_sums, weighted_channel_sum

__all__ = ["GradCAM", "grad_cam_weights"]


class GradCAM(GradientCAMMethod):
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
    title = "Grad-CAM"

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return np.maximum(weighted_channel_sum(grad_cam_weights(grads), values), 0)


def grad_cam_weights(grads: np.ndarray) -> np.ndarray:
    """Grad-CAM's channel weights: the gradient averaged over positions, ``(n, k)``."""
    return position_sums(grads) / (grads.shape[2] * grads.shape[3])

