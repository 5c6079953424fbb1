"""PyTorch adapter: ``salience.torch.wrap(module, layer=...)`` -> Model.

The module is never changed: during each call it is put in eval mode and its
parameters stop requiring gradients (only input and layer gradients are
computed); modes, ``requires_grad`` flags and hooks are restored afterwards,
also when the call raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ._adapter import FrameworkModel, score_rule_error
from .model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

__all__ = ["wrap", "TorchModel", "find_layer"]

TargetFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def wrap(
    module: nn.Module,
    layer: nn.Module | str | None = None,
    *,
    target_fn: TargetFn | None = None,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    batch_size: int = 64,
) -> TorchModel:
    """Wrap a ``torch.nn.Module`` as a salience Model.

    Parameters
    ----------
    module : torch.nn.Module
        The classifier; called on float tensors shaped like the inputs.
    layer : nn.Module or str, optional
        The layer whose activations and gradients Grad-CAM uses: the module
        itself or its dotted name in ``module.named_modules()``.
    target_fn : callable, optional
        ``target_fn(outputs, targets) -> (n,)`` score per row, computed in
        torch; see :class:`salience._adapter.FrameworkModel` for the default
        rule (class index, one-hot/weight rows, or the top class).
    device : torch device, optional
        Where inputs are sent; default: the module's parameters' device.
    channels_last : bool
        True if the module takes (n, H, W, C) inputs; default (n, C, H, W).
    batch_size : int
        Chunk size of :meth:`TorchModel.predict`.
    """
    return TorchModel(module, layer, target_fn=target_fn, device=device,
                      channels_last=channels_last, batch_size=batch_size)


def find_layer(module: nn.Module, layer: nn.Module | str) -> nn.Module:
    """Resolve a layer given as a submodule or as its dotted name."""
    named = dict(module.named_modules())
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in named.values()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    if isinstance(layer, str):
        if layer in named and layer != "":
            return named[layer]
        names = [n for n in named if n]
        shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
        raise ValueError(f"the model has no layer named {layer!r}; available layers: {shown}")
    raise TypeError(f"layer must be an nn.Module or a dotted name, got {type(layer).__name__}")


class TorchModel(FrameworkModel):
    """A PyTorch module seen through the :class:`salience.model.Model` protocol."""

    def __init__(self, module, layer=None, *, target_fn=None, device=None,
                 channels_last=False, batch_size=64):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if target_fn is not None and not callable(target_fn):
            raise TypeError(f"target_fn must be callable, got {type(target_fn).__name__}")
        self.module = module
        self.layer = None if layer is None else find_layer(module, layer)
        self.has_layer = self.layer is not None
        self.target_fn = target_fn
        self.channels_last = bool(channels_last)
        self.predict_batch_size = int(batch_size)
        first = next(module.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self.dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        self.expected_channels = conv.in_channels if conv is not None else None

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), device=self.device).to(self.dtype)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        with self._explaining(), torch.no_grad():
            return self.module(self._tensor(x)).float().cpu().numpy()

    def _run(self, x, targets, keys):
        want_input = INPUT_OUTPUT_GRADIENTS in keys or GUIDED_INPUT_GRADIENTS in keys
        want_layer = CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys
        xt = self._tensor(x)
        target_t = None if targets is None else torch.as_tensor(np.asarray(targets), device=self.device)
        guided = GUIDED_INPUT_GRADIENTS in keys
        with self._explaining(), _guided_relus(self.module, guided):
            if not (want_input or want_layer):
                with torch.no_grad():
                    scores = self._scores(self.module(xt), target_t)
                return {OUTPUT_LAYER_VALUES: _np(scores)}
            captured: dict[str, torch.Tensor] = {}
            with torch.enable_grad(), self._capture(captured, want_layer):
                xt.requires_grad_(want_input)
                scores = self._scores(self.module(xt), target_t)
                wrt = ([xt] if want_input else []) + ([captured["layer"]] if want_layer else [])
                grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
        out: dict[str, np.ndarray] = {OUTPUT_LAYER_VALUES: _np(scores)}
        grads = list(grads)
        if want_input:
            g = grads.pop(0)
            g = _np(g) if g is not None else np.zeros(x.shape, dtype=np.float32)
            out[GUIDED_INPUT_GRADIENTS if guided else INPUT_OUTPUT_GRADIENTS] = g
        if want_layer:
            g = grads.pop(0)
            out[CONVOLUTION_LAYER_VALUES] = _np(captured["layer"])
            out[CONVOLUTION_OUTPUT_GRADIENTS] = (
                _np(g) if g is not None else np.zeros_like(out[CONVOLUTION_LAYER_VALUES]))
        return out

    def _scores(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if self.target_fn is not None:
            scores = self.target_fn(outputs, targets)
            if not isinstance(scores, torch.Tensor) or scores.shape != (outputs.shape[0],):
                raise ValueError(
                    "target_fn must return a tensor of one score per row, shape "
                    f"({outputs.shape[0]},), got {getattr(scores, 'shape', type(scores))}")
            return scores
        if outputs.ndim != 2:
            raise score_rule_error(tuple(outputs.shape))
        if targets is None:
            return outputs.max(dim=1).values
        if targets.ndim == 1:
            if int(targets.max()) >= outputs.shape[1]:
                raise ValueError(
                    f"target {int(targets.max())} is out of range for a model with "
                    f"{outputs.shape[1]} outputs")
            return outputs.gather(1, targets.long()[:, None])[:, 0]
        if targets.shape != outputs.shape:
            raise ValueError(
                f"one-hot/weight targets have shape {tuple(targets.shape)} but the model "
                f"outputs {tuple(outputs.shape)}")
        return (outputs * targets.to(outputs.dtype)).sum(dim=1)

    @contextlib.contextmanager
    def _explaining(self) -> Iterator[None]:
        """Eval mode and frozen parameters for the call; everything restored after."""
        modes = [(m, m.training) for m in self.module.modules()]
        flags = [(p, p.requires_grad) for p in self.module.parameters()]
        try:
            self.module.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for m, mode in modes:
                m.training = mode
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def _capture(self, captured: dict[str, torch.Tensor], want_layer: bool) -> Iterator[None]:
        if not want_layer:
            yield
            return

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor):
            if not output.requires_grad:
                # Frozen weights and an input without gradients: start the graph here.
                output = output.detach().requires_grad_(True)
            captured["layer"] = output
            return output

        handle = self.layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@contextlib.contextmanager
def _guided_relus(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Guided Backprop's ReLU rule during the call (not supported yet)."""
    if enabled:
        raise NotImplementedError("Guided Backprop is not implemented for PyTorch yet")
    yield


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
