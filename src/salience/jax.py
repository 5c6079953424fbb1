"""JAX adapter: ``salience.jax.wrap(fn, params)`` -> Model.

``fn(params, x) -> outputs`` (or ``fn(x)`` when there are no params) is any
pure JAX function of a batch.  Scores, input gradients and layer gradients are
computed by one ``jax.jit``-compiled function per kind of call; the gradient of
the summed scores gives every row's gradient in one backward pass (rows are
independent), and a per-example ``fn`` is vectorised with ``jax.vmap``.

Exposing a layer for Grad-CAM
-----------------------------
JAX cannot take a gradient with respect to a value computed inside a function,
so the model is given split at the layer: ``layer_fn(params, x) -> features``
computes the model up to the layer and ``head_fn(params, features) -> outputs``
the rest, so that ``head_fn(params, layer_fn(params, x)) == fn(params, x)``.
For example, with a CNN whose last convolution block is ``features``::

    def layer_fn(p, x):
        return features(p, x)                    # (n, h, w, k), after the ReLU

    def head_fn(p, h):
        return h.mean(axis=(1, 2)) @ p["w"] + p["b"]

    model = salience.jax.wrap(lambda p, x: head_fn(p, layer_fn(p, x)), params,
                              layer_fn=layer_fn, head_fn=head_fn)

Compilation
-----------
Each kind of call (scores; input gradients; layer values and gradients; both)
compiles once per chunk size and is reused on every later call of that size,
so repeated explanations never recompile.  Sizes are compiled exactly (no
wasted rows) until ``max_compiled_sizes`` sizes exist for a kind of call;
chunks of any further size are padded (by repeating their last row, whose
results are dropped) to the smallest compiled size that fits within the next
power of two, or to that power of two, which bounds the number of compilations
whatever the number of inputs.

Concurrency
-----------
The wrapped functions are pure, so calls from several threads run concurrently
and give the serial results; the adapter's own bookkeeping (compiled sizes,
compiled functions) is updated under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._adapter import (
    INPUT,
    INPUT_AND_LAYER,
    SCORES,
    CallKind,
    DeviceRows,
    FrameworkModel,
    check_reshape,
    images_of_rows,
    target_fn_error,
    toeplitz_index,
)
from .checks import check_positive_int

__all__ = ["wrap", "JaxModel"]

TargetFn = Callable[[jax.Array, "jax.Array | None"], jax.Array]


def wrap(
    fn: Callable[..., Any],
    params: Any = None,
    *,
    layer_fn: Callable[..., Any] | None = None,
    head_fn: Callable[..., Any] | None = None,
    target_fn: TargetFn | None = None,
    channels_last: bool = True,
    batch_size: int = 64,
    channels: int | None = None,
    batched: bool = True,
    max_compiled_sizes: int = 8,
    reshape: Any = "auto",
) -> JaxModel:
    """Wrap a pure JAX function as a salience Model.

    Parameters
    ----------
    fn : callable
        ``fn(params, x) -> outputs`` on a batch ``x`` (``fn(x)`` when
        ``params`` is None).  Must be traceable by ``jax.jit``.
    params : pytree, optional
        The model's parameters, passed to every function unchanged (numpy
        leaves are copied to the device once).
    layer_fn, head_fn : callable, optional
        The model split at the layer Grad-CAM uses (see the module docs):
        ``layer_fn(params, x) -> features`` and
        ``head_fn(params, features) -> outputs``.  Give both or neither.
    target_fn : callable, optional
        ``target_fn(outputs, targets) -> (n,)`` score per row, computed in JAX
        on the outputs and the targets array (or None): regression heads, a
        region of a segmentation map, ...  Without it the score is chosen as
        described in :class:`salience._adapter.FrameworkModel` (class index,
        one-hot/weight rows, or the top class).
    channels_last : bool
        True if ``fn`` takes (n, H, W, C) images, False for (n, C, H, W).
    batch_size : int
        Chunk size of :meth:`JaxModel.predict`.
    channels : int, optional
        Number of input channels.  When given, an input with its channels on
        the other axis gets an error naming the layout instead of a shape
        error from deep inside the model.
    batched : bool
        True if the functions take batches; False if they take one input (and
        one feature map) at a time, in which case they are ``jax.vmap``-ed.
    max_compiled_sizes : int
        How many chunk sizes each kind of call compiles exactly before new
        sizes are padded (see the module docs).
    reshape : 'auto', (h, w), callable or None
        How ``layer_fn``'s output becomes a feature map for the CAM methods.
        ``'auto'``: a vision transformer block's ``(n, tokens, features)``
        output loses its class (and distillation) token and its patch tokens
        are laid out on their square grid, in the model's layout;
        convolution outputs are left as they are.  ``(h, w)`` for a
        non-square grid, a numpy function for other layouts, None to take the
        output as it is.  See :func:`salience._adapter.layer_grid`.  Gradient
        methods do not use it.

    Returns
    -------
    JaxModel
        A :class:`salience.model.Model` that also has ``predict(x)``.

    References
    ----------
    Bradbury et al. "JAX: composable transformations of Python+NumPy
    programs", 2018. http://github.com/jax-ml/jax
    """
    return JaxModel(fn, params, layer_fn=layer_fn, head_fn=head_fn, target_fn=target_fn,
                    channels_last=channels_last, batch_size=batch_size, channels=channels,
                    batched=batched, max_compiled_sizes=max_compiled_sizes, reshape=reshape)


_LAYER_VALUES = "layer values"  # the compiled function of a call without layer gradients


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _to_device(leaf: Any) -> Any:
    """numpy leaves become device arrays once; anything else is passed as it is."""
    return jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf


def _pad_rows(arr: Any, size: int) -> Any:
    if len(arr) == size:
        return arr
    xp = jnp if isinstance(arr, jax.Array) else np  # device rows stay on the device
    return xp.concatenate([arr, xp.repeat(arr[-1:], size - len(arr), axis=0)])


def _noisy(base: jax.Array, index: jax.Array, scale: jax.Array,
           key_words: jax.Array) -> jax.Array:
    """``base[index] + scale * z`` with row ``r``'s standard normals from its own
    threefry key (two uint32 words)."""
    keys = jax.random.wrap_key_data(key_words, impl="threefry2x32")
    z = jax.vmap(lambda key: jax.random.normal(key, base.shape[1:], jnp.float32))(keys)
    return base[index] + scale.reshape(-1, *[1] * (base.ndim - 1)) * z


_noisy_rows = jax.jit(_noisy)


def _filtered(base: jax.Array, index: jax.Array, kernels_h: jax.Array, kernels_w: jax.Array,
              h: int, w: int) -> jax.Array:
    """The rows of :meth:`JaxModel.filtered_rows`: ``kernels_h`` and ``kernels_w`` are
    (terms, rows, taps); ``h`` and ``w`` the batch axes of height and width."""
    planes = jnp.moveaxis(base[index], (h, w), (-2, -1))  # (rows, ..., H, W)
    height, width = planes.shape[-2:]
    lead = (planes.shape[0],) + (1,) * (planes.ndim - 3)  # broadcast over channels
    a_h = kernels_h[:, :, toeplitz_index(height)].reshape(-1, *lead, height, height)
    a_w = kernels_w[:, :, toeplitz_index(width)].reshape(-1, *lead, width, width)
    rows = (a_h @ planes[None] @ jnp.swapaxes(a_w, -1, -2)).sum(axis=0)
    return jnp.moveaxis(rows, (-2, -1), (h, w))


_filtered_rows = jax.jit(_filtered, static_argnums=(4, 5))


class JaxModel(FrameworkModel):
    """A pure JAX function seen through the :class:`salience.model.Model` protocol.

    ``trace_count`` counts how many times a computation was traced (once per
    kind of call and chunk size, see the module docs; never once per call).
    """

    supports_guided = False
    #: JAX never writes into an array it is given (its arrays are immutable), so
    #: methods need not copy the caller's input first (see salience.model.Model).
    copies_input = True
    layer_hint = ("wrap the function split at the layer, with layer_fn=... and head_fn=... "
                  "(see salience.jax)")

    def __init__(self, fn, params=None, *, layer_fn=None, head_fn=None, target_fn=None,
                 channels_last=True, batch_size=64, channels=None, batched=True,
                 max_compiled_sizes=8, reshape="auto"):
        for name, value in (("fn", fn), ("layer_fn", layer_fn), ("head_fn", head_fn),
                            ("target_fn", target_fn)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        if fn is None:
            raise TypeError("fn must be callable, got None")
        if (layer_fn is None) != (head_fn is None):
            raise ValueError(
                "give both layer_fn (params, x) -> features and head_fn (params, features) -> "
                "outputs to expose a layer for Grad-CAM, or neither; got only "
                f"{'layer_fn' if head_fn is None else 'head_fn'}")
        if isinstance(max_compiled_sizes, bool) \
                or not isinstance(max_compiled_sizes, (int, np.integer)) or max_compiled_sizes < 0:
            raise ValueError(
                f"max_compiled_sizes must be an int >= 0, got {max_compiled_sizes!r}")
        if channels is not None and (isinstance(channels, bool)
                                     or not isinstance(channels, (int, np.integer))
                                     or channels <= 0):
            raise ValueError(f"channels must be None or a positive int, got {channels!r}")
        self.fn = fn
        self.params = params
        self._params = jax.tree.map(_to_device, params)
        self.target_fn = target_fn
        self.channels_last = bool(channels_last)
        self.predict_batch_size = check_positive_int(batch_size, "batch_size")
        self.expected_channels = None if channels is None else int(channels)
        self.has_layer = layer_fn is not None
        self.reshape = check_reshape(reshape)
        self.max_compiled_sizes = int(max_compiled_sizes)
        self.trace_count = 0
        self._sizes: dict[tuple, set[int]] = {}
        self._apply = self._lift(fn, params is None, batched)
        self._layer = None if layer_fn is None else self._lift(layer_fn, params is None, batched)
        self._head = None if head_fn is None else self._lift(head_fn, params is None, batched)
        self._jitted: dict[str, Callable] = {}
        self._target_fn_checked: set[tuple] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _lift(f: Callable, no_params: bool, batched: bool) -> Callable:
        """``g(params, batch)`` from the user's function."""
        g = (lambda p, x: f(x)) if no_params else f
        return g if batched else jax.vmap(g, in_axes=(None, 0))

    # -- scores -------------------------------------------------------------------

    def _scores(self, outputs: Any, targets: Any) -> jax.Array:
        if self.target_fn is not None:
            return self.target_fn(outputs, targets)
        if targets is None:
            return outputs.max(axis=1)
        if targets.ndim == 1:
            return jnp.take_along_axis(outputs, targets[:, None], axis=1)[:, 0]
        return (outputs * targets.astype(outputs.dtype)).sum(axis=1)

    def _probe(self, x: np.ndarray) -> tuple[int, ...] | None:
        """The output shape by abstract evaluation: nothing is compiled or run."""
        out = jax.eval_shape(self._apply, self._params,
                             jax.ShapeDtypeStruct(x.shape, jnp.float32))
        return tuple(out.shape) if hasattr(out, "shape") else None

    def _probe_layer(self, x: np.ndarray) -> tuple[int, ...] | None:
        """The layer's output shape by abstract evaluation: nothing is compiled or run."""
        if self._layer is None:
            return None
        out = jax.eval_shape(self._layer, self._params,
                             jax.ShapeDtypeStruct(x.shape, jnp.float32))
        return tuple(out.shape[1:]) if hasattr(out, "shape") else None

    def _check_target_fn(self, x: np.ndarray, targets: np.ndarray | None) -> None:
        """That ``target_fn`` gives one score per row, by abstract evaluation (once per shape)."""
        key = (x.shape[1:], None if targets is None else (targets.ndim, targets.shape[1:]))
        if self.target_fn is None or key in self._target_fn_checked:
            return
        out = jax.eval_shape(self._apply, self._params,
                             jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32))
        t_spec = None if targets is None else jax.ShapeDtypeStruct(
            (1, *targets.shape[1:]), jnp.int32 if targets.ndim == 1 else jnp.float32)
        scores = jax.eval_shape(self.target_fn, out, t_spec)
        if getattr(scores, "shape", None) != (1,):
            raise target_fn_error(
                f"shape {getattr(scores, 'shape', type(scores).__name__)} for a batch of 1", 1)
        self._target_fn_checked.add(key)

    # -- compiled functions ------------------------------------------------------

    def _padded_size(self, kind: str, x: np.ndarray) -> int:
        """The chunk size to run ``x`` at (see the module docs)."""
        n = len(x)
        with self._lock:
            sizes = self._sizes.setdefault((kind, x.shape[1:]), set())
            if n in sizes:
                return n
            if len(sizes) < self.max_compiled_sizes:
                sizes.add(n)
                return n
            limit = _next_power_of_two(n)  # never more than twice the rows
            fitting = [s for s in sizes if n <= s <= limit]
            size = min(fitting) if fitting else limit
            sizes.add(size)
            return size

    def _compiled(self, kind: str) -> Callable:
        with self._lock:
            fn = self._jitted.get(kind)
            if fn is None:
                fn = self._jitted[kind] = jax.jit(self._body(kind))
        return fn

    def _body(self, kind: str) -> Callable:
        apply, layer, head, score = self._apply, self._layer, self._head, self._scores

        if kind == "predict":
            def predict(p, x):
                self.trace_count += 1
                return apply(p, x)
            return predict

        def run(p, x, t):
            self.trace_count += 1
            if kind == SCORES.name:
                return {"scores": score(apply(p, x), t)}
            if kind == INPUT.name:
                def total(x):
                    s = score(apply(p, x), t)
                    return s.sum(), s
                g, s = jax.grad(total, has_aux=True)(x)
                return {"scores": s, "input": g}
            if kind == _LAYER_VALUES:
                h = layer(p, x)
                return {"scores": score(head(p, h), t), "values": h}
            if kind == INPUT_AND_LAYER.name:
                h, pull = jax.vjp(lambda x: layer(p, x), x)
            else:
                h = layer(p, x)

            def head_total(h):
                s = score(head(p, h), t)
                return s.sum(), s

            gh, s = jax.grad(head_total, has_aux=True)(h)
            result = {"scores": s, "values": h, "layer": gh}
            if kind == INPUT_AND_LAYER.name:
                result["input"] = pull(gh)[0]
            return result

        return run

    # -- running ------------------------------------------------------------------

    @property
    def on_accelerator(self) -> bool:
        """Whether JAX runs the functions off the host CPU (GPU, TPU), where rows
        built on its device (:meth:`noisy_rows`) cost the host nothing."""
        return jax.default_backend() != "cpu"

    def noisy_rows(self, images: np.ndarray, owners: np.ndarray, scales: np.ndarray,
                   seeds: np.ndarray) -> DeviceRows:
        """Gaussian-noised rows built on JAX's device, in float32.

        Row ``r`` is ``images[owners[r]] + scales[owners[r]] * z_r``, where
        ``z_r`` holds standard normal values drawn with the threefry key whose
        two 32-bit words are the high and low halves of ``seeds[r]``, so a
        row's noise does not depend on the rows drawn with it.  Pass the rows
        back as ``x``.  The draws compile once per chunk shape (rows, images
        they use): a few per batch layout, 0.3-0.7 s each on this project's
        CPU, reused by every later call (drawing row by row would compile once
        but took 2.3x as long per call after it; padding the draws as the calls
        are padded, 1.6x).
        """
        used, index = images_of_rows(images, owners)
        words = seeds.astype(np.uint64)
        key_words = np.stack([words >> np.uint64(32), words & np.uint64(0xFFFFFFFF)],
                             axis=1).astype(np.uint32)
        rows = _noisy_rows(jnp.asarray(used, dtype=jnp.float32), jnp.asarray(index),
                           jnp.asarray(scales[owners], jnp.float32), jnp.asarray(key_words))
        return DeviceRows(rows, used, np.asarray)

    def filtered_rows(self, images: np.ndarray, owners: np.ndarray,
                      terms: Sequence[tuple[np.ndarray, np.ndarray]],
                      axes: tuple[int, int]) -> DeviceRows:
        """Rows made on JAX's device by separable filters of ``images``, in float32:
        the rows ``filtered_rows`` of :class:`salience.model.Model` describes (Blur
        IG's path points and their rates).  Only the kernels go to the device; the
        matrices are gathered there, in one jitted function compiled once per chunk
        shape.  Pass the rows back as ``x``, or ``numpy.asarray`` them.
        """
        used, index = images_of_rows(images, owners)
        kernels_h, kernels_w = (jnp.asarray(np.stack(side), dtype=jnp.float32)
                                for side in zip(*terms))
        rows = _filtered_rows(jnp.asarray(used, dtype=jnp.float32), jnp.asarray(index),
                              kernels_h, kernels_w, axes[0] + 1, axes[1] + 1)
        return DeviceRows(rows, used, np.asarray)

    def array_ops(self) -> _JaxArrayOps | None:
        """Array operations on JAX's device, for a method that keeps its arrays there
        between calls (Guided IG's ``select_on``); None unless 64-bit arrays are on
        (``jax.config.update("jax_enable_x64", True)``): the walk's positions are
        float64, which JAX otherwise turns into float32."""
        return _JAX_OPS if jax.config.read("jax_enable_x64") else None

    def _run(self, x: np.ndarray | DeviceRows, targets: np.ndarray | None,
             kind: CallKind) -> dict[str, np.ndarray]:
        # rows built by noisy_rows or filtered_rows are on the device already
        x = x.values if isinstance(x, DeviceRows) else np.asarray(x, dtype=np.float32)
        if targets is not None:
            # the base checked the range, so int32 holds every class index
            targets = targets.astype(np.int32) if targets.ndim == 1 else targets.astype(np.float32)
        self._check_target_fn(x, targets)
        n = len(x)
        # The layer's values alone (Eigen-CAM, Score-CAM) compile without a backward pass.
        name = _LAYER_VALUES if kind.layer and not (kind.input or kind.layer_gradients) \
            else kind.name
        size = self._padded_size(name, x)
        t = None if targets is None else _pad_rows(targets, size)
        result = self._compiled(name)(self._params, _pad_rows(x, size), t)
        return {key: np.asarray(value)[:n] for key, value in result.items()}

    def _predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        n = len(x)
        out = self._compiled("predict")(self._params, _pad_rows(x, self._padded_size("predict", x)))
        return np.asarray(out)[:n]


class _JaxArrayOps:
    """:class:`salience.methods.guided_ig.selection.ArrayOps` for arrays on JAX's
    default device (64-bit arrays on)."""

    def asarray(self, values: np.ndarray) -> jax.Array:
        return jnp.asarray(values)

    def to_host(self, values: jax.Array) -> np.ndarray:
        return np.asarray(values)

    def where(self, condition: jax.Array, a: Any, b: Any) -> jax.Array:
        return jnp.where(condition, a, b)

    def kth_smallest(self, values: jax.Array, k: int) -> jax.Array:
        return jnp.partition(values, k, axis=1)[:, k : k + 1]

    def concat(self, parts: Sequence[jax.Array]) -> jax.Array:
        return jnp.concatenate(list(parts))

    def row_sums(self, values: jax.Array) -> jax.Array:
        return values.sum(axis=1)

    def any(self, values: jax.Array) -> bool:
        return bool(values.any())

    def rows(self, values: jax.Array, one_row: np.ndarray) -> DeviceRows:
        rows = values.reshape(len(values), *one_row.shape[1:]).astype(jnp.float32)
        return DeviceRows(rows, one_row, np.asarray)


_JAX_OPS = _JaxArrayOps()
