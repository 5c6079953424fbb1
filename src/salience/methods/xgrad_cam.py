"""XGrad-CAM: channel weights from gradients averaged with the activations as weights."""

from __future__ import annotations

import numpy as np

from ..checks import check_nonnegative
from .cam_base import GradientCAMMethod, position_sums, weighted_channel_sum

__all__ = ["XGradCAM", "xgrad_cam_weights"]


class XGradCAM(GradientCAMMethod):
    """Axiom-based Grad-CAM: ``ReLU(sum_k w_k A_k)`` with
    ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij``.

    Each channel's weight is its gradient averaged over positions with the
    channel's own activations as weights (the paper's Eq. 14, which makes the
    map satisfy its sensitivity and conservation axioms as well as possible
    for a linear combination of channels).

    Parameters
    ----------
    eps : float
        Added to each channel's activation sum before dividing; 1e-7 as in
        pytorch-grad-cam, so maps agree with it.  Channels whose sum (plus
        ``eps``) is 0 get weight 0.
    resize, broadcast, batch_size
        As in :class:`salience.GradCAM`.

    References
    ----------
    Fu, Hu, Dong, Guo, Gao, Li. "Axiom-based Grad-CAM: Towards Accurate
    Visualization and Explanation of CNNs", BMVC 2020.
    https://arxiv.org/abs/2008.02312
    """

    name = "XGradCAM"
    title = "XGrad-CAM"

    def __init__(self, eps: float = 1e-7, resize: bool = True, broadcast: bool = False,
                 batch_size: int = 32) -> None:
        super().__init__(resize, broadcast, batch_size)
        self.eps = check_nonnegative(eps, "eps")

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        weights = xgrad_cam_weights(values, grads, self.eps)
        return np.maximum(weighted_channel_sum(weights, values), 0)


def xgrad_cam_weights(values: np.ndarray, grads: np.ndarray, eps: float) -> np.ndarray:
    """Channel weights ``(n, k)`` of XGrad-CAM for ``(n, k, h, w)`` values and gradients."""
    channel_sums = position_sums(values) + eps
    weighted = position_sums(values * grads)
    return np.divide(weighted, channel_sums, out=np.zeros_like(weighted),
                     where=channel_sums != 0)
