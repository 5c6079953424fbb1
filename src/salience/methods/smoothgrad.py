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

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int, check_seed
from ..model import Model
from ..numeric import as_random_state, owner_runs, row_seeds, standard_normal_rows
from ..schedule import check_row_budget, overlap_for_array_work, run_rows
from .base import Method, check_row_place, rows_on_model

__all__ = ["AGGREGATIONS", "NOISE_PLACES", "NoiseRows", "SmoothGrad", "aggregate_samples",
           "draw_noise", "noise_scales", "welford_add"]

#: What :class:`SmoothGrad` can compute from the noisy copies' maps, and its paper.
AGGREGATIONS = {
    "mean": "SmoothGrad: the mean of the maps (of their squares with magnitude=True)",
    "squaregrad": "SquareGrad: the mean of the squared maps",
    "vargrad": "VarGrad: the unbiased variance of the maps",
}

#: Where :class:`SmoothGrad` can draw its noise (its ``noise_on``).
NOISE_PLACES = {
    "auto": "on the model's device when it is an accelerator and the method is a one-row "
            "method, else on the host",
    "host": "on the host, with numpy (the draws PAIR's and salience's seeds describe)",
    "model": "in the model's framework, on its device (an adapter with noisy_rows)",
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
    noise_on : {'auto', 'host', 'model'}
        Where the noise is drawn.  ``"host"``: with numpy, as described under
        ``seed``.  ``"model"``: by the model's adapter, in its framework and on
        its device (``salience.torch.wrap``, ``salience.jax.wrap``,
        ``salience.keras.wrap``): the noisy rows are built where the model runs
        and stay there (Input x Gradient copies them back, as it reads its
        rows), which on an accelerator removes the noise from the host's work
        (0.6-1 ms per 224 px row on a CPU core, more than a data-centre GPU
        takes for the row itself).  Each row's noise then comes from its own
        seed, drawn from ``seed``, so the maps do not depend on ``batch_size``
        and the same seed gives the same maps on the same device type; but they
        are other draws than the host's, so PAIR's maps are not reproduced.  It
        needs a one-row method (Gradients, Guided Backprop, Input x Gradient).
        ``"auto"`` (the default) is ``"model"`` when the adapter's device is an
        accelerator, the method is a one-row method and ``seed`` is not a
        ``RandomState`` (which asks for PAIR's draws); else ``"host"``.

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
        noise_on: str = "auto",
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
        self.noise_on = check_row_place(noise_on, "noise_on")

    def _rows_per_input(self) -> int:
        # Methods with several model rows per input say how many; the others send one.
        inner = getattr(self.method, "_rows_per_input", None)
        return self.nsamples * (inner() if inner is not None else 1)

    def _check(self, model: Model, x: np.ndarray) -> None:
        # Before the wrapped method's checks, which see the batch without its copies.
        check_row_budget(self.name, len(x) * self._rows_per_input(), x[0].size)
        if self.noise_on == "model":
            self._noise_on_model(model)  # raises if the model cannot draw it
            if not self._streams():
                raise ValueError(
                    "noise_on='model' needs a one-row method (Gradients, GuidedBackprop, "
                    f"InputXGradient), got {type(self.method).__name__}. "
                    "Use noise_on='host' (or 'auto')")
        self.method._check(model, x)

    def _streams(self) -> bool:
        """Whether the rows stream through the model (see :meth:`_streamed`)."""
        return self.method._row_keys() is not None

    def resolved_for(self, model: Model) -> SmoothGrad:
        """A copy with ``noise_on="auto"`` made ``"model"`` or ``"host"``, as it
        draws for ``model`` (the noise of the two places differs), and the wrapped
        method resolved as well (Blur IG's ``blur_on``)."""
        resolved = self._place_resolved("noise_on", self._noise_on_model(model))
        inner = self.method.resolved_for(model)
        if inner is not self.method:
            resolved = copy.copy(resolved) if resolved is self else resolved
            resolved.method = inner
        return resolved

    def _noise_on_model(self, model: Model) -> bool:
        """Whether this run's noise is drawn by the model, on its device."""
        if self.noise_on == "auto" and (
                not self._streams() or isinstance(self.seed, np.random.RandomState)):
            return False  # a method of several rows per input, or PAIR's draws asked for
        return rows_on_model(model, self.noise_on, "noisy_rows", "noise_on")

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        rng = as_random_state(self.seed)
        if self._streams():
            return self._streamed(model, x, targets, rng)
        n = len(x)
        noisy = draw_noise(rng, x, self.nsamples, self.stdev_spread)
        repeated = None if targets is None else np.repeat(targets, self.nsamples, axis=0)
        maps = self.method._explain_copies(model, noisy, repeated, copies * self.nsamples)
        maps = maps.reshape(n, self.nsamples, *maps.shape[1:])
        how = self.aggregation
        if how == "mean" and self.magnitude:
            how = "squaregrad"  # PAIR's magnitude=True is the mean of the squares
        return aggregate_samples(maps, how).astype(x.dtype)


    def _streamed(self, model: Model, x: np.ndarray, targets: np.ndarray | None,
                  rng: Any) -> np.ndarray:
        """The aggregation over noisy copies of a method that maps each row from its
        own outputs, with the noise drawn chunk by chunk as the rows are built.

        On the host: the mean (of squares) has the same numbers as drawing
        every copy first (the same draws in the same order, the maps added in
        sample order in float64), but the noise of a chunk is drawn while the
        model runs the previous one (the row scheduler's helper thread) and
        only a chunk of copies and maps exists at a time, not ``nsamples`` of
        each per input.  The variance is Welford's running one (float64, in
        sample order), equal to the two-pass variance up to rounding.  On the
        model's device, its adapter builds each chunk's rows from one seed per row.
        """
        keys = self.method._row_keys()
        assert keys is not None  # a one-row method: see _streams
        owners = np.repeat(np.arange(len(x)), self.nsamples)
        squared = self.aggregation == "squaregrad" or self.magnitude
        # The running sums (mean, squaregrad) or, for the variance, Welford's means
        # and sums of squared deviations, per input.
        totals = np.zeros(x.shape, dtype=np.float64)
        spreads = np.zeros(x.shape, dtype=np.float64) if self.aggregation == "vargrad" else None
        built: dict[int, Any] = {}  # a chunk's noisy rows, by its first row
        on_model = self._noise_on_model(model)  # else the noise is drawn here
        if on_model:
            scales, seeds = noise_scales(x, self.stdev_spread), row_seeds(rng, len(owners))

            build = model.noisy_rows  # type: ignore[attr-defined]  # checked: _noise_on_model

            def make_rows(start: int, stop: int) -> Any:
                built[start] = build(x, owners[start:stop], scales, seeds[start:stop])
                return built[start]
        else:
            noise = NoiseRows(rng, x, self.nsamples, self.stdev_spread)

            def make_rows(start: int, stop: int) -> Any:
                built[start] = noise.rows(start, stop)
                return built[start]

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            maps = self.method._row_maps(built.pop(start), outputs)
            # Row by row through one row's scratch, which stays in cache (a chunk's
            # squares at once do not: 0.136 -> 0.083 ms per 224 px row, same bits).
            one = np.empty(x.shape[1:], dtype=x.dtype)
            for row, owner in enumerate(owners[start:stop], start):  # in sample order
                value = maps[row - start]
                if squared:  # in the input's precision, as the maps' mean would be
                    value = np.square(value, out=one, dtype=x.dtype)
                elif value.dtype != x.dtype:
                    np.copyto(one, value, casting="unsafe")
                    value = one
                if spreads is None:
                    np.add(totals[owner], value, out=totals[owner])
                else:
                    welford_add(totals[owner], spreads[owner], value, row % self.nsamples + 1)

        # A one-row method has a batch_size (the rows per model call), as Gradients.
        batch_size = int(getattr(self.method, "batch_size"))  # noqa: B009
        run_rows(model, keys, owners, make_rows, consume, targets, batch_size, self.name,
                 overlap=None if on_model else overlap_for_array_work(
                     batch_size, len(owners), x[0].size))
        if spreads is not None:
            return (spreads / (self.nsamples - 1)).astype(x.dtype)
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


def welford_add(mean: np.ndarray, spread: np.ndarray, value: np.ndarray, count: int) -> None:
    """Add the ``count``-th sample ``value`` to a running ``mean`` and sum of squared
    deviations ``spread`` (float64, updated in place; Welford 1962):
    ``d = v - m``, ``m += d / k``, ``S += d (v - m)``.  The unbiased variance is
    ``S / (k - 1)``, without the cancellation of ``mean(v^2) - mean(v)^2``.
    """
    deviation = np.subtract(value, mean, dtype=np.float64)
    mean += deviation / count
    deviation *= value - mean
    spread += deviation


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


def noise_scales(x: np.ndarray, stdev_spread: float) -> np.ndarray:
    """The noise's standard deviation for each input: ``stdev_spread`` times its
    value range ``max - min``, in float64."""
    flat = x.reshape(len(x), -1)
    return stdev_spread * (flat.max(axis=1).astype(np.float64) - flat.min(axis=1))


class NoiseRows:
    """The rows of :func:`draw_noise`, drawn in order a range of rows at a time.

    Row ``r`` is copy ``r % nsamples`` of input ``r // nsamples``.  Asking for
    consecutive ranges draws the same numbers as one call for all rows: the
    generator's stream is consumed value after value either way.
    """

    def __init__(self, rng: Any, x: np.ndarray, nsamples: int, stdev_spread: float) -> None:
        self.rng, self.x, self.nsamples = rng, x, nsamples
        self.scales = noise_scales(x, stdev_spread)
        self.owners = np.repeat(np.arange(len(x)), nsamples)
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
            scale = self.scales[i]
            if legacy:
                out[a:b] = x[i] + self.rng.normal(0, scale, (b - a, *shape))
                continue
            z = standard_normal_rows(self.rng, b - a, x[i].size).reshape(b - a, *shape)
            copies = out[a:b]
            np.multiply(z, x.dtype.type(scale), out=copies)  # float32 draws, exact in float64
            copies += x[i]
        self.next_row = stop
        return out
