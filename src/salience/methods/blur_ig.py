"""Blur IG: integrated gradients along a path of increasingly blurred images."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

from .._validate import check_nonnegative, check_positive_int
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from ..schedule import check_batch_size, run_rows
from .base import Method, channels_last, from_channels_last, spatial_axes, to_channels_last
from .integrated_gradients import add_by_owner

__all__ = ["BlurIG", "blur_sigmas", "gaussian_blur_matrix", "gaussian_blur_matrices"]


@functools.cache
def _blas_threads() -> ThreadpoolController:
    # Finding the loaded BLAS libraries scans the process's memory map (about
    # 3 ms); do it once, not on every model chunk.
    return ThreadpoolController()


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

    Built with array operations for the whole set (no loop over sigmas); a
    sigma <= 0 gives the identity.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    out = np.zeros((len(sigmas), size, size))
    sharp = sigmas <= 0
    out[sharp] = np.eye(size)
    if sharp.all():
        return out
    s = sigmas[~sharp][:, None]
    radii = (truncate * s + 0.5).astype(np.int64)  # (r, 1), as int(truncate * sigma + 0.5)
    r_max = int(radii.max())
    offsets = np.arange(-r_max, r_max + 1)
    weights = np.exp(-0.5 / (s**2) * offsets.astype(np.float64) ** 2)
    weights[np.abs(offsets)[None, :] > radii] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    delta = np.arange(size)[None, :] - np.arange(size)[:, None]  # column - row
    inside = np.abs(delta) <= r_max
    matrices = weights[:, np.clip(delta + r_max, 0, 2 * r_max)]
    matrices[:, ~inside] = 0.0
    out[~sharp] = matrices
    return out


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
        self.batch_size = check_batch_size(batch_size)

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        self._check(model, x)
        is_last = channels_last(model)
        # Internal layout (n, H, C, W): both blur passes are then one matrix
        # product per row, with no transposes in between.
        images = to_channels_last(x, is_last).transpose(0, 1, 3, 2)
        n, height, n_channels, width = images.shape
        sigmas = blur_sigmas(self.max_sigma, self.steps, self.sqrt)
        step_weights = np.diff(sigmas)
        owners = np.arange(n * self.steps) // self.steps
        totals = np.zeros(images.shape, dtype=np.float64)
        # Per chunk, what its consume needs to finish the rate of change (see make_rows).
        unfinished: dict[int, tuple] = {}

        def kernels(size: int, row_sigmas: np.ndarray) -> tuple[np.ndarray, ...]:
            """Blur matrices at the rows' sigmas and at sigma + grad_step, and their
            forward difference taken in float64, so float32 rows do not lose the rate
            to cancellation between two nearly equal blurs."""
            k = gaussian_blur_matrices(size, row_sigmas)
            k2 = gaussian_blur_matrices(size, row_sigmas + self.grad_step)
            return tuple(m.astype(x.dtype) for m in (k, k2, (k2 - k) / self.grad_step))

        def to_model_layout(rows: np.ndarray) -> np.ndarray:
            return from_channels_last(rows.transpose(0, 1, 3, 2), x.ndim, is_last)

        def make_rows(start: int, stop: int) -> np.ndarray:
            """The blurred rows B = Kh X Kw^T; the rate of change
            B(s+g) - B(s) = (K'h - Kh) X K'w^T + Kh X (K'w - Kw)^T is finished by
            consume, which the scheduler runs while the model works on later rows."""
            index = np.arange(start, stop)
            rows, levels = owners[index], index % self.steps
            along_h_kernels = kernels(height, sigmas[levels])
            k_h, _, d_h = along_h_kernels
            k_w, k_w2, d_w = (along_h_kernels if width == height
                              else kernels(width, sigmas[levels]))
            picked = images[rows].reshape(len(rows), height, n_channels * width)
            # Many small products: one BLAS thread avoids spin-wait contention.
            with _blas_threads().limit(limits=1, user_api="blas"):
                along_h = (k_h @ picked).reshape(len(rows), height * n_channels, width)
                blurred = along_h @ k_w.transpose(0, 2, 1)
            unfinished[start] = (picked, along_h, d_h, d_w, k_w2, step_weights[levels])
            shape = (len(rows), height, n_channels, width)
            return np.ascontiguousarray(to_model_layout(blurred.reshape(shape)))

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            picked, along_h, d_h, d_w, k_w2, weights = unfinished.pop(start)
            with _blas_threads().limit(limits=1, user_api="blas"):
                rate = along_h @ d_w.transpose(0, 2, 1)
                rate += (d_h @ picked).reshape(along_h.shape) @ k_w2.transpose(0, 2, 1)
            rate *= weights.astype(x.dtype)[:, None, None]
            grads = to_channels_last(outputs[INPUT_OUTPUT_GRADIENTS], is_last)
            add_by_owner(totals, owners[start:stop],
                         rate.reshape(grads.shape[0], height, n_channels, width)
                         * grads.transpose(0, 1, 3, 2))

        run_rows(model, [INPUT_OUTPUT_GRADIENTS], owners, make_rows, consume, targets,
                 self.batch_size, self.name)
        return to_model_layout(-totals).astype(x.dtype)
