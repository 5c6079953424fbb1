"""The row scheduler: the single place where rows meet the model.

A method describes its work as ``n_rows`` rows (images x path steps x baselines
x noise samples), a function that builds any contiguous slice of them, and a
function that consumes the model's outputs for that slice.  The scheduler packs
the rows into ``ceil(n_rows / batch_size)`` model calls, so rows are built only
one chunk at a time and results do not depend on ``batch_size`` beyond float
summation order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .checks import check_positive_int
from .model import Model, check_outputs
from .progress import watch_rows

__all__ = ["run_rows", "NonFiniteOutputError"]

# Own work per chunk (building + consuming rows) above which a helper thread pays:
# handing a chunk to it and back costs about 0.1 ms; measured on the tiny CNN,
# IG at batch_size=1 (~20 us of own work per chunk) was 15% slower with the thread.
_WORTH_A_THREAD_S = 0.5e-3


class NonFiniteOutputError(FloatingPointError, ValueError):
    """The model returned NaN or inf (a FloatingPointError, and a ValueError about its output)."""


def run_rows(
    model: Model,
    keys: Sequence[str],
    row_image: np.ndarray,
    make_rows: Callable[[int, int], np.ndarray],
    consume: Callable[[int, int, Mapping[str, np.ndarray]], None],
    targets: np.ndarray | None,
    batch_size: int,
    method: str,
    prepare: Callable[[int, int], None] | None = None,
) -> None:
    """Send every row to the model in chunks of at most ``batch_size`` rows.

    When building (or building and consuming) the first chunk took at least
    ``_WORTH_A_THREAD_S``, a helper thread then builds chunk ``k + 1``,
    prepares chunk ``k`` and consumes chunk ``k - 1`` while the model runs
    chunk ``k`` (numpy and the frameworks release the GIL in their kernels),
    so a method's own array work hides behind the model's; cheaper work stays
    in the caller's thread, where it costs less than handing it over.  Each
    function still runs one call at a time, in chunk order for ``prepare`` and
    ``consume``; ``make_rows`` must return a fresh array and keep no state that
    ``consume`` reads (chunk ``k + 1`` may be built before chunk ``k`` is
    consumed), and state is handed on by chunk start.

    Parameters
    ----------
    model : Model
        Called once per chunk as ``model(x, targets, keys)``, from the caller's thread.
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
    prepare : callable, optional
        ``prepare(start, stop)``: the part of a chunk's own work that needs no
        model output (it runs after ``make_rows`` and before ``consume`` of the
        same chunk).  On the helper thread it runs during that chunk's model
        call, so it hides even when all rows fit in one call.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    n_rows = len(row_image)
    model = watch_rows(model, row_image)  # counts chunks while a call shows progress
    chunks = [(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)]

    def call(start: int, stop: int, x: np.ndarray) -> Mapping[str, np.ndarray]:
        chunk_targets = None if targets is None else targets[row_image[start:stop]]
        return model(x, chunk_targets, keys)

    def check_and_consume(start: int, stop: int, shape: tuple, outputs) -> None:
        outputs = check_outputs(outputs, shape, keys)
        for key in keys:  # a NaN score or activation is no better than a NaN gradient
            _raise_if_not_finite(outputs[key], key, start, row_image, method)
        consume(start, stop, outputs)

    # The first chunk runs here and measures the method's own work per chunk: a
    # slow build hands everything over, else its prepare and consume count too.
    start, stop = chunks[0]
    began = time.perf_counter()
    x = make_rows(start, stop)
    own_seconds = time.perf_counter() - began
    if own_seconds >= _WORTH_A_THREAD_S and (len(chunks) > 1 or prepare is not None):
        _run_overlapped(chunks, x, make_rows, prepare, call, check_and_consume)
        return
    if prepare is not None:
        began = time.perf_counter()
        prepare(start, stop)
        own_seconds += time.perf_counter() - began
    outputs = call(start, stop, x)
    began = time.perf_counter()
    check_and_consume(start, stop, x.shape, outputs)
    own_seconds += time.perf_counter() - began
    rest = chunks[1:]
    if own_seconds >= _WORTH_A_THREAD_S and rest:
        _run_overlapped(rest, None, make_rows, prepare, call, check_and_consume)
        return
    for start, stop in rest:
        x = make_rows(start, stop)
        if prepare is not None:
            prepare(start, stop)
        check_and_consume(start, stop, x.shape, call(start, stop, x))


def _run_overlapped(chunks, first_rows, make_rows, prepare, call, check_and_consume) -> None:
    """Run ``chunks`` with building, preparing and consuming on one helper thread,
    the model in this one; ``first_rows`` are the first chunk's rows if already built."""

    def finish(prepared, start, stop, shape, outputs) -> None:
        if prepared is not None:
            prepared.result()  # done (the helper runs jobs in order); raises its error
        check_and_consume(start, stop, shape, outputs)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="salience-rows") as helper:
        next_rows = None if first_rows is not None else helper.submit(make_rows, *chunks[0])
        x, consumed, prepared = first_rows, None, None
        try:
            for k, (start, stop) in enumerate(chunks):
                if next_rows is not None:
                    x = next_rows.result()
                prepared = helper.submit(prepare, start, stop) if prepare is not None else None
                next_rows = (helper.submit(make_rows, *chunks[k + 1])
                             if k + 1 < len(chunks) else None)
                outputs = call(start, stop, x)
                if consumed is not None:
                    consumed.result()  # errors of the previous chunk surface in order
                consumed = helper.submit(finish, prepared, start, stop, x.shape, outputs)
            consumed.result()
        except BaseException:
            for job in (next_rows, prepared):
                if job is not None:
                    job.cancel()
            raise


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
