"""HiResCAM: the element-wise product of gradients and activations, summed over channels."""

from __future__ import annotations

import numpy as np

from .cam_base import GradientCAMMethod

__all__ = ["HiResCAM", "hires_cam"]


class HiResCAM(GradientCAMMethod):
    """``ReLU(sum_k g_k * A_k)``: each position keeps its own gradient.

    Grad-CAM averages the gradient over positions before weighting the
    channels; HiResCAM multiplies position by position, so for a model whose
    score is a linear function of the layer (global average pooling and one
    dense layer) the map sums exactly to the score minus its bias.

    Parameters
    ----------
    resize, broadcast, batch_size
        As in :class:`salience.GradCAM`.

    References
    ----------
    Draelos, Carin. "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks", 2020.
    https://arxiv.org/abs/2011.08891
    """

    name = "HiResCAM"
    title = "HiResCAM"

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return np.maximum(hires_cam(values, grads), 0)


def hires_cam(values: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """``sum_k g_k * A_k`` (before the ReLU), ``(n, h, w)``."""
    return np.einsum("nkhw,nkhw->nhw", grads, values)
