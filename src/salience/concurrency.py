"""The one place where salience starts threads.

numpy, scipy, scikit-image and the frameworks release the GIL in their
kernels, so a method's own array work can run beside the model's.  Three
small primitives cover every use; methods never touch ``threading`` or
``concurrent.futures`` themselves:

- :func:`helper_thread`: one helper thread that runs jobs one at a time, in
  the order given (the row scheduler builds, prepares and consumes chunks on
  it while the model runs in the caller's thread);
- :func:`take_turns`: lanes that take turns with the model, each lane's
  follow-up work running on a helper thread while the model serves the
  next lane (Guided IG's two halves);
- :func:`worker_pool`: a pool of workers, sized by :func:`spare_workers` from
  the cores this process may use, whose jobs the caller claims and runs
  itself when no worker has started them yet (XRAI's segmentation, PIC's
  thresholded images).

Leaving any of them, normally or by an exception, drops the jobs no thread
has started and waits for the running ones, so no thread outlives the call
and an error surfaces without first finishing the queue.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from . import runtime

__all__ = [
    "HelperThread",
    "Job",
    "WorkerPool",
    "helper_thread",
    "spare_workers",
    "take_turns",
    "worker_pool",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- one helper thread


class HelperThread:
    """One thread that runs submitted jobs one at a time, in submission order."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; the returned future gives its result or raises its error."""
        return self._executor.submit(fn, *args)


@contextlib.contextmanager
def helper_thread(name: str) -> Iterator[HelperThread]:
    """A :class:`HelperThread` for the ``with`` block.

    The thread is named ``name`` (as seen in debuggers and
    ``threading.enumerate()``).  Leaving the block drops the jobs not yet
    started and waits for the running one.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        yield HelperThread(executor)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def take_turns(
    rounds: int,
    lanes: int,
    in_caller: Callable[[int, int], None],
    on_helper: Callable[[int, int], None],
    name: str,
) -> None:
    """Run ``lanes`` lanes for ``rounds`` rounds, taking turns with one helper thread.

    In every round, lane after lane, ``in_caller(lane, round)`` runs in this
    thread (typically a model call) and then ``on_helper(lane, round)`` runs
    on the helper thread, beside the next lanes' ``in_caller``.  A lane's
    ``in_caller`` first waits for that lane's previous ``on_helper``, so each
    lane sees its own steps strictly in order, and the work done does not
    depend on timing.  With one lane nothing could overlap: everything runs
    in this thread.  An error of either function stops the run within one
    turn and is raised here.
    """
    if lanes == 1:
        for turn in range(rounds):
            in_caller(0, turn)
            on_helper(0, turn)
        return
    with helper_thread(name) as helper:
        pending: list[Future[None] | None] = [None] * lanes
        for turn in range(rounds):
            for lane in range(lanes):
                previous = pending[lane]
                if previous is not None:
                    previous.result()  # this lane's last step is done (or raises its error)
                in_caller(lane, turn)
                pending[lane] = helper.submit(on_helper, lane, turn)
        for job in pending:
            if job is not None:
                job.result()


# --------------------------------------------------------------------------- a pool of workers


class Job(Generic[T]):
    """One unit of work for a :class:`WorkerPool`, run exactly once.

    :meth:`result` runs the job in the calling thread if no worker has
    started it (so the caller joins in instead of waiting in a queue), waits
    for it if a worker has, and returns its value or raises its error.
    """

    def __init__(self, fn: Callable[..., T], args: tuple) -> None:
        self._fn, self._args = fn, args
        self._lock = threading.Lock()
        self._claimed = False
        self._cancelled = False
        self._finished = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def _execute(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as error:  # handed to whoever asks for the result
            self._error = error
        finally:
            self._fn, self._args = None, ()  # type: ignore[assignment]
            self._finished.set()

    def run_if_unclaimed(self) -> None:
        """Run the job here unless some thread has already claimed it."""
        if self._claim():
            self._execute()

    def cancel(self) -> bool:
        """Drop the job if no thread has started it; return whether it was dropped."""
        if not self._claim():
            return False
        self._cancelled = True
        self._fn, self._args = None, ()  # type: ignore[assignment]
        self._finished.set()
        return True

    def done(self) -> bool:
        """Whether the job has finished (or was dropped)."""
        return self._finished.is_set()

    def result(self) -> T:
        """The job's value: run here if unstarted, else wait for the thread running it."""
        self.run_if_unclaimed()
        self._finished.wait()
        if self._cancelled:
            raise CancelledError("the job was dropped when its pool closed")
        if self._error is not None:
            raise self._error
        return self._value


class WorkerPool:
    """Worker threads taking :class:`Job` s in submission order (see :func:`worker_pool`)."""

    def __init__(self, executor: ThreadPoolExecutor | None) -> None:
        self._executor = executor
        self._jobs: list[Job] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> Job[T]:
        """Queue ``fn(*args)``; without workers it runs when its result is first asked for."""
        job: Job[T] = Job(fn, args)
        self._jobs.append(job)
        if self._executor is not None:
            self._executor.submit(job.run_if_unclaimed)
        return job

    def _close(self) -> None:
        for job in self._jobs:
            job.cancel()  # workers skip dropped jobs; a running job is left to finish
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def worker_pool(workers: int, name: str) -> Iterator[WorkerPool]:
    """A :class:`WorkerPool` of ``workers`` threads named ``name`` for the ``with`` block.

    ``workers <= 0`` starts no thread: each job then runs in the thread that
    first asks for its result.  Leaving the block drops the jobs nobody has
    started and waits for the running ones.
    """
    executor = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
                if workers > 0 else None)
    pool = WorkerPool(executor)
    try:
        yield pool
    finally:
        pool._close()


def spare_workers(jobs: int, keep_free: int = 0, at_most: int | None = None) -> int:
    """How many workers to start for ``jobs`` independent jobs.

    One per core this process may use (:func:`salience.runtime.usable_cores`)
    minus ``keep_free`` cores left to other work (the model), at most
    ``at_most`` and ``jobs``, and at least one.
    """
    count = min(jobs, runtime.usable_cores() - keep_free)
    if at_most is not None:
        count = min(count, at_most)
    return max(1, count)
