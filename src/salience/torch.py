"""PyTorch adapter: ``salience.torch.wrap(module, layer=...)`` -> Model.

The module is never changed for good: during each call its modules are in eval
mode and its parameters stop requiring gradients (only input and layer
gradients are computed), and everything is restored afterwards, also when the
call raises.

Calls may run concurrently from several threads on one module (or on modules
sharing submodules), with results equal to serial calls:

- the mode and ``requires_grad`` changes are reference-counted per module and
  per parameter under one lock: the first call that needs a change makes it and
  the last call holding it restores it, so no call ever sees another call's
  restore;
- the Grad-CAM layer has one forward hook while any call needs it (also
  reference-counted), which stores the layer's output only for the call running
  in the current thread;
- Guided Backprop changes nothing shared: it gives the guided rule to the ReLU
  nodes of the call's own autograd graph.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._adapter import (
    CallKind,
    DeviceRows,
    FrameworkModel,
    check_reshape,
    images_of_rows,
    layer_not_found,
    score_rule_error,
    target_fn_error,
    toeplitz_index,
    warn_caller,
)

__all__ = ["wrap", "TorchModel", "ModuleWeights", "find_layer", "last_conv_layer"]

# Spatial torch layers whose 4-D outputs are always (n, C, h, w).
_NCHW_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

TargetFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# PyTorch's CPU convolution of one image of at most this many values runs its own
# kernel, not oneDNN's, unless the input lies in channels-last memory (its use_mkldnn
# rule, "native is faster" for these; the step shows at 82 -> 83 px RGB on the tiny CNN).
_NATIVE_CONV_MAX_VALUES = 20480


def wrap(
    module: nn.Module,
    layer: nn.Module | str | None = None,
    *,
    target_fn: TargetFn | None = None,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    batch_size: int = 64,
    reshape: Any = "auto",
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
    reshape : 'auto', (h, w), callable or None
        How the ``layer``'s output becomes a feature map for the CAM methods.
        ``'auto'``: a vision transformer block's ``(n, tokens, features)``
        output loses its class (and distillation) token and its patch tokens
        are laid out on their square grid, ``(n, features, h, w)``;
        convolution outputs are left as they are.  ``(h, w)`` for a
        non-square grid, a numpy function for other layouts, None to take the
        output as it is.  See :func:`salience._adapter.layer_grid`.  Gradient
        methods do not use it.

    Notes
    -----
    The first call for each input shape runs the module once on one row
    (without gradients) to learn its output shape (and the layer's), so that
    targets, the input's rank and the layer's token grid are checked before
    any real work.

    On the CPU, images for a channels-first module with convolutions are
    handed over in channels-last memory (``torch.channels_last``; the tensor
    is still (n, C, H, W)), on which PyTorch's CPU convolutions run faster; a
    module that refuses such a tensor in that first run (a ``.view()`` of its
    input) gets contiguous memory for that input shape.  A single image of at
    most 20480 values (up to 82 x 82 RGB) stays contiguous: PyTorch's own
    kernel for it is faster than oneDNN's.  Results differ from contiguous
    memory only by float rounding.

    References
    ----------
    Dosovitskiy et al. "An Image is Worth 16x16 Words: Transformers for Image
    Recognition at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929
    """
    return TorchModel(module, layer, target_fn=target_fn, device=device,
                      channels_last=channels_last, batch_size=batch_size, reshape=reshape)


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
        raise layer_not_found(layer, [n for n in named if n])
    raise TypeError(f"layer must be an nn.Module or a dotted name, got {type(layer).__name__}")


def last_conv_layer(module: nn.Module) -> str | None:
    """Dotted name of Grad-CAM's usual layer, or None: the module's last ``Conv2d``;
    in a vision transformer (attention blocks after the last convolution, which is
    then the patch embedding) the first ``LayerNorm`` of the last attention block,
    the input of its attention (timm's ``blocks.<last>.norm1``)."""
    last_conv = last_block = None  # (position in module order, name)
    for position, (name, m) in enumerate(module.named_modules()):
        if isinstance(m, nn.Conv2d):
            last_conv = (position, name)
        elif any(isinstance(c, nn.MultiheadAttention) or type(c).__name__.endswith("Attention")
                 for c in m.children()):  # a transformer block holds its attention directly
            last_block = (position, name)
    if last_block is not None and (last_conv is None or last_block[0] > last_conv[0]):
        block = module.get_submodule(last_block[1])
        norms = [name for name, m in block.named_children() if isinstance(m, nn.LayerNorm)]
        if norms:
            return f"{last_block[1]}.{norms[0]}"
    return None if last_conv is None else last_conv[1]


class TorchModel(FrameworkModel):
    """A PyTorch module seen through the :class:`salience.model.Model` protocol."""

    supports_guided = True
    #: Every host array becomes a new framework array before the model sees it, so
    #: methods need not copy the caller's input first (see salience.model.Model).
    copies_input = True

    def __init__(self, module, layer=None, *, target_fn=None, device=None,
                 channels_last=False, batch_size=64, reshape="auto"):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if target_fn is not None and not callable(target_fn):
            raise TypeError(f"target_fn must be callable, got {type(target_fn).__name__}")
        self.module = module
        self.layer = None if layer is None else find_layer(module, layer)
        self.has_layer = self.layer is not None
        self.reshape = check_reshape(reshape)
        self._layer_rows: dict[tuple[int, ...], tuple[int, ...] | None] = {}
        self.target_fn = target_fn
        self.channels_last = bool(channels_last)
        self.predict_batch_size = int(batch_size)
        first = next(module.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self.dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        self.expected_channels = conv.in_channels if conv is not None else None
        # Input shapes (without the batch axis) the module takes only in contiguous memory.
        self._contiguous_shapes: set[tuple[int, ...]] = set()
        self._float64_ok: bool | None = None  # whether the device has float64 (array_ops)

    @property
    def on_accelerator(self) -> bool:
        """Whether the module runs off the host CPU (CUDA, MPS, ...), where rows built
        on its device (:meth:`noisy_rows`) cost the host nothing."""
        return self.device.type != "cpu"

    def noisy_rows(self, images: np.ndarray, owners: np.ndarray, scales: np.ndarray,
                   seeds: np.ndarray) -> DeviceRows:
        """Gaussian-noised rows built on the module's device.

        Row ``r`` is ``images[owners[r]] + scales[owners[r]] * z_r``, where
        ``z_r`` holds float32 standard normal values drawn by a torch generator
        on the device seeded with ``seeds[r]`` alone, so a row's noise does not
        depend on the rows drawn with it (any chunking gives the same rows).
        The rows are in the module's dtype; pass them back as ``x``.
        """
        used, index = images_of_rows(images, owners)
        z = torch.empty((len(owners), *images.shape[1:]), dtype=torch.float32,
                        device=self.device)
        generator = torch.Generator(device=self.device)
        for row, seed in enumerate(seeds.tolist()):
            generator.manual_seed(seed)
            torch.randn(z.shape[1:], generator=generator, out=z[row])
        scale = torch.as_tensor(scales[owners], dtype=self.dtype, device=self.device)
        rows = torch.addcmul(self._tensor(used)[torch.as_tensor(index, device=self.device)],
                             scale.reshape(-1, *[1] * (z.ndim - 1)), z.to(self.dtype))
        if self._channels_last_memory(rows.shape):
            rows = rows.contiguous(memory_format=torch.channels_last)
        return DeviceRows(rows, used, _np)

    def filtered_rows(self, images: np.ndarray, owners: np.ndarray,
                      terms: Sequence[tuple[np.ndarray, np.ndarray]],
                      axes: tuple[int, int]) -> DeviceRows:
        """Rows made on the module's device by separable filters of ``images``, in
        the module's dtype: the rows ``filtered_rows`` of :class:`salience.model.Model`
        describes (Blur IG's path points and their rates).  Only the kernels go to the
        device; the matrices are gathered there.  Pass the rows back as ``x``, or
        ``numpy.asarray`` them.
        """
        used, index = images_of_rows(images, owners)
        with torch.no_grad():
            x = self._tensor(used)[torch.as_tensor(index, device=self.device)]
            h, w = axes[0] + 1, axes[1] + 1
            planes = x.movedim((h, w), (-2, -1))  # (rows, ..., H, W)
            height, width = planes.shape[-2:]
            lead = (len(owners),) + (1,) * (planes.ndim - 3)  # broadcast over channels
            total = None
            for k_h, k_w in terms:
                a_h = self._filter_matrices(k_h).reshape(*lead, height, height)
                a_w = self._filter_matrices(k_w).reshape(*lead, width, width)
                term = a_h @ planes @ a_w.transpose(-1, -2)
                total = term if total is None else total.add_(term)
            assert total is not None, "filtered_rows needs at least one term"
            rows = total.movedim((-2, -1), (h, w))
            memory = (torch.channels_last if self._channels_last_memory(rows.shape)
                      else torch.contiguous_format)
            rows = rows.contiguous(memory_format=memory)
        return DeviceRows(rows, used, _np)

    def array_ops(self) -> _TorchArrayOps | None:
        """Array operations on the module's device, for a method that keeps its
        arrays there between calls (Guided IG's ``select_on``); None on a device
        without float64 (Apple's MPS), which the walk's positions need."""
        if self._float64_ok is None:
            try:
                torch.zeros(1, dtype=torch.float64, device=self.device)
                self._float64_ok = True
            except (TypeError, RuntimeError):
                self._float64_ok = False
        return _TorchArrayOps(self) if self._float64_ok else None

    def _filter_matrices(self, kernels: np.ndarray) -> torch.Tensor:
        """The ``(rows, size, size)`` filter matrices of ``(rows, 2 * size - 1)``
        kernels, gathered on the device (see :func:`salience._adapter.toeplitz_index`)."""
        size = (kernels.shape[1] + 1) // 2
        taps = torch.as_tensor(kernels, dtype=self.dtype, device=self.device)
        return taps[:, _toeplitz_index_on(size, self.device)]

    def _tensor(self, x: np.ndarray | DeviceRows, probing: bool = False) -> torch.Tensor:
        if isinstance(x, DeviceRows):
            return x.values  # built on the device (noisy_rows, filtered_rows)
        # A host array is always copied: a module that writes into its input must not reach
        # the caller's array.
        x = np.asarray(x)
        if not x.dtype.isnative:  # big-endian data (FITS files): torch takes native order only
            x = x.astype(x.dtype.newbyteorder("="))
        if not self._channels_last_memory(x.shape, probing):
            if x.flags.c_contiguous:
                return torch.tensor(x, device=self.device, dtype=self.dtype)
            # torch.tensor keeps a strided array's layout: the callback's (n, C, H, W) view
            # of an (n, H, W, C) batch would run in channels-last memory, whose kernels
            # are slower on one small image and round otherwise (max pooling then
            # settles near-ties the other way than explain's contiguous image).
            return self._copied(x, torch.contiguous_format)
        # (n, C, H, W) values laid out (n, H, W, C) in memory (torch.channels_last), by
        # torch's copy: 2.2-2.5x faster than numpy's transposing one (32 x 3 x 32 x 32:
        # 41 against 105 us; 8 x 3 x 224 x 224: 445 against 1046 us).
        return self._copied(x, torch.channels_last)

    def _copied(self, x: np.ndarray, memory_format: torch.memory_format) -> torch.Tensor:
        """A copy of ``x`` on the model's device, in its dtype and ``memory_format``."""
        if not x.flags.writeable or any(step < 0 for step in x.strides):
            x = np.array(x)  # torch.from_numpy takes neither
        out = torch.empty(x.shape, dtype=self.dtype, device=self.device,
                          memory_format=memory_format)
        return out.copy_(torch.from_numpy(x))

    def _channels_last_memory(self, shape: tuple[int, ...], probing: bool = False) -> bool:
        """Whether a batch shaped ``shape`` goes to the module in channels-last memory.

        oneDNN's CPU convolutions run faster on it (EfficientNet-Lite0 forward and
        backward at 8 rows: 28% less time; the tiny CNN of bench/ at 25 rows: 24%);
        a module that cannot take it (a ``.view()`` of its input or of an
        activation) keeps contiguous memory, as found by the shape probe, which
        tries the memory any batch of its shape may get (``probing``), or by the
        first batch that fails in it (see :meth:`_in_memory_it_takes`).

        A single small image stays contiguous: PyTorch then runs its own
        convolution kernel instead of oneDNN's, faster there (the tiny CNN, one
        image, forward and backward: 32 px 196 us against 278 us in channels-last
        memory, 82 px 517 against 953 us; from 83 px, past the limit, oneDNN in
        channels-last memory is the faster again).
        """
        return (len(shape) == 4 and not self.channels_last and self.device.type == "cpu"
                and self.expected_channels is not None
                and tuple(shape[1:]) not in self._contiguous_shapes
                and (probing or shape[0] != 1 or math.prod(shape[1:]) > _NATIVE_CONV_MAX_VALUES))

    def _check_kind(self, kind: CallKind) -> None:
        if kind.guided:
            _check_guided_possible(self.module)

    def _probe(self, x: np.ndarray) -> tuple[int, ...] | None:
        def probe(xt: torch.Tensor) -> tuple[int, ...] | None:
            # The same pass notes the layer's output shape (for the token grid check).
            with self._explaining(), torch.no_grad(), self._tapped(self.has_layer,
                                                                   shape_only=True) as seen:
                out = self.module(xt)
            if self.has_layer:
                self._layer_rows[x.shape[1:]] = seen.get("shape")
            return tuple(out.shape) if isinstance(out, torch.Tensor) else None

        return self._in_memory_it_takes(self._tensor(x, probing=True), probe)

    def _probe_layer(self, x: np.ndarray) -> tuple[int, ...] | None:
        if x.shape[1:] not in self._layer_rows:  # _probe normally ran first, for the output
            self._probe(x)
        return self._layer_rows.get(x.shape[1:])

    def _predict(self, x: np.ndarray) -> np.ndarray:
        def predict(xt: torch.Tensor) -> np.ndarray:
            with self._explaining(), torch.no_grad():
                return _np(self.module(xt))

        return self._in_memory_it_takes(self._tensor(x), predict)

    def _in_memory_it_takes(self, xt: torch.Tensor, run: Callable[[torch.Tensor], Any]) -> Any:
        """``run(xt)``; if it fails on a batch in channels-last memory and runs in
        contiguous memory, that result, and batches of this shape stay contiguous
        (the shape probe and every call go through here).

        The one-row probe cannot always tell: a module that takes ``.view()`` of an
        activation fails on channels-last batches of several rows, while one row
        (whose batch stride is free) may pass.
        """
        try:
            return run(xt)
        except Exception as error:  # a .view() raises RuntimeError; a module's own check, any
            if not (xt.dim() == 4 and not xt.is_contiguous()
                    and xt.is_contiguous(memory_format=torch.channels_last)):
                raise
            try:
                result = run(xt.detach().contiguous())
            except Exception:
                raise error from None  # not the memory layout: the module's own error
            self._contiguous_shapes.add(tuple(xt.shape[1:]))
            return result

    def _run(self, x: np.ndarray | DeviceRows, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        target_t = self._targets_for_scores(targets)
        return self._in_memory_it_takes(self._tensor(x),
                                        lambda xt: self._run_on(xt, target_t, kind))

    def _targets_for_scores(self, targets: np.ndarray | None) -> torch.Tensor | int | None:
        """``targets`` as :meth:`_scores` takes them: one class index for every row as
        an int (a column of the output: its backward costs ~15 us less per call than a
        gather's on a small model), else a tensor (a ``target_fn`` always gets one)."""
        if targets is None:
            return None
        if self.target_fn is None and targets.ndim == 1 and (
                len(targets) == 1 or bool((targets == targets[0]).all())):
            return int(targets[0])
        return torch.as_tensor(targets, device=self.device)

    def _run_on(self, xt: torch.Tensor, target_t: torch.Tensor | int | None,
                kind: CallKind) -> dict[str, np.ndarray]:
        with self._explaining():
            if not (kind.input or kind.layer):
                with torch.no_grad():
                    return {"scores": _np(self._scores(self.module(xt), target_t))}
            if not (kind.input or kind.layer_gradients):  # the layer's values alone
                with torch.no_grad(), self._tapped(True) as captured:
                    scores = self._scores(self.module(xt), target_t)
                self._check_layer_ran(captured)
                return {"scores": _np(scores), "values": _np(self._in_model_layout(
                    captured["values"]))}
            with torch.enable_grad(), self._tapped(kind.layer) as captured:
                xt.requires_grad_(kind.input)
                scores = self._scores(self.module(xt), target_t)
            if kind.layer:
                self._check_layer_ran(captured)
            if kind.guided and _guide_relus(scores) == 0:
                warn_caller(
                    "Guided Backprop met no ReLU in the model (ReLU, ReLU6, or hardtanh from "
                    "0), so its map equals the plain gradient; other activations (GELU, SiLU) "
                    "have no guided rule")
            wrt = ([xt] if kind.input else []) + ([captured["values"]] if kind.layer else [])
            # Each row's score seeded with 1 (the gradient of their sum, without the sum's
            # node: ~8 us a call on a small model).
            grads = list(torch.autograd.grad(scores, wrt, grad_outputs=torch.ones_like(scores),
                                             allow_unused=True))
        out: dict[str, np.ndarray] = {"scores": _np(scores)}
        if kind.input:
            g = grads.pop(0)
            out["input"] = _np(g if g is not None else torch.zeros_like(xt))
        if kind.layer:
            g = grads.pop(0)
            values = captured["values"]
            g = g if g is not None else torch.zeros_like(values)
            out["values"] = _np(self._in_model_layout(values))
            out["layer"] = _np(self._in_model_layout(g))
        return out

    def _check_layer_ran(self, captured: dict[str, Any]) -> None:
        if "values" not in captured:
            raise ValueError(
                f"the Grad-CAM layer {type(self.layer).__name__} did not run in the "
                "model's forward pass; choose a layer the model calls")

    def _in_model_layout(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last and t.ndim == 4 and isinstance(self.layer, _NCHW_LAYERS):
            # these torch layers are (n, C, h, w) by definition; use the model's layout
            return t.movedim(1, -1)
        return t

    def _scores(self, outputs: Any, targets: torch.Tensor | int | None) -> torch.Tensor:
        if self.target_fn is not None:
            scores = self.target_fn(outputs, targets)
            rows = len(outputs) if hasattr(outputs, "__len__") else None
            if not isinstance(scores, torch.Tensor) or scores.ndim != 1 \
                    or (rows is not None and scores.shape[0] != rows):
                raise target_fn_error(getattr(scores, "shape", type(scores).__name__), rows)
            return scores
        if not isinstance(outputs, torch.Tensor):
            raise score_rule_error((type(outputs).__name__,))
        if outputs.ndim != 2:
            raise score_rule_error(tuple(outputs.shape))
        if targets is None:
            return outputs.max(dim=1).values
        if isinstance(targets, int):
            return outputs[:, targets]
        if targets.ndim == 1:
            return outputs.gather(1, targets[:, None])[:, 0]
        return (outputs * targets.to(outputs.dtype)).sum(dim=1)

    @contextlib.contextmanager
    def _explaining(self) -> Iterator[None]:
        """Eval mode and frozen parameters for the call, shared with concurrent calls.

        Inside a call of this thread that holds them already (a method run, see
        :meth:`calls_of_one_run`, or a ``target_fn``'s nested call) nothing is
        changed again: walking every module and parameter costs ~0.3 ms per call
        on EfficientNet-Lite0, more than a row of a fast model.
        """
        holding = _thread_holding()
        if id(self) in holding:
            yield
            return
        modules, parameters = _modules_and_parameters(self.module)
        changes: list[tuple[Any, str, bool]] = [(m, "training", False) for m in modules]
        changes += [(p, "requires_grad", False) for p in parameters]
        held = _SHARED.hold(changes)
        holding.add(id(self))
        try:
            yield
        finally:
            holding.discard(id(self))
            _SHARED.release(held)

    def calls_of_one_run(self) -> contextlib.AbstractContextManager[None]:
        """Eval mode and frozen parameters once for all the calls of a method run on
        this thread (calls from other threads hold them for themselves)."""
        return self._explaining()

    @contextlib.contextmanager
    def _tapped(self, want_layer: bool, shape_only: bool = False) -> Iterator[dict[str, Any]]:
        """The layer's output in this thread's forward pass, under ``"values"``
        (with ``shape_only``: only its shape per row, under ``"shape"``)."""
        captured: dict[str, Any] = {"shape_only": True} if shape_only else {}
        if not want_layer:
            yield captured
            return
        layer = self.layer
        with _LOCK:
            tap = _TAPS.get(id(layer))
            if tap is None:
                tap = _TAPS[id(layer)] = [layer.register_forward_hook(_tap_hook), 0]
            tap[1] += 1
        slots = _thread_slots()
        outer = slots.get(id(layer))  # a call nested in this thread's call (a target_fn's)
        slots[id(layer)] = captured
        try:
            yield captured
        finally:
            if outer is None:
                del slots[id(layer)]
            else:
                slots[id(layer)] = outer
            with _LOCK:
                tap[1] -= 1
                if tap[1] == 0:
                    tap[0].remove()
                    del _TAPS[id(layer)]


# -- state shared by concurrent calls ---------------------------------------------------------

_LOCK = threading.Lock()
_THREAD = threading.local()
#: id(layer) -> [hook handle, number of calls using it]
_TAPS: dict[int, list[Any]] = {}


class _SharedChanges:
    """Attribute changes to objects shared between concurrent calls (a module's
    ``training``, a parameter's ``requires_grad``), held by reference count.

    Each ``(object, attribute)`` is set by the first call that needs it changed and
    restored by the last call holding it, so a call that ends never undoes a
    change another call still relies on.
    """

    def __init__(self) -> None:
        # (id(obj), attr) -> [obj, holders, original value]; obj keeps the id valid
        self._held: dict[tuple[int, str], list[Any]] = {}

    def hold(self, changes: Sequence[tuple[Any, str, Any]]) -> list[tuple[int, str]]:
        """Make each ``(obj, attr, value)`` change unless it is held already; return
        the keys to :meth:`release`."""
        keys = []
        with _LOCK:
            for obj, attr, value in changes:
                key = (id(obj), attr)
                entry = self._held.get(key)
                if entry is None:
                    original = getattr(obj, attr)
                    if original == value:
                        continue  # nothing to change, nothing to restore
                    entry = self._held[key] = [obj, 0, original]
                    _set(obj, attr, value)
                entry[1] += 1
                keys.append(key)
        return keys

    def release(self, keys: Sequence[tuple[int, str]]) -> None:
        """Give back what :meth:`hold` took; the last holder restores the original."""
        with _LOCK:
            for key in keys:
                entry = self._held[key]
                entry[1] -= 1
                if entry[1] == 0:
                    del self._held[key]
                    _set(entry[0], key[1], entry[2])


def _modules_and_parameters(root: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """Every module under ``root`` (itself included) and their parameters, as
    ``modules()`` and ``parameters()`` give them but by walking the registries
    directly: 3 us instead of 11 on a small CNN, 48 instead of 192 on
    EfficientNet-Lite0, once per method run."""
    modules, seen = [root], {id(root)}
    for module in modules:  # the list grows as it is read: breadth first
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
    parameters, seen = [], set()
    for module in modules:
        for parameter in module._parameters.values():
            if parameter is not None and id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    return modules, parameters


def _set(obj: Any, attr: str, value: Any) -> None:
    if attr == "requires_grad":
        obj.requires_grad_(value)
    else:
        setattr(obj, attr, value)


_SHARED = _SharedChanges()


def _thread_holding() -> set[int]:
    """Wrappers (by id) whose eval mode and frozen parameters this thread holds now."""
    holding = getattr(_THREAD, "holding", None)
    if holding is None:
        holding = _THREAD.holding = set()
    return holding


def _thread_slots() -> dict[int, dict[str, Any]]:
    """This thread's running calls that want a layer's output: id(layer) -> its slot."""
    slots = getattr(_THREAD, "slots", None)
    if slots is None:
        slots = _THREAD.slots = {}
    return slots


def _tap_hook(layer: nn.Module, _inputs: Any, output: Any) -> Any:
    slot = _thread_slots().get(id(layer))
    if slot is None:
        return None  # a forward pass of another thread, or of a call without Grad-CAM
    if slot.get("shape_only"):  # a probe: note the shape, change nothing
        slot["shape"] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
        return None
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the Grad-CAM layer {type(layer).__name__} returns {type(output).__name__}, "
            "not a tensor; choose a layer with one tensor output")
    if not output.requires_grad:
        # Frozen weights and an input without gradients: start the graph here.
        output = output.detach().requires_grad_(True)
    slot["values"] = output
    # The rest of the model gets a copy, so an in-place op after the layer
    # (ReLU(inplace=True)) can neither change the captured values nor fail on a leaf.
    return output.clone()


# -- Guided Backprop ----------------------------------------------------------------------


def _positive_part(grad_outputs: tuple) -> tuple:
    return tuple(None if g is None else g.clamp(min=0) for g in grad_outputs)


# Autograd nodes that run compiled code: the ReLUs inside them are out of reach.
_OPAQUE_NODES = {
    "CppFunction": "a TorchScript graph",
    "CompiledFunctionBackward": "a torch.compile graph",
}


def _guide_relus(scores: torch.Tensor) -> int:
    """Give every ReLU of the call's autograd graph Guided Backprop's rule.

    A ReLU node's backward passes the gradient where the forward input was > 0
    (and < 6 for ReLU6, a hardtanh from 0); a pre-hook that keeps only the
    incoming gradient's positive part completes the guided rule.  The hooks
    belong to this call's graph alone, so concurrent calls and later plain
    gradients are unaffected, and every way of writing a ReLU is covered
    (modules, functions, tensor methods, torch.export graphs).  Returns the
    number of ReLUs guided.
    """
    count = 0
    seen: set[Any] = set()
    stack = [scores.grad_fn]
    while stack:  # a walk over the finite graph, each node once
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name in _OPAQUE_NODES:
            raise ValueError(
                f"Guided Backprop cannot reach the ReLUs inside {_OPAQUE_NODES[name]} (autograd "
                f"node {name}), so its guided gradient cannot be computed; explain the eager "
                "module instead")
        if name.startswith("ReluBackward") or (
            name.startswith("HardtanhBackward") and getattr(node, "_saved_min_val", None) == 0
        ):
            node.register_prehook(_positive_part)
            count += 1
        stack.extend(child for child, _ in node.next_functions)
    return count


def _check_guided_possible(module: nn.Module) -> None:
    """Refuse, before running it, a module whose ReLUs run as compiled code."""
    for sub in module.modules():
        if isinstance(sub, torch.jit.ScriptModule):
            why = ("TorchScript (torch.jit.script/trace) runs it in its own interpreter, which "
                   "fuses the backward pass into graphs whose ReLUs are out of reach")
        elif type(sub).__module__.startswith("torch._dynamo"):
            why = "torch.compile runs it as one compiled graph; wrap module._orig_mod"
        else:
            continue
        raise ValueError(
            f"Guided Backprop cannot change the ReLU backward rule inside "
            f"{type(sub).__name__}: {why}; explain the eager module instead")


@functools.lru_cache(maxsize=8)
def _toeplitz_index_on(size: int, device: torch.device) -> torch.Tensor:
    """:func:`salience._adapter.toeplitz_index` on ``device``, made once (a tensor of
    the read-only array would share it, which torch warns about)."""
    return torch.tensor(toeplitz_index(size), device=device)


def _np(t: torch.Tensor) -> np.ndarray:
    """As numpy: float64 stays float64 (a double-precision model keeps its precision);
    half and bfloat16 become float32, which numpy handles everywhere."""
    t = t.detach()
    if t.dtype != torch.float64:
        t = t.float()
    return t.cpu().numpy()


class _TorchArrayOps:
    """:class:`salience.methods.guided_ig.selection.ArrayOps` for tensors on a
    :class:`TorchModel`'s device."""

    def __init__(self, model: TorchModel) -> None:
        self.model = model

    def asarray(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, device=self.model.device)

    def to_host(self, values: torch.Tensor) -> np.ndarray:
        return _np(values)

    def where(self, condition: torch.Tensor, a: Any, b: Any) -> torch.Tensor:
        return torch.where(condition, a, b)

    def kth_smallest(self, values: torch.Tensor, k: int) -> torch.Tensor:
        return torch.kthvalue(values, k + 1, dim=1, keepdim=True).values

    def concat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))

    def row_sums(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(dim=1)

    def any(self, values: torch.Tensor) -> bool:
        return bool(values.any())

    def rows(self, values: torch.Tensor, one_row: np.ndarray) -> DeviceRows:
        model = self.model
        rows = values.reshape(len(values), *one_row.shape[1:]).to(model.dtype)
        if model._channels_last_memory(rows.shape):
            rows = rows.contiguous(memory_format=torch.channels_last)
        return DeviceRows(rows, one_row, _np)


class ModuleWeights:
    """Copy, inspect and re-initialise the layers of a ``torch.nn.Module`` (what the
    model-randomisation sanity check, :mod:`salience.metrics.sanity`, needs)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def layers(self, every: bool = False) -> list[str]:
        """Names of the layers with weight matrices (of every layer with ``every``)."""
        return [
            name for name, sub in self.module.named_modules()
            if name and (every or any(p.ndim >= 2 for p in sub.parameters(recurse=False)))
        ]

    def copy(self) -> Any:
        return copy.deepcopy(self.module)

    def state(self, work: Any) -> dict[str, Any]:
        return {k: v.clone() for k, v in work.state_dict().items()}

    def restore(self, work: Any, state: dict[str, Any]) -> None:
        work.load_state_dict(state)

    def wrap(self, work: Any, kwargs: dict[str, Any]) -> Any:
        return wrap(work, **kwargs)

    def random_state(self) -> Any:
        return torch.random.fork_rng(devices=[])

    def reinitialise(self, work: Any, name: str, seed: int) -> None:
        """The layer's own init scheme (``reset_parameters``) when it has one."""
        layer = dict(work.named_modules())[name]
        torch.manual_seed(seed)
        with torch.no_grad():
            if callable(getattr(layer, "reset_parameters", None)):
                layer.reset_parameters()
                return
            for p in layer.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.01
                p.normal_(0.0, std)
