"""salience: saliency maps for image models, batch first, for any framework.

Quick start::

    import salience
    model = salience.torch.wrap(net, layer="features.8")
    maps = salience.IntegratedGradients(steps=50).explain(model, images, targets=None)
"""

from .methods import (
    XRAI,
    BlurIG,
    GradCAM,
    Gradients,
    GuidedBackprop,
    GuidedIG,
    IntegratedGradients,
    Method,
    Occlusion,
    SmoothGrad,
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

__version__ = "0.1.0"

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
    "Model",
    "CallbackModel",
    "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS",
    "INPUT_OUTPUT_GRADIENTS",
    "OUTPUT_LAYER_VALUES",
    "GUIDED_INPUT_GRADIENTS",
]


def __getattr__(name: str):
    # Dataset runs need pyarrow and zarr (salience[dataset]): imported when first used,
    # and kept out of __all__ like the adapters, so `import *` needs no extra.
    if name in ("explain_dataset", "open_results"):
        from . import dataset

        return getattr(dataset, name)
    # Framework adapters import their framework only when first used.
    if name in ("torch", "keras", "jax", "tf1", "core", "visualize", "metrics", "registry",
                "dataset"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
