"""PAIR ``saliency.core.GuidedIG``, translated onto :class:`salience.GuidedIG`."""

from __future__ import annotations

import numpy as np

from ..methods.guided_ig import GuidedIG as _GuidedIG
from .base import CoreSaliency, run_method

__all__ = ["GuidedIG"]


class GuidedIG(CoreSaliency):
    """Guided Integrated Gradients; see :class:`salience.GuidedIG`.

    ``x_baseline`` must have ``x_value``'s shape (None means zeros).  The
    model gets one row per path step, as in PAIR.  Works on numpy >= 2 (PAIR
    0.2.1 fails there) and never loops forever (see the method's docs for the
    two corner cases where PAIR hangs or asserts).  Returns float64, as PAIR.
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None, x_baseline=None,
                x_steps=200, fraction=0.25, max_dist=0.02):
        if x_baseline is not None:
            x_baseline = np.asarray(x_baseline)[None]  # one baseline for the one input
        method = _GuidedIG(steps=x_steps, fraction=fraction, max_dist=max_dist,
                           baseline=x_baseline, batch_size=1)
        return run_method(method, x_value, call_model_function, call_model_args)
