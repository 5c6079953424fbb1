"""SmoothGrad and its relatives: a statistic of any method's maps over noisy copies
of the input.

Each input gets ``N`` noisy copies ``x + eps_s`` and the wrapped method's map
``M(x + eps_s)`` of each; the copies' maps are then reduced per input:

- ``"mean"`` (SmoothGrad): ``1/N sum_s M_s`` (or of ``M_s^2`` with ``magnitude``, PAIR);
- ``"squaregrad"`` (SquareGrad, SmoothGrad^2): ``1/N sum_s M_s^2``;
- ``"vargrad"`` (VarGrad): the unbiased sample variance
  ``1/(N-1) sum_s (M_s - mean_s M_s)^2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int, check_seed
from ..model import Model
from ..numeric import as_random_state, owner_runs, standard_normal_rows
from ..schedule import check_row_budget, run_rows
from .base import Method

__all__ = ["AGGREGATIONS", "NoiseRows", "SmoothGrad", "aggregate_samples", "draw_noise"]

#: What :class:`SmoothGrad` can compute from the noisy copies' maps, and its paper.
AGGREGATIONS = {
    "mean": "SmoothGrad: the mean of the maps (of their squares with magnitude=True)",
    "squaregrad": "SquareGrad: the mean of the squared maps",
    "vargrad": "VarGrad: the unbiased variance of the maps",
}


class SmoothGrad(Method):
    """Wrap a method and reduce its maps over Gaussian-noised inputs.

    All noisy copies of all inputs are handed to the wrapped method as one
    batch, so their rows share model calls (SmoothGrad over Integrated
    Gradients packs samples x steps rows into the same chunks).  The copies'
    maps are then reduced per input by ``aggregation``: their mean
    (SmoothGrad), the mean of their squares (SquareGrad) or their variance
    (VarGrad), see :func:`aggregate_samples`.

    Parameters
    ----------
    method : Method
        The method to smooth (Gradients, IntegratedGradients, BlurIG, ...).
    nsamples : int
        Noisy copies per input (at least 2 for ``"vargrad"``).
    stdev_spread : float
        Noise standard deviation as a fraction of each input's value range
        ``max(x) - min(x)``.  (Xplique's ``noise`` is an absolute standard
        deviation: for inputs spanning ``[0, 1]`` the two are the same number.)
    magnitude : bool, optional
        With ``aggregation="mean"``: average squared maps (True, the default,
        as PAIR ``saliency``) or the maps themselves (False).  It belongs to
        ``"mean"`` alone: ``"squaregrad"`` always squares and ``"vargrad"``
        never does, so giving ``magnitude`` with them is an error.
    seed : None, int, numpy Generator or RandomState
        Source of the noise.  Noise is drawn per input, sample after sample, so
        passing ``numpy.random.mtrand._rand`` after ``np.random.seed(k)``
        reproduces PAIR ``saliency``'s draws.  The same seed gives the same
        noise for float32 and float64 copies of an input (see :func:`draw_noise`).
    aggregation : {'mean', 'squaregrad', 'vargrad'}
        How the noisy copies' maps become one map (see :data:`AGGREGATIONS`);
        ``"squaregrad"`` and ``"vargrad"`` are defined as in Xplique.  The
        same seed draws the same noise whatever the aggregation.

    References
    ----------
    Smilkov, Thorat, Kim, Viegas, Wattenberg. "SmoothGrad: removing noise by
    adding noise", 2017. https://arxiv.org/abs/1706.03825

    Adebayo, Gilmer, Goodfellow, Kim. "Local explanation methods for deep
    neural networks lack sensitivity to parameter values", ICLR 2018
    workshop. https://arxiv.org/abs/1810.03307 (VarGrad)

    Hooker, Erhan, Kindermans, Kim. "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019. https://arxiv.org/abs/1806.10758
    (SquareGrad)

    Fel, Hervier, et al. "Xplique: A Deep Learning Explainability Toolbox",
    CVPR 2022 workshop. https://arxiv.org/abs/2206.04394 (the definitions
    followed here)
    """

    name = "SmoothGrad"

    def __init__(
        self,
        method: Method,
        nsamples: int = 25,
        stdev_spread: float = 0.15,
        magnitude: bool | None = None,
        seed: Any = None,
        aggregation: str = "mean",
    ) -> None:
        if not isinstance(method, Method):
            raise TypeError(
                f"method must be a salience Method instance such as Gradients(), got {method!r}"
            )
        self.method = method
        self.nsamples = check_positive_int(nsamples, "nsamples")
        self.stdev_spread = check_nonnegative(stdev_spread, "stdev_spread")
        self.aggregation = _check_aggregation(aggregation, magnitude, self.nsamples)
        # PAIR's flag, only meaningful for "mean" (None with the other aggregations).
        self.magnitude = None if aggregation != "mean" else (
            True if magnitude is None else bool(magnitude))
        self.seed = check_seed(seed)

    def _rows_per_input(self) -> int:
        # Methods with several model rows per input say how many; the others send one.
        inner = getattr(self.method, "_rows_per_input", None)
        return self.nsamples * (inner() if inner is not None else 1)

    def _check(self, model: Model, x: np.ndarray) -> None:
        # Before the wrapped method's checks, which see the batch without its copies.
        check_row_budget(self.name, len(x) * self._rows_per_input(), x[0].size)
        self.method._check(model, x)

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        rng = as_random_state(self.seed)
        keys = self.method._row_keys()
        if keys is not None and self.aggregation != "vargrad":
            return self._streamed(model, x, targets, rng, keys)
        n = len(x)
        noisy = draw_noise(rng, x, self.nsamples, self.stdev_spread)
        repeated = None if targets is None else np.repeat(targets, self.nsamples, axis=0)
        maps = self.method._explain_copies(model, noisy, repeated, copies * self.nsamples)
        maps = maps.reshape(n, self.nsamples, *maps.shape[1:])
        how = self.aggregation
        if how == "mean" and self.magnitude:
            how = "squaregrad"  # PAIR's magnitude=True is the mean of the squares
        return aggregate_samples(maps, how).astype(x.dtype)


    def _streamed(self, model: Model, x: np.ndarray, targets: np.ndarray | None, rng: Any,
                  keys: list[str]) -> np.ndarray:
        """The mean (of squares) over noisy copies of a method that maps each row from
        its own outputs, with the noise drawn chunk by chunk as the rows are built.

        The same numbers as drawing every copy first (the same draws in the same
        order, the maps added in sample order in float64), but the noise of a
        chunk is drawn while the model runs the previous one (the row
        scheduler's helper thread) and only a chunk of copies and maps exists
        at a time, not ``nsamples`` of each per input.
        """
        noise = NoiseRows(rng, x, self.nsamples, self.stdev_spread)
        owners = np.repeat(np.arange(len(x)), self.nsamples)
        squared = self.aggregation == "squaregrad" or self.magnitude
        totals = np.zeros(x.shape, dtype=np.float64)
        built: dict[int, np.ndarray] = {}  # a chunk's noisy rows, by its first row

        def make_rows(start: int, stop: int) -> np.ndarray:
            built[start] = noise.rows(start, stop)
            return built[start]

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            maps = self.method._row_maps(built.pop(start), outputs).astype(x.dtype, copy=False)
            if squared:
                maps = np.square(maps)
            for row, owner in enumerate(owners[start:stop]):  # in sample order, as a mean
                np.add(totals[owner], maps[row], out=totals[owner])

        # A one-row method has a batch_size (the rows per model call), as Gradients.
        batch_size = int(getattr(self.method, "batch_size"))  # noqa: B009
        run_rows(model, keys, owners, make_rows, consume, targets, batch_size, self.name)
        return (totals / self.nsamples).astype(x.dtype)


def _unknown_aggregation(aggregation: Any) -> ValueError:
    return ValueError(
        f"aggregation must be one of {', '.join(map(repr, AGGREGATIONS))}, got {aggregation!r}"
    )


def _check_aggregation(aggregation: Any, magnitude: Any, nsamples: int) -> str:
    """``aggregation`` checked against :data:`AGGREGATIONS`, ``magnitude`` and ``nsamples``."""
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise _unknown_aggregation(aggregation)
    if aggregation != "mean" and magnitude is not None:
        raise ValueError(
            f"magnitude={magnitude!r} applies only to aggregation='mean' (PAIR's SmoothGrad); "
            f"aggregation={aggregation!r} fixes whether maps are squared, so leave magnitude "
            "unset"
        )
    if aggregation == "vargrad" and nsamples < 2:
        raise ValueError(
            f"aggregation='vargrad' needs nsamples >= 2 (a variance of one map is undefined), "
            f"got nsamples={nsamples}"
        )
    return aggregation


def aggregate_samples(maps: np.ndarray, aggregation: str) -> np.ndarray:
    """Reduce ``maps`` of shape ``(n, nsamples, ...)`` over the samples axis, in float64.

    ``"mean"``: ``1/N sum_s M_s``; ``"squaregrad"``: ``1/N sum_s M_s^2``;
    ``"vargrad"``: ``1/(N-1) sum_s (M_s - Mbar)^2`` with ``Mbar`` the mean,
    which is Xplique's ``N/(N-1) (mean(M^2) - mean(M)^2)`` computed in two
    passes (no cancellation when the variance is small beside the mean).
    """
    if aggregation == "mean":
        return maps.mean(axis=1, dtype=np.float64)
    if aggregation == "squaregrad":
        return np.square(maps).mean(axis=1, dtype=np.float64)
    if aggregation == "vargrad":
        return maps.var(axis=1, ddof=1, dtype=np.float64)
    raise _unknown_aggregation(aggregation)


def draw_noise(rng: Any, x: np.ndarray, nsamples: int, stdev_spread: float) -> np.ndarray:
    """``nsamples`` noisy copies of each input, shape (n * nsamples, *x.shape[1:]).

    The noise of input ``i`` has standard deviation ``stdev_spread * (max - min)``
    of that input, and does not depend on the input's dtype: float32 and
    float64 copies of an image get the same draws (up to their rounding).  A
    legacy ``RandomState`` draws float64 normals input by input (PAIR's
    stream, so ``np.random.seed`` reproduces PAIR); a ``Generator`` draws
    float32 standard normals (:func:`salience.numeric.standard_normal_rows`),
    input by input and sample after sample, which costs no float64
    temporaries for float32 images.
    """
    return NoiseRows(rng, x, nsamples, stdev_spread).rows(0, len(x) * nsamples)


class NoiseRows:
    """The rows of :func:`draw_noise`, drawn in order a range of rows at a time.

    Row ``r`` is copy ``r % nsamples`` of input ``r // nsamples``.  Asking for
    consecutive ranges draws the same numbers as one call for all rows: the
    generator's stream is consumed value after value either way.
    """

    def __init__(self, rng: Any, x: np.ndarray, nsamples: int, stdev_spread: float) -> None:
        n = len(x)
        self.rng, self.x, self.nsamples, self.stdev_spread = rng, x, nsamples, stdev_spread
        self.spans = x.reshape(n, -1).max(axis=1).astype(np.float64) - x.reshape(n, -1).min(
            axis=1)
        self.owners = np.repeat(np.arange(n), nsamples)
        self.next_row = 0

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Noisy rows ``start:stop``; ``start`` must be where the last call stopped."""
        if start != self.next_row:
            raise RuntimeError(f"noise rows are drawn in order: asked for row {start}, "
                               f"the next is {self.next_row}")
        x, shape = self.x, self.x.shape[1:]
        legacy = isinstance(self.rng, np.random.RandomState)
        out = np.empty((stop - start, *shape), dtype=x.dtype)
        for a, b in owner_runs(self.owners[start:stop]):
            i = self.owners[start + a]
            scale = self.stdev_spread * self.spans[i]
            if legacy:
                out[a:b] = x[i] + self.rng.normal(0, scale, (b - a, *shape))
                continue
            z = standard_normal_rows(self.rng, b - a, x[i].size).reshape(b - a, *shape)
            copies = out[a:b]
            np.multiply(z, x.dtype.type(scale), out=copies)  # float32 draws, exact in float64
            copies += x[i]
        self.next_row = stop
        return out
