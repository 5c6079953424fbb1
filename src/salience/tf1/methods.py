"""PAIR ``saliency.tf1`` methods: each runs the matching :mod:`salience.core`
method (and through it the batch-first method) on a TF1 graph.

Parameters are documented on the batch-first classes named in each docstring;
``feed_dict`` holds extra values for ``session.run`` (``x`` is fed by the
method).
"""

from __future__ import annotations

from typing import Any

from .. import core
from ..core.base import CoreSaliency, batched, run_method
from ..methods.guided_backprop import GuidedBackprop as _GuidedBackprop
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
)
from .base import TF1CoreSaliency, _core_method

__all__ = [
    "GradientSaliency",
    "IntegratedGradients",
    "BlurIG",
    "GuidedIG",
    "XRAI",
    "Occlusion",
    "GradCam",
    "GuidedBackprop",
]


class GradientSaliency(TF1CoreSaliency):
    """Vanilla gradients; see :class:`salience.Gradients`.

    ``GetSmoothedMask`` sends the noisy samples to the session together (up
    to ``batch_size``, default 32) when ``x`` and ``y`` have a None batch
    dimension, one at a time otherwise.
    """

    _core_class = core.GradientSaliency
    _keys = (INPUT_OUTPUT_GRADIENTS,)

    @batched
    def GetMask(self, x_value, feed_dict=None):
        return self.core_instance.GetMask(x_value, self.call_model_function,
                                          call_model_args=feed_dict)

    def _smoothing_kwargs(self, kwargs):
        return {"batch_size": self._default_batch_size(32), **kwargs}


class IntegratedGradients(TF1CoreSaliency):
    """Integrated Gradients; see :class:`salience.IntegratedGradients`."""

    _core_class = core.IntegratedGradients
    _keys = (INPUT_OUTPUT_GRADIENTS,)

    @batched
    def GetMask(self, x_value, feed_dict=None, x_baseline=None, x_steps=25, batch_size=1):
        self.validate_xy_tensor_shape(x_steps, batch_size)
        return self.core_instance.GetMask(
            x_value, self.call_model_function, call_model_args=feed_dict,
            x_baseline=x_baseline, x_steps=x_steps, batch_size=batch_size,
        )

    def _check_smoothing(self, kwargs):
        self.validate_xy_tensor_shape(kwargs.get("x_steps", 25), kwargs.get("batch_size", 1))


class BlurIG(TF1CoreSaliency):
    """Blur IG; see :class:`salience.BlurIG` (and :class:`salience.core.BlurIG` for
    where it differs from PAIR when ``sqrt=True`` and ``batch_size > 1``)."""

    _core_class = core.BlurIG
    _keys = (INPUT_OUTPUT_GRADIENTS,)

    @batched
    def GetMask(self, x_value, feed_dict=None, max_sigma=50, steps=100, grad_step=0.01,
                sqrt=False, batch_size=1):
        self.validate_xy_tensor_shape(steps, batch_size)
        return self.core_instance.GetMask(
            x_value, self.call_model_function, call_model_args=feed_dict,
            max_sigma=max_sigma, steps=steps, grad_step=grad_step, sqrt=sqrt,
            batch_size=batch_size,
        )

    def _check_smoothing(self, kwargs):
        self.validate_xy_tensor_shape(kwargs.get("steps", 100), kwargs.get("batch_size", 1))


class GuidedIG(TF1CoreSaliency):
    """Guided Integrated Gradients; see :class:`salience.core.GuidedIG`."""

    _core_class = "GuidedIG"
    _keys = (INPUT_OUTPUT_GRADIENTS,)

    @batched
    def GetMask(self, x_value, feed_dict=None, x_baseline=None, x_steps=200, fraction=0.25,
                max_dist=0.02):
        return self.core_instance.GetMask(
            x_value, self.call_model_function, call_model_args=feed_dict,
            x_baseline=x_baseline, x_steps=x_steps, fraction=fraction, max_dist=max_dist,
        )


class XRAI(TF1CoreSaliency):
    """XRAI; see :class:`salience.core.XRAI`."""

    _core_class = "XRAI"
    _keys = (INPUT_OUTPUT_GRADIENTS,)

    @batched
    def GetMask(self, x_value, feed_dict=None, baselines=None, segments=None,
                base_attribution=None, batch_size=1, extra_parameters=None):
        self._validate_steps(batch_size, extra_parameters)
        return self.core_instance.GetMask(
            x_value, call_model_function=self.call_model_function, call_model_args=feed_dict,
            baselines=baselines, segments=segments, base_attribution=base_attribution,
            batch_size=batch_size, extra_parameters=extra_parameters,
        )

    def GetMaskWithDetails(self, x_value, feed_dict=None, baselines=None, segments=None,
                           base_attribution=None, batch_size=1, extra_parameters=None):
        """As ``GetMask``, returning an ``XRAIOutput`` with the intermediate results."""
        self._validate_steps(batch_size, extra_parameters)
        return self.core_instance.GetMaskWithDetails(
            x_value, call_model_function=self.call_model_function, call_model_args=feed_dict,
            baselines=baselines, segments=segments, base_attribution=base_attribution,
            batch_size=batch_size, extra_parameters=extra_parameters,
        )

    def _validate_steps(self, batch_size, extra_parameters):
        if extra_parameters is None:
            extra_parameters = _core_method("XRAIParameters")()
        self.validate_xy_tensor_shape(extra_parameters.steps, batch_size)

    def _check_smoothing(self, kwargs):
        self._validate_steps(kwargs.get("batch_size", 1), kwargs.get("extra_parameters"))


class Occlusion(TF1CoreSaliency):
    """Occlusion; see :class:`salience.Occlusion`.

    ``batch_size`` (not in PAIR) is how many occluded copies go to the session
    at once; None means 64 when ``x`` and ``y`` have a None batch dimension and
    1 otherwise.
    """

    _core_class = core.Occlusion
    _keys = ()

    @batched
    def GetMask(self, x_value, feed_dict=None, size=15, value=0, batch_size=None):
        return self.core_instance.GetMask(
            x_value, self.call_model_function, call_model_args=feed_dict, size=size,
            value=value, batch_size=self._batch_size(batch_size),
        )

    def _batch_size(self, batch_size):
        return self._default_batch_size(64) if batch_size is None else batch_size

    def _smoothing_kwargs(self, kwargs):
        return {**kwargs, "batch_size": self._batch_size(kwargs.get("batch_size"))}


class GradCam(TF1CoreSaliency):
    """Grad-CAM on the activations ``conv_layer``; see :class:`salience.GradCAM`."""

    _core_class = core.GradCam
    _keys = (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any, conv_layer: Any) -> None:
        super().__init__(graph, session, y, x, conv_layer)

    @batched
    def GetMask(self, x_value, feed_dict=None, should_resize=True, three_dims=True):
        return self.core_instance.GetMask(
            x_value, self.call_model_function, call_model_args=feed_dict,
            should_resize=should_resize, three_dims=three_dims,
        )


class _CoreGuidedBackprop(CoreSaliency):
    # salience.core has no Guided Backprop (PAIR's core has none); this private
    # translation lets the TF1 class share the core machinery (batched SmoothGrad).
    @batched
    def GetMask(self, x_value, call_model_function, call_model_args=None):
        return run_method(self._method(), x_value, call_model_function, call_model_args)

    def _method(self, batch_size=1):
        return _GuidedBackprop(batch_size=batch_size)


class GuidedBackprop(GradientSaliency):
    """Guided Backprop on the graph; see :class:`salience.GuidedBackprop`.

    The guided gradient ops are added to the graph once, when the object is
    built: the graph's ``Relu`` and ``Relu6`` ops get the guided backward rule
    for that one ``tf.gradients`` call and keep their usual gradient for
    everything else.  Unlike PAIR, the graph is neither copied nor saved to a
    checkpoint (``tmp_ckpt_path`` is accepted and ignored), the session's
    current variable values are used, and ``Relu6`` is guided too (PAIR only
    changes ``Relu``).

    ``GetSmoothedMask`` sends the noisy samples to the session together (up
    to ``batch_size``, default 32) when ``x`` and ``y`` have a None batch
    dimension.

    References
    ----------
    Springenberg, Dosovitskiy, Brox, Riedmiller. "Striving for Simplicity: The
    All Convolutional Net", 2014. https://arxiv.org/abs/1412.6806
    """

    _core_class = _CoreGuidedBackprop
    _keys = (GUIDED_INPUT_GRADIENTS,)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any,
                 tmp_ckpt_path: str | None = None) -> None:
        super().__init__(graph, session, y, x)
