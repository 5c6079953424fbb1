""":func:`explain_dataset`: explain every image of a source into a resumable store."""

from __future__ import annotations

import functools
import hashlib
import inspect
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import channels_last
from ..checks import check_nonnegative_int, check_positive_int, check_progress
from ..io import Preprocessing
from ..methods.base import Method
from ..progress import Stage, progress_stage
from ..runner import resolve_methods
from .engines import Engine, Job, build_model, check_layout, get_engine
from .sources import is_ray_dataset, list_items
from .store import Commit, StoreWriter, open_results
from .work import MAP_DTYPES, Plan

__all__ = ["DatasetSummary", "explain_dataset", "model_identity"]


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`explain_dataset` did.

    Attributes
    ----------
    out : Path
        The store.
    done : int
        Images explained by this run.
    failed : int
        Images this run could not read (failed records, with their reason).
    skipped : int
        Images the store had already (from an earlier run, or listed twice).
    seconds : float
        Wall time of the run (model loading and the HTML summary excluded).
    total : int
        Images in the store after the run (each once).
    """

    out: Path
    done: int
    failed: int
    skipped: int
    seconds: float
    total: int

    @property
    def images_per_second(self) -> float:
        """Images this run handled (explained or failed) per second."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.done} images explained, {self.failed} failed, {self.skipped} skipped "
                f"(already done) in {self.seconds:.1f} s ({self.images_per_second:.2f} "
                f"images/s); {self.total} images in {self.out}")


def explain_dataset(
    source: Any,
    model: Any,
    methods: Sequence[str | Method] | Mapping[str, Method] | str,
    out: str | Path,
    *,
    targets: int | None = None,
    engine: str | Engine = "local",
    batch_size: int = 32,
    resume: bool = True,
    metrics: bool = False,
    preprocessing: Preprocessing | None = None,
    labels: Callable[[int], str] | None = None,
    seed: int = 0,
    map_dtype: str = "float32",
    top_k: int = 5,
    report_sample: int = 8,
    model_id: str | None = None,
    progress: Any = None,
    **engine_options: Any,
) -> DatasetSummary:
    """Explain every image of a source and write records, maps and a summary to ``out``.

    Parameters
    ----------
    source : paths or ray.data.Dataset
        Image files, folders (searched recursively), list files (``.txt``,
        ``.csv``, ``.parquet`` with a ``path`` and optional ``target`` and
        ``label`` column) or a ``ray.data.Dataset`` with ``path`` or ``image``
        rows; see :mod:`salience.dataset.sources`.
    model : Model, framework model, LoadedModel, or a zero-argument factory
        Anything :func:`salience.explain` takes, a
        :class:`salience.loading.LoadedModel`, or a function called with no
        arguments that returns one of these (each Ray worker calls it once).
    methods : names, Method instances, or {name: Method}
        As in :func:`salience.explain`.
    out : path
        The store (see :mod:`salience.dataset.store`); created if missing.
    targets : int, optional
        One class to explain in every image.  None: each image's ``target``
        from the source, else its top class.
    engine : 'local', 'ray' or an Engine
        ``'local'`` runs in this process; ``'ray'`` on Ray Data (options below).
    batch_size : int
        Images per batch and largest number of rows per model call.
    resume : bool
        Continue the store in ``out``, skipping images it has (a store written
        with other parameters is refused); False replaces it.  Where SmoothGrad
        draws its noise, Blur IG blurs and Guided IG walks (``noise_on``,
        ``blur_on`` and ``select_on`` ``"auto"``: on an accelerator or on the
        host) count as parameters when the model is built here (the local
        engine, or a model object); Ray workers that build the model
        themselves decide them each, so give them explicitly for workers of
        mixed devices.
    metrics : bool
        Insertion/deletion AUC and SIC/AIC per map.
    preprocessing : Preprocessing, optional
        How files become model inputs; default: the LoadedModel's, else
        224x224 RGB with ImageNet normalisation in the model's layout.
    labels : callable, optional
        ``labels(class_index) -> str`` for the HTML summary.
    seed : int
        Mixed into the per-image seeds of random methods (SmoothGrad).
    map_dtype : {'float32', 'float16'}
        Precision of the stored maps.
    top_k : int
        Classes and probabilities recorded per image.
    report_sample : int
        Images with a page of their own in the HTML summary (0: no pages; the
        summary is written whenever matplotlib and Jinja2 are installed).
    model_id : str, optional
        The model's identity in the manifest (a resumed run must have the
        same); default: the class and a hash of the weights (PyTorch, Keras),
        or the factory's name.
    progress : bool or callable, optional
        True draws a bar on stderr (images, images/s, time left, failures); a
        callable receives a :class:`salience.progress.ProgressEvent` (stage
        ``"dataset"``, units are images of this run, ``failed`` so far) after
        each committed batch, from the thread that commits (the local engine's
        writer thread).  When the source's length is unknown (a Dataset) the
        total grows with the images seen.
    **engine_options
        For ``engine='ray'``: ``workers`` (model actors, default 2),
        ``address`` (a running cluster; default: start Ray here),
        ``cpus_per_worker``, ``gpus_per_worker``, ``prepare_cpus``.

    Returns
    -------
    DatasetSummary

    Raises
    ------
    salience.dataset.ParameterMismatchError
        ``resume`` into a store written with other parameters (the message
        names them).
    salience.dataset.StoreError
        ``out`` holds other files, or another run is writing to it.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    check_progress(progress)
    check_positive_int(top_k, "top_k")
    report_sample = check_nonnegative_int(report_sample, "report_sample")
    if map_dtype not in MAP_DTYPES:
        raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
    if targets is not None:
        targets = check_nonnegative_int(targets, "targets")
    engine = get_engine(engine, **engine_options)
    resolved = resolve_methods(methods, batch_size)

    loaded = _loaded(model)
    factory = _factory(model)
    built = None
    if engine.name == "local" or factory is None:
        built = build_model(factory or (lambda: model))
    if preprocessing is None:
        preprocessing = _default_preprocessing(loaded, built)
    if built is not None:
        check_layout(built, preprocessing)
        # Settings the model decides (where SmoothGrad draws its noise, where Blur IG
        # blurs) are recorded as decided, so a resume on another device is refused
        # instead of mixing maps.
        resolved = {name: method.resolved_for(built) for name, method in resolved.items()}
    if labels is None and loaded is not None:
        labels = loaded.labels
    plan = Plan(resolved, preprocessing, batch_size, targets, bool(metrics), top_k, map_dtype,
                check_nonnegative_int(seed, "seed"))
    if factory is None:
        factory = functools.partial(_same, loaded.model if loaded is not None else model)

    if is_ray_dataset(source):
        items, dataset = None, source
    else:
        items, dataset = list_items(source), None
    parameters = {**plan.parameters(),
                  "model": model_id or model_identity(model if built is None else built,
                                                      loaded, factory if built is None else None)}
    writer = StoreWriter(out, parameters, methods=list(plan.methods), metrics=plan.metrics,
                         resume=resume, shard_rows=batch_size, map_dtype=map_dtype,
                         run_info=_run_info(engine))
    try:
        prefiltered = 0
        if items is not None:
            todo = [item for item in items if not writer.is_done(item.path)]
            prefiltered, items = len(items) - len(todo), todo
        total = None if items is None else len(items)
        start = time.perf_counter()
        complete = False
        try:
            with progress_stage(progress, "dataset", total or 0, total or 0) as stage:
                engine.run(Job(plan=plan, factory=factory, write=writer.write, items=items,
                               dataset=dataset, done=frozenset(writer.done_ids),
                               progress=_progress(stage, writer, total),
                               model=built if engine.name == "local" else None))
            complete = True
        finally:
            seconds = time.perf_counter() - start
            writer.finish(complete, seconds)
        results = open_results(out)
        _write_summary(results, plan, labels, report_sample)
    finally:
        writer.close()
    return DatasetSummary(out=Path(out), done=writer.explained, failed=writer.failed,
                          skipped=writer.skipped + prefiltered, seconds=seconds,
                          total=len(results))


def _progress(stage: Stage | None, writer: StoreWriter, total: int | None):
    """What the engine calls after each commit: an event of the images this run handled."""
    if stage is None:
        return None

    def report(commit: Commit) -> None:
        handled = writer.explained + writer.failed
        if total is None:  # a Dataset of unknown length: the total is what was seen
            stage.total = max(stage.total, handled)
        stage.emit(None, range(handled - commit.explained - commit.failed, handled), handled,
                   failed=writer.failed)

    return report


def _write_summary(results, plan: Plan, labels, report_sample: int) -> None:
    try:
        from .summary import write_summary
    except ImportError:  # pragma: no cover - without matplotlib/jinja2 the store is complete
        return
    write_summary(results, plan.preprocessing, labels=labels, sample=report_sample)


def _same(model: Any) -> Any:
    return model


def _loaded(model: Any):
    from ..loading import LoadedModel

    return model if isinstance(model, LoadedModel) else None


def _factory(model: Any) -> Callable[[], Any] | None:
    """``model`` if it is a function to call with no arguments (a model factory)."""
    if not (inspect.isfunction(model) or inspect.ismethod(model)
            or isinstance(model, functools.partial)):
        return None
    try:
        inspect.signature(model).bind()
    except TypeError:
        return None  # a model(x, targets, keys) function
    return model


def _default_preprocessing(loaded, built: Any = None) -> Preprocessing:
    if loaded is not None:
        return loaded.preprocessing
    if built is not None:
        return Preprocessing(channels_last=channels_last(built))
    return Preprocessing()


def model_identity(model: Any, loaded: Any = None, factory: Any = None) -> str:
    """A string naming the model: class and a SHA-256 of the weights for PyTorch and
    Keras models, the factory's qualified name (and arguments) for a factory."""
    if factory is not None:
        if isinstance(factory, functools.partial):
            args = ", ".join([repr(a) for a in factory.args]
                             + [f"{k}={v!r}" for k, v in factory.keywords.items()])
            return f"factory {_qualname(factory.func)}({args})"
        return f"factory {_qualname(factory)}"
    name = loaded.name if loaded is not None else type(model).__qualname__
    weights = _weights_hash(model)
    return f"{name} weights sha256:{weights}" if weights else name


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _weights_hash(model: Any) -> str | None:
    native = model
    for attribute in ("module", "model"):  # the torch and Keras adapters keep the model here
        if getattr(model, attribute, None) is not None:
            native = getattr(model, attribute)
            break
    digest = hashlib.sha256()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(native, torch.nn.Module):
        for key, tensor in native.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    get_weights = getattr(native, "get_weights", None)
    if callable(get_weights):
        for weights in get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        return digest.hexdigest()[:16]
    return None


def _run_info(engine: Engine) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

    versions = {"salience": __version__, "python": platform.python_version()}
    for package in ("numpy", "torch", "tensorflow", "jax", "pyarrow", "zarr", "ray"):
        if package == "ray" and engine.name != "ray":
            continue
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    info: dict[str, Any] = {"engine": engine.name, "versions": versions,
                            "machine": platform.platform()}
    for option in ("workers", "address", "cpus_per_worker", "gpus_per_worker"):
        if hasattr(engine, option):
            info[option] = getattr(engine, option)
    return info
