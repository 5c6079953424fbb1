"""What every framework adapter shares, so that an adapter only runs its framework.

The base class turns the requested keys into one :class:`CallKind`, checks the
input (layout, declared shape, and one cached probe of the model's output
shape per input shape) and the targets (forms and range, one message) before
the model runs, packs the adapter's results into the requested keys, and
provides ``predict`` and the PAIR callback.  A subclass implements ``_run``,
``_predict`` and ``_probe``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any, NamedTuple

import numpy as np

from .checks import resolve_targets
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
    "GUIDED",
    "INPUT",
    "INPUT_AND_LAYER",
    "LAYER",
    "SCORES",
    "CallKind",
    "FrameworkModel",
    "KNOWN_KEYS",
    "LAYER_KEYS",
    "call_kind",
    "layer_not_found",
    "score_rule_error",
    "target_fn_error",
    "targets_from_call_model_args",
    "warn_caller",
    "layer_weights",
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


class CallKind(NamedTuple):
    """What one model call computes besides the scores (hashable: adapters key
    their traced or compiled functions by it)."""

    name: str
    input: bool  # the gradient of the scores with respect to the input
    layer: bool  # the layer's values and the gradient with respect to them
    guided: bool  # the input gradient under the guided ReLU rule
    # Whether the scores were asked for: frameworks that compute them anyway return
    # them regardless; one where they are an extra fetch (TF1 sessions) may skip them.
    scores: bool = True


SCORES = CallKind("scores", False, False, False)
INPUT = CallKind("input", True, False, False)
LAYER = CallKind("layer", False, True, False)
INPUT_AND_LAYER = CallKind("input+layer", True, True, False)
GUIDED = CallKind("guided", True, False, True)


def call_kind(keys: Sequence[str], has_layer: bool, supports_guided: bool,
              layer_hint: str = "wrap the model with layer=... naming a convolutional layer",
              name: str = "this adapter") -> CallKind:
    """The kind of call that gives ``keys``; a clear error for keys the model cannot give."""
    unknown = [k for k in keys if k not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"unknown output keys {unknown}; known keys are {list(KNOWN_KEYS)}")
    layer = any(k in LAYER_KEYS for k in keys)
    guided = GUIDED_INPUT_GRADIENTS in keys
    if layer and not has_layer:
        raise ValueError(
            f"this method needs a layer's values and gradients (Grad-CAM); {layer_hint}")
    if guided and not supports_guided:
        raise ValueError(f"{name} cannot compute guided gradients (Guided Backprop)")
    if guided and layer:
        # One backward pass cannot give a guided input gradient and a plain layer gradient.
        raise ValueError(
            "guided gradients (Guided Backprop) and a layer's gradients (Grad-CAM) cannot be "
            "requested in one call; request them in separate calls")
    if guided:
        kind = GUIDED
    elif INPUT_OUTPUT_GRADIENTS in keys:
        kind = INPUT_AND_LAYER if layer else INPUT
    else:
        kind = LAYER if layer else SCORES
    if kind is not SCORES and OUTPUT_LAYER_VALUES not in keys:
        kind = kind._replace(scores=False)
    return kind


class FrameworkModel:
    """Base of the adapters: a :class:`salience.model.Model` around a native model.

    The explained score of row ``i`` is chosen by ``targets``:

    - None: the row's largest output (the top class);
    - class indices (an int, or ``n`` ints): output ``targets[i]``;
    - a float array ``(n, n_outputs)``: ``sum_k outputs[i, k] * targets[i, k]``
      (one-hot rows, or e.g. +1/-1 for a difference of logits);
    - with ``target_fn`` given at wrap time: ``target_fn(outputs, targets)``
      returning one score per row, computed in the framework (regression
      heads, a region of a segmentation map, ...).

    Every call checks, before the model runs: the keys, the input's layout and
    shape, the model's output shape for inputs of that shape (found once per
    shape by :meth:`_probe`), and the targets, whose forms
    :func:`salience.checks.resolve_targets` reads and whose class indices must
    lie within the model's outputs.

    A subclass implements ``_run(x, targets, kind)`` (returns numpy arrays
    under ``"scores"`` (which it may leave out when ``kind.scores`` is false),
    and ``"input"``, ``"values"``, ``"layer"`` as ``kind`` asks), ``_predict(x)`` and ``_probe(x)``, and sets ``channels_last``,
    ``expected_channels``, ``input_shape``, ``has_layer``, ``supports_guided``
    and ``target_fn`` as they apply.
    """

    channels_last: bool = True
    expected_channels: int | None = None
    #: The input shape the model declares, batch axis included, None for free sizes.
    input_shape: tuple[int | None, ...] | None = None
    has_layer: bool = False
    supports_guided: bool = False
    target_fn: Callable | None = None
    predict_batch_size: int = 64
    #: What the input-shape errors call the model's input.
    input_name: str = "the model"
    #: How to give this adapter a layer, for the error when Grad-CAM has none.
    layer_hint: str = "wrap the model with layer=... naming a convolutional layer"

    def __call__(
        self, x: np.ndarray, targets: Any, keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        kind = call_kind(list(keys), self.has_layer, self.supports_guided, self.layer_hint,
                         type(self).__name__)
        self._check_kind(kind)
        x = np.asarray(x)
        self.check_input(x)
        if targets is not None:
            targets = resolve_targets(self, x, targets)
        result = self._run(x, targets, kind)
        out = {OUTPUT_LAYER_VALUES: result["scores"]} if "scores" in result else {}
        if kind.input:
            out[GUIDED_INPUT_GRADIENTS if kind.guided else INPUT_OUTPUT_GRADIENTS] = \
                result["input"]
        if kind.layer:
            out[CONVOLUTION_LAYER_VALUES] = result["values"]
            out[CONVOLUTION_OUTPUT_GRADIENTS] = result["layer"]
        return out

    # -- checks ------------------------------------------------------------------------

    def check_input(self, x: np.ndarray) -> None:
        """Raise a clear error when ``x`` does not suit the model: the other channel
        layout, a shape other than the declared one, or a batch the model fails on
        (or does not treat as a batch).  Never runs more than one probe per shape."""
        self.check_layout(x)
        self._output_row_shape(x)

    def check_layout(self, x: np.ndarray) -> None:
        """Raise a clear error when ``x`` has the other channel layout than the model's,
        or a shape other than the model's declared ``input_shape``."""
        c = self.expected_channels
        if c is not None and x.ndim == 4:
            axis = 3 if self.channels_last else 1
            if x.shape[axis] != c:
                other = 1 if self.channels_last else 3
                hint = ""
                if x.shape[other] == c:
                    got = "channels-first" if self.channels_last else "channels-last"
                    hint = f"; the input looks {got} but the model takes {self._layout()}"
                raise ValueError(
                    f"x has shape {x.shape} but the model expects {c} channels on axis {axis}"
                    f"{hint}")
        declared = self.input_shape
        if declared is not None and (
            x.ndim != len(declared)
            or any(want is not None and want != got for want, got in zip(declared, x.shape))
        ):
            shown = ", ".join("None" if d is None else str(d) for d in declared)
            raise ValueError(
                f"x has shape {x.shape} but {self.input_name} takes batches shaped ({shown}); "
                "x must be a batch (n, *input_shape)")

    def output_width(self, x: np.ndarray) -> int | None:
        """How many outputs per row the model gives for inputs shaped like ``x``: the
        range of class indices in ``targets``.  None when a ``target_fn`` makes the
        score (its targets are the user's) or the adapter cannot tell."""
        x = np.asarray(x)
        self.check_layout(x)
        shape = self._output_row_shape(x)
        if self.target_fn is not None or shape is None:
            return None
        return int(shape[0])

    def _layout(self) -> str:
        return "channels-last (n, H, W, C)" if self.channels_last \
            else "channels-first (n, C, H, W)"

    def _output_row_shape(self, x: np.ndarray) -> tuple[int, ...] | None:
        """The model's output shape per row for inputs shaped like ``x`` (cached per
        shape); checks it suits the score rule."""
        shapes = self.__dict__.setdefault("_output_shapes", {})
        key = x.shape[1:]
        if key in shapes:
            return shapes[key]
        shape, error = self._try_probe(x[:1])
        rows = 1
        if error is not None and len(x) > 1:
            # A model built for one fixed batch size may still take the whole batch.
            shape, whole_error = self._try_probe(x)
            rows, error = len(x), (error if whole_error is not None else None)
        if error is not None:
            layout = f" ({self._layout()})" if self.expected_channels is not None else ""
            raise ValueError(
                f"the model fails on one row of x (x has shape {x.shape}, the row "
                f"{x[:1].shape}): {type(error).__name__}: {error}. x must be a batch "
                f"(n, *input_shape) with the rank and layout the model takes{layout}"
            ) from error
        if shape is not None:
            shape = tuple(shape)
            if len(shape) == 0 or shape[0] not in (rows, None):
                raise ValueError(
                    f"the model returned output of shape {shape} for {rows} row(s) of x (shape "
                    f"{x.shape}); x must be a batch (n, *input_shape) with the rank the model "
                    "takes (a single image needs x[None])")
            shape = shape[1:]
            if self.target_fn is None and len(shape) != 1:
                raise score_rule_error((None, *shape))
        shapes[key] = shape
        return shape

    # -- predictions and the PAIR callback ----------------------------------------------

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's raw outputs for a batch, computed in chunks without gradients."""
        x = np.asarray(x)
        self.check_input(x)
        size = batch_size or self.predict_batch_size
        return np.concatenate([self._predict(x[i : i + size]) for i in range(0, len(x), size)])

    def call_model_function(self, channels_last_input: bool | None = None) -> Callable:
        """A PAIR-style ``call_model_function(x_batch, call_model_args, expected_keys)``.

        ``call_model_args`` names the class: an int, ints, one-hot rows, or a dict
        holding one of those (PAIR notebooks use ``{'class_idx_str': k}``), or
        None for the top class; it is checked like ``targets``.  With
        ``channels_last_input=True`` the callback takes (n, H, W, C) batches, as
        PAIR's examples do, and returns gradients and layer values in that
        layout, whatever the model's own layout.
        """
        convert = channels_last_input is not None and channels_last_input != self.channels_last

        def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
            x = np.asarray(x_value_batch)
            if convert:
                x = _move_channels(x, to_last=self.channels_last)
            targets = targets_from_call_model_args(call_model_args)
            out = self(x, targets, expected_keys or [INPUT_OUTPUT_GRADIENTS])
            if convert:
                for key in (INPUT_OUTPUT_GRADIENTS, GUIDED_INPUT_GRADIENTS, *LAYER_KEYS):
                    if key in out and np.ndim(out[key]) == 4:
                        out[key] = _move_channels(out[key], to_last=not self.channels_last)
            return out

        return call_model_function

    # -- what a framework implements ----------------------------------------------------

    def _run(self, x: np.ndarray, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _try_probe(self, x: np.ndarray) -> tuple[Any, Exception | None]:
        try:
            return self._probe(x), None
        except Exception as error:  # noqa: BLE001 - any framework error, reported by the caller
            return None, error

    def _check_kind(self, kind: CallKind) -> None:
        """Refuse, before anything runs, a kind of call this model cannot give."""

    def _probe(self, x: np.ndarray) -> tuple[int | None, ...] | None:
        """The output shape (batch axis first) for the one-row batch ``x``, found as
        cheaply as the framework allows; None if the adapter cannot tell."""
        return None


def _move_channels(x: np.ndarray, to_last: bool) -> np.ndarray:
    if x.ndim != 4:
        return x
    return np.moveaxis(x, 1, -1) if to_last else np.moveaxis(x, -1, 1)


def targets_from_call_model_args(call_model_args: Any) -> Any:
    """The targets in PAIR-style ``call_model_args``: the value itself, or the one
    entry of a dict (``{'class_idx_str': 285}``)."""
    value = call_model_args
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ValueError(
                "call_model_args as a dict must hold exactly one entry, the class index "
                f"(e.g. {{'class_idx_str': 285}}), got keys {sorted(value)}"
            )
        value = next(iter(value.values()))
    return value


def score_rule_error(output_shape: tuple[Any, ...]) -> ValueError:
    """The error for a model whose output is not (n, n_outputs) and no target_fn was given."""
    return ValueError(
        f"the model's output has shape {tuple(output_shape)}, not (n, n_outputs); pass "
        "target_fn=lambda outputs, targets: ... to wrap() to reduce each row to one score "
        "(for example the mean logit of a segmentation class over a region)"
    )


def target_fn_error(got: Any, rows: int | None = None) -> ValueError:
    """The error for a ``target_fn`` that does not return one score per row."""
    want = "(n,)" if rows is None else f"({rows},)"
    return ValueError(
        f"target_fn must return one score per row, shape {want}, got {got}")


def layer_not_found(layer: str, available: Sequence[str]) -> ValueError:
    """The error for a layer name the model does not have, listing the names it has."""
    names = list(available)
    shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
    return ValueError(f"the model has no layer named {layer!r}; available layers: {shown}")


def warn_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Warn with the location of the first caller outside salience (not an adapter line)."""
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("salience"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


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


def layer_weights(model: Any) -> Any:
    """The adapter's view of a native model's layers and weights, for checks that
    copy a model and re-initialise its layers (:mod:`salience.metrics.sanity`):
    ``salience.torch.ModuleWeights`` or ``salience.keras.ModelWeights``."""
    framework = native_framework(model)
    if framework == "torch":
        from . import torch as torch_adapter

        return torch_adapter.ModuleWeights(model)
    if framework in ("keras", "tf_keras", "tensorflow"):
        from . import keras as keras_adapter

        if keras_adapter.is_keras_model(model):
            return keras_adapter.ModelWeights(model)
    raise TypeError(
        f"model must be a torch.nn.Module or a Keras model, got {type(model).__name__}"
    )
