"""Keras and JAX adapters: every method against its own framework's model floor.

Two models, each with identical weights in Keras 3 (TensorFlow backend) and in
pure JAX:

- the pretrained EfficientNet-Lite0 (``salience.zoo.efficientnet_lite``: the
  same network and weights the PyTorch benchmarks use), on which the targets of
  the adapters are judged, as they are for PyTorch;
- a light CNN (five 3x3 convolutions with ReLU, four of stride 2, global average
  pooling, a 1000-way dense layer; ~0.3 GFLOP-MAC per 224x224 image, about a
  fifth of Lite0's time per row), where a method's own numpy work (noise,
  blurring, path selection) is a large share: reported, with that own work
  measured on a zero-cost model, to show what a light model pays.

For each method, real 224-pixel photos are explained through
``salience.keras.wrap`` and ``salience.jax.wrap`` and timed interleaved with the
framework's floor.  Guided IG runs on a batch of 8 images: one image's path is
a chain of single-row calls, so it runs in lockstep on a batch, as the Guided IG
benchmark of PyTorch does, and its floor is at that batch of 8 rows, the most a
step can hold.  The light CNN runs in the full run only.

TensorFlow and XLA run on one intra-op thread each, as PyTorch does (the
runner's ``--threads``; ``common.configure_process``), for the floor and for the
methods alike: the other core is free for a method's own numpy work, which the
row scheduler runs beside the model.

The floor here is stricter than the one of the PyTorch benchmark: it is
hand-written framework code *without the adapter* - a ``tf.function`` around a
``GradientTape`` (Keras) or a ``jax.jit`` of ``jax.grad`` / ``jax.vjp`` (JAX)
returning numpy arrays - doing the same number of rows (forward+backward for
gradient methods, forward only for Occlusion, layer gradients for Grad-CAM) at
its best batch size, with exact batch shapes.  The method runs with that same
batch size.  ``salience / floor`` therefore charges the adapter (conversions,
dispatch, scheduling) and the method's own numpy work.

Notes give the maximal relative difference between the Keras and JAX maps of
each deterministic method (identical weights: they must agree).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    FULL_REPEATS,
    QUICK_REPEATS,
    floor_batch_size,
    floor_callable,
    make_row,
    photos,
    print_progress,
    time_interleaved,
)

import salience  # noqa: E402
from salience.model import (  # noqa: E402
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

GRAD = [INPUT_OUTPUT_GRADIENTS]
LAYER = [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS]
SCORES = [OUTPUT_LAYER_VALUES]
SIZE = 224
# (in, out, stride) of the convolutions; Grad-CAM uses the last one's ReLU output.
CONVS = ((3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2))
CLASSES = 1000
GOAL = 1.10


def weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-initialised (kernel HWIO, bias) pairs for the convolutions, then the dense layer."""
    rng = np.random.default_rng(seed)
    out = []
    for c_in, c_out, _ in CONVS:
        w = rng.normal(size=(3, 3, c_in, c_out)) * np.sqrt(2.0 / (9 * c_in))
        out.append((w.astype(np.float32), (rng.normal(size=c_out) * 0.05).astype(np.float32)))
    last = CONVS[-1][1]
    out.append(((rng.normal(size=(last, CLASSES)) / np.sqrt(last)).astype(np.float32),
                np.zeros(CLASSES, np.float32)))
    return out


# ---------------------------------------------------------------- Keras


def keras_model(params):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    h = inputs
    for i, (_, c_out, stride) in enumerate(CONVS):
        h = keras.layers.Conv2D(c_out, 3, strides=stride, padding="same", activation="relu",
                                name=f"conv{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(CLASSES, name="dense")(h)
    model = keras.Model(inputs, out)
    for i in range(len(CONVS)):
        model.get_layer(f"conv{i}").set_weights(list(params[i]))
    model.get_layer("dense").set_weights(list(params[-1]))
    return model


def keras_floor(model, layer_name: str) -> Callable:
    """``floor(x, targets, keys)``: the framework work alone, as numpy arrays."""
    import keras
    import tensorflow as tf

    layer = model.get_layer(layer_name)
    view = keras.Model(model.inputs[0], [layer.output, model.outputs[0]])
    spec = [tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=spec, autograph=False)
    def grads(x, t):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            s = tf.gather(model(x, training=False), t, axis=1, batch_dims=1)
        return s, tape.gradient(s, x)

    @tf.function(input_signature=spec, autograph=False)
    def layer_grads(x, t):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            a, y = view(x, training=False)
            s = tf.gather(y, t, axis=1, batch_dims=1)
        return s, a, tape.gradient(s, a)

    @tf.function(input_signature=spec, autograph=False)
    def scores(x, t):
        return tf.gather(model(x, training=False), t, axis=1, batch_dims=1)

    def floor(x, t, keys):
        args = (tf.constant(x), tf.constant(t))
        if CONVOLUTION_OUTPUT_GRADIENTS in keys:
            return [v.numpy() for v in layer_grads(*args)]
        if INPUT_OUTPUT_GRADIENTS in keys:
            return [v.numpy() for v in grads(*args)]
        return scores(*args).numpy()  # a forward pass: also the floor of the layer's values

    return floor


# ---------------------------------------------------------------- JAX


def jax_parts(params):
    import jax
    import jax.numpy as jnp

    p = jax.tree.map(jnp.asarray, params)
    dn = ("NHWC", "HWIO", "NHWC")

    def features(p, x):
        h = x
        for (w, b), (_, _, stride) in zip(p[:-1], CONVS):
            h = jax.lax.conv_general_dilated(h, w, (stride, stride), "SAME",
                                             dimension_numbers=dn)
            h = jax.nn.relu(h + b)
        return h

    def head(p, h):
        w, b = p[-1]
        return h.mean(axis=(1, 2)) @ w + b

    def cnn(p, x):
        return head(p, features(p, x))

    return p, cnn, features, head


def jax_floor(p, cnn, features, head) -> Callable:
    import jax
    import jax.numpy as jnp

    def pick(y, t):
        return jnp.take_along_axis(y, t[:, None], axis=1)[:, 0]

    @jax.jit
    def grads(p, x, t):
        def total(x):
            s = pick(cnn(p, x), t)
            return s.sum(), s
        g, s = jax.grad(total, has_aux=True)(x)
        return s, g

    @jax.jit
    def layer_grads(p, x, t):
        a = features(p, x)

        def total(a):
            s = pick(head(p, a), t)
            return s.sum(), s
        g, s = jax.grad(total, has_aux=True)(a)
        return s, a, g

    @jax.jit
    def scores(p, x, t):
        return pick(cnn(p, x), t)

    def floor(x, t, keys):
        t = t.astype(np.int32)
        if CONVOLUTION_OUTPUT_GRADIENTS in keys:
            return [np.asarray(v) for v in layer_grads(p, x, t)]
        if INPUT_OUTPUT_GRADIENTS in keys:
            return [np.asarray(v) for v in grads(p, x, t)]
        return np.asarray(scores(p, x, t))  # a forward pass: also the floor of the layer's values

    return floor


# ---------------------------------------------------------------- cases

GUIDED_IG_IMAGES = 8


def cases(quick: bool, occ: int) -> list[tuple[str, str, list[str], int, int, Callable]]:
    """(method, setting, keys, images, rows per image, make(batch_size) -> Method)."""
    nsamples, steps, blur_steps = (6, 6, 6) if quick else (25, 25, 100)
    gsteps = 3 if quick else 20
    occ_rows = 1 + (SIZE - occ + 1) ** 2
    return [
        ("Gradients", "", GRAD, 1, 1, lambda b: salience.Gradients(batch_size=b)),
        ("SmoothGrad", f"Gradients, nsamples={nsamples}", GRAD, 1, nsamples,
         lambda b: salience.SmoothGrad(salience.Gradients(batch_size=b), nsamples=nsamples,
                                       seed=0)),
        ("IntegratedGradients", f"steps={steps}", GRAD, 1, steps,
         lambda b: salience.IntegratedGradients(steps=steps, batch_size=b)),
        ("BlurIG", f"max_sigma=50, steps={blur_steps}", GRAD, 1, blur_steps,
         lambda b: salience.BlurIG(max_sigma=50, steps=blur_steps, batch_size=b)),
        ("Occlusion", f"size={occ}, stride 1", SCORES, 1, occ_rows,
         lambda b: salience.Occlusion(size=occ, batch_size=b)),
        ("GradCAM", "resize", LAYER, 1, 1, lambda b: salience.GradCAM(batch_size=b)),
        ("GuidedBackprop", "", GRAD, 1, 1, lambda b: salience.GuidedBackprop(batch_size=b)),
        ("GuidedIG", f"steps={gsteps}", GRAD, GUIDED_IG_IMAGES, gsteps,
         lambda b: salience.GuidedIG(steps=gsteps, batch_size=b)),
        *new_method_cases(quick),
    ]


def new_method_cases(quick: bool) -> list[tuple[str, str, list[str], int, int, Callable]]:
    """Issue 15's methods that run on one kind of row (Score-CAM's and Guided
    Grad-CAM's mixed rows are benchmarked in PyTorch, bench_core)."""
    # LIME and Kernel SHAP at 200 samples in both runs, as bench_core judges them: a
    # quick 24 would be fewer samples than the ~50 superpixels they fit (a
    # degenerate regression), and the segmentation, ~25 ms of CPU before the first
    # row, alone would be 12% of the 24 rows' floor.
    masks, samples = (24, 200) if quick else (500, 200)
    cases = [("InputXGradient", "", GRAD, 1, 1, lambda b: salience.InputXGradient(batch_size=b))]
    for name in ("GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"):
        cases.append((name, "resize", list(getattr(salience, name).keys), 1, 1,
                      lambda b, name=name: getattr(salience, name)(batch_size=b)))
    cases += [
        ("RISE", f"n_masks={masks}", SCORES, 1, masks,
         lambda b: salience.RISE(n_masks=masks, seed=0, batch_size=b)),
        ("LIME", f"n_samples={samples}", SCORES, 1, samples,
         lambda b: salience.LIME(n_samples=samples, seed=0, batch_size=b)),
        ("KernelSHAP", f"n_samples={samples}", SCORES, 1, samples,
         lambda b: salience.KernelSHAP(n_samples=samples, seed=0, batch_size=b)),
    ]
    return cases


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


class NullModel:
    """A model that costs nothing (zeros of the right shapes): timing a method on it
    gives the method's own work - noise, paths, blurring, bookkeeping."""

    channels_last = True

    def __init__(self, layer_shape: tuple[int, ...]) -> None:
        self.layer_shape = layer_shape

    def __call__(self, x, targets, keys):
        n = len(x)
        out = {OUTPUT_LAYER_VALUES: np.zeros(n, np.float32)}
        for key in keys:
            if key in (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS):
                out[key] = np.ones((n, *self.layer_shape), np.float32)
            elif key != OUTPUT_LAYER_VALUES:
                out[key] = np.zeros(x.shape, np.float32)
        return out


def light_cnn_set() -> dict[str, Any]:
    """The light CNN in both frameworks: adapters, floors and its layer's shape."""
    import salience.jax
    import salience.keras

    params = weights()
    kmodel = keras_model(params)
    p, cnn, features, head = jax_parts(params)
    last = f"conv{len(CONVS) - 1}"
    side = SIZE // int(np.prod([c[2] for c in CONVS]))
    return {
        "label": "CNN-224",
        "frameworks": {
            "Keras": (salience.keras.wrap(kmodel, last), keras_floor(kmodel, last)),
            "JAX": (salience.jax.wrap(cnn, p, layer_fn=features, head_fn=head, channels=3),
                    jax_floor(p, cnn, features, head)),
        },
        "layer_shape": (side, side, CONVS[-1][1]),
        "x": (photos(GUIDED_IG_IMAGES, SIZE).astype(np.float32) / 127.5) - 1.0,
        "occlusion": 214,
        "targets": False,
    }


def lite0_set() -> dict[str, Any]:
    """The pretrained EfficientNet-Lite0 in both frameworks (head activation for Grad-CAM)."""
    import salience.jax
    import salience.keras
    from salience.zoo.efficientnet_lite import (
        efficientnet_lite0_jax,
        efficientnet_lite0_keras,
        lite0_state_dict_arrays,
        preprocess_lite0,
    )

    arrays = lite0_state_dict_arrays()
    kmodel = efficientnet_lite0_keras(arrays, input_shape=(SIZE, SIZE, 3))
    j = efficientnet_lite0_jax(arrays)
    return {
        "label": "EfficientNet-Lite0",
        "frameworks": {
            "Keras": (salience.keras.wrap(kmodel, "top_activation"),
                      keras_floor(kmodel, "top_activation")),
            "JAX": (salience.jax.wrap(j.fn, j.params, layer_fn=j.features, head_fn=j.head,
                                      channels=3),
                    jax_floor(j.params, j.fn, j.features, j.head)),
        },
        "layer_shape": (SIZE // 32, SIZE // 32, 1280),
        "x": preprocess_lite0(photos(GUIDED_IG_IMAGES, SIZE), channels_last=True),
        "occlusion": 220,
        "targets": True,
    }


def run_set(model_set: dict[str, Any], quick: bool) -> list[dict]:
    """Every case on one model in both frameworks, each beside its own floor."""
    repeats = QUICK_REPEATS + 1 if quick else FULL_REPEATS
    frameworks = model_set["frameworks"]
    label = model_set["label"]
    x_all = model_set["x"]
    null = NullModel(model_set["layer_shape"])
    keras_model_ = frameworks["Keras"][0]
    all_targets = keras_model_.predict(x_all).argmax(axis=1).astype(np.int64)
    sizes = (1, 8) if quick else (1, 4, 8, 16, 32, 64)  # quick: no case needs more than 26 rows
    best: dict[tuple, int] = {}  # the floor's best batch size per framework and kind of call
    rows: list[dict] = []
    for method, setting, keys, images, n_rows, make in cases(quick, model_set["occlusion"]):
        x, targets = x_all[:images], all_targets[:images]
        target = int(targets[0])
        fns: dict[str, Any] = {}
        batch: dict[str, int] = {}
        for fw, (model, raw) in frameworks.items():
            if method == "GuidedBackprop" and not getattr(model, "supports_guided", False):
                continue
            kind = (fw, tuple(keys))
            if kind not in best:
                best[kind] = floor_batch_size(raw, x[:1], keys, target, sizes=sizes)
            total = images * n_rows
            # Lockstep Guided IG can put at most one row per image into a call (each
            # image's next point needs its last gradient): its floor is at that batch.
            most = images if method == "GuidedIG" else total
            floor = floor_callable(raw, x[:1], total, keys, target,
                                   batch_size=min(best[kind], most))
            batch[fw] = floor.batch_size
            explainer = make(batch[fw])
            fns[fw] = lambda m=explainer, model=model, x=x, t=targets: m.explain(model, x, t)
            fns[f"{fw} floor"] = floor
        alone = make(max(batch.values()))
        fns["alone"] = lambda m=alone, x=x, t=targets: m.explain(null, x, t)
        # Cheap cases get more rounds (best-of-k of ~10 ms calls is noisy on a loaded machine).
        cost = images * n_rows * (5 if label == "EfficientNet-Lite0" else 1)
        k = max(repeats, 12) if cost <= 10 else (repeats if cost <= 50 else min(repeats, 3))
        started = time.perf_counter()
        t = time_interleaved(fns, repeats=k)
        print_progress(f"{method} {label}", t, started)
        alone_ms = t["alone"].best * 1e3
        for fw in batch:
            many = f"{images} images" if images > 1 else "1 image"
            row = make_row(
                "adapters", method, f"{fw} {label}",
                f"{many} {SIZE}px" + (f", {setting}" if setting else ""),
                t[fw].best, floor_s=t[f"{fw} floor"].best,
                notes=(f"{images * n_rows} rows, batch {batch[fw]} (floor batch "
                       f"{fns[f'{fw} floor'].batch_size}); floor without the adapter; the "
                       f"method's own work (zero-cost model) {alone_ms:.1f} ms"))
            if fw == "JAX" and "Keras" in batch:
                diff = _rel_diff(t["JAX"].result, t["Keras"].result)
                row["notes"] += f"; max rel. diff JAX vs Keras {diff:.1e}"
            if model_set["targets"]:
                row["target"] = f"<= {GOAL:.2f}x floor"
                row["measured"] = f"{row['vs_floor']:.2f}x floor"
                row["met"] = row["vs_floor"] <= GOAL
            rows.append(row)
    return rows


def run(quick: bool) -> list[dict]:
    rows = run_set(lite0_set(), quick)
    if not quick:  # informational; the quick run keeps to the targets
        rows += run_set(light_cnn_set(), quick)
    return rows
