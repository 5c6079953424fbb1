"""PAIR ``saliency.tf1`` methods: each runs the matching :mod:`salience.core`
method (and through it the batch-first method) on a TF1 graph.

Signatures are the core ones with ``feed_dict`` (extra values for
``session.run``; ``x`` is fed by the method) in place of the callback and
its arguments (:func:`~salience.tf1.base.on_graph`); the options are
documented on the core classes and the batch-first classes they name.
"""

from __future__ import annotations

from typing import Any

from .. import core
from ..core.base import CoreSaliency, run_method
from ..methods.guided_backprop import GuidedBackprop as _GuidedBackprop
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
)
from .base import TF1CoreSaliency, on_graph

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
    """Vanilla gradients; see :class:`salience.core.GradientSaliency`."""

    core_class = core.GradientSaliency
    keys = (INPUT_OUTPUT_GRADIENTS,)
    GetMask = on_graph(core.GradientSaliency.GetMask)


class IntegratedGradients(TF1CoreSaliency):
    """Integrated Gradients; see :class:`salience.core.IntegratedGradients`."""

    core_class = core.IntegratedGradients
    keys = (INPUT_OUTPUT_GRADIENTS,)
    GetMask = on_graph(core.IntegratedGradients.GetMask)

    def _check_arguments(self, options):
        self.validate_xy_tensor_shape(options["x_steps"], options["batch_size"])


class BlurIG(TF1CoreSaliency):
    """Blur IG; see :class:`salience.core.BlurIG` (also for where it differs from PAIR
    when ``sqrt=True`` and ``batch_size > 1``)."""

    core_class = core.BlurIG
    keys = (INPUT_OUTPUT_GRADIENTS,)
    GetMask = on_graph(core.BlurIG.GetMask)

    def _check_arguments(self, options):
        self.validate_xy_tensor_shape(options["steps"], options["batch_size"])


class GuidedIG(TF1CoreSaliency):
    """Guided Integrated Gradients; see :class:`salience.core.GuidedIG`."""

    core_class = core.GuidedIG
    keys = (INPUT_OUTPUT_GRADIENTS,)
    GetMask = on_graph(core.GuidedIG.GetMask)


class XRAI(TF1CoreSaliency):
    """XRAI; see :class:`salience.core.XRAI`."""

    core_class = core.XRAI
    keys = (INPUT_OUTPUT_GRADIENTS,)
    GetMask = on_graph(core.XRAI.GetMask)
    GetMaskWithDetails = on_graph(core.XRAI.GetMaskWithDetails)

    def _check_arguments(self, options):
        params = options["extra_parameters"]
        steps = (core.XRAIParameters() if params is None else params).steps
        self.validate_xy_tensor_shape(steps, options["batch_size"])


class Occlusion(TF1CoreSaliency):
    """Occlusion; see :class:`salience.core.Occlusion`: one occluded copy per
    ``session.run`` as in PAIR, or up to ``batch_size`` (a salience extension)."""

    core_class = core.Occlusion
    keys = ()  # y itself
    GetMask = on_graph(core.Occlusion.GetMask)


class GradCam(TF1CoreSaliency):
    """Grad-CAM on the activations ``conv_layer``; see :class:`salience.core.GradCam`."""

    core_class = core.GradCam
    keys = (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS)
    GetMask = on_graph(core.GradCam.GetMask)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any, conv_layer: Any) -> None:
        super().__init__(graph, session, y, x, conv_layer)


class _CoreGuidedBackprop(CoreSaliency):
    # salience.core has no Guided Backprop (PAIR's core has none); this private
    # translation lets the TF1 class run like the others.
    def GetMask(self, x_value, call_model_function, call_model_args=None):
        return run_method(_GuidedBackprop(batch_size=1), x_value, call_model_function,
                          call_model_args)


class GuidedBackprop(TF1CoreSaliency):
    """Guided Backprop on the graph; see :class:`salience.GuidedBackprop`.

    The guided gradient ops are added to the graph once, when the object is
    built: the graph's ``Relu`` and ``Relu6`` ops get the guided backward rule
    for that one ``tf.gradients`` call and keep their usual gradient for
    everything else.  Unlike PAIR, the graph is neither copied nor saved to a
    checkpoint (``tmp_ckpt_path`` is accepted and ignored), the session's
    current variable values are used, and ``Relu6`` is guided too (PAIR only
    changes ``Relu``).  One ``session.run`` of one row per ``GetMask``, as in
    PAIR.

    References
    ----------
    Springenberg, Dosovitskiy, Brox, Riedmiller. "Striving for Simplicity: The
    All Convolutional Net", 2014. https://arxiv.org/abs/1412.6806
    """

    core_class = _CoreGuidedBackprop
    keys = (GUIDED_INPUT_GRADIENTS,)
    GetMask = on_graph(_CoreGuidedBackprop.GetMask)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any,
                 tmp_ckpt_path: str = "/tmp/guided_backprop_ckpt") -> None:
        super().__init__(graph, session, y, x)
