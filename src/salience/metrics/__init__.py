"""Evaluation of saliency maps: PIC (SIC/AIC), insertion/deletion, sanity checks,
agreement with expert masks, and plots of them."""

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
]
