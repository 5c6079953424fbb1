"""Kernel SHAP: Shapley values of superpixels from a linear fit to coalition
scores, with coalitions drawn by the Shapley kernel."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numeric import one_blas_thread
from .surrogate import SurrogateMethod

__all__ = ["KernelSHAP", "draw_shapley_coalitions", "kernel_shap_values"]


class KernelSHAP(SurrogateMethod):
    """Kernel SHAP on superpixels.

    The first two coalitions are all features and none (the image and the
    baseline); the others draw their size ``k`` with probability proportional
    to ``(K - 1) / (k (K - k))`` and then a uniformly random set of ``k``
    features, so that they are distributed as the Shapley kernel weighs them
    and each counts once in the fit.  The values ``phi`` minimise the squared
    error of ``f(baseline) + z . phi`` over the coalitions subject to
    ``sum(phi) = f(x) - f(baseline)`` (solved exactly, by eliminating one
    value).  With the same feature mask and coalitions the values equal
    Captum's ``KernelShap``, which approximates the constraint by weighing the
    first two coalitions 10^6 times.  Maps paint each feature's value on its
    pixels, shaped like ``x``.

    Parameters
    ----------
    n_samples, feature_mask, n_segments, baseline, coalitions, seed, batch_size
        As in :class:`salience.methods.surrogate.SurrogateMethod`; given
        ``coalitions`` must hold an all-ones and an all-zeros row.

    References
    ----------
    Lundberg, Lee. "A Unified Approach to Interpreting Model Predictions",
    NeurIPS 2017. https://arxiv.org/abs/1705.07874
    """

    name = "KernelSHAP"

    def __init__(self, n_samples: int = 1000, feature_mask: Any = None, n_segments: int = 50,
                 baseline: float = 0.0, coalitions: Any = None, seed: Any = None,
                 batch_size: int = 64) -> None:
        super().__init__(n_samples, feature_mask, n_segments, baseline, coalitions, seed,
                         batch_size)
        if self.n_samples < 2:
            raise ValueError(
                f"n_samples must be >= 2 (the full and the empty coalition come first), got "
                f"{n_samples}")

    def _as_coalitions(self, coalitions: Any) -> np.ndarray:
        z = super()._as_coalitions(coalitions)
        sizes = z.sum(axis=1)
        if not ((sizes == z.shape[1]).any() and (sizes == 0).any()):
            raise ValueError(
                "Kernel SHAP's coalitions must include an all-ones row and an all-zeros row "
                "(the image and the baseline, whose scores fix the sum of the values)"
            )
        return z

    def _draw(self, rng: Any, n_features: int) -> np.ndarray:
        return draw_shapley_coalitions(rng, self.n_samples, n_features)

    def _fit(self, coalitions: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        sizes = coalitions.sum(axis=1)
        full = scores[np.argmax(sizes == coalitions.shape[1])]
        empty = scores[np.argmax(sizes == 0)]
        return kernel_shap_values(coalitions, scores, full, empty)


def draw_shapley_coalitions(rng: Any, n_samples: int, n_features: int) -> np.ndarray:
    """``(n_samples, n_features)`` coalitions: all ones, all zeros, then sizes drawn
    by the Shapley kernel and features uniformly for each size."""
    out = np.zeros((n_samples, n_features), dtype=np.int8)
    out[0] = 1
    if n_features < 2:
        return out
    sizes = np.arange(1, n_features)
    chances = (n_features - 1) / (sizes * (n_features - sizes))
    drawn = rng.choice(sizes, size=max(n_samples - 2, 0), p=chances / chances.sum())
    # A uniformly random set of k features per row: those whose independent uniform
    # keys rank below k.  Two row-wise sorts for all rows cost a fifth of one
    # permutation call per row (~5 us each, 1000 rows per image by default).
    ranks = rng.random((len(drawn), n_features)).argsort(axis=1).argsort(axis=1)
    np.less(ranks, drawn[:, None], out=out[2:], casting="unsafe")
    return out


def kernel_shap_values(coalitions: np.ndarray, scores: np.ndarray, full: float,
                       empty: float) -> np.ndarray:
    """Least-squares values ``phi`` of ``scores ~ empty + coalitions . phi`` subject to
    ``sum(phi) = full - empty`` (every coalition weighs the same)."""
    from scipy.linalg import lstsq  # on use: scipy's import is slow

    k = coalitions.shape[1]
    total = full - empty
    if k == 1:
        return np.array([total])
    # phi_last = total - sum(phi_rest): substitute, then an unconstrained fit.
    design = coalitions[:, :-1] - coalitions[:, -1:]
    rhs = scores - empty - coalitions[:, -1] * total
    # Minimum-norm least squares by QR with column pivoting (LAPACK's gelsy), as
    # numpy's SVD-based lstsq finds it but in 40% of its time (200 x 49: 138 us
    # against 341).
    with one_blas_thread():  # a small least-squares problem: threads only contend
        rest = lstsq(design, rhs, lapack_driver="gelsy")[0]
    return np.append(rest, total - rest.sum())
