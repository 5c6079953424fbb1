"""The base class of all batch-first methods, and the one-row-per-input schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ..checks import as_float_batch, check_positive_int, resolve_targets
from ..model import Model, as_model, calls_of_one_run
from ..progress import ProgressEvent, in_group, progress_stage, watch_rows
from ..schedule import checked_outputs, run_rows

__all__ = ["Method", "ROW_PLACES", "check_row_place", "collect_rows", "one_call",
           "rows_on_model"]

#: Where a method can build the rows it sends to the model (SmoothGrad's ``noise_on``,
#: Blur IG's ``blur_on``, Guided IG's ``select_on``); the adapters that build them on
#: the model's device have a method for it (``noisy_rows``, ``filtered_rows``,
#: ``array_ops``).
ROW_PLACES = ("auto", "host", "model")

_ONE_ROW = np.zeros(1, dtype=np.int64)  # the image of a one-row batch's row
_M = TypeVar("_M", bound="Method")


class Method:
    """A saliency method: ``method.explain(model, x, targets=None) -> maps``.

    Subclasses implement ``_explain(model, x, targets)`` on an already validated
    float batch and resolved targets; wrappers such as :class:`SmoothGrad` call
    the wrapped method's ``_explain`` directly, so validation happens once.
    """

    #: Name used in messages and reports.
    name: str = "method"

    def explain(self, model: Model, x: Any, targets: Any = None, *,
                progress: bool | Callable[[ProgressEvent], None] | None = None) -> np.ndarray:
        """Explain a batch.

        Parameters
        ----------
        model : Model
            An adapter (``salience.torch.wrap(...)``, ...) or any callable
            following :class:`salience.model.Model`.
        x : array_like, shape (n, *input_shape)
            The inputs, batch first, in the model's layout.  Any numeric dtype;
            never modified.
        targets : None, int, sequence of n ints, or (n, n_outputs) weights
            What to explain per input: a class index, or a weight row such as
            a one-hot vector.  None explains the model's top class.
        progress : bool or callable, optional
            True draws a progress bar on stderr; a callable receives
            :class:`salience.progress.ProgressEvent` objects as the model
            returns rows (see :func:`salience.explain`).  Default: silent.

        Returns
        -------
        ndarray
            One map per input, shaped like ``x`` (Grad-CAM: see its docs).
        """
        model = as_model(model)
        # Methods only read x; the copy guards the caller's array against a model that
        # writes into its input, which an adapter copying it first cannot.
        x = as_float_batch(x, copy=not getattr(model, "copies_input", False))
        self._check(model, x)  # before resolve_targets, which may run model.predict
        if progress is None:  # the common call: no progress contexts to enter
            targets = resolve_targets(model, x, targets)
            keys = self._row_keys() if len(x) == 1 else None
            if keys is not None:  # one input of a one-row method: one call, nothing to schedule
                return self._single_row_map(model, x, targets, keys)
            if self._runs_one_call(len(x)):  # the call sets itself up: no run to set up
                return self._explain(model, x, targets)
            with calls_of_one_run(model):
                return self._explain(model, x, targets)
        with progress_stage(progress, "explain", len(x), len(x)) as stage:
            targets = resolve_targets(model, x, targets)
            with in_group(stage, self.name, 0, len(x), 0), calls_of_one_run(model):
                return self._explain(model, x, targets)

    def _check(self, model: Model, x: np.ndarray) -> None:
        """Raise if ``x`` does not suit this method's parameters; never calls the model."""

    def _runs_one_call(self, n: int) -> bool:
        """Whether a run on ``n`` inputs makes exactly one model call.  Such a run skips
        :func:`salience.model.calls_of_one_run`, whose setting up and undoing for the
        run would come on top of the call's own (the torch adapter's eval mode:
        ~7 us, 2% of one image through the tiny CNN of ``bench/``)."""
        return False

    def resolved_for(self, model: Model) -> Method:
        """This method with every setting that the model decides made explicit for
        ``model`` (itself when there is none): what a stored run records, so that
        resuming it with a model that would decide otherwise is refused."""
        return self

    def _place_resolved(self: _M, setting: str, on_model: bool) -> _M:
        """This method with its row place ``setting`` (``"auto"``) made ``"model"``
        or ``"host"``, for :meth:`resolved_for` (itself when it is explicit)."""
        if getattr(self, setting) != "auto":
            return self
        resolved = copy.copy(self)
        setattr(resolved, setting, "model" if on_model else "host")
        return resolved

    # A subclass overrides one of these two.  ``_explain_copies`` is for methods
    # with per-input parameters (one baseline per input): SmoothGrad hands them a
    # batch holding ``copies`` consecutive noisy copies of each original input.
    def _explain(self, model: Model, x: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
        if type(self)._explain_copies is Method._explain_copies:
            raise NotImplementedError(f"{type(self).__name__} must implement _explain")
        return self._explain_copies(model, x, targets, 1)

    def _explain_copies(
        self, model: Model, x: np.ndarray, targets: np.ndarray | None, copies: int
    ) -> np.ndarray:
        return self._explain(model, x, targets)

    # Methods whose map of an input comes from that input's own model row alone
    # (Gradients, Guided Backprop, Input x Gradient) name the outputs they need and
    # make a row's map from them: a wrapper can then stream rows through the model
    # without keeping every row (SmoothGrad over such a method).
    def _row_keys(self) -> list[str] | None:
        """The model outputs of a row that make its map; None: not a one-row method
        (such a method also has a ``batch_size``, its rows per model call)."""
        return None

    def _row_maps(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The maps of ``rows`` from their model ``outputs`` (see :meth:`_row_keys`)."""
        raise NotImplementedError(f"{type(self).__name__} has no maps of single rows")

    def _single_row_map(self, model: Model, x: np.ndarray, targets: np.ndarray | None,
                        keys: list[str]) -> np.ndarray:
        """The map of a one-row batch from one model call (see :func:`one_call`)."""
        outputs = one_call(model, x, targets, keys, self.name)
        return np.array(self._row_maps(x, outputs), dtype=x.dtype)  # never the model's buffer

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def one_call(model: Model, x: np.ndarray, targets: np.ndarray | None, keys: Sequence[str],
             method: str) -> dict[str, np.ndarray]:
    """The model's checked outputs (see :func:`salience.schedule.checked_outputs`) for
    a batch it takes in one call, shown to a progress watcher as the row scheduler
    shows a chunk.  One call has nothing to schedule: going around the scheduler
    saves ~13 us a call, 3% of one image through the tiny CNN of ``bench/``."""
    row_image = _ONE_ROW if len(x) == 1 else np.arange(len(x))
    return checked_outputs(watch_rows(model, row_image)(x, targets, keys), x.shape, keys, 0,
                           row_image, method)


def check_row_place(place: Any, name: str) -> str:
    """``place`` if it is one of :data:`ROW_PLACES`; else a ValueError naming ``name``."""
    if not isinstance(place, str) or place not in ROW_PLACES:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, ROW_PLACES))}, got {place!r}")
    return place


def rows_on_model(model: Model, place: str, builder: str, name: str,
                  available: bool | None = None) -> bool:
    """Whether a run builds its rows on the model's device, with the adapter's
    method ``builder``: ``place`` is ``"model"`` (an error, raised before the model
    runs, when the model cannot) or ``"auto"`` with a model on an accelerator that
    can (there the host's own work per row would outweigh the model's; on a CPU
    the host builds the rows at least as fast).  ``available`` says whether the
    model can, when having ``builder`` is not enough to know."""
    has = callable(getattr(model, builder, None))
    can = has if available is None else available
    if place == "model" and not can:
        why = (f"{type(model).__name__}.{builder}() returned None here (its documentation "
               "says what it needs)" if has else f"{type(model).__name__} has no {builder}")
        raise ValueError(
            f"{name}='model' needs a model that builds its rows on its device "
            f"(salience.torch.wrap, salience.jax.wrap or salience.keras.wrap); {why}. "
            f"Use {name}='host' (or 'auto')")
    return place == "model" or (place == "auto" and can
                                and bool(getattr(model, "on_accelerator", False)))


def collect_rows(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    keys: Sequence[str],
    batch_size: int,
    method: str,
    copy: bool = True,
) -> dict[str, np.ndarray]:
    """One row per input: return each requested output stacked over the batch.

    Each call's rows are copied into new arrays as they arrive (a model may
    answer every call from one buffer), in the memory order of the model's
    first answer (PyTorch's channels-last memory stays channels-last).  With
    ``copy=False`` the model's own arrays are returned when one call answered
    every row: for a caller that reads them before the model runs again and
    returns only arrays of its own (a CAM kernel), the copy is wasted work.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    if len(x) <= batch_size:  # one call: nothing to schedule or stack
        outputs = one_call(model, x, targets, keys, method)
        return {k: np.array(outputs[k], order="K") if copy else outputs[k] for k in keys}
    stacked: dict[str, np.ndarray] = {}

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        for k in keys:
            part = outputs[k]
            if not copy and start == 0 and stop == len(x):
                stacked[k] = part
                continue
            if k not in stacked:
                stacked[k] = np.empty_like(part, shape=(len(x), *part.shape[1:]))
            stacked[k][start:stop] = part

    run_rows(
        model,
        keys,
        np.arange(len(x)),
        lambda start, stop: x[start:stop],
        consume,
        targets,
        batch_size,
        method,
    )
    return stacked
