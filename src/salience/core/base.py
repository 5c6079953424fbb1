"""PAIR ``saliency.core`` base class, translated onto the batch-first methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from ..methods.base import Method
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    SHAPE_ERROR_MESSAGE,
    CallbackModel,
    check_outputs,
)

__all__ = [
    "CoreSaliency",
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
    "SHAPE_ERROR_MESSAGE",
    "smooth_get_mask",
]


class CoreSaliency:
    """Base class of the PAIR-compatible methods.

    Subclasses implement ``GetMask(x_value, call_model_function,
    call_model_args=None, ...)`` for one input ``x_value`` (no batch axis).
    ``call_model_function(x_batch, call_model_args=None, expected_keys=None)``
    is PAIR's callback; see :class:`salience.model.Model` for the meaning of
    the keys.  Every method calls the callback as PAIR ``saliency==0.2.1``
    does: the same rows per call, in the same order, with the same keys.
    """

    def GetMask(self, x_value, call_model_function, call_model_args=None):
        raise NotImplementedError("A derived class should implement GetMask()")

    def GetSmoothedMask(
        self,
        x_value,
        call_model_function,
        call_model_args=None,
        stdev_spread=0.15,
        nsamples=25,
        magnitude=True,
        **kwargs,
    ):
        """SmoothGrad over ``GetMask``: one ``GetMask`` call per noisy sample, as in PAIR.

        ``kwargs`` go to ``GetMask``.  See :func:`smooth_get_mask` for the
        noise and the result; :class:`salience.SmoothGrad` is the batch-first
        form that packs the rows of all samples into shared model calls.
        """
        return smooth_get_mask(
            lambda noisy: self.GetMask(noisy, call_model_function, call_model_args, **kwargs),
            x_value, stdev_spread, nsamples, magnitude,
        )

    def format_and_check_call_model_output(self, output, input_shape, expected_keys):
        """Check a callback's output shapes (PAIR's helper, kept for subclasses)."""
        output.update(check_outputs(output, tuple(input_shape), expected_keys))


def smooth_get_mask(
    get_mask: Callable[[np.ndarray], Any],
    x_value: Any,
    stdev_spread: float,
    nsamples: int,
    magnitude: bool,
) -> np.ndarray:
    """PAIR's SmoothGrad loop over a one-input ``get_mask``, for both facades.

    Sample after sample, Gaussian noise of standard deviation ``stdev_spread *
    (max(x) - min(x))`` is drawn from the global ``np.random`` and
    ``get_mask(x_value + noise)`` is called, so ``np.random.seed(k)`` gives
    PAIR's numbers and a ``get_mask`` that draws random numbers itself sees
    PAIR's stream.  The (squared, if ``magnitude``) masks are averaged in
    float64; masks may have any shape (2-D maps of 3-D inputs too).  The
    result has the masks' floating dtype, at least float32.

    Unlike :class:`salience.SmoothGrad`, which draws all noise first and sends
    every sample's rows to the model together, this keeps PAIR's calls.
    """
    nsamples = check_positive_int(nsamples, "nsamples")
    stdev_spread = check_nonnegative(stdev_spread, "stdev_spread")
    x_value = np.asarray(x_value)
    stdev = stdev_spread * (np.max(x_value) - np.min(x_value))

    def sample() -> np.ndarray:
        mask = np.asarray(get_mask(x_value + np.random.normal(0, stdev, x_value.shape)))
        return mask * mask if magnitude else mask

    first = sample()
    total = first.astype(np.float64)
    for _ in range(nsamples - 1):
        term = sample()
        if term.shape != total.shape:
            raise ValueError(
                f"GetMask returned masks of shape {total.shape} and then {term.shape} for "
                f"noisy copies of one input of shape {x_value.shape}; it must return one shape"
            )
        total += term  # cast while adding: no float64 copy of every term
    return (total / nsamples).astype(np.result_type(first.dtype, np.float32))


def run_method(method: Method, x_value: Any, call_model_function, call_model_args) -> np.ndarray:
    """Explain one PAIR-style input (no batch axis) with a batch-first method.

    A callback made by a salience adapter that can stand for it
    (``call_model_function.salience_model_for(call_model_args)``, the TF1 graphs of
    :mod:`salience.tf1`) is bypassed: its model is called directly.
    """
    # Looked up in the function's own attributes: a mock answers any getattr.
    model_for = getattr(call_model_function, "__dict__", {}).get("salience_model_for")
    model = (model_for(call_model_args) if model_for is not None
             else CallbackModel(call_model_function, call_model_args))
    return method.explain(model, np.asarray(x_value)[None])[0]
