"""PAIR ``saliency.core`` XRAI classes, translated onto :class:`salience.XRAI`."""

from __future__ import annotations

import numpy as np

from ..methods.xrai import XRAI as _XRAI
from ..model import CallbackModel
from .base import CoreSaliency, batched

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


def _no_model(x, targets, keys):
    raise TypeError("call_model_function is None; pass a callable or a base_attribution")


class XRAI(CoreSaliency):
    """XRAI; see :class:`salience.XRAI`.

    ``baselines`` is a list of arrays shaped like ``x_value`` (None: the
    image's minimum and maximum); ``segments`` a list of (H, W) boolean
    masks (None: Felzenszwalb); ``base_attribution`` an attribution shaped
    like ``x_value`` to rank instead of computing IG.
    """

    @batched
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
            base_attribution = base_attribution[None]
        method = self._method(baselines=baselines, segments=segments, batch_size=batch_size,
                              extra_parameters=params)
        if base_attribution is not None and call_model_function is None:
            model = _no_model  # PAIR allows no callback when nothing needs the model
        else:
            model = CallbackModel(call_model_function, call_model_args)
        details = method.explain_with_details(model, x_value[None], attributions=base_attribution)
        out = XRAIOutput(details.maps[0])
        if details.baselines is not None:
            out.baselines = list(details.baselines[0])
        if params.return_xrai_segments:
            out.segments = (details.ranks[0] if params.flatten_xrai_segments
                            else list(details.segment_stack(0)))
        if params.return_ig_attributions:
            out.ig_attribution = (list(details.ig_attributions[0])
                                  if details.ig_attributions is not None
                                  else base_attribution[0])
        return out

    def _method(self, baselines=None, segments=None, base_attribution=None, batch_size=1,
                extra_parameters=None):
        params = extra_parameters if extra_parameters is not None else XRAIParameters()
        if base_attribution is not None:
            raise ValueError("base_attribution cannot be smoothed: it does not depend on the "
                             "noisy inputs")
        if baselines is not None:  # each baseline is for the one input
            baselines = [np.asarray(baseline)[None] for baseline in baselines]
        return _XRAI(
            steps=params.steps, baselines=baselines, algorithm=params.algorithm,
            area_threshold=params.area_threshold,
            min_pixel_diff=params.experimental_params.get("min_pixel_diff", 50),
            segments=segments, batch_size=batch_size,
        )
