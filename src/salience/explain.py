"""``salience.explain``: predictions and one map per method for a batch, with timings.

The methods are addressed by name (``salience methods`` lists them) or given
as :class:`salience.Method` instances.  Images go through each method in
groups, so every method batches rows of several images into the same model
calls while memory stays bounded for large folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import as_float_batch, check_positive_int, resolve_targets
from .methods.base import Method
from .model import as_model
from .numeric import to_probabilities

__all__ = [
    "Explanation",
    "MethodSpec",
    "available_methods",
    "evaluate_maps",
    "explain",
    "resolve_methods",
]


@dataclass(frozen=True)
class MethodSpec:
    """A method known by name.

    Attributes
    ----------
    name : str
        Canonical name used on the command line and in reports.
    description : str
        One line for ``salience methods``.
    build : callable
        ``build(batch_size) -> Method`` with the command line's settings.
    needs_layer : bool
        Needs a convolutional layer (Grad-CAM).
    gradient : bool
        A pixel-gradient attribution method (the benchmark's "all gradient
        methods"; XRAI, Grad-CAM and Occlusion are not).
    regions : bool
        Produces region rankings (XRAI): the report also shows its top regions.
    """

    name: str
    description: str
    build: Callable[[int], Method]
    needs_layer: bool = False
    gradient: bool = True
    regions: bool = False


def _construct(cls: type, batch_size: int, **kwargs: Any) -> Method:
    """Build a method, passing ``batch_size`` when its constructor takes it."""
    try:
        return cls(batch_size=batch_size, **kwargs)
    except TypeError:
        return cls(**kwargs)


def available_methods() -> dict[str, MethodSpec]:
    """The methods this installation has, by canonical name (in report order).

    Methods added by other modules (XRAI, Guided IG, Guided Backprop) appear
    as soon as ``salience`` exports them.
    """
    import salience

    from .methods import BlurIG, GradCAM, Gradients, IntegratedGradients, Occlusion, SmoothGrad

    specs = [
        MethodSpec("gradients", "Vanilla gradients (1 row per image)",
                   lambda b: Gradients(batch_size=b)),
        MethodSpec("smoothgrad", "SmoothGrad over gradients, 25 noisy samples",
                   lambda b: SmoothGrad(Gradients(batch_size=b), nsamples=25, seed=0)),
        MethodSpec("integrated_gradients", "Integrated Gradients from black, 25 steps",
                   lambda b: IntegratedGradients(steps=25, batch_size=b)),
        MethodSpec("blur_ig", "Blur IG, 100 blur steps",
                   lambda b: BlurIG(steps=100, batch_size=b)),
    ]
    # Methods other modules add; shown only when this installation has them.
    optional = [
        ("GuidedIG", "guided_ig", "Guided Integrated Gradients, 50 steps", {"steps": 50},
         True, False),
        ("GuidedBackprop", "guided_backprop", "Guided Backprop (ReLU networks)", {}, True, False),
        ("XRAI", "xrai", "XRAI regions from IG over black and white, 25 steps", {"steps": 25},
         False, True),
    ]
    for cls_name, name, description, kwargs, gradient, regions in optional:
        cls = getattr(salience, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, Method):
            specs.append(MethodSpec(name, description,
                                    lambda b, cls=cls, kw=kwargs: _construct(cls, b, **kw),
                                    gradient=gradient, regions=regions))
    specs += [
        MethodSpec("gradcam", "Grad-CAM on the last convolutional layer",
                   lambda b: GradCAM(batch_size=b), needs_layer=True, gradient=False),
        MethodSpec("occlusion", "Occlusion with a 16x16 window every 8 pixels",
                   lambda b: Occlusion(size=16, stride=8, batch_size=b), gradient=False),
    ]
    return {spec.name: spec for spec in specs}


_ALIASES = {
    "vanilla": "gradients", "vanilla_gradients": "gradients", "gradient": "gradients",
    "ig": "integrated_gradients", "integratedgradients": "integrated_gradients",
    "blurig": "blur_ig", "guidedig": "guided_ig", "grad_cam": "gradcam",
    "guidedbackprop": "guided_backprop", "smooth_grad": "smoothgrad",
}


def canonical_method_name(name: str) -> str:
    """Lower case, ``-`` and spaces as ``_``, common aliases resolved."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


def resolve_methods(
    methods: Sequence[str | Method] | Mapping[str, Method] | str, batch_size: int = 32
) -> dict[str, Method]:
    """Turn names, Method instances or a ``{name: Method}`` mapping into ``{name: Method}``.

    Raises
    ------
    ValueError
        An unknown method name (the message lists the valid ones) or no method.
    """
    if isinstance(methods, Mapping):
        resolved = {}
        for name, method in methods.items():
            if not isinstance(method, Method):
                raise TypeError(f"methods[{name!r}] must be a salience Method, got {method!r}")
            resolved[str(name)] = method
    else:
        if isinstance(methods, (str, Method)):
            methods = [methods]
        known = available_methods()
        resolved = {}
        for item in methods:
            if isinstance(item, Method):
                name = canonical_method_name(getattr(item, "name", type(item).__name__))
                resolved[_unique(name, resolved)] = item
                continue
            if not isinstance(item, str):
                raise TypeError(f"methods must hold names or Method instances, got {item!r}")
            name = canonical_method_name(item)
            if name not in known:
                raise ValueError(
                    f"unknown method {item!r}; valid methods: {', '.join(known)}"
                )
            resolved[name] = known[name].build(batch_size)
    if not resolved:
        raise ValueError("methods is empty; give at least one method")
    return resolved


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


@dataclass
class Explanation:
    """What :func:`explain` returns.

    Attributes
    ----------
    logits : ndarray (n, n_outputs) or None
        The model's raw outputs (None when the model has no ``predict``).
    probabilities : ndarray (n, n_outputs) or None
        Softmax of ``logits`` (rows already summing to 1 are kept as they are).
    targets : ndarray or None
        What was explained per image (class indices, or weight rows).
    maps : dict[str, ndarray]
        One array per method, first axis the images.
    seconds : dict[str, float]
        Wall time per method (all images), plus ``"predict"``.
    rows : dict[str, int]
        Rows sent to the model per method (the work the time is spent on).
    calls : dict[str, int]
        Model calls per method.
    errors : dict[str, str]
        Methods that failed (with ``errors="collect"``) and why.
    """

    logits: np.ndarray | None
    probabilities: np.ndarray | None
    targets: np.ndarray | None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[list[tuple[int, float]]]:
        """Per image the ``k`` most probable classes as ``(index, probability)``."""
        if self.probabilities is None:
            return []
        k = min(check_positive_int(k, "k"), self.probabilities.shape[1])
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(int(c), float(p[c])) for c in row] for p, row in zip(self.probabilities, order)]


class _Counting:
    """Forwards to a model and counts its calls and rows; other attributes pass through."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.calls = 0
        self.rows = 0

    def __call__(self, x, targets, keys):
        self.calls += 1
        self.rows += len(x)
        return self._model(x, targets, keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _as_salience_model(model: Any) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch missing
        return as_model(model)
    if isinstance(model, torch.nn.Module):
        from . import torch as storch

        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        return storch.wrap(model, layer=convs[-1] if convs else None)
    return as_model(model)


def explain(
    model: Any,
    images: Any,
    methods: Sequence[str | Method] | Mapping[str, Method] | str = ("gradients",),
    targets: Any = None,
    batch_size: int = 32,
    *,
    group_size: int | None = None,
    progress: Callable[[str, int], None] | None = None,
    errors: str = "raise",
) -> Explanation:
    """Predict and explain a batch of images with several methods.

    Parameters
    ----------
    model : Model or torch.nn.Module
        A salience Model (``salience.torch.wrap(...)``, ``salience.keras.wrap(...)``,
        any ``model(x, targets, keys)`` callable).  A ``torch.nn.Module`` is
        wrapped with its last ``Conv2d`` as the Grad-CAM layer.
    images : array_like, shape (n, *input_shape)
        Model-ready inputs (already resized and normalised).
    methods : names, Method instances, or {name: Method}
        Names as listed by :func:`available_methods` (``"gradients"``,
        ``"integrated_gradients"``, ``"gradcam"``, ...); by name, methods are
        built with ``batch_size``.
    targets : None, int, n ints or (n, n_outputs) rows
        What to explain; None explains each image's top class.
    batch_size : int
        Largest number of rows per model call for methods built by name, and
        the chunk size of the prediction.
    group_size : int, optional
        Images per method call (default ``batch_size``); bounds memory.
    progress : callable, optional
        ``progress(method_name, n_images_done)`` after each group.
    errors : {'raise', 'collect'}
        On a failing method: raise, or record the message in
        :attr:`Explanation.errors` and go on with the other methods.

    Returns
    -------
    Explanation
        Predictions, the explained targets, maps and timings per method.

    References
    ----------
    The methods' own docs cite their papers; see :mod:`salience.methods`.
    """
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    group = check_positive_int(group_size if group_size is not None else batch_size, "group_size")
    model = _as_salience_model(model)
    resolved = resolve_methods(methods, batch_size)
    x = as_float_batch(images, "images")

    start = time.perf_counter()
    logits = _predict(model, x, batch_size)
    if targets is None and logits is not None:
        explained = np.argmax(logits, axis=1).astype(np.int64)
    else:
        explained = resolve_targets(model, x, targets)
    result = Explanation(
        logits=logits,
        probabilities=None if logits is None else to_probabilities(logits),
        targets=explained,
    )
    result.seconds["predict"] = time.perf_counter() - start

    for name, method in resolved.items():
        counting = _Counting(model)
        start = time.perf_counter()
        parts = []
        try:
            for lo in range(0, len(x), group):
                hi = min(lo + group, len(x))
                chunk_targets = None if explained is None else explained[lo:hi]
                parts.append(np.asarray(method.explain(counting, x[lo:hi], chunk_targets)))
                if progress is not None:
                    progress(name, hi)
        except Exception as err:
            if errors == "raise":
                raise
            result.errors[name] = f"{type(err).__name__}: {err}"
            continue
        finally:
            result.seconds[name] = time.perf_counter() - start
            result.rows[name] = counting.rows
            result.calls[name] = counting.calls
        result.maps[name] = np.concatenate(parts)
    return result


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray | None:
    predict = getattr(model, "predict", None)
    if predict is None:
        return None
    try:
        outputs = predict(x, batch_size=batch_size)
    except TypeError:
        outputs = predict(x)
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.ndim != 2 or outputs.shape[0] != len(x):
        raise ValueError(
            f"model.predict returned shape {outputs.shape}; expected (n, n_outputs) with "
            f"n = {len(x)}"
        )
    return outputs



#: Fractions of the most salient pixels revealed for the PIC curves (as in PAIR's examples).
PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)


def evaluate_maps(
    model: Any,
    x: Any,
    images: Sequence[np.ndarray],
    explanation: Explanation,
    preprocess: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int = 32,
    steps: int = 25,
    seed: int = 0,
) -> list[dict[str, dict[str, float | None]]]:
    """Insertion/deletion AUC and SIC/AIC of every map of ``explanation``.

    Parameters
    ----------
    model : Model
        The model the maps were computed with.
    x : array_like, shape (n, *input_shape)
        The model inputs the maps explain.
    images : sequence of uint8 arrays
        The same images as displayable uint8 ``(H, W)`` or ``(H, W, 3)`` (for PIC).
    explanation : Explanation
        From :func:`explain`; its targets are followed.
    preprocess : callable
        Turns a uint8 image batch into model inputs (PIC blurs uint8 images).
    batch_size : int
        Largest number of images per model call.
    steps : int
        Insertion/deletion steps (``steps + 1`` images per curve).
    seed : int
        Seed of PIC's random mask.

    Returns
    -------
    list of dict
        Per image ``{method: {"insertion_auc", "deletion_auc", "sic_auc", "aic_auc"}}``;
        a value is None when the metric does not apply (PIC skips images whose
        blurred version is not less informative or less confident).

    References
    ----------
    Petsiuk, Das, Saenko. "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018. https://arxiv.org/abs/1806.07421
    Kapishnikov, Bolukbasi, Viegas, Terry. "XRAI: Better Attributions Through
    Regions", ICCV 2019. https://arxiv.org/abs/1906.02825
    """
    from . import metrics
    from .visualize import to_2d

    x = as_float_batch(x, "x")
    if len(images) != len(x):
        raise ValueError(f"images has {len(images)} entries but x has {len(x)} inputs")
    targets = explanation.targets
    per_image: list[dict[str, dict[str, float | None]]] = [{} for _ in range(len(x))]
    for method, maps in explanation.maps.items():
        flat = []
        for i, m in enumerate(maps):
            size = tuple(np.asarray(images[i]).shape[:2])
            flat.append(_resized(to_2d(np.abs(np.asarray(m)), size), size))
        flat_maps = np.stack(flat)
        ins, dele = metrics.insertion_deletion_curves(
            model, x, flat_maps, targets, steps=steps, score="softmax", batch_size=batch_size
        )
        for i in range(len(x)):
            values: dict[str, float | None] = {
                "insertion_auc": float(ins.auc[i]), "deletion_auc": float(dele.auc[i]),
                "sic_auc": None, "aic_auc": None,
            }
            if targets is not None and np.ndim(targets[i]) == 0:
                image = np.asarray(images[i])
                mask = metrics.generate_random_mask(
                    *image.shape[:2], rng=np.random.default_rng(seed))
                for kind in ("sic", "aic"):
                    pred = metrics.pred_func_from_model(model, int(targets[i]), kind,
                                                        preprocess=preprocess)
                    try:
                        result = metrics.compute_pic_metric(
                            image, flat[i], mask, pred, PIC_THRESHOLDS, min_pred_value=0.0,
                            batch_size=batch_size)
                    except metrics.ComputePicMetricError:
                        continue
                    values[f"{kind}_auc"] = float(result.auc)
            per_image[i][method] = values
    return per_image


def _resized(flat: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    if flat.shape == size:
        return flat
    from skimage.transform import resize

    return resize(flat, size, order=1)
