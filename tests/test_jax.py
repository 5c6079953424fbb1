"""salience.jax: pure JAX functions through the Model protocol."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

jax = pytest.importorskip("jax")
jnp = jax.numpy

import salience.jax as sj  # noqa: E402

CALLS = {"features": 0}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(3, 3, 3, 5)) * 0.4).astype(np.float32),
        "b1": (rng.normal(size=5) * 0.1).astype(np.float32),
        "w2": (rng.normal(size=(3, 3, 5, 6)) * 0.3).astype(np.float32),
        "b2": (rng.normal(size=6) * 0.1).astype(np.float32),
        "wd": rng.normal(size=(6, 4)).astype(np.float32),
        "bd": (rng.normal(size=4) * 0.1).astype(np.float32),
    }


def features(p, x):
    CALLS["features"] += 1  # runs once per trace (inside jit), never per call
    dn = ("NHWC", "HWIO", "NHWC")
    conv = jax.lax.conv_general_dilated
    h = jax.nn.relu(conv(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn) + p["b1"])
    return jax.nn.relu(conv(h, p["w2"], (1, 1), "SAME", dimension_numbers=dn) + p["b2"])


def head(p, h):
    return h.mean(axis=(1, 2)) @ p["wd"] + p["bd"]


def cnn(p, x):
    return head(p, features(p, x))


@pytest.fixture(scope="module")
def params():
    return make_params()


@pytest.fixture(scope="module")
def model(params):
    return sj.wrap(cnn, params, layer_fn=features, head_fn=head, channels=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).uniform(-1, 1, size=(5, 10, 10, 3)).astype(np.float32)


def reference_grads(params, x, t):
    """Per-row gradients from jax.grad on single inputs (no batching tricks)."""
    p = jax.tree.map(jnp.asarray, params)
    one = jax.jit(jax.grad(lambda xi, k: cnn(p, xi[None])[0, k]))
    return np.stack([np.asarray(one(jnp.asarray(x[i]), int(t[i]))) for i in range(len(x))])


def test_gradients_match_per_row_grad_for_any_batch_size(model, params, images):
    t = np.array([0, 1, 2, 3, 2])
    ref = reference_grads(params, images, t)
    for bs in (1, 3, 5):
        got = salience.Gradients(batch_size=bs).explain(model, images, t)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_scores_layer_values_and_gradients(model, params, images):
    t = np.array([3, 2, 1, 0, 0])
    keys = [OUTPUT_LAYER_VALUES, CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS,
            INPUT_OUTPUT_GRADIENTS]
    out = model(images, t, keys)
    p = jax.tree.map(jnp.asarray, params)
    logits = np.asarray(cnn(p, images))
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES], logits[np.arange(5), t], rtol=1e-5)
    feats = np.asarray(features(p, images))
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], feats, rtol=1e-6)
    expected = np.broadcast_to((params["wd"][:, t].T / 100.0)[:, None, None, :], feats.shape)
    np.testing.assert_allclose(out[CONVOLUTION_OUTPUT_GRADIENTS], expected, rtol=1e-5)
    np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], reference_grads(params, images, t),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(images), logits, rtol=1e-6)
    assert model.predict(images[:3]).shape == (3, 4)


def test_top_class_and_weight_rows(model, params, images):
    logits = np.asarray(cnn(jax.tree.map(jnp.asarray, params), images))
    top = model(images, None, [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    np.testing.assert_allclose(top, logits.max(axis=1), rtol=1e-6)
    rows = np.zeros((5, 4), np.float32)
    rows[:, 1], rows[:, 3] = 1, -1
    g = salience.Gradients().explain(model, images, rows)
    g1 = salience.Gradients().explain(model, images, 1)
    g3 = salience.Gradients().explain(model, images, 3)
    np.testing.assert_allclose(g, g1 - g3, rtol=1e-5, atol=1e-6)


def test_compiles_once_per_kind_and_chunk_size(params, images):
    model = sj.wrap(cnn, params, layer_fn=features, head_fn=head)
    salience.Gradients(batch_size=4).explain(model, images, 0)  # chunks 4, 1
    assert model.trace_count == 2
    first_calls = CALLS["features"]
    salience.Gradients(batch_size=4).explain(model, images, 1)
    salience.Gradients(batch_size=4).explain(model, images[:4], 2)
    salience.IntegratedGradients(steps=5, batch_size=4).explain(model, images[:1], 3)
    salience.SmoothGrad(salience.Gradients(batch_size=4), nsamples=5, seed=0).explain(
        model, images[:1], 3)
    assert model.trace_count == 2
    assert CALLS["features"] == first_calls  # the user's function was not re-traced either
    salience.GradCAM(batch_size=4).explain(model, images, 0)  # chunks 4, 1 of another kind
    assert model.trace_count == 4
    salience.GradCAM(batch_size=4).explain(model, images[:2], 2)  # a new size: 2
    salience.GradCAM(batch_size=4).explain(model, images, 1)
    assert model.trace_count == 5


def test_compilations_are_bounded_by_padding(params, images):
    model = sj.wrap(cnn, params, max_compiled_sizes=2)
    x = np.repeat(images, 4, axis=0)  # 20 rows
    t = np.arange(20) % 4
    ref = reference_grads(params, x, t)
    for n in range(1, 21):
        out = model(x[:n], t[:n], [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
        np.testing.assert_allclose(out, ref[:n], rtol=1e-5, atol=1e-6)
    # exact sizes 1 and 2, then padded to 4, 8, 16 and 32: 6 compilations for 20 sizes
    assert model.trace_count == 6
    for n in (3, 5, 9, 17, 20):
        model(x[:n], t[:n], [INPUT_OUTPUT_GRADIENTS])
    assert model.trace_count == 6


def test_padding_does_not_change_results(model, images):
    t = np.array([0, 1, 2])
    for n in (1, 2, 3):
        one = model(images[:n], t[:n], [INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES])
        assert one[INPUT_OUTPUT_GRADIENTS].shape == (n, 10, 10, 3)
        assert one[OUTPUT_LAYER_VALUES].shape == (n,)
        full = model(images[:4], np.array([0, 1, 2, 3]), [INPUT_OUTPUT_GRADIENTS])
        np.testing.assert_allclose(one[INPUT_OUTPUT_GRADIENTS],
                                   full[INPUT_OUTPUT_GRADIENTS][:n], rtol=1e-5, atol=1e-7)


def test_per_example_functions_are_vmapped(model, params, images):
    single = sj.wrap(lambda p, x: cnn(p, x[None])[0], params,
                     layer_fn=lambda p, x: features(p, x[None])[0],
                     head_fn=lambda p, h: head(p, h[None])[0], batched=False)
    for method in (salience.Gradients(), salience.GradCAM(resize=False),
                   salience.IntegratedGradients(steps=5)):
        np.testing.assert_allclose(method.explain(single, images, 2),
                                   method.explain(model, images, 2), rtol=1e-5, atol=1e-6)


def test_function_without_params(model, params, images):
    p = jax.tree.map(jnp.asarray, params)
    closed = sj.wrap(lambda x: cnn(p, x), layer_fn=lambda x: features(p, x),
                     head_fn=lambda h: head(p, h))
    for method in (salience.Gradients(), salience.GradCAM()):
        np.testing.assert_allclose(method.explain(closed, images, 1),
                                   method.explain(model, images, 1), rtol=1e-5, atol=1e-6)


def test_channels_first_function(model, params, images):
    def features_nchw(p, x):
        return jnp.transpose(features(p, jnp.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))

    def head_nchw(p, h):
        return head(p, jnp.transpose(h, (0, 2, 3, 1)))

    nchw = sj.wrap(lambda p, x: head_nchw(p, features_nchw(p, x)), params,
                   layer_fn=features_nchw, head_fn=head_nchw, channels_last=False, channels=3)
    x_first = np.moveaxis(images, -1, 1)
    for method in (salience.Gradients(), salience.GradCAM(), salience.Occlusion(size=6, stride=2),
                   salience.BlurIG(max_sigma=3, steps=4)):
        got = method.explain(nchw, x_first, 2)
        ref = method.explain(model, images, 2)
        if got.ndim == 4:
            got = np.moveaxis(got, 1, -1)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels-last.*channels-first"):
        salience.Gradients().explain(nchw, images, 0)


def test_params_untouched(images):
    params = make_params(1)
    copies = {k: v.copy() for k, v in params.items()}
    model = sj.wrap(cnn, params, layer_fn=features, head_fn=head)
    salience.IntegratedGradients(steps=4).explain(model, images, 0)
    salience.GradCAM().explain(model, images, 0)
    assert set(params) == set(copies)
    for k, v in params.items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, copies[k])


# -- bad input ----------------------------------------------------------------------------


def test_guided_backprop_is_refused_clearly(model, images):
    with pytest.raises(ValueError, match="JaxModel cannot compute guided gradients"):
        model(images, np.zeros(5, np.int64), [GUIDED_INPUT_GRADIENTS])


def test_gradcam_needs_a_layer_split(params, images):
    with pytest.raises(ValueError, match="layer_fn=... and head_fn="):
        salience.GradCAM().explain(sj.wrap(cnn, params), images, 0)
    with pytest.raises(ValueError, match="both layer_fn.*only layer_fn"):
        sj.wrap(cnn, params, layer_fn=features)
    with pytest.raises(TypeError, match="head_fn must be callable"):
        sj.wrap(cnn, params, layer_fn=features, head_fn="head")
    with pytest.raises(TypeError, match="fn must be callable"):
        sj.wrap(None, params)


def test_channels_first_input_to_channels_last_model_is_named(model, images):
    with pytest.raises(ValueError, match="channels-first.*channels-last"):
        salience.Gradients().explain(model, np.moveaxis(images, -1, 1), 0)


def test_non_2d_output_needs_target_fn(params, images):
    seg = sj.wrap(features, params)
    before = CALLS["features"]
    with pytest.raises(ValueError, match=r"output has shape \(None, 10, 10, 6\).*target_fn"):
        seg(images, np.zeros(5, np.int64), [INPUT_OUTPUT_GRADIENTS])
    bad = sj.wrap(features, params, target_fn=lambda out, t: out[:, 0, 0])
    with pytest.raises(ValueError, match=r"one score per row.*\(1, 6\)"):
        bad(images, np.zeros(5, np.int64), [INPUT_OUTPUT_GRADIENTS])
    assert seg.trace_count == bad.trace_count == 0  # nothing compiled or run
    assert CALLS["features"] - before <= 2  # at most the shape-only evaluations
    good = sj.wrap(features, params, target_fn=lambda out, t: out[:, 2:5, 2:5, 1].mean((1, 2)))
    g = salience.Gradients().explain(good, images, 0)
    assert np.abs(g[:, 1:6, 1:6]).max() > 0 and np.all(g[:, 7:, :] == 0)


def test_bad_targets(model, images):
    before = (model.trace_count, CALLS["features"])
    model.output_width(images)  # the one shape-only evaluation, at most
    assert CALLS["features"] - before[1] <= 1
    before = (model.trace_count, CALLS["features"])
    for targets, bad in ((np.array([0, 1, 4, 0, 0]), "4"), (-1, "-1"), (2**32 + 1, "4294967297"),
                         ([1e20, 0, 0, 0, 0], r"1e\+20")):
        with pytest.raises(ValueError, match=rf"targets must be >= 0 and < 4 \(the model has 4 "
                                             rf"outputs\), got {bad}$"):
            model(images, targets, [INPUT_OUTPUT_GRADIENTS])
        with pytest.raises(ValueError, match="targets must be >= 0 and < 4"):
            salience.IntegratedGradients(steps=3).explain(model, images, targets)
    with pytest.raises(ValueError, match="one-hot/weight targets have 3 columns.*4 outputs"):
        model(images, np.ones((5, 3), np.float32), [INPUT_OUTPUT_GRADIENTS])
    with pytest.raises(ValueError, match="targets must be >= 0 and < 4"):
        model.call_model_function()(images, -2, [INPUT_OUTPUT_GRADIENTS])
    assert (model.trace_count, CALLS["features"]) == before  # nothing traced or run
    with pytest.raises(ValueError, match="batch_size"):
        sj.wrap(cnn, batch_size=0)
    with pytest.raises(ValueError, match="channels"):
        sj.wrap(cnn, channels=-1)


def test_wrong_rank_is_named_before_compiling(model, images):
    before = model.trace_count
    with pytest.raises(ValueError, match=r"fails on one row of x \(x has shape \(10, 10, 3\)"
                                         r".*rank and layout"):
        salience.Gradients().explain(model, images[0], 0)
    assert model.trace_count == before


def test_layer_values_alone_compile_no_backward_pass(params, images):
    # Eigen-CAM asks only for the layer's values: the head's backward pass, which
    # fails here when traced, is never built.
    @jax.custom_vjp
    def guard(h):
        return h

    def guard_fwd(h):
        return h, None

    def guard_bwd(_, g):
        raise RuntimeError("backward pass traced")

    guard.defvjp(guard_fwd, guard_bwd)
    model = sj.wrap(cnn, params, layer_fn=features, head_fn=lambda p, h: head(p, guard(h)),
                    channels=3)
    t = np.array([3, 2, 1, 0, 0])
    out = model(images, t, [CONVOLUTION_LAYER_VALUES, OUTPUT_LAYER_VALUES])
    assert CONVOLUTION_OUTPUT_GRADIENTS not in out
    p = jax.tree.map(jnp.asarray, params)
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], np.asarray(features(p, images)),
                               rtol=1e-6)
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES],
                               np.asarray(cnn(p, images))[np.arange(5), t], rtol=1e-5)
    assert salience.EigenCAM().explain(model, images, t).shape == (5, 10, 10)
    with pytest.raises(RuntimeError, match="backward pass traced"):
        model(images, t, [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS])
