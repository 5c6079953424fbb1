"""The runner behind :func:`salience.explain`: predictions and one map per method
for a batch, with timings.

The methods are addressed by name (:mod:`salience.registry`; ``salience
methods`` lists them) or given as :class:`salience.Method` instances.  Images go through each method in
groups, so every method batches rows of several images into the same model
calls while memory stays bounded for large folders.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import registry
from ._adapter import wrap_native
from .arrays import channels_last, reduce_channels
from .checks import as_float_batch, check_positive_int, check_reduction, resolve_targets
from .methods.base import Method
from .numeric import to_probabilities
from .progress import ProgressEvent, in_group, progress_stage

__all__ = ["Explanation", "explain", "resolve_methods"]


def resolve_methods(
    methods: Sequence[str | Method] | Mapping[str, Method] | str, batch_size: int = 32
) -> dict[str, Method]:
    """Turn names, Method instances or a ``{name: Method}`` mapping into ``{name: Method}``.

    Names are looked up in :mod:`salience.registry` (aliases allowed) and built
    with its parameters and ``batch_size``; instances keep their own settings
    and are named after their class (``_2``, ``_3`` ... when repeated).

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
        resolved = {}
        for item in methods:
            if isinstance(item, Method):
                resolved[_unique(_instance_name(item), resolved)] = item
            elif isinstance(item, str):
                entry = registry.get(item)
                resolved[entry.name] = entry.build(batch_size)
            else:
                raise TypeError(f"methods must hold names or Method instances, got {item!r}")
    if not resolved:
        raise ValueError("methods is empty; give at least one method")
    return resolved


def _instance_name(method: Method) -> str:
    """The registry name of the method's class, else the class name in snake case."""
    for entry in registry.METHODS.values():
        if type(method) is entry.cls:
            return entry.name
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(method).__name__).lower()


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


def explain(
    model: Any,
    images: Any,
    methods: Sequence[str | Method] | Mapping[str, Method] | str = ("gradients",),
    targets: Any = None,
    batch_size: int = 32,
    *,
    group_size: int | None = None,
    progress: bool | Callable[[ProgressEvent], None] | None = None,
    errors: str = "raise",
    reduction: str | None = None,
) -> Explanation:
    """Predict and explain a batch of images with several methods.

    Parameters
    ----------
    model : Model or torch.nn.Module
        A salience Model (``salience.torch.wrap(...)``, ``salience.keras.wrap(...)``,
        any ``model(x, targets, keys)`` callable).  A ``torch.nn.Module`` or a
        Keras model is wrapped with its last 2-D convolution as the Grad-CAM
        layer (a torch vision transformer: its last attention block's first
        LayerNorm).
    images : array_like, shape (n, *input_shape)
        Model-ready inputs (already resized and normalised).
    methods : names, Method instances, or {name: Method}
        Names from :mod:`salience.registry` (``"gradients"``,
        ``"integrated_gradients"``, ``"gradcam"``, ...); by name, methods are
        built with ``batch_size``.
    targets : None, int, n ints or (n, n_outputs) rows
        What to explain; None explains each image's top class.
    batch_size : int
        Largest number of rows per model call for methods built by name, and
        the chunk size of the prediction.
    group_size : int, optional
        Images per method call (default ``batch_size``); bounds memory.
    progress : bool or callable, optional
        True draws a progress bar on stderr naming the method and image(s)
        being computed (:class:`salience.progress.ProgressBar`); a callable
        receives :class:`salience.progress.ProgressEvent` objects instead (when
        a method starts on a group of images, as the model returns rows, at
        most every 0.1 s, and when a group ends).  Default: silent.
    errors : {'raise', 'collect'}
        On a failing method: raise, or record the message in
        :attr:`Explanation.errors` and go on with the other methods.
    reduction : str, optional
        Give 2-D maps ``(n, H, W)``: each map's channels reduced by
        ``"sum"``, ``"abs_sum"`` (PAIR's grayscale), ``"abs_max"`` (Xplique),
        ``"l2"`` or ``"max"`` (see :func:`salience.arrays.reduce_channels`);
        maps without channels (Grad-CAM, XRAI, gray images) are one channel.
        Default: maps as the methods return them.

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
    if reduction is not None:
        check_reduction(reduction)
    model = wrap_native(model)
    resolved = resolve_methods(methods, batch_size)
    x = as_float_batch(images, "images")

    n = len(x)
    with progress_stage(progress, "explain", len(resolved) * n, n) as stage:
        return _explain(model, x, resolved, targets, batch_size, group, errors, stage,
                        reduction)


def _explain(model, x, resolved, targets, batch_size, group, errors, stage,
             reduction) -> Explanation:
    n = len(x)
    start = time.perf_counter()
    if stage is not None:
        stage.emit(None, range(0, n), 0.0)
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

    for k, (name, method) in enumerate(resolved.items()):
        counting = _Counting(model)
        start = time.perf_counter()
        parts = []
        try:
            for lo in range(0, n, group):
                hi = min(lo + group, n)
                chunk_targets = None if explained is None else explained[lo:hi]
                with in_group(stage, name, lo, hi, k * n + lo):
                    parts.append(np.asarray(method.explain(counting, x[lo:hi], chunk_targets)))
        except Exception as err:
            if stage is not None:  # the method's remaining images count as done
                stage.emit(name, range(0, 0), (k + 1) * n)
            if errors == "raise":
                raise
            result.errors[name] = f"{type(err).__name__}: {err}"
            continue
        finally:
            result.seconds[name] = time.perf_counter() - start
            result.rows[name] = counting.rows
            result.calls[name] = counting.calls
        maps = np.concatenate(parts)
        result.maps[name] = maps if reduction is None else _reduced(maps, x, model, reduction)
    return result


def _reduced(maps: np.ndarray, x: np.ndarray, model: Any, reduction: str) -> np.ndarray:
    """``(n, H, W)`` maps: a channel axis where the images have one, in the model's layout."""
    has_channels = maps.ndim == x.ndim == 4
    axis = (-1 if channels_last(model) else 1) if has_channels else None
    return reduce_channels(maps, reduction, axis)


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
