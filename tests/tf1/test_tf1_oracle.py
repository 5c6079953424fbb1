"""salience.tf1 against PAIR's saliency.tf1 on the same tf.compat.v1 graph.

Graphs are built inside ``tf.Graph()`` contexts; eager execution stays on for
every other test.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
ref = pytest.importorskip("saliency.tf1")
import salience.tf1 as ours  # noqa: E402

v1 = tf.compat.v1


@pytest.fixture(scope="module")
def net():
    """A small conv net: conv-relu (the Grad-CAM layer), conv-relu, mean, dense; y = logit 1."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 10, 10, 3], name="x")
        k1 = v1.get_variable("k1", initializer=rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
        conv = tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME"))
        k2 = v1.get_variable("k2", initializer=rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
        conv2 = tf.nn.relu(tf.nn.conv2d(conv, k2, 1, "SAME"))
        w = v1.get_variable("w", initializer=rng.normal(size=(5, 3)).astype(np.float32))
        logits = tf.matmul(tf.reduce_mean(conv2, [1, 2]), w)
        y = logits[:, 1]
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    image = rng.normal(size=(10, 10, 3)).astype(np.float32)
    yield graph, session, y, x, conv, image
    session.close()


def assert_same(ours_map, ref_map, rtol=1e-5):
    ours_map, ref_map = np.asarray(ours_map), np.asarray(ref_map)
    assert ours_map.shape == ref_map.shape
    assert np.abs(ref_map).max() > 0
    np.testing.assert_allclose(ours_map, ref_map, rtol=rtol,
                               atol=rtol * np.abs(ref_map).max())


CASES = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", {"x_steps": 10, "batch_size": 5}),
    ("IntegratedGradients", {"x_steps": 7, "batch_size": 1,
                             "x_baseline": np.full((10, 10, 3), 0.5, np.float32)}),
    ("BlurIG", {"steps": 10, "max_sigma": 5}),
    ("Occlusion", {"size": 3, "value": 0.5}),
]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_get_mask_equals_reference(net, name, kwargs):
    graph, session, y, x, _, image = net
    expected = getattr(ref, name)(graph, session, y, x).GetMask(image, {}, **kwargs)
    got = getattr(ours, name)(graph, session, y, x).GetMask(image, {}, **kwargs)
    # BlurIG blurs with matrix products instead of scipy filters: float32 round-off.
    assert_same(got, expected, rtol=1e-4 if name == "BlurIG" else 1e-5)


@pytest.mark.parametrize("should_resize, three_dims", [(True, True), (False, False)])
def test_grad_cam_equals_reference(net, should_resize, three_dims):
    graph, session, y, x, conv, image = net
    kwargs = {"should_resize": should_resize, "three_dims": three_dims}
    expected = ref.GradCam(graph, session, y, x, conv).GetMask(image, {}, **kwargs)
    got = ours.GradCam(graph, session, y, x, conv).GetMask(image, {}, **kwargs)
    assert_same(got, expected)


def test_guided_backprop_equals_reference(net, tmp_path):
    graph, session, y, x, _, image = net
    expected = ref.GuidedBackprop(graph, session, y, x,
                                  tmp_ckpt_path=str(tmp_path / "ckpt")).GetMask(image, {})
    got = ours.GuidedBackprop(graph, session, y, x).GetMask(image, {})
    assert_same(got, expected)
    vanilla = ours.GradientSaliency(graph, session, y, x).GetMask(image, {})
    assert np.abs(vanilla - got).max() > 0.1 * np.abs(got).max()  # guiding changed the map


SMOOTH_CASES = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", {"x_steps": 4, "batch_size": 2}),
    ("GuidedBackprop", {}),
    ("GradCam", {}),
    ("Occlusion", {"size": 4}),
]


@pytest.mark.parametrize("name, kwargs", SMOOTH_CASES,
                         ids=[c[0] + str(i) for i, c in enumerate(SMOOTH_CASES)])
@pytest.mark.parametrize("magnitude", [True, False])
def test_smoothed_mask_equals_reference(net, tmp_path, name, kwargs, magnitude):
    graph, session, y, x, conv, image = net
    if name == "GradCam":
        args = (conv,)
        ref_args = args
    elif name == "GuidedBackprop":
        args, ref_args = (), (str(tmp_path / "ckpt"),)
    else:
        args = ref_args = ()
    ref_method = getattr(ref, name)(graph, session, y, x, *ref_args)
    our_method = getattr(ours, name)(graph, session, y, x, *args)
    np.random.seed(7)
    expected = ref_method.GetSmoothedMask(image, {}, nsamples=3, magnitude=magnitude, **kwargs)
    np.random.seed(7)
    got = our_method.GetSmoothedMask(image, {}, nsamples=3, magnitude=magnitude, **kwargs)
    assert_same(got, expected)


def test_smoothed_two_dim_grad_cam(net):
    # PAIR cannot do this (it adds 2-D masks into a 3-D total); we smooth the 2-D map.
    graph, session, y, x, conv, image = net
    method = ours.GradCam(graph, session, y, x, conv)
    np.random.seed(7)
    flat = method.GetSmoothedMask(image, {}, nsamples=3, three_dims=False)
    np.random.seed(7)
    full = method.GetSmoothedMask(image, {}, nsamples=3)
    assert flat.shape == (10, 10)
    np.testing.assert_allclose(full, np.repeat(flat[..., None], 3, axis=-1), rtol=1e-6)


@pytest.fixture(scope="module")
def fixed_batch_net():
    """x with a fixed batch of 4 rows and y of shape (4,)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [4, 6, 6, 1], name="x")
        y = tf.reduce_sum(tf.nn.relu(x) ** 2, axis=[1, 2, 3])
        session = v1.Session(graph=graph)
    yield graph, session, y, x
    session.close()


@pytest.mark.parametrize("x_steps, batch_size", [(10, 3), (8, 2), (1, 1)])
def test_shape_errors_equal_reference(fixed_batch_net, x_steps, batch_size):
    graph, session, y, x = fixed_batch_net
    image = np.ones((6, 6, 1), np.float32)
    with pytest.raises(ValueError) as expected:
        ref.IntegratedGradients(graph, session, y, x).GetMask(
            image, {}, x_steps=x_steps, batch_size=batch_size)
    with pytest.raises(ValueError) as got:
        ours.IntegratedGradients(graph, session, y, x).GetMask(
            image, {}, x_steps=x_steps, batch_size=batch_size)
    assert str(got.value) == str(expected.value)


def test_fixed_batch_graph_runs_when_batches_fit(fixed_batch_net):
    graph, session, y, x = fixed_batch_net
    image = np.random.default_rng(0).normal(size=(6, 6, 1)).astype(np.float32)
    expected = ref.IntegratedGradients(graph, session, y, x).GetMask(
        image, {}, x_steps=8, batch_size=4)
    got = ours.IntegratedGradients(graph, session, y, x).GetMask(
        image, {}, x_steps=8, batch_size=4)
    assert_same(got, expected)


@pytest.mark.parametrize("name", ["GuidedIG", "XRAI"])
def test_guided_ig_and_xrai(net, name, pair_guided_ig_on_numpy2):
    graph, session, y, x, _, image = net
    if name == "GuidedIG":
        kwargs = {"x_steps": 10, "max_dist": 0.1}
    else:
        kwargs = {"batch_size": 1, "extra_parameters": ref.XRAIParameters(steps=5)}
        kwargs_ours = {"batch_size": 1, "extra_parameters": ours.XRAIParameters(steps=5)}
    expected = getattr(ref, name)(graph, session, y, x).GetMask(image, {}, **kwargs)
    if name == "XRAI":
        kwargs = kwargs_ours
    got = getattr(ours, name)(graph, session, y, x).GetMask(image, {}, **kwargs)
    assert_same(got, expected)


def test_visualisers_are_the_shared_ones():
    import salience.visualize as vis

    assert ours.VisualizeImageGrayscale is vis.visualize_image_grayscale
    assert ours.VisualizeImageDiverging is vis.visualize_image_diverging


def test_eager_mode_untouched():
    assert tf.executing_eagerly()
