"""Argument checks shared by all methods: raised before the model is called."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = [
    "as_float_batch",
    "check_finite",
    "check_positive_int",
    "check_nonnegative",
    "resolve_targets",
    "working_dtype",
]


def working_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; everything else (uint8, int, float16) becomes float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def as_float_batch(x: Any, name: str = "x") -> np.ndarray:
    """Return ``x`` as a float array of at least one item, never a view of it.

    Integer and half-precision inputs become float32 before any arithmetic, so
    uint8 images cannot wrap around.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must be a batch shaped (n, *input_shape) with at least 2 dimensions, "
            f"got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape}); pass at least one input")
    if arr.size == 0:
        raise ValueError(f"{name} has a zero-sized dimension (shape {arr.shape})")
    out = arr.astype(working_dtype(arr.dtype), copy=True)
    check_finite(out, name)
    return out


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` and the first bad index if ``arr`` has NaN/inf."""
    finite = np.isfinite(arr)
    if not finite.all():
        index = tuple(int(i) for i in np.unravel_index(np.argmin(finite), arr.shape))
        raise ValueError(
            f"{name} contains NaN or inf (first at index {index}, value {arr[index]}); "
            "saliency maps of non-finite inputs are meaningless"
        )


def check_positive_int(value: Any, name: str) -> int:
    """Validate an int > 0 (steps, nsamples, batch_size, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_nonnegative(value: Any, name: str) -> float:
    """Validate a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def resolve_targets(model: Any, x: np.ndarray, targets: Any) -> np.ndarray | None:
    """Turn the user's ``targets`` into one target per image.

    Accepted: None (the model's top class when it has ``predict``; otherwise
    left to the model), an int, a sequence/array of ``n`` ints, or an
    ``(n, n_outputs)`` float array of weights such as one-hot rows.
    """
    n = x.shape[0]
    if targets is None:
        predict = getattr(model, "predict", None)
        if predict is None:
            return None
        return np.asarray(np.argmax(np.asarray(predict(x)), axis=-1), dtype=np.int64)
    if isinstance(targets, bool):
        raise TypeError(f"targets must be an int, ints or one-hot rows, got {targets!r}")
    if isinstance(targets, numbers.Integral):
        return np.full(n, int(targets), dtype=np.int64)
    if hasattr(targets, "detach") and hasattr(targets, "cpu"):
        targets = targets.detach().cpu().numpy()
    arr = np.asarray(targets)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        return np.full(n, int(arr), dtype=np.int64)
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(
            "targets must be None, an int, n ints, or (n, n_outputs) one-hot/weight rows; "
            f"got {type(targets).__name__} with shape {arr.shape} and dtype {arr.dtype}"
        )
    if arr.shape[0] != n:
        raise ValueError(
            f"targets has {arr.shape[0]} entries but the batch x has {n} inputs; "
            "give one target per input (or a single int for all)"
        )
    if arr.ndim == 1:
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise TypeError(f"targets must be class indices (ints), got {arr.dtype} values")
        if (arr < 0).any():
            raise ValueError(f"targets must be >= 0, got {arr.min()}")
        return arr.astype(np.int64)
    check_finite(arr.astype(np.float64), "targets")
    return arr.astype(np.float32)
