"""Guided IG's path walk: every row's path in lockstep, around the selection kernel.

The arithmetic of a step is :func:`.selection.advance_rows`; this layer only
schedules it: rows go to the model one path step at a time, advance in groups
that bound the work arrays, and, when they are long, in two halves that take
turns with the model (:func:`salience.concurrency.take_turns`).  With an
adapter's :class:`.selection.ArrayOps` the walk stays on the model's device
instead (:func:`.selection.advance_rows_with`, all rows at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...concurrency import take_turns
from ...model import INPUT_OUTPUT_GRADIENTS, Model
from ...schedule import run_rows
from .selection import ArrayOps, SelectionScratch, StepTarget, advance_rows, advance_rows_with

__all__ = ["GuidedPaths", "WalkSettings", "walk_guided_paths"]

# Features x rows advanced together.  Small images share one loop (numpy's
# per-call cost dominates them); a 224 px image goes alone, so its float64 work
# arrays stay in cache instead of evicting the model's weights between steps
# (8 such rows at once were measured 15% slower on EfficientNet-Lite0).
_GROUP_ELEMENTS = 1 << 17
# Values (rows x features) one selection pass takes on the model's device: its ~10
# temporary float64 arrays then stay under 1.3 GB (2**24 values: 111 rows of 224 px).
_DEVICE_GROUP_VALUES = 1 << 24
# Rows of at least this many features in all that fit one group are halved, so
# the halves take turns with the model.  Below it the halves' numpy calls are
# too short: their GIL traffic stalls an eager model more than the overlap
# saves (tiny CNN, 32 px: 24 and 32 images gained 8-20%, 2 to 16 images lost).
_TWO_LANES_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class GuidedPaths:
    """The paths to walk, one per row (an input and one of its baselines).

    Attributes
    ----------
    starts, diffs : float64 ndarray (rows, features)
        Each path's baseline and ``input - baseline``, flattened.
    owners : int ndarray (rows,)
        The input (of the batch) each row belongs to.
    targets : ndarray or None
        One target per input of the batch.
    shape : tuple of int
        One input's shape, as the model takes it.
    dtype : numpy dtype
        The dtype of the rows sent to the model.
    """

    starts: np.ndarray
    diffs: np.ndarray
    owners: np.ndarray
    targets: np.ndarray | None
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class WalkSettings:
    """Guided IG's parameters as the walk needs them (see :class:`GuidedIG`)."""

    steps: int
    fraction: float
    max_dist: float
    batch_size: int
    method: str

    def threshold_index(self, features: int) -> int:
        """Index of the selection threshold among a row's sorted gradients (numpy's
        'lower' quantile at ``fraction``)."""
        return int(np.floor((features - 1) * self.fraction))


def walk_guided_paths(model: Model, paths: GuidedPaths, settings: WalkSettings,
                      ops: ArrayOps | None = None) -> np.ndarray:
    """Walk every row's guided path; return its map ``sum_steps grad * dx`` per row.

    With ``ops`` (the model's, see ``array_ops`` in :class:`salience.model.Model`)
    the positions, the selection and the sums live on the model's device: each
    step sends the rows' points there as the call's ``x`` and their gradients
    back, and only the final sums come to the host.

    A single row, or rows of fewer than 2**16 features in all, advance as one
    group per step, in this thread.  Other rows are split into groups (at most
    2**17 features or one row each; two groups when the rows would fit one),
    and the groups into two halves that alternate with the model: one half's
    selection runs on a helper thread while the model computes the other
    half's gradients.  The halves depend on the shapes alone, so the model
    calls (and the maps) never depend on timing.
    """
    if ops is not None:
        return _walk_on_device(model, paths, settings, ops)
    walk = _Walk(model, paths, settings)
    groups = walk.groups
    lanes = [groups] if len(groups) == 1 else [groups[: len(groups) // 2],
                                               groups[len(groups) // 2 :]]
    take_turns(settings.steps, len(lanes),
               in_caller=lambda lane, step: walk.fetch_gradients(lanes[lane]),
               on_helper=lambda lane, step: walk.advance(lanes[lane], step),
               name="salience-guided-ig")
    # The map: per feature, the sum over steps of gradient x change of t, times the
    # way to go (dx = diffs * dt).
    return walk.accumulated * paths.diffs


def _walk_on_device(model: Model, paths: GuidedPaths, settings: WalkSettings,
                    ops: ArrayOps) -> np.ndarray:
    """The walk with every array on the model's device, the rows advancing together
    (in groups of at most 2**24 values)."""
    walk = _DeviceWalk(paths, ops)
    k = settings.threshold_index(walk.features)
    for step in range(settings.steps):
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], paths.owners, walk.make_rows, walk.consume,
                 paths.targets, settings.batch_size, settings.method)
        walk.advance(StepTarget.of(step, settings.steps, settings.max_dist), k)
    return ops.to_host(walk.accumulated) * paths.diffs


class _DeviceWalk:
    """Positions and sums of one walk on the model's device (:class:`ArrayOps`)."""

    def __init__(self, paths: GuidedPaths, ops: ArrayOps) -> None:
        self.ops, self.features = ops, paths.diffs.shape[1]
        self.starts, self.diffs = ops.asarray(paths.starts), ops.asarray(paths.diffs)
        self.weights = abs(self.diffs)
        self.l1_total = ops.row_sums(self.weights)
        zeros = self.weights * 0.0
        self.t = ops.where(self.weights == 0, zeros + 1.0, zeros)  # no way to go: there
        self.accumulated = zeros
        # One host row of the batch's shape and dtype, for the calls' checks.
        self.one_row = paths.starts[:1].reshape(1, *paths.shape).astype(paths.dtype)
        self.grads: list[Any] = []  # this step's, chunk by chunk

    def make_rows(self, start: int, stop: int) -> Any:
        points = self.starts[start:stop] + self.diffs[start:stop] * self.t[start:stop]
        return self.ops.rows(points, self.one_row)

    def consume(self, start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        g = outputs[INPUT_OUTPUT_GRADIENTS].reshape(stop - start, self.features)
        self.grads.append(self.ops.asarray(g))

    def advance(self, target: StepTarget, k: int) -> None:
        """The step after this step's gradients, adding ``grad * dt`` to the sums."""
        ops = self.ops
        g = self.grads[0] if len(self.grads) == 1 else ops.concat(self.grads)
        self.grads = []
        abs_grad, group = abs(g), max(1, _DEVICE_GROUP_VALUES // self.features)
        parts = [advance_rows_with(ops, self.t[a : a + group], self.weights[a : a + group],
                                   abs_grad[a : a + group], target, k,
                                   self.l1_total[a : a + group])
                 for a in range(0, len(g), group)]
        moved = parts[0] if len(parts) == 1 else ops.concat(parts)
        self.accumulated = self.accumulated + (moved - self.t) * g
        self.t = moved


class _Walk:
    """Positions, gradients and work arrays of one walk."""

    def __init__(self, model: Model, paths: GuidedPaths, settings: WalkSettings) -> None:
        self.model, self.paths, self.settings = model, paths, settings
        m, features = paths.diffs.shape
        self.weights = np.abs(paths.diffs)  # L1 distance to the input per unit of t
        self.l1_total = self.weights.sum(axis=1)
        self.t = np.where(self.weights == 0, 1.0, 0.0)
        self.accumulated = np.zeros((m, features), dtype=np.float64)
        self.k = settings.threshold_index(features)
        group = max(1, _GROUP_ELEMENTS // features)
        if m * features >= _TWO_LANES_ELEMENTS and m <= group:
            group = (m + 1) // 2
        self.groups = [slice(a, min(a + group, m)) for a in range(0, m, group)]
        self.group_rows = min(group, m)
        # Built at the first gradients, whose precision they take.
        self.arrays: _WorkArrays | None = None

    def fetch_gradients(self, part: list[slice]) -> None:
        """One schedule: the gradients at the current points of the rows in ``part``."""
        paths, settings = self.paths, self.settings
        first, last = part[0].start, part[-1].stop
        m, features = paths.diffs.shape

        def make_rows(start: int, stop: int) -> np.ndarray:
            rows = slice(first + start, first + stop)
            points = paths.starts[rows] + paths.diffs[rows] * self.t[rows]
            return points.reshape(stop - start, *paths.shape).astype(paths.dtype)

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            g = outputs[INPUT_OUTPUT_GRADIENTS].reshape(stop - start, features)
            if self.arrays is None:
                self.arrays = _WorkArrays.of(m, features, self.group_rows,
                                             np.result_type(g.dtype, np.float32))
            self.arrays.grads[first + start : first + stop] = g

        run_rows(self.model, [INPUT_OUTPUT_GRADIENTS], paths.owners[first:last], make_rows,
                 consume, paths.targets, settings.batch_size, settings.method)

    def advance(self, part: list[slice], step: int) -> None:
        """Path step ``step`` of the rows in ``part``, adding ``grad * dt`` to their sums."""
        target = StepTarget.of(step, self.settings.steps, self.settings.max_dist)
        arrays = self.arrays
        assert arrays is not None, "a step advances after its gradients"
        g = arrays.grads
        # No BLAS here (salience.numeric.row_dots): BLAS threads woken from this
        # helper thread spin beside the model.
        for rows in part:
            n = rows.stop - rows.start
            before, abs_grad = arrays.before[:n], arrays.abs_grad[:n]
            np.copyto(before, self.t[rows])
            np.abs(g[rows], out=abs_grad)
            advance_rows(self.t[rows], self.weights[rows], abs_grad, target, self.k,
                         self.l1_total[rows], arrays.scratch)
            np.subtract(self.t[rows], before, out=before)
            before *= g[rows]
            self.accumulated[rows] += before


@dataclass(frozen=True)
class _WorkArrays:
    """The gradients of every row and the advance's work arrays (a group of rows at a
    time), allocated once per call: fresh large arrays cost page faults each time."""

    grads: np.ndarray  # (rows, features), the gradients' precision
    scratch: SelectionScratch
    abs_grad: np.ndarray  # (group rows, features), the gradients' precision
    before: np.ndarray  # (group rows, features), float64

    @classmethod
    def of(cls, rows: int, features: int, group_rows: int, grad_dtype: np.dtype) -> _WorkArrays:
        return cls(
            grads=np.empty((rows, features), dtype=grad_dtype),
            scratch=SelectionScratch(group_rows, features, grad_dtype),
            abs_grad=np.empty((group_rows, features), dtype=grad_dtype),
            before=np.empty((group_rows, features), dtype=np.float64),
        )
