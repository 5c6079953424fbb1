"""Input x Gradient: each input value times the score's gradient with respect to it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .gradients import Gradients

__all__ = ["InputXGradient"]


class InputXGradient(Gradients):
    """``x * d score / d x``: the first-order (Taylor) share of each input value in
    the score; for a linear model it is exactly each term of the sum.

    Parameters
    ----------
    batch_size : int
        Largest number of inputs per model call.

    References
    ----------
    Shrikumar, Greenside, Shcherbina, Kundaje. "Not Just a Black Box: Learning
    Important Features Through Propagating Activation Differences", 2016.
    https://arxiv.org/abs/1605.01713
    """

    name = "InputXGradient"

    def _row_maps(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return rows * outputs[self.key].astype(rows.dtype, copy=False)
