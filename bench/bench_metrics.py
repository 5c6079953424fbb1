"""Metrics: a PIC (SIC) curve and insertion/deletion curves on EfficientNet-Lite0.

- PIC: one 224-pixel photo, the 13 thresholds of the XRAI paper (4 in quick runs), SIC via
  ``pred_func_from_model`` (softmax of the model's outputs).  salience sends the
  images to the model in batches; the reference (PAIR ``saliency.metrics.pic``,
  with ``np.trapz`` restored for numpy 2) calls the same ``pred_func`` one image at
  a time.  The floor is the same number of forward rows (thresholds + 2) at the
  best batch size.  Both libraries must interpolate and WebP-encode every
  thresholded image to give PAIR's numbers; that image work is timed on its own
  (``image work`` in the notes) so the model part can be read off.
- Insertion and deletion: 8 photos, 50 steps, zero / blurred baselines, the
  target logit through the row scheduler; the floor is the same 2 x 8 x 51
  forward rows.  PAIR has no insertion/deletion, so there is no reference.

All callables of a row are timed interleaved in one run (see ``common``).
"""

from __future__ import annotations

import numpy as np
from common import (
    FULL_REPEATS,
    QUICK_REPEATS,
    floor_callable,
    judge,
    lite0_setup,
    make_row,
    photos,
    time_interleaved,
)

from salience.metrics import insertion_deletion as idl
from salience.metrics import pic
from salience.model import INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES
from salience.zoo.efficientnet_lite import preprocess_lite0

THRESHOLDS = [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75]
QUICK_THRESHOLDS = [0.01, 0.05, 0.21, 0.5]
FORWARD = [OUTPUT_LAYER_VALUES]


def _gradient_map(setup) -> np.ndarray:
    """|gradient| summed over channels: a real map, computed once outside the timings."""
    grads = setup.model(setup.x[:1], setup.targets[:1], [INPUT_OUTPUT_GRADIENTS])
    return np.abs(grads[INPUT_OUTPUT_GRADIENTS][0]).sum(axis=0)


def _reference_pic(*args, **kwargs):
    from saliency.metrics import pic as ref_pic

    patched = not hasattr(np, "trapz")
    if patched:
        np.trapz = np.trapezoid
    try:
        return ref_pic.compute_pic_metric(*args, **kwargs)
    finally:
        if patched:
            del np.trapz


def pic_row(quick: bool) -> dict:
    setup = lite0_setup(1)
    img = photos(1, 224)[0]
    smap = _gradient_map(setup)
    target = int(setup.targets[0])
    pred_func = pic.pred_func_from_model(setup.model, target, "sic", preprocess_lite0)
    mask = pic.generate_random_mask(224, 224, rng=np.random.default_rng(0))
    thresholds = QUICK_THRESHOLDS if quick else THRESHOLDS
    args = (img, smap, mask, pred_func, thresholds)
    kwargs = dict(min_pred_value=0.0)
    rows = len(thresholds) + 2

    def image_work():
        for t in thresholds:
            revealed = smap >= np.quantile(smap, 1 - t)
            pic.estimate_image_entropy(pic.create_blurred_image(img, revealed | mask))

    fns = {
        # batch_size is salience's extension (PAIR, and salience by default: one image per call)
        "salience": lambda: pic.compute_pic_metric(*args, **kwargs, batch_size=rows),
        "reference": lambda: _reference_pic(*args, **kwargs),
        "floor": floor_callable(setup.model, setup.x[:1], rows, FORWARD, target),
        "image work": image_work,
    }
    t = time_interleaved(fns, repeats=QUICK_REPEATS if quick else FULL_REPEATS)
    ours, ref = t["salience"].result, t["reference"].result
    notes = (
        f"{rows} forward rows; the image work alone (interpolation + WebP of "
        f"{len(thresholds)} images, one thread; fixed by PAIR's definition of the metric) "
        f"takes {t['image work'].best:.2f} s = {t['image work'].best / t['floor'].best:.2f}x "
        f"floor; AUC {ours.auc:.6f} vs reference {ref.auc:.6f} "
        f"(|diff| {abs(ours.auc - ref.auc):.1e}); the reference runs as shipped (its "
        "griddata on the process's default BLAS threads)"
    )
    row = make_row("metrics", "PIC (SIC) curve", setup.name,
                   f"1 image 224px, {len(thresholds)} thresholds, salience batch_size={rows}",
                   t["salience"].best,
                   reference_s=t["reference"].best, floor_s=t["floor"].best, notes=notes)
    return judge(row, "<= 1.2x floor")


def insertion_deletion_row(quick: bool) -> dict:
    n, steps = (2, 10) if quick else (8, 50)
    setup = lite0_setup(n)
    rng = np.random.default_rng(0)
    maps = rng.random((n, 224, 224))  # the map's content does not change the cost
    rows = 2 * n * (steps + 1)

    floor = floor_callable(setup.model, setup.x[:1], rows, FORWARD, int(setup.targets[0]))
    best = floor.batch_size  # the user's batch_size: the model's best, as for the floor

    def both():
        return idl.insertion_deletion_curves(setup.model, setup.x, maps, setup.targets,
                                             steps=steps, insertion_baseline="blurred",
                                             deletion_baseline="zeros", batch_size=best)

    fns = {"salience": both, "floor": floor}
    # 816 EfficientNet rows per call in the full run: 3 interleaved rounds, not 5.
    t = time_interleaved(fns, repeats=QUICK_REPEATS if quick else 3)
    ins, dele = t["salience"].result
    notes = (f"{rows} forward rows, batch_size={best}; mean insertion AUC {ins.auc.mean():.3f}, "
             f"deletion AUC {dele.auc.mean():.3f} (random maps)")
    row = make_row("metrics", "insertion + deletion", setup.name,
                   f"{n} images 224px, {steps} steps", t["salience"].best,
                   floor_s=t["floor"].best, notes=notes)
    return judge(row, "<= 1.2x floor")


def run(quick: bool) -> list[dict]:
    return [pic_row(quick), insertion_deletion_row(quick)]


if __name__ == "__main__":
    import sys

    for r in run("--quick" in sys.argv):
        print(r)
