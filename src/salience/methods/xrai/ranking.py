"""XRAI's ranking: regions added by the density of their attributions.

Pure functions of one 2-D attribution map and its candidate masks.  Both
rankings return, per pixel, the index of the region that covered it (-1 for
none) and each region's gain (the mean attribution over the pixels it added);
:func:`xrai_regions` turns them into XRAI's heatmap and rank image.
"""

from __future__ import annotations

import math

import numpy as np

from .segments import SegmentMasks

__all__ = ["rank_by_own_mean", "rank_greedily", "xrai_regions"]


def _mean_over(attr: np.ndarray, masks: SegmentMasks, i: int, covered: np.ndarray | None):
    """Mean attribution over mask ``i`` minus ``covered`` (-inf if empty), computed
    over the same values in the same order as a full-image boolean index."""
    region = masks.region(i)
    crop = masks.crops[i]
    if covered is not None:
        crop = crop & ~covered[region]
    values = attr[region][crop]
    return values.mean() if values.size else -np.inf


def _tolerance(attr: np.ndarray) -> float:
    """How far a float64 running estimate of a region mean may be from the mean
    numpy computes in ``attr``'s dtype; candidates this close are compared exactly."""
    eps = np.finfo(attr.dtype).eps if np.issubdtype(attr.dtype, np.floating) else 2.0**-52
    scale = float(np.max(np.abs(attr))) if attr.size else 0.0
    return scale * (64 * eps * math.log2(attr.size + 2) + 1e-10)


def _pixels_to_masks(masks: SegmentMasks, n_pixels: int):
    """Mask membership both ways: per mask its pixels, per pixel its masks.

    Returns ``indptr`` and ``owners`` (pixel ``p`` is in masks
    ``owners[indptr[p]:indptr[p+1]]``), each mask's pixel count, and the mask
    of every entry with its pixel (in mask order) for the initial sums.
    """
    from scipy import sparse

    ids = [masks.pixel_ids(i) for i in range(len(masks))]
    sizes = np.array([len(p) for p in ids], dtype=np.int64)
    index_type = np.int32 if n_pixels < 2**31 else np.int64
    pixels = np.concatenate(ids).astype(index_type) if ids else np.zeros(0, index_type)
    del ids
    by_mask = sparse.csr_matrix(
        (np.ones(len(pixels), dtype=np.int8), pixels, np.concatenate(([0], np.cumsum(sizes)))),
        shape=(len(masks), n_pixels),
    )
    by_pixel = by_mask.tocsc()  # linear-time transpose of the membership
    return by_pixel.indptr.astype(np.int64), by_pixel.indices, sizes, pixels


def _gather(indptr: np.ndarray, values: np.ndarray, pixels: np.ndarray):
    """Concatenated ``values[indptr[p]:indptr[p+1]]`` over ``pixels`` and run lengths."""
    starts = indptr[pixels]
    lengths = indptr[pixels + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0], lengths
    run_starts = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return values[run_starts + np.arange(total)], lengths


def rank_greedily(
    attr: np.ndarray, masks: SegmentMasks, area_threshold: float, min_pixel_diff: int
) -> tuple[np.ndarray, list[float]]:
    """Greedy XRAI (``'full'``): repeatedly add the mask whose not-yet-covered
    pixels have the highest mean attribution, until ``area_threshold`` of the
    image is covered or no mask adds ``min_pixel_diff`` new pixels.

    Per-mask uncovered pixel counts and attribution sums are updated
    incrementally from the pixels each addition covers; the winner (and any
    near-tie) is confirmed with the exact mean so that choices and values
    match full-image mask arithmetic, ties going to the lower index.
    """
    height, width = attr.shape
    n_pixels = height * width
    n_masks = len(masks)
    flat = attr.reshape(-1).astype(np.float64)
    indptr, owners, counts, entry_pixels = _pixels_to_masks(masks, n_pixels)
    sums = np.bincount(np.repeat(np.arange(n_masks), counts), weights=flat[entry_pixels],
                       minlength=n_masks)
    del entry_pixels
    counts = counts.copy()
    alive = np.ones(n_masks, dtype=bool)
    exact = np.full(n_masks, np.nan)  # cached exact gains; NaN = stale
    covered = np.zeros((height, width), dtype=bool)
    owner = np.full(n_pixels, -1, dtype=np.int64)
    gains: list[float] = []
    tol = _tolerance(attr)
    covered_count = 0
    for _ in range(n_masks):
        if not covered_count / n_pixels <= area_threshold:
            break
        alive &= counts >= min_pixel_diff
        candidates = np.flatnonzero(alive)
        if not len(candidates):
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            approx = np.where(counts[candidates] > 0, sums[candidates] / counts[candidates],
                              -np.inf)
        top = approx.max()
        if top == -np.inf:
            break
        close = candidates[approx >= top - tol]
        for i in close:
            if np.isnan(exact[i]):
                exact[i] = _mean_over(attr, masks, int(i), covered)
        best = int(close[np.argmax(exact[close])])
        gain = exact[best]
        region = masks.region(best)
        new = masks.crops[best] & ~covered[region]
        rows, cols = np.nonzero(new)
        pixels = (rows + region[0].start) * width + (cols + region[1].start)
        owner[pixels] = len(gains)
        gains.append(gain)
        covered[region] |= masks.crops[best]
        covered_count += len(pixels)
        touched, lengths = _gather(indptr, owners, pixels)
        counts -= np.bincount(touched, minlength=n_masks)
        sums -= np.bincount(touched, weights=np.repeat(flat[pixels], lengths),
                            minlength=n_masks)
        exact[touched] = np.nan
        alive[best] = False
    return owner, gains


def rank_by_own_mean(
    attr: np.ndarray, masks: SegmentMasks, min_pixel_diff: int
) -> tuple[np.ndarray, list[float]]:
    """Approximate XRAI (``'fast'``): order masks once by their own mean
    attribution, then add them in that order, skipping those adding fewer
    than ``min_pixel_diff`` new pixels."""
    height, width = attr.shape
    n_pixels = height * width
    own = np.array([_mean_over(attr, masks, i, None) for i in range(len(masks))],
                   dtype=np.float64)
    covered = np.zeros((height, width), dtype=bool)
    owner = np.full(n_pixels, -1, dtype=np.int64)
    gains: list[float] = []
    for i in np.argsort(-own, kind="stable"):
        region = masks.region(int(i))
        new = masks.crops[i] & ~covered[region]
        count = int(new.sum())
        if count < min_pixel_diff:
            continue
        values = attr[region][new]
        rows, cols = np.nonzero(new)
        owner[(rows + region[0].start) * width + (cols + region[1].start)] = len(gains)
        gains.append(values.mean() if values.size else -np.inf)
        covered[region] |= masks.crops[i]
    return owner, gains


def xrai_regions(
    attr: np.ndarray,
    masks: SegmentMasks,
    algorithm: str = "full",
    area_threshold: float = 1.0,
    min_pixel_diff: int = 50,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rank regions of one image given a 2-D attribution map.

    Returns the heatmap (float64, each pixel the gain of the region that
    covered it; pixels no region covered get their own mean), the rank image
    (int, 1 = most important region; uncovered pixels come last) and the
    number of ranked regions (including the uncovered remainder, if any).
    """
    if algorithm == "full":
        owner, gains = rank_greedily(attr, masks, area_threshold, min_pixel_diff)
    elif algorithm == "fast":
        owner, gains = rank_by_own_mean(attr, masks, min_pixel_diff)
    else:
        raise ValueError(f"algorithm must be 'full' or 'fast', got {algorithm!r}")
    gains_arr = np.asarray(gains, dtype=np.float64)
    heat = np.empty(owner.shape, dtype=np.float64)
    covered = owner >= 0
    heat[covered] = gains_arr[owner[covered]]
    ranks_of = np.empty(len(gains), dtype=np.int64)
    ranks_of[np.argsort(-gains_arr, kind="stable")] = np.arange(1, len(gains) + 1)
    ranks = np.zeros(owner.shape, dtype=np.int64)
    ranks[covered] = ranks_of[owner[covered]]
    n_regions = len(gains)
    if not covered.all():
        rest = ~covered
        heat[rest] = attr.reshape(-1)[rest].mean()
        n_regions += 1
        ranks[rest] = n_regions
    return heat.reshape(attr.shape), ranks.reshape(attr.shape), n_regions
