"""RISE: saliency as the score-weighted average of random smooth masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..arrays import channels_last, from_channels_last, to_channels_last
from ..checks import check_fraction, check_positive_int, check_seed
from ..model import OUTPUT_LAYER_VALUES, Model
from ..numeric import as_random_state, one_blas_thread, owner_runs
from ..schedule import overlap_for_array_work, run_rows
from .base import Method
from .cam_base import resized_crops
from .masking import apply_masks, image_size

__all__ = ["RISE", "draw_rise_grids", "rise_masks"]


class RISE(Method):
    """Randomized Input Sampling for Explanation.

    ``n_masks`` random binary grids of ``grid_size x grid_size`` cells (each cell
    kept with probability ``p``) are upsampled bilinearly to cells of
    ``ceil(H / grid_size) x ceil(W / grid_size)`` pixels plus one cell, and
    each is cropped to the image at a random shift within one cell: smooth
    masks ``M_i`` in [0, 1].  The map is the average of the scores of the
    masked images weighted by the masks, ``sum_i f(x * M_i) M_i / (n_masks p)``:
    the expected score when the pixel is kept.  The same masks serve every
    image of the batch; all masked copies go through the row scheduler in
    chunks of ``batch_size``, built one chunk at a time.

    Parameters
    ----------
    n_masks : int
        Number of random masks (model rows per image).
    grid_size : int
        Cells per side of the random grid (the paper's ``s``; coarser grids
        give blobs, finer ones detail).
    p : float
        Probability that a cell is kept, in (0, 1].
    baseline : float
        What masked-out pixels show (0: black for [0, 1] images, the mean for
        normalised ones), blended with the image where a mask is between 0 and 1.
    seed : None, int, numpy Generator or RandomState
        Source of the grids and shifts.
    batch_size : int
        Largest number of masked images per model call.

    Notes
    -----
    The maps are shaped like ``x`` (each pixel's value repeated over channels).

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    """

    name = "RISE"

    def __init__(self, n_masks: int = 4000, grid_size: int = 7, p: float = 0.5,
                 baseline: float = 0.0, seed: Any = None, batch_size: int = 64) -> None:
        self.n_masks = check_positive_int(n_masks, "n_masks")
        self.grid_size = check_positive_int(grid_size, "grid_size")
        self.p = check_fraction(p, "p", allow_zero=False)
        self.baseline = float(baseline)
        if not np.isfinite(self.baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        self.seed = check_seed(seed)
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        height, width = image_size(x, channels_last(model))
        if self.grid_size > min(height, width):
            raise ValueError(
                f"grid_size={self.grid_size} is larger than the image ({height}x{width}); "
                "choose at most one cell per pixel"
            )

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        is_last = channels_last(model)
        size = image_size(x, is_last)
        grids, shifts = draw_rise_grids(as_random_state(self.seed), self.n_masks,
                                        self.grid_size, self.p, size)
        n, per_image = len(x), self.n_masks
        owners = np.repeat(np.arange(n), per_image)
        totals = np.zeros((n, size[0] * size[1]))
        masks_of_chunk: dict[int, np.ndarray] = {}  # handed from make_rows to consume by start

        def make_rows(start: int, stop: int) -> np.ndarray:
            which = np.arange(start, stop) % per_image
            masks = rise_masks(grids[which], shifts[which], size)
            masks_of_chunk[start] = masks
            return apply_masks(x, owners[start:stop], masks, is_last, self.baseline)

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            masks = masks_of_chunk.pop(start).reshape(stop - start, -1)
            scores = outputs[OUTPUT_LAYER_VALUES].astype(np.float64)
            chunk_owners = owners[start:stop]
            with one_blas_thread():  # a small product: threads only contend
                for a, b in owner_runs(chunk_owners):
                    totals[chunk_owners[a]] += scores[a:b] @ masks[a:b]

        run_rows(model, [OUTPUT_LAYER_VALUES], owners, make_rows, consume, targets,
                 self.batch_size, self.name,
                 overlap=overlap_for_array_work(self.batch_size, len(owners), x[0].size))
        heat = (totals / (self.n_masks * self.p)).reshape(n, *size)
        maps = np.broadcast_to(heat[..., None], (*heat.shape, 1))
        maps = to_channels_last(np.zeros_like(x), is_last) + maps
        return from_channels_last(maps, x.ndim, is_last).astype(x.dtype)


def draw_rise_grids(rng: Any, n_masks: int, grid_size: int, p: float,
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The random part of RISE's masks: binary grids ``(n_masks, s, s)`` (1 with
    probability ``p``) and each mask's shift ``(n_masks, 2)`` within one cell."""
    grids = (rng.uniform(size=(n_masks, grid_size, grid_size)) < p).astype(np.float64)
    cells = [-(-side // grid_size) for side in size]  # ceil(side / grid_size)
    shifts = np.stack([rng.uniform(size=n_masks) * cell for cell in cells], axis=1)
    return grids, shifts.astype(np.int64)


def rise_masks(grids: np.ndarray, shifts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Smooth masks ``(m, H, W)``: each grid upsampled (bilinear) to ``grid_size + 1``
    cells of ``ceil(side / grid_size)`` pixels, cropped at its shift."""
    s = grids.shape[1]
    cells = [-(-side // s) for side in size]
    return resized_crops(grids, ((s + 1) * cells[0], (s + 1) * cells[1]), shifts, size)
