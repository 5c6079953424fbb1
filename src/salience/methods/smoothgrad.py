"""SmoothGrad: average any method's maps over noisy copies of the input."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int, check_seed
from ..model import Model
from ..numeric import as_random_state
from ..schedule import check_row_budget
from .base import Method

__all__ = ["SmoothGrad", "draw_noise"]


class SmoothGrad(Method):
    """Wrap a method and average its maps over Gaussian-noised inputs.

    All noisy copies of all inputs are handed to the wrapped method as one
    batch, so their rows share model calls (SmoothGrad over Integrated
    Gradients packs samples x steps rows into the same chunks).

    Parameters
    ----------
    method : Method
        The method to smooth (Gradients, IntegratedGradients, BlurIG, ...).
    nsamples : int
        Noisy copies per input.
    stdev_spread : float
        Noise standard deviation as a fraction of each input's value range
        ``max(x) - min(x)``.
    magnitude : bool
        Average squared maps (True) or the maps themselves (False).
    seed : None, int, numpy Generator or RandomState
        Source of the noise.  Noise is drawn per input, sample after sample, so
        passing ``numpy.random.mtrand._rand`` after ``np.random.seed(k)``
        reproduces PAIR ``saliency``'s draws.  The same seed gives the same
        noise for float32 and float64 copies of an input (see :func:`draw_noise`).

    References
    ----------
    Smilkov, Thorat, Kim, Viegas, Wattenberg. "SmoothGrad: removing noise by
    adding noise", 2017. https://arxiv.org/abs/1706.03825
    """

    name = "SmoothGrad"

    def __init__(
        self,
        method: Method,
        nsamples: int = 25,
        stdev_spread: float = 0.15,
        magnitude: bool = True,
        seed: Any = None,
    ) -> None:
        if not isinstance(method, Method):
            raise TypeError(
                f"method must be a salience Method instance such as Gradients(), got {method!r}"
            )
        self.method = method
        self.nsamples = check_positive_int(nsamples, "nsamples")
        self.stdev_spread = check_nonnegative(stdev_spread, "stdev_spread")
        self.magnitude = bool(magnitude)
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
        n = len(x)
        noisy = draw_noise(rng, x, self.nsamples, self.stdev_spread)
        repeated = None if targets is None else np.repeat(targets, self.nsamples, axis=0)
        maps = self.method._explain_copies(model, noisy, repeated, copies * self.nsamples)
        maps = maps.reshape(n, self.nsamples, *maps.shape[1:])
        if self.magnitude:
            maps = np.square(maps)
        return maps.mean(axis=1, dtype=np.float64).astype(x.dtype)


def draw_noise(rng: Any, x: np.ndarray, nsamples: int, stdev_spread: float) -> np.ndarray:
    """``nsamples`` noisy copies of each input, shape (n * nsamples, *x.shape[1:]).

    The noise of input ``i`` has standard deviation ``stdev_spread * (max - min)``
    of that input, and does not depend on the input's dtype: float32 and
    float64 copies of an image get the same draws (up to their rounding).  A
    legacy ``RandomState`` draws float64 normals input by input (PAIR's
    stream, so ``np.random.seed`` reproduces PAIR); a ``Generator`` draws
    float32 standard normals, input by input and sample after sample, which
    costs no float64 temporaries for float32 images.
    """
    n, shape = len(x), x.shape[1:]
    spans = x.reshape(n, -1).max(axis=1).astype(np.float64) - x.reshape(n, -1).min(axis=1)
    if isinstance(rng, np.random.RandomState):
        noisy = np.empty((n, nsamples, *shape), dtype=np.result_type(x.dtype, np.float64))
        for i in range(n):
            # One draw of all samples: the same stream as drawing them one by one.
            noisy[i] = x[i] + rng.normal(0, stdev_spread * spans[i], (nsamples, *shape))
        return noisy.astype(x.dtype, copy=False).reshape(n * nsamples, *shape)
    noisy = np.empty((n, nsamples, *shape), dtype=np.float32)
    rng.standard_normal(dtype=np.float32, out=noisy)
    noisy = noisy.astype(x.dtype, copy=False)  # exact; in place for float32 images
    for i in range(n):
        noisy[i] *= x.dtype.type(stdev_spread * spans[i])
        noisy[i] += x[i]
    return noisy.reshape(n * nsamples, *shape)
