"""TF1 graphs: ``salience.tf1`` beside PAIR ``saliency.tf1`` and the session floor.

One small ``tf.compat.v1`` CNN (three 3x3 convolutions with ReLU, two of
stride 2, global average pooling, a 10-way dense layer) on a 64-pixel photo.
For each method both libraries are called exactly as a PAIR user calls them
(one image, ``GetMask`` / ``GetSmoothedMask``, same parameters, same seed) and
timed interleaved with the floor: plain ``session.run`` of the graph op the
method needs (input gradients, guided gradients, layer values and gradients,
or ``y`` for Occlusion) for the same number of rows, at the batch size salience
uses.  Notes give the maximal difference from the reference, relative to the
reference map's largest magnitude.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import FULL_REPEATS, QUICK_REPEATS, make_row, photos, time_interleaved  # noqa: E402

from salience.model import (  # noqa: E402
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

SIZE = 64
MODEL = "TF1 CNN 64px"
# Rows of at most 25 graph runs take a few ms: the best of two samples of them
# moved by 10-20% between quick runs (GetMask 0.74x-1.07x the reference), more
# than the libraries differ, so they take more samples.  At 12 GetSmoothedMask
# still read 0.91-0.94x the reference in quick runs where 60 interleaved rounds
# gave 0.99x (best) and 1.00x (median): 40 (~4 s for its row).
CHEAP_ROW_REPEATS = 40


def _graph():
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="x")
        h, conv = x, None
        for i, (cin, cout, stride) in enumerate([(3, 16, 1), (16, 32, 2), (32, 32, 2)]):
            kernel = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
            h = tf.nn.relu(tf.nn.conv2d(h, v1.get_variable(f"k{i}", initializer=kernel),
                                        stride, "SAME"))
            conv = h if i == 1 else conv
        w = v1.get_variable("w", initializer=rng.normal(size=(32, 10)).astype(np.float32))
        logits = tf.matmul(tf.reduce_mean(h, [1, 2]), w)
        y = logits[:, 3]
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    return graph, session, y, x, conv


def _floor(session, x, fetches: list, image: np.ndarray, rows: int, batch: int) -> Callable:
    """``rows`` rows through ``fetches`` in session runs of ``batch`` rows."""
    full = np.repeat(image[None], batch, axis=0)
    sizes = [batch] * (rows // batch) + ([rows % batch] if rows % batch else [])

    def run():
        for n in sizes:
            session.run(fetches, feed_dict={x: full[:n]})

    return run


def run(quick: bool) -> list[dict]:
    import saliency.tf1 as ref
    from common import reference_core

    import salience.tf1 as ours

    reference_core()  # PAIR's Guided IG patched for numpy 2, in this process only
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    graph, session, y, x, conv = _graph()
    image = (photos(1, SIZE)[0] / 255.0).astype(np.float32)
    probe = ours.wrap(graph, session, y, x, conv_layer=conv)
    ops = {k: probe._op(k) for k in (INPUT_OUTPUT_GRADIENTS, GUIDED_INPUT_GRADIENTS,
                                      CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS,
                                      OUTPUT_LAYER_VALUES)}
    grad, guided = [ops[INPUT_OUTPUT_GRADIENTS]], [ops[GUIDED_INPUT_GRADIENTS]]
    layer = [ops[CONVOLUTION_LAYER_VALUES], ops[CONVOLUTION_OUTPUT_GRADIENTS]]
    steps = 10 if quick else 25
    occ = 16 if quick else 8
    occ_rows = (SIZE - occ + 1) ** 2 + 1
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "salience_bench_guided_ckpt")

    cases = [
        # (method, setting, ours, reference, floor fetches, rows, floor batch)
        ("GradientSaliency", "GetMask",
         lambda c: c.GradientSaliency(graph, session, y, x), lambda m: m.GetMask(image, {}),
         grad, 1, 1),
        # GetSmoothedMask: one noisy sample per session.run in both libraries, as in PAIR.
        ("GradientSaliency", "GetSmoothedMask nsamples=25",
         lambda c: c.GradientSaliency(graph, session, y, x),
         _seeded_call(lambda m: m.GetSmoothedMask(image, {}, nsamples=25)), grad, 25, 1),
        ("IntegratedGradients", f"x_steps={steps}, batch_size={steps}",
         lambda c: c.IntegratedGradients(graph, session, y, x),
         lambda m: m.GetMask(image, {}, x_steps=steps, batch_size=steps), grad, steps, steps),
        ("BlurIG", f"steps={steps}, batch_size={steps}",
         lambda c: c.BlurIG(graph, session, y, x),
         lambda m: m.GetMask(image, {}, steps=steps, batch_size=steps), grad, steps, steps),
        ("GuidedIG", f"x_steps={steps}",
         lambda c: c.GuidedIG(graph, session, y, x),
         lambda m: m.GetMask(image, {}, x_steps=steps), grad, steps, 1),
        ("GradCam", "GetMask",
         lambda c: c.GradCam(graph, session, y, x, conv), lambda m: m.GetMask(image, {}),
         layer, 1, 1),
        ("GuidedBackprop", "GetMask",
         lambda c: _guided(c, ref, graph, session, y, x, tmp),
         lambda m: m.GetMask(image, {}), guided, 1, 1),
        ("GuidedBackprop", "GetSmoothedMask nsamples=25",
         lambda c: _guided(c, ref, graph, session, y, x, tmp),
         _seeded_call(lambda m: m.GetSmoothedMask(image, {}, nsamples=25)), guided, 25, 1),
        ("Occlusion", f"size={occ} ({occ_rows} windows), salience batch_size=64 (extension)",
         lambda c: c.Occlusion(graph, session, y, x),
         # PAIR runs one window per session.run; salience does too unless asked to batch.
         lambda m: m.GetMask(image, {}, size=occ,
                             **({"batch_size": 64} if isinstance(m, ours.Occlusion) else {})),
         [y], occ_rows, 64),
    ]
    rows = []
    for method, setting, build, call, fetches, n_rows, batch in cases:
        ours_m, ref_m = build(ours), build(ref)
        fns = {
            "salience": lambda call=call, m=ours_m: call(m),
            "reference": lambda call=call, m=ref_m: call(m),
            "floor": _floor(session, x, fetches, image, n_rows, batch),
        }
        if setting == "GetMask" and method != "GradCam":
            # PAIR with the two finite checks salience makes (the input before the run,
            # the map after it): how near PAIR any implementation that checks can come.
            fns["checked reference"] = lambda call=call, m=ref_m: _checked(call, m, image)
        t = time_interleaved(fns, repeats=repeats if n_rows > 25
                             else max(repeats, CHEAP_ROW_REPEATS))
        a, b = np.asarray(t["salience"].result), np.asarray(t["reference"].result)
        diff = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        notes = f"{n_rows} rows; max rel diff {diff:.1e}"
        if "checked reference" in fns:
            checked = t["checked reference"].best
            notes += (f"; PAIR with salience's two finite checks {checked * 1e6:.0f} us, "
                      f"PAIR / that {t['reference'].best / checked:.2f}x")
        rows.append(make_row("tf1", method, MODEL, setting, t["salience"].best,
                             reference_s=t["reference"].best, floor_s=t["floor"].best,
                             notes=notes))
    session.close()
    return rows


def _checked(call: Callable[[Any], Any], method: Any, image: np.ndarray) -> Any:
    if not np.isfinite(image).all():
        raise ValueError("the image holds NaN or inf")
    mask = np.asarray(call(method))
    if not np.isfinite(mask).all():
        raise ValueError("the map holds NaN or inf")
    return mask


def _seeded_call(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(method):
        np.random.seed(0)
        return fn(method)

    return call


def _guided(library, ref, graph, session, y, x, tmp):
    if library is ref:
        return ref.GuidedBackprop(graph, session, y, x, tmp_ckpt_path=tmp)
    return library.GuidedBackprop(graph, session, y, x)


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
