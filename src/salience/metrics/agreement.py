"""Agreement of saliency maps with expert masks (for example an embryologist's
outline of a blastocyst's inner cell mass): pointing game, energy-based
pointing game and IoU of the top-k% region, for batches of maps and masks.

Maps are ``(n, H, W)``, or ``(n, H, W, C)`` / ``(n, C, H, W)`` whose channels
are reduced by ``reduction`` (summed by default; ``"abs_sum"``, ``"abs_max"``
or ``"l2"`` if the sign should not count); masks are ``(n, H, W)`` booleans
(or 0/1), one non-empty mask per map.

References
----------
Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. "Top-down Neural Attention by
Excitation Backprop", ECCV 2016. https://arxiv.org/abs/1608.00507

Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu. "Score-CAM: Score-Weighted
Visual Explanations for Convolutional Neural Networks", CVPR Workshops 2020.
https://arxiv.org/abs/1910.01279
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..checks import check_fraction, check_nonnegative
from ._checks import as_map_batch, as_mask_batch

__all__ = ["pointing_game", "energy_pointing_game", "top_k_iou", "agreement_table"]


def _inputs(saliency: Any, masks: Any, channels_last: bool,
            reduction: str) -> tuple[np.ndarray, np.ndarray]:
    maps = as_map_batch(saliency, "saliency", channels_last=channels_last, reduction=reduction)
    return maps, as_mask_batch(masks, maps.shape, "masks")


def pointing_game(
    saliency: Any, masks: Any, *, tolerance: float = 0.0, channels_last: bool = True,
    reduction: str = "sum",
) -> np.ndarray:
    """Whether each map's maximum falls on its mask.

    Parameters
    ----------
    saliency : array_like, shape (n, H, W) (or with channels)
        The maps.
    masks : array_like, shape (n, H, W)
        The expert's regions, one non-empty mask per map.
    tolerance : float
        A hit also counts within this many pixels (Euclidean) of the mask;
        Zhang et al. use 15 pixels on full-size images.
    channels_last : bool
        Layout of 4-D maps.
    reduction : str
        How the channels of 4-D maps become one value per pixel (one of
        :data:`salience.arrays.REDUCTIONS`; 3-D maps are one channel).

    Returns
    -------
    bool ndarray, shape (n,)
        One hit / miss per image (``.mean()`` is the pointing-game accuracy).
        When several pixels share the maximum, the first in row-major order
        counts.

    References
    ----------
    Zhang et al. "Top-down Neural Attention by Excitation Backprop", ECCV 2016.
    https://arxiv.org/abs/1608.00507
    """
    tolerance = check_nonnegative(tolerance, "tolerance")
    maps, masks = _inputs(saliency, masks, channels_last, reduction)
    n, height, width = maps.shape
    peaks = np.argmax(maps.reshape(n, -1), axis=1)
    rows, cols = np.unravel_index(peaks, (height, width))
    if tolerance > 0:
        # Distance of every pixel to the nearest mask pixel.
        near = np.stack([ndimage.distance_transform_edt(~m) <= tolerance for m in masks])
    else:
        near = masks
    return near[np.arange(n), rows, cols]


def energy_pointing_game(
    saliency: Any, masks: Any, *, channels_last: bool = True, reduction: str = "sum"
) -> np.ndarray:
    """Share of each map's positive energy that lies inside its mask.

    ``sum(max(map, 0) * mask) / sum(max(map, 0))`` per image, in [0, 1].

    Parameters
    ----------
    saliency, masks, channels_last, reduction
        As in :func:`pointing_game`.

    Returns
    -------
    float ndarray, shape (n,)

    Raises
    ------
    ValueError
        A map has no positive value (its energy share is undefined).

    References
    ----------
    Wang et al. "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020.
    https://arxiv.org/abs/1910.01279
    """
    maps, masks = _inputs(saliency, masks, channels_last, reduction)
    energy = np.clip(maps, 0.0, None).reshape(len(maps), -1)
    total = energy.sum(axis=1)
    if (total <= 0).any():
        bad = int(np.argmax(total <= 0))
        raise ValueError(
            f"saliency[{bad}] has no positive value, so its energy share is undefined; pass "
            "abs(maps) or maps with positive importance"
        )
    return (energy * masks.reshape(len(masks), -1)).sum(axis=1) / total


def top_k_iou(
    saliency: Any, masks: Any, k: float = 0.1, *, channels_last: bool = True,
    reduction: str = "sum",
) -> np.ndarray:
    """Intersection over union of each map's top-``k`` region with its mask.

    The region is the ``ceil(k * H * W)`` most salient pixels (ties broken by
    row-major order).

    Parameters
    ----------
    saliency, masks, channels_last, reduction
        As in :func:`pointing_game`.
    k : float
        Fraction of the pixels in the region, in (0, 1]; the mask's own area
        fraction is a natural choice.

    Returns
    -------
    float ndarray, shape (n,)

    References
    ----------
    Zhang et al. "Top-down Neural Attention by Excitation Backprop", ECCV 2016.
    https://arxiv.org/abs/1608.00507
    """
    k = check_fraction(k, "k", allow_zero=False)
    maps, masks = _inputs(saliency, masks, channels_last, reduction)
    n = len(maps)
    flat = maps.reshape(n, -1)
    count = int(np.ceil(k * flat.shape[1]))
    top = np.zeros(flat.shape, dtype=bool)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    np.put_along_axis(top, order, True, axis=1)
    truth = masks.reshape(n, -1)
    return (top & truth).sum(axis=1) / (top | truth).sum(axis=1)


def agreement_table(
    saliency: Any,
    masks: Any,
    *,
    k: float = 0.1,
    tolerance: float = 0.0,
    channels_last: bool = True,
    reduction: str = "sum",
) -> list[dict[str, Any]]:
    """All agreement scores as a table: one dict per image.

    Keys: ``image``, ``pointing_hit`` (bool), ``energy`` (share in the mask,
    None for a map without positive values), ``top_k_iou``, ``mask_fraction``
    (the mask's share of the image).  ``reduction`` as in :func:`pointing_game`.

    References
    ----------
    Zhang et al. ECCV 2016 (pointing game); Wang et al. CVPR-W 2020
    (energy-based pointing game).
    """
    maps, mask_arr = _inputs(saliency, masks, channels_last, reduction)
    hits = pointing_game(maps, mask_arr, tolerance=tolerance)
    ious = top_k_iou(maps, mask_arr, k)
    positive = np.clip(maps, 0, None).reshape(len(maps), -1).sum(axis=1) > 0
    energy = np.full(len(maps), np.nan)
    if positive.any():
        energy[positive] = energy_pointing_game(maps[positive], mask_arr[positive])
    return [
        {
            "image": i,
            "pointing_hit": bool(hits[i]),
            "energy": float(energy[i]) if positive[i] else None,
            "top_k_iou": float(ious[i]),
            "mask_fraction": float(mask_arr[i].mean()),
        }
        for i in range(len(maps))
    ]
