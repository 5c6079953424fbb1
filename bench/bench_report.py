"""``salience explain`` end to end: the 3 default photos, pretrained EfficientNet-Lite0,
all gradient methods and Grad-CAM, HTML report included.

Claim: total wall time (model loading, image reading, prediction, every method,
PNG/NPZ/JSON/HTML writing) <= 1.15 x the sum of the methods' model floors, where
a method's floor is the time of the same number of forward+backward rows (same
keys) at the best batch size, timed round robin with the command in the same run.

Run alone: ``python bench/bench_report.py [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import FULL_REPEATS, QUICK_REPEATS, floor_callable, lite0_setup, make_row

from salience import registry
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
)

CLAIM = 1.15


def _keys(method: str) -> list[str]:
    if method == "gradcam":
        return [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS]
    if method == "guided_backprop":
        return [GUIDED_INPUT_GRADIENTS]
    return [INPUT_OUTPUT_GRADIENTS]


def _methods(quick: bool) -> list[str]:
    if quick:
        return ["gradients", "integrated_gradients", "gradcam"]
    gradient = [e.name for e in registry.METHODS.values() if e.family == "gradient"]
    return gradient + ["gradcam"]


def _explain_once(methods: list[str], root: Path, k: int) -> tuple[float, dict]:
    from salience.cli import run_explain

    out = root / f"report-{k}"
    start = time.perf_counter()
    run_explain(None, methods=",".join(methods), out=out, quiet=True)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    shutil.rmtree(out)
    return seconds, summary


def run(quick: bool) -> list[dict]:
    methods = _methods(quick)
    # Each repeat runs the whole command: fewer repeats than the other benchmarks.
    repeats = QUICK_REPEATS - 1 if quick else max(2, FULL_REPEATS // 2)
    setup = lite0_setup(1)
    root = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        # Warm-up (torch's lazy initialisation, allocator growth, every batch shape
        # once), not timed, as for every other timed callable of the suite.
        _explain_once(methods, root, -1)
        totals, floors, summary = [], [], None
        floor_runs: dict[str, object] = {}
        per_method: dict[str, float] = {}  # best floor per method
        spent: dict[str, float] = {}  # best in-command time per method
        for k in range(repeats):
            seconds, summary = _explain_once(methods, root, k)
            totals.append(seconds)
            for m in summary["methods"]:
                spent[m["name"]] = min(spent.get(m["name"], float("inf")), float(m["seconds"]))
            failed = {m["name"]: m["error"] for m in summary["methods"] if m["error"]}
            if failed:
                raise RuntimeError(f"salience explain: methods failed: {failed}")
            if not floor_runs:
                x1 = setup.x[:1]
                target = int(summary["images"][0]["target"])
                for m in summary["methods"]:
                    floor_runs[m["name"]] = floor_callable(
                        setup.model, x1, int(m["rows"]), _keys(m["name"]), target)
                    floor_runs[m["name"]]()  # warm-up
            floor_total = 0.0
            for name, fn in floor_runs.items():
                start = time.perf_counter()
                fn()
                took = time.perf_counter() - start
                per_method[name] = min(per_method.get(name, float("inf")), took)
                floor_total += took
            floors.append(floor_total)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total, floor = min(totals), min(floors)
    rows = sum(int(m["rows"]) for m in summary["methods"])
    ratio = total / floor
    note = (
        f"3 photos, {len(methods)} methods ({', '.join(methods)}), {rows} model rows; "
        f"ratio {ratio:.3f} vs claim <= {CLAIM} ({'met' if ratio <= CLAIM else 'NOT met'}); "
        f"best of {repeats}; per method (time in the command / its floor): "
        + ", ".join(f"{m} {spent[m] / per_method[m]:.2f}" for m in per_method)
    )
    return [make_row("report", "salience explain (CLI, report included)", "EfficientNet-Lite0",
                     "3 default photos, 224x224", total, floor_s=floor, notes=note)]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
