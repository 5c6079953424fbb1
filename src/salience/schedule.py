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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_positive_int
from .concurrency import helper_thread
from .model import Model, check_outputs
from .numeric import all_finite
from .progress import watch_rows

__all__ = [
    "ARRAY_WORK_OVERLAP_VALUES",
    "MAX_ROW_VALUES",
    "NonFiniteOutputError",
    "check_row_budget",
    "checked_outputs",
    "overlap_for_array_work",
    "run_rows",
]

# Own work per chunk (building + preparing + consuming rows) above which a helper
# thread pays.  Handing a chunk over costs ~0.1 ms, but the cost that decides is
# the GIL: an eager model of small ops (PyTorch on a CPU, or a small network
# anywhere) takes it back after every op, and a helper running numpy code beside
# it stalls it.  On the tiny CNN (a 0.3-3 ms call), chunks of 0.2-1 ms own work
# ran 10-60% slower overlapped than in the caller's thread (best of 8; Blur IG's
# median 3.6x slower while its products on the helper still woke every BLAS
# thread, since mended: see ARRAY_WORK_OVERLAP_VALUES); on EfficientNet-Lite0,
# whose chunks carry 2-40 ms, the thread hides the work (Blur IG 2.71 s against
# 2.96 s in the caller's thread).
_WORTH_A_THREAD_S = 2e-3

ARRAY_WORK_OVERLAP_VALUES = 1 << 16
"""Values in a chunk's rows (rows x values per row) from which a method whose own
work per chunk is a few whole-array kernels (SmoothGrad's noise, Blur IG's blur
products, Score-CAM's and RISE's masks) overlaps it with the model from the first
chunk (:func:`overlap_for_array_work`).

Those kernels run without the GIL (and their BLAS products on one thread: see
:func:`salience.numeric.one_blas_thread`), so beside even a fast eager model they
cost it little, unlike the Python-heavy work the 2 ms rule is set for.  Tiny CNN
(32 px: 3072 values a row), salience / floor in the caller's thread -> overlapped,
best of 5-60 interleaved: at 32 images SmoothGrad 1.19 -> 1.04x (64 rows a chunk)
and 1.35 -> 1.17x (32 rows), RISE 1.14 -> 1.06x and Score-CAM 1.23 -> 1.13x (64
rows), Blur IG 1.22 -> 1.06x (32 rows, 8 images); at one image RISE 1.09 -> 0.97x,
Blur IG 1.23 -> 1.13x.  Smaller chunks lose: Score-CAM 1.62 -> 1.74x at 16 rows,
SmoothGrad 1.94 -> 2.10x at 8.
"""

MAX_ROW_VALUES = 2**40
"""Most values (rows x values per row) one explanation may send to the model.

2**40 is about 1.1e12 values, 4 TiB of float32: 7.3 million rows of a
224 x 224 x 3 image, days of model time on one machine.  Methods refuse more
before allocating anything (:func:`check_row_budget`); for a larger run,
raise it: ``salience.schedule.MAX_ROW_VALUES = 2**44``.
"""


class NonFiniteOutputError(FloatingPointError, ValueError):
    """The model returned NaN or inf (a FloatingPointError, and a ValueError about its output)."""


def check_row_budget(method: str, n_rows: int, row_values: int) -> None:
    """Refuse a run of ``n_rows`` model rows of ``row_values`` values each if it
    exceeds :data:`MAX_ROW_VALUES`, saying what it would take.

    Parameters
    ----------
    method : str
        Method name used in the message.
    n_rows : int
        Rows the run would send to the model (images x steps x baselines x samples).
    row_values : int
        Values in one row (the size of one input).
    """
    total = int(n_rows) * int(row_values)
    if total > MAX_ROW_VALUES:
        raise ValueError(
            f"{method} would send {n_rows:,} rows of {row_values:,} values to the model "
            f"({total:.3g} values, {total * 4 / 2**40:.3g} TiB as float32), more than "
            f"salience.schedule.MAX_ROW_VALUES = {MAX_ROW_VALUES:.3g}; use fewer steps, "
            "samples or inputs per call, or raise that limit to run it anyway"
        )


def overlap_for_array_work(batch_size: int, n_rows: int, row_values: int) -> bool | None:
    """:func:`run_rows`' ``overlap`` for own work made of whole-array kernels, for
    ``n_rows`` rows of ``row_values`` values sent ``batch_size`` at a time: True from
    :data:`ARRAY_WORK_OVERLAP_VALUES` values in the largest chunk, else None (the
    scheduler measures the first chunk)."""
    chunk_rows = min(batch_size, n_rows)
    return True if chunk_rows * row_values >= ARRAY_WORK_OVERLAP_VALUES else None


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
    overlap: bool | None = None,
) -> None:
    """Send every row to the model in chunks of at most ``batch_size`` rows.

    With overlap, a helper thread builds chunk ``k + 1``, prepares chunk
    ``k`` and consumes chunk ``k - 1`` while the model runs chunk ``k``
    (numpy and the frameworks release the GIL in their kernels), so a
    method's own array work hides behind the model's.  Either way each
    function runs one call at a time, in chunk order, and the results are
    the same; ``make_rows`` must return a fresh array and keep no state that
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
        same chunk).  With overlap it runs during that chunk's model call, so
        it hides even when all rows fit in one call.
    overlap : bool or None
        Use the helper thread (True), never (False), or decide from the first
        chunk (None, the default): when building it (or building, preparing
        and consuming it) took at least 2 ms, the rest overlaps; cheaper
        work stays in the caller's thread, where it costs less than handing
        it over.  A single chunk without ``prepare`` always runs in the
        caller's thread: there is no model call to hide its work behind.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    n_rows = len(row_image)
    if n_rows == 0:
        return
    model = watch_rows(model, row_image)  # counts chunks while a call shows progress
    stages = _Stages(model=model, keys=keys, row_image=row_image, make_rows=make_rows,
                     prepare=prepare, consume=consume, targets=targets, method=method,
                     batch_size=batch_size)
    if n_rows <= batch_size and prepare is None:  # one chunk: nothing to overlap it with
        stages.in_order(0, n_rows)
        return
    # Chunks by start row, as a lazy range: no per-chunk Python list.
    starts = range(0, n_rows, batch_size)
    if overlap is not None:
        (_overlapped if overlap else _serial)(stages, starts)
        return
    # The first chunk runs here and measures the method's own work per chunk: a
    # slow build hands everything over, else its prepare and consume count too.
    start, stop = 0, stages.stop(0)
    began = time.perf_counter()
    x = make_rows(start, stop)
    own_seconds = time.perf_counter() - began
    if own_seconds >= _WORTH_A_THREAD_S and (len(starts) > 1 or prepare is not None):
        _overlapped(stages, starts, first_rows=x)
        return
    if prepare is not None:
        began = time.perf_counter()
        prepare(start, stop)
        own_seconds += time.perf_counter() - began
    outputs = stages.call(start, stop, x)
    began = time.perf_counter()
    stages.finish(start, stop, x.shape, outputs)
    own_seconds += time.perf_counter() - began
    rest = starts[1:]
    if own_seconds >= _WORTH_A_THREAD_S and rest:
        _overlapped(stages, rest)
    else:
        _serial(stages, rest)


@dataclass(slots=True)  # not frozen: a frozen init costs ~4 us, once per run
class _Stages:
    """The stages of one chunk: build, prepare, call the model, check and consume
    (the arguments of :func:`run_rows`)."""

    model: Model
    keys: Sequence[str]
    row_image: np.ndarray
    make_rows: Callable[[int, int], np.ndarray]
    prepare: Callable[[int, int], None] | None
    consume: Callable[[int, int, Mapping[str, np.ndarray]], None]
    targets: np.ndarray | None
    method: str
    batch_size: int

    def stop(self, start: int) -> int:
        """End of the chunk starting at row ``start``."""
        return min(start + self.batch_size, len(self.row_image))

    def call(self, start: int, stop: int, x: np.ndarray) -> Mapping[str, np.ndarray]:
        chunk_targets = None if self.targets is None else self.targets[self.row_image[start:stop]]
        return self.model(x, chunk_targets, self.keys)

    def finish(self, start: int, stop: int, shape: tuple, outputs) -> None:
        """Check the model's outputs and hand them to ``consume``."""
        self.consume(start, stop, checked_outputs(outputs, shape, self.keys, start,
                                                  self.row_image, self.method))

    def in_order(self, start: int, stop: int) -> None:
        """One chunk in this thread: build, prepare, call the model, finish."""
        x = self.make_rows(start, stop)
        if self.prepare is not None:
            self.prepare(start, stop)
        self.finish(start, stop, x.shape, self.call(start, stop, x))


def _serial(stages: _Stages, starts: range) -> None:
    for start in starts:
        stages.in_order(start, stages.stop(start))


def _overlapped(stages: _Stages, starts: range, first_rows: np.ndarray | None = None) -> None:
    """Run the chunks at ``starts`` with building, preparing and consuming on one
    helper thread, the model in this one; ``first_rows`` are the first chunk's
    rows if already built."""

    def finish_after(prepared, start, stop, shape, outputs) -> None:
        if prepared is not None:
            prepared.result()  # done (the helper runs jobs in order); raises its error
        stages.finish(start, stop, shape, outputs)

    with helper_thread("salience-rows") as helper:
        next_rows = (helper.submit(stages.make_rows, starts[0], stages.stop(starts[0]))
                     if first_rows is None else None)
        x, consumed = first_rows, None
        for k, start in enumerate(starts):
            stop = stages.stop(start)
            if next_rows is not None:
                x = next_rows.result()
            assert x is not None  # built here or on the helper, before its call
            prepared = (helper.submit(stages.prepare, start, stop)
                        if stages.prepare is not None else None)
            next_rows = (helper.submit(stages.make_rows, starts[k + 1],
                                       stages.stop(starts[k + 1]))
                         if k + 1 < len(starts) else None)
            outputs = stages.call(start, stop, x)
            if consumed is not None:
                consumed.result()  # errors of the previous chunk surface in order
            consumed = helper.submit(finish_after, prepared, start, stop, x.shape, outputs)
        if consumed is not None:
            consumed.result()


def checked_outputs(outputs: Any, shape: tuple, keys: Sequence[str], start: int,
                    row_image: np.ndarray, method: str) -> dict[str, np.ndarray]:
    """The model's outputs for rows ``start:`` (inputs shaped ``shape``) as arrays,
    checked: every key there, shapes that fit, every value finite."""
    outputs = check_outputs(outputs, shape, keys)
    for key in keys:  # a NaN score or activation is no better than a NaN gradient
        _raise_if_not_finite(outputs[key], key, start, row_image, method)
    return outputs


def _raise_if_not_finite(values, key, start, row_image, method):
    if all_finite(values):  # the common case: one pass, no per-row arrays
        return
    bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad_rows.any():
        row = start + int(np.argmax(bad_rows))
        raise NonFiniteOutputError(
            f"{method}: the model returned non-finite {key} (NaN or inf) for row {row} "
            f"(image {int(row_image[row])} of the batch); check the model and its input "
            "for overflow"
        )
