"""Performance Information Curves (PIC): SIC and AIC of the XRAI paper.

A drop-in for PAIR ``saliency.metrics.pic`` (same names, arguments, defaults
and numbers), with these differences:

- ``pred_func`` is called as PAIR calls it, one image per call in PAIR's
  order; ``batch_size`` (a salience extension) sends the thresholded images
  in chunks of up to that many;
- the images are interpolated once for all channels (PAIR: once per channel),
  on one BLAS thread, in worker threads that run while the model works;
- it runs on numpy >= 2 (PAIR calls the removed ``np.trapz``);
- inputs are checked (shapes, dtypes, NaN) with errors that name the argument,
  and ``aggregate_individual_pic_results`` really checks that all curves share
  their x points.

How to use it: draw one random mask per image with :func:`generate_random_mask`
(reuse it for every saliency method compared on that image), call
:func:`compute_pic_metric` per image and method, skip images that raise
:class:`ComputePicMetricError`, and combine each method's results with
:func:`aggregate_individual_pic_results`.  :func:`pred_func_from_model` builds
the ``pred_func`` for a salience Model (softmax for SIC, correctness for AIC).

References
----------
Kapishnikov, Bolukbasi, Viegas, Terry. "XRAI: Better Attributions Through
Regions", ICCV 2019. https://arxiv.org/abs/1906.02825
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import interpolate

from ..arrays import to_numpy
from ..checks import check_finite, check_positive_int
from ..concurrency import spare_workers, worker_pool
from ..model import OUTPUT_LAYER_VALUES, Model, as_model
from ..numeric import one_blas_thread, to_probabilities, trapezoid
from ..schedule import run_rows

__all__ = [
    "ComputePicMetricError",
    "PicMetricResult",
    "AggregateMetricResult",
    "create_blurred_image",
    "generate_random_mask",
    "estimate_image_entropy",
    "compute_pic_metric",
    "aggregate_individual_pic_results",
    "pred_func_from_model",
]

class ComputePicMetricError(Exception):
    """The image cannot be evaluated (see :func:`compute_pic_metric`); skip it."""


class PicMetricResult(NamedTuple):
    """The PIC curve of one image and how it was obtained."""

    curve_x: np.ndarray
    """Normalised information (entropy) of the points of the curve, from 0 to 1."""
    curve_y: np.ndarray
    """Normalised model prediction at each ``curve_x``."""
    blurred_images: Sequence[np.ndarray]
    """The fully blurred image, one image per threshold, then the original."""
    predictions: Sequence[float]
    """``pred_func`` of each image of ``blurred_images``."""
    thresholds: Sequence[float]
    """Fraction of revealed salient pixels of each of ``blurred_images`` (0 ... 1)."""
    auc: float
    """Area under the curve."""


class AggregateMetricResult(NamedTuple):
    """A PIC curve combined over images."""

    curve_x: np.ndarray
    curve_y: np.ndarray
    auc: float


def create_blurred_image(
    full_img: np.ndarray, pixel_mask: np.ndarray, method: str = "linear"
) -> np.ndarray:
    """Rebuild an image from a subset of its pixels by interpolation.

    Pixels where ``pixel_mask`` is true keep their values; the others are
    interpolated (``scipy.interpolate.griddata``) from them.  The four corners
    always count as known, so the whole image lies inside their convex hull.
    All channels share one triangulation (PAIR triangulates once per channel;
    the numbers are the same).

    Parameters
    ----------
    full_img : ndarray, shape (H, W, C) or (H, W)
        The source image, any numeric dtype.  Not modified.
    pixel_mask : bool ndarray, shape (H, W)
        Known pixels (PAIR's 0/1 masks of numbers are accepted too).  Not
        modified.
    method : {'linear', 'nearest'}
        Interpolation method.

    Returns
    -------
    ndarray
        The rebuilt image, with the shape and dtype of ``full_img`` (integer
        dtypes are rounded).  When every pixel is known this is a copy of
        ``full_img`` (PAIR returns a grayscale input with an extra channel axis
        in that case).

    References
    ----------
    Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019.
    """
    full_img = np.asarray(full_img)
    _check_image(full_img, "full_img", require_uint8=False)
    pixel_mask = _as_pixel_mask(pixel_mask, full_img.shape[:2], "pixel_mask")
    if method not in ("linear", "nearest"):
        raise ValueError(f"method must be 'linear' or 'nearest', got {method!r}")
    with one_blas_thread():
        return _blur(full_img, pixel_mask, method)



def _blur(full_img: np.ndarray, pixel_mask: np.ndarray, method: str = "linear") -> np.ndarray:
    gray = full_img.ndim == 2
    img = full_img[:, :, None] if gray else full_img
    known = pixel_mask.astype(bool, copy=True)
    height, width = known.shape
    known[[0, 0, height - 1, height - 1], [0, width - 1, 0, width - 1]] = True
    if known.all():
        return full_img.copy()
    # The same arithmetic dtype as PAIR: image * float32 mask.
    out = img * known[:, :, None].astype(np.float32)
    known_points = np.argwhere(known)
    unknown_points = np.argwhere(~known)
    values = img[known].astype(np.float64)
    filled = interpolate.griddata(
        known_points, values, unknown_points, method=method, fill_value=np.nan
    )
    outside = np.isnan(filled)
    if outside.any():  # only possible for degenerate masks; PAIR fills with the mean colour
        mean_color = np.mean(img, axis=(0, 1))
        filled = np.where(outside, mean_color[None, :], filled)
    out[~known] = filled
    if gray:
        out = out[:, :, 0]
    if np.issubdtype(full_img.dtype, np.integer):
        out = np.round(out)
    return out.astype(full_img.dtype)


def generate_random_mask(
    image_height: int,
    image_width: int,
    fraction: float = 0.01,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A boolean ``(image_height, image_width)`` mask with ``int(size * fraction)`` pixels set.

    It seeds the fully blurred image of :func:`compute_pic_metric`.  Without
    ``rng`` the legacy global ``np.random`` is used exactly as PAIR does, so
    ``np.random.seed(k)`` gives PAIR's mask; pass a ``numpy.random.Generator``
    for independent streams.

    References
    ----------
    Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019.
    """
    height = check_positive_int(image_height, "image_height")
    width = check_positive_int(image_width, "image_width")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    size = height * width
    count = int(size * fraction)
    if rng is None:
        chosen = np.random.choice(size, replace=False, size=count)
    else:
        chosen = rng.choice(size, replace=False, size=count)
    mask = np.zeros((height, width), dtype=bool)
    mask.reshape(-1)[chosen] = True
    return mask


def estimate_image_entropy(image: np.ndarray) -> float:
    """Information content of a uint8 image: the size in bytes of its lossless WebP file.

    References
    ----------
    Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019.
    """
    image = np.asarray(image)
    _check_image(image, "image", require_uint8=True)
    return _webp_size(image)


def _webp_size(image: np.ndarray) -> int:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("PIC metrics need Pillow: pip install pillow") from err
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="webp", lossless=True, quality=100)
    return buffer.getbuffer().nbytes


def compute_pic_metric(
    img: np.ndarray,
    saliency_map: np.ndarray,
    random_mask: np.ndarray,
    pred_func: Callable[[np.ndarray], Sequence[float]],
    saliency_thresholds: Sequence[float],
    min_pred_value: float = 0.8,
    keep_monotonous: bool = True,
    num_data_points: int = 1000,
    *,
    batch_size: int = 1,
    n_jobs: int | None = None,
) -> PicMetricResult:
    """The Performance Information Curve of one image and saliency map.

    For each threshold ``t`` the ``t`` most salient fraction of the pixels
    (plus ``random_mask``) is revealed and the rest interpolated
    (:func:`create_blurred_image`).  The curve plots the model's normalised
    prediction on these images against their normalised information
    (:func:`estimate_image_entropy`), both 0 for the fully blurred image and 1
    for the original, resampled on ``num_data_points`` evenly spaced points
    plus 1.0.

    Parameters
    ----------
    img : uint8 ndarray, shape (H, W, C) or (H, W)
        The image.
    saliency_map : ndarray, shape (H, W)
        Higher means more important (apply ``abs`` first if the sign should
        not count).  NaN is an error.
    random_mask : bool ndarray, shape (H, W)
        Pixels revealed in every image, from :func:`generate_random_mask`
        (0/1 numbers are accepted too).
    pred_func : callable
        ``pred_func(images)`` takes a uint8 batch ``(B, H, W, C)`` or
        ``(B, H, W)`` and returns ``B`` floats: the softmax probability of the
        class for SIC, 1.0 / 0.0 for a correct / wrong top class for AIC
        (:func:`pred_func_from_model` builds one from a salience Model).  It is
        called as PAIR calls it: with the original image; if that passes
        ``min_pred_value``, with the fully blurred image; if that passes the
        checks below, with each thresholded image in order; one image per
        call unless ``batch_size`` says otherwise.
    saliency_thresholds : sequence of float
        Fractions of the most salient pixels to reveal, ascending, in [0, 1].
    min_pred_value : float
        Images whose prediction is below this are skipped (error raised).
    keep_monotonous : bool
        Make the curve non-decreasing (running maximum of the predictions).
    num_data_points : int
        Number of curve points before the final point at x = 1.
    batch_size : int
        A salience extension: the thresholded images go to ``pred_func`` in
        chunks of up to ``batch_size`` (1: PAIR's one image per call).  The
        results do not depend on it.
    n_jobs : int, optional
        Threads that build the thresholded images (interpolation and WebP
        encoding) while the model runs; None: up to 4 (the number of CPUs),
        1: no threads.  The results do not depend on it.

    Returns
    -------
    PicMetricResult

    Raises
    ------
    ComputePicMetricError
        The prediction on the original image is below ``min_pred_value``, or
        the fully blurred image has no less information or no lower prediction
        than the original.  Skip such images.

    References
    ----------
    Kapishnikov, Bolukbasi, Viegas, Terry. "XRAI: Better Attributions Through
    Regions", ICCV 2019. https://arxiv.org/abs/1906.02825
    """
    img = np.asarray(img)
    _check_image(img, "img", require_uint8=True)
    size = img.shape[:2]
    saliency_map = np.asarray(saliency_map)
    if saliency_map.shape != size:
        raise ValueError(
            f"saliency_map has shape {saliency_map.shape} but img is {size} (height, width); "
            "reduce the channels of the map first (e.g. sum of abs over the last axis)"
        )
    if not np.issubdtype(saliency_map.dtype, np.number):
        raise TypeError(f"saliency_map must be numeric, got dtype {saliency_map.dtype}")
    check_finite(saliency_map, "saliency_map")
    random_mask = _as_pixel_mask(random_mask, size, "random_mask")
    if not callable(pred_func):
        raise TypeError(f"pred_func must be callable, got {type(pred_func).__name__}")
    thresholds = _check_thresholds(saliency_thresholds)
    num_data_points = check_positive_int(num_data_points, "num_data_points")
    batch_size = check_positive_int(batch_size, "batch_size")
    if n_jobs is not None:
        n_jobs = check_positive_int(n_jobs, "n_jobs")
    model = _PredFuncModel(pred_func)

    with one_blas_thread():
        original_entropy = _webp_size(img)
        fully_blurred = _blur(img, random_mask)
        blurred_entropy = _webp_size(fully_blurred)
        # PAIR's calls: each check before the images it would skip are predicted.
        (original_pred,) = _predict(model, 1, lambda _: img, 1)
        if original_pred < min_pred_value:
            raise ComputePicMetricError(
                f"the prediction on the original image ({original_pred}) is below "
                f"min_pred_value={min_pred_value}; skip this image or lower min_pred_value"
            )
        (blurred_pred,) = _predict(model, 1, lambda _: fully_blurred, 1)
        if blurred_entropy >= original_entropy:
            raise ComputePicMetricError(
                f"the fully blurred image has no less information ({blurred_entropy} bytes) than "
                f"the original ({original_entropy} bytes); skip this image"
            )
        if blurred_pred >= original_pred:
            raise ComputePicMetricError(
                f"the prediction on the fully blurred image ({blurred_pred}) is not below the "
                f"prediction on the original ({original_pred}); skip this image"
            )

        images, entropies, preds = _thresholded(
            img, saliency_map, random_mask, thresholds, model, batch_size, n_jobs)

    entropy_span = original_entropy - blurred_entropy
    pred_span = original_pred - blurred_pred
    points_x, points_y = [], []
    best = 0.0
    for entropy, pred in zip(entropies, preds):
        x = min(max((entropy - blurred_entropy) / entropy_span, 0.0), 1.0)
        y = min(max((pred - blurred_pred) / pred_span, 0.0), 1.0)
        best = max(best, y)
        points_x.append(x)
        points_y.append(best if keep_monotonous else y)
    curve_x, curve_y = _resample(points_x + [0.0, 1.0], points_y + [0.0, 1.0], num_data_points)

    return PicMetricResult(
        curve_x=curve_x,
        curve_y=curve_y,
        blurred_images=[fully_blurred, *images, img],
        predictions=[blurred_pred, *preds, original_pred],
        thresholds=[0.0, *thresholds, 1.0],
        auc=trapezoid(curve_y, curve_x),
    )


def _resample(points_x, points_y, num_data_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The curve through the points on ``num_data_points`` even x values in [0, 1), plus 1.

    Linear interpolation through the points sorted stably by x (points with
    the same x keep their order), which is what scipy's ``interp1d`` does.
    """
    x = np.asarray(points_x, dtype=np.float64)
    y = np.asarray(points_y, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    curve_x = np.linspace(0.0, 1.0, num_data_points, endpoint=False)
    curve_y = np.interp(curve_x, x[order], y[order])
    return np.append(curve_x, 1.0), np.append(curve_y, 1.0)


def aggregate_individual_pic_results(
    compute_pic_metrics_results: list[PicMetricResult], method: str = "median"
) -> AggregateMetricResult:
    """Combine the PIC curves of many images (for one saliency method) into one.

    Parameters
    ----------
    compute_pic_metrics_results : list of PicMetricResult
        Results of :func:`compute_pic_metric`, all with the same ``curve_x``.
    method : {'median', 'mean'}
        How the curves' y values are combined point by point.

    Returns
    -------
    AggregateMetricResult

    References
    ----------
    Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019.
    """
    results = list(compute_pic_metrics_results)
    if not results:
        raise ValueError("compute_pic_metrics_results is empty; pass at least one result")
    if method not in ("mean", "median"):
        raise ValueError(f"method must be 'mean' or 'median', got {method!r}")
    xs = [np.asarray(r.curve_x, dtype=np.float64) for r in results]
    for i, x in enumerate(xs):
        if x.shape != xs[0].shape or not np.array_equal(x, xs[0]):
            raise ValueError(
                f"result {i} has other x points than result 0 ({x.shape[0]} vs "
                f"{xs[0].shape[0]} points); compute all curves with the same num_data_points"
            )
    ys = np.asarray([np.asarray(r.curve_y, dtype=np.float64) for r in results])
    curve_y = np.mean(ys, axis=0) if method == "mean" else np.median(ys, axis=0)
    return AggregateMetricResult(curve_x=xs[0], curve_y=curve_y, auc=trapezoid(curve_y, xs[0]))


def pred_func_from_model(
    model: Model,
    target: int,
    kind: str = "sic",
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``pred_func`` for :func:`compute_pic_metric` from a salience Model.

    Parameters
    ----------
    model : Model
        An adapter (``salience.torch.wrap(...)``) or any Model.  ``'sic'`` and
        ``'aic'`` use its ``predict`` (raw outputs, e.g. logits); ``'score'``
        uses ``OUTPUT_LAYER_VALUES`` of ``target`` (already a probability, for
        models that end in a softmax).
    target : int
        The class whose prediction is followed.
    kind : {'sic', 'aic', 'score'}
        ``'sic'``: softmax probability of ``target``; ``'aic'``: 1.0 when
        ``target`` is the top class, else 0.0; ``'score'``: the model's score.
    preprocess : callable, optional
        Turns the uint8 image batch into the model's input (scaling, layout).

    References
    ----------
    Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019.
    """
    model = as_model(model)
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
        raise TypeError(f"target must be a class index (int >= 0), got {target!r}")
    if kind not in ("sic", "aic", "score"):
        raise ValueError(f"kind must be 'sic', 'aic' or 'score', got {kind!r}")
    if kind != "score" and not callable(getattr(model, "predict", None)):
        raise TypeError(
            f"kind={kind!r} needs all class outputs, but the model has no predict(x); use an "
            "adapter (salience.torch.wrap, ...) or kind='score'"
        )
    target = int(target)

    def pred_func(images: np.ndarray) -> np.ndarray:
        x = np.asarray(images) if preprocess is None else np.asarray(preprocess(images))
        if kind == "score":
            out = model(x, np.full(len(x), target, dtype=np.int64), [OUTPUT_LAYER_VALUES])
            return np.asarray(out[OUTPUT_LAYER_VALUES], dtype=np.float64).reshape(len(x))
        logits = np.asarray(model.predict(x), dtype=np.float64)
        if logits.ndim != 2 or not 0 <= target < logits.shape[1]:
            raise ValueError(
                f"target {target} does not index the model's outputs of shape {logits.shape}"
            )
        if kind == "aic":
            return (np.argmax(logits, axis=1) == target).astype(np.float64)
        return to_probabilities(logits)[:, target]

    return pred_func


class _PredFuncModel:
    """A ``pred_func(images) -> floats`` seen as a Model returning OUTPUT_LAYER_VALUES."""

    def __init__(self, pred_func: Callable[[np.ndarray], Sequence[float]]) -> None:
        self.pred_func = pred_func

    def __call__(self, x, targets, keys) -> Mapping[str, Any]:
        values = to_numpy(self.pred_func(x))
        if values.ndim == 0 or values.shape[0] != len(x) or values.size != len(x):
            raise ValueError(
                f"pred_func returned predictions of shape {values.shape} for {len(x)} image(s); "
                "it must return one float per image of the batch"
            )
        return {OUTPUT_LAYER_VALUES: values.reshape(len(x))}


def _thresholded(img, saliency_map, random_mask, thresholds, model, batch_size, n_jobs):
    """The image, its information and the model's prediction for every threshold.

    The images are built (and measured) in worker threads while the model works
    on earlier chunks; each chunk waits only for its own images.
    """

    def make_image(threshold: float) -> tuple[np.ndarray, int]:
        revealed = saliency_map >= np.quantile(saliency_map, 1 - threshold)
        image = _blur(img, revealed | random_mask)
        return image, _webp_size(image)

    workers = spare_workers(len(thresholds), at_most=4) if n_jobs is None else n_jobs
    # Workers build images while the model runs (griddata and WebP release the GIL);
    # without them (n_jobs=1) each image is built when the model first needs it.
    with worker_pool(workers if workers > 1 else 0, "salience-pic") as pool:
        jobs = [pool.submit(make_image, t) for t in thresholds]
        preds = _predict(model, len(thresholds), lambda i: jobs[i].result()[0], batch_size)
        images, entropies = zip(*(job.result() for job in jobs))
    return list(images), list(entropies), preds


def _predict(model, n: int, get_image: Callable[[int], np.ndarray], batch_size: int) -> list:
    """Predictions for images ``get_image(0 .. n-1)``, fetched one chunk at a time."""
    preds: list = []

    def make_rows(start: int, stop: int) -> np.ndarray:
        return np.stack([get_image(i) for i in range(start, stop)])

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        values = np.asarray(outputs[OUTPUT_LAYER_VALUES])
        if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
            raise ValueError(
                f"pred_func returned non-finite or non-numeric predictions {values.tolist()} "
                f"for images {start}..{stop - 1}; it must return one finite float per image"
            )
        preds.extend(values.reshape(-1))  # numpy scalars, as pred_func returned them

    run_rows(model, [OUTPUT_LAYER_VALUES], np.arange(n), make_rows, consume, None,
             batch_size, "compute_pic_metric")
    return preds


def _check_image(image: np.ndarray, name: str, require_uint8: bool) -> None:
    if require_uint8 and image.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 image, got dtype {image.dtype}")
    if not np.issubdtype(image.dtype, np.number):
        raise TypeError(f"{name} must be a numeric image, got dtype {image.dtype}")
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 2:
        raise ValueError(
            f"{name} must be one image shaped (H, W, C) or (H, W) with H, W >= 2, got shape "
            f"{image.shape}"
        )
    if not require_uint8:
        check_finite(image, name)


def _as_pixel_mask(mask: Any, size: tuple[int, ...], name: str) -> np.ndarray:
    """``mask`` as a boolean (H, W) array; PAIR's masks of 0/1 numbers are accepted."""
    mask = np.asarray(mask)
    if mask.shape != tuple(size):
        raise ValueError(
            f"{name} has shape {mask.shape} but the image is {tuple(size)} (height, width)"
        )
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.number) or np.issubdtype(mask.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a boolean array (or of 0/1 numbers), got dtype "
                        f"{mask.dtype}")
    other = ~np.isin(mask, (0, 1))
    if other.any():
        where = tuple(int(i) for i in np.argwhere(other)[0])
        raise ValueError(f"{name} must hold only 0 and 1 (or be boolean), got {mask[where]} at "
                         f"{where}")
    return mask != 0


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = list(thresholds) if not isinstance(thresholds, (str, bytes)) else None
    if values is None or not values:
        raise ValueError(
            "saliency_thresholds must be a non-empty sequence of fractions in [0, 1], got "
            f"{thresholds!r}"
        )
    for t in values:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= t <= 1.0:
            raise ValueError(f"saliency_thresholds must hold fractions in [0, 1], got {t!r}")
    return values
