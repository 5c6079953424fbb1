"""Base classes of the PAIR ``saliency.tf1`` facade."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ..checks import check_positive_int
from ..core.base import CoreSaliency, smooth_get_mask
from ..model import INPUT_OUTPUT_GRADIENTS
from ._model import TF1Model

__all__ = [
    "TF1Saliency",
    "TF1CoreSaliency",
    "X_SHAPE_ERROR_MESSAGE",
    "Y_SHAPE_ERROR_MESSAGE",
    "on_graph",
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
    input without batch axis; ``GetSmoothedMask`` calls it once per noisy
    sample, as PAIR does.
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
        """SmoothGrad over ``GetMask``, one call per noisy sample; ``kwargs`` go to
        ``GetMask``.  The same loop as :meth:`salience.core.CoreSaliency.GetSmoothedMask`
        (see :func:`salience.core.base.smooth_get_mask`)."""
        return smooth_get_mask(lambda noisy: self.GetMask(noisy, feed_dict, **kwargs),
                               x_value, stdev_spread, nsamples, magnitude)


class TF1CoreSaliency(TF1Saliency):
    """Base of the TF1 methods that run a :mod:`salience.core` method on the graph.

    ``conv_layer`` is the tensor of the layer Grad-CAM uses (batch first).
    The gradient ops for :attr:`keys` are added to the graph once, when the
    object is built (a gradient that cannot exist, because ``y`` does not
    depend on the tensor, is reported when it is first requested, before the
    session runs).  ``call_model_function`` is PAIR's callback running the
    graph, with a feed_dict as ``call_model_args``.  A subclass sets
    :attr:`core_class` and makes its ``GetMask`` with :func:`on_graph`.
    """

    #: The salience.core class whose methods run on the graph (None: a user's subclass).
    core_class: type[CoreSaliency] | None = None
    #: Outputs whose graph ops are built with the object.
    keys: tuple[str, ...] = (INPUT_OUTPUT_GRADIENTS,)

    def __init__(self, graph: Any, session: Any, y: Any, x: Any, conv_layer: Any = None) -> None:
        super().__init__(graph, session, y, x)
        self.tf1_model = TF1Model(graph, session, y, x, conv_layer=conv_layer)
        self.tf1_model.prepare(self.keys)
        self.call_model_function = self.tf1_model.call_model_function()
        if self.core_class is not None:
            self.core_instance = self.core_class()

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

    def _check_arguments(self, options: dict[str, Any]) -> None:
        """Check a call's options (all of them, defaults included) before the core
        method runs; PAIR checks the tensor shapes here for the batched methods."""


def on_graph(core_method: Callable) -> Callable:
    """A :mod:`salience.core` method as the method of a TF1 class.

    The result has PAIR's tf1 signature: the core method's, with
    ``call_model_function`` and ``call_model_args`` replaced by
    ``feed_dict=None`` (PAIR's tf1 and core options and defaults are the
    same, so they are written once, in :mod:`salience.core`).  A call checks
    its arguments against that signature, passes every option (defaults
    included) to :meth:`TF1CoreSaliency._check_arguments`, then calls the
    core method of ``self.core_instance`` with the graph's
    ``call_model_function``, ``feed_dict`` as ``call_model_args`` and the
    options by keyword, as PAIR's tf1 classes do.
    """
    name = core_method.__name__
    core_signature = inspect.signature(core_method)
    self_param, x_param, _function, _args, *options = core_signature.parameters.values()
    feed_dict = inspect.Parameter("feed_dict", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=None)
    signature = core_signature.replace(parameters=[self_param, x_param, feed_dict, *options])
    # The usual call, GetMask(x, feed_dict, option=...), skips Signature.bind (about
    # 10 us per call, 2% of a small graph's session.run); any other call form binds.
    defaults = {p.name: p.default for p in options}
    plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty for p in options)

    def method(self, *args, **kwargs):
        if plain and 1 <= len(args) <= 2 and defaults.keys() >= kwargs.keys():
            x_value, feed = args[0], args[1] if len(args) == 2 else None
            given = {**defaults, **kwargs}
        else:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            given = dict(bound.arguments)
            del given["self"]
            x_value, feed = given.pop("x_value"), given.pop("feed_dict")
        self._check_arguments(given)
        return getattr(self.core_instance, name)(
            x_value, call_model_function=self.call_model_function, call_model_args=feed, **given
        )

    method.__name__ = name
    method.__qualname__ = name
    method.__signature__ = signature  # type: ignore[attr-defined]
    method.__doc__ = (f"{core_method.__qualname__} on the graph: ``x_value`` without batch axis, "
                      "``feed_dict`` for ``session.run``; see the core method for the options.")
    return method
