"""Batch-first saliency methods, one file each."""

from .base import Method
from .blur_ig import BlurIG
from .eigen_cam import EigenCAM
from .grad_cam import GradCAM
from .grad_cam_plus_plus import GradCAMPlusPlus
from .gradients import Gradients
from .guided_backprop import GuidedBackprop
from .guided_grad_cam import GuidedGradCAM
from .guided_ig import GuidedIG
from .hires_cam import HiResCAM
from .input_x_gradient import InputXGradient
from .integrated_gradients import IntegratedGradients
from .kernel_shap import KernelSHAP
from .layer_cam import LayerCAM
from .lime import LIME
from .occlusion import Occlusion
from .rise import RISE
from .score_cam import ScoreCAM
from .smoothgrad import SmoothGrad
from .xgrad_cam import XGradCAM
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
    "InputXGradient",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "EigenCAM",
    "ScoreCAM",
    "GuidedGradCAM",
    "RISE",
    "LIME",
    "KernelSHAP",
]
