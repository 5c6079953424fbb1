"""Layer-CAM: activations weighted position by position by their positive gradients."""

from __future__ import annotations

import numpy as np

from .cam_base import GradientCAMMethod

__all__ = ["LayerCAM", "layer_cam"]


class LayerCAM(GradientCAMMethod):
    """``ReLU(sum_k ReLU(g_k) * A_k)``.

    Every position of every channel is weighted by its own positive gradient,
    which keeps fine detail and so also works on shallow, high-resolution
    layers.

    Parameters
    ----------
    resize, broadcast, batch_size
        As in :class:`salience.GradCAM`.

    References
    ----------
    Jiang, Zhang, Hou, Cheng, Wei. "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization", IEEE TIP 30, 2021.
    https://doi.org/10.1109/TIP.2021.3089943
    """

    name = "LayerCAM"
    title = "Layer-CAM"

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return np.maximum(layer_cam(values, grads), 0)


def layer_cam(values: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """``sum_k ReLU(g_k) * A_k`` (before the final ReLU), ``(n, h, w)``."""
    return np.einsum("nkhw,nkhw->nhw", np.maximum(grads, 0), values)
