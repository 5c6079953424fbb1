"""Write an explanation to a report directory: HTML, PNGs, raw maps and a JSON summary.

Layout of ``DIR``::

    index.html          the report (Jinja2 template ``templates/index.html``)
    summary.json        predictions, targets, timings, metrics, skipped files, status
    maps.npz            raw maps, key ``<image>__<method>``
    images/<image>.png  the model-sized original
    maps/<image>__<method>.png            the map alone, coloured
    overlays/<image>__<method>.png        the map over the image
    overlays/<image>__<method>__top10.png XRAI-style top regions (10% and 30%)
    salience-manifest.json  every file above (see :mod:`salience.outdir`)

The directory is written by :func:`salience.outdir.write_atomically`: into a
temporary sibling first, renamed into place at the end, so ``DIR`` is either
the complete new report or untouched.  An existing ``DIR`` is replaced only
with ``overwrite=True`` and only when everything in it is listed in its
manifest (files the user added there make it refuse); names from image files
are sanitised, so no output path escapes ``DIR``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry, visualize
from .._version import __version__
from ..arrays import SIGNED_REDUCTIONS
from ..io import RESIZE_MODES
from ..metrics.evaluate import METRICS
from ..outdir import OutputDirError, check_output_dir, write_atomically

__all__ = [
    "ImageEntry",
    "OutputDirError",
    "check_output_dir",
    "run_status",
    "safe_names",
    "write_report",
]

GENERATOR = "salience"
REGION_FRACTIONS = (0.1, 0.3)
#: Colour stops sampled from a colormap for the legends (CSS gradients).
LEGEND_STOPS = 11


@dataclass
class ImageEntry:
    """One explained image.

    Attributes
    ----------
    name : str
        Shown in the report (file name or sample name).
    display : ndarray
        The model-sized image (uint8, ``(H, W)`` or ``(H, W, 3)``) maps are drawn on.
    source : str
        Where it came from (path or ``skimage.data.<name>``).
    original_size : (int, int) or None
        Height and width before resizing.
    """

    name: str
    display: np.ndarray
    source: str = ""
    original_size: tuple[int, int] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_names(names: Sequence[str], max_length: int = 80) -> list[str]:
    """File-system-safe, unique, non-hidden names (no separators, no ``..``)."""
    used: set[str] = set()
    out = []
    for raw in names:
        base = _UNSAFE.sub("_", str(raw)).strip("._-")[:max_length] or "image"
        name, k = base, 2
        while name.lower() in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name.lower())
        out.append(name)
    return out


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise OutputDirError(f"refusing to write {relative!r} outside the report directory")
    return path


def write_report(
    out: str | Path,
    entries: Sequence[ImageEntry],
    explanation: Any,
    *,
    model_info: Mapping[str, Any],
    labels: Callable[[int], str] | None = None,
    regions: Sequence[str] = (),
    descriptions: Mapping[str, str] | None = None,
    skipped: Sequence[Mapping[str, str]] = (),
    warnings: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    cmap: str = "inferno",
    signed_cmap: str = "bwr",
    signed_alpha: float = 0.8,
    alpha: float = 0.5,
    overwrite: bool = False,
    top_k: int = 5,
    metric_seconds: Mapping[str, float] | None = None,
    reduction: str | None = None,
) -> Path:
    """Render the report into ``out`` atomically and return the path of ``index.html``.

    Parameters
    ----------
    out : path
        The report directory (see the module docs for its layout).
    entries : sequence of ImageEntry
        The explained images, in the order of ``explanation``'s maps.
    explanation : salience.explain.Explanation
        Predictions, maps and timings.
    model_info : mapping
        ``name``, ``size`` (H, W), ``channels``, ``normalisation`` and ``resize``
        (a mode of :data:`salience.io.RESIZE_MODES`) for the header.
    labels : callable, optional
        ``labels(class_index) -> str``.
    regions : sequence of str
        Methods whose maps rank regions (XRAI): their top 10% and 30% are drawn too.
    descriptions : mapping, optional
        A sentence per method; methods of :mod:`salience.registry` default to
        theirs.  Whether a map is signed (diverging colours) or a magnitude
        (colours from zero) comes from the registry too; other methods are
        shown as magnitudes.
    skipped, warnings : sequences
        Skipped inputs (``{"path": ..., "reason": ...}``) and notes to show.
    settings : mapping, optional
        Settings of the run, shown on the page and recorded in ``summary.json``
        (the command line's: model, methods, parameters, target, batch_size,
        size, resize, preset, metrics, metric_score, device).
    cmap, signed_cmap : str
        Colormaps of magnitude and of signed maps.
    alpha, signed_alpha : float
        The heatmap's weight over the picture; a signed map's is largest
        where the map is, in proportion to its magnitude (0 shows the picture).
    overwrite : bool
        Replace an existing previous report in ``out``.
    top_k : int
        Predictions listed per image.
    metric_seconds : mapping, optional
        Seconds the metrics took per method (all images), shown per image.
    reduction : str, optional
        How each map's channels become the pictures' one value per pixel (see
        :func:`salience.arrays.reduce_channels`); default ``"sum"``.
    """
    out = Path(out)
    with write_atomically(out, overwrite, kind="report") as tmp:
        index = _render_into(
            tmp, entries, explanation, model_info=model_info, labels=labels, regions=regions,
            descriptions=descriptions or {}, skipped=skipped, warnings=warnings,
            settings=settings or {}, cmaps={"magnitude": cmap, "signed": signed_cmap},
            alphas={"magnitude": alpha, "signed": signed_alpha}, top_k=top_k,
            version=__version__,
            metric_seconds=metric_seconds or {}, reduction=reduction or "sum",
        )
    return out / index


def run_status(explanation: Any, skipped: Sequence[Any] = ()) -> str:
    """``"complete"``, ``"partial"`` (a method failed or an input was skipped) or ``"failed"``
    (no method produced maps)."""
    if not explanation.maps:
        return "failed"
    return "partial" if explanation.errors or skipped else "complete"


def _label(labels: Callable[[int], str] | None, index: int) -> str:
    if labels is None:
        return f"class {index}"
    try:
        return str(labels(int(index)))
    except Exception:  # noqa: BLE001 - a label is decoration; never fail the report
        return f"class {index}"


def _entry(method: str) -> registry.MethodEntry | None:
    try:
        return registry.get(method)
    except (registry.UnknownMethodError, TypeError):
        return None


def _scale(method: str, reduction: str = "sum") -> str:
    """``"signed"`` (diverging colours) or ``"magnitude"`` (from zero), from the registry;
    a reduction through absolute values leaves only magnitudes."""
    entry = _entry(method)
    keeps_sign = reduction in SIGNED_REDUCTIONS
    return "signed" if entry is not None and entry.signed and keeps_sign else "magnitude"


def _legend(cmap: str, scale: str) -> dict[str, str]:
    """A colour bar as a CSS gradient, with what its ends mean."""
    stops = ", ".join(f"rgb({r}, {g}, {b})"
                      for r, g, b in visualize.colour_stops(cmap, LEGEND_STOPS))
    if scale == "signed":
        return {"css": f"linear-gradient(to right, {stops})", "low": "lowers the score",
                "middle": "0", "high": "raises the score", "cmap": cmap,
                "text": "Signed: red pixels raise the explained class's score, blue ones "
                        "lower it; near zero the picture shows through."}
    return {"css": f"linear-gradient(to right, {stops})", "low": "0 (no influence)",
            "middle": "", "high": "strongest", "cmap": cmap,
            "text": "Magnitude: dark is no influence, bright the strongest; the top 1% of "
                    "values all get the brightest colour."}


def _render_into(root: Path, entries, explanation, *, model_info, labels, regions,
                 descriptions, skipped, warnings, settings, cmaps, alphas, top_k, version,
                 metric_seconds, reduction) -> str:
    for sub in ("images", "maps", "overlays"):
        (root / sub).mkdir()
    names = safe_names([os.path.splitext(e.name)[0] or e.name for e in entries])
    method_names = list(explanation.maps) + [m for m in explanation.errors
                                             if m not in explanation.maps]
    scales = {m: _scale(m, reduction) for m in method_names}
    n = len(entries)
    tops = explanation.top(top_k) if explanation.probabilities is not None else [[]] * n
    targets = explanation.targets
    raw: dict[str, np.ndarray] = {}
    images = []
    for i, (entry, safe) in enumerate(zip(entries, names)):
        size = tuple(entry.display.shape[:2])
        image_file = f"images/{safe}.png"
        visualize.save_png(_inside(root, image_file), entry.display)
        target = None
        if targets is not None and np.ndim(targets[i]) == 0:
            target = int(targets[i])
        maps = []
        for method in explanation.maps:
            saliency_map = np.asarray(explanation.maps[method][i])
            raw[f"{safe}__{method}"] = saliency_map
            flat = visualize.fit_map(saliency_map, size, reduction)
            method_safe = safe_names([method])[0]
            png = f"maps/{safe}__{method_safe}.png"
            over = f"overlays/{safe}__{method_safe}.png"
            absolute = scales[method] == "magnitude"
            cmap = cmaps[scales[method]]
            visualize.save_png(_inside(root, png),
                               visualize.heatmap(flat, cmap=cmap, absolute=absolute))
            visualize.save_png(_inside(root, over),
                               visualize.overlay(entry.display, flat, cmap=cmap,
                                                 alpha=alphas[scales[method]],
                                                 absolute=absolute))
            region_files = []
            if method in regions:
                for fraction in REGION_FRACTIONS:
                    percent = round(fraction * 100)
                    rel = f"overlays/{safe}__{method_safe}__top{percent}.png"
                    visualize.save_png(_inside(root, rel),
                                       visualize.top_regions(entry.display, flat, fraction))
                    region_files.append({"percent": percent, "file": rel})
            maps.append({
                "method": method, "png": png, "overlay": over, "regions": region_files,
                "seconds_per_image": explanation.seconds.get(method, 0.0) / max(n, 1),
                "scale": scales[method],
            })
        images.append({
            "id": f"img-{i}",
            "name": entry.name,
            "safe": safe,
            "source": entry.source,
            "file": image_file,
            "original_size": list(entry.original_size) if entry.original_size else None,
            "target": target,
            "target_label": _label(labels, target) if target is not None else None,
            "top": [{"index": c, "label": _label(labels, c), "probability": p}
                    for c, p in tops[i]],
            "maps": maps,
            "metrics": entry.metrics,
        })
    if explanation.targets is not None:
        raw["targets"] = np.asarray(explanation.targets)
    if explanation.logits is not None:
        raw["logits"] = np.asarray(explanation.logits)
    np.savez(_inside(root, "maps.npz"), **raw)  # type: ignore[arg-type]  # names = arrays

    parameters = settings.get("parameters") or {}
    registered = {m: _entry(m) for m in method_names}
    methods = [{
        "name": m,
        "description": descriptions.get(m) or getattr(registered[m], "description", ""),
        "family": getattr(registered[m], "family", ""),
        "scale": scales[m],
        "parameters": ", ".join(f"{k}={v}" for k, v in (parameters.get(m) or {}).items()),
        "seconds": float(explanation.seconds.get(m, 0.0)),
        "rows": int(explanation.rows.get(m, 0)),
        "calls": int(explanation.calls.get(m, 0)),
        "metric_seconds_per_image": (float(metric_seconds[m]) / max(n, 1)
                                     if m in metric_seconds else None),
        "error": explanation.errors.get(m),
    } for m in method_names]
    found = {k for im in images for v in im["metrics"].values() for k in v}
    metrics = [{"name": k, "label": METRICS[k].label, "better": METRICS[k].better,
                "description": METRICS[k].description} for k in METRICS if k in found]
    metrics += [{"name": k, "label": k, "better": "", "description": ""}
                for k in sorted(found - set(METRICS))]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    resize = model_info.get("resize")
    model = {
        "name": str(model_info.get("name", "model")),
        "size": list(model_info.get("size", (0, 0))),
        "channels": model_info.get("channels", ""),
        "normalisation": str(model_info.get("normalisation", "")),
        "resize": resize,
        "resize_text": RESIZE_MODES.get(resize, "") if resize else "",
    }
    used = {scale for scale in scales.values()}
    context = {
        "model": model, "methods": methods, "images": images, "skipped": list(skipped),
        "warnings": list(warnings), "version": version, "created": created,
        "predict_seconds": float(explanation.seconds.get("predict", 0.0)),
        "metrics": metrics, "thumb": 224, "settings": dict(settings),
        "legends": {scale: _legend(cmaps[scale], scale) for scale in ("magnitude", "signed")
                    if scale in used},
    }
    html = _environment().get_template("index.html").render(**context)
    _inside(root, "index.html").write_text(html, encoding="utf-8")
    summary = {
        "generator": GENERATOR, "version": version, "created": created, "model": model,
        "settings": dict(settings), "methods": methods,
        "predict_seconds": context["predict_seconds"],
        "images": [{k: v for k, v in im.items() if k not in ("id",)} for im in images],
        "skipped": list(skipped), "warnings": list(warnings),
        "status": run_status(explanation, skipped),
        "failed_methods": sorted(explanation.errors),
        "metrics": metrics,
    }
    _inside(root, "summary.json").write_text(
        json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    return "index.html"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("salience.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.ChainableUndefined,
        keep_trailing_newline=True,
    )
