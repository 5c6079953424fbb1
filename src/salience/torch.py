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

__all__ = ["wrap", "TorchModel", "find_layer", "last_conv_layer"]

# Spatial torch layers whose 4-D outputs are always (n, C, h, w).
_NCHW_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

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
        Gradients are returned in the same layout, and so are the activations
        of a ``layer`` that is a torch convolution, normalisation or pooling
        layer (which are (n, C, h, w) by definition); any other layer of a
        channels-last model must itself return (n, h, w, C).
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


def last_conv_layer(module: nn.Module) -> str | None:
    """Dotted name of the module's last ``Conv2d`` (Grad-CAM's usual layer), or None."""
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


class TorchModel(FrameworkModel):
    """A PyTorch module seen through the :class:`salience.model.Model` protocol."""

    supports_guided = True

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
        # A copy: a module that writes into its input must not reach the caller's array.
        return torch.tensor(np.asarray(x), device=self.device, dtype=self.dtype)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        with self._explaining(), torch.no_grad():
            return _np(self.module(self._tensor(x)))

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
            g = _np(g if g is not None else torch.zeros_like(xt))
            out[GUIDED_INPUT_GRADIENTS if guided else INPUT_OUTPUT_GRADIENTS] = g
        if want_layer:
            g = grads.pop(0)
            values = captured["layer"]
            g = g if g is not None else torch.zeros_like(values)
            if self.channels_last and values.ndim == 4 and isinstance(self.layer, _NCHW_LAYERS):
                # these torch layers are (n, C, h, w) by definition; use the model's layout
                values, g = values.movedim(1, -1), g.movedim(1, -1)
            out[CONVOLUTION_LAYER_VALUES] = _np(values)
            out[CONVOLUTION_OUTPUT_GRADIENTS] = _np(g)
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
        # Only what must change is touched (and restored): an eval-mode, frozen
        # model costs no work per call.
        training = [m for m in self.module.modules() if m.training]
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        try:
            if training:
                self.module.eval()
            for p in trainable:
                p.requires_grad_(False)
            yield
        finally:
            for m in training:
                m.training = True
            for p in trainable:
                p.requires_grad_(True)

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
            # The rest of the model gets a copy, so an in-place op after the layer
            # (ReLU(inplace=True)) can neither change the captured values nor fail on a leaf.
            return output.clone()

        handle = self.layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


class _PositiveGradientInplace(torch.autograd.Function):
    """The same gate for a tensor an in-place ReLU is about to overwrite."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


_GATE_NODES = (_PositiveGradient._backward_cls, _PositiveGradientInplace._backward_cls)


def _gate(x: Any, inplace: bool) -> Any:
    """Put the positive-gradient gate in front of a ReLU's input (once).

    In backward the gate comes right after the ReLU's own rule, which already
    zeroes the gradient where the forward input was <= 0 (or >= 6 for ReLU6);
    together they give the guided rule: pass where input > 0 and gradient > 0.
    """
    if (
        not isinstance(x, torch.Tensor)
        or not x.requires_grad
        or not torch.is_grad_enabled()
        or isinstance(x.grad_fn, _GATE_NODES)
    ):
        return x
    return _PositiveGradientInplace.apply(x) if inplace else _PositiveGradient.apply(x)


def _guided_functional(
    original: Callable, applies: Callable, inplace: Callable, seen: list[int]
) -> Callable:
    """Wrap a functional ReLU so that its input passes the gate first.

    ``applies(args, kwargs)`` says whether this call is a ReLU (hardtanh only
    when its lower end is 0); ``inplace(args, kwargs)`` whether it overwrites
    its input.  ``args`` and ``kwargs`` are the call's arguments after ``input``.
    ``seen[0]`` counts the ReLUs met.
    """

    def guided(input: Any, *args: Any, **kwargs: Any) -> Any:
        if applies(args, kwargs):
            seen[0] += 1
            input = _gate(input, inplace(args, kwargs))
        return original(input, *args, **kwargs)

    guided.__wrapped__ = original  # type: ignore[attr-defined]
    return guided


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _always(args: tuple, kwargs: dict) -> bool:
    return True


def _relu_inplace(args: tuple, kwargs: dict) -> bool:  # relu(input, inplace=False)
    return bool(_argument(args, kwargs, 0, "inplace", False))


def _hardtanh_is_relu(args: tuple, kwargs: dict) -> bool:
    # hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False) clamps like ReLU6 when its
    # lower end is 0 (nn.ReLU6 calls it with 0.0 and 6.0).
    return float(_argument(args, kwargs, 0, "min_val", -1.0)) == 0.0


def _hardtanh_inplace(args: tuple, kwargs: dict) -> bool:
    return bool(_argument(args, kwargs, 2, "inplace", False))


@contextlib.contextmanager
def _guided_relus(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Guided Backprop's ReLU rule during the call, everything restored afterwards.

    While active, the backward pass of every ReLU lets a gradient through only
    where the ReLU's forward input was > 0 (and < 6 for ReLU6) and the incoming
    gradient is > 0.  Covered: ``nn.ReLU``, ``nn.ReLU6`` and ``nn.Hardtanh``
    with ``min_val=0`` modules (forward pre-hooks), and the functions
    ``torch.relu``, ``torch.relu_``, ``F.relu``, ``F.relu_``, ``F.relu6``,
    ``F.hardtanh`` / ``F.hardtanh_`` with ``min_val=0`` (patched in their
    modules for the duration of the call).  Not covered: tensor methods such as
    ``x.relu()`` and names imported before the call (``from torch.nn.functional
    import relu``).  The patch is process-wide while it lasts, so do not run
    other torch code in parallel threads during a guided call.  A call that
    meets no ReLU at all warns (its map is the plain gradient).
    """
    if not enabled:
        yield
        return
    import warnings

    import torch.nn.functional as F

    relu_modules = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
    seen = [0]

    def pre_hook(layer: nn.Module, inputs: tuple) -> tuple | None:
        if isinstance(layer, nn.Hardtanh) and float(layer.min_val) != 0.0:
            return None
        if not inputs:
            return None
        seen[0] += 1
        return (_gate(inputs[0], bool(getattr(layer, "inplace", False))), *inputs[1:])

    patches = [  # (namespace, name, is this call a ReLU, does it work in place)
        (torch, "relu", _always, lambda args, kwargs: False),
        (torch, "relu_", _always, _always),
        (F, "relu", _always, _relu_inplace),
        (F, "relu_", _always, _always),
        (F, "relu6", _always, _relu_inplace),
        (F, "hardtanh", _hardtanh_is_relu, _hardtanh_inplace),
        (F, "hardtanh_", _hardtanh_is_relu, _always),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patches]
    handles = []
    try:
        for layer in module.modules():
            if isinstance(layer, relu_modules):
                handles.append(layer.register_forward_pre_hook(pre_hook))
        for (owner, name, applies, inplace), (_, _, original) in zip(patches, originals):
            setattr(owner, name, _guided_functional(original, applies, inplace, seen))
        yield
        if seen[0] == 0:
            warnings.warn(
                "Guided Backprop met no ReLU in the model (nn.ReLU/ReLU6 or functional relu), "
                "so the map equals the plain gradient; activations written as tensor methods "
                "(x.relu()), other activations (GELU, SiLU) and compiled modules are not guided",
                RuntimeWarning,
                stacklevel=2,
            )
    finally:
        for handle in handles:
            handle.remove()
        for owner, name, original in originals:
            setattr(owner, name, original)


def _np(t: torch.Tensor) -> np.ndarray:
    """As numpy: float64 stays float64 (a double-precision model keeps its precision);
    half and bfloat16 become float32, which numpy handles everywhere."""
    t = t.detach()
    if t.dtype != torch.float64:
        t = t.float()
    return t.cpu().numpy()
