"""Engines: they move batches between the two stages of :mod:`salience.dataset.work`
and hand the results to the store's writer; they compute nothing themselves.

- :class:`LocalEngine` (the default, no extra dependency): one process; a
  thread reads and prepares the next batches while the model explains the
  current one, and another thread writes the finished ones; at most a few
  batches are in flight, so memory stays flat however many images there are.
- :class:`RayEngine` (``pip install salience[ray]``): a Ray Data pipeline,
  ``from_items`` (or the given Dataset) -> ``map_batches(prepare_batch)`` as
  CPU tasks -> ``map_batches`` on a pool of actors, each building the model
  once -> the driver, which writes.  Ray starts locally when no address is
  given and joins a cluster with ``address``; Ray restarts a killed actor and
  retries its batch.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..checks import check_nonnegative, check_positive_int
from ..concurrency import helper_thread
from .sources import Item, item_batches, item_columns
from .store import Commit
from .work import Plan, explain_batch, prepare_batch

__all__ = ["ENGINES", "Engine", "Job", "LocalEngine", "RayEngine", "build_model", "check_layout",
           "get_engine"]


@dataclass
class Job:
    """What an engine runs.

    Attributes
    ----------
    plan : Plan
    factory : callable
        Builds the model (called once per process or actor).
    items : sequence of Item, optional
        Files to explain (file sources).
    dataset : ray.data.Dataset, optional
        Rows to explain (a Dataset source), instead of ``items``.
    done : frozenset of str
        Ids the store has; the CPU stage skips them.
    write : callable
        Commits one explained batch (:meth:`StoreWriter.write`).
    progress : callable, optional
        Called with each :class:`Commit`.
    model : optional
        A model already built by ``factory`` in this process (the local engine
        uses it instead of building another).
    """

    plan: Plan
    factory: Callable[[], Any]
    write: Callable[[dict[str, np.ndarray]], Commit]
    items: Sequence[Item] | None = None
    dataset: Any = None
    done: frozenset[str] = frozenset()
    progress: Callable[[Commit], None] | None = None
    model: Any = None


class Engine(Protocol):
    """Runs a :class:`Job`: every batch through ``prepare_batch``, ``explain_batch``
    and ``job.write``, in any order, each exactly once."""

    name: str

    def run(self, job: Job) -> None: ...


def build_model(factory: Callable[[], Any], plan: Plan | None = None) -> Any:
    """Call ``factory`` and wrap what it returns (a LoadedModel, a framework model
    or a salience Model); with a plan, check the model's layout against it."""
    from .._adapter import wrap_native
    from ..loading import LoadedModel

    built = factory()
    if isinstance(built, LoadedModel):
        built = built.model
    model = wrap_native(built)
    if plan is not None:
        check_layout(model, plan.preprocessing)
    return model


def check_layout(model: Any, preprocessing: Any) -> None:
    """Raise if the model's input layout is not the one the preprocessing gives."""
    layout = getattr(model, "channels_last", None)
    if layout is not None and bool(layout) != preprocessing.channels_last:
        def name(last: bool) -> str:
            return "channels-last" if last else "channels-first"

        raise ValueError(
            f"the model takes {name(bool(layout))} inputs but the preprocessing gives "
            f"{name(preprocessing.channels_last)} ones; set Preprocessing(channels_last=...) "
            "to match the model"
        )


class LocalEngine:
    """One process: a reader thread prepares ahead, the calling thread runs the
    model, a writer thread commits.

    Parameters
    ----------
    read_ahead : int
        Batches prepared ahead of the model (and finished batches waiting for
        the writer); bounds memory.
    """

    name = "local"

    def __init__(self, read_ahead: int = 2) -> None:
        self.read_ahead = check_positive_int(read_ahead, "read_ahead")

    def run(self, job: Job) -> None:
        model = job.model if job.model is not None else build_model(job.factory, job.plan)
        batches = _local_batches(job)
        prepared: deque[Future] = deque()
        written: deque[Future] = deque()

        def write(result: dict[str, np.ndarray]) -> Commit:
            commit = job.write(result)
            if job.progress is not None:
                job.progress(commit)  # from the writer thread, as soon as it is committed
            return commit

        def collect(keep: int) -> None:
            while len(written) > keep:
                written.popleft().result()  # raises what the writer raised

        with helper_thread("salience-read") as reader, \
                helper_thread("salience-write") as writer:

            def read_next() -> None:
                batch = next(batches, None)
                if batch is not None:
                    prepared.append(reader.submit(prepare_batch, batch, job.plan, job.done))

            try:
                for _ in range(self.read_ahead):
                    read_next()
                while prepared:
                    batch = prepared.popleft().result()
                    read_next()
                    result = explain_batch(model, batch, job.plan)
                    del batch
                    written.append(writer.submit(write, result))
                    del result
                    collect(self.read_ahead - 1)
                collect(0)
            finally:
                # Batches already explained are committed before returning (also on
                # Ctrl-C): their work is done, and each commit is atomic.  (Leaving the
                # block drops what the reader has not started.)
                wait_for(written)


def _local_batches(job: Job) -> Iterator[dict[str, Any]]:
    size = job.plan.batch_size
    if job.items is not None:
        yield from item_batches(job.items, size)
        return
    with _quiet_ray_data(job.dataset):
        yield from job.dataset.iter_batches(batch_size=size, batch_format="numpy")


@contextlib.contextmanager
def _quiet_ray_data(dataset: Any) -> Iterator[None]:
    """No Ray Data progress output while a run reads a Dataset (the caller shows its own)."""
    context = dataset.context
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = bars


# Ray Data keeps columns in Arrow blocks.  Its tensor columns (ndarrays of rows) were
# seen to fail converting sliced blocks back to numpy ("buffer is too small for
# requested array"), so between stages every array row travels as .npy bytes and
# every other object (XRAI's regions) pickled: plain binary columns.
_NPY, _PICKLED = "#npy", "#pickled"


def _to_ray(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch as one-dimensional columns of numbers, strings and bytes."""
    out: dict[str, np.ndarray] = {}
    for name, column in batch.items():
        column = np.asarray(column)
        if column.ndim > 1:
            out[name + _NPY] = _objects([_npy_bytes(row) for row in column])
        elif column.dtype == object and not all(v is None or isinstance(v, str)
                                                for v in column):
            out[name + _PICKLED] = _objects([pickle.dumps(v, protocol=5) for v in column])
        else:
            out[name] = column
    return out


def _from_ray(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of :func:`_to_ray`."""
    out: dict[str, Any] = {}
    for name, column in batch.items():
        if name.endswith(_NPY):
            # A block may join batches that lacked the column (a method that failed on a
            # whole batch): such rows hold nothing that is read, and get zeros.
            rows = [None if b is None else np.load(io.BytesIO(b), allow_pickle=False)
                    for b in column]
            present = [r for r in rows if r is not None]
            if present:
                out[name[: -len(_NPY)]] = np.stack(
                    [np.zeros_like(present[0]) if r is None else r for r in rows])
        elif name.endswith(_PICKLED):
            out[name[: -len(_PICKLED)]] = _objects([pickle.loads(b) for b in column])
        else:
            out[name] = column
    return out


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _npy_bytes(row: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, row, allow_pickle=False)
    return buffer.getvalue()


def _prepare_for_ray(batch: dict[str, np.ndarray], plan: Plan,
                     done: frozenset[str]) -> dict[str, np.ndarray]:
    """The CPU stage as a Ray task."""
    return _to_ray(prepare_batch(_from_ray(batch), plan, done))


class _ExplainActor:
    """A Ray actor of the model stage: builds the model once, then explains batches."""

    def __init__(self, factory: Callable[[], Any], plan: Plan) -> None:
        from ..runtime import retain_freed_memory

        # The actor's process exists for the model alone: keep freed activation memory
        # for reuse, as the salience command does (EfficientNet-Lite0 at 32 rows per
        # call was measured 2x slower per row without it; see salience.runtime).
        retain_freed_memory()
        self.plan = plan
        self.model = build_model(factory, plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _to_ray(explain_batch(self.model, _from_ray(batch), self.plan))


class RayEngine:
    """Ray Data: CPU tasks prepare, a pool of model actors explains, the driver writes.

    Parameters
    ----------
    workers : int
        Model actors (each builds the model once).
    address : str, optional
        A running Ray cluster (``ray start --head`` prints it; ``"auto"`` finds
        the local one).  None starts Ray in this process when it is not running
        yet, and stops it at the end.
    cpus_per_worker, gpus_per_worker : float
        Resources each model actor reserves (a GPU actor's model must put
        itself on ``cuda``: the model factory decides the device).
    prepare_cpus : float
        CPUs each preparing task reserves (reading, decoding, resizing, XRAI's
        segmentation), so preparing never waits for the model actors' cores.
    object_store_mb : int
        Object store size of a locally started Ray.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 prepare_cpus: float = 0.5, object_store_mb: int = 300) -> None:
        self.workers = check_positive_int(workers, "workers")
        self.address = address
        self.cpus_per_worker = check_nonnegative(cpus_per_worker, "cpus_per_worker")
        self.gpus_per_worker = check_nonnegative(gpus_per_worker, "gpus_per_worker")
        self.prepare_cpus = check_nonnegative(prepare_cpus, "prepare_cpus")
        self.object_store_mb = check_positive_int(object_store_mb, "object_store_mb")

    def run(self, job: Job) -> None:
        ray = _import_ray()
        started = self._start(ray)
        try:
            plan = job.plan
            if job.items is not None:
                source = ray.data.from_items(
                    [_item_row(item) for item in job.items],
                    override_num_blocks=max(1, math.ceil(len(job.items) / plan.batch_size)))
            else:
                source = job.dataset
            prepared = source.map_batches(
                _prepare_for_ray, fn_kwargs={"plan": plan, "done": job.done},
                batch_size=plan.batch_size, batch_format="numpy", num_cpus=self.prepare_cpus)
            explained = prepared.map_batches(
                _ExplainActor, fn_constructor_kwargs={"factory": job.factory, "plan": plan},
                # One batch at a time per actor: queued batches would wait behind a busy
                # actor while another is free (with few batches, one actor took them all).
                compute=ray.data.ActorPoolStrategy(size=self.workers,
                                                   max_tasks_in_flight_per_actor=1),
                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None,
                batch_size=plan.batch_size, batch_format="numpy")
            with _quiet_ray_data(explained):
                # No prefetching: it held each finished batch back until the next one
                # was done, so a stopped run lost one more batch than it had to.
                for batch in explained.iter_batches(batch_size=None, batch_format="numpy",
                                                    prefetch_batches=0):
                    commit = job.write(_from_ray(batch))
                    if job.progress is not None:
                        job.progress(commit)
        finally:
            if started:
                ray.shutdown()

    def _start(self, ray) -> bool:
        if ray.is_initialized():
            return False
        if self.address is not None:
            ray.init(address=self.address, log_to_driver=False)
            return True
        from ..runtime import usable_cores

        needed = self.workers * self.cpus_per_worker + self.prepare_cpus
        ray.init(num_cpus=max(usable_cores(), math.ceil(needed)),
                 num_gpus=math.ceil(self.workers * self.gpus_per_worker) or None,
                 object_store_memory=self.object_store_mb * 2**20,
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 runtime_env=_same_imports())
        return True


def _same_imports() -> dict[str, Any]:
    """Local workers import the salience this process runs (and the rest of its
    PYTHONPATH, made absolute): workers may start in another directory."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    entries = [here] + [os.path.abspath(e) for e in
                        os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(entries))}}


def _item_row(item: Item) -> dict[str, Any]:
    columns = item_columns([item])
    return {k: v[0] for k, v in columns.items()}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the engine's API
    except ImportError as err:
        raise ImportError(
            "engine='ray' needs Ray Data: pip install 'salience[ray]' (or use the default "
            f"engine='local') ({err})"
        ) from err
    return ray


#: Engine names accepted by :func:`salience.explain_dataset` and ``--engine``.
ENGINES = {"local": LocalEngine, "ray": RayEngine}


def get_engine(engine: str | Engine, **options: Any) -> Engine:
    """An engine by name (with its options) or the engine given."""
    if not isinstance(engine, str):
        if options:
            raise ValueError(f"options {sorted(options)} apply to engine names only; set them "
                             f"on the {type(engine).__name__} instance")
        return engine
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    cls = ENGINES[engine]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        raise ValueError(
            f"engine {engine!r} takes no option(s) {sorted(options)}; the 'ray' engine takes "
            "workers, address, cpus_per_worker, gpus_per_worker, prepare_cpus"
        ) from None
    return cls(**options)
