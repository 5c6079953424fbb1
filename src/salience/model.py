"""The one framework boundary: the Model protocol and its output checks.

Every method talks to a model only through ``model(x, targets, keys)``; adapters
(``salience.torch``, ``salience.keras``, ``salience.jax``) and the PAIR callback
wrapper produce objects that follow it.  Outputs are checked here, once.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
    "GUIDED_INPUT_GRADIENTS",
    "SHAPE_ERROR_MESSAGE",
    "Model",
    "CallbackModel",
    "as_model",
    "calls_of_one_run",
    "native_framework",
    "check_outputs",
]

# Key names and meanings are PAIR's, so PAIR callbacks work unchanged.
CONVOLUTION_LAYER_VALUES = "CONVOLUTION_LAYER_VALUES"
"""Activations of the chosen (usually last convolutional) layer, batch first."""
CONVOLUTION_OUTPUT_GRADIENTS = "CONVOLUTION_OUTPUT_GRADIENTS"
"""Gradient of the explained score with respect to that layer, batch first."""
INPUT_OUTPUT_GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
"""Gradient of the explained score with respect to the input, shaped like it."""
OUTPUT_LAYER_VALUES = "OUTPUT_LAYER_VALUES"
"""The explained score itself, one value per row."""
GUIDED_INPUT_GRADIENTS = "GUIDED_INPUT_GRADIENTS"
"""Input gradient with ReLU backward replaced by the guided rule (Guided Backprop)."""

_FULL_SHAPE_KEYS = (INPUT_OUTPUT_GRADIENTS, GUIDED_INPUT_GRADIENTS)

_MISSING_KEY_HINTS = {
    GUIDED_INPUT_GRADIENTS: (
        ". Guided Backprop needs guided gradients (ReLU backward replaced by the guided "
        "rule): use an adapter that computes them (salience.torch.wrap(...), "
        "salience.keras.wrap(...), salience.tf1.wrap(...)) or make the callback return "
        "GUIDED_INPUT_GRADIENTS"
    ),
}

SHAPE_ERROR_MESSAGE = {
    CONVOLUTION_LAYER_VALUES: (
        "Expected outermost dimension of CONVOLUTION_LAYER_VALUES to be the "
        "same as x_value_batch - expected {}, actual {}"
    ),
    CONVOLUTION_OUTPUT_GRADIENTS: (
        "Expected outermost dimension of CONVOLUTION_OUTPUT_GRADIENTS to be the "
        "same as x_value_batch - expected {}, actual {}"
    ),
    INPUT_OUTPUT_GRADIENTS: (
        "Expected key INPUT_OUTPUT_GRADIENTS to be the same shape as input "
        "x_value_batch - expected {}, actual {}"
    ),
    OUTPUT_LAYER_VALUES: (
        "Expected outermost dimension of OUTPUT_LAYER_VALUES to be the same as"
        " x_value_batch - expected {}, actual {}"
    ),
    GUIDED_INPUT_GRADIENTS: (
        "Expected key GUIDED_INPUT_GRADIENTS to be the same shape as input "
        "x_value_batch - expected {}, actual {}"
    ),
}
"""Error texts for outputs of the wrong shape (the same wording as PAIR's)."""


@runtime_checkable
class Model(Protocol):
    """What every method calls.

    ``model(x, targets, keys)`` receives a float array ``x`` of shape
    ``(n, *input_shape)``, ``targets`` (``None``, an int array ``(n,)`` of class
    indices, or a float array ``(n, n_outputs)`` of weights such as one-hot
    rows) and the list of keys it must return.  It returns a mapping from each
    key to an array whose first dimension is ``n``.

    Optional attributes that methods use when present:

    ``channels_last`` (bool, default True)
        Layout of the input and of the layer activations: ``(n, H, W, C)`` when
        true, ``(n, C, H, W)`` when false.  Spatial methods (Blur IG,
        Occlusion, Grad-CAM, XRAI) read it.
    ``predict(x) -> ndarray (n, n_outputs)``
        Raw model outputs; used to pick the top class when ``targets`` is None
        and to return predictions beside maps.
    ``noisy_rows(images, owners, scales, seeds)`` and ``on_accelerator`` (bool)
        Gaussian-noised rows built in the model's framework, on its device
        (row ``r``: ``images[owners[r]] + scales[owners[r]] * z_r``, ``z_r``
        drawn from ``seeds[r]`` alone), returned as a
        :class:`salience._adapter.DeviceRows` that a later call takes as ``x``;
        SmoothGrad draws its noise there (its ``noise_on``), by default when
        ``on_accelerator`` is true.  The torch, JAX and Keras adapters have both.
    ``copies_input`` (bool, default False)
        True when the model copies every ``x`` into its own arrays before
        anything runs on it, so it can never write into the caller's array:
        methods then skip their own copy of the input (a pass over it per
        explain call).  The torch and JAX adapters say so.
    ``filtered_rows(images, owners, terms, axes)``
        Rows made in the model's framework, on its device, by separable filters
        with zero padding, returned as a :class:`salience._adapter.DeviceRows`:
        row ``r`` is the sum over ``terms`` of ``A_h @ P @ A_w.T`` for every
        plane ``P`` of ``images[owners[r]]`` along the row axes ``axes``
        (height, width), where ``A[i, j] = kernel[r, j - i + size - 1]`` for
        the term's kernels ``(rows, 2 * size - 1)`` along that axis.  Blur IG
        makes its path points (Gaussian blurs) and their rates of change there
        (its ``blur_on``), by default when ``on_accelerator`` is true.  The
        torch, JAX and Keras adapters have it.
    ``array_ops()``
        An :class:`salience.methods.guided_ig.selection.ArrayOps`, the few
        operations beyond arithmetic that keep a method's arrays on the
        model's device between calls (its ``rows`` become a
        :class:`salience._adapter.DeviceRows` for ``x``), or None where the
        device cannot (they need float64).  Guided IG walks its paths there
        (its ``select_on``), by default when ``on_accelerator`` is true.  The
        torch adapter (devices with float64), JAX (64-bit arrays on) and Keras
        have it.
    """

    def __call__(
        self, x: np.ndarray, targets: np.ndarray | None, keys: Sequence[str]
    ) -> Mapping[str, Any]: ...


class CallbackModel:
    """A PAIR ``call_model_function`` seen through the Model protocol.

    Parameters
    ----------
    call_model_function : callable
        ``call_model_function(x_batch, call_model_args=None, expected_keys=None)``
        returning a dict, as in PAIR ``saliency``.
    call_model_args : any
        Passed unchanged on every call.  The class to explain is chosen here,
        so the ``targets`` given to ``__call__`` are ignored.
    channels_last : bool
        Layout of inputs and layer activations (PAIR assumes channels last).
    """

    def __init__(
        self,
        call_model_function: Callable[..., Mapping[str, Any]],
        call_model_args: Any = None,
        channels_last: bool = True,
    ) -> None:
        if not callable(call_model_function):
            raise TypeError(
                "call_model_function must be callable, got "
                f"{type(call_model_function).__name__}"
            )
        self.call_model_function = call_model_function
        self.call_model_args = call_model_args
        self.channels_last = channels_last

    def __call__(self, x, targets, keys):
        return self.call_model_function(
            x, call_model_args=self.call_model_args, expected_keys=list(keys)
        )


# A native model passed without its adapter is callable but not a Model.
_ADAPTER_FOR = {
    "torch": "salience.torch.wrap",
    "keras": "salience.keras.wrap",
    "tf_keras": "salience.keras.wrap",
    "tensorflow": "salience.keras.wrap",
    "flax": "salience.jax.wrap",
}


def native_framework(model: Any) -> str | None:
    """The framework a native model object belongs to (``'torch'``, ``'keras'``, ...),
    read from its classes' modules without importing any framework; None otherwise."""
    model_type = type(model)
    if model_type not in _FRAMEWORK_OF_TYPE:  # once per type: ~2 us less per call
        _FRAMEWORK_OF_TYPE[model_type] = _framework_of_type(model_type)
    return _FRAMEWORK_OF_TYPE[model_type]


# Weak keys: a class made at run time (a test's model, say) is not kept alive by the cache.
_FRAMEWORK_OF_TYPE: weakref.WeakKeyDictionary[type, str | None] = weakref.WeakKeyDictionary()


def _framework_of_type(model_type: type) -> str | None:
    for cls in model_type.__mro__:
        framework = cls.__module__.split(".")[0]
        if framework in _ADAPTER_FOR:
            return framework
    return None


def calls_of_one_run(model: Model) -> AbstractContextManager[Any]:
    """A context for the model calls of one method run on this thread.

    An adapter may set up once what each call would otherwise set up and undo
    (the torch adapter: eval mode and frozen parameters); models without such a
    ``calls_of_one_run`` method get a context that does nothing.
    """
    hook = getattr(model, "calls_of_one_run", None)
    return hook() if callable(hook) else contextlib.nullcontext()


def as_model(model: Any) -> Model:
    """Return ``model`` if it follows the protocol; raise a clear error if not."""
    framework = native_framework(model)
    if framework is not None:
        raise TypeError(
            f"model must be a salience Model, got a {framework} model "
            f"({type(model).__name__}); wrap it first: model = "
            f"{_ADAPTER_FOR[framework]}(your_model, ...)"
        )
    if callable(model):
        return model
    raise TypeError(
        "model must be a salience Model (an adapter such as salience.torch.wrap(...), "
        f"or a callable model(x, targets, keys)), got {type(model).__name__}"
    )


def check_outputs(
    outputs: Mapping[str, Any], input_shape: tuple[int, ...], keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Convert the requested outputs to arrays and check their shapes.

    Gradients with respect to the input must match ``input_shape`` exactly; all
    other keys must have ``input_shape[0]`` rows.  ``OUTPUT_LAYER_VALUES`` is
    returned as a 1-D array of one score per row.

    Raises
    ------
    ValueError
        A key is missing or an output has the wrong shape.
    """
    if type(outputs) is not dict and not isinstance(outputs, Mapping):  # (dict: no ABC lookup)
        raise TypeError(
            "the model (or call_model_function) must return a dict of outputs, got "
            f"{type(outputs).__name__}"
        )
    checked: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in outputs:
            raise ValueError(
                f"the model output has no key {key!r}; it returned keys "
                f"{sorted(outputs)} but {list(keys)} were requested"
                + _MISSING_KEY_HINTS.get(key, "")
            )
        value = np.asarray(outputs[key])
        expected: Any
        actual: Any
        if key in _FULL_SHAPE_KEYS:
            expected, actual = tuple(input_shape), value.shape
        else:
            expected, actual = input_shape[0], (value.shape[0] if value.ndim else None)
        if expected != actual:
            raise ValueError(SHAPE_ERROR_MESSAGE[key].format(expected, actual))
        if key == OUTPUT_LAYER_VALUES:
            value = _one_score_per_row(value)
        checked[key] = value
    return checked


def _one_score_per_row(values: np.ndarray) -> np.ndarray:
    if values.ndim == 1:
        return values
    per_row = int(np.prod(values.shape[1:]))
    if per_row != 1:
        raise ValueError(
            "OUTPUT_LAYER_VALUES must hold one score per row (the explained output), "
            f"got shape {values.shape}; select the target class in the model or "
            "call_model_function"
        )
    return values.reshape(values.shape[0])

