"""Keras / TensorFlow adapter: ``salience.keras.wrap(model, layer=...)`` -> Model.

Works with Keras 3 models on the TensorFlow backend and with legacy
``tf.keras`` (``tf_keras``) models.  Gradients come from ``tf.GradientTape``
inside a ``tf.function`` that is traced once per kind of call (which outputs
are needed, the input's per-row shape, the kind of targets) with a free batch
dimension, so chunks of any size reuse the same graph.

The model is never changed: it is called with ``training=False``, only the
input (and the chosen layer) is watched, so no weight gradients are computed,
and no layer, weight or flag is added or altered.  Guided Backprop gives the
guided rule to the ``Relu``/``Relu6`` ops of its own traced graph (see
:mod:`salience._tensorflow`), so the model's layers are never touched.

Concurrent calls from several threads are safe and give the serial results:
tracing is serialised by a lock per wrapped model (each kind of call is traced
once), and the traced functions, which hold no state, run concurrently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ._adapter import (
    SCORES,
    CallKind,
    DeviceRows,
    FrameworkModel,
    check_reshape,
    images_of_rows,
    layer_not_found,
    score_rule_error,
    target_fn_error,
    toeplitz_index,
)
from ._tensorflow import guided_gradients
from .checks import check_positive_int

__all__ = [
    "KerasModel",
    "ModelWeights",
    "all_layers",
    "find_layer",
    "is_keras_model",
    "last_conv_layer",
    "wrap",
]

# The kind of traced function that returns the model's raw outputs.
_PREDICT = CallKind("predict", False, False, False)

TargetFn = Callable[[Any, "tf.Tensor | None"], "tf.Tensor"]


def wrap(
    model: Any,
    layer: Any = None,
    *,
    target_fn: TargetFn | None = None,
    jit_compile: bool = False,
    batch_size: int = 64,
    channels_last: bool = True,
    reshape: Any = "auto",
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
    reshape : 'auto', (h, w), callable or None
        How the ``layer``'s output becomes a feature map for the CAM methods.
        ``'auto'``: a vision transformer block's ``(n, tokens, features)``
        output loses its class (and distillation) token and its patch tokens
        are laid out on their square grid, ``(n, h, w, features)``;
        convolution outputs are left as they are.  ``(h, w)`` for a
        non-square grid, a numpy function for other layouts, None to take the
        output as it is.  See :func:`salience._adapter.layer_grid`.  Gradient
        methods do not use it.

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
                      batch_size=batch_size, channels_last=channels_last, reshape=reshape)


def all_layers(model: Any) -> list[Any]:
    """Every layer inside a Keras ``model`` (nested models included), depth first,
    once each."""
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
    layers = all_layers(model)
    if isinstance(layer, str):
        for candidate in layers:
            if candidate.name == layer:
                return candidate
        raise layer_not_found(layer, [candidate.name for candidate in layers])
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
    """Name of Grad-CAM's usual layer among the outer model's layers, or None: the
    last layer with a 4-D output whose class is a convolution; in a vision
    transformer (attention after the last convolution, which is then the patch
    embedding) the layer whose output the last attention reads (a functional ViT's
    ``LayerNormalization`` of the last block; the previous block when blocks are
    layers of their own), as :func:`salience.torch.last_conv_layer` picks."""
    layers = list(getattr(model, "layers", []))
    convs = [i for i, layer in enumerate(layers)
             if "Conv" in type(layer).__name__ and len(layer.output.shape) == 4]
    attention = [i for i, layer in enumerate(layers) if _holds_attention(layer)]
    if attention and (not convs or attention[-1] > convs[-1]):
        source = _input_layer(layers[attention[-1]])
        # A whole model nested as one layer reads the input itself: no CAM layer there.
        if source is not None and type(source).__name__ != "InputLayer":
            return source.name
    return layers[convs[-1]].name if convs else None


def _holds_attention(layer: Any) -> bool:
    """An attention layer, or a block with one among its own layers."""
    flatten = getattr(layer, "_flatten_layers", None)  # Keras 3 and tf_keras alike
    inner = list(flatten(include_self=True)) if callable(flatten) else [layer]
    return any(type(sub).__name__.endswith("Attention") for sub in inner)


def _input_layer(layer: Any) -> Any:
    """The layer that made ``layer``'s (first) input in a functional model, or None."""
    try:
        tensors = layer.input
    except (AttributeError, ValueError):  # not called in a graph of layers
        return None
    tensor = tensors[0] if isinstance(tensors, (list, tuple)) else tensors
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history[0]


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
                 batch_size=64, channels_last=True, reshape="auto"):
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
        self.reshape = check_reshape(reshape)
        self._net = model if self.layer is None else self._layer_view(inputs)
        first = _single(inputs) if inputs is not None else None
        shape = tuple(first.shape) if first is not None and hasattr(first, "shape") else None
        self.input_shape = None if shape is None or isinstance(first, (list, tuple)) else tuple(
            None if d is None else int(d) for d in shape)
        self.dtype = tf.as_dtype(first.dtype) if first is not None else tf.float32
        if not self.dtype.is_floating:
            self.dtype = tf.float32
        self.expected_channels = None
        if shape is not None and len(shape) == 4:
            channels = shape[3] if self.channels_last else shape[1]
            self.expected_channels = int(channels) if channels is not None else None
        self._functions: dict[tuple, Any] = {}
        self._tracing = threading.Lock()

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

    def _function(self, kind: CallKind, x: np.ndarray | DeviceRows,
                  targets: np.ndarray | None) -> Any:
        """The traced (concrete) function for this kind of call, built once."""
        t_key = None if targets is None else (targets.ndim, targets.shape[1:])
        # Scores are computed whether asked or not; layer gradients only when asked.
        key = (kind.name, kind.layer_gradients, x.shape[1:], t_key)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        with self._tracing:  # one trace per key, also when threads ask at once
            fn = self._functions.get(key)
            if fn is None:
                specs = [tf.TensorSpec((None, *x.shape[1:]), self.dtype)]
                if targets is not None:
                    t_dtype = tf.int64 if targets.ndim == 1 else self.dtype
                    specs.append(tf.TensorSpec((None, *targets.shape[1:]), t_dtype))
                traced = tf.function(self._body(kind), input_signature=specs,
                                     jit_compile=self.jit_compile, autograph=False)
                fn = self._functions[key] = traced.get_concrete_function()
        return fn

    def _body(self, kind: CallKind) -> Callable:
        net = self._net
        has_layer = self.has_layer

        def forward(x):
            out = net(x, training=False)
            return (out[0], out[1]) if has_layer else (None, out)

        if kind == _PREDICT:
            def predict(x):
                self.trace_count += 1
                return _single(forward(x)[1])
            return predict

        def run(x, targets=None):
            self.trace_count += 1
            if kind == SCORES:
                return {"scores": self._scores(forward(x)[1], targets)}
            if kind.layer and not (kind.input or kind.layer_gradients):
                # The layer's values alone (Eigen-CAM, Score-CAM): no backward pass.
                features, outputs = forward(x)
                return {"scores": self._scores(outputs, targets), "values": features}
            if kind.guided:
                # In this function's own graph, which no other caller sees.
                scores = self._scores(forward(x)[1], targets)
                graph = tf.compat.v1.get_default_graph()
                g = guided_gradients(graph, scores, x)
                return {"scores": scores, "input": tf.zeros_like(x) if g is None else g}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                features, outputs = forward(x)
                scores = self._scores(outputs, targets)
            sources = ([x] if kind.input else []) + ([features] if kind.layer else [])
            grads = tape.gradient(scores, sources,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            result = {"scores": scores}
            if kind.input:
                result["input"] = grads.pop(0)
            if kind.layer:
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
                raise target_fn_error(shape if shape is not None else type(scores).__name__)
            return scores
        if not tf.is_tensor(outputs) or outputs.shape.rank != 2:
            shape = tuple(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
            raise score_rule_error(shape if isinstance(shape, tuple) else (shape,))
        if targets is None:
            return tf.reduce_max(outputs, axis=1)
        if targets.shape.rank == 1:
            return tf.gather(outputs, targets, axis=1, batch_dims=1)
        return tf.reduce_sum(outputs * tf.cast(targets, outputs.dtype), axis=1)

    # -- running ------------------------------------------------------------------

    def _probe(self, x: np.ndarray) -> tuple[int | None, ...] | None:
        """The output shape, from the model's declared outputs or else a trace (no run)."""
        outputs = getattr(self.model, "outputs", None) if self.input_shape is not None else None
        if outputs is not None and len(outputs) == 1:
            return tuple(outputs[0].shape)
        spec = self._function(_PREDICT, self._cast(x), None).structured_outputs
        return tuple(spec.shape) if hasattr(spec, "shape") else None

    def _probe_layer(self, x: np.ndarray) -> tuple[int, ...] | None:
        """The layer's declared output shape, when the model's input size is fixed."""
        if self.input_shape is None or None in self.input_shape[1:]:
            return None
        try:
            shape = tuple(self.layer.output.shape)
        except (AttributeError, ValueError):  # a layer called more than once, ...
            return None
        return None if None in shape[1:] else tuple(int(d) for d in shape[1:])

    def _cast(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=self.dtype.as_numpy_dtype)

    @property
    def on_accelerator(self) -> bool:
        """Whether TensorFlow sees a GPU, where it places the calls and the rows built
        by :meth:`noisy_rows`, which then cost the host nothing."""
        return bool(tf.config.list_logical_devices("GPU"))

    def noisy_rows(self, images: np.ndarray, owners: np.ndarray, scales: np.ndarray,
                   seeds: np.ndarray) -> DeviceRows:
        """Gaussian-noised rows built by TensorFlow on its device, in the model's dtype.

        Row ``r`` is ``images[owners[r]] + scales[owners[r]] * z_r``, where
        ``z_r`` holds float32 standard normal values from
        ``tf.random.stateless_normal`` with the seed ``(seeds[r], 0)``, so a
        row's noise does not depend on the rows drawn with it.  Pass the rows
        back as ``x``.
        """
        used, index = images_of_rows(images, owners)
        shape = images.shape[1:]
        z = tf.stack([tf.random.stateless_normal(shape, seed=tf.constant([seed, 0], tf.int64))
                      for seed in seeds.tolist()])
        scale = tf.reshape(tf.constant(scales[owners], self.dtype), (-1, *[1] * len(shape)))
        rows = tf.gather(tf.constant(self._cast(used)), index) + scale * tf.cast(z, self.dtype)
        return DeviceRows(rows, used, lambda t: t.numpy())

    def filtered_rows(self, images: np.ndarray, owners: np.ndarray,
                      terms: Sequence[tuple[np.ndarray, np.ndarray]],
                      axes: tuple[int, int]) -> DeviceRows:
        """Rows made by TensorFlow on its device by separable filters of ``images``,
        in the model's dtype: the rows ``filtered_rows`` of
        :class:`salience.model.Model` describes (Blur IG's path points and their
        rates).  Only the kernels go to the device; the matrices are gathered there.
        Pass the rows back as ``x``, or ``numpy.asarray`` them.
        """
        used, index = images_of_rows(images, owners)
        x = tf.gather(tf.constant(self._cast(used)), index)
        h, w = axes[0] + 1, axes[1] + 1
        order = [a for a in range(x.shape.rank) if a not in (h, w)] + [h, w]
        planes = tf.transpose(x, order)  # (rows, ..., H, W)
        height, width = planes.shape[-2:]
        lead = [len(owners)] + [1] * (planes.shape.rank - 3)  # broadcast over channels
        total = None
        for k_h, k_w in terms:
            a_h = tf.reshape(tf.gather(tf.constant(self._cast(k_h)), toeplitz_index(height),
                                       axis=1), [*lead, height, height])
            a_w = tf.reshape(tf.gather(tf.constant(self._cast(k_w)), toeplitz_index(width),
                                       axis=1), [*lead, width, width])
            term = a_h @ planes @ tf.linalg.matrix_transpose(a_w)
            total = term if total is None else total + term
        assert total is not None, "filtered_rows needs at least one term"
        rows = tf.transpose(total, np.argsort(order))
        return DeviceRows(rows, used, lambda t: t.numpy())

    def array_ops(self) -> _TensorFlowArrayOps:
        """Array operations on TensorFlow's device, for a method that keeps its
        arrays there between calls (Guided IG's ``select_on``)."""
        return _TensorFlowArrayOps(self.dtype)

    def _run(self, x: np.ndarray | DeviceRows, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        # rows built by noisy_rows or filtered_rows are on the device already
        rows = x.values if isinstance(x, DeviceRows) else tf.constant(self._cast(x))
        if targets is not None:
            targets = (targets.astype(np.int64) if targets.ndim == 1
                       else targets.astype(self.dtype.as_numpy_dtype))
        fn = self._function(kind, x, targets)
        args = [rows] + ([] if targets is None else [tf.constant(targets)])
        result = fn(*args)  # a concrete function: never retraced
        return {key: value.numpy() for key, value in result.items()}

    def _predict(self, x: np.ndarray) -> np.ndarray:
        x = self._cast(x)
        out = self._function(_PREDICT, x, None)(tf.constant(x))
        return np.asarray(out.numpy() if tf.is_tensor(out) else out)


class ModelWeights:
    """Clone, inspect and re-initialise the layers of a Sequential or functional Keras
    model (what the model-randomisation sanity check, :mod:`salience.metrics.sanity`,
    needs)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        legacy = any(c.__module__.startswith("tf_keras.") for c in type(model).__mro__)
        if legacy:
            import tf_keras as keras
        else:
            import keras
        self.keras = keras

    def layers(self, every: bool = False) -> list[str]:
        """Names of the layers with weight matrices (of every layer with ``every``)."""
        return [
            layer.name for layer in all_layers(self.model)
            if every or any(len(w.shape) >= 2 for w in layer.weights)
        ]

    def copy(self) -> Any:
        try:
            work = self.keras.models.clone_model(self.model)
        except Exception as err:  # noqa: BLE001 - Keras raises various types here
            raise TypeError(
                "the sanity check clones Keras models with clone_model, which needs a "
                f"Sequential or functional model; this one could not be cloned ({err})"
            ) from err
        work.set_weights(self.model.get_weights())
        return work

    def state(self, work: Any) -> list[np.ndarray]:
        return [np.array(w) for w in work.get_weights()]

    def restore(self, work: Any, state: list[np.ndarray]) -> None:
        work.set_weights(state)

    def wrap(self, work: Any, kwargs: dict[str, Any]) -> Any:
        return wrap(work, **kwargs)

    def random_state(self) -> Any:
        return contextlib.nullcontext()  # seeded initialisers leave global state alone

    def reinitialise(self, work: Any, name: str, seed: int) -> None:
        """Each weight from the layer's own initialiser (``kernel_initializer``, ...),
        seeded; weights without one get a normal draw of their own spread."""
        layer = next(la for la in all_layers(work) if la.name == name)
        rng = np.random.default_rng(seed)
        for k, weight in enumerate(layer.weights):
            short = weight.name.split("/")[-1].split(":")[0]
            init = getattr(layer, f"{short}_initializer", None)
            shape, dtype = tuple(weight.shape), weight.dtype
            if init is not None:
                config = dict(init.get_config())
                if "seed" in config:
                    config["seed"] = seed * 1000 + k
                value = np.asarray(type(init).from_config(config)(shape, dtype=dtype))
            else:
                current = np.asarray(weight)
                std = float(current.std()) if current.size > 1 and current.std() > 0 else 0.01
                value = rng.normal(0.0, std, size=shape)
            weight.assign(value.astype(np.asarray(weight).dtype))


class _TensorFlowArrayOps:
    """:class:`salience.methods.guided_ig.selection.ArrayOps` for TensorFlow tensors
    (placed as TensorFlow places them: on its GPU when it has one).  Float arrays
    go to the device as float64: TensorFlow multiplies only tensors of one dtype."""

    def __init__(self, dtype: tf.DType) -> None:
        self.dtype = dtype  # the model's input dtype

    def asarray(self, values: np.ndarray) -> tf.Tensor:
        if values.dtype.kind == "f":
            values = values.astype(np.float64, copy=False)
        return tf.constant(values)

    def to_host(self, values: tf.Tensor) -> np.ndarray:
        return values.numpy()

    def where(self, condition: tf.Tensor, a: Any, b: Any) -> tf.Tensor:
        # A Python float takes the other's dtype, straight from the float (tf.cast would
        # round it through float32 first).
        dtype = (a if tf.is_tensor(a) else b).dtype
        return tf.where(condition, *(v if tf.is_tensor(v) else tf.constant(v, dtype)
                                     for v in (a, b)))

    def kth_smallest(self, values: tf.Tensor, k: int) -> tf.Tensor:
        return -tf.math.top_k(-values, k + 1, sorted=True).values[:, k : k + 1]

    def concat(self, parts: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.concat(list(parts), axis=0)

    def row_sums(self, values: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(values, axis=1)

    def any(self, values: tf.Tensor) -> bool:
        return bool(tf.reduce_any(values))

    def rows(self, values: tf.Tensor, one_row: np.ndarray) -> DeviceRows:
        rows = tf.cast(tf.reshape(values, [len(values), *one_row.shape[1:]]), self.dtype)
        return DeviceRows(rows, one_row, lambda t: t.numpy())
