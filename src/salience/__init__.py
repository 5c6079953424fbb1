"""salience: saliency maps for image models, batch first, for any framework.

Quick start::

    import salience
    model = salience.torch.wrap(net, layer="features.8")
    maps = salience.IntegratedGradients(steps=50).explain(model, images, targets=None)

Names are imported when first used, so ``import salience`` (and the ``salience``
command's ``--help``, ``methods`` and ``models``) start without numpy's heavier
companions or any framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .dataset import explain_dataset as explain_dataset
    from .dataset import open_results as open_results
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

# Where each public name lives.
_HOMES = {
    "explain": "runner", "Explanation": "runner",
    **{name: "model" for name in ("Model", "CallbackModel", "CONVOLUTION_LAYER_VALUES",
                                  "CONVOLUTION_OUTPUT_GRADIENTS", "INPUT_OUTPUT_GRADIENTS",
                                  "OUTPUT_LAYER_VALUES", "GUIDED_INPUT_GRADIENTS")},
    # Dataset runs need pyarrow and zarr (salience[dataset]): reachable as attributes but
    # kept out of __all__, like the adapters, so ``from salience import *`` needs no extra.
    "explain_dataset": "dataset", "open_results": "dataset",
}

# The submodules people reach as attributes (``salience.torch.wrap``) without importing
# them first (any other submodule works too); adapters import their framework only then.
_SUBMODULES = ("torch", "keras", "jax", "tf1", "core", "visualize", "metrics", "registry",
               "io", "progress", "zoo", "blackbox", "dataset")


def __getattr__(name: str) -> Any:
    if name in __all__ or name in _HOMES:
        home = importlib.import_module(f"{__name__}.{_HOMES.get(name, 'methods')}")
        value = getattr(home, name)
        globals()[name] = value  # later look-ups are plain attribute reads
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise  # the submodule exists but needs something missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_HOMES, *_SUBMODULES})
