"""Guided IG and XRAI: salience beside PAIR ``saliency==0.2.1`` and the model floor.

- tiny CNN: Guided IG (1 and 8 images) and XRAI 'full' / 'fast' (64 and 224
  pixel images) beside the reference on identical work (same image, class,
  steps, baselines and ``batch_size``), timed interleaved;
- EfficientNet-Lite0 at 224: XRAI (segmentation included) and Guided IG on a
  batch of 8 images against the model floor (the same forward+backward rows at
  the best batch size), timed interleaved;
- XRAI on 224, 512 and 1024 pixel images (tiny CNN): time and peak traced
  memory (tracemalloc), per megapixel, to show linear growth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from common import (
    FULL_REPEATS,
    QUICK_REPEATS,
    ModelSetup,
    floor_callable,
    judge,
    lite0_setup,
    make_row,
    pair_args,
    peak_memory,
    reference_core,
    time_call,
    time_interleaved,
    tiny_setup,
)

import salience
from salience.model import INPUT_OUTPUT_GRADIENTS

GRAD = [INPUT_OUTPUT_GRADIENTS]
AREA = "Guided IG / XRAI"
XRAI_BATCH = 32  # rows per model call, for salience and the reference alike


def _reference_loop(setup: ModelSetup, one):
    ref = reference_core()

    def run():
        return np.stack([np.asarray(one(ref, setup.x_hwc[i], setup.call_model_function,
                                        pair_args(setup.targets[i])))
                         for i in range(len(setup.x_hwc))])

    return run


def _rel_diff(ours: np.ndarray, theirs: np.ndarray) -> float | None:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return None
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def _guided_ig_vs_reference(setup: ModelSetup, steps: int, repeats: int, goal: str | None):
    n = len(setup.x)
    method = salience.GuidedIG(steps=steps, batch_size=max(n, 1))
    floor = floor_callable(setup.model, setup.x[:1], n * steps, GRAD, int(setup.targets[0]))
    # Each step holds one row per image: the floor the lockstep walk can reach.
    lockstep = floor_callable(setup.model, setup.x[:1], n * steps, GRAD,
                              int(setup.targets[0]), batch_size=n)
    t = time_interleaved({
        "salience": lambda: method.explain(setup.model, setup.x, setup.targets),
        "reference": _reference_loop(setup, lambda ref, x, f, a: ref.GuidedIG().GetMask(
            x, f, a, x_steps=steps, fraction=0.25, max_dist=0.02)),
        "floor": floor,
        "lockstep floor": lockstep if lockstep.batch_size != floor.batch_size else None,
    }, repeats=repeats)
    ours = t["salience"].result.transpose(0, 2, 3, 1)
    diff = _rel_diff(ours, t["reference"].result)
    row = make_row(AREA, "GuidedIG", setup.name,
                   f"{n} image{'s' if n > 1 else ''} {setup.x.shape[2]}px, steps={steps}",
                   t["salience"].best, reference_s=t["reference"].best, floor_s=t["floor"].best,
                   notes=f"{n * steps} rows, floor batch {floor.batch_size}; max rel. diff vs "
                         f"reference {diff:.1e}")
    if t["lockstep floor"] is not None:
        row["notes"] += f"; floor at batch {n} (lockstep) {t['lockstep floor'].best * 1e3:.1f} ms"
    bound = t["lockstep floor"].best if t["lockstep floor"] is not None else None
    return judge(row, goal, bound_floor_s=bound) if goal else row


def _xrai_vs_reference(setup: ModelSetup, algorithm: str, steps: int, repeats: int,
                       goal: str | None):
    method = salience.XRAI(steps=steps, algorithm=algorithm, batch_size=XRAI_BATCH)
    rows = 2 * steps * len(setup.x)
    floor = floor_callable(setup.model, setup.x[:1], rows, GRAD, int(setup.targets[0]))

    def reference(ref, x, f, a):
        params = ref.XRAIParameters(steps=steps, algorithm=algorithm)
        return ref.XRAI().GetMask(x, f, a, batch_size=XRAI_BATCH, extra_parameters=params)

    t = time_interleaved({
        "salience": lambda: method.explain(setup.model, setup.x, setup.targets),
        "reference": _reference_loop(setup, reference),
        "floor": floor,
    }, repeats=repeats)
    diff = _rel_diff(t["salience"].result, t["reference"].result)
    row = make_row(AREA, f"XRAI {algorithm}", setup.name,
                   f"1 image {setup.x.shape[2]}px, steps={steps}, batch_size={XRAI_BATCH}",
                   t["salience"].best, reference_s=t["reference"].best, floor_s=t["floor"].best,
                   notes=f"{rows} rows, floor batch {floor.batch_size}; max rel. diff vs "
                         f"reference {diff:.1e}")
    return judge(row, goal) if goal else row


def _vs_floor(setup: ModelSetup, name: str, method: Any, rows: int, setting: str, repeats: int,
              goal: str, reference=None, lockstep: bool = False):
    # A lockstep walk (Guided IG) holds one row per image per model call: its floor runs at
    # that batch, as the tiny CNN rows above do.
    floor = floor_callable(setup.model, setup.x[:1], rows, GRAD, int(setup.targets[0]),
                           **({"batch_size": len(setup.x)} if lockstep else {}))
    t = time_interleaved({
        "salience": lambda: method.explain(setup.model, setup.x, setup.targets),
        "reference": reference,
        "floor": floor,
    }, repeats=repeats)
    row = make_row(AREA, name, setup.name, setting, t["salience"].best,
                   reference_s=t["reference"].best if t["reference"] else None,
                   floor_s=t["floor"].best, notes=f"{rows} rows, floor batch {floor.batch_size}")
    return judge(row, goal)


def _xrai_scaling(sizes, steps: int, repeats: int) -> list[dict]:
    out = []
    for size in sizes:
        setup = tiny_setup(1, size=size)
        method = salience.XRAI(steps=steps, batch_size=XRAI_BATCH)
        call = lambda setup=setup, method=method: method.explain(  # noqa: E731
            setup.model, setup.x, setup.targets)
        t = time_call(call, repeats=repeats)
        mem = peak_memory(call)
        mpx = size * size / 1e6
        out.append(make_row(
            AREA, "XRAI full (scaling)", setup.name, f"1 image {size}px, steps={steps}",
            t.best, notes=f"{t.best / mpx:.2f} s/Mpx; peak traced {mem['traced_mib']:.0f} MiB "
                          f"({mem['traced_mib'] / mpx:.0f} MiB/Mpx)"))
    return out


def run(quick: bool) -> list[dict]:
    import torch

    torch.manual_seed(0)
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    gig_steps = 50 if quick else 200
    xrai_steps = 20 if quick else 100
    rows: list[dict] = []

    # Guided IG on one 64 px image is bound by 200 single-row model calls in both
    # libraries; the batch runs every image's step in one call (lockstep), and at
    # 224 px the per-step selection (numpy) dominates.
    tiny = tiny_setup(8)
    rows.append(_guided_ig_vs_reference(tiny.subset(1), gig_steps, repeats, None))
    rows.append(_guided_ig_vs_reference(tiny, gig_steps, 1 if quick else 2,
                                        ">= 5x vs reference"))
    rows.append(_guided_ig_vs_reference(tiny_setup(1, size=224), gig_steps, repeats,
                                        ">= 5x vs reference"))
    for size in (64, 224):
        one = tiny_setup(1, size=size)
        for algorithm, goal in (("full", ">= 6x vs reference"), ("fast", ">= 4x vs reference")):
            rows.append(_xrai_vs_reference(one, algorithm, xrai_steps, repeats,
                                           goal if size == 224 else None))

    lite = lite0_setup(8)
    one = lite.subset(1)
    rows.append(_vs_floor(one, "XRAI full", salience.XRAI(steps=xrai_steps,
                                                          batch_size=XRAI_BATCH),
                          2 * xrai_steps, f"1 image 224px, steps={xrai_steps}, segmentation "
                          "included", repeats, "<= 1.25x floor"))
    batch = lite
    n = len(batch.x)
    steps = 10 if quick else 200
    rows.append(_vs_floor(batch, "GuidedIG", salience.GuidedIG(steps=steps, batch_size=n),
                          n * steps, f"{n} images 224px, steps={steps}", 1 if quick else 2,
                          "<= 1.15x floor", lockstep=True))

    rows.extend(_xrai_scaling((224, 512) if quick else (224, 512, 1024), xrai_steps,
                              1 if quick else 2))
    return rows
