"""Blur IG: integrated gradients along a path of increasingly blurred images."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arrays import channels_last, from_channels_last, spatial_axes, to_channels_last
from ..checks import check_nonnegative, check_positive_int
from ..model import INPUT_OUTPUT_GRADIENTS, Model
from ..numeric import add_by_owner, one_blas_thread, owner_runs
from ..schedule import check_row_budget, overlap_for_array_work, run_rows
from .base import Method, check_row_place, rows_on_model

__all__ = [
    "BlurIG",
    "blur_rates",
    "blur_sigmas",
    "blurred_rows",
    "gaussian_blur_matrix",
    "gaussian_blur_matrices",
    "gaussian_kernels",
    "toeplitz_stack",
]


def blur_sigmas(max_sigma: float, steps: int, sqrt: bool) -> np.ndarray:
    """The ``steps + 1`` blur levels from 0 to ``max_sigma`` (square-root spaced if ``sqrt``).

    Level ``i`` is ``i * max_sigma / steps`` (its square root if ``sqrt``),
    rounded as that expression is in Python floats.
    """
    levels = np.arange(steps + 1, dtype=np.float64) * float(max_sigma) / steps
    return np.sqrt(levels) if sqrt else levels


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


def toeplitz_stack(kernels: np.ndarray, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
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


# --------------------------------------------------------------------------- path and rate
# Images are laid out (n, H, C, W): both blur passes are then one matrix product
# per row, with no transposes in between.  Blur matrices are symmetric.


def blur_along_height(images: np.ndarray, owners: np.ndarray, kernels: np.ndarray
                      ) -> np.ndarray:
    """``kernels[r] @ images[owners[r]]`` along H for each row ``r``, shape (r, H, C, W).

    ``images`` is (n, H, C, W), ``kernels`` (r, H, H) and ``owners`` sorted;
    the rows of one image share a single matrix product.
    """
    n_rows = len(owners)
    height = images.shape[1]
    flat = images.reshape(len(images), height, -1)
    out = np.empty((n_rows, height, flat.shape[2]), dtype=images.dtype)
    planes = out.reshape(n_rows * height, -1)  # a view: out is contiguous
    for a, b in owner_runs(owners):
        # written in place: a temporary and its copy cost as much as the product
        np.matmul(kernels[a:b].reshape(-1, height), flat[owners[a]],
                  out=planes[a * height:b * height])
    return out.reshape(n_rows, *images.shape[1:])


def blur_along_width(rows: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Each row (r, H, C, W) times its own ``kernels[r]`` (W, W) along W."""
    n_rows, height, n_channels, width = rows.shape
    out = rows.reshape(n_rows, height * n_channels, width) @ kernels
    return out.reshape(rows.shape)


def blurred_rows(images: np.ndarray, owners: np.ndarray, k_h: np.ndarray, k_w: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Path points ``B = K_h X K_w``: image ``owners[r]`` blurred by row ``r``'s matrices.

    Returns the points and the first pass ``K_h X``, which :func:`blur_rates`
    reuses.  Shapes as in :func:`blur_along_height`.
    """
    along_h = blur_along_height(images, owners, k_h)
    return blur_along_width(along_h, k_w), along_h


def blur_rates(images: np.ndarray, owners: np.ndarray, along_h: np.ndarray, d_h: np.ndarray,
               d_w: np.ndarray, k_w_next: np.ndarray) -> np.ndarray:
    """Rate of change of the path points with sigma, by a forward difference ``g``.

    ``(B(s + g) - B(s)) / g = D_h X K_w(s + g) + K_h(s) X D_w`` with
    ``D = (K(s + g) - K(s)) / g`` (``d_h``, ``d_w``), ``along_h = K_h(s) X``
    from :func:`blurred_rows` and ``k_w_next = K_w(s + g)``.
    """
    rate = blur_along_width(along_h, d_w)
    rate += blur_along_width(blur_along_height(images, owners, d_h), k_w_next)
    return rate


@dataclass(frozen=True)
class _PathKernels:
    """Blur kernels of every path point along one axis (steps, 2 * size - 1), float64:
    at sigma, at sigma + grad_step, and their forward difference, taken in float64
    so float32 rows do not lose the rate to cancellation between two nearly equal
    blurs."""

    at: np.ndarray
    after: np.ndarray
    rate: np.ndarray

    @classmethod
    def of(cls, size: int, sigmas: np.ndarray, grad_step: float) -> _PathKernels:
        # The same settings give the same kernels on every call: their Gaussians
        # (steps x the widest radius, up to 401 taps for sigma 50) took a tenth of a
        # 32 px image's own work.
        return _path_kernels(size, sigmas.tobytes(), grad_step)


@functools.lru_cache(maxsize=16)
def _path_kernels(size: int, sigmas: bytes, grad_step: float) -> _PathKernels:
    levels = np.frombuffer(sigmas, dtype=np.float64)
    at = gaussian_kernels(size, levels)
    after = gaussian_kernels(size, levels + grad_step)
    kernels = _PathKernels(at, after, (after - at) / grad_step)
    for array in (kernels.at, kernels.after, kernels.rate):
        array.flags.writeable = False  # shared by every run with these settings
    return kernels


class BlurIG(Method):
    """Integrated gradients from a fully blurred image back to the input.

    The path is ``x`` blurred with a Gaussian of ``sigma`` going from
    ``max_sigma`` down to 0; the derivative of the blurred image with respect to
    sigma is taken by a forward difference of ``grad_step``.  The map is
    ``-sum_i (sigma_{i+1} - sigma_i) * dB/dsigma(sigma_i) * grad f(B(sigma_i))``
    over the ``steps`` levels of :func:`blur_sigmas` (the path points are
    :func:`blurred_rows`, the rates :func:`blur_rates`).  Blurring uses zero
    padding outside the image, as in PAIR ``saliency``.  All blur levels of a
    chunk are computed together as matrix products (no per-step filter calls).

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
    blur_on : {'auto', 'host', 'model'}
        Where the path points and their rates are computed.  ``"host"``: with
        numpy, as matrix products.  ``"model"``: by the model's adapter, in its
        framework and on its device (``salience.torch.wrap``,
        ``salience.jax.wrap``, ``salience.keras.wrap``, their
        ``filtered_rows``): only the blur kernels go to the device, the points
        stay there for the model, and the rates come back to be weighed by the
        gradients.  On an accelerator this removes the method's largest cost
        from the host (2-2.5 ms per 224 px row on a CPU, over twice what a
        data-centre GPU takes for a Lite0 row).  The maps are the host's up to
        the rounding of the device's float32 products.  ``"auto"`` (default):
        the model's device when it is an accelerator and the adapter can,
        else the host.

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
        blur_on: str = "auto",
    ) -> None:
        self.max_sigma = check_nonnegative(max_sigma, "max_sigma")
        self.steps = check_positive_int(steps, "steps")
        self.grad_step = check_nonnegative(grad_step, "grad_step")
        if self.grad_step == 0:
            raise ValueError("grad_step must be > 0, got 0")
        self.sqrt = bool(sqrt)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.blur_on = check_row_place(blur_on, "blur_on")

    def _rows_per_input(self) -> int:
        return self.steps

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))
        check_row_budget(self.name, len(x) * self._rows_per_input(), x[0].size)
        self._blur_on_model(model)  # raises if blur_on='model' and the model cannot

    def resolved_for(self, model: Model) -> BlurIG:
        """A copy with ``blur_on="auto"`` made ``"model"`` or ``"host"``, as it runs
        for ``model`` (the two differ in the last bits)."""
        return self._place_resolved("blur_on", self._blur_on_model(model))

    def _blur_on_model(self, model: Model) -> bool:
        """Whether this run's path points and rates are made by the model's adapter."""
        return rows_on_model(model, self.blur_on, "filtered_rows", "blur_on")

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        self._check(model, x)
        path = _BlurPath(x, channels_last(model),
                         blur_sigmas(self.max_sigma, self.steps, self.sqrt), self.grad_step,
                         model if self._blur_on_model(model) else None)
        on_host = path.on_model is None  # else the blur runs on the model's device
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], path.owners, path.make_rows, path.consume,
                 targets, self.batch_size, self.name, prepare=path.prepare,
                 overlap=overlap_for_array_work(self.batch_size, len(path.owners),
                                                x[0].size) if on_host else None)
        # The map: minus the sum over the path of (sigma step) x rate x gradient.
        return path.to_model_layout(-path.totals).astype(x.dtype)


class _BlurPath:
    """Chunk bookkeeping of one Blur IG run: which rows are which path points, the
    first blur pass handed from ``make_rows`` to ``prepare``, the rates from
    ``prepare`` to ``consume``, and the sums.  With ``on_model``, that model's
    ``filtered_rows`` makes the points and the rates instead of numpy."""

    def __init__(self, x: np.ndarray, is_last: bool, sigmas: np.ndarray,
                 grad_step: float, on_model: Model | None = None) -> None:
        self.ndim, self.is_last = x.ndim, is_last
        self.x, self.on_model = x, on_model
        self.axes = spatial_axes(x.ndim - 1, is_last)
        layout = self.from_model_layout(x)  # (n, H, C, W), a view
        # the host blurs these; the model's adapter blurs x itself
        self.images = np.ascontiguousarray(layout) if on_model is None else layout
        n, height, _, width = layout.shape
        self.dtype = x.dtype
        self.steps = len(sigmas) - 1
        self.step_weights = np.diff(sigmas).astype(self.dtype)
        self.owners = np.arange(n * self.steps) // self.steps
        self.kernels = {size: _PathKernels.of(size, sigmas[:-1], grad_step)
                        for size in {height, width}}
        self.height, self.width = height, width
        self.totals = np.zeros(layout.shape, dtype=np.float64)
        self.first_pass: dict[int, tuple] = {}  # by chunk start, for prepare
        self.rates: dict[int, tuple] = {}  # by chunk start, for consume

    def from_model_layout(self, rows: np.ndarray) -> np.ndarray:
        return to_channels_last(rows, self.is_last).transpose(0, 1, 3, 2)

    def to_model_layout(self, rows: np.ndarray) -> np.ndarray:
        return from_channels_last(rows.transpose(0, 1, 3, 2), self.ndim, self.is_last)

    def _taps(self, size: int, levels: np.ndarray, which: str) -> np.ndarray:
        """The kernels (rows, 2 * size - 1) of ``levels``: at sigma, after it, or the rate."""
        return getattr(self.kernels[size], which)[levels]

    def _matrices(self, size: int, levels: np.ndarray, which: str) -> np.ndarray:
        return toeplitz_stack(self._taps(size, levels, which), self.dtype)

    def _filtered(self, owners: np.ndarray, terms: list) -> Any:
        assert self.on_model is not None
        return self.on_model.filtered_rows(  # type: ignore[attr-defined]  # checked
            self.x, owners, terms, self.axes)

    def _pair(self, levels: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Matrices along H and along W; a square image shares them."""
        along_h = self._matrices(self.height, levels, which)
        square = self.width == self.height
        return along_h, along_h if square else self._matrices(self.width, levels, which)

    def make_rows(self, start: int, stop: int) -> Any:
        index = np.arange(start, stop)
        owners, levels = self.owners[index], index % self.steps
        if self.on_model is not None:
            self.first_pass[start] = (owners, levels, None)
            return self._filtered(owners, [(self._taps(self.height, levels, "at"),
                                            self._taps(self.width, levels, "at"))])
        k_h, k_w = self._pair(levels, "at")
        # Many small products: one BLAS thread avoids spin-wait contention.
        with one_blas_thread():
            points, along_h = blurred_rows(self.images, owners, k_h, k_w)
        self.first_pass[start] = (owners, levels, along_h)
        return np.ascontiguousarray(self.to_model_layout(points))

    def prepare(self, start: int, stop: int) -> None:
        """The rates need no gradient: the scheduler runs this while the model works."""
        owners, levels, along_h = self.first_pass.pop(start)
        if self.on_model is not None:
            # D_h X K_w(s + g) + K_h X D_w, as blur_rates, made by the model's adapter
            h, w = self.height, self.width
            rate = np.asarray(self._filtered(owners, [  # in the model's layout
                (self._taps(h, levels, "rate"), self._taps(w, levels, "after")),
                (self._taps(h, levels, "at"), self._taps(w, levels, "rate"))]))
        else:
            d_h, d_w = self._pair(levels, "rate")
            k_w_next = self._matrices(self.width, levels, "after")
            with one_blas_thread():
                rate = blur_rates(self.images, owners, along_h, d_h, d_w, k_w_next)
        self.rates[start] = (owners, rate, self.step_weights[levels])

    def consume(self, start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        owners, rate, weights = self.rates.pop(start)
        grads = outputs[INPUT_OUTPUT_GRADIENTS]
        if self.on_model is None:
            rate *= self.from_model_layout(grads)  # rate x gradient, into the host's rates
            totals = self.totals
        else:  # both in the model's layout; the adapter's copy may be memory it keeps
            rate = rate * grads
            totals = self.to_model_layout(self.totals)  # a view: the sums, as the model lays out
        with one_blas_thread():  # sums weighted by the sigma steps, one product per image
            add_by_owner(totals, owners, rate, weights)
