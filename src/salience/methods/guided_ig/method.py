"""Guided Integrated Gradients: the method (its parameters, baselines and maps)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...checks import check_fraction, check_positive_int, check_seed
from ...model import Model
from ..base import check_row_place, rows_on_model
from ..integrated_gradients import BaselineSpec, PathsFromBaselines, resolve_baselines
from .selection import ArrayOps
from .walk import GuidedPaths, WalkSettings, walk_guided_paths

__all__ = ["GuidedIG"]


class GuidedIG(PathsFromBaselines):
    """Guided Integrated Gradients.

    The path from the baseline to the input is chosen on the fly: at each of
    ``steps`` steps the L1 distance to the input shrinks by ``1 / steps`` of
    the total, and it shrinks by moving the ``fraction`` of features with the
    smallest absolute gradient (the 'lower' quantile) towards the input, while
    no feature may lead or trail the straight line by more than ``max_dist``
    (in fractions of the way).  The map is the sum over the path of
    ``gradient * change of the feature``.  ``max_dist=0`` is Integrated
    Gradients with ``steps`` left-end points (gradients at ``k / steps``,
    ``k = 0 .. steps - 1``).  The step's arithmetic is
    :func:`salience.methods.guided_ig.selection.advance_rows`.

    All inputs (and baselines) walk their paths in lockstep: each path step is
    one schedule in which every input's current point is a row, so a batch of
    ``n`` small inputs costs ``steps`` model calls when ``batch_size >= n``.
    Two or more rows of 2**16 features or more in all (two inputs of
    3 x 224 x 224, or 22 of 3 x 32 x 32) walk in two halves that alternate
    with the model: each half's feature selection runs on a helper thread
    while the model computes the other half's gradients, so such a batch
    costs ``2 * steps`` calls of half the rows, and its selection costs no
    model time when a core is free.
    The halves depend on the shapes only, never on timing.  The path is kept
    in float64 as in PAIR ``saliency``.  An input equal to its baseline gets a
    zero map and sends no rows.

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
    select_on : {'auto', 'host', 'model'}
        Where the path's positions, the selection and the sums live.
        ``"host"``: numpy, in place, in groups of rows that take turns with
        the model.  ``"model"``: the model's device, through its adapter's
        ``array_ops()`` (``salience.torch.wrap`` on a device with float64,
        ``salience.jax.wrap`` with JAX's 64-bit arrays on,
        ``salience.keras.wrap``): each step's points are made there and
        passed to the model as its input, only the gradients come back and go
        again, and the maps come to the host once.  On an accelerator this takes the method's largest
        cost off the host (about 2 ms per 224 px row of numpy work on a CPU,
        twice what a data-centre GPU takes for a Lite0 row).  The arithmetic
        is the same (:func:`.selection.advance_rows_with`), its row sums are
        reductions instead of BLAS products, so the maps agree with the
        host's up to rounding.  ``"auto"`` (default): the model's device when
        it is an accelerator and the adapter can, else the host.

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
        select_on: str = "auto",
    ) -> None:
        self.steps = check_positive_int(steps, "steps")
        self.seed = check_seed(seed)
        self.fraction = check_fraction(fraction, "fraction")
        self.max_dist = check_fraction(max_dist, "max_dist")
        self.baseline = baseline
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.select_on = check_row_place(select_on, "select_on")

    def _check(self, model: Model, x: np.ndarray) -> None:
        super()._check(model, x)
        self._ops_of(model)  # raises if select_on='model' and the model cannot

    def resolved_for(self, model: Model) -> GuidedIG:
        """A copy with ``select_on="auto"`` made ``"model"`` or ``"host"``, as it
        runs for ``model`` (the two differ in the last bits)."""
        return self._place_resolved("select_on", self._ops_of(model) is not None)

    def _ops_of(self, model: Model) -> ArrayOps | None:
        """The model's array operations when this run walks on its device, else None
        (raises if ``select_on='model'`` and the model cannot)."""
        make = getattr(model, "array_ops", None)
        ops = make() if callable(make) else None
        on_model = rows_on_model(model, self.select_on, "array_ops", "select_on",
                                 available=ops is not None)
        return ops if on_model else None

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        ops = self._ops_of(model)
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
            paths = GuidedPaths(starts[moving], diffs[moving], owners[moving], targets, shape,
                                x.dtype)
            settings = WalkSettings(self.steps, self.fraction, self.max_dist, self.batch_size,
                                    self.name)
            maps[moving] = walk_guided_paths(model, paths, settings, ops)
        return maps.reshape(n, n_base, *shape).mean(axis=1)
