"""Eigen-CAM: the layer's activations projected on their first principal component."""

from __future__ import annotations

import numpy as np

from ..model import CONVOLUTION_LAYER_VALUES
from ..numeric import ONE_THREAD_PRODUCT, one_blas_thread_unless, top_eigenpairs
from .cam_base import CAMMethod, position_sums

__all__ = ["EigenCAM", "principal_projection"]


class EigenCAM(CAMMethod):
    """``ReLU`` of each position's activation vector projected on the first
    principal direction of all positions' activation vectors.

    Needs no gradients and no target: the map shows the layer's dominant
    pattern, whatever class is asked for.  The positions' vectors are
    centred before the singular value decomposition.  The sign of a singular
    vector is arbitrary; here it is chosen so that the projection rises with
    the total activation of a position (its sum over channels), so strongly
    activated regions come out positive.

    Parameters
    ----------
    resize, broadcast, batch_size
        As in :class:`salience.GradCAM`.

    References
    ----------
    Muhammad, Yeasin. "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020. https://arxiv.org/abs/2008.00299
    """

    name = "EigenCAM"
    title = "Eigen-CAM"
    keys = (CONVOLUTION_LAYER_VALUES,)

    def _layer_maps(self, values: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        return np.maximum(principal_projection(values), 0)


def principal_projection(values: np.ndarray) -> np.ndarray:
    """Each position's centred activations projected on the first right singular
    vector, with the sign rule of :class:`EigenCAM`; ``(n, h, w)``.

    The singular vector comes from the eigendecomposition of the smaller Gram
    matrix (positions x positions, or channels x channels): the same
    projection as a singular value decomposition, at a fraction of its cost
    for a wide layer such as 7 x 7 positions of 1280 channels.
    """
    n, k, h, w = values.shape
    positions = values.reshape(n, k, h * w).transpose(0, 2, 1)  # (n, positions, channels)
    # Means and totals as matrix-vector products, which run at the same speed in
    # either memory order of the layer (numpy's sums along a short axis do not).
    centred = positions - (position_sums(values) / (h * w))[:, None, :]
    smaller, larger = sorted((h * w, k))
    # The Gram product is the largest; the top eigenpair of a small symmetric matrix
    # never wakes BLAS threads, which would only contend with the model's.
    with one_blas_thread_unless(smaller * smaller * larger < ONE_THREAD_PRODUCT):
        if h * w <= k:
            # centred @ v1 = s1 * u1, and u1 is the top eigenvector of centred @ centred.T
            eigenvalue, u1 = top_eigenpairs(centred @ centred.transpose(0, 2, 1))
            projection = u1 * np.sqrt(np.maximum(eigenvalue, 0))[:, None]
        else:
            _, v1 = top_eigenpairs(centred.transpose(0, 2, 1) @ centred)
            projection = np.matmul(centred, v1[:, :, None])[:, :, 0]
        # Sign: positive correlation with each position's centred total activation.
        totals = centred @ np.ones(k, dtype=centred.dtype)
    flip = np.einsum("np,np->n", projection, totals) < 0
    projection[flip] *= -1
    return projection.reshape(n, h, w)
