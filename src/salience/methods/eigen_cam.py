"""Eigen-CAM: the layer's activations projected on their first principal component."""

from __future__ import annotations

import numpy as np

from ..model import CONVOLUTION_LAYER_VALUES
from .cam_base import CAMMethod

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
    vector, with the sign rule of :class:`EigenCAM`; ``(n, h, w)``."""
    n, k, h, w = values.shape
    positions = values.reshape(n, k, h * w).transpose(0, 2, 1)  # (n, positions, channels)
    centred = positions - positions.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    direction = vt[:, 0, :]  # (n, k)
    # projection . (centred channel sums) = s1^2 * sum(direction): make that >= 0
    direction = direction * np.where(direction.sum(axis=1) < 0, -1.0, 1.0)[:, None]
    return np.matmul(centred, direction[:, :, None])[:, :, 0].reshape(n, h, w)
