"""Core methods: salience beside PAIR ``saliency==0.2.1``, Captum and the model floor.

For each method, on (a) a tiny CNN where library overhead dominates and (b) the
pretrained EfficientNet-Lite0 at 224 pixels:

- salience: the batch-first method on the PyTorch adapter (channels first);
- reference: PAIR's class, one ``GetMask`` per image as PAIR users call it, with
  a PAIR-style channels-last ``call_model_function`` on the same module, same
  image, same target class and same parameters;
- captum: Captum's equivalent on the same module where it has one, with its
  batching option set to the model's best batch size;
- floor: the same number of model rows (forward+backward for gradient methods,
  forward only for Occlusion) at the best batch size.

All four are timed interleaved in one run.  Scaling rows explain batches of 1, 8
and 32 images (the reference loops over the images, as it must).  Maps are
compared with the reference where both are deterministic (``notes``: max
relative difference).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from common import (
    FULL_REPEATS,
    QUICK_REPEATS,
    ModelSetup,
    floor_batch_size,
    floor_callable,
    judge,
    lite0_setup,
    make_row,
    pair_args,
    print_progress,
    reference_core,
    time_interleaved,
    tiny_setup,
)
from peers import captum_input_x_gradient, captum_surrogate, grad_cam_peer

import salience
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

GRAD = [INPUT_OUTPUT_GRADIENTS]
LAYER = [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS]


@dataclass
class Case:
    """One method with one parameter setting, runnable by every library."""

    method: str
    setting: str
    keys: list[str]
    rows_per_image: Callable[[ModelSetup], int]
    salience: Callable[[], Any] | None
    reference: Callable[[Any, np.ndarray, Any, dict], Any] | None
    captum: Callable[[ModelSetup, int], Callable[[], Any]] | None = None
    deterministic: bool = True
    batch: int | None = None  # None: the floor's best batch size
    target: dict[str, str] = field(default_factory=dict)  # model name -> ">= 8x" / "<= 1.10x"
    # The method sends at most one row per image per model call (Guided IG's lockstep
    # walk), so its floor is at that batch size at most.
    lockstep: bool = False
    # Another peer library (pytorch-grad-cam): make(setup, best) -> callable or None.
    peer: Callable[[ModelSetup, int], Callable[[], Any] | None] | None = None
    peer_name: str = ""
    # Rows of different kinds (Guided Grad-CAM: guided and layer gradients; Score-CAM:
    # a layer row, then forward rows): (keys, rows per image) each, floored apart.
    floor_parts: Callable[[ModelSetup], list[tuple[list[str], int]]] | None = None


# ---------------------------------------------------------------- Captum


def _captum_target(setup: ModelSetup):
    import torch

    return torch.as_tensor(setup.targets)


def _captum_x(setup: ModelSetup):
    import torch

    return torch.as_tensor(setup.x)


def captum_saliency(setup: ModelSetup, best: int):
    from captum.attr import Saliency

    algo, x, t = Saliency(setup.module), _captum_x(setup), _captum_target(setup)
    return lambda: algo.attribute(x, target=t, abs=False)


def captum_smoothgrad(nsamples: int):
    return lambda setup, best: _captum_smoothgrad(setup, best, nsamples)


def _captum_smoothgrad(setup: ModelSetup, best: int, nsamples: int):
    from captum.attr import NoiseTunnel, Saliency

    algo, x, t = NoiseTunnel(Saliency(setup.module)), _captum_x(setup), _captum_target(setup)

    def run():
        # Captum takes one absolute stdev; PAIR scales it per image by its range.
        outs = []
        for i in range(len(x)):
            spread = 0.15 * float(x[i].max() - x[i].min())
            outs.append(algo.attribute(x[i:i + 1], nt_type="smoothgrad_sq", nt_samples=nsamples,
                                       nt_samples_batch_size=best, stdevs=spread,
                                       target=t[i:i + 1], abs=False))
        return outs

    return run


def captum_ig(steps: int):
    def make(setup: ModelSetup, best: int):
        from captum.attr import IntegratedGradients

        algo, x, t = IntegratedGradients(setup.module), _captum_x(setup), _captum_target(setup)
        return lambda: algo.attribute(x, target=t, n_steps=steps, method="riemann_right",
                                      internal_batch_size=max(best, 1))

    return make


def captum_occlusion(size: int):
    def make(setup: ModelSetup, best: int):
        from captum.attr import Occlusion

        algo, x, t = Occlusion(setup.module), _captum_x(setup), _captum_target(setup)
        return lambda: algo.attribute(x, target=t, sliding_window_shapes=(x.shape[1], size, size),
                                      strides=1, baselines=0, perturbations_per_eval=best)

    return make


def captum_gradcam(setup: ModelSetup, best: int):
    from captum.attr import LayerAttribution, LayerGradCam

    from salience.torch import find_layer

    algo = LayerGradCam(setup.module, find_layer(setup.module, setup.layer_name))
    x, t = _captum_x(setup), _captum_target(setup)

    def run():
        cam = algo.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")

    return run


def captum_guided_backprop(setup: ModelSetup, best: int):
    from captum.attr import GuidedBackprop

    algo, x, t = GuidedBackprop(setup.module), _captum_x(setup), _captum_target(setup)
    return lambda: algo.attribute(x, target=t)


# ---------------------------------------------------------------- cases


def cases(model_name: str, quick: bool, occlusion_size: int) -> list[Case]:
    """The cases for one model.  Salience and reference callables take the batch
    size ``b`` last: a Case with ``batch=None`` runs at the floor's best batch size
    (what a user tuning ``batch_size`` for the model would pick)."""
    tiny = model_name == "tiny CNN"
    small = quick and not tiny  # quick run on the big model: fewer rows, same code paths
    nsamples, ig_steps, blur_steps = (8, 8, 10) if small else (25, 25, 100)
    out: list[Case] = []
    floor_target = {} if tiny else {model_name: "<= 1.10x floor"}

    out.append(Case(
        "Gradients", "", GRAD, lambda s: 1, lambda b: salience.Gradients(batch_size=b),
        lambda ref, x, f, a, b: ref.GradientSaliency().GetMask(x, f, a),
        captum_saliency, target=floor_target))
    out.append(Case(
        "SmoothGrad", f"Gradients, nsamples={nsamples}, stdev_spread=0.15, magnitude", GRAD,
        lambda s: nsamples,
        lambda b: salience.SmoothGrad(salience.Gradients(batch_size=b), nsamples=nsamples,
                                      seed=0),
        lambda ref, x, f, a, b: ref.GradientSaliency().GetSmoothedMask(
            x, f, a, stdev_spread=0.15, nsamples=nsamples, magnitude=True),
        captum_smoothgrad(nsamples), deterministic=False,
        target={"tiny CNN": ">= 1.8x vs reference"} if tiny else floor_target))
    for b in ((1, 25) if tiny else (None,)):
        out.append(Case(
            "IntegratedGradients", f"steps={ig_steps}", GRAD, lambda s: ig_steps,
            lambda b: salience.IntegratedGradients(steps=ig_steps, batch_size=b),
            lambda ref, x, f, a, b: ref.IntegratedGradients().GetMask(
                x, f, a, x_steps=ig_steps, batch_size=b),
            captum_ig(ig_steps), batch=b,
            target=({"tiny CNN": ">= 1.1x vs reference"} if tiny and b == 1
                    else ({} if tiny else floor_target))))
    for b in ((1, 32) if tiny else (None,)):
        out.append(Case(
            "BlurIG", f"max_sigma=50, steps={blur_steps}", GRAD, lambda s: blur_steps,
            lambda b: salience.BlurIG(max_sigma=50, steps=blur_steps, batch_size=b),
            lambda ref, x, f, a, b: ref.BlurIG().GetMask(
                x, f, a, max_sigma=50, steps=blur_steps, batch_size=b),
            None, batch=b,
            target=({"tiny CNN": ">= 8x vs reference"} if tiny and b == 32
                    else ({} if tiny else floor_target))))
    size = occlusion_size
    out.append(Case(
        "Occlusion", f"size={size}, value=0 (stride 1)", [OUTPUT_LAYER_VALUES],
        lambda s: 1 + (s.x.shape[2] - size + 1) * (s.x.shape[3] - size + 1),
        lambda b: salience.Occlusion(size=size, value=0, batch_size=b),
        lambda ref, x, f, a, b: ref.Occlusion().GetMask(x, f, a, size=size, value=0),
        captum_occlusion(size),
        target={"tiny CNN": ">= 1.1x vs reference"} if tiny else floor_target))
    out.append(Case(
        "GradCAM", "resize", LAYER, lambda s: 1,
        lambda b: salience.GradCAM(resize=True, batch_size=b),
        lambda ref, x, f, a, b: ref.GradCam().GetMask(x, f, a, should_resize=True,
                                                      three_dims=False),
        captum_gradcam, target=floor_target, peer=grad_cam_peer("GradCAM"),
        peer_name="pytorch-grad-cam"))
    out += new_method_cases(quick, tiny, floor_target)
    if hasattr(salience, "GuidedBackprop"):
        out.append(Case(
            "GuidedBackprop", "", [GUIDED_INPUT_GRADIENTS], lambda s: 1,
            lambda b: salience.GuidedBackprop(batch_size=b), None, captum_guided_backprop,
            target=floor_target))
    if hasattr(salience, "GuidedIG") and not small:
        steps = 50 if quick else 200
        out.append(Case(
            "GuidedIG", f"steps={steps}, fraction=0.25, max_dist=0.02", GRAD,
            lambda s: steps, lambda b: _guided_ig(steps, b),
            lambda ref, x, f, a, b: ref.GuidedIG().GetMask(
                x, f, a, x_steps=steps, x_baseline=None, fraction=0.25, max_dist=0.02),
            None, target=floor_target, lockstep=True))
    return out


def new_method_cases(quick: bool, tiny: bool, floor_target: dict[str, str]) -> list[Case]:
    """Input x Gradient, the CAM family, RISE, LIME and Kernel SHAP (issue 15), beside
    pytorch-grad-cam or Captum where they have the method."""
    masks, samples = (500, 200) if quick else (2000, 1000)
    surrogate_target = {} if tiny else {"EfficientNet-Lite0": "<= 1.15x floor"}
    out = [Case("InputXGradient", "", GRAD, lambda s: 1,
                lambda b: salience.InputXGradient(batch_size=b), None,
                captum_input_x_gradient, target=floor_target)]
    for name in ("GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"):
        out.append(Case(  # the floor: the layer outputs the method asks for (Eigen-CAM: values)
            name, "resize", list(getattr(salience, name).keys), lambda s: 1,
            lambda b, name=name: getattr(salience, name)(resize=True, batch_size=b), None,
            target=floor_target, peer=grad_cam_peer(name), peer_name="pytorch-grad-cam"))
    out.append(Case(
        "ScoreCAM", "resize, one forward row per channel", [OUTPUT_LAYER_VALUES],
        lambda s: 1 + _layer_channels(s), lambda b: salience.ScoreCAM(batch_size=b), None,
        target=floor_target, peer=grad_cam_peer("ScoreCAM"), peer_name="pytorch-grad-cam",
        floor_parts=lambda s: [([CONVOLUTION_LAYER_VALUES], 1),
                               ([OUTPUT_LAYER_VALUES], _layer_channels(s))]))
    out.append(Case(
        "GuidedGradCAM", "", [GUIDED_INPUT_GRADIENTS], lambda s: 2,
        lambda b: salience.GuidedGradCAM(batch_size=b), None, target=floor_target,
        floor_parts=lambda s: [([GUIDED_INPUT_GRADIENTS], 1), (LAYER, 1)]))
    out.append(Case(
        "RISE", f"n_masks={masks}, grid_size=7, p=0.5", [OUTPUT_LAYER_VALUES],
        lambda s: masks, lambda b: salience.RISE(n_masks=masks, seed=0, batch_size=b), None,
        deterministic=False, target=surrogate_target))
    for name, kind in (("LIME", "lime"), ("KernelSHAP", "kernel_shap")):
        out.append(Case(
            name, f"n_samples={samples}, SLIC n_segments=50 (in the timed call)",
            [OUTPUT_LAYER_VALUES], lambda s: samples,
            lambda b, name=name: getattr(salience, name)(n_samples=samples, seed=0,
                                                         batch_size=b),
            None, captum_surrogate(kind, samples, 50), deterministic=False,
            target=surrogate_target))
    return out


def _guided_ig(steps: int, b: int):
    import inspect

    params = inspect.signature(salience.GuidedIG).parameters
    kwargs = {"fraction": 0.25, "max_dist": 0.02, "batch_size": b}
    kwargs["steps" if "steps" in params else "x_steps"] = steps
    return salience.GuidedIG(**{k: v for k, v in kwargs.items() if k in params})


# ---------------------------------------------------------------- runner


def _reference_runner(case: Case, setup: ModelSetup, b: int):
    if case.reference is None:
        return None
    ref = reference_core()
    f = setup.call_model_function

    def run():
        return np.stack([
            np.asarray(case.reference(ref, setup.x_hwc[i], f, pair_args(setup.targets[i]), b))
            for i in range(len(setup.x_hwc))
        ])

    return run


def _max_rel_diff(ours: np.ndarray, theirs: Any, setup: ModelSetup) -> float | None:
    theirs = np.asarray(theirs, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    if ours.ndim == 4 and theirs.ndim == 4 and ours.shape[1] == setup.x.shape[1]:
        ours = ours.transpose(0, 2, 3, 1)  # channels first -> last, as the reference
    if ours.shape != theirs.shape:
        return None
    scale = max(np.abs(theirs).max(), 1e-30)
    return float(np.abs(ours - theirs).max() / scale)


def measure(case: Case, setup: ModelSetup, repeats: int, warmup: bool,
            captum_ok: bool = True, min_sample_s: float = 0.1) -> dict:
    n = len(setup.x)
    rows = n * case.rows_per_image(setup)
    target0 = int(setup.targets[0])
    most = n if case.lockstep else rows
    if case.floor_parts is not None:
        floor = _floor_of_parts(case.floor_parts(setup), setup, target0)
    else:
        best = floor_batch_size(setup.model, setup.x[:1], case.keys, target0,
                                max_rows=max(rows, 1))
        floor = floor_callable(setup.model, setup.x[:1], rows, case.keys, target0,
                               batch_size=min(best, most))
    b = case.batch or floor.batch_size
    method = case.salience(b)
    fns: dict[str, Any] = {
        "salience": lambda: method.explain(setup.model, setup.x, setup.targets),
        "reference": _reference_runner(case, setup, b),
        "captum": (case.captum(setup, floor.batch_size)
                   if case.captum is not None and captum_ok else None),
        "floor": floor,
        "peer": case.peer(setup, floor.batch_size) if case.peer is not None else None,
    }
    start = time.perf_counter()
    t = time_interleaved(fns, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
    print_progress(f"{case.method} [{case.setting}] {setup.name} x{n}", t, start)
    notes = [f"{rows} rows, floor batch {floor.batch_size}"
             + (" (lockstep: one row per image per call)" if case.lockstep else "")]
    if t["reference"] is not None and case.deterministic:
        diff = _max_rel_diff(t["salience"].result, t["reference"].result, setup)
        if diff is not None:
            notes.append(f"max rel. diff vs reference {diff:.1e}")
    if case.reference is None:
        notes.append("no PyTorch-usable reference method")
    if t["peer"] is not None:
        notes.append(f"{case.peer_name} {t['peer'].best:.3g} s "
                     f"({t['peer'].best / t['salience'].best:.2f}x salience's time)")
    row = make_row(
        "core methods", case.method, setup.name,
        f"{n} image{'s' if n > 1 else ''} {setup.x.shape[2]}px"
        + (f", {case.setting}" if case.setting else "") + f", batch_size={b}",
        t["salience"].best,
        reference_s=t["reference"].best if t["reference"] else None,
        captum_s=t["captum"].best if t["captum"] else None,
        floor_s=t["floor"].best, notes="; ".join(notes),
    )
    goal = case.target.get(setup.name)
    return judge(row, goal) if goal and n == 1 else row


def tiny_overhead_rows(rows: list[dict]) -> list[dict]:
    """The tiny CNN as a stand-in for a model on an accelerator: salience / floor
    judged against 1.25x for every method at 1 and at 32 images (the rows above,
    repeated under their own heading).  Integrated Gradients and Blur IG are
    judged at their batched settings: at batch_size=1 (PAIR's default, kept for
    the comparison with the reference) the floor is still batched."""
    judged: dict[tuple[str, str], dict] = {}
    for r in rows:
        images = r["setting"].split(" 32px")[0]
        if r["model"] != "tiny CNN" or r.get("vs_floor") is None or images not in (
                "1 image", "32 images"):
            continue
        if r["setting"].endswith("batch_size=1") and r["method"] in ("IntegratedGradients",
                                                                      "BlurIG"):
            continue
        judged[(images, r["method"])] = r
    out = []
    for (_, method), r in judged.items():
        row = make_row("tiny CNN: salience / floor", method, "tiny CNN", r["setting"],
                       r["salience_s"], floor_s=r["floor_s"],
                       notes="the figures of the core methods row of this setting")
        out.append(judge(row, "<= 1.25x floor"))
    return out


def _floor_of_parts(parts: list[tuple[list[str], int]], setup: ModelSetup, target: int):
    """One floor for rows of several kinds: each kind's rows at its best batch size."""
    n = len(setup.x)
    floors = []
    for keys, per_image in parts:
        best = floor_batch_size(setup.model, setup.x[:1], keys, target, max_rows=n * per_image)
        floors.append(floor_callable(setup.model, setup.x[:1], n * per_image, keys, target,
                                     batch_size=best))

    def run() -> None:
        for floor in floors:
            floor()

    run.batch_size = max(f.batch_size for f in floors)  # type: ignore[attr-defined]
    return run


def _layer_channels(setup: ModelSetup) -> int:
    values = setup.model(setup.x[:1], setup.targets[:1], [CONVOLUTION_LAYER_VALUES])
    return int(values[CONVOLUTION_LAYER_VALUES].shape[1])  # the torch adapter: (n, C, h, w)


def _note_pair_default_blur(rows: list[dict]) -> None:
    """PAIR users run Blur IG at its default batch_size=1: add that ratio to the notes
    of the batched row (the target itself is judged on equal batch sizes)."""
    tiny = [r for r in rows if r["method"] == "BlurIG" and r["model"] == "tiny CNN"]
    pair_default = next((r for r in tiny if r["setting"].endswith("batch_size=1")), None)
    for r in tiny:
        if r is not pair_default and pair_default and pair_default["reference_s"]:
            ratio = pair_default["reference_s"] / r["salience_s"]
            r["notes"] += (f"; vs the reference at its default batch_size=1: "
                           f"{ratio:.1f}x faster")


def run(quick: bool) -> list[dict]:
    import torch

    torch.manual_seed(0)
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    rows: list[dict] = []

    # (a) tiny CNN: single image (targets), then scaling.
    tiny = tiny_setup(32)
    tiny_cases = cases("tiny CNN", quick, occlusion_size=15)
    for case in tiny_cases:
        # Sub-millisecond calls: the best of two 50 ms samples moved by 20% between
        # quick runs (Gradients 1.13x-1.38x its floor), so the quick run takes five.
        rows.append(measure(case, tiny.subset(1), max(repeats, 5), warmup=True,
                            min_sample_s=0.05 if quick else 0.2))
    _note_pair_default_blur(rows)  # after the single-image rows
    for n in ((32,) if quick else (8, 32)):
        for case in tiny_cases:
            if quick and case.batch == 1:
                continue
            # Best of 3 after a warm-up call: one sample of a few-ms call moves by
            # 20-30% on this machine (the quick run took one, unwarmed, before).
            rows.append(measure(case, tiny.subset(n), 3, warmup=True))

    rows += tiny_overhead_rows(rows)

    # (b) EfficientNet-Lite0 at 224: single image; scaling in the full run.
    lite = lite0_setup(1 if quick else 8)
    lite_cases = cases("EfficientNet-Lite0", quick, occlusion_size=220 if quick else 176)
    for case in lite_cases:
        rows.append(measure(case, lite.subset(1), repeats, warmup=True))
    if not quick:
        for case in lite_cases:
            if case.method in ("Gradients", "SmoothGrad", "IntegratedGradients", "GradCAM"):
                rows.append(measure(case, lite.subset(8), 2, warmup=False))
    return rows
