"""Evaluation of saliency maps.

- :mod:`~salience.metrics.pic`: Performance Information Curves (SIC / AIC),
  a drop-in for PAIR ``saliency.metrics.pic``;
- :mod:`~salience.metrics.insertion_deletion`: RISE insertion and deletion;
- :mod:`~salience.metrics.sanity`: model-randomisation sanity check;
- :mod:`~salience.metrics.agreement`: pointing game, energy pointing game and
  top-k IoU against expert masks;
- :mod:`~salience.metrics.plots`: matplotlib figures of all of these;
- :mod:`~salience.metrics.evaluate`: the per-image values the report shows, and
  :data:`METRICS`, their readable names and which way is better.
"""

from .agreement import agreement_table, energy_pointing_game, pointing_game, top_k_iou
from .evaluate import METRICS, PIC_THRESHOLDS, MetricInfo, evaluate_maps
from .insertion_deletion import CurveResult, deletion, insertion, insertion_deletion_curves
from .pic import (
    AggregateMetricResult,
    ComputePicMetricError,
    PicMetricResult,
    aggregate_individual_pic_results,
    compute_pic_metric,
    create_blurred_image,
    estimate_image_entropy,
    generate_random_mask,
    pred_func_from_model,
)
from .plots import plot_curves, plot_sanity
from .sanity import SanityResult, model_randomisation

__all__ = [
    "AggregateMetricResult",
    "ComputePicMetricError",
    "PicMetricResult",
    "aggregate_individual_pic_results",
    "compute_pic_metric",
    "create_blurred_image",
    "estimate_image_entropy",
    "generate_random_mask",
    "pred_func_from_model",
    "CurveResult",
    "insertion",
    "deletion",
    "insertion_deletion_curves",
    "SanityResult",
    "model_randomisation",
    "pointing_game",
    "energy_pointing_game",
    "top_k_iou",
    "agreement_table",
    "plot_curves",
    "plot_sanity",
    "evaluate_maps",
    "METRICS",
    "MetricInfo",
    "PIC_THRESHOLDS",
]
