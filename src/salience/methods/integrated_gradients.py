"""Integrated Gradients along the straight path from a baseline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..arrays import to_numpy
from ..checks import check_finite, check_positive_int, check_seed
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from ..numeric import add_by_owner, as_random_state, owner_runs
from ..schedule import check_row_budget, run_rows
from .base import Method

__all__ = [
    "IntegratedGradients", "PathsFromBaselines", "resolve_baselines", "count_baselines",
    "BaselineSpec",
]

BaselineSpec = None | float | np.ndarray | str | Callable[[np.ndarray], Any]


def resolve_baselines(spec: Any, x: np.ndarray, rng: Any = None, copies: int = 1) -> np.ndarray:
    """Return baselines shaped ``(n, n_baselines, *input_shape)`` for the batch ``x``.

    ``spec`` is one baseline specification or a list of them (each is then
    integrated from and the maps averaged):

    - None: zeros;
    - a number: that constant;
    - an array shaped like one input (shared) or like ``x`` (one per input);
    - ``'uniform'``: uniform noise within each input's value range (seeded);
    - a callable ``f(x) -> array`` returning either of the array forms.

    When ``x`` holds ``copies`` consecutive copies of each input (SmoothGrad's
    noisy samples), one-per-input arrays of ``len(x) // copies`` rows are repeated.
    """
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise ValueError("baseline list is empty; give at least one baseline")
    if any(isinstance(s, str) for s in specs):
        rng = as_random_state(rng)  # one stream, so several 'uniform' baselines differ
    return np.stack([_one_baseline(s, x, rng, copies) for s in specs], axis=1)


def count_baselines(spec: Any) -> int:
    """How many baselines ``spec`` gives (see :func:`resolve_baselines`)."""
    return len(spec) if isinstance(spec, (list, tuple)) else 1


def _one_baseline(spec: Any, x: np.ndarray, rng: Any, copies: int = 1) -> np.ndarray:
    n, shape = len(x), x.shape[1:]
    if spec is None:
        return np.zeros_like(x)
    if isinstance(spec, str):
        if spec != "uniform":
            raise ValueError(f"baseline string must be 'uniform', got {spec!r}")
        rng = as_random_state(rng)
        lows = x.reshape(n, -1).min(axis=1)
        highs = x.reshape(n, -1).max(axis=1)
        return np.stack([rng.uniform(lo, hi, shape) for lo, hi in zip(lows, highs)]).astype(
            x.dtype
        )
    if callable(spec):
        spec = spec(x)
    arr = to_numpy(spec)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"baseline must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):  # as x: never drop the imaginary part
        raise TypeError(f"baseline must be real, got dtype {arr.dtype}")
    arr = arr.astype(x.dtype)
    if arr.ndim == 0:
        arr = np.full_like(x, arr)
    elif arr.shape == shape:
        arr = np.broadcast_to(arr, x.shape).copy()
    elif copies > 1 and arr.shape == (n // copies, *shape):
        arr = np.repeat(arr, copies, axis=0)
    elif arr.shape != x.shape:
        raise ValueError(
            f"baseline has shape {arr.shape}; expected one input's shape {shape} or the "
            f"batch's shape {x.shape}"
        )
    check_finite(arr, "baseline")
    return arr


class PathsFromBaselines(Method):
    """A method walking ``steps`` rows from each baseline to the input (IG, Guided IG):
    its row count and the input checks it needs before the model runs."""

    steps: int
    baseline: BaselineSpec

    def _rows_per_input(self) -> int:
        return count_baselines(self.baseline) * self.steps

    def _check(self, model: Model, x: np.ndarray) -> None:
        check_row_budget(self.name, len(x) * self._rows_per_input(), x[0].size)
        # The real draws of 'uniform' happen in _explain, from self.seed.
        resolve_baselines(self.baseline, x, 0)  # a seed: an rng only for "uniform"


class IntegratedGradients(PathsFromBaselines):
    """Integrated Gradients.

    The map is ``(x - baseline) * mean_k grad f(baseline + a_k (x - baseline))``
    with ``a_k = linspace(0, 1, steps)`` (both ends included, as in PAIR
    ``saliency``), averaged over baselines when several are given.  With many
    steps the map sums to ``f(x) - f(baseline)`` (completeness).

    Parameters
    ----------
    steps : int
        Points on the path per baseline.
    baseline : see :func:`resolve_baselines`
        The reference input(s); None means zeros.
    batch_size : int
        Largest number of path points per model call; points of different
        inputs and baselines share calls.
    seed : None, int or numpy Generator
        Randomness for ``baseline='uniform'``.

    References
    ----------
    Sundararajan, Taly, Yan. "Axiomatic Attribution for Deep Networks", ICML
    2017. https://arxiv.org/abs/1703.01365
    """

    name = "IntegratedGradients"

    def __init__(
        self,
        steps: int = 25,
        baseline: BaselineSpec = None,
        batch_size: int = 32,
        seed: Any = None,
    ) -> None:
        self.steps = check_positive_int(steps, "steps")
        self.baseline = baseline
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = check_seed(seed)

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        baselines = resolve_baselines(self.baseline, x, self.seed, copies)
        return integrate_straight_paths(
            model, x, baselines, targets, self.steps, self.batch_size, self.name
        )


def integrate_straight_paths(
    model: Model,
    x: np.ndarray,
    baselines: np.ndarray,
    targets: np.ndarray | None,
    steps: int,
    batch_size: int,
    method: str,
) -> np.ndarray:
    """IG of every input from every baseline in one schedule, averaged over baselines.

    ``baselines`` is ``(n, n_baselines, *input_shape)``.  Rows are ordered
    input, baseline, step.
    """
    n, n_base = baselines.shape[:2]
    path_alphas = np.linspace(0, 1, steps).astype(x.dtype)
    diffs = x[:, None] - baselines  # (n, n_base, *shape)
    flat_base = baselines.reshape(n * n_base, *x.shape[1:])
    flat_diff = diffs.reshape(n * n_base, *x.shape[1:])
    n_rows = n * n_base * steps
    path = np.arange(n_rows) // steps  # which (input, baseline) pair each row is on
    grad_sums = np.zeros((n * n_base, *x.shape[1:]), dtype=np.float64)
    expand = (slice(None),) + (None,) * (x.ndim - 1)

    def make_rows(start: int, stop: int) -> np.ndarray:
        # Rows are in path order.  A chunk over several paths broadcasts each run's path
        # into one array, rather than gathering a copy of each row's path (three times
        # the memory traffic at 224 px); a chunk on one path (at batch_size=1, every
        # chunk) skips the loop, whose few microseconds a chunk show there.
        first = int(path[start])
        if path[stop - 1] == first:
            first_step = start - first * steps
            points = path_alphas[first_step:first_step + stop - start][expand] * flat_diff[first]
            points += flat_base[first]  # base + a * diff, as one fresh array
            return points
        points = np.empty((stop - start, *x.shape[1:]), dtype=x.dtype)
        for a, b in owner_runs(path[start:stop]):
            on = int(path[start + a])
            first_step = start + a - on * steps
            run = points[a:b]
            np.multiply(path_alphas[first_step:first_step + b - a][expand], flat_diff[on],
                        out=run)
            run += flat_base[on]
        return points

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        add_by_owner(grad_sums, path[start:stop], outputs[INPUT_OUTPUT_GRADIENTS])

    run_rows(model, [INPUT_OUTPUT_GRADIENTS], path // n_base, make_rows, consume, targets,
             batch_size, method)
    maps = (grad_sums * flat_diff / steps).reshape(n, n_base, *x.shape[1:]).mean(axis=1)
    return maps.astype(x.dtype)

