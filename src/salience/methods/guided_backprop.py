"""Guided Backpropagation: input gradients with a guided ReLU backward rule."""

from __future__ import annotations

from ..model import GUIDED_INPUT_GRADIENTS
from .gradients import Gradients

__all__ = ["GuidedBackprop"]


class GuidedBackprop(Gradients):
    """The input gradient where every ReLU passes a gradient backwards only if
    both its forward input and the incoming gradient are positive.

    The method asks the model for ``GUIDED_INPUT_GRADIENTS``: the adapters
    compute it by changing the ReLU backward rule for the duration of the call
    (``salience.torch``: ``nn.ReLU``, ``nn.ReLU6`` and functional relu;
    ``salience.keras``: ReLU gradients; ``salience.tf1``: the graph's ``Relu``
    / ``Relu6`` ops).  Adapters that cannot (``salience.jax``) refuse with an
    error before running the model.  A plain callable
    model or a PAIR ``call_model_function`` must return that key itself;
    otherwise the call fails with an error naming it.

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
