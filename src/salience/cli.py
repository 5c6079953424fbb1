"""The ``salience`` command: ``salience explain`` turns images and a model into an HTML report.

Run ``salience --help`` for the commands and ``salience explain --help`` for the
options.  ``salience explain`` with no image explains scikit-image's sample
photos with the built-in EfficientNet-Lite0 (ImageNet) and writes
``salience-report/index.html``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

__all__ = ["app", "main", "SAMPLE_IMAGES", "ExplainOutcome", "NothingExplainedError",
           "run_explain", "run_explain_dataset"]

#: scikit-image sample photos explained when no image is given.
SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut")

app = typer.Typer(
    add_completion=False,
    help="Explain image models with saliency maps and write an HTML report.",
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class NothingExplainedError(CliError):
    """Every method failed (the report lists why): exit status 1."""


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2):
    _stderr_console().print(f"[bold red]error:[/bold red] {message}", markup=True)
    raise typer.Exit(code)


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise CliError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise CliError(f"{name} is empty")
    return values


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"--size must be N or HEIGHTxWIDTH (e.g. 224x224), got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise CliError(f"--size must be N or HEIGHTxWIDTH with positive ints, got {text!r}")
    return values[0], values[1]


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def _bytes(text: str) -> int:
    """``8GB``, ``500 MB``, ``2GiB``, ``1e9`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise CliError(f"--memory-limit must be a size such as 8GB or 500MB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _available_memory() -> int | None:
    """Memory available to a new allocation now (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: The memory limit when the machine does not say how much it has.
FALLBACK_MEMORY_LIMIT = 4 * 10**9


def _memory_limit(text: str | None) -> tuple[int, str]:
    """The limit in bytes and where it came from (for messages)."""
    if text is not None:
        return _bytes(text), "--memory-limit"
    available = _available_memory()
    if available is None:
        return FALLBACK_MEMORY_LIMIT, "the default limit"
    return available // 2, "half of the memory available now"


def _run_bytes(n_images: int, size: tuple[int, int], channels: int, n_methods: int,
               batch_size: int) -> int:
    """A lower bound of what a run keeps in memory: the images at the model's size, the model
    input and every method's maps in float32, and a batch of rows with their gradients."""
    pixels = size[0] * size[1]
    per_map = channels * pixels * 4
    return (n_images * pixels * 3 + n_images * per_map * (1 + n_methods)
            + 3 * min(batch_size, n_images) * per_map)


def _limit_for(need: int) -> str:
    """A --memory-limit value with a quarter of headroom over an estimate."""
    from .io import format_bytes

    return format_bytes(need * 1.25).replace(" ", "")


def _check_run_memory(n_images, prep, n_methods, batch_size, limit, source) -> None:
    from .io import format_bytes

    need = _run_bytes(n_images, prep.size, prep.channels, n_methods, batch_size)
    if need > limit:
        height, width = prep.size
        raise CliError(
            f"this run would need at least {format_bytes(need)} of memory ({n_images} image(s) "
            f"at {height}x{width}x{prep.channels}, {n_methods} method(s), batch size "
            f"{batch_size}), more than {format_bytes(limit)} ({source}); use a smaller --size, "
            f"fewer images, methods or --batch-size, or pass --memory-limit "
            f"{_limit_for(need)} if the machine has it"
        )


def _method_names(text: str | None, has_layer: bool | None = None) -> list[str]:
    from . import registry

    if text is None:
        names = list(registry.DEFAULT_METHODS)
        if has_layer is False:
            names = [m for m in names if not registry.get(m).needs_layer]
        return names
    names = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        if raw.strip().lower() == "all":
            names += [m for m in registry.names() if m not in names]
            continue
        try:
            name = registry.canonical_name(raw)
        except registry.UnknownMethodError as err:
            raise CliError(str(err)) from None
        if name not in names:
            names.append(name)
    if not names:
        raise CliError(f"--methods is empty; valid methods: {', '.join(registry.names())}")
    return names


def _method_notes(text: str | None, has_layer: bool) -> list[str]:
    """What the user should know about how ``--methods`` was read: names taken as
    another method's, and default methods the model cannot run."""
    from . import registry

    if text is None:
        if has_layer:
            return []
        dropped = [m for m in registry.DEFAULT_METHODS if registry.get(m).needs_layer]
        return [f"{', '.join(dropped)} (a default method) left out: this model gives no "
                "convolutional layer for it (TorchScript and torch.export archives cannot "
                "hook one; a state_dict with --arch, and --layer NAME if needed, can)"
                ] if dropped else []
    notes = []
    for raw in (part.strip() for part in text.split(",")):
        if raw and raw.lower() != "all":
            name = registry.canonical_name(raw)
            if name != raw:
                notes.append(f"--methods {raw!r} is read as {name!r}")
    return notes


def _target(text: str | None, labels, n: int) -> Any:
    if text is None or text.strip().lower() in ("", "top"):
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        if value < 0:
            raise CliError(f"--target must be a class index >= 0 or a class name, got {value}")
        return value
    if labels is not None:
        wanted = text.lower()
        for index in range(100_000):  # bounded: label tables are far smaller
            try:
                name = labels(index)
            except Exception:  # noqa: BLE001 - end of the table
                break
            if name.startswith("class "):
                break
            if name.lower() == wanted:
                return index
    raise CliError(
        f"--target {text!r} is neither a class index nor a class name of this model's labels"
    )


def _display_name(path: Path, roots: list[Path]) -> str:
    """The file's path relative to the folder it was found in (its name if given directly)."""
    for root in roots:
        if root.is_dir():
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                continue
    return path.name


def _sample_images():
    import skimage.data

    return [(name, f"skimage.data.{name}()", getattr(skimage.data, name)())
            for name in SAMPLE_IMAGES]


def run_explain(
    images: list[Path] | None = None,
    *,
    model: str | None = None,
    arch: str | None = None,
    layer: str | None = None,
    trust_model: bool = False,
    methods: str | None = None,
    target: str | None = None,
    out: Path = Path("salience-report"),
    batch_size: int = 32,
    metrics: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    preset: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    size: str | None = None,
    resize: str | None = None,
    channels: int | None = None,
    channels_last: bool | None = None,
    labels: str | None = None,
    cmap: str = "inferno",
    quiet: bool = False,
    follow_symlinks: bool = False,
    memory_limit: str | None = None,
    reduction: str | None = None,
) -> ExplainOutcome:
    """Everything ``salience explain`` does; returns where the report is and what failed.

    Raises :class:`CliError` (and the loaders' ``ValueError`` subclasses) on bad input, and
    :class:`NothingExplainedError` after writing the report when every method failed.
    """
    from . import registry
    from .io import ImageReadError, ImageTooLargeError, LargeImageWarning, search_images
    from .metrics.insertion_deletion import DEFAULT_SCORE
    from .report import ImageEntry, check_output_dir, run_status, write_report
    from .runner import explain
    from .runtime import retain_freed_memory

    retain_freed_memory()  # the command owns its process: keep large blocks for reuse

    console = _stderr_console()
    say = (lambda *_a, **_k: None) if quiet else console.print
    if batch_size <= 0:
        raise CliError(f"--batch-size must be a positive int, got {batch_size}")
    if reduction is not None:
        from .checks import check_reduction

        check_reduction(reduction, "--reduction")
    limit, limit_source = _memory_limit(memory_limit)
    _method_names(methods)  # unknown names fail before any work
    check_output_dir(out, overwrite)
    warned: list[str] = []
    files = None
    if images:
        search = search_images(images, exclude=[out], follow_symlinks=follow_symlinks)
        for note in search.notes:
            warned.append(note)
            say(f"[yellow]note:[/yellow] {note}", markup=True)
        files = search.files
        if not files:
            raise CliError(f"no image files found in {', '.join(str(p) for p in images)}")

    loaded, prep, names = _model_and_methods(
        model=model, arch=arch, layer=layer, trust_model=trust_model, device=device,
        channels_last=channels_last, labels=labels, size=size, preset=preset, resize=resize,
        mean=mean, std=std, channels=channels, methods=methods, notes=warned, say=say)

    _check_run_memory(len(files) if files is not None else len(SAMPLE_IMAGES), prep,
                      len(names), batch_size, limit, limit_source)

    entries, skipped = [], []
    sources = ([(_display_name(p, images or []), str(p), p) for p in files]
               if files is not None else _sample_images())
    for name, source, item in sources:
        try:
            image = (_read_image(item, limit) if isinstance(item, Path)
                     else np.asarray(item))
        except ImageTooLargeError as err:
            reason = f"{err.reason}; pass --memory-limit {_limit_for(err.need)} to read it"
            skipped.append({"path": source, "reason": reason})
            say(f"[yellow]skipped[/yellow] {source}: {reason}", markup=True)
            continue
        except ImageReadError as err:
            skipped.append({"path": source, "reason": err.reason})
            say(f"[yellow]skipped[/yellow] {source}: {err.reason}", markup=True)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeImageWarning)
            display = prep.display(image, name)
        for w in caught:
            warned.append(str(w.message))
            say(f"[yellow]warning:[/yellow] {w.message}", markup=True)
        entries.append(ImageEntry(name=name, display=display, source=source,
                                  original_size=tuple(image.shape[:2])))
    if not entries:
        raise CliError("none of the images could be read; nothing to explain")

    x = prep.model_input([e.display for e in entries])
    targets = _target(target, loaded.labels, len(entries))
    metric_seconds: dict[str, float] = {}
    with _progress_bar(quiet, console, [e.name for e in entries]) as bar:
        result = explain(loaded.model, x, names, targets, batch_size, progress=bar,
                         errors="collect")
        if metrics:
            metric_seconds = _add_metrics(entries, loaded.model, x, result, prep, batch_size,
                                          bar, reduction)
    for method, message in result.errors.items():
        console.print(f"[bold red]{method} failed:[/bold red] {message}", markup=True)

    scale, mean_v, std_v = prep.normalisation()
    index = write_report(
        out, entries, result,
        model_info={"name": loaded.name, "size": prep.size, "channels": prep.channels,
                    "normalisation": f"{prep.preset}: (x*{scale:.4g} - {_rounded(mean_v)}) / "
                                     f"{_rounded(std_v)}",
                    "resize": prep.resize},
        labels=loaded.labels,
        regions=[m for m in result.maps if registry.get(m).regions],
        descriptions={m: registry.get(m).description for m in names},
        skipped=skipped, warnings=warned, cmap=cmap, overwrite=overwrite,
        settings={"model": model or "efficientnet-lite0", "methods": names,
                  "parameters": {m: dict(registry.get(m).parameters) for m in names},
                  "target": target, "batch_size": batch_size, "size": list(prep.size),
                  "resize": prep.resize, "preset": prep.preset, "metrics": metrics,
                  "metric_score": DEFAULT_SCORE if metrics else None, "device": device,
                  "reduction": reduction},
        metric_seconds=metric_seconds, reduction=reduction,
    )
    outcome = ExplainOutcome(index=index, status=run_status(result, skipped),
                             failed_methods=sorted(result.errors), skipped_images=len(skipped),
                             images=len(entries))
    if outcome.status == "failed":
        raise NothingExplainedError(outcome.line())
    return outcome


@dataclass
class ExplainOutcome:
    """What ``salience explain`` did; ``status`` is also in the report's ``summary.json``."""

    index: Path
    status: str
    failed_methods: list[str]
    skipped_images: int
    images: int

    def line(self) -> str:
        """The command's last line."""
        failures = []
        if self.failed_methods:
            failures.append(f"{len(self.failed_methods)} method(s) failed "
                            f"({', '.join(self.failed_methods)})")
        if self.skipped_images:
            failures.append(f"{self.skipped_images} of {self.images + self.skipped_images} "
                            "image(s) skipped")
        if self.status == "failed":
            return (f"nothing was explained: {'; '.join(failures)}; the report listing the "
                    f"errors is {self.index}")
        if failures:
            return f"Report written to {self.index}, with failures: {'; '.join(failures)}"
        return f"Report written to {self.index}"


def _model_and_methods(*, model, arch, layer, trust_model, device, channels_last, labels, size,
                       preset, resize, mean, std, channels, methods, notes, say):
    """The model, its preprocessing with the command line's changes, and the method
    names; notes on how ``--methods`` was read go to ``notes`` and ``say``
    (``explain`` and ``explain-dataset`` share it)."""
    from . import registry
    from .loading import load_labels, load_model

    loaded = load_model(model, arch=arch, layer=layer, trust_model=trust_model, device=device,
                        channels_last=channels_last)
    if labels is not None:
        loaded.labels = load_labels(labels)
    prep = loaded.preprocessing.with_(size=_size(size), preset=preset, resize=resize,
                                      mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                                      channels=channels)
    names = _method_names(methods, loaded.has_layer)
    for note in _method_notes(methods, loaded.has_layer):
        notes.append(note)
        say(f"[yellow]note:[/yellow] {note}", markup=True)
    layerless = [m for m in names if registry.get(m).needs_layer and not loaded.has_layer]
    if layerless:
        raise CliError(
            f"{', '.join(layerless)} needs a convolutional layer (or a vision transformer block); "
            "pass --layer NAME (a dotted module name) with a state_dict/pickled model, or drop it "
            "from --methods"
        )
    return loaded, prep, names


def run_explain_dataset(
    sources: list[Path],
    *,
    out: Path,
    model: str | None = None,
    arch: str | None = None,
    layer: str | None = None,
    trust_model: bool = False,
    methods: str | None = None,
    target: str | None = None,
    batch_size: int = 32,
    metrics: bool = False,
    device: str | None = None,
    preset: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    size: str | None = None,
    resize: str | None = None,
    channels: int | None = None,
    channels_last: bool | None = None,
    labels: str | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    resume: bool = True,
    report_sample: int = 8,
    seed: int = 0,
    map_dtype: str = "float32",
    quiet: bool = False,
):
    """Everything ``salience explain-dataset`` does; returns the
    :class:`~salience.dataset.DatasetSummary`.

    Raises :class:`CliError` (and the loaders' and the store's ``ValueError``
    subclasses) on bad input, and :class:`NothingExplainedError` when no image
    was explained and some failed (the store holds why).
    """
    from .dataset import explain_dataset
    from .io import LargeImageWarning
    from .runtime import retain_freed_memory

    retain_freed_memory()  # the command owns its process: keep large blocks for reuse
    console = _stderr_console()
    say = (lambda *_a, **_k: None) if quiet else console.print
    if engine not in ("local", "ray"):
        raise CliError(f"--engine must be local or ray, got {engine!r}")
    if engine == "local" and (address is not None or workers != 2 or gpus_per_worker):
        raise CliError("--address, --workers and --gpus-per-worker need --engine ray")
    if batch_size <= 0:
        raise CliError(f"--batch-size must be a positive int, got {batch_size}")
    _method_names(methods)  # unknown names fail before any work
    loaded, prep, names = _model_and_methods(
        model=model, arch=arch, layer=layer, trust_model=trust_model, device=device,
        channels_last=channels_last, labels=labels, size=size, preset=preset, resize=resize,
        mean=mean, std=std, channels=channels, methods=methods, notes=[], say=say)
    options: dict[str, Any] = {}
    model_arg: Any = loaded
    if engine == "ray":
        options = {"workers": workers, "address": address, "cpus_per_worker": cpus_per_worker,
                   "gpus_per_worker": gpus_per_worker}
        # Each Ray worker loads the model itself, from the same arguments.
        model_arg = functools.partial(_load_in_worker, model, arch, layer, trust_model, device,
                                      channels_last, os.getcwd())
    with _progress_bar(quiet, console, []) as bar, warnings.catch_warnings():
        # Each record holds its image's size: no warning per large photo of a dataset.
        warnings.simplefilter("ignore", LargeImageWarning)
        summary = explain_dataset(
            [str(p) for p in sources], model_arg, names, out,
            targets=_target(target, loaded.labels, 0), engine=engine, batch_size=batch_size,
            resume=resume, metrics=metrics, preprocessing=prep, labels=loaded.labels, seed=seed,
            map_dtype=map_dtype, report_sample=report_sample,
            model_id=_model_id(model, arch, layer, loaded), progress=bar, **options)
    if summary.done == 0 and summary.failed:
        raise NothingExplainedError(
            f"nothing was explained: {summary}; the records in {out} say why each failed")
    return summary


def _load_in_worker(model, arch, layer, trust_model, device, channels_last, cwd):
    """The model as a Ray worker loads it (``--arch`` modules are found in ``cwd``)."""
    from .loading import load_model

    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return load_model(model, arch=arch, layer=layer, trust_model=trust_model, device=device,
                      channels_last=channels_last)


def _model_id(model: str | None, arch: str | None, layer: str | None, loaded) -> str:
    """The model's identity in the store: the built-in name, or the file's hash."""
    parts = [loaded.name]
    path = Path(model) if model else None
    if path is not None and path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        parts.append(f"file sha256:{digest.hexdigest()[:16]}")
    if layer is not None:
        parts.append(f"layer {layer}")
    return "; ".join(parts)


def _read_image(path: Path, limit: int) -> np.ndarray:
    """``load_image`` with the run's memory limit in place of Pillow's fixed pixel limit."""
    from PIL import Image

    from .io import load_image

    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the command owns its process; restored below
    try:
        return load_image(path, max_bytes=limit)
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def _is_terminal() -> bool:
    """Whether progress goes to a terminal (the bar is shown only then)."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def _progress_bar(quiet: bool, console, image_names: list[str]):
    """The run's progress bar on a terminal (None when quiet or piped)."""
    if quiet or not _is_terminal():
        yield None
        return
    from .progress import ProgressBar

    with ProgressBar(image_names=image_names, console=console) as bar:
        yield bar


def _add_metrics(entries, model, x, result, prep, batch_size, bar,
                 reduction=None) -> dict[str, float]:
    """Fill each entry's metric values; returns the metrics' seconds per method."""
    from .metrics import evaluate_maps

    seconds: dict[str, float] = {}
    values = evaluate_maps(model, x, [e.display for e in entries], result.maps, result.targets,
                           lambda batch: prep.model_input(list(batch)), batch_size=batch_size,
                           progress=bar, seconds=seconds,
                           # without --reduction: ranked by the sum of magnitudes
                           reduction=reduction or "abs_sum")
    for entry, per_image in zip(entries, values):
        entry.metrics = per_image
    return seconds


# --- typer commands -------------------------------------------------------------------


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    """Explain image models with saliency maps."""
    if ctx.invoked_subcommand is None:  # no command: say what there is, start no work
        typer.echo(ctx.get_help())


# Options shared by `explain` and `explain-dataset`.
ModelOption = Annotated[str | None, typer.Option(
    "--model", "-m", help="Built-in model name (see `salience models`) or a model file: "
    "state_dict (.pt/.pth, with --arch), TorchScript, torch.export (.pt2), Keras .keras. "
    "Default: efficientnet-lite0.")]
ArchOption = Annotated[str | None, typer.Option(
    help="package.module:function building the architecture of a state_dict.")]
LayerOption = Annotated[str | None, typer.Option(
    help="Layer for Grad-CAM (dotted module name; default: the last Conv2d, or in a vision "
    "transformer the last attention block's first LayerNorm). A transformer block's patch "
    "tokens are laid out on their square grid.")]
TrustModelOption = Annotated[bool, typer.Option(
    "--trust-model", help="Load model files in ways that can run code they hold: whole "
    "pickled modules, torch.export archives with pickles, guard code or shape expressions, "
    "Keras files without safe_mode. Only for files you trust.")]
MethodsOption = Annotated[str | None, typer.Option(
    "--methods", help="Comma-separated methods (see `salience methods`), or 'all'. "
    "Default: gradients,smoothgrad,integrated_gradients,xrai,gradcam.")]
TargetOption = Annotated[str | None, typer.Option(
    "--target", "-t", help="Class to explain for every image: index or label name. "
    "Default: each image's top class.")]
BatchSizeOption = Annotated[int, typer.Option(
    "--batch-size", "-b", help="Largest number of rows per model call.")]
MetricsOption = Annotated[bool, typer.Option(
    "--metrics", help="Score each map's faithfulness: insertion/deletion AUC on the "
    "class probability (RISE) and SIC/AIC (PIC); 50 to 80 more model rows per map.")]
DeviceOption = Annotated[str | None, typer.Option(help="PyTorch device, e.g. cpu, cuda:0.")]
PresetOption = Annotated[str | None, typer.Option(
    help="Normalisation preset: imagenet, efficientnet-lite, unit, symmetric, raw.")]
MeanOption = Annotated[str | None, typer.Option(help="Per-channel mean, e.g. 0.485,0.456,0.406.")]
StdOption = Annotated[str | None, typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")]
SizeOption = Annotated[str | None, typer.Option(
    help="Model input size: N or HEIGHTxWIDTH (default: the model's).")]
ResizeOption = Annotated[str | None, typer.Option(
    help="crop (default: shorter side to the model's size, centre cut out, aspect ratio "
    "kept) or squash (whole image, stretched to the model's size).")]
ChannelsOption = Annotated[int | None, typer.Option(
    help="Channels the model takes (1 or 3; default: from its first layer).")]
ChannelsLastOption = Annotated[bool, typer.Option(
    "--channels-last", help="The PyTorch model takes (n, H, W, C) inputs.")]
LabelsOption = Annotated[str | None, typer.Option(
    help="Class names: 'imagenet' or a text file with one name per line.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes.")]


@app.command("explain")
def explain_command(
    images: Annotated[list[Path] | None, typer.Argument(
        help="Image files or folders (searched recursively). Default: scikit-image's sample "
             "photos chelsea, coffee, astronaut.", show_default=False)] = None,
    model: ModelOption = None,
    arch: ArchOption = None,
    layer: LayerOption = None,
    trust_model: TrustModelOption = False,
    methods: MethodsOption = None,
    target: TargetOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path(
        "salience-report"),
    batch_size: BatchSizeOption = 32,
    metrics: MetricsOption = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing report directory.")] = False,
    device: DeviceOption = None,
    preset: PresetOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    resize: ResizeOption = None,
    channels: ChannelsOption = None,
    channels_last: ChannelsLastOption = False,
    labels: LabelsOption = None,
    cmap: Annotated[str, typer.Option(
        help="Matplotlib colormap of magnitude maps (signed maps are blue-white-red).")
    ] = "inferno",
    quiet: QuietOption = False,
    follow_symlinks: Annotated[bool, typer.Option(
        "--follow-symlinks", help="Read symbolic links in image folders that lead outside "
        "them, and search linked folders (default: skip them with a note).")] = False,
    memory_limit: Annotated[str | None, typer.Option(
        "--memory-limit", help="Memory a run may plan to use, e.g. 8GB: larger runs and "
        "images are refused before allocating (default: half of the memory available).")
    ] = None,
    reduction: Annotated[str | None, typer.Option(
        "--reduction", help="How a map's channels become one value per pixel in the pictures "
        "and metrics: sum (signed), abs_sum (PAIR), abs_max (Xplique), l2 or max. Default: "
        "pictures of the channel sum, metrics on abs_sum. maps.npz keeps every channel.")
    ] = None,
) -> None:
    """Explain images with a model and write an HTML report to --out."""
    try:
        outcome = run_explain(
            images, model=model, arch=arch, layer=layer, trust_model=trust_model,
            methods=methods, target=target, out=out, batch_size=batch_size, metrics=metrics,
            overwrite=overwrite, device=device, preset=preset, mean=mean, std=std, size=size,
            resize=resize, channels=channels, channels_last=channels_last or None,
            labels=labels, cmap=cmap, quiet=quiet, follow_symlinks=follow_symlinks,
            memory_limit=memory_limit, reduction=reduction,
        )
    except NothingExplainedError as err:
        _fail(str(err), code=1)
    except (CliError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    except MemoryError:
        _fail("ran out of memory; use a smaller --size, fewer images or methods, or a smaller "
              "--batch-size")
    typer.echo(outcome.line())


@app.command("explain-dataset")
def explain_dataset_command(
    sources: Annotated[list[Path], typer.Argument(
        help="Image files, folders (searched recursively) or list files (.txt: one path per "
             "line; .csv/.tsv/.parquet: a 'path' column, optional 'target' and 'label').",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Store directory (records, maps, summary); a run stopped "
        "for any reason continues where it was when started again.")],
    engine: Annotated[str, typer.Option(
        help="local (this process) or ray (Ray Data; pip install salience\\[ray]).")] = "local",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (with --engine ray; default: start Ray here).")] = None,
    workers: Annotated[int, typer.Option(
        help="Model workers (Ray actors) with --engine ray.")] = 2,
    cpus_per_worker: Annotated[float, typer.Option(
        help="CPUs each Ray model worker reserves.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(
        help="GPUs each Ray model worker reserves (use with --device cuda).")] = 0.0,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="Continue the store in --out (skip images it has), or "
        "replace it.")] = True,
    report_sample: Annotated[int, typer.Option(
        help="Images with their own page in the HTML summary.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of random methods (SmoothGrad).")] = 0,
    map_dtype: Annotated[str, typer.Option(
        help="Precision of the stored maps: float32 or float16.")] = "float32",
    model: ModelOption = None,
    arch: ArchOption = None,
    layer: LayerOption = None,
    trust_model: TrustModelOption = False,
    methods: MethodsOption = None,
    target: TargetOption = None,
    batch_size: BatchSizeOption = 32,
    metrics: MetricsOption = False,
    device: DeviceOption = None,
    preset: PresetOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    resize: ResizeOption = None,
    channels: ChannelsOption = None,
    channels_last: ChannelsLastOption = False,
    labels: LabelsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Explain every image of a dataset into a resumable store of Parquet records,
    Zarr maps and an HTML summary."""
    try:
        summary = run_explain_dataset(
            sources, out=out, model=model, arch=arch, layer=layer, trust_model=trust_model,
            methods=methods, target=target, batch_size=batch_size, metrics=metrics,
            device=device, preset=preset, mean=mean, std=std, size=size, resize=resize,
            channels=channels, channels_last=channels_last or None, labels=labels,
            engine=engine, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker, resume=resume, report_sample=report_sample,
            seed=seed, map_dtype=map_dtype, quiet=quiet)
    except NothingExplainedError as err:
        _fail(str(err), code=1)
    except (CliError, ValueError, FileNotFoundError, ImportError) as err:
        _fail(str(err))
    except MemoryError:
        _fail("ran out of memory; use a smaller --size or --batch-size")
    except KeyboardInterrupt:
        _fail(f"interrupted; what was committed stays in {out}: run the same command again "
              "to finish", code=130)
    typer.echo(str(summary))


@app.command("methods")
def methods_command() -> None:
    """List the saliency methods this installation has."""
    from . import registry

    for entry in registry.METHODS.values():
        extra = " (needs a convolutional layer or a ViT block)" if entry.needs_layer else ""
        typer.echo(f"{entry.name:22s} {entry.description}{extra}")


@app.command("models")
def models_command() -> None:
    """List the built-in models and the model file formats."""
    from .loading import BUILTIN_MODELS

    for name, (description, _) in BUILTIN_MODELS.items():
        typer.echo(f"{name:22s} {description}")
    typer.echo("")
    typer.echo("Model files (--model PATH):")
    typer.echo("  PyTorch state_dict (.pt/.pth) with --arch package.module:function "
               "(weights-only reader)")
    typer.echo("  TorchScript archive (torch.jit.save)")
    typer.echo("  torch.export archive (torch.export.save, .pt2): inspected first; pickles, "
               "guard code or\n    unusual shape expressions need --trust-model")
    typer.echo("  Keras .keras file (loaded with safe_mode)")
    typer.echo("  pickled nn.Module (torch.save(model)): only with --trust-model")
    typer.echo("--trust-model lets a file run code it holds: use it only for files you trust.")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
