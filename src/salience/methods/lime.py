"""LIME: a sparse linear model of the scores of superpixel coalitions, weighted
by how close each perturbed image is to the original."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from .surrogate import SurrogateMethod

__all__ = ["LIME", "cosine_kernel", "weighted_lasso"]


class LIME(SurrogateMethod):
    """Local Interpretable Model-agnostic Explanations on superpixels.

    Coalitions draw each feature independently with probability 1/2.  Each
    perturbed image ``z`` weighs ``exp(-d^2 / (2 kernel_width^2))`` where ``d``
    is the cosine distance between the flattened image and ``z`` (Captum's
    default kernel), and a linear model with an intercept is fitted to the
    scores by weighted least squares with an L1 penalty ``alpha``, which keeps
    few features as the paper's K-Lasso does (``alpha=0``: plain weighted
    least squares).  The map
    paints each feature's coefficient on its pixels, so maps are shaped like
    ``x``.  With the same feature mask, coalitions and settings the
    coefficients equal Captum's ``Lime`` (its default ``SkLearnLasso(alpha=0.01)``),
    up to its solver's tolerance.

    Parameters
    ----------
    n_samples, feature_mask, n_segments, baseline, coalitions, seed, batch_size
        As in :class:`salience.methods.surrogate.SurrogateMethod`.
    kernel_width : float
        Width of the exponential kernel on the cosine distance.
    alpha : float
        L1 penalty of the weighted Lasso (on the objective
        ``1/2 sum_i p_i (y_i - b - z_i . w)^2 + alpha |w|_1`` with the weights
        ``p`` normalised to sum to 1, scikit-learn's convention).
    max_sweeps : int
        Bound on the coordinate-descent sweeps of the Lasso.

    References
    ----------
    Ribeiro, Singh, Guestrin. "'Why Should I Trust You?': Explaining the
    Predictions of Any Classifier", KDD 2016. https://arxiv.org/abs/1602.04938
    """

    name = "LIME"

    def __init__(self, n_samples: int = 1000, feature_mask: Any = None, n_segments: int = 50,
                 baseline: float = 0.0, kernel_width: float = 1.0, alpha: float = 0.01,
                 coalitions: Any = None, seed: Any = None, max_sweeps: int = 10000,
                 batch_size: int = 64) -> None:
        super().__init__(n_samples, feature_mask, n_segments, baseline, coalitions, seed,
                         batch_size)
        self.kernel_width = check_nonnegative(kernel_width, "kernel_width")
        if self.kernel_width == 0:
            raise ValueError("kernel_width must be > 0, got 0")
        self.alpha = check_nonnegative(alpha, "alpha")
        self.max_sweeps = check_positive_int(max_sweeps, "max_sweeps")

    def _draw(self, rng: Any, n_features: int) -> np.ndarray:
        return (rng.uniform(size=(self.n_samples, n_features)) < 0.5).astype(np.int8)

    def _row_weights(self, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return cosine_kernel(images.reshape(len(images), -1), rows.reshape(len(rows), -1),
                             self.kernel_width)

    def _fit(self, coalitions: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        coefficients, _ = weighted_lasso(coalitions, scores, weights, self.alpha,
                                         self.max_sweeps)
        return coefficients


def cosine_kernel(originals: np.ndarray, perturbed: np.ndarray, width: float) -> np.ndarray:
    """``exp(-d^2 / (2 width^2))`` of the cosine distance ``d`` between matching rows
    (a zero row has cosine similarity 0 with anything)."""
    originals = originals.astype(np.float64)
    perturbed = perturbed.astype(np.float64)
    dots = np.einsum("ij,ij->i", originals, perturbed)
    norms = np.linalg.norm(originals, axis=1) * np.linalg.norm(perturbed, axis=1)
    similarity = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.exp(-((1 - similarity) ** 2) / (2 * width**2))


def weighted_lasso(z: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float,
                   max_sweeps: int = 10000, tol: float = 1e-12) -> tuple[np.ndarray, float]:
    """Coefficients and intercept minimising
    ``1/2 sum_i p_i (y_i - b - z_i . w)^2 + alpha |w|_1``, ``p = weights / sum(weights)``.

    The intercept is eliminated by centring with the weighted means; the rest
    is cyclic coordinate descent on the weighted Gram matrix (soft
    thresholding), until no coefficient moves by more than ``tol`` times the
    largest one, or ``max_sweeps`` sweeps (then a RuntimeWarning).  With
    ``alpha=0`` it is weighted least squares, solved directly (minimum norm).
    """
    p = weights / weights.sum()
    z_mean, y_mean = p @ z, p @ y
    zc, yc = z - z_mean, y - y_mean
    gram = (zc * p[:, None]).T @ zc
    target = (zc * p[:, None]).T @ yc
    if alpha == 0:
        root = np.sqrt(p)[:, None]
        coefficients = np.linalg.lstsq(zc * root, yc * root[:, 0], rcond=None)[0]
        return coefficients, float(y_mean - z_mean @ coefficients)
    coefficients = np.zeros(z.shape[1])
    diagonal = gram.diagonal()
    for _ in range(max_sweeps):
        largest_step = 0.0
        for j in np.flatnonzero(diagonal > 0):
            rho = target[j] - gram[j] @ coefficients + diagonal[j] * coefficients[j]
            new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / diagonal[j]
            largest_step = max(largest_step, abs(new - coefficients[j]))
            coefficients[j] = new
        if largest_step <= tol * max(np.abs(coefficients).max(), 1e-300):
            break
    else:
        warnings.warn(f"LIME's Lasso did not converge in {max_sweeps} sweeps; the map is "
                      "approximate (raise max_sweeps)", RuntimeWarning, stacklevel=3)
    return coefficients, float(y_mean - z_mean @ coefficients)
