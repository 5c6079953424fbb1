"""Black-box models: ``salience.blackbox.wrap(fn, n_outputs=...)`` -> Model.

Any function from a batch of inputs to scores, ``fn(x) -> (n, n_outputs)``
(an ONNX Runtime session, a model behind a REST endpoint, a scikit-learn
pipeline), becomes a :class:`salience.model.Model` that answers
``OUTPUT_LAYER_VALUES`` and ``predict``, so the methods that need only scores
(Occlusion, RISE, LIME, Kernel SHAP) can explain it.  Asking it for gradients
or layer values raises an error naming those methods, before ``fn`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._adapter import SCORES, CallKind, FrameworkModel
from .arrays import to_numpy
from .checks import check_positive_int
from .model import OUTPUT_LAYER_VALUES

__all__ = ["BlackBoxModel", "ScoresOnlyError", "wrap"]

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                "tensor(float16)": np.float16}


class ScoresOnlyError(ValueError):
    """A method asked a black-box model for gradients or layer values."""


def wrap(
    fn: Any,
    n_outputs: int | None = None,
    *,
    channels_last: bool | None = None,
    dtype: Any = None,
    batch_size: int = 64,
) -> BlackBoxModel:
    """Wrap ``fn(x) -> scores`` as a salience Model that gives only scores.

    Parameters
    ----------
    fn : callable or onnxruntime.InferenceSession
        ``fn(x)`` takes a numpy batch ``(n, *input_shape)`` and returns raw
        outputs ``(n, n_outputs)`` (any array-like; a 1-D result is one output).
        An ONNX Runtime session is called with its first input and returns its
        first output, in the session's input dtype.
    n_outputs : int, optional
        Number of outputs per row; when given, targets are checked against it
        before ``fn`` runs, and so is every result.  Read from an ONNX session's
        output shape when it is fixed there.
    channels_last : bool, optional
        Layout of ``x``: (n, H, W, C) when true, (n, C, H, W) when false.  Read
        from an ONNX session's input shape when it is fixed there (a channel
        axis of 1, 3 or 4 first or last); otherwise True.
    dtype : numpy dtype, optional
        What ``x`` is cast to before ``fn`` sees it (ONNX sessions: their
        input's type).
    batch_size : int
        Chunk size of :meth:`BlackBoxModel.predict`.
    """
    return BlackBoxModel(fn, n_outputs, channels_last=channels_last, dtype=dtype,
                         batch_size=batch_size)


class BlackBoxModel(FrameworkModel):
    """A scores-only model around a function; see :func:`wrap`.

    The explained score of a row is chosen by ``targets`` as in the other
    adapters: None the largest output, class indices, or weight rows.
    """

    has_layer = False
    supports_guided = False

    def __init__(self, fn: Any, n_outputs: int | None = None, *,
                 channels_last: bool | None = None, dtype: Any = None,
                 batch_size: int = 64) -> None:
        input_shape: Sequence[Any] = ()
        if _is_onnx_session(fn):
            fn, input_shape, onnx_dtype, onnx_outputs = _onnx_runner(fn)
            dtype = onnx_dtype if dtype is None else dtype
            n_outputs = onnx_outputs if n_outputs is None else n_outputs
        if not callable(fn):
            raise TypeError(f"fn must be callable (x -> scores), got {type(fn).__name__}")
        self.fn: Callable[[np.ndarray], Any] = fn
        self.n_outputs = None if n_outputs is None else check_positive_int(n_outputs, "n_outputs")
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.predict_batch_size = check_positive_int(batch_size, "batch_size")
        self.channels_last, self.expected_channels = _layout(input_shape, channels_last)

    def __call__(self, x: np.ndarray, targets: Any,
                 keys: Sequence[str]) -> dict[str, np.ndarray]:
        other = [k for k in keys if k != OUTPUT_LAYER_VALUES]
        if other:  # before the base's key checks, which would name only the missing layer
            from . import registry

            raise ScoresOnlyError(
                f"a black-box model gives only scores (OUTPUT_LAYER_VALUES), but the method "
                f"asked for {other}; methods that need only scores: "
                f"{', '.join(registry.score_only_names())}.  Gradient and layer methods need "
                "the model in its framework (salience.torch.wrap, salience.keras.wrap, ...)"
            )
        return super().__call__(x, targets, keys)

    def _run(self, x: np.ndarray, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        assert kind == SCORES  # __call__ refused every other kind
        return {"scores": _select(self._outputs(x), targets)}

    def _probe(self, x: np.ndarray) -> tuple[int | None, ...] | None:
        """The output shape: from ``n_outputs`` when given (``fn`` is not called), else
        from one call of ``fn`` on the one-row batch."""
        if self.n_outputs is not None:
            return (len(x), self.n_outputs)
        return self._outputs(x).shape

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self._outputs(x)

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        if self.dtype is not None:
            x = x.astype(self.dtype, copy=False)
        outputs = to_numpy(self.fn(x))
        if outputs.ndim == 1:
            outputs = outputs[:, None]
        if outputs.ndim != 2 or outputs.shape[0] != len(x):
            raise ValueError(f"fn returned shape {outputs.shape} for a batch of {len(x)} "
                             "inputs; it must return (n, n_outputs) scores, one row per input")
        if self.n_outputs is not None and outputs.shape[1] != self.n_outputs:
            raise ValueError(f"fn returned {outputs.shape[1]} outputs per row, but "
                             f"n_outputs={self.n_outputs}")
        return outputs.astype(np.float64, copy=False)


def _select(outputs: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """One score per row: the top output, the target's output, or a weighted sum (the
    base checked the targets against the outputs' width)."""
    if targets is None:
        return outputs.max(axis=1)
    if targets.ndim == 1:
        return outputs[np.arange(len(outputs)), targets.astype(np.int64)]
    return (outputs * targets).sum(axis=1)


def _is_onnx_session(fn: Any) -> bool:
    return all(hasattr(fn, name) for name in ("run", "get_inputs", "get_outputs"))


def _onnx_runner(session: Any) -> tuple[Callable, Sequence[Any], Any, int | None]:
    """A function calling the session on its first input; its input shape and dtype,
    and its number of outputs when fixed."""
    first_input = session.get_inputs()[0]
    name = first_input.name
    dtype = _ONNX_DTYPES.get(first_input.type)
    output_shape = session.get_outputs()[0].shape
    n_outputs = output_shape[-1] if output_shape and isinstance(output_shape[-1], int) else None

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run, list(first_input.shape or ()), dtype, n_outputs


def _layout(input_shape: Sequence[Any], channels_last: bool | None) -> tuple[bool, int | None]:
    """Layout and channel count: as given, else read from a fixed 4-D input shape."""
    dims = list(input_shape)
    if len(dims) == 4:
        first, last = dims[1], dims[3]
        first_c = isinstance(first, int) and first in (1, 3, 4)
        last_c = isinstance(last, int) and last in (1, 3, 4)
        if channels_last is None and first_c != last_c:
            channels_last = last_c
        if channels_last is not None:
            channels = last if channels_last else first
            return bool(channels_last), channels if isinstance(channels, int) else None
    return (True if channels_last is None else bool(channels_last)), None
