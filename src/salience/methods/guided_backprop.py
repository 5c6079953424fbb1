"""Guided Backpropagation: input gradients with a guided ReLU backward rule."""

from __future__ import annotations

from ..model import GUIDED_INPUT_GRADIENTS
from .gradients import Gradients

__all__ = ["GuidedBackprop"]


class GuidedBackprop(Gradients):
    """The input gradient where every ReLU passes a gradient backwards only if
    both its forward input and the incoming gradient are positive.

    The method asks the model for ``GUIDED_INPUT_GRADIENTS``, which the adapters
    compute with the guided rule applied to the call's own graph, changing
    nothing global (``salience.torch``: every ReLU and ReLU6 node of the call's
    autograd graph, whether a module, a function, a tensor method or a
    ``torch.export`` graph; ``salience.keras`` and ``salience.tf1``: the graph's
    ``Relu`` / ``Relu6`` ops).  Where that is impossible (``salience.jax``,
    TorchScript and ``torch.compile`` modules) the call fails with an error
    before the model runs.  A plain callable model or a PAIR
    ``call_model_function`` must return that key itself; otherwise the call
    fails with an error naming it.

    Parameters
    ----------
    batch_size : int
        Largest number of inputs per model call.

    References
    ----------
    Springenberg, Dosovitskiy, Brox, Riedmiller. "Striving for Simplicity: The
    All Convolutional Net", ICLR workshop 2015. https://arxiv.org/abs/1412.6806
    """

    name = "GuidedBackprop"
    key = GUIDED_INPUT_GRADIENTS
