"""Grad-CAM++: channel weights from positive gradients, each position weighted by
the closed-form coefficients of the paper's second- and third-order terms."""

from __future__ import annotations

import numpy as np

from ..checks import check_nonnegative
from ..numeric import all_finite
from .cam_base import GradientCAMMethod, position_sums, weighted_channel_sum

__all__ = ["GradCAMPlusPlus", "grad_cam_plus_plus_weights"]


class GradCAMPlusPlus(GradientCAMMethod):
    """Grad-CAM++: ``ReLU(sum_k w_k A_k)`` with ``w_k = sum_ij alpha_kij ReLU(g_kij)``.

    ``g`` is the gradient of the score with respect to the layer's channels
    ``A_k``, and ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` at position
    ``(i, j)`` (the paper's Eq. 19, where the score is taken as the
    exponential of the class output so that higher derivatives are powers of
    the first).  Positions with zero gradient get ``alpha = 0``.

    Parameters
    ----------
    eps : float
        Added to the denominator of ``alpha``; 1e-6 as in pytorch-grad-cam, so
        maps agree with it.  0 gives the paper's formula exactly (positions
        whose denominator is 0 then get ``alpha = 0``).
    resize, broadcast, batch_size
        As in :class:`salience.GradCAM`.

    References
    ----------
    Chattopadhyay, Sarkar, Howlader, Balasubramanian. "Grad-CAM++: Improved
    Visual Explanations for Deep Convolutional Networks", WACV 2018.
    https://arxiv.org/abs/1710.11063
    """

    name = "GradCAMPlusPlus"
    title = "Grad-CAM++"

    def __init__(self, eps: float = 1e-6, resize: bool = True, broadcast: bool = False,
                 batch_size: int = 32) -> None:
        super().__init__(resize, broadcast, batch_size)
        self.eps = check_nonnegative(eps, "eps")

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        weights = grad_cam_plus_plus_weights(values, grads, self.eps)
        return np.maximum(weighted_channel_sum(weights, values), 0)


def grad_cam_plus_plus_weights(values: np.ndarray, grads: np.ndarray, eps: float) -> np.ndarray:
    """Channel weights ``(n, k)`` of Grad-CAM++ for ``(n, k, h, w)`` values and gradients:
    ``sum_ab alpha_kab relu(g_kab)`` with ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3 + eps)``
    (0 where ``g = 0`` or the denominator is 0)."""
    channel_sums = position_sums(values)[:, :, None, None]  # sum_ab A_kab
    # Only positive gradients count (relu(g) = 0 elsewhere), so the whole product is
    # written on r = relu(g): r^3 / ((S r + 2) r^2 + eps), the paper's alpha * relu(g)
    # where g > 0 and 0 elsewhere.  In place, one array at a time (a layer of 32 rows is
    # ~1 MB per array): 9 passes over the layer, where the formula on g took 11.
    r = np.maximum(grads, 0)
    r2 = r * r
    denominator = channel_sums * r
    denominator += 2
    denominator *= r2
    denominator += eps
    r2 *= r
    # A plain division (numpy's masked one is element by element); a zero denominator
    # leaves inf or nan, where alpha is 0 by definition.  Any of them makes its
    # channel's sum non-finite: the (n, k) sums are checked, not every quotient.
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient = np.divide(r2, denominator, out=r2)
    weights = position_sums(quotient)
    if not all_finite(weights):
        quotient[denominator == 0] = 0
        weights = position_sums(quotient)
    return weights
