"""What every framework adapter shares, so that an adapter only runs its framework.

The base class turns the requested keys into one :class:`CallKind`, checks the
input (layout, declared shape, and one cached probe of the model's output
shape per input shape) and the targets (forms and range, one message) before
the model runs, packs the adapter's results into the requested keys, and
provides ``predict`` and the PAIR callback.  A subclass implements ``_run``,
``_predict`` and ``_probe``.

Layers that output tokens (vision transformers: ``(n, tokens, features)``)
are turned into feature maps here, for every adapter alike: the adapter hands
over its layer's raw output and gradient, and :func:`layer_grid` (chosen by the
adapters' ``reshape=`` argument) drops the class / distillation tokens and lays
the patch tokens out on their grid in the model's layout, so the CAM methods
see a convolution-like ``(n, h, w, d)`` or ``(n, d, h, w)`` layer.
"""

from __future__ import annotations

import functools
import math
import numbers
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
    "DeviceRows",
    "FrameworkModel",
    "KNOWN_KEYS",
    "LAYER_KEYS",
    "call_kind",
    "check_reshape",
    "images_of_rows",
    "layer_grid",
    "layer_not_found",
    "score_rule_error",
    "target_fn_error",
    "targets_from_call_model_args",
    "toeplitz_index",
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


class DeviceRows:
    """Rows an adapter built in its framework, on the model's device, to be passed
    back to it as the ``x`` of a call (the adapters' ``noisy_rows`` and
    ``filtered_rows``, e.g. :meth:`salience.torch.TorchModel.noisy_rows`).

    They stand for a batch shaped ``shape`` of ``dtype``: ``len``, ``shape``,
    ``ndim`` and ``dtype`` answer without touching the device, and
    ``numpy.asarray(rows)`` copies them to the host, for a method that reads
    its rows (Input x Gradient, Blur IG's rates) and any code that does not
    know them.

    Parameters
    ----------
    values : framework array
        The rows, on the model's device.
    images : ndarray
        The host images the rows were made from (at least one, shaped like a
        row): the adapter checks calls on them, so a device array is never
        read back for a check.
    to_host : callable
        ``to_host(values)``: the rows as a numpy array.
    """

    __slots__ = ("values", "images", "shape", "dtype", "_to_host")

    def __init__(self, values: Any, images: np.ndarray, to_host: Callable[[Any], np.ndarray]):
        self.values, self.images, self._to_host = values, images, to_host
        self.shape = (int(values.shape[0]), *images.shape[1:])
        self.dtype = images.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:  # numpy 2's "never copy": rows on a device cannot be viewed
            raise ValueError("DeviceRows live on the model's device; numpy.asarray(rows) "
                             "copies them to the host, a view without a copy cannot be had")
        # A CPU tensor's host array may share its memory: copy when asked to.
        return self._to_host(self.values).astype(dtype or self.dtype, copy=bool(copy))

    def stand_in(self) -> np.ndarray:
        """A host array of the rows' shape for the call's checks: the first image,
        broadcast (a view, no copy)."""
        return np.broadcast_to(self.images[:1], self.shape)


def images_of_rows(images: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images that rows of ``owners`` are made from (the slice from the
    smallest owner to the largest; rows come image after image, so it holds
    only those) and each row's index into it, for the adapters' ``noisy_rows``,
    which copy only these images to the device."""
    first, last = int(owners.min()), int(owners.max()) + 1
    return images[first:last], owners - first


@functools.lru_cache(maxsize=8)
def toeplitz_index(size: int) -> np.ndarray:
    """``index[i, j] = j - i + size - 1``: gathering a kernel of ``2 * size - 1`` taps
    (offsets ``-(size - 1) .. size - 1``) at it gives the ``(size, size)`` matrix of
    that filter, for the adapters' ``filtered_rows``, which build their matrices on
    the device from the kernels (a few hundred values per row instead of two
    ``size x size`` matrices)."""
    offsets = np.arange(size)
    index = offsets[None, :] - offsets[:, None] + size - 1
    index.flags.writeable = False  # cached: every call of every adapter shares it
    return index


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
    # Whether the layer's gradients were asked for (Eigen-CAM and Score-CAM ask only
    # for its values): an adapter may then skip the backward pass and return none.
    layer_gradients: bool = True


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
    if kind.layer and CONVOLUTION_OUTPUT_GRADIENTS not in keys:
        kind = kind._replace(layer_gradients=False)
    return kind


# The same few key lists come on every call: their kinds are worked out once (errors,
# which depend only on the same arguments, are raised each time).
_call_kind_of = functools.lru_cache(maxsize=256)(call_kind)


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

    The layer's ``"values"`` and ``"layer"`` gradient are the layer's raw
    output; ``reshape`` (see :func:`layer_grid`) turns token outputs into
    feature maps for every adapter.  An adapter that can tell the layer's
    output shape before running (``_probe_layer``) lets a token count that
    fits no grid be refused before the model runs; otherwise it is refused
    after the first layer call.
    """

    channels_last: bool = True
    expected_channels: int | None = None
    #: The input shape the model declares, batch axis included, None for free sizes.
    input_shape: tuple[int | None, ...] | None = None
    has_layer: bool = False
    supports_guided: bool = False
    target_fn: Callable | None = None
    #: How the layer's raw output becomes a feature map (see :func:`layer_grid`).
    reshape: Any = "auto"
    predict_batch_size: int = 64
    #: What the input-shape errors call the model's input.
    input_name: str = "the model"
    #: How to give this adapter a layer, for the error when Grad-CAM has none.
    layer_hint: str = "wrap the model with layer=... naming a convolutional layer"

    def __call__(
        self, x: np.ndarray, targets: Any, keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        kind = _call_kind_of(tuple(keys), self.has_layer, self.supports_guided,
                             self.layer_hint, type(self).__name__)
        self._check_kind(kind)
        # Rows on the device are checked through a host stand-in of their shape.
        rows = x if isinstance(x, DeviceRows) else None
        x = rows.stand_in() if rows is not None else np.asarray(x)
        self.check_input(x)
        grid = self._layer_grid_before_running(x) if kind.layer else None
        if targets is not None:
            targets = resolve_targets(self, x, targets)
        result = self._run(x if rows is None else rows, targets, kind)
        out = {OUTPUT_LAYER_VALUES: result["scores"]} if "scores" in result else {}
        if kind.input:
            out[GUIDED_INPUT_GRADIENTS if kind.guided else INPUT_OUTPUT_GRADIENTS] = \
                result["input"]
        if kind.layer:
            values, grads = result["values"], result.get("layer")
            if grid is _UNKNOWN:  # the adapter could not tell the shape before running
                grid = self._layer_grid(values.shape[1:])
            if grid is not None:
                values = grid(values)
                grads = None if grads is None else grid(grads)
            out[CONVOLUTION_LAYER_VALUES] = values
            if kind.layer_gradients and grads is not None:
                out[CONVOLUTION_OUTPUT_GRADIENTS] = grads
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

    # -- the layer's output as a feature map ----------------------------------------------

    def _layer_grid_before_running(self, x: np.ndarray) -> Any:
        """The layer's reshape for inputs shaped like ``x`` (None: none), checked
        before the model runs when the adapter can tell the layer's shape; else
        ``_UNKNOWN``."""
        if self.reshape is None:
            return None
        shapes = self.__dict__.setdefault("_layer_row_shapes", {})
        key = x.shape[1:]
        if key not in shapes:
            shapes[key] = self._probe_layer(x[:1])
        row_shape = shapes[key]
        return _UNKNOWN if row_shape is None else self._layer_grid(tuple(row_shape))

    def _layer_grid(self, row_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray] | None:
        """:func:`layer_grid` for this adapter, once per layer shape."""
        grids = self.__dict__.setdefault("_layer_grids", {})
        if row_shape not in grids:
            grids[row_shape] = layer_grid(row_shape, self.reshape, self.channels_last)
        return grids[row_shape]

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

    def _probe_layer(self, x: np.ndarray) -> tuple[int, ...] | None:
        """The layer's output shape per row (no batch axis) for the one-row batch
        ``x``, found without a gradient pass; None if the adapter cannot tell."""
        return None


_UNKNOWN = object()  # a layer shape the adapter could not tell before running


def check_reshape(reshape: Any) -> Any:
    """Validate the adapters' ``reshape=`` argument (see :func:`layer_grid`)."""
    if reshape is None or callable(reshape) or (isinstance(reshape, str) and reshape == "auto"):
        return reshape
    if isinstance(reshape, (tuple, list)) and len(reshape) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0
        for v in reshape
    ):
        return (int(reshape[0]), int(reshape[1]))
    raise ValueError(
        "reshape must be 'auto', None, a grid (h, w) of positive ints, or a callable taking "
        f"and returning numpy arrays, got {reshape!r}")


def layer_grid(
    row_shape: tuple[int, ...], reshape: Any, channels_last: bool
) -> Callable[[np.ndarray], np.ndarray] | None:
    """How a layer's output of per-row shape ``row_shape`` becomes a feature map.

    Vision transformers' blocks output ``(n, tokens, features)``: a class token
    (ViT), a class and a distillation token (DeiT), then the patch tokens row
    by row.  The feature map is the patch tokens on their ``h x w`` grid,
    ``(n, h, w, features)`` for a channels-last model and
    ``(n, features, h, w)`` otherwise, as CAM methods read a convolution.

    Parameters
    ----------
    row_shape : tuple of int
        The layer's output shape without the batch axis.
    reshape : 'auto', (h, w), callable or None
        ``'auto'``: a ``(tokens, features)`` output loses its first 0, 1 or 2
        tokens, whichever leaves a square grid; outputs of any other rank
        (convolutions) are left as they are.  ``(h, w)``: a grid of that size,
        after the first ``tokens - h * w`` tokens.  A callable: ``f(batch)``
        on numpy arrays ``(n, *row_shape)`` returning the ``(n, ...)`` 4-D map
        in the model's layout; it may only select and rearrange entries, row
        by row (slicing, reshape, transpose), since it is applied to the
        layer's gradients too (it is run once on index arrays to check that).
        None: the output as it is.
    channels_last : bool
        The model's layout, which the feature map takes.

    Returns
    -------
    callable or None
        ``g(batch)`` for the layer's values and gradients alike, or None to
        leave them as they are.

    Raises
    ------
    ValueError
        The tokens fill no grid, or the callable fails those rules.

    References
    ----------
    Dosovitskiy et al. "An Image is Worth 16x16 Words: Transformers for Image
    Recognition at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929

    Touvron et al. "Training data-efficient image transformers & distillation
    through attention", ICML 2021. https://arxiv.org/abs/2012.12877
    """
    if reshape is None:
        return None
    if callable(reshape):
        return _checked_rearrangement(row_shape, reshape)
    if reshape == "auto":
        if len(row_shape) != 2:
            return None  # a convolution's (or any other) output is taken as it is
        tokens = row_shape[0]
        for extra in (0, 1, 2):  # at most one count leaves a square: see the tests
            side = math.isqrt(max(tokens - extra, 0))
            if side > 0 and side * side == tokens - extra:
                return _token_grid(row_shape, (side, side), channels_last)
        raise ValueError(
            f"the layer's output has shape (n, {tokens}, {row_shape[1]}), read as {tokens} "
            f"tokens of {row_shape[1]} features, but neither {tokens}, {tokens - 1} nor "
            f"{tokens - 2} of them (without a class token, or a class and a distillation "
            "token) fill a square grid; wrap the model with reshape=(h, w) for a grid of "
            "h x w patches (the first tokens - h*w tokens are dropped), or a callable")
    h, w = reshape
    if len(row_shape) != 2 or row_shape[0] < h * w:
        got = (f"{row_shape[0]} tokens" if len(row_shape) == 2
               else f"per-row shape {row_shape}, not (tokens, features)")
        raise ValueError(
            f"reshape=({h}, {w}) needs a layer that outputs at least {h * w} tokens, shaped "
            f"(n, tokens, features); the layer gives {got}")
    return _token_grid(row_shape, (h, w), channels_last)


def _token_grid(row_shape: tuple[int, ...], grid: tuple[int, int],
                channels_last: bool) -> Callable[[np.ndarray], np.ndarray]:
    tokens, features = row_shape
    h, w = grid
    first_patch = tokens - h * w

    def to_grid(batch: np.ndarray) -> np.ndarray:
        patches = batch[:, first_patch:].reshape(len(batch), h, w, features)
        return patches if channels_last else np.ascontiguousarray(np.moveaxis(patches, -1, 1))

    return to_grid


def _checked_rearrangement(row_shape: tuple[int, ...],
                           fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` as a fixed gather of each row's entries, after checking on index arrays
    that it selects and rearranges entries row by row, each at most once."""
    size = math.prod(row_shape)
    index = np.arange(2 * size, dtype=np.float64).reshape(2, *row_shape)
    rule = ("reshape must be a function of numpy arrays (n, *layer_shape) -> 4-D feature "
            "maps (n, ...) in the model's layout that only selects and rearranges each row's "
            "entries (slicing, reshape, transpose), since it is applied to the layer's "
            "gradients too")
    try:
        out = np.asarray(fn(index))
    except Exception as error:  # noqa: BLE001 - any failure of the user's function
        raise ValueError(f"{rule}; it failed on a batch shaped {index.shape}: "
                         f"{type(error).__name__}: {error}") from error
    if out.ndim != 4 or out.shape[0] != 2 or not np.issubdtype(out.dtype, np.number):
        raise ValueError(f"{rule}; for a batch shaped {index.shape} it returned "
                         f"{out.dtype} of shape {out.shape}")
    first = out[0]
    picked = first.ravel()
    if not (picked.size > 0 and np.array_equal(picked, np.round(picked)) and picked.min() >= 0
            and picked.max() < size and np.array_equal(out[1], first + size)
            and np.unique(picked).size == picked.size):
        raise ValueError(f"{rule}; it computes new values, mixes rows or repeats entries")
    take, shape = picked.astype(np.int64), first.shape
    return lambda batch: batch.reshape(len(batch), -1)[:, take].reshape(len(batch), *shape)


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
    by its adapter with its ``last_conv_layer`` as the Grad-CAM layer (the last
    2-D convolution; in a vision transformer the input of its last attention;
    the framework is imported only then).  Anything else gets
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
