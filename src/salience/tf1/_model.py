"""A TF1 graph (``tensorflow.compat.v1``) seen through the Model protocol.

The graph pieces (gradient ops of ``y`` with respect to ``x``, of ``y`` with
respect to a convolution layer, guided gradients) are added to the graph the
first time they are needed and reused afterwards; every model call is one
``session.run``.

Calls from several threads are safe and give the serial results: graph
building (adding gradient ops, which for Guided Backprop briefly overrides the
ReLU ops' gradients) is serialised by one lock for all graphs, and
``session.run``, which TensorFlow makes thread-safe, runs concurrently.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._adapter import KNOWN_KEYS, LAYER_KEYS, CallKind, FrameworkModel
from .._tensorflow import guided_gradients
from ..model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

__all__ = ["TF1Model", "wrap", "import_tf"]

# Adding ops to a graph is not thread-safe, and the guided rule is a temporary
# per-op override that another thread's gradient ops must not see.
_GRAPH_LOCK = threading.Lock()


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
    layer_hint = "pass conv_layer=<the layer's output tensor>"
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
        self.input_shape = None if self._x_shape is None else tuple(self._x_shape)
        self.input_name = f"the graph's input {x.name}"
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

    def _run(self, x: np.ndarray, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        if targets is not None:
            raise ValueError(
                "a TF1 graph's y already selects the explained output (e.g. y = logits[:, k]); "
                "call the method with targets=None"
            )
        keys = {"scores": OUTPUT_LAYER_VALUES} if kind.scores else {}  # as PAIR fetches
        if kind.input:
            keys["input"] = GUIDED_INPUT_GRADIENTS if kind.guided else INPUT_OUTPUT_GRADIENTS
        if kind.layer:
            keys.update(values=CONVOLUTION_LAYER_VALUES, layer=CONVOLUTION_OUTPUT_GRADIENTS)
        fetches = [self._op(key) for key in keys.values()]
        for op in fetches:
            if isinstance(op, _Unavailable):
                raise ValueError(op.message)
        # x is fed by the method, also when the feed_dict names it ("x:0").
        feed = {k: v for k, v in self.feed_dict.items()
                if not (isinstance(k, str) and k == self.x.name)}
        feed[self.x] = x
        values = self.session.run(fetches, feed_dict=feed)
        out = {name: np.asarray(value) for name, value in zip(keys, values)}
        if "scores" in out and out["scores"].ndim == 0 and len(x) == 1:
            out["scores"] = out["scores"].reshape(1)  # a scalar y for a single row
        return out

    def _op(self, key: str) -> Any:
        op = self._ops.get(key)
        if op is None:
            with _GRAPH_LOCK:
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
                return self._gradient(guided_gradients(self.graph, self.y, self.x), "x")
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

        # salience.core runs this model itself (no callback layer per call): the same
        # calls, since the keys its methods ask for are known and the layer is there.
        call_model_function.salience_model_for = self.with_feed  # type: ignore[attr-defined]
        return call_model_function


class _Unavailable:
    """Stands for a gradient op that cannot exist; fetching it raises ``message``."""

    def __init__(self, message: str) -> None:
        self.message = message
