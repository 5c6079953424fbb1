"""PAIR ``saliency.core`` methods: argument translation onto batch-first methods.

Each class keeps PAIR's name, ``GetMask`` signature and defaults, and calls
``call_model_function`` as PAIR does (rows per call, order, keys); the
documentation of each parameter lives on the batch-first class named in the
docstring.
"""

from __future__ import annotations

import numpy as np

from ..methods import BlurIG as _BlurIG
from ..methods import GradCAM as _GradCAM
from ..methods import Gradients as _Gradients
from ..methods import IntegratedGradients as _IntegratedGradients
from ..methods import Occlusion as _Occlusion
from .base import CoreSaliency, run_method

__all__ = ["GradientSaliency", "IntegratedGradients", "BlurIG", "Occlusion", "GradCam"]


class GradientSaliency(CoreSaliency):
    """Vanilla gradients; see :class:`salience.Gradients`."""

    def GetMask(self, x_value, call_model_function, call_model_args=None):
        return run_method(_Gradients(batch_size=1), x_value, call_model_function,
                          call_model_args)


class IntegratedGradients(CoreSaliency):
    """Integrated Gradients; see :class:`salience.IntegratedGradients`.

    ``x_baseline`` must have ``x_value``'s shape (None means zeros).
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None, x_baseline=None,
                x_steps=25, batch_size=1):
        if x_baseline is not None:
            x_baseline = np.asarray(x_baseline)[None]  # one baseline for the one input
        method = _IntegratedGradients(steps=x_steps, baseline=x_baseline, batch_size=batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)


class BlurIG(CoreSaliency):
    """Blur IG; see :class:`salience.BlurIG`.

    Differs from PAIR ``saliency`` 0.2.1 where PAIR is wrong: with
    ``sqrt=True`` and ``batch_size > 1`` PAIR weights every point of a model
    batch by the last point's sigma step; here each point has its own weight.
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None, max_sigma=50,
                steps=100, grad_step=0.01, sqrt=False, batch_size=1):
        method = _BlurIG(max_sigma=max_sigma, steps=steps, grad_step=grad_step, sqrt=sqrt,
                         batch_size=batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)


class Occlusion(CoreSaliency):
    """Occlusion; see :class:`salience.Occlusion`.

    As PAIR, ``call_model_function`` gets one row per call: the input, then
    each occluded copy, window by window along rows.  ``batch_size`` is a
    salience extension (not in PAIR): up to that many of these rows per call,
    in the same order, with the same result.
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None, size=15, value=0,
                batch_size=1):
        method = _Occlusion(size=size, value=value, batch_size=batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)


class GradCam(CoreSaliency):
    """Grad-CAM; see :class:`salience.GradCAM`.

    ``should_resize`` scales the map to [0, 1] and resizes it to the input;
    ``three_dims`` repeats it over 3 channels, as PAIR does.
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None, should_resize=True,
                three_dims=True):
        method = _GradCAM(resize=should_resize, batch_size=1)
        cam = run_method(method, x_value, call_model_function, call_model_args)
        return np.repeat(cam[..., None], 3, axis=-1) if three_dims else cam
