"""Each method's own work per model row, on a zero-cost model at 224 pixels.

A model that answers at once (:class:`ZeroCostModel`: fixed random gradients,
scores and layer values of the right shapes, handed out as views) leaves only
what salience itself does around the model: building rows (paths, noise,
blurred and occluded copies), checking and consuming outputs, Guided IG's
selection, XRAI's segmentation and ranking, and the bookkeeping of every call.
That is what a method adds per row when the model runs on an accelerator and
costs a fraction of a millisecond per row.

Every method of :mod:`salience.registry`, built by name with its registry
parameters (the ones ``salience.explain`` and the command line use), explains 8
real 224 x 224 photos (2 in ``--quick``; channels first, float32) at
``batch_size=32``; the rows are counted at the model.  The table gives the best
wall time of the whole call, the CPU time of every thread of the process in
that call (helper threads included), and both per model row.  Methods with one
row per image share each call's fixed cost among only that many rows, so their
figures per row fall with larger batches.  XRAI's row includes its
segmentation, which is also timed alone (``XRAI.explain_with_details`` with
given attributions, segmentation overlapped across the images as XRAI does).

The README turns these figures into an estimate for a data-centre GPU, against
per-row model times from NVIDIA's published training throughput (see
``ACCELERATOR_ROW_MS``); the ``notes`` give that estimate, pessimistically
assuming none of the own work overlaps the model: ``1 + own / model``, with
``own`` the smaller of wall and CPU time per row (CPU time exceeds the own work
when helper threads overlap, wall time when other processes load the machine).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from common import make_row, photos

import salience
from salience import registry
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

AREA = "own work per row (zero-cost model, 224 px)"
SIZE = 224
BATCH = 32
LAYER_SHAPE = (1280, 7, 7)  # EfficientNet-Lite0's head activation, channels first

# Per-row model time (forward and backward) on one NVIDIA A100 80GB, from NVIDIA's
# published single-GPU training throughput (PyTorch, DeepLearningExamples):
# EfficientNet-B0 (the architecture Lite0 simplifies) 1078 img/s TF32, 2489 img/s
# mixed precision; ResNet-50 v1.5 938 img/s TF32, 2470 img/s mixed precision.
# https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/efficientnet/README.md
# https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/resnet50v1.5/README.md
ACCELERATOR_ROW_MS = {
    "Lite0-class, A100 TF32": 1e3 / 1078,
    "Lite0-class, A100 mixed precision": 1e3 / 2489,
    "ResNet-50, A100 TF32": 1e3 / 938,
    "ResNet-50, A100 mixed precision": 1e3 / 2470,
}


class ZeroCostModel:
    """A channels-first model that costs nothing: views of fixed random outputs.

    The gradients are random (not zeros), so methods whose path depends on
    them (Guided IG's selection) do their usual work.
    """

    channels_last = False
    # As the torch and JAX adapters, which copy every input into their own arrays:
    # methods then skip their own copy (the Keras and TF1 adapters keep it, ~0.02 ms
    # per 224 px row more).
    copies_input = True

    def __init__(self, max_rows: int, row_shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        self.grads = rng.standard_normal((max_rows, *row_shape), dtype=np.float32)
        self.scores = rng.standard_normal(max_rows, dtype=np.float32)
        self.layer = rng.random((max_rows, *LAYER_SHAPE), dtype=np.float32)
        self.layer_grads = rng.standard_normal((max_rows, *LAYER_SHAPE), dtype=np.float32)
        self.rows = 0  # rows asked for so far: what a method costs in model rows

    def noisy_rows(self, images: np.ndarray, owners: np.ndarray, scales: np.ndarray,
                   seeds: np.ndarray) -> Any:
        """Noisy rows "on the device" at no cost: what SmoothGrad's ``noise_on="model"``
        leaves on the host when an accelerator draws the noise (stand-in values, read
        by no one: the gradients do not depend on them)."""
        from salience._adapter import DeviceRows  # here: bench/ab_own_work.py runs older trees

        return DeviceRows(self.grads[:len(owners)], images[:1], np.asarray)

    def filtered_rows(self, images: np.ndarray, owners: np.ndarray, terms: Any,
                      axes: tuple[int, int]) -> Any:
        """Filtered rows "on the device" at no cost: what Blur IG's ``blur_on="model"``
        leaves on the host (stand-in values: the rates read back are random, which
        costs the host the same as real ones)."""
        from salience._adapter import DeviceRows

        return DeviceRows(self.grads[:len(owners)], images[:1], np.asarray)

    def __call__(self, x: np.ndarray, targets: Any, keys: list[str]) -> dict[str, np.ndarray]:
        n = len(x)
        self.rows += n
        out = {OUTPUT_LAYER_VALUES: self.scores[:n]}
        for key in keys:
            if key in (INPUT_OUTPUT_GRADIENTS, GUIDED_INPUT_GRADIENTS):
                out[key] = self.grads[:n]
            elif key == CONVOLUTION_LAYER_VALUES:
                out[key] = self.layer[:n]
            elif key == CONVOLUTION_OUTPUT_GRADIENTS:
                out[key] = self.layer_grads[:n]
        return out


def cases(quick: bool) -> list[tuple[str, str, Callable[[], Any]]]:
    """(method, setting, make() -> Method): every method in :mod:`salience.registry`,
    built by name with its registry parameters at ``batch_size=32``, SmoothGrad
    with its noise drawn on the (free) model's device, and Blur IG blurring there."""
    out = []
    for name in registry.names():
        entry = registry.get(name)
        params = {**(registry.get(entry.wraps).parameters if entry.wraps else {}),
                  **entry.parameters}
        setting = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
        out.append((entry.cls.__name__, setting, lambda e=entry: e.build(BATCH)))
    # SmoothGrad with its noise drawn where the model runs (an accelerator's
    # adapter, here free): what stays on the host per row.  (Trees before
    # noise_on, which bench/ab_own_work.py may run, skip it.)
    if "noise_on" in inspect.signature(salience.SmoothGrad).parameters:
        out.append(("SmoothGrad", "nsamples=25, noise_on=model", lambda: salience.SmoothGrad(
            salience.Gradients(BATCH), nsamples=25, seed=0, noise_on="model")))
    # Blur IG with its path points and rates made where the model runs.
    if "blur_on" in inspect.signature(salience.BlurIG).parameters:
        steps = registry.get("blur_ig").parameters["steps"]
        out.append(("BlurIG", f"steps={steps}, blur_on=model", lambda: salience.BlurIG(
            steps=steps, batch_size=BATCH, blur_on="model")))
    return out


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads) of ``fn``, after a warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def _estimate(own_row_s: float) -> str:
    parts = [f"{name} ({ms:.2f} ms/row): {1 + own_row_s * 1e3 / ms:.2f}x"
             for name, ms in ACCELERATOR_ROW_MS.items()]
    return "serial estimate on " + ", ".join(parts)


def own_work_images(images: int) -> np.ndarray:
    """``images`` photos at 224 px, channels first, in [0, 1]."""
    return np.ascontiguousarray(
        photos(images, SIZE).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)


def measure_cases(x: np.ndarray, repeats: int, methods: Sequence[str] = ()
                  ) -> Iterator[tuple[str, str, int, float, float]]:
    """(method, setting, model rows, best wall s, best CPU s) of each registry case on
    ``x`` against the zero-cost model; only the classes named in ``methods``, if given."""
    targets = np.arange(len(x), dtype=np.int64)
    model = ZeroCostModel(BATCH, x.shape[1:])
    for method, setting, make in cases(quick=False):
        if methods and method not in methods:
            continue
        explainer = make()
        model.rows = 0
        explainer.explain(model, x, targets)
        rows = model.rows  # counted, so the table cannot disagree with the method
        wall, cpu = _timed(lambda m=explainer: m.explain(model, x, targets), repeats)
        yield method, setting, rows, wall, cpu


def run(quick: bool) -> list[dict]:
    repeats = 3 if quick else 5
    images = 2 if quick else 8
    x = own_work_images(images)
    rows_out = []
    for method, setting, rows, wall, cpu in measure_cases(x, repeats):
        # Own work is the smaller of the two: CPU time exceeds it when helper threads
        # overlap (XRAI's segmentation), wall time when other processes take the CPU.
        per_row = min(wall, cpu) / rows
        rows_out.append(make_row(
            AREA, method, "zero-cost model",
            f"{images} images {SIZE}px" + (f", {setting}" if setting else "")
            + f", batch_size={BATCH}",
            wall, notes=(f"{rows} rows; per row {wall / rows * 1e3:.3f} ms wall, "
                         f"{cpu / rows * 1e3:.3f} ms CPU (all threads); {_estimate(per_row)}")))
        rows_out[-1]["own_per_row_s"] = per_row
        rows_out[-1]["own_cpu_per_row_s"] = cpu / rows
        print(f"   {method}: {rows} rows, {wall / rows * 1e3:.3f} ms/row wall, "
              f"{cpu / rows * 1e3:.3f} ms/row CPU", flush=True)
    rows_out.append(_segmentation_alone(x, repeats))
    rows_out.append(_guided_step_dispatch(repeats))
    return rows_out


def _guided_step_dispatch(repeats: int) -> dict:
    """What Guided IG's walk on the model's device (``select_on="model"``) leaves on the
    host per path step: dispatching the step's framework operations.  Timed with the
    torch adapter's array operations on rows of 16 values, whose arithmetic is nil, for
    1 and for 32 rows (a fixed cost per step, not per row)."""
    import torch

    import salience.torch
    from salience.methods.guided_ig.selection import StepTarget, advance_rows_with

    ops = salience.torch.wrap(torch.nn.Linear(16, 2)).array_ops()
    rng = np.random.default_rng(0)
    per_step = {}
    for rows in (1, 32):
        weights = ops.asarray(rng.random((rows, 16)))
        grads = ops.asarray(rng.normal(size=(rows, 16)).astype(np.float32))
        t, l1_total, target = weights * 0.0, ops.row_sums(weights), StepTarget.of(3, 10, 0.02)

        def step(t=t, weights=weights, grads=grads, l1_total=l1_total, target=target):
            moved = advance_rows_with(ops, t, weights, abs(grads), target, 3, l1_total)
            return t + (moved - t) * grads  # the walk's sum of gradient x change

        wall, _ = _timed(lambda: [step() for _ in range(100)], repeats)
        per_step[rows] = wall / 100
    return make_row(AREA, "GuidedIG step on the device (select_on=model)", "torch, CPU",
                    "rows of 16 values (the framework's arithmetic nil)", per_step[32],
                    notes=(f"host dispatch per path step: {per_step[1] * 1e6:.0f} us with "
                           f"1 row, {per_step[32] * 1e6:.0f} us with 32 rows"))


def _segmentation_alone(x: np.ndarray, repeats: int) -> dict:
    """XRAI's segmentation of the images alone (given attributions, no model)."""
    method = salience.XRAI()
    attributions = np.random.default_rng(1).random(x.shape, dtype=np.float32)
    wall, cpu = _timed(lambda: method.explain_with_details(
        ZeroCostModel(1, x.shape[1:]), x, attributions=attributions), repeats)
    return make_row(AREA, "XRAI segmentation and ranking", "no model",
                    f"{len(x)} images {SIZE}px (given attributions)", wall,
                    notes=(f"per image {wall / len(x) * 1e3:.1f} ms wall, "
                           f"{cpu / len(x) * 1e3:.1f} ms CPU (all threads); segmentation "
                           "overlapped across the images of the batch"))


# ------------------------------------------------------------------ README table

README_GPUS = (("EfficientNet-B0, TF32", "Lite0-class, A100 TF32"),
               ("EfficientNet-B0, mixed", "Lite0-class, A100 mixed precision"),
               ("ResNet-50, TF32", "ResNet-50, A100 TF32"),
               ("ResNet-50, mixed", "ResNet-50, A100 mixed precision"))


def readme_table(results: str) -> str:
    """README's accelerator table from the own-work section of a results file:
    per method, the model rows per image, the own work per row (the smaller of
    wall and CPU time) and ``1 + own / model`` for each GPU row time (bold above
    1.10x)."""
    import re

    section = re.search(rf"^## {re.escape(AREA)}.*?\n(.*?)(?=^## |\Z)", results, re.S | re.M)
    if section is None:
        raise SystemExit(f"no '## {AREA}' section in the results")
    lines = ["| method (registry settings) | model rows per image | own work per row | "
             + " | ".join(f"{name} ({ACCELERATOR_ROW_MS[key]:.2f} ms/row)"
                          for name, key in README_GPUS) + " |",
             "|---|---:|---:|" + "---:|" * len(README_GPUS)]
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = len(cells) > 9 and re.search(
            r"(\d+) rows; per row ([\d.]+) ms wall, ([\d.]+) ms CPU", cells[9])
        if not found:
            continue
        images = int(re.match(r"(\d+) images", cells[2]).group(1))
        rows, wall, cpu = int(found.group(1)), float(found.group(2)), float(found.group(3))
        own = min(wall, cpu)
        setting = re.sub(rf"^\d+ images {SIZE}px,? ?|,? ?batch_size={BATCH}$", "", cells[2])
        estimates = [1 + own / ACCELERATOR_ROW_MS[key] for _, key in README_GPUS]
        lines.append(f"| {cells[0]}{f' ({setting})' if setting else ''} | {rows // images} | "
                     f"{own:.3f} ms | "
                     + " | ".join(f"**{e:.2f}x**" if e > 1.10 else f"{e:.2f}x"
                                  for e in estimates) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # python bench/bench_own_work.py bench/RESULTS-quick.md: print README's table
    print(readme_table(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/RESULTS-quick.md")
                       .read_text()))
