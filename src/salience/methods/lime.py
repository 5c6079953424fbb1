"""LIME: a sparse linear model of the scores of superpixel coalitions, weighted
by how close each perturbed image is to the original."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from ..numeric import one_blas_thread
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

    def _per_image(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        # Per pixel, the sums over channels of x^2 and x: enough for the cosine of
        # the image with any masked copy of it, without forming the copy.
        values = images.astype(np.float64).reshape(len(images), -1, images.shape[-1])
        return (values**2).sum(axis=2), values.sum(axis=2), images.shape[-1]

    def _row_weights(self, per_image: tuple[np.ndarray, np.ndarray, int], owners: np.ndarray,
                     masks: np.ndarray) -> np.ndarray:
        squares, sums, channels = per_image
        return cosine_kernel(squares[owners], sums[owners], channels, self.baseline,
                             masks.reshape(len(masks), -1), self.kernel_width)

    def _fit(self, coalitions: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        coefficients, _ = weighted_lasso(coalitions, scores, weights, self.alpha,
                                         self.max_sweeps)
        return coefficients


def cosine_kernel(squares: np.ndarray, sums: np.ndarray, channels: int, baseline: float,
                  masks: np.ndarray, width: float) -> np.ndarray:
    """``exp(-d^2 / (2 width^2))`` of the cosine distance ``d`` between each image and
    its masked copy ``baseline + (x - baseline) * mask`` (a zero vector has cosine
    similarity 0 with anything).

    Each row gives one image's per-pixel sums over its ``channels`` of ``x^2``
    (``squares``) and of ``x`` (``sums``), and the pixel ``masks``; the dot
    product and the norms are expanded in those sums, so no copy is formed.
    """
    b, c = baseline, channels
    dots = b * sums.sum(axis=1) + np.einsum("ij,ij->i", squares - b * sums, masks)
    masked_squares = (c * b * b * masks.shape[1]
                      + 2 * b * np.einsum("ij,ij->i", sums - c * b, masks)
                      + np.einsum("ij,ij->i", squares - 2 * b * sums + c * b * b, masks**2))
    norms = np.sqrt(squares.sum(axis=1)) * np.sqrt(np.maximum(masked_squares, 0))
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
    with one_blas_thread():  # small products: threads only contend
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
