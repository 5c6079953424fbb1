"""The HTML summary of a dataset store: counts, runs, plots per method, failures and
a sample of image pages drawn by the report renderer (:func:`salience.report.write_report`).

Written into the store's folder::

    index.html      the summary
    plots/*.png     time per image and metric distributions per method
    samples/        a report of ``sample`` images (the ones with the smallest ids,
                    so the sample does not depend on the engine or on resuming)
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import ImageReadError, Preprocessing, load_image
from ..outdir import write_atomically
from .store import Results, record_schema, write_file_atomically
from .work import METRIC_FIELDS

__all__ = ["write_summary"]

#: Failed images listed by name in the summary (all are in the records).
MAX_LISTED_FAILURES = 100


def write_summary(results: Results, preprocessing: Preprocessing, *,
                  labels: Callable[[int], str] | None = None, sample: int = 8) -> Path:
    """Write ``index.html``, ``plots/`` and ``samples/`` into the store; return the
    path of ``index.html``."""
    import jinja2

    out = results.out
    wanted = ["id", "name", "status", "error"] + [
        f"{m}.{field}" for m in results.methods
        for field in ("status", "error", "seconds", *(k for k, _ in METRIC_FIELDS))]
    table = results.table([c for c in wanted if c in _columns(results)])
    ok = _is(table, "status", "ok")
    methods = results.methods
    metric_names = [m for m, _ in METRIC_FIELDS] if results.manifest["parameters"].get(
        "metrics") else []
    plots = _write_plots(out, table, ok, methods, metric_names)
    samples = _write_samples(results, table, ok, preprocessing, labels, sample) if sample \
        else None
    rows = []
    for name in methods:
        done = ok & _is(table, f"{name}.status", "ok")
        errors = table.column(f"{name}.error").filter(ok).unique().drop_null().to_pylist()
        rows.append({
            "name": name, "done": int(done.sum()),
            "failed": int((ok & _is(table, f"{name}.status", "failed")).sum()),
            "seconds": _mean(_floats(table, f"{name}.seconds")[ok]),
            "metrics": {m: _mean(_floats(table, f"{name}.{m}")[done]) for m in metric_names},
            "errors": sorted(errors)[:5],
        })
    failed = np.flatnonzero(_is(table, "status", "failed"))
    failures = table.take(failed[:MAX_LISTED_FAILURES]).select(["name", "error"]).to_pylist()
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("salience.dataset", "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.ChainableUndefined)
    page = environment.get_template("summary.html").render(
        manifest=results.manifest, parameters=results.manifest["parameters"],
        total=table.num_rows, ok=int(ok.sum()), failures=failures, failed=len(failed),
        methods=rows, metric_names=metric_names, plots=plots,
        samples=samples, runs=results.manifest["runs"])
    index = out / "index.html"
    write_file_atomically(index, page.encode("utf-8"))
    return index


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _columns(results: Results) -> set[str]:
    return set(record_schema(results.methods,
                             bool(results.manifest["parameters"].get("metrics"))).names)


def _is(table, column: str, value: str) -> np.ndarray:
    """Rows whose string ``column`` equals ``value`` (nulls are not)."""
    import pyarrow.compute as pc

    equal = pc.fill_null(pc.equal(table.column(column), value), False)
    return equal.to_numpy(zero_copy_only=False)


def _floats(table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def _write_plots(out: Path, table, ok: np.ndarray, methods: list[str],
                 metric_names: list[str]) -> list[dict[str, str]]:
    # Figures without pyplot: the caller's backend (a notebook's inline one) is left alone.
    from matplotlib.figure import Figure

    plots = []
    wanted = [("seconds", "seconds per image", "time per image (s)")]
    wanted += [(m, m.replace("_", " "), m.replace("_", " ")) for m in metric_names]
    # A new folder of plots replaces the previous one whole (salience.outdir's rules).
    with write_atomically(out / "plots", True, kind="dataset plots") as fresh:
        for field, title, axis in wanted:
            data = [_floats(table, f"{m}.{field}")[ok] for m in methods]
            data = [d[np.isfinite(d)] for d in data]
            if not any(len(d) for d in data):
                continue
            figure = Figure(figsize=(1.2 + 1.1 * len(methods), 3.2), dpi=100)
            ax = figure.subplots()
            ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=True)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, ha="right")
            ax.set_ylabel(axis)
            ax.set_title(f"{title} ({int(ok.sum())} images)", fontsize=10)
            figure.tight_layout()
            figure.savefig(fresh / f"{field}.png")
            plots.append({"file": f"plots/{field}.png", "title": title})
    return plots


def _write_samples(results: Results, table, ok: np.ndarray, prep: Preprocessing, labels,
                   sample: int) -> dict[str, Any] | None:
    """Pages of the ``sample`` images with the smallest ids, drawn from the stored maps."""
    from .. import registry
    from ..report import ImageEntry, write_report
    from ..runner import Explanation

    ids = table.column("id").filter(ok).to_pylist()
    candidates = heapq.nsmallest(4 * sample, ids)  # a few spare for unreadable files
    found = {r["id"]: r for r in results.table(ids=candidates).to_pylist()}
    entries: list[Any] = []
    chosen: list[dict[str, Any]] = []
    for image in candidates:
        if len(entries) == sample:
            break
        record = found[image]
        if record["path"] is None:
            continue  # rows of a Dataset given as arrays: no file to draw on
        try:
            image = load_image(record["path"])
        except ImageReadError:
            continue  # moved or deleted since the run
        entries.append(ImageEntry(name=record["name"], display=prep.display(image, record["name"]),
                                  source=record["path"], original_size=tuple(image.shape[:2])))
        chosen.append(record)
    if not entries:
        return None
    methods = [m for m in results.methods if all(r.get(f"{m}.status") == "ok" for r in chosen)]
    maps = {m: np.stack([results.map(r["id"], m).astype(np.float32) for r in chosen])
            for m in methods}
    explanation = Explanation(logits=None, probabilities=_probabilities(chosen),
                              targets=np.array([r["target"] if r["target"] is not None else -1
                                                for r in chosen]), maps=maps)
    explanation.seconds = {m: float(sum(r[f"{m}.seconds"] or 0 for r in chosen))
                           for m in methods}
    for record, entry in zip(chosen, entries):
        entry.metrics = {m: {k: record.get(f"{m}.{k}") for k, _ in METRIC_FIELDS
                             if f"{m}.{k}" in record} for m in methods}
        entry.metrics = {m: v for m, v in entry.metrics.items() if v}
    known = {m: registry.METHODS.get(m) for m in methods}
    prm = results.manifest["parameters"]["preprocessing"]
    write_report(  # atomic: the new pages replace the previous ones whole
        results.out / "samples", entries, explanation,
        model_info={"name": str(results.manifest["parameters"].get("model")),
                    "size": tuple(prm["size"]), "channels": prm["channels"],
                    "normalisation": prm["preset"], "resize": prm.get("resize")},
        labels=labels, regions=[m for m, e in known.items() if e is not None and e.regions],
        descriptions={m: e.description for m, e in known.items() if e is not None},
        settings={"sample_of": results.out.name, "ids": [r["id"] for r in chosen]},
        overwrite=True,
    )
    return {"file": "samples/index.html", "count": len(entries)}


def _probabilities(records: list[dict]) -> np.ndarray | None:
    """A probability table holding each image's stored top classes (zeros elsewhere),
    which is all the report shows of it."""
    tops = [(r["top_classes"] or [], r["top_probabilities"] or []) for r in records]
    if not any(classes for classes, _ in tops):
        return None
    width = 1 + max(max(classes) for classes, _ in tops if classes)
    table = np.zeros((len(records), width))
    for i, (classes, probabilities) in enumerate(tops):
        table[i, classes] = probabilities
    return table
