"""Per-image metric values of a set of maps: what the report and dataset runs show.

Insertion and deletion AUC (RISE) and the SIC/AIC areas of the PIC curves
(XRAI paper) of every method's map of every image, with the settings the
command line uses.  :data:`METRICS` names each value for people: a label,
whether higher or lower is better, and one sentence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..checks import as_float_batch, check_reduction
from ..progress import ProgressEvent, in_group, progress_stage
from ..visualize import to_2d
from .insertion_deletion import DEFAULT_SCORE, check_score, insertion_deletion_curves
from .pic import (
    ComputePicMetricError,
    compute_pic_metric,
    generate_random_mask,
    pred_func_from_model,
)

__all__ = ["METRICS", "MetricInfo", "PIC_THRESHOLDS", "evaluate_maps"]

#: Fractions of the most salient pixels revealed for the PIC curves (as in PAIR's examples).
PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)


@dataclass(frozen=True)
class MetricInfo:
    """How to show one metric value to people.

    Attributes
    ----------
    name : str
        The key in :func:`evaluate_maps`' values.
    label : str
        A short readable name.
    better : str
        ``"higher"`` or ``"lower"``: which way a more faithful map moves it.
    description : str
        One sentence: what the value measures.
    """

    name: str
    label: str
    better: str
    description: str


def _metric_table(*infos: MetricInfo) -> Mapping[str, MetricInfo]:
    return MappingProxyType({info.name: info for info in infos})


#: Every value :func:`evaluate_maps` gives, in display order (the report and dataset
#: summaries read it).
METRICS: Mapping[str, MetricInfo] = _metric_table(
    MetricInfo("insertion_auc", "Insertion AUC", "higher",
               "Area under the class score as the image's pixels are put back onto a blurred "
               "copy, most salient first (RISE): high when the pixels the map ranks first "
               "bring the class back fast."),
    MetricInfo("deletion_auc", "Deletion AUC", "lower",
               "Area under the class score as the image's pixels are set to zero in the model "
               "input, most salient first (RISE): low when the pixels the map ranks first are "
               "the ones the class needs."),
    MetricInfo("sic_auc", "SIC AUC", "higher",
               "Softmax information curve (XRAI paper): the class probability of a blurred "
               "image sharpened where the map is highest, relative to the sharp image, over "
               "how much information is revealed."),
    MetricInfo("aic_auc", "AIC AUC", "higher",
               "Accuracy information curve (XRAI paper): as SIC, but counting whether the "
               "class is still the top prediction."),
)


def evaluate_maps(
    model: Any,
    x: Any,
    images: Sequence[np.ndarray],
    maps: Mapping[str, np.ndarray],
    targets: np.ndarray | None,
    preprocess: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int = 32,
    steps: int = 25,
    seed: int = 0,
    score: str = DEFAULT_SCORE,
    progress: bool | Callable[[ProgressEvent], None] | None = None,
    seconds: MutableMapping[str, float] | None = None,
    reduction: str = "abs_sum",
) -> list[dict[str, dict[str, float | None]]]:
    """Insertion/deletion AUC and SIC/AIC of every map, per image.

    Parameters
    ----------
    model : Model
        The model the maps were computed with.
    x : array_like, shape (n, *input_shape)
        The model inputs the maps explain.
    images : sequence of uint8 arrays
        The same images as displayable uint8 ``(H, W)`` or ``(H, W, 3)`` (for PIC).
    maps : mapping of str to ndarray
        Per method, one map per image (``salience.explain(...).maps``).
    targets : ndarray or None
        What each map explains (``salience.explain(...).targets``).
    preprocess : callable
        Turns a uint8 image batch into model inputs (PIC blurs uint8 images).
    batch_size : int
        Largest number of images per model call.
    steps : int
        Insertion/deletion steps (``steps + 1`` images per curve).
    seed : int
        Seed of PIC's random mask.
    score : {'probability', 'output'}
        What insertion/deletion follow: the class probability (as in RISE) or
        the raw output (see :func:`~salience.metrics.insertion_deletion.insertion`).
    progress : bool or callable, optional
        True draws a progress bar on stderr; a callable receives
        :class:`salience.progress.ProgressEvent` objects (stage ``"metrics"``,
        one unit per method and image).
    seconds : dict, optional
        Filled with the wall time of each method's metrics (all images).
    reduction : str
        How a map's channels become the one value per pixel the metrics rank
        (see :func:`salience.arrays.reduce_channels`); the default ``"abs_sum"``
        ranks by magnitude, as PAIR's grayscale visualisation.

    Returns
    -------
    list of dict
        Per image ``{method: {"insertion_auc", "deletion_auc", "sic_auc", "aic_auc"}}``;
        a value is None when the metric does not apply (PIC skips images whose
        blurred version is not less informative or less confident).

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    Kapishnikov, Bolukbasi, Viegas, Terry. "XRAI: Better Attributions Through
    Regions", ICCV 2019. https://arxiv.org/abs/1906.02825
    """
    x = as_float_batch(x, "x")
    score = check_score(score)
    check_reduction(reduction)
    if len(images) != len(x):
        raise ValueError(f"images has {len(images)} entries but x has {len(x)} inputs")
    n = len(x)
    # Each method and image is one unit of progress, shared by the curves' rows.
    curve_rows, pic_rows = 2 * (steps + 1), 2 * len(PIC_THRESHOLDS)
    curve_share = curve_rows / (curve_rows + pic_rows)
    per_image: list[dict[str, dict[str, float | None]]] = [{} for _ in range(n)]
    with progress_stage(progress, "metrics", len(maps) * n, n) as stage:
        for k, (method, method_maps) in enumerate(maps.items()):
            start = time.perf_counter()
            flat = []
            for i, m in enumerate(method_maps):
                size = tuple(np.asarray(images[i]).shape[:2])
                flat.append(_resized(to_2d(m, size, reduction), size))
            with in_group(stage, method, 0, n, k * n, n * curve_share, n * curve_rows):
                ins, dele = insertion_deletion_curves(
                    model, x, np.stack(flat), targets, steps=steps, score=score,
                    batch_size=batch_size)
            for i in range(n):
                values: dict[str, float | None] = {
                    "insertion_auc": float(ins.auc[i]), "deletion_auc": float(dele.auc[i]),
                    "sic_auc": None, "aic_auc": None,
                }
                offset = k * n + n * curve_share + i * (1 - curve_share)
                with in_group(stage, method, i, i + 1, offset, 1 - curve_share, pic_rows):
                    if targets is not None and np.ndim(targets[i]) == 0:
                        values.update(_pic_areas(model, np.asarray(images[i]), flat[i],
                                                 int(targets[i]), preprocess, batch_size,
                                                 seed))
                per_image[i][method] = values
            if seconds is not None:
                seconds[method] = time.perf_counter() - start
    return per_image


def _pic_areas(model, image, saliency_map, target, preprocess, batch_size, seed):
    """``{"sic_auc": ..., "aic_auc": ...}`` of one image; a curve PIC skips is left out."""
    mask = generate_random_mask(*image.shape[:2], rng=np.random.default_rng(seed))
    areas = {}
    for kind in ("sic", "aic"):
        pred = pred_func_from_model(model, target, kind, preprocess=preprocess)
        try:
            result = compute_pic_metric(image, saliency_map, mask, pred, PIC_THRESHOLDS,
                                        min_pred_value=0.0, batch_size=batch_size)
        except ComputePicMetricError:
            continue
        areas[f"{kind}_auc"] = float(result.auc)
    return areas


def _resized(flat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    if flat.shape == size:
        return flat
    from skimage.transform import resize

    return resize(flat, size, order=1)
