"""What LIME and Kernel SHAP share: superpixel features, coalitions of them scored
by the model, and a weighted linear model fitted to the scores.

An image is cut into ``K`` features (superpixels: a user-given feature mask or
a default segmentation).  A coalition is a 0/1 vector over the features; its
row is the image where the coalition has a 1 and the baseline where it has a
0.  Every coalition row of every image goes through the row scheduler in
chunks of ``batch_size``; the method then fits its linear model per image and
paints each feature's coefficient on its pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrays import channels_last, from_channels_last, to_channels_last
from ..checks import check_positive_int, check_seed
from ..model import OUTPUT_LAYER_VALUES, Model
from ..numeric import as_random_state, normalise01, owner_runs
from ..schedule import run_rows
from .base import Method
from .masking import apply_masks, image_size

__all__ = ["SurrogateMethod", "superpixels"]


class SurrogateMethod(Method):
    """Base of LIME and Kernel SHAP (see the module's docs).

    Subclasses implement ``_draw(rng, n_features)`` (coalitions, an ``(S, K)``
    0/1 array) and ``_fit(coalitions, scores, weights)`` (one coefficient per
    feature), and may override ``_image_stats(image, labels)`` (anything computed
    once per channels-last image and its ``(H, W)`` feature labels) and
    ``_row_weights(stats, coalitions)`` (one weight per coalition row of one
    image, from that image's stats and the row's coalition; default None, all
    alike).

    Parameters
    ----------
    n_samples : int
        Coalitions per image (model rows per image) when they are drawn.
    feature_mask : array_like of ints, optional
        The features: ``(H, W)`` labels shared by all images or ``(n, H, W)``
        per image; pixels with the same label form one feature.  Default: SLIC
        superpixels of each image (``n_segments``).
    n_segments : int
        About how many superpixels the default segmentation makes.
    baseline : float
        What pixels of absent features show.
    coalitions : array_like of 0/1, optional
        ``(S, K)`` coalitions to score instead of drawing ``n_samples``, with a
        ``feature_mask`` of ``K`` features per image: a fixed design, or the
        samples of another library to compare with it.
    seed : None, int, numpy Generator or RandomState
        Source of the coalitions.
    batch_size : int
        Largest number of coalition rows per model call.
    """

    name = "Surrogate"

    def __init__(self, n_samples: int = 1000, feature_mask: Any = None, n_segments: int = 50,
                 baseline: float = 0.0, coalitions: Any = None, seed: Any = None,
                 batch_size: int = 64) -> None:
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.feature_mask = None if feature_mask is None else _as_labels(feature_mask)
        self.n_segments = check_positive_int(n_segments, "n_segments")
        self.baseline = float(baseline)
        if not np.isfinite(self.baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")
        self.coalitions = None if coalitions is None else self._as_coalitions(coalitions)
        if self.coalitions is not None and self.feature_mask is None:
            raise ValueError(
                "coalitions need a feature_mask: their columns are its features (the default "
                "superpixels' count is known only once each image is segmented)"
            )
        self.seed = check_seed(seed)
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def _check(self, model: Model, x: np.ndarray) -> None:
        size = image_size(x, channels_last(model))
        mask = self.feature_mask
        if mask is None:
            return
        if mask.shape not in (size, (len(x), *size)):
            raise ValueError(
                f"feature_mask has shape {mask.shape}; expected the images' (H, W) = {size} "
                f"or one mask per image {(len(x), *size)}"
            )
        if self.coalitions is not None:
            for i, labels in enumerate(mask if mask.ndim == 3 else [mask]):
                k = len(np.unique(labels))
                if k != self.coalitions.shape[1]:
                    raise ValueError(
                        f"coalitions have {self.coalitions.shape[1]} columns but feature_mask "
                        f"{'of image ' + str(i) + ' ' if mask.ndim == 3 else ''}has {k} "
                        "features; give one column per feature"
                    )

    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        is_last = channels_last(model)
        size = image_size(x, is_last)
        n = len(x)
        per_image = self.n_samples if self.coalitions is None else len(self.coalitions)
        features = _Features(self, to_channels_last(x, is_last))
        owners = np.repeat(np.arange(n), per_image)
        scores = np.empty(n * per_image)
        heat = np.empty((n, *size))

        # An image's features are found when its first row is built, and its linear
        # model is fitted when its last score arrives: with the row scheduler's helper
        # thread, both run beside the model's calls for the other images.
        def make_rows(start: int, stop: int) -> np.ndarray:
            row_owners = owners[start:stop]
            masks = np.empty((stop - start, *size), dtype=x.dtype)  # the rows' precision
            for a, b in owner_runs(row_owners):  # one gather per image, not per row
                image = features.of(row_owners[a])
                first = start + a - row_owners[a] * per_image  # row a's coalition
                # np.take, not [:, labels]: 40% less time for the same gather
                masks[a:b] = np.take(image.design[first:first + b - a], image.labels, axis=1)
            return apply_masks(x, row_owners, masks, is_last, self.baseline)

        def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
            scores[start:stop] = outputs[OUTPUT_LAYER_VALUES]
            for i in range(start // per_image, stop // per_image):  # images now complete
                image, rows = features.of(i), slice(i * per_image, (i + 1) * per_image)
                # all of an image's row weights in one pass, once its rows are scored
                weights = self._row_weights(image.stats, image.design)
                coefficients = self._fit(image.design.astype(np.float64), scores[rows],
                                         np.ones(per_image) if weights is None else weights)
                heat[i] = coefficients[image.labels]

        # The work at image boundaries (features, fit) is not in the first chunk, by
        # which the scheduler judges whether a helper thread pays: with several images
        # it does (tiny CNN, 2 / 8 / 32 images of 200 rows: LIME 1.33 / 1.34 / 1.31x
        # its floor in this thread, 1.26 / 1.19 / 1.13x with the helper).
        run_rows(model, [OUTPUT_LAYER_VALUES], owners, make_rows, consume, targets,
                 self.batch_size, self.name, overlap=True if n > 1 else None)
        maps = to_channels_last(np.zeros_like(x), is_last) + heat[..., None]
        return from_channels_last(maps, x.ndim, is_last).astype(x.dtype)

    def _as_coalitions(self, coalitions: Any) -> np.ndarray:
        z = np.asarray(coalitions)
        if z.ndim != 2 or z.size == 0 or not np.isin(z, (0, 1)).all():
            raise ValueError(
                "coalitions must be a non-empty (n_samples, n_features) array of 0s and 1s, "
                f"got shape {z.shape}"
            )
        return z.astype(np.int8)

    def _draw(self, rng: Any, n_features: int) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, coalitions: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _image_stats(self, image: np.ndarray, labels: np.ndarray) -> Any:
        """Anything :meth:`_row_weights` needs of one channels-last image and its labels."""
        return None

    def _row_weights(self, stats: Any, coalitions: np.ndarray) -> np.ndarray | None:
        """Weights of one image's coalition rows ``(m, K)`` (None: all alike)."""
        return None


@dataclass(frozen=True)
class _ImageFeatures:
    """One image's features: labels 0..K-1 per pixel, its coalitions ``(S, K)`` and
    the statistics its row weights need."""

    labels: np.ndarray
    design: np.ndarray
    stats: Any


class _Features:
    """Each image's :class:`_ImageFeatures`, made when first asked for.

    Images are asked for in order (rows come image after image), so the
    coalitions are drawn from one random stream in image order, as if all
    were drawn first.
    """

    def __init__(self, method: SurrogateMethod, images: np.ndarray) -> None:
        self.method, self.images = method, images
        self.rng = as_random_state(method.seed)
        self.done: list[_ImageFeatures] = []
        # A mask shared by every image is relabelled once (np.unique sorts it: ~4 ms
        # at 224 x 224), not once per image.
        mask = method.feature_mask
        self.shared_labels = _consecutive(mask) if mask is not None and mask.ndim == 2 else None

    def of(self, i: int) -> _ImageFeatures:
        while len(self.done) <= i:
            self.done.append(self._make(len(self.done)))
        return self.done[i]

    def _make(self, i: int) -> _ImageFeatures:
        method, image = self.method, self.images[i]
        labels = self.shared_labels
        if labels is None:
            mask = method.feature_mask
            labels = _consecutive(superpixels(image[None], method.n_segments)[0]
                                  if mask is None else mask[i])
        design = (method.coalitions if method.coalitions is not None
                  else method._draw(self.rng, int(labels.max()) + 1))
        return _ImageFeatures(labels, design, method._image_stats(image, labels))


def _consecutive(mask: np.ndarray) -> np.ndarray:
    """``mask``'s labels renumbered 0..K-1 in the order of their values."""
    _, consecutive = np.unique(mask, return_inverse=True)
    return consecutive.reshape(mask.shape)


def _as_labels(feature_mask: Any) -> np.ndarray:
    mask = np.asarray(feature_mask)
    if mask.ndim not in (2, 3) or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            "feature_mask must be an int array shaped (H, W) or (n, H, W) (one label per "
            f"pixel), got dtype {mask.dtype} and shape {mask.shape}"
        )
    return mask


def superpixels(images: np.ndarray, n_segments: int) -> list[np.ndarray]:
    """SLIC superpixels of channels-last images ``(n, H, W, C)``, each image first
    scaled to [0, 1] (inputs are usually normalised for the model).

    RGB images are segmented in Lab colours (values up to 100), others as they
    are (up to 1), so colour distance and compactness are balanced alike.
    """
    from skimage.segmentation import slic  # on use: a light start-up

    out = []
    for image in normalise01(images):
        channels = image.shape[-1]
        out.append(slic(image[..., 0] if channels == 1 else image, n_segments=n_segments,
                        compactness=10.0 if channels == 3 else 0.1, start_label=0,
                        channel_axis=None if channels == 1 else -1))
    return out
