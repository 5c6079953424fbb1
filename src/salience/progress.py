"""Progress of long calls: events, a bar on stderr, and the row counter the scheduler feeds.

``salience.explain(..., progress=True)``, ``Method.explain(..., progress=True)``
and ``salience.metrics.evaluate_maps(..., progress=True)`` draw a bar on
stderr; a callable instead receives one :class:`ProgressEvent` at each step
(a method starting on a group of images, the model returning rows, a stage
ending), at most every :data:`EVENT_INTERVAL` seconds in between.  Nothing is
counted per row: the scheduler reports each model call (one chunk of
``batch_size`` rows) once.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_progress

__all__ = [
    "EVENT_INTERVAL",
    "ProgressBar",
    "ProgressEvent",
    "Stage",
    "in_group",
    "progress_stage",
]

#: Shortest time between two events about rows of the same group (starts and ends of
#: groups are always reported).
EVENT_INTERVAL = 0.1


@dataclass(frozen=True)
class ProgressEvent:
    """Where a long call is.

    Attributes
    ----------
    stage : str
        ``"predict"``, ``"explain"``, ``"metrics"``, or ``"dataset"`` for a whole
        dataset run (:func:`salience.explain_dataset`: units are images).
    method : str or None
        The method being computed or evaluated (None while predicting).
    images : range
        The images of the batch the model is working on now (indices into the
        call's batch): one image, or several when their rows share model calls.
    n_images : int
        Images in the call.
    completed : float
        Work done in this stage, in units of one method on one image
        (fractional while a group of images is under way).
    total : int
        Units of the stage: methods x images.
    elapsed : float
        Seconds since the stage started.
    failed : int
        Images that failed so far (dataset runs record them and go on).
    """

    stage: str
    method: str | None
    images: range
    n_images: int
    completed: float
    total: int
    elapsed: float
    failed: int = 0

    @property
    def fraction(self) -> float:
        """``completed / total`` (1 for an empty stage)."""
        return self.completed / self.total if self.total else 1.0

    def describe(self, names: Sequence[str] | None = None) -> str:
        """``"integrated_gradients: coffee (2/3)"`` or ``"xrai: images 1-3 of 3"``; for a
        dataset run ``"4.20 images/s, 0:12:30 left, 3 failed"``."""
        if self.stage == "dataset":
            return self._rate()
        what = self.method if self.method is not None else "predicting"
        if len(self.images) == 0:
            return what
        first, last = self.images[0], self.images[-1]
        if first == last:
            name = f"{names[first]} " if names is not None and first < len(names) else "image "
            return f"{what}: {name}({first + 1}/{self.n_images})"
        return f"{what}: images {first + 1}-{last + 1} of {self.n_images}"


    def _rate(self) -> str:
        rate = self.completed / self.elapsed if self.elapsed > 0 else 0.0
        parts = [f"{rate:.2f} images/s"]
        if rate > 0 and self.completed < self.total:
            seconds = round((self.total - self.completed) / rate)
            parts.append(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d} left")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return ", ".join(parts)


#: What the scheduler reports rows to while a call shows progress (see :func:`watch_rows`).
ROW_WATCHER: ContextVar[_Group | None] = ContextVar("salience_row_watcher", default=None)


def watch_rows(model: Any, row_image: np.ndarray) -> Any:
    """The model to call for a run of rows: ``model`` itself, or, while a call shows
    progress, a wrapper that reports each chunk the model returns.

    The row scheduler calls this once per run with the image of each row.
    """
    group = ROW_WATCHER.get()
    if group is None:
        return model
    return group.watch(model, row_image)


class Stage:
    """Reports the progress of one stage of a call to a callback.

    Use :func:`progress_stage` to make one; :meth:`group` marks a method
    working on a range of images (the rows the scheduler sends meanwhile move
    the progress within that range).
    """

    def __init__(self, report: Callable[[ProgressEvent], None], stage: str, total: int,
                 n_images: int) -> None:
        self._report = report
        self.stage = stage
        self.total = int(total)
        self.n_images = int(n_images)
        self.completed = 0.0
        self._start = time.perf_counter()
        self._last = -np.inf

    def emit(self, method: str | None, images: range, completed: float,
             force: bool = True, failed: int = 0) -> None:
        """Report ``completed`` units (never less than reported before) and ``failed``
        images."""
        now = time.perf_counter()
        self.completed = min(max(self.completed, completed), self.total)
        if not force and now - self._last < EVENT_INTERVAL:
            return
        self._last = now
        self._report(ProgressEvent(self.stage, method, images, self.n_images, self.completed,
                                   self.total, now - self._start, failed))

    @contextlib.contextmanager
    def group(self, method: str | None, first: int, stop: int, offset: float,
              units: float | None = None, rows: int | None = None) -> Iterator[_Group]:
        """Images ``first:stop`` under way with ``method``, worth ``units`` units (default
        one per image) starting at ``offset``; done when the block ends without error.

        ``rows``, when known, is how many model rows the group will send; otherwise
        the rows announced so far stand for the whole.
        """
        units = float(stop - first) if units is None else float(units)
        group = _Group(self, method, first, stop, offset, units, rows)
        self.emit(method, range(first, stop), offset)
        token = ROW_WATCHER.set(group)
        try:
            yield group
        finally:
            ROW_WATCHER.reset(token)
        self.emit(method, range(first, stop), offset + units)


class _Group:
    """Turns the rows of one group into fractional progress of the stage."""

    def __init__(self, stage: Stage, method, first, stop, offset, units, rows) -> None:
        self.stage, self.method = stage, method
        self.first, self.stop = first, stop
        self.offset, self.units = offset, units
        self.expected = rows
        self.announced = 0
        self.done = 0

    def watch(self, model: Any, row_image: np.ndarray) -> Callable:
        self.announced += len(row_image)
        base = self.done  # rows of this group before this run
        # A wrapper (SmoothGrad) may run its method on consecutive copies of each image:
        # row_image then counts copies, which map back to the group's images in order.
        count = int(row_image.max()) + 1 if len(row_image) else 0
        images = self.stop - self.first

        def image_of(row: int) -> int:
            index = int(row_image[row])
            return index * images // count if count > images else index

        def call(x, targets, keys):
            outputs = model(x, targets, keys)
            start = self.done - base
            self.done += len(x)
            self._rows_returned(image_of(start), image_of(start + len(x) - 1))
            return outputs

        return call

    def _rows_returned(self, first_image: int, last_image: int) -> None:
        total = max(self.expected or 0, self.announced)
        share = min(self.done / total, 1.0) if total else 0.0
        images = range(self.first + int(first_image), self.first + int(last_image) + 1)
        self.stage.emit(self.method, images, self.offset + self.units * share, force=False)


def in_group(stage: Stage | None, method: str | None, first: int, stop: int, offset: float,
             units: float | None = None, rows: int | None = None):
    """:meth:`Stage.group` of ``stage``, or a context that does nothing when it is None."""
    if stage is None:
        return contextlib.nullcontext()
    return stage.group(method, first, stop, offset, units, rows)


@contextlib.contextmanager
def progress_stage(progress: Any, stage: str, total: int, n_images: int,
                   image_names: Sequence[str] | None = None) -> Iterator[Stage | None]:
    """A :class:`Stage` reporting to ``progress``, or None when ``progress`` is None/False.

    ``progress`` is True (a :class:`ProgressBar` on stderr, closed at the end),
    a callable taking :class:`ProgressEvent`, or None/False.

    Raises
    ------
    TypeError
        ``progress`` is none of these.
    """
    check_progress(progress)
    if progress is None or progress is False:
        yield None
        return
    if progress is True:
        with ProgressBar(image_names=image_names) as bar:
            yield Stage(bar, stage, total, n_images)
        return
    yield Stage(progress, stage, total, n_images)


_STAGE_LABELS = {"predict": "predicting", "explain": "explaining", "metrics": "metrics",
                 "dataset": "images"}


class ProgressBar:
    """A progress bar on stderr, one line per stage, fed with :class:`ProgressEvent`.

    It names the method and the image(s) being computed and the time so far.
    Drawn with ``rich`` when it is installed (any terminal or notebook), else as
    a text line at most every 2 s.  Use it as a context manager, or call
    :meth:`close`.

    Parameters
    ----------
    image_names : sequence of str, optional
        Names of the batch's images, shown instead of their numbers.
    console : rich.console.Console, optional
        Where to draw (default: stderr).
    """

    def __init__(self, image_names: Sequence[str] | None = None, console: Any = None) -> None:
        self.image_names = list(image_names) if image_names is not None else None
        self._tasks: dict[str, Any] = {}
        self._last_line = -np.inf
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            self._rich = None
        else:
            self._rich = Progress(TextColumn("{task.fields[stage]:<10}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.description}"), transient=False,
                                  console=console or Console(stderr=True))
            self._rich.start()

    def __call__(self, event: ProgressEvent) -> None:
        text = event.describe(self.image_names)
        if self._rich is None:
            now = time.perf_counter()
            if now - self._last_line >= 2.0 or event.completed >= event.total:
                self._last_line = now
                print(f"{_STAGE_LABELS.get(event.stage, event.stage)}: {text} "
                      f"[{event.completed:.0f}/{event.total}, {event.elapsed:.0f} s]",
                      file=sys.stderr, flush=True)
            return
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._rich.add_task(text, total=event.total,
                                       stage=_STAGE_LABELS.get(event.stage, event.stage))
            self._tasks[event.stage] = task
        # A dataset run's line keeps its rate and failures at the end.
        finished = event.completed >= event.total and event.stage != "dataset"
        self._rich.update(task, completed=event.completed, total=event.total,
                          description="done" if finished else text)

    def close(self) -> None:
        """Draw the last state and stop."""
        if self._rich is not None:
            self._rich.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
