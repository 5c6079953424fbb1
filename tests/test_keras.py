"""salience.keras: Keras 3 and tf.keras models through the Model protocol."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import salience  # noqa: E402
from salience.model import (  # noqa: E402
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import salience.keras as sk  # noqa: E402

TRACES = {"count": 0}


def _counting_layer(K):
    class CountTraces(K.layers.Layer):
        """Identity; counts how often its Python ``call`` runs (once per trace)."""

        def call(self, inputs):
            TRACES["count"] += 1
            return inputs

    return CountTraces


def cnn(K, seed=0, count=False, batchnorm=False):
    """conv-relu-conv-relu-pool-dense, 12x12x3 -> 4 classes, deterministic weights."""
    rng = np.random.default_rng(seed)
    layers = [K.Input((12, 12, 3))]
    if count:
        layers.append(_counting_layer(K)(name="count"))
    layers += [K.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")]
    if batchnorm:
        layers.append(K.layers.BatchNormalization(name="bn"))
    layers += [
        K.layers.Conv2D(6, 3, padding="same", name="conv2"),
        K.layers.ReLU(name="relu2"),
        K.layers.Dropout(0.5, name="drop"),
        K.layers.GlobalAveragePooling2D(name="pool"),
        K.layers.Dense(4, name="dense"),
    ]
    model = K.Sequential(layers)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.3 + 0.05 * (i % 2 == 1)
                       for i, w in enumerate(model.get_weights())])
    if batchnorm:
        bn = model.get_layer("bn")
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([gamma, beta, mean, np.abs(var) + 0.5])
    return model


@pytest.fixture(scope="module")
def k3():
    return cnn(keras, count=True)


@pytest.fixture(scope="module")
def wrapped(k3):
    return sk.wrap(k3, "relu2")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).uniform(-1, 1, size=(5, 12, 12, 3)).astype(np.float32)


def _grad(model, x, t):
    """Reference input gradient from a plain GradientTape, one row at a time."""
    rows = []
    for i in range(len(x)):
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            out = model(xi, training=False)[0, t[i]]
        rows.append(tape.gradient(out, xi).numpy()[0])
    return np.stack(rows)


def test_gradients_match_a_plain_tape_and_batch_size(k3, wrapped, images):
    t = np.array([0, 1, 2, 3, 1])
    ref = _grad(k3, images, t)
    for bs in (1, 2, 5):
        got = salience.Gradients(batch_size=bs).explain(wrapped, images, t)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_scores_and_layer_outputs(k3, wrapped, images):
    t = np.array([3, 2, 1, 0, 0])
    out = wrapped(images, t, [OUTPUT_LAYER_VALUES, CONVOLUTION_LAYER_VALUES,
                              CONVOLUTION_OUTPUT_GRADIENTS, INPUT_OUTPUT_GRADIENTS])
    logits = k3(images, training=False).numpy()
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES], logits[np.arange(5), t], rtol=1e-5)
    feats = keras.Model(k3.inputs[0], k3.get_layer("relu2").output)(images).numpy()
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], feats, rtol=1e-5, atol=1e-6)
    # pool + dense: d score / d feature = W[:, t] / (12 * 12) everywhere (dropout is off).
    w = k3.get_layer("dense").get_weights()[0]
    expected = np.broadcast_to((w[:, t].T / 144.0)[:, None, None, :], feats.shape)
    np.testing.assert_allclose(out[CONVOLUTION_OUTPUT_GRADIENTS], expected, rtol=1e-5)
    np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], _grad(k3, images, t), rtol=1e-5,
                               atol=1e-6)
    assert wrapped.predict(images).shape == (5, 4)
    np.testing.assert_allclose(wrapped.predict(images), logits, rtol=1e-5)


def test_top_class_and_weight_rows(k3, wrapped, images):
    logits = k3(images, training=False).numpy()
    top = wrapped(images, None, [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    np.testing.assert_allclose(top, logits.max(axis=1), rtol=1e-6)
    rows = np.zeros((5, 4), np.float32)
    rows[:, 0], rows[:, 2] = 1, -1
    diff = salience.Gradients().explain(wrapped, images, rows)
    g0 = salience.Gradients().explain(wrapped, images, 0)
    g2 = salience.Gradients().explain(wrapped, images, 2)
    np.testing.assert_allclose(diff, g0 - g2, rtol=1e-5, atol=1e-6)


def test_one_trace_per_kind_of_call(k3, images):
    model = sk.wrap(k3, "conv1")
    salience.Gradients(batch_size=2).explain(model, images, [0, 1, 2, 3, 0])  # chunks 2, 2, 1
    first_model_traces, first = TRACES["count"], model.trace_count
    assert first == 1
    salience.Gradients(batch_size=3).explain(model, images, [1, 1, 2, 3, 0])
    salience.IntegratedGradients(steps=7, batch_size=9).explain(model, images[:3], 2)
    salience.SmoothGrad(salience.Gradients(batch_size=4), nsamples=3, seed=0).explain(
        model, images, 1)
    assert model.trace_count == first  # every chunk size reused the same graph
    assert TRACES["count"] == first_model_traces
    salience.GradCAM().explain(model, images, 0)
    salience.GradCAM().explain(model, images[:2], 3)
    assert model.trace_count == first + 1
    salience.Occlusion(size=4, stride=4).explain(model, images, 0)
    salience.Occlusion(size=3, stride=5).explain(model, images[:1], 0)
    assert model.trace_count == first + 2
    model.predict(images)
    model.predict(images[:3])
    assert model.trace_count == first + 3
    salience.Gradients().explain(model, images)  # top class: predict, then int targets
    assert model.trace_count == first + 3


def test_jit_compile_gives_the_same_maps(k3, wrapped, images):
    compiled = sk.wrap(k3, "relu2", jit_compile=True)
    for method in (salience.Gradients(), salience.GradCAM()):
        np.testing.assert_allclose(method.explain(compiled, images, 1),
                                   method.explain(wrapped, images, 1), rtol=1e-4, atol=1e-6)


def test_tf_keras_model_gives_the_same_maps_as_keras3(wrapped, images):
    legacy = cnn(tf_keras)
    model = sk.wrap(legacy, legacy.get_layer("relu2"))
    for method in (salience.Gradients(), salience.GradCAM(resize=False),
                   salience.GuidedBackprop()):
        np.testing.assert_allclose(method.explain(model, images, 2),
                                   method.explain(wrapped, images, 2), rtol=1e-5, atol=1e-6)


def test_pair_callback(wrapped, images):
    fn = wrapped.call_model_function()
    out = fn(images, {"class_idx_str": 1}, [INPUT_OUTPUT_GRADIENTS])
    np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS],
                               salience.Gradients().explain(wrapped, images, 1), rtol=1e-6)


# -- Guided Backprop -----------------------------------------------------------------------


def mlp(K):
    """Flatten - Dense(relu) - Dense - ReLU - Dense - Activation(relu) - Dense(relu6) - Dense."""
    rng = np.random.default_rng(11)
    model = K.Sequential([
        K.Input((4, 4, 2)),
        K.layers.Flatten(),
        K.layers.Dense(10, activation="relu", name="d1"),
        K.layers.Dense(9, name="d2"),
        K.layers.ReLU(name="r2"),
        K.layers.Dense(8, name="d3"),
        K.layers.Activation("relu", name="a3"),
        K.layers.Dense(7, activation="relu6", name="d4"),
        K.layers.Dense(3, name="out"),
    ])
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) * (2.0 if w.ndim == 1 else 0.6)
                       for w in model.get_weights()])
    return model


def guided_numpy(model, x, t):
    """Guided backprop of the MLP above, by hand: ReLU passes where input > 0 and grad > 0."""
    W = model.get_weights()
    h = x.reshape(len(x), -1).astype(np.float64)
    pre = []
    caps = [None, None, None, 6.0]
    for i in range(4):
        z = h @ W[2 * i] + W[2 * i + 1]
        pre.append(z)
        h = np.clip(z, 0, caps[i] if caps[i] is not None else np.inf)
    g = np.zeros((len(x), W[-2].shape[1]))
    g[np.arange(len(x)), t] = 1.0
    g = g @ W[-2].T
    for i in reversed(range(4)):
        z = pre[i]
        active = (z > 0) if caps[i] is None else (z > 0) & (z < caps[i])
        g = np.where(active & (g > 0), g, 0.0)
        g = g @ W[2 * i].T
    return g.reshape(x.shape)


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_guided_backprop_matches_numpy(K):
    model = mlp(K)
    x = np.random.default_rng(2).normal(size=(6, 4, 4, 2)).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1, 2])
    wrapped = sk.wrap(model)
    got = salience.GuidedBackprop(batch_size=4).explain(wrapped, x, t)
    expected = guided_numpy(model, x, t)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    plain = salience.Gradients().explain(wrapped, x, t)
    assert not np.allclose(plain, got)  # the override really was in place
    np.testing.assert_allclose(plain, _grad(model, x, t), rtol=1e-5, atol=1e-6)  # and gone
    traces = wrapped.trace_count
    salience.GuidedBackprop(batch_size=5).explain(wrapped, x, t)
    assert wrapped.trace_count == traces


def _relu_state(model):
    return [(layer.name, getattr(layer, "activation", None), "call" in vars(layer))
            for layer in model.layers]


def test_guided_trace_leaves_the_layers_alone_also_when_it_raises():
    model = mlp(keras)
    before = _relu_state(model)
    seen = []

    def broken(outputs, targets):
        seen.append(_relu_state(model))
        raise RuntimeError("boom")

    wrapped = sk.wrap(model, target_fn=broken)
    x = np.zeros((2, 4, 4, 2), np.float32)
    with pytest.raises(RuntimeError, match="boom"):
        wrapped(x, None, [GUIDED_INPUT_GRADIENTS])
    assert seen == [before]  # nothing was swapped while the guided graph was traced
    assert _relu_state(model) == before


class RawRelu(keras.Model):
    """A subclassed model applying tf.nn.relu itself (no layer to swap)."""

    def __init__(self, weights, wrap_in_function=False):
        super().__init__()
        self.w1, self.w2 = (tf.constant(w, tf.float32) for w in weights)
        relu = tf.function(tf.nn.relu) if wrap_in_function else tf.nn.relu
        self.relu = relu

    def call(self, x):
        return tf.matmul(self.relu(tf.matmul(x, self.w1)), self.w2)


def test_raw_relu_of_a_subclassed_model_is_guided():
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(3, 6)), rng.normal(size=(6, 2))
    x = rng.normal(size=(5, 3)).astype(np.float32)
    model = RawRelu((w1, w2))
    got = salience.GuidedBackprop().explain(sk.wrap(model), x, 1)
    pre = x.astype(np.float64) @ w1
    expected = (np.maximum(w2[:, 1], 0) * (pre > 0)) @ w1.T
    assert not np.allclose(expected, ((w2[:, 1] * (pre > 0)) @ w1.T))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    hidden = sk.wrap(RawRelu((w1, w2), wrap_in_function=True))
    with pytest.raises(ValueError, match="cannot reach the ReLUs inside .*PartitionedCall"):
        salience.GuidedBackprop().explain(hidden, x, 1)
    np.testing.assert_allclose(salience.Gradients().explain(hidden, x, 1),
                               (w2[:, 1] * (pre > 0)) @ w1.T, rtol=1e-5, atol=1e-6)


# -- the model is left untouched --------------------------------------------------------------


def test_model_untouched():
    model = cnn(keras, seed=3, batchnorm=True)
    model.get_layer("conv1").trainable = False
    weights = [w.copy() for w in model.get_weights()]
    flags = [(layer.name, layer.trainable) for layer in model.layers]
    n_vars = (len(model.weights), len(model.trainable_weights))
    state = _relu_state(model)
    x = np.random.default_rng(0).uniform(size=(3, 12, 12, 3)).astype(np.float32)
    before = model(x, training=False).numpy()
    wrapped = sk.wrap(model, "conv2")
    for method in (salience.Gradients(), salience.GradCAM(), salience.GuidedBackprop(),
                   salience.Occlusion(size=6, stride=6)):
        method.explain(wrapped, x)
    for old, new in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # incl. BatchNorm moving statistics
    assert [(layer.name, layer.trainable) for layer in model.layers] == flags
    assert (len(model.weights), len(model.trainable_weights)) == n_vars
    assert _relu_state(model) == state
    np.testing.assert_array_equal(model(x, training=False).numpy(), before)


# -- bad input ----------------------------------------------------------------------------


def test_unknown_layer_lists_available(k3):
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*conv1, conv2, relu2"):
        sk.wrap(k3, "conv9")
    other = keras.layers.Dense(3, name="stranger")
    with pytest.raises(ValueError, match="stranger.*not a layer"):
        sk.wrap(k3, other)
    with pytest.raises(TypeError, match="layer must be"):
        sk.wrap(k3, 3)


def test_not_a_keras_model():
    with pytest.raises(TypeError, match="Keras model"):
        sk.wrap(lambda x: x)
    with pytest.raises(TypeError, match="target_fn must be callable"):
        sk.wrap(cnn(keras), target_fn=3)
    with pytest.raises(ValueError, match="batch_size"):
        sk.wrap(cnn(keras), batch_size=0)


def test_subclassed_and_nested_layers_need_a_functional_model():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3, name="c")
            self.pool = keras.layers.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.conv(x))

    sub = Sub()
    sub(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="functional or Sequential"):
        sk.wrap(sub, "c")
    # Without a layer a subclassed model works.
    g = salience.Gradients().explain(sk.wrap(sub), np.ones((2, 8, 8, 3), np.float32), 1)
    assert g.shape == (2, 8, 8, 3) and np.abs(g).max() > 0
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="deep")],
                             name="inner")
    outer = keras.Sequential([keras.Input((8, 8, 3)), inner,
                              keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="cannot expose layer 'deep'"):
        sk.wrap(outer, "deep")


def test_gradcam_without_layer(k3, images):
    with pytest.raises(ValueError, match="layer="):
        salience.GradCAM().explain(sk.wrap(k3), images, 0)


def test_channels_first_input_is_named(wrapped, images):
    with pytest.raises(ValueError, match="channels-first.*channels-last"):
        salience.Gradients().explain(wrapped, np.moveaxis(images, -1, 1), 0)


def test_non_2d_output_needs_target_fn(images):
    seg = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(2, 1, name="seg")])
    with pytest.raises(ValueError, match=r"output has shape \(None, 12, 12, 2\).*target_fn"):
        sk.wrap(seg)(images, np.zeros(5, np.int64), [INPUT_OUTPUT_GRADIENTS])
    bad = sk.wrap(seg, target_fn=lambda out, t: out[:, 0])
    with pytest.raises(ValueError, match="one score per row"):
        bad(images, np.zeros(5, np.int64), [INPUT_OUTPUT_GRADIENTS])


def test_bad_targets(wrapped, images):
    calls = wrapped.trace_count
    for targets, bad in ((np.array([0, 1, 4, 0, 0]), "4"), (-1, "-1"), (2**32 + 1, "4294967297"),
                         (np.array([1e20, 0, 0, 0, 0]), r"1e\+20")):
        with pytest.raises(ValueError, match=rf"targets must be >= 0 and < 4 \(the model has 4 "
                                             rf"outputs\), got {bad}$"):
            wrapped(images, targets, [INPUT_OUTPUT_GRADIENTS])
        with pytest.raises(ValueError, match="targets must be >= 0 and < 4"):
            salience.Gradients().explain(wrapped, images, targets)
    with pytest.raises(ValueError, match="one-hot/weight targets have 3 columns.*4 outputs"):
        wrapped(images, np.ones((5, 3), np.float32), [INPUT_OUTPUT_GRADIENTS])
    with pytest.raises(ValueError, match="targets must be >= 0 and < 4"):
        wrapped.call_model_function()(images, {"class_idx_str": 9}, [INPUT_OUTPUT_GRADIENTS])
    assert wrapped.trace_count == calls  # refused before anything was traced or run


def test_wrong_rank_is_named_before_tracing(wrapped, images):
    calls = wrapped.trace_count
    with pytest.raises(ValueError, match=r"x has shape \(12, 12, 3\) but the model takes "
                                         r"batches shaped \(None, 12, 12, 3\)"):
        salience.Gradients().explain(wrapped, images[0], 0)
    assert wrapped.trace_count == calls


def test_layer_values_alone_trace_no_backward_pass(images):
    # Eigen-CAM asks only for the layer's values: the backward pass, which fails
    # here when traced, is never built.
    @tf.custom_gradient
    def guard(h):
        def grad(_):
            raise RuntimeError("backward pass traced")

        return tf.identity(h), grad

    class Guard(keras.layers.Layer):
        def call(self, inputs):
            return guard(inputs)

    model = cnn(keras)
    guarded = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(6, 3, padding="same", name="conv2"),
        keras.layers.ReLU(name="relu2"),
        Guard(),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(4, name="dense"),
    ])
    guarded.set_weights(model.get_weights())
    wrapped = sk.wrap(guarded, "relu2")
    t = np.array([3, 2, 1, 0, 0])
    out = wrapped(images, t, [CONVOLUTION_LAYER_VALUES, OUTPUT_LAYER_VALUES])
    assert CONVOLUTION_OUTPUT_GRADIENTS not in out
    layer_model = keras.Model(model.inputs[0], model.get_layer("relu2").output)
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], layer_model(images).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES],
                               model(images).numpy()[np.arange(5), t], rtol=1e-5, atol=1e-6)
    assert salience.EigenCAM().explain(wrapped, images, t).shape == (5, 12, 12)
    with pytest.raises(RuntimeError, match="backward pass traced"):
        wrapped(images, t, [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS])
