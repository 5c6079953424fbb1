"""salience: saliency maps for image models, batch first, for any framework.

Quick start::

    import salience
    model = salience.torch.wrap(net, layer="features.8")
    maps = salience.IntegratedGradients(steps=50).explain(model, images, targets=None)
"""

from ._version import __version__ as __version__
from .methods import (
    LIME,
    RISE,
    XRAI,
    BlurIG,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    Gradients,
    GuidedBackprop,
    GuidedGradCAM,
    GuidedIG,
    HiResCAM,
    InputXGradient,
    IntegratedGradients,
    KernelSHAP,
    LayerCAM,
    Method,
    Occlusion,
    ScoreCAM,
    SmoothGrad,
    XGradCAM,
    XRAIResult,
)
from .model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
    CallbackModel,
    Model,
)
from .runner import Explanation, explain

__all__ = [
    "explain",
    "Explanation",
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
    "Model",
    "CallbackModel",
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
    "GUIDED_INPUT_GRADIENTS",
]


def __getattr__(name: str):
    # Framework adapters import their framework only when first used.
    if name in ("torch", "keras", "jax", "tf1", "core", "visualize", "metrics", "registry",
                "blackbox"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
