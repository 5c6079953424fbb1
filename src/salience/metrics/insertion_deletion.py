"""Insertion and deletion curves (RISE): how fast the score rises or falls as the
most salient pixels are revealed or removed first.

Deletion replaces the pixels of ``x``, most salient first, by a baseline; a
faithful map makes the score fall fast (low area under the curve).  The score
is the target class's probability by default, as in RISE, so areas lie in
[0, 1] and compare across models; ``score="output"`` follows the raw output
(e.g. a logit) instead.
Insertion starts from the baseline and puts the pixels of ``x`` back, most
salient first; a faithful map makes the score rise fast (high area).  All
``n * (steps + 1)`` images go to the model through the row scheduler in
chunks of ``batch_size`` and are built one chunk at a time.

References
----------
Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..arrays import channels_last, spatial_axes
from ..checks import (
    as_float_batch,
    check_nonnegative,
    check_positive_int,
    check_reduction,
    resolve_targets,
)
from ..model import OUTPUT_LAYER_VALUES, Model, as_model
from ..numeric import to_probabilities, trapezoid
from ..schedule import run_rows
from ._checks import as_map_batch

__all__ = ["CurveResult", "insertion", "deletion", "insertion_deletion_curves", "make_baseline"]

BASELINES = ("blurred", "zeros", "mean")
#: What the curves follow: the target's probability (softmax of the outputs), or its raw output.
SCORES = ("probability", "output")
#: The score used unless told otherwise, everywhere (Python, the CLI, the report): as in RISE.
DEFAULT_SCORE = "probability"
#: Older names still accepted.
_SCORE_ALIASES = {"softmax": "probability"}


@dataclass(frozen=True)
class CurveResult:
    """An insertion or deletion curve for each image of a batch.

    Attributes
    ----------
    kind : str
        ``'insertion'`` or ``'deletion'``.
    fractions : ndarray, shape (steps + 1,)
        Fraction of the pixels inserted or deleted at each point, 0 to 1.
    scores : ndarray, shape (n, steps + 1)
        The model's score of each image at each point.
    auc : ndarray, shape (n,)
        Area under each curve (trapezoidal rule over ``fractions``).
    score : str
        What ``scores`` are: ``'probability'`` or ``'output'`` (see :func:`insertion`).
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    score: str = DEFAULT_SCORE

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per image: ``{'image': i, 'kind': ..., 'auc': ...}``."""
        return [{"image": i, "kind": self.kind, "auc": float(a)} for i, a in enumerate(self.auc)]


def insertion(
    model: Model,
    x: Any,
    saliency: Any,
    targets: Any = None,
    *,
    steps: int = 50,
    baseline: str | Any = "blurred",
    score: str = DEFAULT_SCORE,
    batch_size: int = 64,
    blur_sigma: float = 5.0,
    reduction: str = "sum",
) -> CurveResult:
    """Insertion curve: from the baseline, put the most salient pixels of ``x`` back first.

    Parameters
    ----------
    model : Model
        An adapter (``salience.torch.wrap(...)``, ...) or any Model.
    x : array_like, shape (n, *input_shape)
        Images in the model's layout: (n, H, W), (n, H, W, C), or (n, C, H, W)
        when the model has ``channels_last = False``.  Not modified.
    saliency : array_like
        One map per image: (n, H, W), or shaped like ``x`` (its channels
        reduced by ``reduction``).  Ties are broken by pixel order (row-major).
    targets : None, int, n ints, or (n, n_outputs) weights
        The class whose score is followed (None: the top class on ``x``).
    steps : int
        Number of steps; ``steps + 1`` points from 0 to all pixels.
    baseline : {'blurred', 'zeros', 'mean'} or array_like
        What hidden pixels show: ``x`` blurred by a Gaussian of ``blur_sigma``
        pixels, zeros, the per-image channel mean, or an array shaped like
        ``x`` or like one image.
    score : {'probability', 'output'}
        ``'probability'`` (the default, as in RISE): the target's probability,
        the softmax of the model's ``predict`` outputs (outputs whose rows
        already sum to 1 are taken as they are); needs a model with
        ``predict``, as the adapters have.  ``'output'``: the model's
        ``OUTPUT_LAYER_VALUES`` of the target, e.g. a logit, whose areas depend
        on the logits' scale.  ``'softmax'`` is an older name of
        ``'probability'``.
    batch_size : int
        Largest number of images per model call.
    blur_sigma : float
        Gaussian sigma (pixels) of the ``'blurred'`` baseline.
    reduction : str
        How the channels of maps shaped like ``x`` become one value per pixel:
        ``"sum"`` (signed), or ``"abs_sum"``, ``"abs_max"``, ``"l2"`` if the
        sign should not count (see :func:`salience.arrays.reduce_channels`).

    Returns
    -------
    CurveResult

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    """
    return _curve("insertion", model, x, saliency, targets, steps, baseline, score,
                  batch_size, blur_sigma, reduction)


def deletion(
    model: Model,
    x: Any,
    saliency: Any,
    targets: Any = None,
    *,
    steps: int = 50,
    baseline: str | Any = "zeros",
    score: str = DEFAULT_SCORE,
    batch_size: int = 64,
    blur_sigma: float = 5.0,
    reduction: str = "sum",
) -> CurveResult:
    """Deletion curve: replace the most salient pixels of ``x`` by the baseline first.

    Same parameters as :func:`insertion` (default baseline: zeros, as in RISE).

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    """
    return _curve("deletion", model, x, saliency, targets, steps, baseline, score,
                  batch_size, blur_sigma, reduction)


def insertion_deletion_curves(
    model: Model,
    x: Any,
    saliency: Any,
    targets: Any = None,
    *,
    steps: int = 50,
    insertion_baseline: str | Any = "blurred",
    deletion_baseline: str | Any = "zeros",
    score: str = DEFAULT_SCORE,
    batch_size: int = 64,
    blur_sigma: float = 5.0,
    reduction: str = "sum",
) -> tuple[CurveResult, CurveResult]:
    """Both curves, with RISE's default baselines; returns ``(insertion, deletion)``.

    See :func:`insertion` for the parameters.  The targets are resolved once,
    so both curves follow the same class.

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    """
    model = as_model(model)
    xf = as_float_batch(x)
    check_reduction(reduction)  # before resolve_targets, which may run the model
    resolved = resolve_targets(model, xf, targets)
    ins = _curve("insertion", model, xf, saliency, resolved, steps, insertion_baseline, score,
                 batch_size, blur_sigma, reduction)
    dele = _curve("deletion", model, xf, saliency, resolved, steps, deletion_baseline, score,
                  batch_size, blur_sigma, reduction)
    return ins, dele


def make_baseline(
    x: np.ndarray, baseline: str | Any, is_channels_last: bool = True, blur_sigma: float = 5.0
) -> np.ndarray:
    """The baseline images for a float batch ``x`` (see :func:`insertion`)."""
    h_axis, w_axis = spatial_axes(x.ndim - 1, is_channels_last)
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=(1 + h_axis, 1 + w_axis), keepdims=True),
                                   x.shape).copy()
        if baseline == "blurred":
            sigma = [0.0] * x.ndim
            sigma[1 + h_axis] = sigma[1 + w_axis] = blur_sigma
            return ndimage.gaussian_filter(x, sigma=sigma, mode="nearest")
        raise ValueError(f"baseline must be one of {BASELINES} or an array, got {baseline!r}")
    arr = as_float_batch(np.asarray(baseline)[None] if np.ndim(baseline) == x.ndim - 1
                         else baseline, "baseline")
    if arr.shape[1:] != x.shape[1:] or len(arr) not in (1, len(x)):
        raise ValueError(
            f"baseline has shape {np.shape(baseline)}; expected the shape of x {x.shape} or "
            f"of one image {x.shape[1:]}"
        )
    return np.broadcast_to(arr, x.shape).astype(x.dtype)


def check_score(score: str) -> str:
    """The canonical name of an insertion/deletion score (see :func:`insertion`)."""
    name = _SCORE_ALIASES.get(score, score) if isinstance(score, str) else score
    if name not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return name


class _ProbabilityScores:
    """A model's ``predict`` seen as a Model whose score is the target's probability."""

    def __init__(self, model: Any) -> None:
        if not callable(getattr(model, "predict", None)):
            raise TypeError(
                "score='probability' (the default) needs the model's predict(x), all class "
                "outputs; use an adapter (salience.torch.wrap, ...) or pass score='output' "
                "to follow the raw output"
            )
        self.model = model

    def __call__(self, x, targets, keys) -> Mapping[str, np.ndarray]:
        probs = to_probabilities(self.model.predict(x))
        if targets is None:
            return {OUTPUT_LAYER_VALUES: probs.max(axis=1)}
        targets = np.asarray(targets)
        if targets.ndim == 2:
            return {OUTPUT_LAYER_VALUES: (probs * targets).sum(axis=1)}
        if targets.max() >= probs.shape[1]:
            raise ValueError(f"target {int(targets.max())} is out of range for "
                             f"{probs.shape[1]} outputs")
        return {OUTPUT_LAYER_VALUES: probs[np.arange(len(x)), targets]}


def _curve(kind, model, x, saliency, targets, steps, baseline, score, batch_size, blur_sigma,
           reduction="sum"):
    model = as_model(model)
    x = as_float_batch(x)
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    blur_sigma = check_nonnegative(blur_sigma, "blur_sigma")
    score = check_score(score)
    scorer = _ProbabilityScores(model) if score == "probability" else model
    is_last = channels_last(model)
    h_axis, w_axis = spatial_axes(x.ndim - 1, is_last)
    size = (x.shape[1 + h_axis], x.shape[1 + w_axis])
    maps = as_map_batch(saliency, "saliency", channels_last=is_last, size=size,
                        reduction=reduction)
    if len(maps) != len(x):
        raise ValueError(f"saliency has {len(maps)} maps but x has {len(x)} images")
    base = make_baseline(x, baseline, is_last, blur_sigma)
    targets = resolve_targets(model, x, targets)

    n, n_pixels, points = len(x), size[0] * size[1], steps + 1
    counts = np.round(np.linspace(0, n_pixels, points)).astype(np.int64)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_pixels)[None, :], axis=1)
    # Where the per-pixel mask broadcasts in one image: (H, W), (H, W, 1) or (1, H, W).
    mask_shape = [1] * (x.ndim - 1)
    mask_shape[h_axis], mask_shape[w_axis] = size
    owners = np.arange(n * points) // points
    first, second = (base, x) if kind == "insertion" else (x, base)
    scores = np.empty(n * points, dtype=np.float64)

    def make_rows(start: int, stop: int) -> np.ndarray:
        img = owners[start:stop]
        count = counts[np.arange(start, stop) % points]
        switched = (rank[img] < count[:, None]).reshape(len(img), *mask_shape)
        return np.where(switched, second[img], first[img])

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        values = np.asarray(outputs[OUTPUT_LAYER_VALUES], dtype=np.float64)
        if not np.isfinite(values).all():
            raise FloatingPointError(
                f"{kind}: the model returned a non-finite score for rows {start}..{stop - 1}")
        scores[start:stop] = values

    run_rows(scorer, [OUTPUT_LAYER_VALUES], owners, make_rows, consume, targets, batch_size, kind)
    scores = scores.reshape(n, points)
    fractions = counts / n_pixels
    auc = np.array([trapezoid(s, fractions) for s in scores])
    return CurveResult(kind=kind, fractions=fractions, scores=scores, auc=auc, score=score)
