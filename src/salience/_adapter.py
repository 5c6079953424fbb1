"""What every framework adapter shares: key dispatch, layout checks, the PAIR
callback and prediction.  A framework subclass only runs its model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    Model,
    as_model,
    native_framework,
)

__all__ = [
    "FrameworkModel",
    "KNOWN_KEYS",
    "LAYER_KEYS",
    "targets_from_call_model_args",
    "wrap_native",
]

KNOWN_KEYS = (
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
)
LAYER_KEYS = (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS)


class FrameworkModel:
    """Base of the adapters: a :class:`salience.model.Model` around a native model.

    The explained score of row ``i`` is chosen by ``targets``:

    - None: the row's largest output (the top class);
    - an int array ``(n,)``: output ``targets[i]``;
    - a float array ``(n, n_outputs)``: ``sum_k outputs[i, k] * targets[i, k]``
      (one-hot rows, or e.g. +1/-1 for a difference of logits);
    - with ``target_fn`` given at wrap time: ``target_fn(outputs, targets)``
      returning one score per row, computed in the framework (regression
      heads, a region of a segmentation map, ...).

    Subclasses implement ``_run(x, targets, keys)`` (framework work, returns
    numpy arrays) and ``_predict(x)``, and set ``channels_last``,
    ``expected_channels`` (or None) and ``has_layer``.
    """

    channels_last: bool = True
    expected_channels: int | None = None
    has_layer: bool = False
    supports_guided: bool = False
    predict_batch_size: int = 64

    def __call__(
        self, x: np.ndarray, targets: np.ndarray | None, keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        keys = list(keys)
        unknown = [k for k in keys if k not in KNOWN_KEYS]
        if unknown:
            raise ValueError(f"unknown output keys {unknown}; known keys are {list(KNOWN_KEYS)}")
        if any(k in LAYER_KEYS for k in keys) and not self.has_layer:
            raise ValueError(
                "this method needs a layer's values and gradients (Grad-CAM); wrap the model "
                "with layer=... naming a convolutional layer"
            )
        if GUIDED_INPUT_GRADIENTS in keys and not self.supports_guided:
            raise ValueError(
                f"{type(self).__name__} cannot compute guided gradients (Guided Backprop) "
                "for this model"
            )
        x = np.asarray(x)
        self.check_layout(x)
        return self._run(x, targets, keys)

    def check_layout(self, x: np.ndarray) -> None:
        """Raise a clear error when ``x`` has the other channel layout than the model's."""
        c = self.expected_channels
        if c is None or x.ndim != 4:
            return
        axis = 3 if self.channels_last else 1
        if x.shape[axis] == c:
            return
        other = 1 if self.channels_last else 3
        hint = ""
        if x.shape[other] == c:
            want = "channels-last (n, H, W, C)" if self.channels_last else "channels-first (n, C, H, W)"
            got = "channels-first" if self.channels_last else "channels-last"
            hint = f"; the input looks {got} but the model takes {want}"
        raise ValueError(
            f"x has shape {x.shape} but the model expects {c} channels on axis {axis}{hint}"
        )

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's raw outputs for a batch, computed in chunks without gradients."""
        x = np.asarray(x)
        self.check_layout(x)
        size = batch_size or self.predict_batch_size
        return np.concatenate([self._predict(x[i : i + size]) for i in range(0, len(x), size)])

    def call_model_function(self, channels_last_input: bool | None = None) -> Callable:
        """A PAIR-style ``call_model_function(x_batch, call_model_args, expected_keys)``.

        ``call_model_args`` names the class: an int, or a dict holding one int
        (PAIR notebooks use ``{'class_idx_str': k}``), or None for the top class.
        With ``channels_last_input=True`` the callback takes (n, H, W, C) batches,
        as PAIR's examples do, and returns gradients and layer values in that
        layout, whatever the model's own layout.
        """
        convert = channels_last_input is not None and channels_last_input != self.channels_last

        def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
            x = np.asarray(x_value_batch)
            if convert:
                x = _move_channels(x, to_last=self.channels_last)
            targets = targets_from_call_model_args(call_model_args, len(x))
            out = self(x, targets, expected_keys or [INPUT_OUTPUT_GRADIENTS])
            if convert:
                for key in (INPUT_OUTPUT_GRADIENTS, GUIDED_INPUT_GRADIENTS, *LAYER_KEYS):
                    if key in out and np.ndim(out[key]) == 4:
                        out[key] = _move_channels(out[key], to_last=not self.channels_last)
            return out

        return call_model_function

    def _run(self, x: np.ndarray, targets, keys: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _move_channels(x: np.ndarray, to_last: bool) -> np.ndarray:
    if x.ndim != 4:
        return x
    return np.moveaxis(x, 1, -1) if to_last else np.moveaxis(x, -1, 1)


def targets_from_call_model_args(call_model_args: Any, n: int) -> np.ndarray | None:
    """Read the class to explain from PAIR-style ``call_model_args``."""
    value = call_model_args
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ValueError(
                "call_model_args as a dict must hold exactly one entry, the class index "
                f"(e.g. {{'class_idx_str': 285}}), got keys {sorted(value)}"
            )
        value = next(iter(value.values()))
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim == 0:
        return np.full(n, int(arr), dtype=np.int64)
    if arr.shape[0] != n:
        raise ValueError(f"call_model_args holds {arr.shape[0]} targets for a batch of {n}")
    return arr


def score_rule_error(output_shape: tuple[int, ...]) -> ValueError:
    """The error for a model whose output is not (n, n_outputs) and no target_fn was given."""
    return ValueError(
        f"the model's output has shape {tuple(output_shape)}, not (n, n_outputs); pass "
        "target_fn=lambda outputs, targets: ... to wrap() to reduce each row to one score "
        "(for example the mean logit of a segmentation class over a region)"
    )


def wrap_native(model: Any) -> Model:
    """A salience Model for ``model``.

    A Model is returned as it is; a PyTorch module or a Keras model is wrapped
    by its adapter with its last 2-D convolution as the Grad-CAM layer (the
    framework is imported only then).  Anything else gets
    :func:`salience.model.as_model`'s error.
    """
    framework = native_framework(model)
    if framework == "torch":
        from . import torch as torch_adapter

        return torch_adapter.wrap(model, layer=torch_adapter.last_conv_layer(model))
    if framework in ("keras", "tf_keras", "tensorflow"):
        from . import keras as keras_adapter

        if keras_adapter.is_keras_model(model):
            return keras_adapter.wrap(model, layer=keras_adapter.last_conv_layer(model))
    return as_model(model)
