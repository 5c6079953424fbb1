"""Guided Grad-CAM: Guided Backprop's fine detail, gated by Grad-CAM's coarse map."""

from __future__ import annotations

import numpy as np

from ..arrays import channels_last, spatial_axes
from ..checks import check_positive_int
from ..model import Model
from .base import Method
from .grad_cam import GradCAM
from .guided_backprop import GuidedBackprop

__all__ = ["GuidedGradCAM", "guided_grad_cam"]


class GuidedGradCAM(Method):
    """The Guided Backprop map multiplied, pixel by pixel, by the Grad-CAM map
    upsampled to the input (scaled to [0, 1] by its maximum).

    Two rows per image: guided input gradients (``GUIDED_INPUT_GRADIENTS``),
    then the layer's values and ordinary gradients for Grad-CAM; they are
    separate model calls because Grad-CAM needs the unguided gradient.  Maps
    are shaped like ``x``.

    Parameters
    ----------
    batch_size : int
        Largest number of inputs per model call.

    References
    ----------
    Selvaraju et al. "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017 (Section 3.1).
    https://arxiv.org/abs/1610.02391
    """

    name = "GuidedGradCAM"

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        guided = GuidedBackprop(self.batch_size)._explain(model, x, targets)
        cams = GradCAM(resize=True, broadcast=True, batch_size=self.batch_size)._explain(
            model, x, targets)
        return guided_grad_cam(guided, cams).astype(x.dtype, copy=False)


def guided_grad_cam(guided: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Guided Backprop maps times Grad-CAM maps of the input's size (element-wise)."""
    return guided * cams
