"""The methods salience knows by name: one entry each.

Everything that addresses methods by name reads this table and nothing else:
:func:`salience.explain`, the command line (``salience methods`` and
``--methods``), the HTML report (descriptions, colour scales) and the
benchmarks.  Adding a method is one file under ``methods/`` and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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
)
from .model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

__all__ = [
    "DEFAULT_METHODS",
    "FAMILIES",
    "METHODS",
    "MethodEntry",
    "UnknownMethodError",
    "build",
    "canonical_name",
    "get",
    "names",
    "score_only_names",
]

#: Method families: how a map is obtained.
FAMILIES = {
    "gradient": "pixel attributions from input gradients",
    "cam": "class activation maps from a layer's values and gradients",
    "perturbation": "score changes of perturbed inputs (needs only scores)",
    "region": "ranked image regions",
}

_LAYER_KEYS = frozenset({CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS})
_SCORES = frozenset({OUTPUT_LAYER_VALUES})


@dataclass(frozen=True)
class MethodEntry:
    """A method known by name.

    Attributes
    ----------
    name : str
        Canonical name (snake case), used on the command line and in reports.
    cls : type
        The :class:`salience.Method` subclass.
    description : str
        One sentence: what the map shows.
    parameters : mapping
        Constructor arguments used when the method is built by name (besides
        ``batch_size``).
    keys : frozenset of str
        The model outputs the method asks for (see :mod:`salience.model`).
    family : str
        One of :data:`FAMILIES`.
    signed : bool
        Whether the map's sign carries meaning (shown with a diverging scale)
        or the map is a magnitude (shown from zero up).
    wraps : str, optional
        For a wrapper (SmoothGrad): the name of the entry it wraps.
    aliases : tuple of str
        Other accepted spellings (after lower-casing, ``-`` and spaces as ``_``).
    """

    name: str
    cls: type[Method]
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    keys: frozenset[str] = frozenset({INPUT_OUTPUT_GRADIENTS})
    family: str = "gradient"
    signed: bool = True
    wraps: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def needs_layer(self) -> bool:
        """Whether the model must expose a layer (``layer=`` on the adapters)."""
        return bool(self.keys & _LAYER_KEYS)

    @property
    def needs_gradients(self) -> bool:
        """Whether the model must give gradients (black-box models give only scores)."""
        return self.keys != frozenset({OUTPUT_LAYER_VALUES})

    @property
    def regions(self) -> bool:
        """Whether the method ranks regions (the report also shows its top regions)."""
        return self.family == "region"

    def build(self, batch_size: int = 32, **overrides: Any) -> Method:
        """The method with this entry's parameters, ``overrides`` and ``batch_size``."""
        kwargs = {**self.parameters, **overrides}
        cls: Any = self.cls  # each class takes its own arguments
        if self.wraps is not None:
            return cls(get(self.wraps).build(batch_size), **kwargs)
        return cls(batch_size=batch_size, **kwargs)


def _entries() -> tuple[MethodEntry, ...]:
    return (
        MethodEntry(
            "gradients", Gradients,
            "The gradient of the class score: how a small change of each pixel moves the "
            "score (1 model row per image).",
            aliases=("vanilla", "vanilla_gradients", "gradient", "saliency"),
        ),
        MethodEntry(
            "smoothgrad", SmoothGrad,
            "Gradients averaged over 25 noisy copies of the image (squared, so a magnitude): "
            "less speckle than plain gradients.",
            {"nsamples": 25, "seed": 0}, wraps="gradients", signed=False,
            aliases=("smooth_grad",),
        ),
        MethodEntry(
            "integrated_gradients", IntegratedGradients,
            "Integrated Gradients from a black image, 25 steps: each pixel's share of the "
            "score difference between the image and black.",
            {"steps": 25}, aliases=("ig", "integratedgradients"),
        ),
        MethodEntry(
            "blur_ig", BlurIG,
            "Blur IG, 100 steps: each pixel's share of the score gained while the image "
            "goes from fully blurred to sharp.",
            {"steps": 100}, aliases=("blurig",),
        ),
        MethodEntry(
            "guided_ig", GuidedIG,
            "Guided Integrated Gradients, 50 steps: Integrated Gradients along a path that "
            "moves low-gradient pixels first, which removes noise.",
            {"steps": 50}, aliases=("guidedig",),
        ),
        MethodEntry(
            "guided_backprop", GuidedBackprop,
            "Guided Backprop: the gradient with negative signals stopped at every ReLU; "
            "sharp edges of what the network responds to (ReLU networks only).",
            keys=frozenset({GUIDED_INPUT_GRADIENTS}), aliases=("guidedbackprop",),
        ),
        MethodEntry(
            "xrai", XRAI,
            "XRAI: image regions ranked by the density of their Integrated Gradients (from "
            "black and white, 25 steps); brighter regions matter more.",
            {"steps": 25}, family="region", signed=False,
        ),
        MethodEntry(
            "gradcam", GradCAM,
            "Grad-CAM: where the chosen layer's features that raise the class score are, "
            "at the layer's resolution, scaled to [0, 1].",
            keys=_LAYER_KEYS, family="cam", signed=False, aliases=("grad_cam",),
        ),
        MethodEntry(
            "occlusion", Occlusion,
            "Occlusion: how much the score drops when a 16x16 patch of zeros hides each part "
            "of the image (needs only scores).",
            {"size": 16, "stride": 8}, keys=_SCORES, family="perturbation",
        ),
        MethodEntry(
            "input_x_gradient", InputXGradient,
            "Input x Gradient: each pixel value times the gradient of the class score, its "
            "first-order share of the score (1 model row per image).",
            aliases=("inputxgradient", "input_times_gradient", "ixg"),
        ),
        MethodEntry(
            "vargrad", SmoothGrad,
            "VarGrad: the variance of the gradients over 25 noisy copies of the image, where "
            "the score is most sensitive to noise (a magnitude).",
            {"nsamples": 25, "seed": 0, "aggregation": "vargrad"}, wraps="gradients",
            signed=False, aliases=("var_grad",),
        ),
        MethodEntry(
            "squaregrad", SmoothGrad,
            "SquareGrad: the mean of the squared gradients over 25 noisy copies of the image "
            "(the same map as smoothgrad, which squares as PAIR does).",
            {"nsamples": 25, "seed": 0, "aggregation": "squaregrad"}, wraps="gradients",
            signed=False, aliases=("square_grad", "smoothgrad2", "smoothgrad_squared"),
        ),
        MethodEntry(
            "gradcam_plus_plus", GradCAMPlusPlus,
            "Grad-CAM++: Grad-CAM with each position's positive gradient weighted by "
            "higher-order terms, which covers several instances of the class better.",
            keys=_LAYER_KEYS, family="cam", signed=False,
            aliases=("gradcam++", "grad_cam++", "grad_cam_plus_plus", "gradcampp"),
        ),
        MethodEntry(
            "xgradcam", XGradCAM,
            "XGrad-CAM: Grad-CAM with channel weights averaged over positions by the "
            "channel's own activations.",
            keys=_LAYER_KEYS, family="cam", signed=False, aliases=("xgrad_cam",),
        ),
        MethodEntry(
            "hirescam", HiResCAM,
            "HiResCAM: the layer's activations times their own gradients, position by "
            "position, summed over channels.",
            keys=_LAYER_KEYS, family="cam", signed=False, aliases=("hires_cam",),
        ),
        MethodEntry(
            "layercam", LayerCAM,
            "Layer-CAM: the layer's activations weighted position by position by their "
            "positive gradients; keeps detail on earlier layers.",
            keys=_LAYER_KEYS, family="cam", signed=False, aliases=("layer_cam",),
        ),
        MethodEntry(
            "eigencam", EigenCAM,
            "Eigen-CAM: the first principal component of the layer's activations; the "
            "dominant pattern, the same for every class (no gradients).",
            keys=frozenset({CONVOLUTION_LAYER_VALUES}), family="cam", signed=False,
            aliases=("eigen_cam",),
        ),
        MethodEntry(
            "scorecam", ScoreCAM,
            "Score-CAM: layer channels weighted by the class score of the image masked with "
            "each of them (1 model row per image and channel).",
            keys=frozenset({CONVOLUTION_LAYER_VALUES, OUTPUT_LAYER_VALUES}), family="cam",
            signed=False, aliases=("score_cam",),
        ),
        MethodEntry(
            "guided_gradcam", GuidedGradCAM,
            "Guided Grad-CAM: Guided Backprop's fine edges kept where Grad-CAM's map is "
            "high (2 model rows per image).",
            keys=frozenset({GUIDED_INPUT_GRADIENTS}) | _LAYER_KEYS, family="cam",
            aliases=("guided_grad_cam", "guidedgradcam"),
        ),
        MethodEntry(
            "rise", RISE,
            "RISE: the average score of 1000 randomly masked copies, each pixel weighted by "
            "how visible it was (needs only scores).",
            {"n_masks": 1000, "seed": 0}, keys=_SCORES, family="perturbation", signed=False,
        ),
        MethodEntry(
            "lime", LIME,
            "LIME: a sparse linear model of the score over about 50 superpixels, fitted on 500 "
            "random on/off combinations (needs only scores).",
            {"n_samples": 500, "seed": 0}, keys=_SCORES, family="perturbation",
        ),
        MethodEntry(
            "kernel_shap", KernelSHAP,
            "Kernel SHAP: the Shapley value of each of about 50 superpixels, from 500 "
            "combinations; the values add up to the score change (needs only scores).",
            {"n_samples": 500, "seed": 0}, keys=_SCORES, family="perturbation",
            aliases=("kernelshap", "shap"),
        ),
    )


METHODS: Mapping[str, MethodEntry] = MappingProxyType({e.name: e for e in _entries()})
"""Every method by canonical name, in report order."""

#: What ``salience explain`` runs when ``--methods`` is not given.
DEFAULT_METHODS = ("gradients", "smoothgrad", "integrated_gradients", "xrai", "gradcam")

_ALIASES = {alias: e.name for e in METHODS.values() for alias in e.aliases}


class UnknownMethodError(ValueError):
    """A method name that is not in the registry; the message lists the valid names."""


def canonical_name(name: str) -> str:
    """The registry name for ``name``: lower case, ``-`` and spaces as ``_``, aliases
    resolved; unknown names raise :class:`UnknownMethodError`."""
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return key


def get(name: str) -> MethodEntry:
    """The entry of a method given by name or alias."""
    return METHODS[canonical_name(name)]


def names() -> list[str]:
    """Canonical names in report order."""
    return list(METHODS)


def score_only_names() -> list[str]:
    """Methods that need nothing but scores (black-box models can run them)."""
    return [e.name for e in METHODS.values() if not e.needs_gradients]


def build(name: str, batch_size: int = 32, **overrides: Any) -> Method:
    """Build a method by name with the registry's parameters."""
    return get(name).build(batch_size, **overrides)
