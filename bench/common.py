"""Shared pieces of the benchmark suite: models, images, timers, the model floor,
reference and Captum runners, and the row format every bench module returns.

A benchmark module ``bench/bench_<area>.py`` exposes ``run(quick: bool) -> list[dict]``;
each dict is made with :func:`make_row`.  ``bench/run.py`` collects them all.

Fairness rules used throughout:

- every timed callable is called once untimed first (the warm-up a user also
  pays once per process: lazy framework initialisation, allocator growth), then
  timed ``repeats`` times; nothing is computed outside the timed callable that a
  user would have to compute (paths, blurred images, occluded copies ...);
- callables that are compared (salience, the reference, Captum, the floor) are
  timed *interleaved* (round robin over the repeats), so a noisy neighbour on
  the machine slows all of them alike, and the best time of each is reported;
- every library gets the same image, the same target class and the same
  parameters.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ROW_FIELDS",
    "make_row",
    "judge",
    "Timing",
    "time_interleaved",
    "time_call",
    "print_progress",
    "peak_memory",
    "machine_info",
    "configure_process",
    "photos",
    "tiny_cnn",
    "tiny_setup",
    "lite0_setup",
    "ModelSetup",
    "floor_batch_size",
    "floor_callable",
    "model_floor",
    "reference_core",
    "pair_args",
    "QUICK_REPEATS",
    "FULL_REPEATS",
]

QUICK_REPEATS = 2
FULL_REPEATS = 5

# --------------------------------------------------------------------------- rows

ROW_FIELDS = (
    "area",
    "method",
    "model",
    "setting",
    "salience_s",
    "reference_s",
    "captum_s",
    "floor_s",
    "vs_reference",
    "vs_floor",
    "notes",
)


def make_row(
    area: str,
    method: str,
    model: str,
    setting: str,
    salience_s: float | None,
    reference_s: float | None = None,
    captum_s: float | None = None,
    floor_s: float | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """One result row.

    ``vs_reference`` = reference_s / salience_s (how many times faster salience is);
    ``vs_floor`` = salience_s / floor_s (1.0 = nothing but the model's own work).
    """
    def ratio(a, b):
        return None if a is None or b is None or b <= 0 else a / b

    return {
        "area": area,
        "method": method,
        "model": model,
        "setting": setting,
        "salience_s": salience_s,
        "reference_s": reference_s,
        "captum_s": captum_s,
        "floor_s": floor_s,
        "vs_reference": ratio(reference_s, salience_s),
        "vs_floor": ratio(salience_s, floor_s),
        "notes": notes,
    }


def judge(row: dict[str, Any], goal: str, bound_floor_s: float | None = None) -> dict[str, Any]:
    """Attach a target such as ``'>= 5x vs reference'`` or ``'<= 1.10x floor'`` to a row
    and whether it is met.

    For a target against the reference, the notes also give reference / floor:
    the ratio a method with no work of its own would reach on the floor's rows
    (copies of one input); ``bound_floor_s`` replaces the row's floor there when
    the method cannot use the floor's batch size (lockstep Guided IG).
    """
    need = float(goal.split()[1].rstrip("x"))
    row["target"] = goal
    if "vs reference" in goal:
        row["measured"] = f"{row['vs_reference']:.2f}x faster"
        row["met"] = row["vs_reference"] >= need
        floor_s = bound_floor_s or row["floor_s"]
        if row["reference_s"] and floor_s:
            row["notes"] += (f"; reference / floor{' at the lockstep batch' if bound_floor_s else ''}"
                             f" (a method with no work of its own): "
                             f"{row['reference_s'] / floor_s:.2f}x")
    else:
        row["measured"] = f"{row['vs_floor']:.2f}x floor"
        row["met"] = row["vs_floor"] <= need
    return row


# --------------------------------------------------------------------------- timing


class Timing:
    """Times of repeated calls (seconds): ``best``, ``median``, ``all``."""

    def __init__(self, times: Sequence[float], result: Any = None) -> None:
        self.all = list(times)
        self.best = min(self.all)
        self.median = statistics.median(self.all)
        self.result = result

    def __repr__(self) -> str:
        return f"Timing(best={self.best:.4g}s, median={self.median:.4g}s, n={len(self.all)})"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def time_interleaved(
    fns: Mapping[str, Callable[[], Any] | None],
    repeats: int = 3,
    warmup: bool = True,
    min_sample_s: float = 0.1,
) -> dict[str, Timing | None]:
    """Time several callables round robin: warm-up each once, then ``repeats`` rounds.

    A callable faster than ``min_sample_s`` (judged by its warm-up call) is run
    several times per sample and the mean is recorded, so scheduler noise does
    not dominate sub-millisecond timings.  Entries that are None (a library
    without the method) come back as None.  The last result of each callable is
    kept in ``Timing.result``.
    """
    live = {k: f for k, f in fns.items() if f is not None}
    results: dict[str, Any] = {}
    loops = dict.fromkeys(live, 1)
    times: dict[str, list[float]] = {k: [] for k in live}
    # The objects alive now (frameworks' module graphs: a full collection takes
    # 0.2 s with TensorFlow loaded) are never garbage: freeze them, so the
    # collection before each sample only scans what the timed calls created.
    gc.collect()
    gc.freeze()
    try:
        if warmup:
            for name, fn in live.items():
                gc.collect()
                t, results[name] = _timed(fn)
                loops[name] = max(1, min(100, math.ceil(min_sample_s / max(t, 1e-6))))
        for _ in range(max(1, repeats)):
            for name, fn in live.items():
                total = 0.0
                gc.collect()  # once per sample, outside the timed calls
                for _ in range(loops[name]):
                    t, results[name] = _timed(fn)
                    total += t
                times[name].append(total / loops[name])
    finally:
        gc.unfreeze()
    return {k: (Timing(times[k], results.get(k)) if k in live else None) for k in fns}


def print_progress(label: str, timings: Mapping[str, Timing | None], started: float) -> None:
    """One stderr line per timed case: best time of each callable and the case's wall time."""
    print(f"   .. {label}: "
          + ", ".join(f"{k} {v.best:.3g}s" for k, v in timings.items() if v is not None)
          + f" (took {time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: bool = True) -> Timing:
    """Time one callable (warm-up once, then best/median of ``repeats``)."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def peak_memory(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak memory of one call, in MiB.

    ``traced_mib``: peak of Python/numpy allocations during the call (tracemalloc;
    numpy reports its buffers to it; framework tensors are not included).
    ``rss_mib``: the process's peak resident set so far (ru_maxrss, monotonic).
    Not combined with timing: tracemalloc slows allocation down.
    """
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    out = {"traced_mib": (peak - base) / 2**20}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss_mib"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    except ImportError:  # pragma: no cover - Windows
        pass
    return out


# --------------------------------------------------------------------------- machine


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - absent package
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10,
        ).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


_process_settings: dict[str, str] = {}  # what configure_process did, for machine_info


def configure_process(n: int) -> None:
    """Give PyTorch, TensorFlow and XLA ``n`` intra-op threads each, and keep freed
    memory for the whole run.

    On a small shared machine, multi-threaded kernels that spin-wait for a
    descheduled thread were measured 20x slower than one thread.  With one
    framework thread on this 2-core machine the other core is free for a
    method's own numpy work (blurring, noise, path selection), which the row
    scheduler runs beside the model, as it would beside an accelerator.  The
    allocator setting is the one the ``salience`` command makes
    (:func:`salience.runtime.retain_freed_memory`).  All of it holds for every
    library and every floor in the run, so the ratios stay comparable.

    TensorFlow reads its thread counts from the environment when it starts.
    This jaxlib ignores XLA's thread flags, so XLA's CPU backend is started
    here, while this thread may run on the first ``n`` usable cores only: its
    pool threads keep that affinity, and this thread gets every core back.
    """
    from salience.runtime import retain_freed_memory

    _process_settings["freed memory kept (salience.runtime)"] = str(retain_freed_memory())
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(var, str(n))
    _process_settings["TensorFlow threads (intra-op, inter-op)"] = ", ".join(
        os.environ[v] for v in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    _process_settings["XLA cores"] = _start_xla_on(n)


def _start_xla_on(n: int) -> str:
    """Start XLA's CPU backend with its threads confined to ``n`` cores (see above)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:  # pragma: no cover - not Linux
        return "all (no CPU affinity on this OS)"
    try:
        os.sched_setaffinity(0, cores[:n])
        try:
            import jax

            jax.devices()  # creates the backend and its thread pool
        finally:
            os.sched_setaffinity(0, cores)
    except ImportError:  # pragma: no cover
        return "- (no jax)"
    return ", ".join(map(str, cores[:n]))


def machine_info() -> dict[str, str]:
    """Machine, OS, versions and date, for the results file."""
    info = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "load average": ", ".join(f"{v:.2f}" for v in os.getloadavg())
        if hasattr(os, "getloadavg") else "n/a",
        "os": platform.platform(),
        "python": platform.python_version(),
        "git commit": _git_commit(),
    }
    for pkg in ("salience", "numpy", "scipy", "scikit-image", "torch", "saliency", "captum",
                "tensorflow", "keras", "jax"):
        info[pkg] = _version(pkg)
    try:
        import torch

        info["torch threads"] = str(torch.get_num_threads())
    except ImportError:  # pragma: no cover
        pass
    info.update(_process_settings)
    return info


# --------------------------------------------------------------------------- images


@functools.cache
def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def photos(n: int, size: int) -> np.ndarray:
    """``n`` real RGB photos (bundled with scikit-image, no download), resized to
    ``size`` x ``size``, uint8 (n, size, size, 3).  Image 0 is ``chelsea`` (a cat);
    further images cycle through four photos with different square crops."""
    from skimage.transform import resize

    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = _photo(_PHOTOS[i % len(_PHOTOS)])
        h, w = img.shape[:2]
        side = min(h, w)
        k = i // len(_PHOTOS)
        # Crop positions move along the long side (and shrink a little) per cycle.
        side_k = max(side // 2, side - 16 * k)
        top = ((h - side_k) * ((k * 37) % 11)) // 10
        left = ((w - side_k) * ((k * 53) % 11)) // 10
        crop = img[top:top + side_k, left:left + side_k]
        out[i] = np.clip(resize(crop, (size, size), anti_aliasing=True) * 255 + 0.5, 0, 255)
    return out


# --------------------------------------------------------------------------- models


class ModelSetup:
    """A model ready to be benchmarked with every library.

    Attributes
    ----------
    name : str
    module : torch.nn.Module
        The PyTorch module (eval mode), channels first.
    model : salience Model
        ``salience.torch.wrap(module, layer=layer_name)``.
    call_model_function : callable
        PAIR-style callback taking (n, H, W, C) batches, as PAIR users write it.
    layer_name : str
        The Grad-CAM layer.
    x : ndarray (n, C, H, W) float32
        Preprocessed images, channels first (salience and Captum input).
    x_hwc : ndarray (n, H, W, C) float32
        The same images channels last (reference input).
    targets : ndarray (n,) int64
        The class explained per image (the model's top class, computed once).
    """

    def __init__(self, name, module, layer_name, x):
        import salience.torch

        self.name = name
        self.module = module
        self.layer_name = layer_name
        self.model = salience.torch.wrap(module, layer=layer_name)
        self.call_model_function = self.model.call_model_function(channels_last_input=True)
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.x_hwc = np.ascontiguousarray(self.x.transpose(0, 2, 3, 1))
        self.targets = self.model.predict(self.x).argmax(axis=1).astype(np.int64)

    def subset(self, n: int) -> ModelSetup:
        """The same model with the first ``n`` images (n <= len(x))."""
        other = object.__new__(ModelSetup)
        other.__dict__.update(self.__dict__)
        other.x, other.x_hwc, other.targets = self.x[:n], self.x_hwc[:n], self.targets[:n]
        return other


def tiny_cnn(num_classes: int = 10, seed: int = 0):
    """A small CNN (two 3x3 convolutions, ReLU, pooling, linear) with fixed random
    weights: a model so cheap that library overhead dominates."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 16, num_classes),
    )
    return net.eval()


TINY_SIZE = 32
TINY_LAYER = "3"  # the second convolution


def tiny_setup(n: int = 1, size: int = TINY_SIZE) -> ModelSetup:
    """The tiny CNN on ``n`` real photos at ``size`` pixels, scaled to [0, 1]."""
    x = photos(n, size).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return ModelSetup("tiny CNN", tiny_cnn(), TINY_LAYER, x)


LITE0_LAYER = "_head_activation"


@functools.lru_cache(maxsize=1)
def _lite0_module():
    from salience.zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

    return load_pretrained_efficientnet_lite0()


def lite0_setup(n: int = 1, size: int = 224) -> ModelSetup:
    """Pretrained EfficientNet-Lite0 on ``n`` real photos at ``size`` pixels."""
    from salience.zoo.efficientnet_lite import preprocess_lite0

    return ModelSetup("EfficientNet-Lite0", _lite0_module(), LITE0_LAYER,
                      preprocess_lite0(photos(n, size)))


def pair_args(target: int) -> dict[str, int]:
    """``call_model_args`` as PAIR notebooks write them."""
    return {"class_idx_str": int(target)}


# --------------------------------------------------------------------------- floor

_FLOOR_SIZES = (1, 8, 32, 64)
_best_size_cache: dict[tuple, int] = {}


def _tile(x1: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x1[:1], n, axis=0))


def floor_batch_size(
    model: Any,
    x1: np.ndarray,
    keys: Sequence[str],
    target: int | None = None,
    sizes: Sequence[int] = _FLOOR_SIZES,
    max_rows: int | None = None,
) -> int:
    """The batch size with the lowest time per row for ``model(x, targets, keys)``.

    Each candidate (up to ``max_rows``) is called once to warm up and then timed; the winner is remembered for the rest of the run (per model, keys and
    input shape).
    """
    key = (id(model), tuple(keys), tuple(x1.shape[1:]), max_rows)
    if key in _best_size_cache:
        return _best_size_cache[key]
    best, best_per_row = 1, math.inf
    for b in sizes:
        if max_rows is not None and b > max_rows:
            break
        xb = _tile(x1, b)
        tb = None if target is None else np.full(b, target, dtype=np.int64)
        t = time_call(lambda xb=xb, tb=tb: model(xb, tb, keys), repeats=1).best / b
        if t < best_per_row:
            best, best_per_row = b, t
    _best_size_cache[key] = best
    return best


def floor_callable(
    model: Any,
    x1: np.ndarray,
    rows: int,
    keys: Sequence[str],
    target: int | None = None,
    batch_size: int | None = None,
) -> Callable[[], None]:
    """A callable doing ``rows`` model rows (forward, plus backward when the keys
    hold gradients) in chunks of ``batch_size`` (default: the best one).

    The rows are copies of ``x1[0]``, built once outside the callable: the floor
    is the model's own cost, nothing else.
    """
    b = batch_size or floor_batch_size(model, x1, keys, target, max_rows=max(rows, 1))
    b = max(1, min(b, rows))
    full, rest = divmod(rows, b)
    xb, xr = _tile(x1, b), _tile(x1, rest) if rest else None
    tb = None if target is None else np.full(b, target, dtype=np.int64)
    tr = None if target is None else np.full(rest, target, dtype=np.int64)
    keys = list(keys)

    def run() -> None:
        for _ in range(full):
            model(xb, tb, keys)
        if rest:
            model(xr, tr, keys)

    run.batch_size = b  # type: ignore[attr-defined]
    return run


def model_floor(
    model: Any,
    rows: int,
    keys: Sequence[str],
    x1: np.ndarray,
    target: int | None = None,
    repeats: int = 3,
) -> float:
    """Best time (s) of ``rows`` forward(+backward) rows at the best batch size.

    Prefer timing :func:`floor_callable` interleaved with the method (see
    :func:`time_interleaved`) so both see the same machine load.
    """
    return time_call(floor_callable(model, x1, rows, keys, target), repeats).best


# --------------------------------------------------------------------------- reference


class _NumpyTwoShim(types.ModuleType):
    """numpy, except ``quantile(interpolation=...)`` (removed in numpy 2) maps to
    ``method=...``.  Installed only into the reference's own modules."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                 keepdims=False, *, interpolation=None):
        return np.quantile(a, q, axis=axis, out=out, overwrite_input=overwrite_input,
                           method=interpolation or method, keepdims=keepdims)


@functools.lru_cache(maxsize=1)
def reference_core() -> types.ModuleType:
    """``saliency.core`` (PAIR 0.2.1), patched for numpy 2 inside this process only."""
    import saliency.core as ref

    if int(np.__version__.split(".")[0]) >= 2:
        from saliency.core import guided_ig

        guided_ig.np = _NumpyTwoShim()
    return ref
