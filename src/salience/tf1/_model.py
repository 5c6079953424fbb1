"""A TF1 graph (``tensorflow.compat.v1``) seen through the Model protocol.

The graph pieces (gradient ops of ``y`` with respect to ``x``, of ``y`` with
respect to a convolution layer, guided gradients) are added to the graph the
first time they are needed and reused afterwards; every model call is one
``session.run``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._adapter import KNOWN_KEYS, LAYER_KEYS, FrameworkModel
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

__all__ = ["TF1Model", "wrap", "import_tf"]


def import_tf() -> Any:
    """Import TensorFlow (slow) only when a tf1 object is first built."""
    try:
        import tensorflow as tf
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "salience.tf1 needs TensorFlow; install it with pip install 'salience[tf1]'"
        ) from error
    return tf


def wrap(
    graph: Any,
    session: Any,
    y: Any,
    x: Any,
    conv_layer: Any = None,
    feed_dict: Mapping[Any, Any] | None = None,
) -> TF1Model:
    """Wrap a TF1 graph as a salience Model for the batch-first methods.

    Parameters
    ----------
    graph : tf.Graph
        The graph holding ``x``, ``y`` and ``conv_layer``.
    session : tf.compat.v1.Session
        A session of that graph with its variables initialised.
    y : tf.Tensor
        The explained score, one value per row: shape ``(None,)`` (for
        example ``logits[:, k]``), or a fixed batch size.  ``y`` already picks
        the class, so methods must be called with ``targets=None``.
    x : tf.Tensor
        The input placeholder, batch first, channels last.
    conv_layer : tf.Tensor, optional
        Activations of the layer Grad-CAM uses, batch first.
    feed_dict : mapping, optional
        Extra values fed on every call (e.g. ``{is_training: False}``).
    """
    return TF1Model(graph, session, y, x, conv_layer=conv_layer, feed_dict=feed_dict)


def _check_feed(feed_dict: Any) -> dict:
    if feed_dict is None:
        return {}
    if not isinstance(feed_dict, Mapping):
        raise TypeError(
            f"feed_dict must be a dict (tensor -> value) or None, got {type(feed_dict).__name__}"
        )
    return dict(feed_dict)


class TF1Model(FrameworkModel):
    """A TF1 graph and session as a :class:`salience.model.Model`.

    See :func:`wrap` for the parameters.  Copies made by :meth:`with_feed`
    share the graph pieces already built.
    """

    channels_last = True
    supports_guided = True
    #: ``y`` already picks the explained output, so there is no top class to choose.
    predict = None  # type: ignore[assignment]

    def __init__(self, graph, session, y, x, conv_layer=None, feed_dict=None):
        tf = import_tf()
        if not isinstance(graph, tf.Graph):
            raise TypeError(f"graph must be a tf.Graph, got {type(graph).__name__}")
        if not callable(getattr(session, "run", None)):
            raise TypeError(
                f"session must be a tf.compat.v1.Session of the graph, got {type(session).__name__}"
            )
        for name, tensor in (("y", y), ("x", x), ("conv_layer", conv_layer)):
            if tensor is None and name == "conv_layer":
                continue
            if not isinstance(tensor, tf.Tensor) or not hasattr(tensor, "graph"):
                raise TypeError(f"{name} must be a tensor of the graph, got {type(tensor).__name__}")
            if tensor.graph is not graph:
                raise ValueError(
                    f"{name} ({tensor.name}) belongs to another graph than the one passed as graph"
                )
        if y.shape.rank is not None and y.shape.rank > 1:
            per_row = y.shape.as_list()[1:]
            if None in per_row or int(np.prod(per_row)) != 1:
                raise ValueError(
                    f"y must hold one score per row, e.g. y = logits[:, k]; got {y.name} with "
                    f"shape {tuple(y.shape.as_list())}"
                )
        self.graph, self.session, self.y, self.x = graph, session, y, x
        self.conv_layer = conv_layer
        self.has_layer = conv_layer is not None
        self.feed_dict = _check_feed(feed_dict)
        self._x_shape = x.shape.as_list() if x.shape.rank is not None else None
        if self._x_shape is not None and len(self._x_shape) == 4:
            self.expected_channels = self._x_shape[3]
        self._ops: dict[str, Any] = {OUTPUT_LAYER_VALUES: y}  # shared with with_feed copies

    def with_feed(self, feed_dict: Mapping[Any, Any] | None) -> TF1Model:
        """This model with ``feed_dict`` added to the values fed on every call."""
        extra = _check_feed(feed_dict)
        if not extra:
            return self
        bound = copy.copy(self)
        bound.feed_dict = {**self.feed_dict, **extra}
        return bound

    def prepare(self, keys: Sequence[str]) -> None:
        """Add the graph ops computing ``keys`` now (each is built once)."""
        for key in keys:
            self._op(key)

    def __call__(self, x, targets, keys):
        if any(k in LAYER_KEYS for k in keys) and not self.has_layer:
            raise ValueError(
                "this method needs a convolution layer's values and gradients (Grad-CAM); "
                "pass conv_layer=<the layer's output tensor>"
            )
        return super().__call__(x, targets, keys)

    def check_layout(self, x: np.ndarray) -> None:
        super().check_layout(x)
        if self._x_shape is None:
            return
        fixed = self._x_shape
        if x.ndim != len(fixed) or any(
            want is not None and want != got for want, got in zip(fixed, x.shape)
        ):
            shown = tuple("None" if d is None else d for d in fixed)
            raise ValueError(
                f"x has shape {x.shape} but the graph's input {self.x.name} has shape "
                f"({', '.join(map(str, shown))})"
            )

    def _run(self, x, targets, keys):
        if targets is not None:
            raise ValueError(
                "a TF1 graph's y already selects the explained output (e.g. y = logits[:, k]); "
                "call the method with targets=None"
            )
        fetches = [self._op(key) for key in keys]
        for op in fetches:
            if isinstance(op, _Unavailable):
                raise ValueError(op.message)
        # x is fed by the method, also when the feed_dict names it ("x:0").
        feed = {k: v for k, v in self.feed_dict.items()
                if not (isinstance(k, str) and k == self.x.name)}
        feed[self.x] = x
        values = self.session.run(fetches, feed_dict=feed)
        out = {key: np.asarray(value) for key, value in zip(keys, values)}
        scores = out.get(OUTPUT_LAYER_VALUES)
        if scores is not None and scores.ndim == 0 and len(x) == 1:
            out[OUTPUT_LAYER_VALUES] = scores.reshape(1)  # a scalar y for a single row
        return out

    def _op(self, key: str) -> Any:
        op = self._ops.get(key)
        if op is None:
            op = self._ops[key] = self._build(key)
        return op

    def _build(self, key: str) -> Any:
        tf = import_tf()
        v1 = tf.compat.v1
        if key == CONVOLUTION_LAYER_VALUES:
            return self.conv_layer
        with self.graph.as_default():
            if key == INPUT_OUTPUT_GRADIENTS:
                return self._gradient(v1.gradients(self.y, self.x)[0], "x")
            if key == CONVOLUTION_OUTPUT_GRADIENTS:
                return self._gradient(v1.gradients(self.y, self.conv_layer)[0], "conv_layer")
            if key == GUIDED_INPUT_GRADIENTS:
                with guided_relu_gradients(self.graph):
                    return self._gradient(v1.gradients(self.y, self.x)[0], "x")
        raise ValueError(f"unknown output key {key!r}")

    def _gradient(self, gradient: Any, name: str) -> Any:
        if gradient is None:  # reported when requested: building the ops is no call yet
            return _Unavailable(
                f"y ({self.y.name}) does not depend on {name} "
                f"({getattr(self, name).name}); pass the tensors of one model"
            )
        tf = import_tf()
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        return gradient

    def call_model_function(self) -> Callable:  # type: ignore[override]
        """A PAIR ``call_model_function`` whose ``call_model_args`` is a feed_dict,
        as in PAIR ``saliency.tf1``."""

        def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
            keys = list(expected_keys or [INPUT_OUTPUT_GRADIENTS])
            for key in keys:  # PAIR's errors (code may match on them), then what to do
                if key not in KNOWN_KEYS:
                    raise ValueError(
                        f"Invalid expected key {key}; known keys are {list(KNOWN_KEYS)}")
                if key in LAYER_KEYS and not self.has_layer:
                    raise RuntimeError(
                        f"Cannot return key {key} because no conv_layer was specified; pass "
                        "conv_layer=<the layer's output tensor>")
            return self.with_feed(call_model_args)(np.asarray(x_value_batch), None, keys)

        return call_model_function


class _Unavailable:
    """Stands for a gradient op that cannot exist; fetching it raises ``message``."""

    def __init__(self, message: str) -> None:
        self.message = message


def _guided_rule(upper: float | None) -> Callable:
    """Backward of a ReLU (``upper`` None) or ReLU6 (``upper`` 6) under the guided rule:
    pass the gradient where it is > 0 and the op's output is strictly inside (0, upper)."""

    def gradient(op: Any, grad: Any) -> Any:
        tf = import_tf()
        out = op.outputs[0]
        keep = tf.logical_and(grad > 0, out > 0)
        if upper is not None:
            keep = tf.logical_and(keep, out < upper)
        return tf.where(keep, grad, tf.zeros_like(grad))

    return gradient


_GUIDED_RULES = {"Relu": _guided_rule(None), "Relu6": _guided_rule(6.0)}


@contextlib.contextmanager
def guided_relu_gradients(graph: Any) -> Iterator[None]:
    """While active, gradients built with ``tf.gradients`` in ``graph`` use the guided
    rule for every ``Relu`` and ``Relu6`` op; the ops' own gradient is restored after.

    Nothing is copied and the graph's ops are not changed: TensorFlow looks up a
    per-op gradient function before the registered one, and that is set here
    only for the duration of the gradient construction.
    """
    changed = []
    try:
        for op in graph.get_operations():
            rule = _GUIDED_RULES.get(op.type)
            if rule is None:
                continue
            if not hasattr(op, "_gradient_function"):  # pragma: no cover - other TF versions
                raise RuntimeError(
                    "this TensorFlow version does not allow a per-op gradient override; "
                    "Guided Backprop for TF1 graphs needs TensorFlow >= 2.4"
                )
            changed.append((op, op._gradient_function))
            op._gradient_function = rule
        if not changed:
            warnings.warn(
                "Guided Backprop found no Relu or Relu6 op in the graph, so the map equals "
                "the plain gradient",
                RuntimeWarning,
                stacklevel=4,
            )
        yield
    finally:
        for op, previous in changed:
            op._gradient_function = previous
