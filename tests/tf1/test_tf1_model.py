"""The TF1 graph adapter: batch-first use, ops built once, the guided rule on a graph
with a known answer, feed_dict handling, and bad inputs."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
import salience  # noqa: E402
import salience.tf1 as ours  # noqa: E402
from salience.model import (  # noqa: E402
    CONVOLUTION_LAYER_VALUES,
    GUIDED_INPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
)

v1 = tf.compat.v1

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(4, 5))
W2 = RNG.normal(size=(5, 6))
W3 = RNG.normal(size=(6, 3))
X = (RNG.normal(size=(7, 4)) * 3).astype(np.float32)


class CountingSession:
    """A session that counts ``run`` calls and the rows fed to ``x``."""

    def __init__(self, session, x):
        self.session, self.x, self.rows = session, x, []

    def run(self, fetches, feed_dict=None):
        self.rows.append(len(feed_dict[self.x]))
        return self.session.run(fetches, feed_dict=feed_dict)


@pytest.fixture(scope="module")
def dense():
    """logits = act(act(x W1) W2) W3 with act = Relu (first) and Relu6 (second);
    ``scale`` is an extra placeholder multiplying x (fed through feed_dict)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        scale = v1.placeholder_with_default(tf.constant(1.0), [], name="scale")
        h1 = tf.nn.relu(tf.matmul(x * scale, tf.constant(W1, tf.float32)))
        h2 = tf.nn.relu6(tf.matmul(h1, tf.constant(W2, tf.float32)))
        logits = tf.matmul(h2, tf.constant(W3, tf.float32))
        y = logits[:, 2]
        session = v1.Session(graph=graph)
    yield graph, session, y, x, scale, logits
    session.close()


def guided_by_hand(x, target):
    pre1 = x @ W1
    pre2 = np.maximum(pre1, 0) @ W2
    g = W3[:, target]
    g = g * (g > 0) * ((pre2 > 0) & (pre2 < 6))
    g = W2 @ g
    g = g * (g > 0) * (pre1 > 0)
    return W1 @ g


def vanilla_by_hand(x, target):
    pre1 = x @ W1
    pre2 = np.maximum(pre1, 0) @ W2
    return W1 @ ((W2 @ (W3[:, target] * ((pre2 > 0) & (pre2 < 6)))) * (pre1 > 0))


def test_guided_rule_on_relu_and_relu6_matches_hand_computation(dense):
    graph, session, y, x, _, _ = dense
    pre2 = np.maximum(X @ W1, 0) @ W2
    assert (pre2 > 6).any() and (pre2 < 0).any(), "the test needs both ReLU6 ends"
    maps = salience.GuidedBackprop(batch_size=3).explain(ours.wrap(graph, session, y, x), X)
    expected = np.stack([guided_by_hand(row, 2) for row in X])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)
    facade = ours.GuidedBackprop(graph, session, y, x)
    np.testing.assert_allclose(facade.GetMask(X[0]), expected[0], rtol=1e-5, atol=1e-5)
    vanilla = np.stack([vanilla_by_hand(row, 2) for row in X])
    assert np.abs(vanilla - expected).max() > 0.1


def test_graph_gradients_stay_vanilla_after_guided_ops(dense):
    graph, session, y, x, _, _ = dense
    ours.GuidedBackprop(graph, session, y, x)
    relus = [op for op in graph.get_operations() if op.type in ("Relu", "Relu6")]
    assert relus and all(op._gradient_function is None for op in relus)
    with graph.as_default():
        grads = v1.gradients(y, x)[0]
    np.testing.assert_allclose(session.run(grads, {x: X}),
                               np.stack([vanilla_by_hand(row, 2) for row in X]),
                               rtol=1e-5, atol=1e-5)


def test_batch_first_methods_one_run_per_chunk(dense):
    graph, session, y, x, _, _ = dense
    counting = CountingSession(session, x)
    model = ours.wrap(graph, counting, y, x)
    maps = salience.Gradients(batch_size=3).explain(model, X)
    assert counting.rows == [3, 3, 1]
    np.testing.assert_allclose(maps, np.stack([vanilla_by_hand(row, 2) for row in X]),
                               rtol=1e-5, atol=1e-5)
    counting.rows.clear()
    salience.IntegratedGradients(steps=5, batch_size=4).explain(model, X[:2])
    assert counting.rows == [4, 4, 2]


def test_graph_ops_built_once_per_object(dense):
    graph, session, y, x, _, _ = dense
    method = ours.GradientSaliency(graph, session, y, x)
    guided = ours.GuidedBackprop(graph, session, y, x)
    ops = len(graph.get_operations())
    for row in X[:3]:
        method.GetMask(row)
        guided.GetMask(row)
        method.GetSmoothedMask(row, nsamples=2)
    assert len(graph.get_operations()) == ops


def test_feed_dict_reaches_the_session_and_is_not_modified(dense):
    graph, session, y, x, scale, _ = dense
    method = ours.GradientSaliency(graph, session, y, x)
    feed = {scale: 0.5}
    halved = method.GetMask(X[0], feed)
    assert feed == {scale: 0.5}
    expected = 0.5 * vanilla_by_hand(0.5 * X[0], 2)
    np.testing.assert_allclose(halved, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(method.GetMask(X[0], None), vanilla_by_hand(X[0], 2),
                               rtol=1e-5, atol=1e-5)
    # Feeds named by string, including a stale value for x itself, as PAIR users write them.
    by_name = method.GetMask(X[0], {"scale:0": 0.5, "x:0": np.zeros((1, 4))})
    np.testing.assert_allclose(by_name, expected, rtol=1e-5, atol=1e-5)


def test_call_model_function_is_pair_style(dense):
    graph, session, y, x, scale, _ = dense
    fn = ours.create_tf1_call_model_function(graph, session, y, x)
    out = fn(X[:2], call_model_args={scale: 1.0},
             expected_keys=[INPUT_OUTPUT_GRADIENTS, "OUTPUT_LAYER_VALUES"])
    assert out[INPUT_OUTPUT_GRADIENTS].shape == (2, 4)
    assert out["OUTPUT_LAYER_VALUES"].shape == (2,)


def test_user_subclass_with_only_get_mask_gets_smoothing(dense):
    graph, session, y, x, _, _ = dense
    seen = []

    class Doubled(ours.TF1Saliency):
        def GetMask(self, x_value, feed_dict=None):
            seen.append(np.array(x_value))
            return 2 * np.asarray(x_value)

    np.random.seed(1)
    smoothed = Doubled(graph, session, y, x).GetSmoothedMask(X[0], nsamples=4,
                                                             magnitude=False)
    assert len(seen) == 4
    np.testing.assert_allclose(smoothed, 2 * np.mean(seen, axis=0), rtol=1e-6)

    class Summed(ours.TF1Saliency):  # 2-D masks of 3-D inputs
        def GetMask(self, x_value, feed_dict=None):
            return np.asarray(x_value).sum(axis=-1)

    image = np.ones((3, 3, 2), np.float32)
    flat = Summed(graph, session, y, x).GetSmoothedMask(image, nsamples=2, stdev_spread=0)
    np.testing.assert_allclose(flat, np.full((3, 3), 4.0))


def test_targets_are_refused(dense):
    graph, session, y, x, _, _ = dense
    with pytest.raises(ValueError, match="targets=None"):
        salience.Gradients().explain(ours.wrap(graph, session, y, x), X, targets=1)


def test_wrong_input_shape_named_before_running(dense):
    graph, session, y, x, _, _ = dense
    counting = CountingSession(session, x)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\).*x:0.*\(None, 4\)"):
        salience.Gradients().explain(ours.wrap(graph, counting, y, x), np.ones((2, 5)))
    assert counting.rows == []


def test_grad_cam_without_conv_layer(dense):
    graph, session, y, x, _, _ = dense
    with pytest.raises(ValueError, match="conv_layer"):
        ours.wrap(graph, session, y, x)(np.ones((1, 4)), None, [CONVOLUTION_LAYER_VALUES])


def test_bad_constructor_arguments(dense):
    graph, session, y, x, _, logits = dense
    with pytest.raises(TypeError, match="graph must be a tf.Graph"):
        ours.GradientSaliency(None, session, y, x)
    with pytest.raises(TypeError, match="session"):
        ours.GradientSaliency(graph, object(), y, x)
    with pytest.raises(TypeError, match="y must be a tensor"):
        ours.GradientSaliency(graph, session, np.zeros(3), x)
    other = tf.Graph()
    with other.as_default():
        foreign = v1.placeholder(tf.float32, [None], name="foreign")
    with pytest.raises(ValueError, match="another graph"):
        ours.GradientSaliency(graph, session, foreign, x)
    with graph.as_default():
        unrelated = v1.placeholder(tf.float32, [None], name="unrelated")
    counting = CountingSession(session, x)
    method = ours.GradientSaliency(graph, counting, unrelated, x)  # builds, as PAIR's does
    with pytest.raises(ValueError, match=r"y \(unrelated:0\) does not depend on x \(x:0\)"):
        method.GetMask(X[0])
    assert counting.rows == []  # refused before the session runs
    with pytest.raises(TypeError, match="feed_dict"):
        ours.GradientSaliency(graph, session, y, x).GetMask(X[0], feed_dict=[1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        ours.IntegratedGradients(graph, session, y, x).GetMask(X[0], batch_size=0)


def test_output_with_many_scores_per_row_is_refused(dense):
    graph, session, _, x, _, logits = dense
    with pytest.raises(ValueError, match=r"one score per row.*MatMul_2:0.*\(None, 3\)"):
        ours.Occlusion(graph, session, logits, x)


def test_guided_key_through_wrap_only_for_guided(dense):
    graph, session, y, x, _, _ = dense
    model = ours.wrap(graph, session, y, x)
    out = model(X[:2], None, [GUIDED_INPUT_GRADIENTS])
    np.testing.assert_allclose(out[GUIDED_INPUT_GRADIENTS],
                               np.stack([guided_by_hand(r, 2) for r in X[:2]]),
                               rtol=1e-5, atol=1e-5)


def test_eager_mode_untouched():
    assert tf.executing_eagerly()


def test_guided_backprop_equals_torch_on_identical_weights():
    torch = pytest.importorskip("torch")
    import salience.torch as st

    rng = np.random.default_rng(5)
    k1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)  # torch layout (out, in, h, w)
    k2 = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    dense_w = rng.normal(size=(3, 5)).astype(np.float32)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1, bias=False), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 3, bias=False),
    )
    for layer, w in zip((net[0], net[2], net[6]), (k1, k2, dense_w)):
        layer.weight.data = torch.tensor(w)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 3], name="x")
        h = tf.nn.relu(tf.nn.conv2d(x, k1.transpose(2, 3, 1, 0), 1, "SAME"))
        h = tf.nn.relu6(tf.nn.conv2d(h, k2.transpose(2, 3, 1, 0), 1, "SAME"))
        y = tf.matmul(tf.reduce_mean(h, [1, 2]), dense_w.T)[:, 1]
        session = v1.Session(graph=graph)
    images = (rng.normal(size=(2, 6, 6, 3)) * 2).astype(np.float32)
    with session:
        tf1_maps = salience.GuidedBackprop().explain(ours.wrap(graph, session, y, x), images)
    torch_maps = salience.GuidedBackprop().explain(st.wrap(net), images.transpose(0, 3, 1, 2), 1)
    assert np.abs(tf1_maps).max() > 0
    np.testing.assert_allclose(torch_maps.transpose(0, 2, 3, 1), tf1_maps, rtol=1e-4,
                               atol=1e-5 * np.abs(tf1_maps).max())


def test_guided_on_graph_without_relu_warns():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        y = tf.reduce_sum(tf.tanh(x), axis=1)
        session = v1.Session(graph=graph)
    with session, pytest.warns(RuntimeWarning, match="no Relu"):
        method = ours.GuidedBackprop(graph, session, y, x)
        mask = method.GetMask(np.ones(3, np.float32))
    np.testing.assert_allclose(mask, 1 - np.tanh(1.0) ** 2, rtol=1e-6)


def test_user_subclass_of_tf1_core_saliency_gets_call_model_function(dense):
    graph, session, y, x, scale, _ = dense

    class Halved(ours.TF1CoreSaliency):
        def GetMask(self, x_value, feed_dict=None):
            out = self.call_model_function(x_value[None], feed_dict, [INPUT_OUTPUT_GRADIENTS])
            return out[INPUT_OUTPUT_GRADIENTS][0] / 2

    mask = Halved(graph, session, y, x).GetMask(X[0], {scale: 1.0})
    np.testing.assert_allclose(mask, vanilla_by_hand(X[0], 2) / 2, rtol=1e-5, atol=1e-5)


def test_guided_refuses_relus_inside_a_called_function():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        hidden_relu = tf.function(tf.nn.relu)  # a PartitionedCall op in the graph
        y = tf.reduce_sum(hidden_relu(tf.matmul(x, tf.constant(W1, tf.float32))), axis=1)
        session = v1.Session(graph=graph)
    with session:
        model = ours.wrap(graph, session, y, x)
        with pytest.raises(ValueError, match="cannot reach the ReLUs inside .*PartitionedCall"):
            salience.GuidedBackprop().explain(model, X)
        plain = salience.Gradients().explain(model, X)
    np.testing.assert_allclose(plain, (X @ W1 > 0) @ W1.T, rtol=1e-5, atol=1e-6)
