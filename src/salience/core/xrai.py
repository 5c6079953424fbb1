"""PAIR ``saliency.core`` XRAI classes, translated onto :class:`salience.XRAI`."""

from __future__ import annotations

import numpy as np

from ..methods.xrai import XRAI as _XRAI
from .base import CoreSaliency
from .methods import IntegratedGradients

__all__ = ["XRAI", "XRAIParameters", "XRAIOutput"]


class XRAIParameters:
    """Options of :meth:`XRAI.GetMaskWithDetails` (PAIR's names and defaults).

    Attributes
    ----------
    steps : int
        IG steps per baseline.
    area_threshold : float
        ``'full'`` stops once this fraction of the image is covered.
    return_ig_attributions : bool
        Fill :attr:`XRAIOutput.ig_attribution` (one IG map per baseline).
    return_xrai_segments : bool
        Fill :attr:`XRAIOutput.segments`.
    flatten_xrai_segments : bool
        Segments as one int image of ranks (1 = most important) instead of a
        list of boolean masks, most important first.
    algorithm : {'full', 'fast'}
    experimental_params : dict
        ``{'min_pixel_diff': 50}``: regions adding fewer pixels are dropped.
    """

    def __init__(self, steps=100, area_threshold=1.0, return_baseline_predictions=False,
                 return_ig_attributions=False, return_xrai_segments=False,
                 flatten_xrai_segments=True, algorithm="full"):
        self.steps = steps
        self.area_threshold = area_threshold
        self.return_ig_attributions = return_ig_attributions
        self.return_xrai_segments = return_xrai_segments
        self.flatten_xrai_segments = flatten_xrai_segments
        self.algorithm = algorithm
        self.experimental_params = {"min_pixel_diff": 50}


class XRAIOutput:
    """Result of :meth:`XRAI.GetMaskWithDetails` (PAIR's attribute names).

    Attributes
    ----------
    attribution_mask : ndarray (H, W), float64
        The XRAI heatmap.
    baselines : list of ndarray or None
        The IG baselines (None when ``base_attribution`` was given).
    ig_attribution : list of ndarray, ndarray or None
        IG per baseline, or the given ``base_attribution``; only when asked.
    segments : ndarray or list of ndarray or None
        Ranked regions; only when asked (see :class:`XRAIParameters`).
    """

    def __init__(self, attribution_mask):
        self.attribution_mask = attribution_mask
        self.baselines = None
        self.ig_attribution = None
        self.segments = None


def _ranking_only(x, targets, keys):
    raise RuntimeError("XRAI ranks a given attribution here; the model is not called")


class XRAI(CoreSaliency):
    """XRAI; see :class:`salience.XRAI`.

    ``baselines`` is a list of arrays shaped like ``x_value`` (None: the
    input's minimum and maximum); ``segments`` a list of boolean masks of the
    input's height and width (None: Felzenszwalb); ``base_attribution`` an
    attribution shaped like ``x_value`` to rank instead of computing IG.

    As PAIR, Integrated Gradients runs once per baseline through this object's
    :class:`IntegratedGradients` (``steps`` rows per baseline, in chunks of
    ``batch_size``); the batch-first :class:`salience.XRAI` ranks the mean
    attribution.  1-D inputs are ranked as one-row images; they need
    ``segments`` (1-D masks), as in PAIR.
    """

    def __init__(self) -> None:
        self._integrated_gradients = IntegratedGradients()

    def GetMask(self, x_value, call_model_function, call_model_args=None, baselines=None,
                segments=None, base_attribution=None, batch_size=1, extra_parameters=None):
        return self.GetMaskWithDetails(
            x_value, call_model_function, call_model_args=call_model_args, baselines=baselines,
            segments=segments, base_attribution=base_attribution, batch_size=batch_size,
            extra_parameters=extra_parameters,
        ).attribution_mask

    def GetMaskWithDetails(self, x_value, call_model_function, call_model_args=None,
                           baselines=None, segments=None, base_attribution=None, batch_size=1,
                           extra_parameters=None):
        """Heatmap plus the details :class:`XRAIParameters` asks for, as an
        :class:`XRAIOutput`."""
        params = extra_parameters if extra_parameters is not None else XRAIParameters()
        x_value = np.asarray(x_value)
        if base_attribution is not None:
            base_attribution = np.asarray(base_attribution)
            if base_attribution.shape != x_value.shape:
                raise ValueError(
                    "The base attribution shape should be the same as the shape of `x_value`. "
                    f"Expected {x_value.shape}, got {base_attribution.shape}"
                )
        one_row = x_value.ndim == 1
        if one_row and segments is None:
            raise ValueError(
                f"x_value has shape {x_value.shape}: a 1-D input has no image to segment; "
                "pass segments (a list of 1-D boolean masks of its length)"
            )
        as_image = (lambda a: a.reshape(1, -1)) if one_row else (lambda a: a)
        if segments is not None:
            segments = [as_image(np.asarray(segment)) for segment in segments]
        ranker = _XRAI(
            steps=params.steps, algorithm=params.algorithm, area_threshold=params.area_threshold,
            min_pixel_diff=params.experimental_params.get("min_pixel_diff", 50),
            segments=segments,
        )
        image = as_image(x_value)[None]
        ranker._check(_ranking_only, image)  # segments and shapes, before the model runs

        x_baselines = None
        if base_attribution is None:
            x_baselines = self._baselines(x_value, baselines)
            attrs = [
                self._integrated_gradients.GetMask(
                    x_value, call_model_function, call_model_args=call_model_args,
                    x_baseline=baseline, x_steps=params.steps, batch_size=batch_size)
                for baseline in x_baselines
            ]
            attribution = np.mean(attrs, axis=0)
        else:
            attrs = attribution = base_attribution
        details = ranker.explain_with_details(_ranking_only, image,
                                              attributions=as_image(attribution)[None])

        heatmap_shape = x_value.shape[:2]  # (H, W), or (n,) for a 1-D input
        out = XRAIOutput(details.maps[0].reshape(heatmap_shape))
        out.baselines = x_baselines
        if params.return_xrai_segments:
            out.segments = (details.ranks[0].reshape(heatmap_shape)
                            if params.flatten_xrai_segments
                            else [s.reshape(heatmap_shape) for s in details.segment_stack(0)])
        if params.return_ig_attributions:
            out.ig_attribution = attrs
        return out

    @staticmethod
    def _baselines(x_value, baselines):
        if baselines is None:
            return [np.min(x_value) * np.ones_like(x_value),
                    np.max(x_value) * np.ones_like(x_value)]
        baselines = [np.asarray(baseline) for baseline in baselines]
        for baseline in baselines:
            if baseline.shape != x_value.shape:
                raise ValueError(
                    f"Baseline size {baseline.shape} does not match input size {x_value.shape}"
                )
        return baselines
