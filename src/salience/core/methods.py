"""PAIR ``saliency.core`` methods: argument translation onto batch-first methods.

Each class keeps PAIR's name, ``GetMask`` signature and defaults; the
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
from .base import CoreSaliency, batched, run_method

__all__ = ["GradientSaliency", "IntegratedGradients", "BlurIG", "Occlusion", "GradCam"]


class GradientSaliency(CoreSaliency):
    """Vanilla gradients; see :class:`salience.Gradients`."""

    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None):
        return run_method(self._method(), x_value, call_model_function, call_model_args)

    def _method(self, batch_size=1):
        return _Gradients(batch_size=batch_size)


class IntegratedGradients(CoreSaliency):
    """Integrated Gradients; see :class:`salience.IntegratedGradients`.

    ``x_baseline`` must have ``x_value``'s shape (None means zeros).
    """

    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None, x_baseline=None,
                x_steps=25, batch_size=1):
        method = self._method(x_baseline=x_baseline, x_steps=x_steps, batch_size=batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)

    def _method(self, x_baseline=None, x_steps=25, batch_size=1):
        if x_baseline is not None:
            x_baseline = np.asarray(x_baseline)[None]  # one baseline for the one input
        return _IntegratedGradients(steps=x_steps, baseline=x_baseline, batch_size=batch_size)


class BlurIG(CoreSaliency):
    """Blur IG; see :class:`salience.BlurIG`.

    Differs from PAIR ``saliency`` 0.2.1 where PAIR is wrong: with
    ``sqrt=True`` and ``batch_size > 1`` PAIR weights every point of a model
    batch by the last point's sigma step; here each point has its own weight.
    """

    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None, max_sigma=50,
                steps=100, grad_step=0.01, sqrt=False, batch_size=1):
        method = self._method(max_sigma, steps, grad_step, sqrt, batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)

    def _method(self, max_sigma=50, steps=100, grad_step=0.01, sqrt=False, batch_size=1):
        return _BlurIG(max_sigma=max_sigma, steps=steps, grad_step=grad_step, sqrt=sqrt,
                       batch_size=batch_size)


class Occlusion(CoreSaliency):
    """Occlusion; see :class:`salience.Occlusion`.

    ``batch_size`` (not in PAIR) sets how many occluded copies go to
    ``call_model_function`` at once; PAIR sends them one by one.
    """

    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None, size=15, value=0,
                batch_size=64):
        method = self._method(size=size, value=value, batch_size=batch_size)
        return run_method(method, x_value, call_model_function, call_model_args)

    def _method(self, size=15, value=0, batch_size=64):
        return _Occlusion(size=size, value=value, batch_size=batch_size)


class GradCam(CoreSaliency):
    """Grad-CAM; see :class:`salience.GradCAM`.

    ``should_resize`` scales the map to [0, 1] and resizes it to the input;
    ``three_dims`` repeats it over 3 channels, as PAIR does.
    """

    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None, should_resize=True,
                three_dims=True):
        method = self._method(should_resize=should_resize)
        cam = run_method(method, x_value, call_model_function, call_model_args)
        return np.repeat(cam[..., None], 3, axis=-1) if three_dims else cam

    def GetSmoothedMask(self, x_value, call_model_function, call_model_args=None,
                        stdev_spread=0.15, nsamples=25, magnitude=True, **kwargs):
        if not getattr(type(self).GetMask, "_salience_batched", False):
            return super().GetSmoothedMask(x_value, call_model_function, call_model_args,
                                           stdev_spread, nsamples, magnitude, **kwargs)
        # Smooth the 2-D map, then repeat it over 3 channels like GetMask does.
        three_dims = kwargs.pop("three_dims", True)
        cam = super().GetSmoothedMask(x_value, call_model_function, call_model_args,
                                      stdev_spread, nsamples, magnitude, **kwargs)
        return np.repeat(cam[..., None], 3, axis=-1) if three_dims else cam

    def _method(self, should_resize=True, three_dims=True):
        return _GradCAM(resize=should_resize, batch_size=1)
