"""Batch-first saliency methods, one file each."""

from .base import Method
from .blur_ig import BlurIG
from .grad_cam import GradCAM
from .gradients import Gradients
from .guided_backprop import GuidedBackprop
from .guided_ig import GuidedIG
from .integrated_gradients import IntegratedGradients
from .occlusion import Occlusion
from .smoothgrad import SmoothGrad
from .xrai import XRAI, XRAIResult

__all__ = [
    "Method",
    "Gradients",
    "SmoothGrad",
    "IntegratedGradients",
    "BlurIG",
    "Occlusion",
    "GradCAM",
    "GuidedBackprop",
    "GuidedIG",
    "XRAI",
    "XRAIResult",
]
