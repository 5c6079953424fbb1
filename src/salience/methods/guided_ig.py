"""Guided Integrated Gradients: an adaptive path that moves low-gradient features first."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..checks import check_fraction, check_positive_int, check_seed
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from ..numeric import row_dots
from ..schedule import run_rows
from .base import Method
from .integrated_gradients import BaselineSpec, resolve_baselines

__all__ = ["GuidedIG"]

_CLOSE = 1e-9  # relative and absolute tolerance for "the step's L1 target is reached"
# Features x rows advanced together.  Small images share one loop (numpy's
# per-call cost dominates them); a 224 px image goes alone, so its float64 work
# arrays stay in cache instead of evicting the model's weights between steps
# (8 such rows at once were measured 15% slower on EfficientNet-Lite0).
_GROUP_ELEMENTS = 1 << 17
# Rows at least this long find their k-th |gradient| from a sample of _SAMPLE values.
_SAMPLED_SELECT_MIN = 1 << 15
_SAMPLE = 4096
_MARGIN = 4.0 * np.sqrt(_SAMPLE * 0.25) + 2  # 4 sigma of a sample quantile's position


class GuidedIG(Method):
    """Guided Integrated Gradients.

    The path from the baseline to the input is chosen on the fly: at each of
    ``steps`` steps the L1 distance to the input shrinks by ``1 / steps`` of
    the total, and it shrinks by moving the ``fraction`` of features with the
    smallest absolute gradient (the 'lower' quantile) towards the input, while
    no feature may lead or trail the straight line by more than ``max_dist``
    (in fractions of the way).  The map is the sum over the path of
    ``gradient * change of the feature``.  ``max_dist=0`` is Integrated
    Gradients with ``steps`` right-end points.

    All inputs (and baselines) walk their paths in lockstep: each path step is
    one schedule in which every input's current point is a row, so a batch of
    ``n`` small inputs costs ``steps`` model calls when ``batch_size >= n``.
    Rows of more than 2**17 features in all (two inputs of 3 x 224 x 224, or
    43 of 3 x 32 x 32) walk in two halves that alternate with the model: each
    half's feature selection runs on a helper thread while the model computes
    the other half's gradients, so such a batch costs ``2 * steps`` calls of
    half the rows, and its selection costs no model time when a core is free.  The halves depend on the shapes only,
    never on timing.  The path is kept in float64 as in PAIR ``saliency``.  An
    input equal to its baseline gets a zero map and sends no rows.

    The path is a discontinuous function of the gradients (a feature is in or
    out of the selected fraction), so a model whose float32 gradients change in
    the last bits with the number of rows per call (common for convolutions)
    can give maps that differ by a few percent between ``batch_size=1`` and
    larger batches; with identical gradients the results are identical.

    Differences from PAIR ``saliency`` 0.2.1, where it hangs or crashes: its
    ``np.quantile(interpolation=)`` call fails on numpy >= 2; when rounding
    leaves the L1 target unreached with every feature already at its limit
    (large input values), PAIR loops forever and here the step ends; a step
    whose target is already passed ends instead of failing an assert.  Inner
    iterations per step are bounded by the number of features; non-finite
    gradients raise ``FloatingPointError``.

    Parameters
    ----------
    steps : int
        Path steps (model rows per input and baseline).
    fraction : float in [0, 1]
        Fraction of the features selected (lowest absolute gradient) per move.
    max_dist : float in [0, 1]
        Largest lead or lag of any feature behind the straight line, as a
        fraction of the way; 0 is the straight path, 1 unbounded.
    baseline : see :func:`salience.methods.integrated_gradients.resolve_baselines`
        Start of the path; None means zeros.  With several baselines the maps
        are averaged.
    batch_size : int
        Largest number of rows per model call.
    seed : None, int or numpy Generator
        Randomness for ``baseline='uniform'`` (None: fresh draws every call).

    Returns
    -------
    Maps shaped like ``x``, float64.

    References
    ----------
    Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi. "Guided Integrated
    Gradients: An Adaptive Path Method for Removing Noise", CVPR 2021.
    https://arxiv.org/abs/2106.09788
    """

    name = "GuidedIG"

    def __init__(
        self,
        steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        baseline: BaselineSpec = None,
        batch_size: int = 32,
        seed: Any = None,
    ) -> None:
        self.steps = check_positive_int(steps, "steps")
        self.seed = check_seed(seed)
        self.fraction = check_fraction(fraction, "fraction")
        self.max_dist = check_fraction(max_dist, "max_dist")
        self.baseline = baseline
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        resolve_baselines(self.baseline, x, np.random.default_rng(0))

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        baselines = resolve_baselines(self.baseline, x, self.seed, copies)
        n, n_base = baselines.shape[:2]
        shape = x.shape[1:]
        features = int(np.prod(shape))
        inputs = np.repeat(x.reshape(n, 1, features).astype(np.float64), n_base, axis=1)
        inputs = inputs.reshape(n * n_base, features)
        starts = baselines.reshape(n * n_base, features).astype(np.float64)
        diffs = inputs - starts
        owners = np.arange(n * n_base) // n_base
        moving = np.flatnonzero(np.abs(diffs).sum(axis=1) != 0)
        maps = np.zeros((n * n_base, features), dtype=np.float64)
        if len(moving):
            maps[moving] = _guided_paths(
                model, x.dtype, shape, starts[moving], diffs[moving], owners[moving], targets,
                self.steps, self.fraction, self.max_dist, self.batch_size, self.name,
            )
        return maps.reshape(n, n_base, *shape).mean(axis=1)


def _guided_paths(model, dtype, shape, starts, diffs, owners, targets, steps, fraction, max_dist,
                  batch_size, method):
    """Walk every row's guided path in lockstep; return ``sum grad * dx`` per row.

    A point is kept as ``starts + diffs * t`` with ``t`` per feature in [0, 1]
    (the fraction of the way along the straight line), so limits and
    distances are cheap scalar expressions of ``t``.  Features with no way to
    go (``diffs == 0``) sit at ``t = 1``, always at their limit.
    """
    m, features = diffs.shape
    weights = np.abs(diffs)  # L1 distance to the input per unit of t
    l1_total = weights.sum(axis=1)
    t = np.where(weights == 0, 1.0, 0.0)
    accumulated = np.zeros((m, features), dtype=np.float64)
    k = int(np.floor((features - 1) * fraction))  # numpy's 'lower' quantile index
    # Rows advance together in groups small enough to bound the work arrays.
    group = max(1, _GROUP_ELEMENTS // features)
    groups = [slice(a, min(a + group, m)) for a in range(0, m, group)]
    work: dict[str, Any] = {}  # the gradients and the selection's buffers, from the first call

    def make_rows(start: int, stop: int) -> np.ndarray:
        points = starts[start:stop] + diffs[start:stop] * t[start:stop]
        return points.reshape(stop - start, *shape).astype(dtype)

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        g = outputs[INPUT_OUTPUT_GRADIENTS].reshape(stop - start, features)
        if "g" not in work:  # the first chunk: the gradients' precision is known now
            work["g"] = np.empty((m, features), dtype=np.result_type(g.dtype, np.float32))
            work["buffers"] = _Buffers(min(group, m), features, work["g"].dtype)
        work["g"][start:stop] = g

    def gradients(part: list[slice]) -> None:
        first = part[0].start
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], owners[first : part[-1].stop],
                 lambda a, b: make_rows(first + a, first + b),
                 lambda a, b, out: consume(first + a, first + b, out),
                 targets, batch_size, method)

    def advance(part: list[slice], step: int) -> None:
        g, buffers = work["g"], work["buffers"]
        alpha = (step + 1.0) / steps
        a_min = max(alpha - max_dist, 0.0)
        a_max = min(alpha + max_dist, 1.0)
        for rows in part:
            n = rows.stop - rows.start
            before, abs_grad = buffers.before[:n], buffers.abs_grad[:n]
            np.copyto(before, t[rows])
            np.abs(g[rows], out=abs_grad)
            l1_target = l1_total[rows] * (1 - (step + 1) / steps)
            _advance(t[rows], weights[rows], l1_total[rows], abs_grad, l1_target,
                     a_min, a_max, k, buffers)
            np.subtract(t[rows], before, out=before)
            before *= g[rows]
            accumulated[rows] += before

    if len(groups) == 1:
        for step in range(steps):
            gradients(groups)
            advance(groups, step)
        return accumulated * diffs
    # Two halves in a pipeline: the model runs one half's path points while a
    # helper thread selects the other half's next move (numpy releases the GIL),
    # so on a free core the selection costs no model time.  The halves are fixed
    # by the shapes alone, so the model calls (and the maps) do not depend on timing.
    halves = (groups[: len(groups) // 2], groups[len(groups) // 2 :])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="salience-guided-ig") as helper:
        advanced: list[Future | None] = [None, None]
        for step in range(steps):
            for h, half in enumerate(halves):
                if advanced[h] is not None:
                    advanced[h].result()  # this half's point must have moved
                gradients(half)
                advanced[h] = helper.submit(advance, half, step)
        for done in advanced:
            done.result()
    return accumulated * diffs


class _Buffers:
    """Work arrays (rows x features), allocated once per call: fresh large arrays
    cost page faults on every allocation, which dominates at this size."""

    def __init__(self, rows: int, features: int, grad_dtype: np.dtype) -> None:
        self.free = np.empty((rows, features), dtype=bool)
        self.selected = np.empty((rows, features), dtype=bool)
        self.ranked = np.empty((rows, features), dtype=grad_dtype)
        self.abs_grad = np.empty((rows, features), dtype=grad_dtype)
        self.room = np.empty((rows, features), dtype=np.float64)
        self.before = np.empty((rows, features), dtype=np.float64)
        self.window = np.empty(features, dtype=bool)


def _advance(t, weights, l1_weights, abs_grad, l1_target, a_min, a_max, k, buf):
    """One path step of every row, in place on ``t`` (rows x features).

    A row repeats (at most once per feature) until its L1 distance to the input
    is ``l1_target``: features trailing ``a_min`` catch up; then the ``k``-th
    smallest absolute gradient among features not yet at ``a_max`` (those
    count as +inf) selects the features to move towards ``a_max``: all the
    way if that is not enough, else by the fraction ``gamma`` that meets the
    target.  A row that cannot move (every feature at its limit) or is already
    past the target ends its step.  Rows iterate in lockstep, each seeing only
    its own values, so the result is that of one row at a time.
    """
    np.maximum(t, a_min, out=t)
    features = t.shape[1]
    active = np.arange(len(t))
    for _ in range(features + 2):
        every = len(active) == len(t)  # views while every row moves, copies after
        tt = t if every else t[active]
        w, g = (weights, abs_grad) if every else (weights[active], abs_grad[active])
        target, n = l1_target[active], len(active)
        free, selected, ranked, room = (b[:n] for b in
                                        (buf.free, buf.selected, buf.ranked, buf.room))
        l1_now = l1_weights[active] - row_dots(w, tt)
        close = np.abs(target - l1_now) <= np.maximum(
            _CLOSE * np.maximum(np.abs(target), np.abs(l1_now)), _CLOSE)
        np.less(tt, a_max, out=free)
        # ranked = |grad|, or +inf at the limit: 1 / 1 - 1 = 0 and 1 / 0 - 1 = inf
        # (arithmetic instead of a masked copy, which numpy does element by element).
        np.copyto(ranked, free)
        with np.errstate(divide="ignore"):
            np.reciprocal(ranked, out=ranked)
        ranked -= 1
        ranked += g
        kth = _kth_smallest(ranked, k, selected, buf.window)
        np.less_equal(g, kth, out=selected)
        selected &= free
        np.subtract(a_max, tt, out=room)
        room *= selected
        l1_selected = row_dots(w, room)
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = (l1_now - target) / l1_selected
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


def _kth_smallest(values: np.ndarray, k: int, below: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The ``k``-th smallest value (0-based) of each row, as a column; exact.

    Long rows are not partitioned whole (the partition was half of Guided IG's
    own work): a strided sample brackets the ``k``-th value between two sample
    values ``lo <= hi``; the values below ``lo`` are only counted, and the
    few in ``[lo, hi]`` are partitioned.  When the bracket misses (a sample
    unlike its row) the row is partitioned whole, so the result is always
    ``np.partition(row, k)[k]``.  ``below`` (rows x features, bool) and
    ``window`` (features, bool) are scratch; long rows of ``values`` are left
    as they were, short ones are partitioned in place.
    """
    n, features = values.shape
    if features < _SAMPLED_SELECT_MIN:
        values.partition(k, axis=1)
        return values[:, k : k + 1]
    stride = features // _SAMPLE
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

