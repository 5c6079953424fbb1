"""Vanilla gradients."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..checks import check_positive_int
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from .base import Method, collect_rows

__all__ = ["Gradients"]


class Gradients(Method):
    """The gradient of the explained score with respect to the input.

    Parameters
    ----------
    batch_size : int
        Largest number of inputs per model call.

    References
    ----------
    Simonyan, Vedaldi, Zisserman. "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", 2013.
    https://arxiv.org/abs/1312.6034
    """

    name = "Gradients"
    #: The model output this method returns (Guided Backprop asks for another).
    key = INPUT_OUTPUT_GRADIENTS

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        outputs = collect_rows(model, x, targets, [self.key], self.batch_size, self.name)
        return self._row_maps(x, outputs).astype(x.dtype, copy=False)

    def _row_keys(self) -> list[str] | None:
        # A subclass with its own _explain makes its maps its own way: no row maps.
        return [self.key] if type(self)._explain is Gradients._explain else None

    def _row_maps(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return outputs[self.key]
