"""The row scheduler: the single place where rows meet the model.

A method describes its work as ``n_rows`` rows (images x path steps x baselines
x noise samples), a function that builds any contiguous slice of them, and a
function that consumes the model's outputs for that slice.  The scheduler packs
the rows into ``ceil(n_rows / batch_size)`` model calls, so rows are built only
one chunk at a time and results do not depend on ``batch_size`` beyond float
summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .model import Model, check_outputs

__all__ = ["run_rows", "check_batch_size", "NonFiniteOutputError"]


class NonFiniteOutputError(FloatingPointError, ValueError):
    """The model returned NaN or inf (a FloatingPointError, and a ValueError about its output)."""


def check_batch_size(batch_size: int) -> int:
    """Validate a ``batch_size`` argument and return it as an int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    return int(batch_size)


def run_rows(
    model: Model,
    keys: Sequence[str],
    row_image: np.ndarray,
    make_rows: Callable[[int, int], np.ndarray],
    consume: Callable[[int, int, Mapping[str, np.ndarray]], None],
    targets: np.ndarray | None,
    batch_size: int,
    method: str,
) -> None:
    """Send every row to the model in chunks of at most ``batch_size`` rows.

    Parameters
    ----------
    model : Model
        Called once per chunk as ``model(x, targets, keys)``.
    keys : sequence of str
        Outputs requested from the model.
    row_image : int ndarray, shape (n_rows,)
        Which image of the batch each row belongs to; selects the row's target
        and names the image in error messages.
    make_rows : callable
        ``make_rows(start, stop)`` returns rows ``start:stop`` as one array.
    consume : callable
        ``consume(start, stop, outputs)`` receives the checked outputs.
    targets : ndarray or None
        One target per image (class index or weight row), or None.
    batch_size : int
        Largest number of rows per model call.
    method : str
        Method name used in error messages.
    """
    batch_size = check_batch_size(batch_size)
    n_rows = len(row_image)
    checked_for_finiteness = list(keys)  # a NaN score or activation is no better
    for start in range(0, n_rows, batch_size):
        stop = min(start + batch_size, n_rows)
        x = make_rows(start, stop)
        chunk_targets = None if targets is None else targets[row_image[start:stop]]
        outputs = check_outputs(model(x, chunk_targets, keys), x.shape, keys)
        for key in checked_for_finiteness:
            _raise_if_not_finite(outputs[key], key, start, row_image, method)
        consume(start, stop, outputs)


def _raise_if_not_finite(values, key, start, row_image, method):
    if np.isfinite(values).all():  # the common case: one pass, no per-row arrays
        return
    bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad_rows.any():
        row = start + int(np.argmax(bad_rows))
        raise NonFiniteOutputError(
            f"{method}: the model returned non-finite {key} (NaN or inf) for row {row} "
            f"(image {int(row_image[row])} of the batch); check the model and its input "
            "for overflow"
        )
