"""The base class of all batch-first methods and the layout helpers they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._validate import as_float_batch, resolve_targets
from ..model import Model, as_model
from ..schedule import check_batch_size, run_rows

__all__ = ["Method", "collect_rows", "channels_last", "spatial_axes", "to_channels_last"]


class Method:
    """A saliency method: ``method.explain(model, x, targets=None) -> maps``.

    Subclasses implement ``_explain(model, x, targets)`` on an already validated
    float batch and resolved targets; wrappers such as :class:`SmoothGrad` call
    the wrapped method's ``_explain`` directly, so validation happens once.
    """

    #: Name used in messages and reports.
    name: str = "method"

    def explain(self, model: Model, x: Any, targets: Any = None) -> np.ndarray:
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

        Returns
        -------
        ndarray
            One map per input, shaped like ``x`` (Grad-CAM: see its docs).
        """
        model = as_model(model)
        x = as_float_batch(x)
        self._check(model, x)  # before resolve_targets, which may run model.predict
        targets = resolve_targets(model, x, targets)
        return self._explain(model, x, targets)

    def _check(self, model: Model, x: np.ndarray) -> None:
        """Raise if ``x`` does not suit this method's parameters; never calls the model."""

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

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def collect_rows(
    model: Model,
    x: np.ndarray,
    targets: np.ndarray | None,
    keys: Sequence[str],
    batch_size: int,
    method: str,
) -> dict[str, np.ndarray]:
    """One row per input: return each requested output stacked over the batch."""
    batch_size = check_batch_size(batch_size)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}

    def consume(start: int, stop: int, outputs: Mapping[str, np.ndarray]) -> None:
        for k in keys:
            parts[k].append(outputs[k])

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
    return {k: np.concatenate(v) for k, v in parts.items()}


def channels_last(model: Model) -> bool:
    """The model's layout; PAIR callbacks and plain callables are channels last."""
    return bool(getattr(model, "channels_last", True))


def spatial_axes(input_ndim: int, is_channels_last: bool) -> tuple[int, int]:
    """Axes of height and width within one input (no batch axis).

    A 2-D input is (H, W); a 3-D input is (H, W, C) or (C, H, W).
    """
    if input_ndim == 2:
        return (0, 1)
    if input_ndim == 3:
        return (0, 1) if is_channels_last else (1, 2)
    raise ValueError(
        f"this method needs images shaped (H, W), (H, W, C) or (C, H, W); got inputs with "
        f"{input_ndim} dimensions per item"
    )


def to_channels_last(batch: np.ndarray, is_channels_last: bool) -> np.ndarray:
    """View a batch of images as (n, H, W, C) (a 2-D image gets C = 1)."""
    if batch.ndim == 3:
        return batch[..., None]
    if batch.ndim == 4:
        return batch if is_channels_last else np.moveaxis(batch, 1, -1)
    raise ValueError(
        f"expected a batch of images (n, H, W), (n, H, W, C) or (n, C, H, W), got shape "
        f"{batch.shape}"
    )


def from_channels_last(batch: np.ndarray, like_ndim: int, is_channels_last: bool) -> np.ndarray:
    """Inverse of :func:`to_channels_last`; ``like_ndim`` is the original batch's ndim."""
    if like_ndim == 3:
        return batch[..., 0]
    return batch if is_channels_last else np.moveaxis(batch, -1, 1)
