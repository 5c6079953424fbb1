"""Guided IG's selection step: which features move, and how far, in one path step.

Pure kernels on plain arrays.  A row's point on its path is kept as ``t``, per
feature the fraction of the way from the baseline to the input (so the point
is ``baseline + (input - baseline) * t``); ``weights = |input - baseline|``
turns ``t`` into L1 distances.  Features with no way to go (weight 0) sit at
``t = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...numeric import row_dots

__all__ = [
    "NUMPY_OPS",
    "SAMPLED_SELECT_MIN",
    "SAMPLE_SIZE",
    "ArrayOps",
    "SelectionScratch",
    "StepTarget",
    "advance_rows",
    "advance_rows_with",
    "kth_smallest",
]

_CLOSE = 1e-9  # relative and absolute tolerance for "the step's L1 target is reached"
SAMPLED_SELECT_MIN = 1 << 15
"""Rows at least this long find their k-th value from a sample (see :func:`kth_smallest`)."""
SAMPLE_SIZE = 4096
"""Values in that sample."""
_MARGIN = 4.0 * np.sqrt(SAMPLE_SIZE * 0.25) + 2  # 4 sigma of a sample quantile's position


@dataclass(frozen=True)
class StepTarget:
    """Where path step ``step`` of ``steps`` ends.

    Attributes
    ----------
    lower, upper : float
        No feature may trail below ``lower`` or lead beyond ``upper`` (in
        ``t``): the straight line's ``(step + 1) / steps``, minus and plus
        ``max_dist``, within [0, 1].
    l1_left : float
        Fraction of each row's L1 distance to the input left after the step.
    """

    lower: float
    upper: float
    l1_left: float

    @classmethod
    def of(cls, step: int, steps: int, max_dist: float) -> StepTarget:
        alpha = (step + 1.0) / steps
        return cls(max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0), 1 - (step + 1) / steps)


class SelectionScratch:
    """Work arrays of :func:`advance_rows` for up to ``rows`` rows, allocated once:
    fresh large arrays cost page faults on every allocation, which dominates at
    this size."""

    def __init__(self, rows: int, features: int, grad_dtype: np.dtype) -> None:
        self.free = np.empty((rows, features), dtype=bool)
        self.selected = np.empty((rows, features), dtype=bool)
        self.ranked = np.empty((rows, features), dtype=grad_dtype)
        self.room = np.empty((rows, features), dtype=np.float64)
        self.window = np.empty(features, dtype=bool)


def advance_rows(
    t: np.ndarray,
    weights: np.ndarray,
    abs_grad: np.ndarray,
    target: StepTarget,
    k: int,
    l1_total: np.ndarray | None = None,
    scratch: SelectionScratch | None = None,
) -> None:
    """One path step of every row, in place on ``t`` (rows x features).

    A row repeats (at most once per feature) until its L1 distance to the
    input is ``target.l1_left`` of its total: features trailing
    ``target.lower`` catch up; then the ``k``-th smallest absolute gradient
    among features not yet at ``target.upper`` (those count as +inf) selects
    the features to move towards ``upper``: all the way if that is not
    enough, else by the fraction ``gamma`` that meets the target.  A row
    that cannot move (every feature at its limit) or is already past the
    target ends its step.  Rows iterate in lockstep, each seeing only its own
    values, so the result is that of one row at a time.

    Parameters
    ----------
    t : float64 ndarray (rows, features)
        Positions, updated in place.
    weights : float64 ndarray (rows, features)
        ``|input - baseline|``.
    abs_grad : ndarray (rows, features)
        Absolute gradients at the current points.
    target : StepTarget
        The step's limits and L1 target.
    k : int
        Index of the selection threshold among a row's sorted gradients
        (``floor((features - 1) * fraction)``, numpy's 'lower' quantile).
    l1_total : ndarray (rows,), optional
        ``weights.sum(axis=1)``, if already known.
    scratch : SelectionScratch, optional
        Work arrays for at least ``rows`` rows.

    Raises
    ------
    RuntimeError
        If a row did not reach its target within ``features + 2`` iterations
        (only with non-finite or inconsistent values).
    """
    n_rows, features = t.shape
    if l1_total is None:
        l1_total = weights.sum(axis=1)
    if scratch is None:
        scratch = SelectionScratch(n_rows, features, abs_grad.dtype)
    l1_target = l1_total * target.l1_left
    a_max = target.upper
    np.maximum(t, target.lower, out=t)
    active = np.arange(n_rows)
    # Once for the loop, not per iteration (an errstate costs ~1.5 us): the reciprocal
    # of a 0 and gamma's divisions by 0 are meant.
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(features + 2):
            every = len(active) == n_rows  # views while every row moves, copies after
            tt = t if every else t[active]
            w, g = (weights, abs_grad) if every else (weights[active], abs_grad[active])
            goal, n = l1_target[active], len(active)
            free, selected, ranked, room = (b[:n] for b in (scratch.free, scratch.selected,
                                                             scratch.ranked, scratch.room))
            l1_now = l1_total[active] - row_dots(w, tt)
            close = np.abs(goal - l1_now) <= np.maximum(
                _CLOSE * np.maximum(np.abs(goal), np.abs(l1_now)), _CLOSE)
            np.less(tt, a_max, out=free)
            # ranked = |grad|, or +inf at the limit: 1 / 1 - 1 = 0 and 1 / 0 - 1 = inf
            # (arithmetic instead of a masked copy, which numpy does element by element).
            np.copyto(ranked, free)
            np.reciprocal(ranked, out=ranked)
            ranked -= 1
            ranked += g
            kth = kth_smallest(ranked, k, selected, scratch.window)
            np.less_equal(g, kth, out=selected)
            np.logical_and(selected, free, out=selected)
            np.subtract(a_max, tt, out=room)
            room *= selected
            l1_selected = row_dots(w, room)
            gamma = (l1_now - goal) / l1_selected  # 0 / 0 where nothing was selected
            moves = ~close & (l1_selected > 0) & (gamma > 0)
            partial = moves & (gamma <= 1.0)
            if partial.any():  # move by gamma; other rows add exactly zero
                room *= np.where(partial, gamma, 0.0)[:, None]
                tt += room
            full = moves & ~partial
            # Rows that need more: selected features to a_max exactly; t is in [0, 1],
            # so max(t, 0) = t elsewhere.
            if full.all():
                np.multiply(selected, a_max, out=room)
                np.maximum(tt, room, out=tt)
            elif full.any():
                tt[full] = np.maximum(tt[full], selected[full] * a_max)
            if not every:
                t[active] = tt
            active = active[full]
            if not len(active):
                return
    raise RuntimeError(
        f"GuidedIG: a path step did not converge within {features + 2} iterations; this "
        "indicates non-finite or inconsistent values"
    )


def kth_smallest(
    values: np.ndarray,
    k: int,
    below: np.ndarray | None = None,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """The ``k``-th smallest value (0-based) of each row, as a column; exact.

    Rows of at least :data:`SAMPLED_SELECT_MIN` values are not partitioned
    whole (the partition was half of Guided IG's own work): a strided sample
    brackets the ``k``-th value between two sample values ``lo <= hi``; the
    values below ``lo`` are only counted, and the few in ``[lo, hi]`` are
    partitioned.  When the bracket misses (a sample unlike its row) the row
    is partitioned whole, so the result is always ``np.partition(row, k)[k]``.
    ``below`` (rows x features, bool) and ``window`` (features, bool) are
    optional scratch; long rows of ``values`` are left as they were, short
    ones are partitioned in place.
    """
    n, features = values.shape
    if features < SAMPLED_SELECT_MIN:
        values.partition(k, axis=1)
        return values[:, k : k + 1]
    if below is None:
        below = np.empty((n, features), dtype=bool)
    if window is None:
        window = np.empty(features, dtype=bool)
    stride = features // SAMPLE_SIZE
    kth = np.empty((n, 1), dtype=values.dtype)
    for r in range(n):
        row, lt = values[r], below[r]
        sample = row[::stride].copy()
        at = k / features * len(sample)
        ends = [max(int(at - _MARGIN), 0), min(int(at + _MARGIN), len(sample) - 1)]
        sample.partition(ends)
        lo, hi = sample[ends]
        np.less(row, lo, out=lt)
        j = k - np.count_nonzero(lt)
        np.less_equal(row, hi, out=window)
        window ^= lt  # lo <= value <= hi
        inside = np.compress(window, row)  # (faster than boolean indexing)
        if 0 <= j < len(inside):
            inside.partition(j)
            kth[r] = inside[j]
        else:
            kth[r] = np.partition(row, k)[k]
    return kth


class ArrayOps(Protocol):
    """The operations :func:`advance_rows_with` and Guided IG's walk need beyond
    what the arrays of numpy, PyTorch, JAX and TensorFlow share (arithmetic and
    comparison operators with arrays and Python floats, ``abs``, ``&``, ``~``,
    slicing, ``[:, None]``), for arrays of one framework on one device.  The
    adapters that keep the walk on the model's device return one from
    ``array_ops()``; :data:`NUMPY_OPS` is the host's.
    """

    def asarray(self, values: np.ndarray) -> Any:
        """``values`` on the device (float32 may become float64, for a framework
        that does not mix the two in one product)."""

    def to_host(self, values: Any) -> np.ndarray:
        """A device array as a numpy array."""

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        """``a`` where ``condition``, else ``b`` (either may be a Python float)."""

    def kth_smallest(self, values: Any, k: int) -> Any:
        """The ``k``-th smallest value (0-based) of each row, as a column ``(rows, 1)``."""

    def concat(self, parts: Sequence[Any]) -> Any:
        """The arrays ``parts`` one after the other along the first axis."""

    def row_sums(self, values: Any) -> Any:
        """The sum of each row (over axis 1)."""

    def any(self, values: Any) -> bool:
        """Whether any value is true."""

    def rows(self, values: Any, one_row: np.ndarray) -> Any:
        """Flat rows ``values (n, features)`` as the model's input: shaped and typed
        like ``one_row`` (one host row, batch axis first), to be passed as ``x``."""


class _NumpyOps:
    """:class:`ArrayOps` on numpy arrays (the host)."""

    def asarray(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

    def to_host(self, values: np.ndarray) -> np.ndarray:
        return values

    def where(self, condition: Any, a: Any, b: Any) -> np.ndarray:
        return np.where(condition, a, b)

    def kth_smallest(self, values: np.ndarray, k: int) -> np.ndarray:
        return np.partition(values, k, axis=1)[:, k : k + 1]

    def concat(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def row_sums(self, values: np.ndarray) -> np.ndarray:
        return values.sum(axis=1)

    def any(self, values: np.ndarray) -> bool:
        return bool(values.any())

    def rows(self, values: np.ndarray, one_row: np.ndarray) -> np.ndarray:
        return values.reshape(len(values), *one_row.shape[1:]).astype(one_row.dtype)


NUMPY_OPS: ArrayOps = _NumpyOps()
"""The host's :class:`ArrayOps`, for :func:`advance_rows_with` on numpy arrays."""


def advance_rows_with(
    ops: ArrayOps,
    t: Any,
    weights: Any,
    abs_grad: Any,
    target: StepTarget,
    k: int,
    l1_total: Any,
) -> Any:
    """The path step of :func:`advance_rows`, written once for any array
    framework: returns the new positions instead of writing ``t``.

    The same arithmetic as :func:`advance_rows` (which is the host's, tuned
    for numpy with work arrays and in-place products) in whole-array
    expressions: every row takes part in every iteration, and a row that has
    reached its target keeps its positions (``where``) instead of leaving the
    set of rows.  The row sums are reductions instead of BLAS dot products,
    so positions can differ from :func:`advance_rows`'s in the last bits.

    Parameters
    ----------
    ops : ArrayOps
        The operations of the arrays' framework.
    t, weights : float64 arrays (rows, features)
        Positions and ``|input - baseline|``, as in :func:`advance_rows`.
    abs_grad : array (rows, features)
        Absolute gradients at the current points.
    target : StepTarget
    k : int
        Index of the selection threshold among a row's sorted gradients.
    l1_total : float64 array (rows,)
        ``weights.sum(axis=1)``.

    Raises
    ------
    RuntimeError
        If a row did not reach its target within ``features + 2`` iterations.
    """
    features = t.shape[1]
    l1_goal = l1_total * target.l1_left
    a_max = target.upper
    t = ops.where(t < target.lower, target.lower, t)  # laggards catch up with the line
    active = None  # every row, until the first iteration
    for _ in range(features + 2):
        l1_now = l1_total - ops.row_sums(weights * t)
        gap = l1_now - l1_goal
        # |gap| within _CLOSE relative (or absolute, near 0): the target is reached
        scale = ops.where(abs(l1_goal) > abs(l1_now), abs(l1_goal), abs(l1_now)) * _CLOSE
        close = abs(gap) <= ops.where(scale > _CLOSE, scale, _CLOSE)
        free = t < a_max
        kth = ops.kth_smallest(ops.where(free, abs_grad, np.inf), k)
        selected = (abs_grad <= kth) & free
        room = ops.where(selected, a_max - t, 0.0)
        l1_selected = ops.row_sums(weights * room)
        has_room = l1_selected > 0
        gamma = gap / ops.where(has_room, l1_selected, 1.0)  # the share of room the goal takes
        moves = ~close & has_room & (gamma > 0)
        if active is not None:
            moves = moves & active
        partial = moves & (gamma <= 1.0)
        full = moves & ~partial
        t = ops.where(partial[:, None], t + room * gamma[:, None], t)
        t = ops.where(full[:, None] & selected, a_max, t)  # all the way: to a_max exactly
        if not ops.any(full):
            return t
        active = full
    raise RuntimeError(
        f"GuidedIG: a path step did not converge within {features + 2} iterations; this "
        "indicates non-finite or inconsistent values"
    )
