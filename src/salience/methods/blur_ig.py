"""Blur IG: integrated gradients along a path of increasingly blurred images."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..arrays import channels_last, from_channels_last, spatial_axes, to_channels_last
from ..checks import check_nonnegative, check_positive_int
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from ..numeric import add_by_owner, one_blas_thread, owner_runs
from ..schedule import run_rows
from .base import Method

__all__ = [
    "BlurIG",
    "blur_sigmas",
    "gaussian_blur_matrix",
    "gaussian_blur_matrices",
    "gaussian_kernels",
    "toeplitz_stack",
]


def blur_sigmas(max_sigma: float, steps: int, sqrt: bool) -> np.ndarray:
    """The ``steps + 1`` blur levels from 0 to ``max_sigma`` (square-root spaced if ``sqrt``)."""
    levels = np.array([i * max_sigma / steps for i in range(steps + 1)], dtype=np.float64)
    return np.array([math.sqrt(v) for v in levels]) if sqrt else levels


def gaussian_blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Matrix ``K`` such that ``K @ v`` is ``scipy.ndimage.gaussian_filter1d(v, sigma,
    mode='constant', truncate=truncate)`` for a vector ``v`` of length ``size``.

    Writing the separable filter as two small matrix products lets a whole
    chunk of blur levels be computed in a few BLAS calls.
    """
    return gaussian_blur_matrices(size, np.array([sigma], dtype=np.float64), truncate)[0]


def gaussian_blur_matrices(size: int, sigmas: np.ndarray, truncate: float = 4.0) -> np.ndarray:
    """:func:`gaussian_blur_matrix` for every sigma at once, shape (len(sigmas), size, size).

    A sigma <= 0 gives the identity.
    """
    return toeplitz_stack(gaussian_kernels(size, sigmas, truncate))


def gaussian_kernels(size: int, sigmas: np.ndarray, truncate: float = 4.0) -> np.ndarray:
    """Gaussian weights at offsets ``-(size - 1) .. size - 1``, one row per sigma.

    Each kernel is normalised over its whole radius ``int(truncate * sigma + 0.5)``,
    as scipy does, even where that radius reaches past the image (those weights
    only ever meet the zero padding).  A sigma <= 0 gives a unit impulse.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    out = np.zeros((len(sigmas), 2 * size - 1))
    sharp = sigmas <= 0
    out[sharp, size - 1] = 1.0
    if sharp.all():
        return out
    s = sigmas[~sharp][:, None]
    radii = (truncate * s + 0.5).astype(np.int64)  # (r, 1), as int(truncate * sigma + 0.5)
    reach = max(int(radii.max()), size - 1)
    offsets = np.arange(-reach, reach + 1)
    weights = np.exp(-0.5 / (s**2) * offsets.astype(np.float64) ** 2)
    weights[np.abs(offsets)[None, :] > radii] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    out[~sharp] = weights[:, reach - (size - 1) : reach + size]
    return out


def toeplitz_stack(kernels: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Matrices ``M[k, i, j] = kernels[k, j - i + size - 1]`` from (m, 2 * size - 1) kernels.

    A blur matrix is constant along its diagonals, so it is a strided view of its
    kernel; only the contiguous copy BLAS needs is paid for.
    """
    kernels = np.ascontiguousarray(kernels)
    m, size = len(kernels), (kernels.shape[1] + 1) // 2
    step = kernels.strides[1]
    # Start at the centre tap: down a row is one tap back, right a column one ahead.
    windows = np.lib.stride_tricks.as_strided(
        kernels[:, size - 1 :], shape=(m, size, size), strides=(kernels.strides[0], -step, step)
    )
    return np.ascontiguousarray(windows, dtype=dtype)


class BlurIG(Method):
    """Integrated gradients from a fully blurred image back to the input.

    The path is ``x`` blurred with a Gaussian of ``sigma`` going from
    ``max_sigma`` down to 0; the derivative of the blurred image with respect to
    sigma is taken by a forward difference of ``grad_step``.  Blurring uses
    zero padding outside the image, as in PAIR ``saliency``.  All blur levels of
    a chunk are computed together as matrix products (no per-step filter calls).

    Unlike PAIR ``saliency`` 0.2.1, each path point is weighted by its own sigma
    step; PAIR applies the weight of the last point of a model batch to the
    whole batch, which is wrong when ``sqrt=True`` and ``batch_size > 1``.

    Parameters
    ----------
    max_sigma : float
        Blur of the path's start.
    steps : int
        Path points.
    grad_step : float
        Sigma increment for the derivative of the blurred image.
    sqrt : bool
        Space sigma as the square root of evenly spaced values.
    batch_size : int
        Largest number of path points per model call.

    References
    ----------
    Xu, Venugopalan, Sundararajan. "Attribution in Scale and Space", CVPR 2020.
    https://arxiv.org/abs/2004.03383
    """

    name = "BlurIG"

    def __init__(
        self,
        max_sigma: float = 50,
        steps: int = 100,
        grad_step: float = 0.01,
        sqrt: bool = False,
        batch_size: int = 32,
    ) -> None:
        self.max_sigma = check_nonnegative(max_sigma, "max_sigma")
        self.steps = check_positive_int(steps, "steps")
        self.grad_step = check_nonnegative(grad_step, "grad_step")
        if self.grad_step == 0:
            raise ValueError("grad_step must be > 0, got 0")
        self.sqrt = bool(sqrt)
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        self._check(model, x)
        is_last = channels_last(model)
        # Internal layout (n, H, C, W): both blur passes are then one matrix
        # product per row, with no transposes in between.
        images = to_channels_last(x, is_last).transpose(0, 1, 3, 2)
        n, height, n_channels, width = images.shape
        flat_images = images.reshape(n, height, n_channels * width)
        sigmas = blur_sigmas(self.max_sigma, self.steps, self.sqrt)
        step_weights = np.diff(sigmas).astype(x.dtype)
        owners = np.arange(n * self.steps) // self.steps
        totals = np.zeros(images.shape, dtype=np.float64)
        # Kernels of every path point, along H and along W: at sigma, at
        # sigma + grad_step, and their forward difference taken in float64, so
        # float32 rows do not lose the rate to cancellation between two nearly
        # equal blurs.  Gaussian blur matrices are symmetric: no transposes below.
        along = {}
        for size in {height, width}:
            k = gaussian_kernels(size, sigmas[:-1])
            k2 = gaussian_kernels(size, sigmas[:-1] + self.grad_step)
            along[size] = (k, k2, (k2 - k) / self.grad_step)
        # Per chunk start: the rows' first blur pass (for prepare), then their rate of
        # change (for consume).
        along_h_of: dict[int, tuple] = {}
        rate_of: dict[int, tuple] = {}

        def matrices(size: int, levels: np.ndarray, which: int) -> np.ndarray:
            return toeplitz_stack(along[size][which][levels], x.dtype)

        square = width == height  # then H and W share every matrix

        def blur_along_h(mats: np.ndarray, rows: np.ndarray) -> np.ndarray:
            """``mats[r] @ image of row r``; rows of one image share a single GEMM."""
            out = np.empty((len(rows), height, n_channels * width), dtype=x.dtype)
            for a, b in owner_runs(rows):
                out[a:b] = (mats[a:b].reshape(-1, height) @ flat_images[rows[a]]).reshape(
                    b - a, height, -1)
            return out.reshape(len(rows), height * n_channels, width)

        def to_model_layout(rows: np.ndarray) -> np.ndarray:
            return from_channels_last(rows.transpose(0, 1, 3, 2), x.ndim, is_last)

        def make_rows(start: int, stop: int) -> np.ndarray:
            """The blurred rows B = Kh X Kw (the model's input)."""
            index = np.arange(start, stop)
            rows, levels = owners[index], index % self.steps
            k_h = matrices(height, levels, 0)
            k_w = k_h if square else matrices(width, levels, 0)
            # Many small products: one BLAS thread avoids spin-wait contention.
            with one_blas_thread():
                along_h = blur_along_h(k_h, rows)
                blurred = along_h @ k_w
            along_h_of[start] = (rows, levels, along_h)
            shape = (len(rows), height, n_channels, width)
            return np.ascontiguousarray(to_model_layout(blurred.reshape(shape)))

        def prepare(start: int, stop: int) -> None:
            """The rate of change B(s+g) - B(s) = (K'h - Kh) X K'w + Kh X (K'w - Kw),
            which needs no gradient: the scheduler runs it while the model works."""
            rows, levels, along_h = along_h_of.pop(start)
            d_h = matrices(height, levels, 2)
            d_w = d_h if square else matrices(width, levels, 2)
            k_w2 = matrices(width, levels, 1)
            with one_blas_thread():
                rate = along_h @ d_w
                rate += blur_along_h(d_h, rows) @ k_w2
            rate *= step_weights[levels][:, None, None]
            rate_of[start] = (rows, rate)

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            rows, rate = rate_of.pop(start)
            grads = to_channels_last(outputs[INPUT_OUTPUT_GRADIENTS], is_last)
            add_by_owner(totals, rows,
                         rate.reshape(len(rows), height, n_channels, width)
                         * grads.transpose(0, 1, 3, 2))

        run_rows(model, [INPUT_OUTPUT_GRADIENTS], owners, make_rows, consume, targets,
                 self.batch_size, self.name, prepare=prepare)
        return to_model_layout(-totals).astype(x.dtype)
