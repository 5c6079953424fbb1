"""XRAI's candidate regions: Felzenszwalb segmentations at several scales, as masks.

Pure functions of one image.  :func:`felzenszwalb_masks` is the whole
pipeline; :func:`shrink_for_segmentation` and :func:`masks_at_scale` are its
two halves, so that a caller may run the scales of many images side by side
(:class:`salience.methods.xrai.XRAI` does, while the model computes IG).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FELZENSZWALB_SCALES",
    "SegmentMasks",
    "SmallImage",
    "dilate",
    "felzenszwalb_masks",
    "masks_at_scale",
    "nearest_index_maps",
    "shrink_for_segmentation",
]

FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
"""Felzenszwalb ``scale`` values; each gives one over-segmentation of the image."""
_SIGMA = 0.8
_MIN_SIZE = 150
_SEGMENTATION_SIZE = (224, 224)
_DILATION_RADIUS = 5
# Half-widths of the rows of a disk of radius 5 (pixels with dy**2 + dx**2 <= 25).
_DISK_HALF_WIDTHS = {dy: math.isqrt(_DILATION_RADIUS**2 - dy * dy) for dy in range(6)}


@dataclass
class SegmentMasks:
    """Boolean region masks of one image, each stored inside its bounding box.

    ``boxes[i] = (r0, r1, c0, c1)`` and ``crops[i]`` is the mask restricted to
    ``[r0:r1, c0:c1]``; the mask is False everywhere else.  The order of the
    masks is the order in which ties are broken.
    """

    shape: tuple[int, int]
    boxes: np.ndarray
    crops: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.crops)

    def region(self, i: int) -> tuple[slice, slice]:
        r0, r1, c0, c1 = (int(v) for v in self.boxes[i])
        return slice(r0, r1), slice(c0, c1)

    def full(self, i: int) -> np.ndarray:
        """Mask ``i`` as a full ``shape`` boolean image."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.region(i)] = self.crops[i]
        return out

    def pixel_ids(self, i: int) -> np.ndarray:
        """Flat (row-major) indices of the pixels of mask ``i``."""
        r0, _, c0, _ = (int(v) for v in self.boxes[i])
        crop = self.crops[i]
        rows, cols = np.nonzero(crop)
        return (rows + r0) * self.shape[1] + (cols + c0)

    @classmethod
    def from_masks(cls, masks: Sequence[Any], shape: tuple[int, int]) -> SegmentMasks:
        """Wrap full-size boolean masks (e.g. user-given segments)."""
        boxes, crops = [], []
        for i, mask in enumerate(masks):
            m = np.asarray(mask)
            if m.shape != tuple(shape):
                raise ValueError(
                    f"segments[{i}] has shape {m.shape}; every segment must be a boolean mask "
                    f"of the image's height and width {tuple(shape)}"
                )
            m = m.astype(bool, copy=False)
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if len(rows):
                box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
            else:
                box = (0, 0, 0, 0)
            boxes.append(box)
            crops.append(m[box[0] : box[1], box[2] : box[3]].copy())
        return cls((int(shape[0]), int(shape[1])), np.asarray(boxes, dtype=np.int64).reshape(-1, 4), crops)

    @classmethod
    def concatenate(cls, parts: Sequence[SegmentMasks]) -> SegmentMasks:
        boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), int)
        return cls(parts[0].shape, boxes, [c for p in parts for c in p.crops])


def dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by a disk of radius 5 with nothing outside the array.

    The disk is a union of 11 horizontal runs, so it is 4 running maxima
    along rows plus shifted ORs (much cheaper than an 81-point structure).
    """
    from scipy import ndimage  # here, not at import: `import salience` stays light

    height = mask.shape[0]
    runs = {
        w: ndimage.maximum_filter1d(mask, 2 * w + 1, axis=1, mode="constant", cval=0)
        for w in set(_DISK_HALF_WIDTHS.values())
    }
    out = runs[_DISK_HALF_WIDTHS[0]].copy()
    for dy in range(1, _DILATION_RADIUS + 1):
        if dy >= height:
            break
        src = runs[_DISK_HALF_WIDTHS[dy]]
        out[dy:] |= src[: height - dy]
        out[: height - dy] |= src[dy:]
    return out


def nearest_index_maps(small: tuple[int, int], shape: tuple[int, int]):
    """Row and column source indices of skimage's order-0 resize ``small -> shape``.

    An axis-aligned order-0 resize is separable, so resizing two index images
    once gives the maps; ``labels[rmap][:, cmap]`` then equals the resize.
    """
    from skimage.transform import resize

    rows = np.broadcast_to(np.arange(1, small[0] + 1, dtype=np.float64)[:, None], small)
    cols = np.broadcast_to(np.arange(1, small[1] + 1, dtype=np.float64)[None, :], small)
    kw = dict(order=0, preserve_range=True, mode="constant", anti_aliasing=False)
    rmap = resize(rows, (shape[0], small[1]), **kw)[:, 0]
    cmap = resize(cols, (small[0], shape[1]), **kw)[0]
    if rmap.min() < 1 or cmap.min() < 1:  # a pixel fell outside (cval); never seen
        return None
    return rmap.astype(np.intp) - 1, cmap.astype(np.intp) - 1


def _scaled_and_resized(image: np.ndarray) -> np.ndarray:
    """Scale values to [-1, 1] and resize to 224 x 224 (cubic, anti-aliased)."""
    from skimage.transform import resize

    low, high = np.min(image), np.max(image)
    span = high - low
    scaled = (image - low) / span if span > 0 else np.zeros_like(image)
    scaled = scaled * 2.0 + (-1.0)
    return resize(scaled, _SEGMENTATION_SIZE, order=3, mode="constant", preserve_range=True,
                  anti_aliasing=True)


def _masks_of_labels(labels: np.ndarray) -> SegmentMasks:
    """Dilated masks of labels ``min..max`` of a label image, each in its bounding box."""
    from scipy import ndimage

    height, width = labels.shape
    low = int(labels.min())
    boxes = ndimage.find_objects(labels - low + 1)
    r = _DILATION_RADIUS
    out_boxes, crops = [], []
    for offset in range(int(labels.max()) - low + 1):
        box = boxes[offset] if offset < len(boxes) else None
        if box is None:  # label vanished when resizing back
            out_boxes.append((0, 0, 0, 0))
            crops.append(np.zeros((0, 0), dtype=bool))
            continue
        r0, r1 = max(box[0].start - r, 0), min(box[0].stop + r, height)
        c0, c1 = max(box[1].start - r, 0), min(box[1].stop + r, width)
        crops.append(dilate(labels[r0:r1, c0:c1] == low + offset))
        out_boxes.append((r0, r1, c0, c1))
    return SegmentMasks((height, width), np.asarray(out_boxes, dtype=np.int64), crops)


@dataclass(frozen=True)
class SmallImage:
    """An image made ready for segmentation at every scale.

    Attributes
    ----------
    pixels : ndarray (224, 224[, C])
        The image scaled to [-1, 1] and resized to 224 x 224.
    shape : tuple of int
        Height and width of the original image.
    index_maps : (rows, cols) int arrays or None
        Where each original pixel's label comes from (see
        :func:`nearest_index_maps`); None falls back to resizing the labels.
    """

    pixels: np.ndarray
    shape: tuple[int, int]
    index_maps: tuple[np.ndarray, np.ndarray] | None


def shrink_for_segmentation(image: np.ndarray) -> SmallImage:
    """The first half of :func:`felzenszwalb_masks`, shared by all scales."""
    image = np.asarray(image)
    shape = (int(image.shape[0]), int(image.shape[1]))
    return SmallImage(_scaled_and_resized(image), shape,
                      nearest_index_maps(_SEGMENTATION_SIZE, shape))


def masks_at_scale(small: SmallImage, scale: float) -> SegmentMasks:
    """The masks of one Felzenszwalb scale, at the original image's size."""
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(small.pixels, scale=scale, sigma=_SIGMA, min_size=_MIN_SIZE)
    if small.index_maps is None:
        from skimage.transform import resize

        labels = resize(labels, small.shape, order=0, preserve_range=True, mode="constant",
                        anti_aliasing=False).astype(int)
    else:
        rows, cols = small.index_maps
        labels = labels[rows[:, None], cols[None, :]]
    return _masks_of_labels(labels)


def felzenszwalb_masks(image: np.ndarray) -> SegmentMasks:
    """XRAI's candidate regions of one image.

    The image, ``(H, W)`` or ``(H, W, C)``, is scaled to [-1, 1] and resized
    to 224 x 224; Felzenszwalb's segmentation runs at each scale of
    :data:`FELZENSZWALB_SCALES` (sigma 0.8, minimum size 150); each label
    image is resized back (nearest neighbour) and every label becomes a mask,
    dilated by a disk of radius 5.  Masks come scale by scale, label by label,
    which is the tie-breaking order.  Each mask is dilated only inside its
    bounding box.

    References
    ----------
    Felzenszwalb, Huttenlocher. "Efficient Graph-Based Image Segmentation",
    IJCV 2004.
    """
    small = shrink_for_segmentation(image)
    return SegmentMasks.concatenate([masks_at_scale(small, s) for s in FELZENSZWALB_SCALES])
