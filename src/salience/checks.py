"""Every argument check of the library, in one place.

Each raises a ``TypeError`` or ``ValueError`` that names the argument, what was
seen and what was expected; methods and adapters call them before the model
is, so bad input never reaches a model call.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .arrays import REDUCTIONS, to_numpy, working_dtype
from .numeric import all_finite, as_random_state

__all__ = [
    "as_float_batch",
    "check_finite",
    "check_fraction",
    "check_nonnegative",
    "check_nonnegative_int",
    "check_positive_int",
    "check_reduction",
    "check_progress",
    "check_seed",
    "resolve_targets",
]


def as_float_batch(x: Any, name: str = "x", copy: bool = True) -> np.ndarray:
    """Return ``x`` as a float array of at least one item: a copy, or with
    ``copy=False`` ``x`` itself when it is already a C-contiguous float32 or
    float64 array (for a model that never writes into its input).

    Integer and half-precision inputs become float32 before any arithmetic, so
    uint8 images cannot wrap around.
    """
    arr = to_numpy(x)
    kind = arr.dtype.kind  # (dtype kinds: ~1 us less per call than np.issubdtype)
    if kind == "c":
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must be a batch shaped (n, *input_shape) with at least 2 dimensions, "
            f"got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape}); pass at least one input")
    if arr.size == 0:
        raise ValueError(f"{name} has a zero-sized dimension (shape {arr.shape})")
    dtype = working_dtype(arr.dtype)
    out = arr.astype(dtype, copy=True) if copy else np.ascontiguousarray(arr, dtype=dtype)
    check_finite(out, name)
    return out


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` and the first bad index if ``arr`` has NaN/inf."""
    if all_finite(arr):
        return
    finite = np.isfinite(arr)
    if not finite.all():
        index = tuple(int(i) for i in np.unravel_index(np.argmin(finite), arr.shape))
        raise ValueError(
            f"{name} contains NaN or inf (first at index {index}, value {arr[index]}); "
            "saliency maps of non-finite inputs are meaningless"
        )


def check_positive_int(value: Any, name: str) -> int:
    """Validate an int > 0 (steps, nsamples, batch_size, ...)."""
    if type(value) is int and value > 0:  # the usual case, checked on every call: no ABC lookup
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_nonnegative_int(value: Any, name: str) -> int:
    """Validate an int >= 0 (min_pixel_diff, counts that may be zero)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return int(value)


def check_nonnegative(value: Any, name: str) -> float:
    """Validate a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_fraction(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """Validate a real number in [0, 1] (in (0, 1] when ``allow_zero`` is false)."""
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_reduction(how: Any, name: str = "reduction") -> str:
    """Validate a channel reduction name (see :data:`salience.arrays.REDUCTIONS`)."""
    if not isinstance(how, str) or how not in REDUCTIONS:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, REDUCTIONS))}, got {how!r}"
        )
    return how


def check_seed(seed: Any) -> Any:
    """Validate a ``seed`` argument when a method is built (before any model call):
    None, an int, a numpy ``Generator`` or ``RandomState``."""
    if seed is None:
        return seed  # no Generator built here: seeding from the OS costs ~30 us per method
    as_random_state(seed)
    return seed


def resolve_targets(model: Any, x: np.ndarray, targets: Any) -> np.ndarray | None:
    """Turn the user's ``targets`` into one target per image.

    Accepted: None (the model's top class when it has ``predict``; otherwise
    left to the model), an int, a sequence/array of ``n`` ints, or an
    ``(n, n_outputs)`` float array of weights such as one-hot rows.  When the
    model tells its width (``model.output_width(x)``, as the adapters do),
    class indices must lie in ``[0, width)`` and weight rows have ``width``
    columns; every form gets the same message.
    """
    n = x.shape[0]
    if targets is None:
        predict = getattr(model, "predict", None)
        if predict is None:
            return None
        return np.asarray(np.argmax(np.asarray(predict(x)), axis=-1), dtype=np.int64)
    if isinstance(targets, bool):
        raise TypeError(f"targets must be an int, ints or one-hot rows, got {targets!r}")
    width = getattr(model, "output_width", None)
    width = width(x) if callable(width) else None
    if isinstance(targets, np.ndarray) and targets.dtype == np.int64 and targets.shape == (n,):
        _check_class_indices(targets, width)  # already resolved (a chunk's targets): only the range
        return targets
    if isinstance(targets, numbers.Integral):
        _check_class_indices(np.array([targets], dtype=object), width)
        return np.full(n, int(targets), dtype=np.int64)
    arr = to_numpy(targets)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        _check_class_indices(arr.reshape(1), width)
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
            check_finite(arr.astype(np.float64), "targets")
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise TypeError(f"targets must be class indices (ints), got {arr.dtype} values")
        _check_class_indices(arr, width)
        return arr.astype(np.int64)
    if width is not None and arr.shape[1] != width:
        raise ValueError(
            f"one-hot/weight targets have {arr.shape[1]} columns but the model has {width} "
            "outputs per row"
        )
    check_finite(arr.astype(np.float64), "targets")
    return arr.astype(np.float32)


def _check_class_indices(indices: np.ndarray, width: int | None) -> None:
    """Class indices must be >= 0, below the model's width when known, and fit int64."""
    if indices.dtype == object or indices.size <= 256:
        # Python ints are exact however large, and a short list's min and max cost
        # less than two numpy reductions (this runs on every model call).
        values = indices.tolist()
        low, high = min(values), max(values)
    else:
        low, high = indices.min().item(), indices.max().item()
    limit = width if width is not None else 2**63
    if low < 0 or high >= limit:
        bound = (f" and < {width} (the model has {width} outputs)" if width is not None
                 else " and < 2**63" if high >= limit else "")
        raise ValueError(f"targets must be >= 0{bound}, got {low if low < 0 else high}")


def check_progress(progress: Any) -> None:
    """Raise TypeError unless ``progress`` is True, False, None or a callable (see
    :func:`salience.progress.progress_stage`)."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(
            f"progress must be True, False, None or a callable taking a ProgressEvent, got "
            f"{type(progress).__name__}"
        )
