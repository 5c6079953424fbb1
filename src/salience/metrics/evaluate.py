"""Per-image metric values of a set of maps: what the report and dataset runs show.

Insertion and deletion AUC (RISE) and the SIC/AIC areas of the PIC curves
(XRAI paper) of every method's map of every image, with the settings the
command line uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..checks import as_float_batch, check_reduction
from ..visualize import to_2d
from .insertion_deletion import insertion_deletion_curves
from .pic import (
    ComputePicMetricError,
    compute_pic_metric,
    generate_random_mask,
    pred_func_from_model,
)

__all__ = ["PIC_THRESHOLDS", "evaluate_maps"]

#: Fractions of the most salient pixels revealed for the PIC curves (as in PAIR's examples).
PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)


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
    check_reduction(reduction)
    if len(images) != len(x):
        raise ValueError(f"images has {len(images)} entries but x has {len(x)} inputs")
    per_image: list[dict[str, dict[str, float | None]]] = [{} for _ in range(len(x))]
    for method, method_maps in maps.items():
        flat = []
        for i, m in enumerate(method_maps):
            size = tuple(np.asarray(images[i]).shape[:2])
            flat.append(_resized(to_2d(m, size, reduction), size))
        flat_maps = np.stack(flat)
        ins, dele = insertion_deletion_curves(
            model, x, flat_maps, targets, steps=steps, score="softmax", batch_size=batch_size
        )
        for i in range(len(x)):
            values: dict[str, float | None] = {
                "insertion_auc": float(ins.auc[i]), "deletion_auc": float(dele.auc[i]),
                "sic_auc": None, "aic_auc": None,
            }
            if targets is not None and np.ndim(targets[i]) == 0:
                image = np.asarray(images[i])
                mask = generate_random_mask(
                    *image.shape[:2], rng=np.random.default_rng(seed))
                for kind in ("sic", "aic"):
                    pred = pred_func_from_model(model, int(targets[i]), kind,
                                                        preprocess=preprocess)
                    try:
                        result = compute_pic_metric(
                            image, flat[i], mask, pred, PIC_THRESHOLDS, min_pred_value=0.0,
                            batch_size=batch_size)
                    except ComputePicMetricError:
                        continue
                    values[f"{kind}_auc"] = float(result.auc)
            per_image[i][method] = values
    return per_image


def _resized(flat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    if flat.shape == size:
        return flat
    from skimage.transform import resize

    return resize(flat, size, order=1)
