"""PAIR ``saliency.core`` base class, translated onto the batch-first methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from ..methods.base import Method
from ..methods.smoothgrad import SmoothGrad
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
]


def batched(get_mask):
    """Mark a facade ``GetMask`` as backed by a batch-first method, so that
    ``GetSmoothedMask`` may batch its noise samples (a user override of
    ``GetMask`` is not marked and keeps PAIR's one-call-per-sample loop)."""
    get_mask._salience_batched = True
    return get_mask


class CoreSaliency:
    """Base class of the PAIR-compatible methods.

    Subclasses implement ``GetMask(x_value, call_model_function,
    call_model_args=None, ...)`` for one input ``x_value`` (no batch axis).
    ``call_model_function(x_batch, call_model_args=None, expected_keys=None)``
    is PAIR's callback; see :class:`salience.model.Model` for the meaning of
    the keys.  A subclass that only defines ``GetMask`` gets a working
    ``GetSmoothedMask``.
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
        """SmoothGrad over this method (see :class:`salience.SmoothGrad`).

        Noise comes from the global ``np.random`` in PAIR's order, so
        ``np.random.seed(k)`` beforehand gives PAIR's numbers.  Built-in methods
        send all samples' rows to the model together in chunks of their
        ``batch_size``.
        """
        if getattr(type(self).GetMask, "_salience_batched", False):
            method = self._method(**kwargs)
            smooth = SmoothGrad(method, nsamples, stdev_spread, magnitude,
                                seed=np.random.mtrand._rand)
            return run_method(smooth, x_value, call_model_function, call_model_args)
        return self._smooth_by_get_mask(
            x_value, call_model_function, call_model_args, stdev_spread, nsamples, magnitude,
            kwargs,
        )

    def _smooth_by_get_mask(self, x_value, call_model_function, call_model_args, stdev_spread,
                            nsamples, magnitude, kwargs):
        # A user's own GetMask: one call per noisy sample, as PAIR does.
        nsamples = check_positive_int(nsamples, "nsamples")
        stdev = check_nonnegative(stdev_spread, "stdev_spread") * (
            np.max(x_value) - np.min(x_value)
        )
        total = np.zeros_like(x_value, dtype=np.float32)
        for _ in range(nsamples):
            noisy = x_value + np.random.normal(0, stdev, x_value.shape)
            mask = self.GetMask(noisy, call_model_function, call_model_args, **kwargs)
            total += mask * mask if magnitude else mask
        return total / nsamples

    def _method(self, **kwargs) -> Method:
        raise NotImplementedError

    def format_and_check_call_model_output(self, output, input_shape, expected_keys):
        """Check a callback's output shapes (PAIR's helper, kept for subclasses)."""
        output.update(check_outputs(output, tuple(input_shape), expected_keys))


def run_method(method: Method, x_value: Any, call_model_function, call_model_args) -> np.ndarray:
    """Explain one PAIR-style input (no batch axis) with a batch-first method."""
    model = CallbackModel(call_model_function, call_model_args)
    return method.explain(model, np.asarray(x_value)[None])[0]
