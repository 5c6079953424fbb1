"""Keras / TensorFlow adapter: ``salience.keras.wrap(model, layer=...)`` -> Model.

Works with Keras 3 models on the TensorFlow backend and with legacy
``tf.keras`` (``tf_keras``) models.  Gradients come from ``tf.GradientTape``
inside a ``tf.function`` that is traced once per kind of call (which outputs
are needed, the input's per-row shape, the kind of targets) with a free batch
dimension, so chunks of any size reuse the same graph.

The model is never changed: it is called with ``training=False``, only the
input (and the chosen layer) is watched, so no weight gradients are computed,
and no layer, weight or flag is added or altered.  For Guided Backprop the
ReLU activations of the model's layers are swapped for the guided rule only
while the guided graph is traced (once), and put back right after, also when
tracing raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ._adapter import FrameworkModel, score_rule_error
from .checks import check_positive_int
from .model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

__all__ = ["wrap", "KerasModel", "find_layer", "guided_relus", "is_keras_model", "last_conv_layer"]

TargetFn = Callable[[Any, "tf.Tensor | None"], "tf.Tensor"]


def wrap(
    model: Any,
    layer: Any = None,
    *,
    target_fn: TargetFn | None = None,
    jit_compile: bool = False,
    batch_size: int = 64,
    channels_last: bool = True,
) -> KerasModel:
    """Wrap a Keras model (Keras 3 on TensorFlow, or ``tf.keras``) as a salience Model.

    Parameters
    ----------
    model : keras.Model
        The classifier, called as ``model(x, training=False)`` on float
        tensors shaped like the inputs.
    layer : keras layer or str, optional
        The layer whose activations and gradients Grad-CAM uses: the layer
        object or its name.  Needs a functional or Sequential model (one with
        known ``inputs``); the adapter builds a functional view of the same
        layers returning both that layer's output and the model's output (no
        new weights).
    target_fn : callable, optional
        ``target_fn(outputs, targets) -> (n,)`` score per row, computed in
        TensorFlow on the model's outputs and the targets tensor (or None);
        for regression heads, a region of a segmentation map, or any other
        reduction.  Without it the score is chosen as described in
        :class:`salience._adapter.FrameworkModel` (class index, one-hot/weight
        rows, or the top class).
    jit_compile : bool
        Compile the traced functions with XLA.
    batch_size : int
        Chunk size of :meth:`KerasModel.predict`.
    channels_last : bool
        True (Keras' default) if the model takes (n, H, W, C) inputs; False
        for models built with ``data_format='channels_first'``.

    Returns
    -------
    KerasModel
        A :class:`salience.model.Model` that also has ``predict(x)``.

    References
    ----------
    Abadi et al. "TensorFlow: A System for Large-Scale Machine Learning",
    OSDI 2016. https://arxiv.org/abs/1605.08695
    """
    return KerasModel(model, layer, target_fn=target_fn, jit_compile=jit_compile,
                      batch_size=batch_size, channels_last=channels_last)


def _all_layers(model: Any) -> list[Any]:
    """Every layer inside ``model`` (nested models included), depth first, once each."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = list(reversed(getattr(model, "layers", [])))
    for _ in range(100_000):  # bounded walk
        if not stack:
            break
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        found.append(item)
        stack.extend(reversed(getattr(item, "layers", [])))
    return found


def find_layer(model: Any, layer: Any) -> Any:
    """Resolve a layer given as a layer object or as its name."""
    layers = _all_layers(model)
    if isinstance(layer, str):
        for candidate in layers:
            if candidate.name == layer:
                return candidate
        names = [candidate.name for candidate in layers]
        shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
        raise ValueError(f"the model has no layer named {layer!r}; available layers: {shown}")
    if any(candidate is layer for candidate in layers):
        return layer
    if hasattr(layer, "name") and callable(layer):
        raise ValueError(f"layer {layer.name!r} is not a layer of the model {model.name!r}")
    raise TypeError(f"layer must be a Keras layer or a layer name, got {type(layer).__name__}")


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 or tf.keras model (an object with layers)."""
    modules = [cls.__module__ for cls in type(model).__mro__]
    return any(m.startswith(("keras.", "tf_keras.")) for m in modules) and hasattr(model, "layers")


def last_conv_layer(model: Any) -> str | None:
    """Name of the model's last layer with a 4-D output whose class is a convolution
    (Grad-CAM's usual layer), among the outer model's layers; None if there is none."""
    convs = [layer.name for layer in getattr(model, "layers", [])
             if "Conv" in type(layer).__name__ and len(layer.output.shape) == 4]
    return convs[-1] if convs else None


def _functional_class(model: Any) -> Any:
    """``tf_keras.Model`` for legacy tf.keras models, ``keras.Model`` otherwise."""
    if any(cls.__module__.startswith("tf_keras.") for cls in type(model).__mro__):
        import tf_keras

        return tf_keras.Model
    import keras

    return keras.Model


def _single(tensors: Any) -> Any:
    if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
        return tensors[0]
    return tensors


class KerasModel(FrameworkModel):
    """A Keras model seen through the :class:`salience.model.Model` protocol.

    ``trace_count`` counts how many times a computation was traced (once per
    kind of call and per-row input shape; never once per call).
    """

    supports_guided = True

    def __init__(self, model, layer=None, *, target_fn=None, jit_compile=False,
                 batch_size=64, channels_last=True):
        if not is_keras_model(model):
            raise TypeError(
                "model must be a Keras model (keras.Model or tf.keras.Model), got "
                f"{type(model).__name__}")
        if target_fn is not None and not callable(target_fn):
            raise TypeError(f"target_fn must be callable, got {type(target_fn).__name__}")
        self.model = model
        self.target_fn = target_fn
        self.jit_compile = bool(jit_compile)
        self.channels_last = bool(channels_last)
        self.predict_batch_size = check_positive_int(batch_size, "batch_size")
        self.trace_count = 0
        inputs = self._model_inputs()
        self.layer = None if layer is None else find_layer(model, layer)
        self.has_layer = self.layer is not None
        self._net = model if self.layer is None else self._layer_view(inputs)
        first = _single(inputs) if inputs is not None else None
        shape = tuple(first.shape) if first is not None and hasattr(first, "shape") else ()
        self.dtype = tf.as_dtype(first.dtype) if first is not None else tf.float32
        if not self.dtype.is_floating:
            self.dtype = tf.float32
        self.expected_channels = None
        if len(shape) == 4:
            channels = shape[3] if self.channels_last else shape[1]
            self.expected_channels = int(channels) if channels is not None else None
        self._n_outputs: int | None = None
        self._functions: dict[tuple, Any] = {}

    # -- building -----------------------------------------------------------------

    def _model_inputs(self) -> Any:
        try:
            inputs = self.model.inputs
        except (AttributeError, ValueError):
            return None
        return inputs or None

    def _layer_view(self, inputs: Any) -> Any:
        """A functional model over the same layers returning (layer output, model output)."""
        if inputs is None:
            raise ValueError(
                f"layer={self.layer.name!r} needs a functional or Sequential Keras model with "
                f"known inputs; {type(self.model).__name__} has none (a subclassed model, or a "
                "Sequential model without an Input)")
        try:
            return _functional_class(self.model)(
                _single(inputs), [self.layer.output, _single(self.model.outputs)])
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"cannot expose layer {self.layer.name!r} of model {self.model.name!r}: it is "
                "not reachable from the model's inputs (it may sit inside a nested model; pass "
                f"a layer of the outer model, e.g. one of {[la.name for la in self.model.layers]})"
                f" ({error})") from error

    def _function(self, kind: str, x: np.ndarray, targets: np.ndarray | None) -> Any:
        """The traced (concrete) function for this kind of call, built once."""
        if targets is None:
            t_key = None
        else:
            t_key = (targets.ndim, targets.shape[1:])
        key = (kind, x.shape[1:], t_key)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        specs = [tf.TensorSpec((None, *x.shape[1:]), self.dtype)]
        if t_key is not None:
            t_dtype = tf.int64 if targets.ndim == 1 else self.dtype
            specs.append(tf.TensorSpec((None, *targets.shape[1:]), t_dtype))
        body = self._body(kind)
        traced = tf.function(body, input_signature=specs, jit_compile=self.jit_compile,
                             autograph=False)
        with guided_relus(self.model, kind == "guided"):
            fn = traced.get_concrete_function()
        self._functions[key] = fn
        return fn

    def _body(self, kind: str) -> Callable:
        net = self._net
        has_layer = self.has_layer

        def forward(x):
            out = net(x, training=False)
            return (out[0], out[1]) if has_layer else (None, out)

        if kind == "predict":
            def predict(x):
                self.trace_count += 1
                return _single(forward(x)[1])
            return predict

        want_input = kind in ("input", "input+layer", "guided")
        want_layer = kind in ("layer", "input+layer")

        def run(x, targets=None):
            self.trace_count += 1
            if kind == "scores":
                return {"scores": self._scores(forward(x)[1], targets)}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                features, outputs = forward(x)
                scores = self._scores(outputs, targets)
            sources = ([x] if want_input else []) + ([features] if want_layer else [])
            grads = tape.gradient(scores, sources,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            result = {"scores": scores}
            if want_input:
                result["input"] = grads.pop(0)
            if want_layer:
                result["values"] = features
                result["layer"] = grads.pop(0)
            return result

        return run

    def _scores(self, outputs: Any, targets: Any) -> tf.Tensor:
        """One score per row, in TensorFlow (runs while tracing)."""
        if self.target_fn is not None:
            scores = self.target_fn(outputs, targets)
            shape = getattr(scores, "shape", None)
            if shape is None or shape.rank != 1:
                raise ValueError(
                    "target_fn must return a tensor of one score per row, shape (n,), got "
                    f"{shape if shape is not None else type(scores).__name__}")
            return scores
        if not tf.is_tensor(outputs) or outputs.shape.rank != 2:
            shape = tuple(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
            raise score_rule_error(shape if isinstance(shape, tuple) else (shape,))
        self._n_outputs = outputs.shape[1]
        if targets is None:
            return tf.reduce_max(outputs, axis=1)
        if targets.shape.rank == 1:
            return tf.gather(outputs, targets, axis=1, batch_dims=1)
        if targets.shape[1] != outputs.shape[1]:
            raise ValueError(
                f"one-hot/weight targets have {targets.shape[1]} columns but the model "
                f"outputs {outputs.shape[1]} values per row")
        return tf.reduce_sum(outputs * tf.cast(targets, outputs.dtype), axis=1)

    # -- running ------------------------------------------------------------------

    def _check_targets(self, targets: np.ndarray | None) -> None:
        n_out = self._n_outputs
        if targets is None or n_out is None or self.target_fn is not None:
            return
        if targets.ndim == 1 and len(targets) and int(targets.max()) >= n_out:
            raise ValueError(
                f"target {int(targets.max())} is out of range for a model with {n_out} outputs")

    def _run(self, x, targets, keys):
        want_input = INPUT_OUTPUT_GRADIENTS in keys or GUIDED_INPUT_GRADIENTS in keys
        want_layer = CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys
        guided = GUIDED_INPUT_GRADIENTS in keys
        if guided and want_layer:
            raise ValueError("guided gradients and layer outputs cannot be requested together")
        if guided:
            kind = "guided"
        elif want_input and want_layer:
            kind = "input+layer"
        else:
            kind = "input" if want_input else ("layer" if want_layer else "scores")
        x = np.asarray(x, dtype=self.dtype.as_numpy_dtype)
        if targets is not None:
            targets = np.asarray(targets)
            targets = (targets.astype(np.int64) if targets.ndim == 1
                       else targets.astype(self.dtype.as_numpy_dtype))
        fn = self._function(kind, x, targets)
        self._check_targets(targets)
        args = [tf.constant(x)] + ([] if targets is None else [tf.constant(targets)])
        result = fn(*args)  # a concrete function: never retraced, the guided rule is baked in
        out = {OUTPUT_LAYER_VALUES: result["scores"].numpy()}
        if want_input:
            out[GUIDED_INPUT_GRADIENTS if guided else INPUT_OUTPUT_GRADIENTS] = \
                result["input"].numpy()
        if want_layer:
            out[CONVOLUTION_LAYER_VALUES] = result["values"].numpy()
            out[CONVOLUTION_OUTPUT_GRADIENTS] = result["layer"].numpy()
        return out

    def _predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype.as_numpy_dtype)
        out = self._function("predict", x, None)(tf.constant(x))
        return np.asarray(out.numpy() if tf.is_tensor(out) else out)


# -- Guided Backprop -------------------------------------------------------------------


def _guided_relu(max_value: float | None) -> Callable[[tf.Tensor], tf.Tensor]:
    """ReLU (capped at ``max_value`` if given) whose backward pass follows the guided
    rule: the gradient passes only where the ReLU's input is in its linear range and
    the incoming gradient is positive."""

    @tf.custom_gradient
    def guided(x):
        if max_value is None:
            y = tf.nn.relu(x)
        elif max_value == 6:
            y = tf.nn.relu6(x)
        else:
            y = tf.clip_by_value(x, tf.zeros([], x.dtype), tf.cast(max_value, x.dtype))

        def grad(dy):
            positive = tf.nn.relu(dy)  # the incoming gradient's positive part ...
            if max_value is None:  # ... where the input is in the linear range
                return tf.raw_ops.ReluGrad(gradients=positive, features=x)
            if max_value == 6:
                return tf.raw_ops.Relu6Grad(gradients=positive, features=x)
            inside = tf.logical_and(x > 0, x < max_value)
            return tf.where(inside, positive, tf.zeros_like(positive))

        return y, grad

    def activation(x, *args, **kwargs):
        return guided(x)

    return activation


def _relu_cap(fn: Any) -> tuple[bool, float | None]:
    """Whether ``fn`` is a plain ReLU activation, and its cap (relu6: 6)."""
    name = getattr(fn, "__name__", None)
    if name == "relu":
        return True, None
    if name == "relu6":
        return True, 6.0
    return False, None


@contextlib.contextmanager
def guided_relus(model: Any, enabled: bool = True) -> Iterator[None]:
    """Give every ReLU of ``model`` the guided backward rule while the block runs.

    Layers with ``activation`` relu/relu6 (Dense, Conv, Activation, ...) get a
    guided activation; ``ReLU`` layers without a negative slope or threshold
    get a guided ``call``.  Everything is put back when the block ends, also
    after an exception.  ReLUs applied outside layers (raw ``tf.nn.relu`` in a
    subclassed model's ``call``) are not seen.
    """
    swapped: list[tuple[Any, str, bool, Any]] = []
    try:
        if enabled:
            for layer in _all_layers(model):
                act = getattr(layer, "activation", None)
                is_relu, cap = _relu_cap(act) if callable(act) else (False, None)
                if is_relu:
                    swapped.append((layer, "activation", True, act))
                    layer.activation = _guided_relu(cap)
                    continue
                if type(layer).__name__ == "ReLU" and not getattr(layer, "negative_slope", 0) \
                        and not getattr(layer, "threshold", 0):
                    cap = getattr(layer, "max_value", None)
                    own = "call" in vars(layer)
                    swapped.append((layer, "call", own, vars(layer).get("call")))
                    guided = _guided_relu(None if cap is None else float(cap))
                    layer.call = lambda inputs, *a, _g=guided, **k: _g(inputs)
        yield
    finally:
        for layer, attr, own, original in reversed(swapped):
            if own:
                setattr(layer, attr, original)
            else:
                delattr(layer, attr)
