"""The work of one batch, the same function in every engine.

A batch goes through two stages; the engines only move batches between them
and to the store's writer:

- :func:`prepare_batch` needs no model: read each file, hash it, skip it if
  the store has it already, decode, resize and normalise it, and segment it
  for XRAI.  A file that cannot be read becomes a failed row with its reason.
- :func:`explain_batch` needs the model: predict, explain with every method
  (through :func:`salience.explain`), optionally score the maps
  (:func:`salience.metrics.evaluate_maps`), and turn it all into record
  columns and maps.

Batches are dicts of equally long numpy columns (Ray Data's ``numpy`` batch
format), so the same batches travel through threads or a Ray cluster.

Methods with an integer seed (SmoothGrad's noise, ``'uniform'`` baselines)
draw their randomness per image, from a seed derived from the run's seed, the
method's own seed and a hash of the image's model input: an image's map does
not depend on which images share its batch, so engines, worker counts and
resumed runs give the same maps (and a file and the same image given as an
array too).  Such methods are called image by image.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..arrays import to_channels_last
from ..checks import check_nonnegative_int, check_positive_int
from ..io import ImageReadError, Preprocessing, _to_uint8, load_image
from ..methods.base import Method
from ..methods.xrai import XRAI, felzenszwalb_masks
from .sources import NO_TARGET, content_hash, image_id, row_value

__all__ = [
    "IMAGE_COLUMNS",
    "MAP_PREFIX",
    "METHOD_FIELDS",
    "METRIC_FIELDS",
    "MAP_DTYPES",
    "Plan",
    "explain_batch",
    "method_columns",
    "prepare_batch",
]

#: Per-image record columns and their Arrow types (see :mod:`salience.dataset.store`).
IMAGE_COLUMNS = (
    ("id", "string"), ("name", "string"), ("path", "string"), ("content_hash", "string"),
    ("file_size", "int64"), ("file_mtime_ns", "int64"), ("height", "int64"),
    ("width", "int64"), ("target", "int64"), ("label", "string"), ("status", "string"),
    ("error", "string"), ("seconds", "float64"), ("top_classes", "list<int64>"),
    ("top_probabilities", "list<float64>"),
)
#: Per-method record columns, named ``<method>.<field>``.
METHOD_FIELDS = (
    ("status", "string"), ("error", "string"), ("seconds", "float64"), ("min", "float64"),
    ("max", "float64"), ("mean", "float64"), ("abs_mean", "float64"),
)
#: Per-method metric columns (with ``metrics=True``), named ``<method>.<metric>``.
METRIC_FIELDS = (("insertion_auc", "float64"), ("deletion_auc", "float64"),
                 ("sic_auc", "float64"), ("aic_auc", "float64"))
#: Column of a batch holding a method's maps: ``map.<method>``.
MAP_PREFIX = "map."
MAP_DTYPES = ("float32", "float16")

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def method_columns(method: str, metrics: bool) -> list[tuple[str, str]]:
    """The record columns of one method, ``(name, type)``."""
    fields = METHOD_FIELDS + (METRIC_FIELDS if metrics else ())
    return [(f"{method}.{name}", kind) for name, kind in fields]


@dataclass(frozen=True)
class Plan:
    """Everything a batch's work depends on (picklable: it travels to Ray workers).

    Attributes
    ----------
    methods : mapping of str to Method
        The methods by name, as :func:`salience.runner.resolve_methods` gives them.
    preprocessing : Preprocessing
        How files become model inputs.
    batch_size : int
        Largest number of rows per model call.
    target : int or None
        One class to explain in every image; None takes each image's target
        from the source, else its top class.
    metrics : bool
        Whether insertion/deletion AUC and SIC/AIC are computed per map.
    top_k : int
        Classes (with probabilities) recorded per image.
    map_dtype : {'float32', 'float16'}
        Precision of the stored maps.
    seed : int
        Mixed into every per-image seed (see the module docs).
    """

    methods: Mapping[str, Method]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    batch_size: int = 32
    target: int | None = None
    metrics: bool = False
    top_k: int = 5
    map_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty; give at least one method")
        for name, method in self.methods.items():
            if not isinstance(method, Method):
                raise TypeError(f"methods[{name!r}] must be a salience Method, got {method!r}")
        object.__setattr__(self, "methods", dict(self.methods))
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.top_k, "top_k")
        check_nonnegative_int(self.seed, "seed")
        if self.target is not None:
            check_nonnegative_int(self.target, "targets")
        if self.map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {self.map_dtype!r}")

    @property
    def segmented(self) -> tuple[str, ...]:
        """XRAI methods whose regions the CPU stage computes (those without given segments)."""
        return tuple(name for name, m in self.methods.items()
                     if isinstance(m, XRAI) and m.segments is None)

    def parameters(self) -> dict[str, Any]:
        """What the numbers depend on, as JSON values (compared when a run resumes)."""
        prep = self.preprocessing
        return {
            "methods": {name: _method_parameters(m) for name, m in self.methods.items()},
            "preprocessing": {
                "size": list(prep.size), "channels": prep.channels,
                "channels_last": prep.channels_last, "preset": prep.preset,
                "mean": None if prep.mean is None else list(prep.mean),
                "std": None if prep.std is None else list(prep.std),
                "scale": prep.scale, "resize": prep.resize,
            },
            "target": self.target,
            "metrics": self.metrics,
            "top_k": self.top_k,
            "map_dtype": self.map_dtype,
            "seed": self.seed,
        }


def _method_parameters(method: Method) -> dict[str, Any]:
    """A method's class and settings; ``batch_size`` is left out (it changes no number)."""
    out: dict[str, Any] = {"class": type(method).__name__}
    for key, value in sorted(vars(method).items()):
        if key.startswith("_") or key == "batch_size":
            continue
        out[key] = _method_parameters(value) if isinstance(value, Method) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"array": list(value.shape), "sha256": content_hash(value)}
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    return repr(value)


# --------------------------------------------------------------------------- CPU stage


def prepare_batch(
    batch: Mapping[str, Any], plan: Plan, done: Collection[str] = frozenset()
) -> dict[str, np.ndarray]:
    """Read, hash, decode and preprocess a batch of source rows; no model needed.

    Parameters
    ----------
    batch : mapping of columns
        ``path`` (files to read) or ``image`` (decoded arrays), and optionally
        ``name``, ``target`` (:data:`~salience.dataset.sources.NO_TARGET` for
        none) and ``label``.
    plan : Plan
    done : collection of str
        Ids already in the store: such rows are left out (counted in one
        ``status == 'skipped'`` row whose ``skipped`` column holds the count).

    Returns
    -------
    dict of numpy columns
        The record columns known before the model runs, ``x`` (model inputs;
        zeros for rows that are not ``'ok'``), ``display`` (the resized uint8
        images, with ``metrics``) and ``segments`` (XRAI's regions, when an
        XRAI method needs them).
    """
    n = len(next(iter(batch.values()))) if batch else 0
    prep = plan.preprocessing
    rows: list[dict[str, Any]] = []
    displays: list[np.ndarray] = []
    skipped = 0
    for i in range(n):
        row = _read_row(batch, i, prep)
        if row["id"] in done:
            skipped += 1
            continue
        display = row.pop("_display")
        if display is not None:
            displays.append(display)
        rows.append(row)
    if skipped:
        rows.append(_empty_row(status="skipped", skipped=skipped))
    out: dict[str, np.ndarray] = {}
    for name, default in _empty_row().items():
        values = [r[name] for r in rows]
        out[name] = (np.array(values, dtype=np.int64) if isinstance(default, int)
                     else _objects(len(rows), np.arange(len(rows)), values))
    ok = np.flatnonzero(out["status"] == "ok")
    x = np.zeros((len(rows), *_input_shape(prep)), dtype=np.float32)
    if len(ok):
        x[ok] = prep.model_input(displays)
    out["x"] = x
    if plan.metrics:
        out["display"] = _objects(len(rows), ok, displays)
    if plan.segmented:
        images = to_channels_last(x[ok], prep.channels_last) if len(ok) else x[:0]
        out["segments"] = _objects(len(rows), ok, [felzenszwalb_masks(im) for im in images])
    return out


def _input_shape(prep: Preprocessing) -> tuple[int, int, int]:
    height, width = prep.size
    return (height, width, prep.channels) if prep.channels_last else (prep.channels, height, width)


def _objects(n: int, where: np.ndarray, values: list[Any]) -> np.ndarray:
    out = np.empty(n, dtype=object)
    for i, value in zip(where, values):
        out[i] = value
    return out


def _empty_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": None, "name": None, "path": None, "content_hash": None, "file_size": -1,
        "file_mtime_ns": -1, "height": -1, "width": -1, "target": NO_TARGET, "label": None,
        "status": None, "error": None, "skipped": 0,
    }
    row.update(values)
    return row


def _read_row(batch: Mapping[str, Any], i: int, prep: Preprocessing) -> dict[str, Any]:
    """One source row as record values plus ``_display`` (None when it failed)."""
    path = row_value(batch, "path", i)
    path = None if path is None else str(path)
    image = row_value(batch, "image", i)
    name = str(row_value(batch, "name", i, path or ""))
    row = _empty_row(name=name, path=path, target=int(row_value(batch, "target", i, NO_TARGET)),
                     label=_text(row_value(batch, "label", i)), status="ok")
    try:
        if image is not None:
            array = np.asarray(image)
            row["content_hash"] = content_hash(array)
            decoded = _as_uint8_image(array, name)
        elif path is not None:
            with open(path, "rb") as f:
                data = f.read()
                stat = os.fstat(f.fileno())
            row.update(content_hash=content_hash(data), file_size=stat.st_size,
                       file_mtime_ns=stat.st_mtime_ns)
            decoded = load_image(path)
        else:
            raise ImageReadError(f"row {i} of the batch has neither a path nor an image")
    except (OSError, ImageReadError) as err:
        row.update(id=image_id(name, row["content_hash"] or ""), status="failed",
                   error=_reason(err, path), _display=None)
        return row
    row.update(id=image_id(name, row["content_hash"]), height=int(decoded.shape[0]),
               width=int(decoded.shape[1]), _display=prep.display(decoded, name))
    return row


def _reason(err: Exception, path: str | None) -> str:
    if isinstance(err, ImageReadError):
        return str(err)
    return f"{path}: cannot be read ({type(err).__name__}: {err})"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text or None


def _as_uint8_image(array: np.ndarray, name: str) -> np.ndarray:
    """A decoded image column value as load_image returns files: uint8 (H, W) or (H, W, 3)."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., 0] if array.shape[2] == 1 else array[..., :3]
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise ImageReadError(
            f"{name or 'image'}: an image must be (H, W) or (H, W, 3), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageReadError(f"{name or 'image'}: image values must be real numbers, got "
                             f"{array.dtype}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    return _to_uint8(array.astype(np.float64))


# --------------------------------------------------------------------------- model stage


def explain_batch(model: Any, batch: Mapping[str, np.ndarray], plan: Plan) -> dict[str, np.ndarray]:
    """Predict, explain and score the ``'ok'`` rows of a prepared batch.

    Parameters
    ----------
    model : Model
        A salience Model (already wrapped).
    batch : dict of columns
        What :func:`prepare_batch` returned.
    plan : Plan

    Returns
    -------
    dict of numpy columns
        Every record column (:data:`IMAGE_COLUMNS`, ``skipped`` and
        :func:`method_columns` of each method) and ``map.<method>`` with the
        maps in ``plan.map_dtype`` (zeros in rows without a map).
    """
    from ..runner import explain

    status = batch["status"]
    n = len(status)
    ok = np.flatnonzero(status == "ok")
    out: dict[str, np.ndarray] = {name: np.array(batch[name]) for name, _ in IMAGE_COLUMNS
                                  if name in batch}
    out["skipped"] = np.asarray(batch["skipped"])
    out["seconds"] = np.full(n, np.nan)
    # top_k columns in every batch (-1 and NaN pad a model with fewer classes).
    out["top_classes"] = np.full((n, plan.top_k), -1, dtype=np.int64)
    out["top_probabilities"] = np.full((n, plan.top_k), np.nan)
    for name in plan.methods:
        for column, kind in method_columns(name, plan.metrics):
            out[column] = (np.full(n, None, dtype=object) if kind == "string"
                           else np.full(n, np.nan))
    if not len(ok):
        return out

    start = time.perf_counter()
    x = np.asarray(batch["x"])[ok]
    targets = _targets(model, x, np.asarray(batch["target"])[ok], plan)
    digests = [content_hash(row) for row in x]  # an image's draws follow its pixels
    segments = batch["segments"][ok] if "segments" in batch else None
    methods = {name: _for_batch(name, m, plan, digests, segments)
               for name, m in plan.methods.items()}
    result = explain(model, x, methods, targets, plan.batch_size, group_size=len(ok),
                     errors="collect")
    if result.targets is not None and np.ndim(result.targets) == 1:
        out["target"][ok] = result.targets
    top = result.top(plan.top_k)
    if top:
        k = len(top[0])
        out["top_classes"][ok, :k] = [[c for c, _ in row] for row in top]
        out["top_probabilities"][ok, :k] = [[p for _, p in row] for row in top]
    values = _metric_values(model, x, batch, ok, result, plan) if plan.metrics else None
    for name in plan.methods:
        _method_record(out, name, ok, result, values, plan)
    out["seconds"][ok] = (time.perf_counter() - start) / len(ok)
    return out


def _targets(model: Any, x: np.ndarray, given: np.ndarray, plan: Plan) -> np.ndarray | None:
    """One class per image: the plan's, the source's, and the top class where none is given."""
    if plan.target is not None:
        return np.full(len(x), plan.target, dtype=np.int64)
    missing = given == NO_TARGET
    if missing.all():
        return None
    targets = given.astype(np.int64)
    if missing.any():
        from ..checks import resolve_targets

        top = resolve_targets(model, x[missing], None)
        if top is None:
            raise ValueError("some images have a target and some do not, and the model has no "
                             "predict() to find the top class of the others; give every image "
                             "a target")
        targets[missing] = top
    return targets


def _for_batch(name: str, method: Method, plan: Plan, digests: list[str],
               segments: np.ndarray | None) -> Method:
    """The method as this batch runs it: with the segments computed ahead, and image
    by image with per-image seeds if it draws random numbers from an integer seed."""
    per_image = None
    if name in plan.segmented and segments is not None:
        per_image = list(segments)
        if not _is_seeded(method):
            given: Any = copy.copy(method)
            given.segments = per_image
            return given
    if _is_seeded(method):
        return _ImageByImage(method, digests, plan.seed, per_image)
    return method


def _is_seeded(method: Any) -> bool:
    while isinstance(method, Method):
        seed = getattr(method, "seed", None)
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return True
        method = getattr(method, "method", None)
    return False


def _image_seed(run_seed: int, level: int, own: int, digest: str) -> int:
    mixed = hashlib.sha256(f"{run_seed}:{level}:{own}:{digest}".encode()).digest()
    return int.from_bytes(mixed[:8], "little") >> 1


def _reseeded(method: Method, run_seed: int, digest: str, level: int = 0) -> Method:
    """A copy of ``method`` (and of the methods it wraps) whose integer seeds are
    replaced by seeds derived from a hash of the image's model input."""
    copied: Any = copy.copy(method)
    seed = getattr(copied, "seed", None)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        copied.seed = _image_seed(run_seed, level, int(seed), digest)
    inner = getattr(copied, "method", None)
    if isinstance(inner, Method):
        copied.method = _reseeded(inner, run_seed, digest, level + 1)
    return copied


class _ImageByImage(Method):
    """Runs a seeded method on one image at a time, each with its own seed."""

    def __init__(self, method: Method, digests: list[str], run_seed: int,
                 segments: list[Any] | None) -> None:
        self.method = method
        self.digests = digests
        self.run_seed = run_seed
        self.segments = segments
        self.name = method.name

    def _check(self, model: Any, x: np.ndarray) -> None:
        self.method._check(model, x)

    def _explain(self, model: Any, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        parts = []
        for i in range(len(x)):
            method: Any = _reseeded(self.method, self.run_seed, self.digests[i])
            if self.segments is not None:
                method.segments = [self.segments[i]]
            one = None if targets is None else targets[i:i + 1]
            parts.append(np.asarray(method.explain(model, x[i:i + 1], one)))
        return np.concatenate(parts)


def _metric_values(model, x, batch, ok, result, plan) -> list[dict] | Exception:
    from ..metrics import evaluate_maps

    prep = plan.preprocessing
    displays = [batch["display"][i] for i in ok]
    try:
        return evaluate_maps(model, x, displays, result.maps, result.targets,
                             lambda images: prep.model_input(list(images)),
                             batch_size=plan.batch_size)
    except Exception as err:  # noqa: BLE001 - recorded per method, the run goes on
        return err


def _method_record(out, name, ok, result, values, plan) -> None:
    """Fill ``<name>.*`` columns and ``map.<name>`` for the ok rows."""
    error = result.errors.get(name)
    if error is not None:
        out[f"{name}.status"][ok] = "failed"
        out[f"{name}.error"][ok] = error
        out[f"{name}.seconds"][ok] = result.seconds.get(name, np.nan) / len(ok)
        return
    maps = np.asarray(result.maps[name])
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    out[f"{name}.status"][ok] = "ok"
    out[f"{name}.seconds"][ok] = result.seconds[name] / len(ok)
    out[f"{name}.min"][ok] = flat.min(axis=1)
    out[f"{name}.max"][ok] = flat.max(axis=1)
    out[f"{name}.mean"][ok] = flat.mean(axis=1)
    out[f"{name}.abs_mean"][ok] = np.abs(flat).mean(axis=1)
    stored = np.zeros((len(out["status"]), *maps.shape[1:]), dtype=plan.map_dtype)
    if plan.map_dtype == "float16":
        peak = np.abs(flat).max(axis=1)
        over = peak > _FLOAT16_MAX
        for j in np.flatnonzero(over):
            out[f"{name}.error"][ok[j]] = (
                f"map values up to {peak[j]:.4g} exceed float16's range; stored values are "
                f"clipped to +-{_FLOAT16_MAX:g} (map_dtype='float32' keeps them)")
        maps = np.clip(maps, -_FLOAT16_MAX, _FLOAT16_MAX)
    stored[ok] = maps
    out[MAP_PREFIX + name] = stored
    if isinstance(values, Exception):
        out[f"{name}.error"][ok] = f"metrics failed: {type(values).__name__}: {values}"
    elif values is not None:
        for j, row in zip(ok, values):
            for metric, _ in METRIC_FIELDS:
                value = row.get(name, {}).get(metric)
                out[f"{name}.{metric}"][j] = np.nan if value is None else value
