"""What every class activation map (CAM) method shares.

A CAM method asks the model for one row per image (a chosen layer's values
and, for most methods, the score's gradients with respect to them), turns them
into one map per image at the layer's resolution with a small pure function,
and finishes the maps the same way: scaled by their maximum and resized to the
input (bilinear), optionally repeated over the input's channels.

The pure functions here and in each method's file take the layer as
``(n, channels, h, w)`` arrays (:func:`layer_arrays` gives any layout that
shape as a view, without a copy), so they read like the papers' sums over
channels ``k`` and positions ``(i, j)``.  They compute in the layer's
precision: a float64 layer stays float64, any other becomes float32 (such a
layer holds no more than float32's precision, and the passes over it then move
half the bytes).
"""

from __future__ import annotations

import functools

import numpy as np

from ..arrays import channels_last, spatial_axes, working_dtype
from ..checks import check_positive_int
from ..model import CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS, Model
from ..numeric import ONE_THREAD_GEMV, ONE_THREAD_PRODUCT, one_blas_thread, one_blas_thread_unless
from .base import Method, collect_rows

__all__ = [
    "CAMMethod",
    "GradientCAMMethod",
    "bilinear_matrix",
    "finish_maps",
    "layer_arrays",
    "normalise_by_max",
    "position_sums",
    "resize_maps",
    "resized_crops",
    "weighted_channel_sum",
]


class CAMMethod(Method):
    """Base of the CAM methods: one layer row per image, a map kernel, the finishing.

    Subclasses set ``keys`` (the layer outputs they need) and implement
    ``_layer_maps(values, grads)`` on ``(n, k, h, w)`` arrays (``grads``
    is None when ``keys`` holds no gradients), returning ``(n, h, w)`` maps
    that are >= 0.

    Parameters
    ----------
    resize : bool
        Scale each map to [0, 1] by its maximum and resize it (bilinear) to the
        input's height and width.  Otherwise return the raw layer-resolution map.
    broadcast : bool
        With ``resize``, repeat the map over the input's channels so the result
        is shaped exactly like ``x``.  Otherwise maps are ``(n, H, W)``.
    batch_size : int
        Largest number of inputs per model call.
    """

    name = "CAM"
    #: The method's name as its paper writes it (in error messages).
    title = "CAM"
    #: The model outputs of the layer this method reads.
    keys: tuple[str, ...] = (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS)

    def __init__(self, resize: bool = True, broadcast: bool = False, batch_size: int = 32) -> None:
        self.resize = bool(resize)
        self.broadcast = bool(broadcast)
        if self.broadcast and not self.resize:
            raise ValueError("broadcast=True needs resize=True (maps must have the input's size)")
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        spatial_axes(x.ndim - 1, channels_last(model))

    def _runs_one_call(self, n: int) -> bool:
        return n <= self.batch_size  # one layer row per input (Score-CAM: more calls)

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        is_last = channels_last(model)
        # The kernels make new arrays: the model's own answer needs no copy.
        out = collect_rows(model, x, targets, list(self.keys), self.batch_size, self.name,
                           copy=False)
        values, grads = layer_arrays(
            out[CONVOLUTION_LAYER_VALUES], out.get(CONVOLUTION_OUTPUT_GRADIENTS), is_last,
            self.title,
        )
        return finish_maps(self._layer_maps(values, grads), x, is_last, self.resize,
                           self.broadcast)

    def _layer_maps(self, values: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _layer_maps")


class GradientCAMMethod(CAMMethod):
    """A CAM method that weighs the layer with the score's gradients: subclasses
    implement ``_gradient_maps(values, grads)`` on ``(n, k, h, w)`` arrays."""

    def _layer_maps(self, values: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        if grads is None:  # keys ask for the gradients, so the model returned them
            raise ValueError(f"{self.title} needs the layer's gradients")
        return self._gradient_maps(values, grads)

    def _gradient_maps(self, values: np.ndarray, grads: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _gradient_maps")


def layer_arrays(
    values: np.ndarray, grads: np.ndarray | None, is_channels_last: bool, method: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's values (and gradients) as ``(n, k, h, w)`` arrays, float64 if
    the layer is, else float32: views of the model's arrays when their dtype is
    already that, in any memory order.

    Raises
    ------
    ValueError
        The layer is not 4-D, or values and gradients differ in shape.
    """
    if values.ndim != 4 or (grads is not None and grads.shape != values.shape):
        what = "values" if grads is None else "values and gradients"
        got = f"values {values.shape}" + ("" if grads is None else f" and gradients {grads.shape}")
        raise ValueError(
            f"{method} needs layer {what} shaped (n, h, w, channels) or (n, channels, h, w), "
            f"got {got}; choose a convolutional layer, or a transformer block whose tokens the "
            "adapter's reshape= lays out on their grid"
        )

    def first(a: np.ndarray) -> np.ndarray:
        # A view in whatever memory order the model left (PyTorch's channels-last
        # tensors, TensorFlow's NHWC): the kernels are matrix products and element-wise
        # passes, as fast on it as on a copy in another order, which costs a pass.
        # Grad-CAM's kernel, with the copy -> without: the tiny CNN's 32 x 16 x 16 x 16
        # layer (channels last in memory) 160 -> 41 us, EfficientNet-Lite0's
        # 1280 x 7 x 7 (channels first) 3x faster.
        a = np.moveaxis(a, -1, 1) if is_channels_last else a
        # the dtype test before astype: 4 us less on one image, after the model's call
        if a.dtype == np.float32 or a.dtype == np.float64:
            return a
        return a.astype(working_dtype(a.dtype))

    return first(values), None if grads is None else first(grads)


def weighted_channel_sum(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``sum_k weights[n, k] * values[n, k]``: one ``(h, w)`` map per row."""
    n, k, h, w = values.shape
    # one small matrix product per row (BLAS): 2x einsum's speed on the tiny CNN's
    # 32 x 16 x 16 x 16 layer and on EfficientNet-Lite0's 1280 x 7 x 7
    with one_blas_thread_unless(values[0].size < ONE_THREAD_GEMV):
        return (weights[:, None, :] @ values.reshape(n, k, h * w)).reshape(n, h, w)


def position_sums(a: np.ndarray) -> np.ndarray:
    """``sum_ij a[n, k, i, j]``: each channel summed over the positions, ``(n, k)``."""
    n, k, h, w = a.shape
    # a product with ones (BLAS): 4x numpy's sum over 16 x 16 positions
    with one_blas_thread_unless(a[0].size < ONE_THREAD_GEMV):
        return a.reshape(n, k, h * w) @ np.ones(h * w, dtype=a.dtype)


def finish_maps(
    cams: np.ndarray, x: np.ndarray, is_channels_last: bool, resize: bool, broadcast: bool
) -> np.ndarray:
    """Layer-resolution maps as the method returns them (see :class:`CAMMethod`)."""
    if not resize:
        return cams.astype(x.dtype)
    h_axis, w_axis = spatial_axes(x.ndim - 1, is_channels_last)
    size = (x.shape[1 + h_axis], x.shape[1 + w_axis])
    maps = resize_maps(normalise_by_max(cams), size)
    if broadcast and x.ndim == 4:
        maps = np.broadcast_to(np.expand_dims(maps, 3 if is_channels_last else 1), x.shape)
    return np.ascontiguousarray(maps, dtype=x.dtype)


def normalise_by_max(cams: np.ndarray) -> np.ndarray:
    """Divide each map by its maximum when that is positive (all-zero maps stay zero)."""
    peaks = cams.reshape(len(cams), -1).max(axis=1)
    safe = np.where(peaks > 0, peaks, 1.0)
    return cams / safe[:, None, None]


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a stack of 2-D maps (scikit-image's rules, one call)."""
    if maps.shape[1:] == tuple(size):
        return maps
    (h, w), (height, width) = maps.shape[1:], size
    if height < h or width < w:  # downsampling: scikit-image also anti-aliases
        from skimage.transform import resize as skimage_resize  # on use: a light start-up

        return skimage_resize(maps, (len(maps), *size))
    # Upsampling is separable and linear: two small matrices reproduce
    # scikit-image's bilinear zoom exactly, at a fraction of its cost.
    rows, columns = _upsampling_pair(h, w, height, width, _upsampling_dtype(maps))
    if height * w * max(h, width) < ONE_THREAD_PRODUCT:  # no context to enter: 2 us
        return rows @ maps @ columns
    with one_blas_thread():
        return rows @ maps @ columns


def resized_crops(maps: np.ndarray, size: tuple[int, int], corners: np.ndarray,
                  crop: tuple[int, int]) -> np.ndarray:
    """``resize_maps(maps, size)[i, top:top + H, left:left + W]`` for each map ``i``
    with ``corners[i] = (top, left)`` and ``crop = (H, W)``, for upsampling.

    A crop of the separable upsampling keeps only some rows of each axis's
    resampling matrix: each map is multiplied by its own rows, and no map of
    the full ``size`` is formed.
    """
    (h, w), (height, width) = maps.shape[1:], size
    if height < h or width < w:
        raise ValueError(f"resized_crops upsamples: {(h, w)} to {size} would shrink")
    dtype = _upsampling_dtype(maps)
    rows = _skimage_upsampling(h, height, dtype)[corners[:, :1] + np.arange(crop[0])]
    cols = _skimage_upsampling(w, width, dtype)[corners[:, 1:] + np.arange(crop[1])]
    with one_blas_thread_unless(crop[0] * w * max(h, crop[1]) < ONE_THREAD_PRODUCT):
        return rows @ maps @ cols.transpose(0, 2, 1)


def _upsampling_dtype(maps: np.ndarray) -> np.dtype:
    """float32 maps stay float32 (half the bytes, the maps' own precision); any
    other dtype is resampled in float64."""
    return maps.dtype if maps.dtype == np.float32 else np.dtype(np.float64)


@functools.lru_cache(maxsize=16)
def _upsampling_pair(h: int, w: int, height: int, width: int,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The matrices ``rows @ maps @ columns`` upsamples ``(h, w)`` maps with."""
    return _skimage_upsampling(h, height, dtype), _skimage_upsampling(w, width, dtype).T


@functools.lru_cache(maxsize=16)
def _skimage_upsampling(size: int, new_size: int, dtype: np.dtype) -> np.ndarray:
    """Rows: scikit-image's bilinear weights of each output pixel over the inputs."""
    from skimage.transform import resize as skimage_resize

    return skimage_resize(np.eye(size), (new_size, size), anti_aliasing=False).astype(dtype)


@functools.lru_cache(maxsize=32)
def bilinear_matrix(size: int, new_size: int, align_corners: bool) -> np.ndarray:
    """The ``(new_size, size)`` matrix of bilinear resampling along one axis, with
    PyTorch's two conventions.

    ``align_corners=True``: the first and last pixels of both grids coincide
    (``UpsamplingBilinear2d``).  ``align_corners=False``: pixel centres are
    aligned and positions beyond the outer centres take the edge pixel
    (``interpolate(mode="bilinear")``).
    """
    out = np.arange(new_size, dtype=np.float64)
    if align_corners:
        where = out * ((size - 1) / (new_size - 1)) if new_size > 1 else np.zeros(1)
    else:
        where = np.clip((out + 0.5) * (size / new_size) - 0.5, 0, size - 1)
    left = np.minimum(np.floor(where).astype(int), max(size - 2, 0))
    frac = where - left
    matrix = np.zeros((new_size, size))
    matrix[np.arange(new_size), left] = 1 - frac
    if size > 1:
        matrix[np.arange(new_size), left + 1] += frac
    return matrix
