"""Base classes of the PAIR ``saliency.tf1`` facade."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from ..core.base import CoreSaliency
from ..model import INPUT_OUTPUT_GRADIENTS
from ._model import TF1Model

__all__ = [
    "TF1Saliency",
    "TF1CoreSaliency",
    "X_SHAPE_ERROR_MESSAGE",
    "Y_SHAPE_ERROR_MESSAGE",
]

# The same texts as PAIR's, so code that matches on them keeps working.
X_SHAPE_ERROR_MESSAGE = (
    "Unexpected outermost dimension for x tensor. Expected {} for outermost dimension, "
    "actual {}"
)
Y_SHAPE_ERROR_MESSAGE = "Unexpected shape for y tensor. Expected shape {}, actual {}"


class TF1Saliency:
    """Base of the TF1 methods: a graph, its session, the explained tensor ``y``
    (one score per row, e.g. ``logits[:, k]``) and the input tensor ``x``
    (batch first).

    Subclasses implement ``GetMask(x_value, feed_dict=None, ...)`` for one
    input without batch axis.  A subclass that defines only ``GetMask`` still
    gets a working ``GetSmoothedMask`` (one ``GetMask`` call per noisy
    sample); the built-in methods send all samples to the session together.
    """

    def __init__(self, graph: Any, session: Any, y: Any, x: Any) -> None:
        self.graph = graph
        self.session = session
        self.y = y
        self.x = x

    def GetMask(self, x_value, feed_dict=None):
        raise NotImplementedError("A derived class should implement GetMask()")

    def GetSmoothedMask(self, x_value, feed_dict=None, stdev_spread=0.15, nsamples=25,
                        magnitude=True, **kwargs):
        """SmoothGrad over this method; see :class:`salience.SmoothGrad`.

        Noise comes from the global ``np.random`` in PAIR's order, so
        ``np.random.seed(k)`` beforehand gives PAIR's numbers.
        """
        if getattr(type(self).GetMask, "_salience_batched", False):
            self._check_smoothing(kwargs)
            return self.core_instance.GetSmoothedMask(
                x_value, self.call_model_function, feed_dict, stdev_spread, nsamples,
                magnitude, **self._smoothing_kwargs(kwargs),
            )
        # A user's own GetMask: one call per noisy sample.
        nsamples = check_positive_int(nsamples, "nsamples")
        x_value = np.asarray(x_value)
        stdev = check_nonnegative(stdev_spread, "stdev_spread") * (
            np.max(x_value) - np.min(x_value)
        )
        total = 0.0  # shaped like the masks, which may differ from x_value (2-D maps)
        for _ in range(nsamples):
            noisy = x_value + np.random.normal(0, stdev, x_value.shape)
            mask = np.asarray(self.GetMask(noisy, feed_dict, **kwargs), dtype=np.float64)
            total = total + (mask * mask if magnitude else mask)
        return (total / nsamples).astype(np.result_type(x_value.dtype, np.float32))

    # Hooks of the built-in methods (which also set core_instance and call_model_function).
    core_instance: CoreSaliency
    call_model_function: Any

    def _check_smoothing(self, kwargs: dict) -> None:
        """Check GetMask keyword arguments before a smoothed run (shape rules)."""

    def _smoothing_kwargs(self, kwargs: dict) -> dict:
        return kwargs

    def _default_batch_size(self, size: int) -> int:
        """``size`` rows per session call if the graph takes any batch size, else 1."""
        return size if self.tf1_model.batchable else 1

    def _attach(self, core_instance: CoreSaliency | None, keys, conv_layer=None) -> TF1Model:
        """Wrap the graph once, build the ops for ``keys`` and hold the core method."""
        model = TF1Model(self.graph, self.session, self.y, self.x, conv_layer=conv_layer)
        model.prepare(keys)
        self.tf1_model = model
        self.call_model_function = model.call_model_function()
        if core_instance is not None:
            self.core_instance = core_instance
        return model


class TF1CoreSaliency(TF1Saliency):
    """Base of the TF1 methods that run a :mod:`salience.core` method on the graph.

    ``conv_layer`` is the tensor of the layer Grad-CAM uses (batch first).
    The gradient ops are added to the graph once, when the object is built.
    """

    _core_class: Any = None  # the salience.core class (or its name, looked up when built)
    _keys: tuple[str, ...] = (INPUT_OUTPUT_GRADIENTS,)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any, conv_layer: Any = None) -> None:
        super().__init__(graph, session, y, x)
        core_class = self._core_class
        if isinstance(core_class, str):
            core_class = _core_method(core_class)
        # A user's subclass (no core class) gets call_model_function, as in PAIR.
        self._attach(None if core_class is None else core_class(), self._keys, conv_layer)

    def validate_xy_tensor_shape(self, x_steps: int = 1, batch_size: int = 1) -> None:
        """Check that ``x`` and ``y`` can take the batches ``x_steps`` rows in chunks
        of ``batch_size`` make.

        When ``batch_size`` divides ``x_steps`` every batch has ``batch_size``
        rows, so ``y`` may have that fixed size (or one None dimension) and
        ``x`` that outermost dimension (or None); otherwise both need None.

        Raises
        ------
        ValueError
            With PAIR's ``Y_SHAPE_ERROR_MESSAGE`` / ``X_SHAPE_ERROR_MESSAGE``.
        """
        x_steps = check_positive_int(x_steps, "x_steps")
        batch_size = check_positive_int(batch_size, "batch_size")
        rows = batch_size if x_steps % batch_size == 0 else None
        y_dims = self.y.shape.as_list() if self.y.shape.rank is not None else [None]
        y_known = int(np.prod([d for d in y_dims if d is not None], dtype=np.int64))
        y_has_none = any(d is None for d in y_dims)
        if not ((y_has_none and y_known == 1) or (not y_has_none and y_known == rows)):
            expected = "[None]" + ("" if rows is None else f" or tensor with size {rows}")
            raise ValueError(Y_SHAPE_ERROR_MESSAGE.format(expected, y_dims))
        x_dims = self.x.shape.as_list() if self.x.shape.rank is not None else [None]
        if x_dims[0] not in (None, rows):
            expected = "None" + ("" if rows is None else f" or {rows}")
            raise ValueError(X_SHAPE_ERROR_MESSAGE.format(expected, x_dims[0]))


def _core_method(name: str) -> type:
    from .. import core

    cls = getattr(core, name, None)
    if cls is None:
        raise NotImplementedError(
            f"salience.tf1.{name} runs salience.core.{name}, which this version of salience "
            "does not provide yet"
        )
    return cls
