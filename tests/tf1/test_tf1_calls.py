"""salience.tf1 runs the session exactly as saliency.tf1 0.2.1 does.

Both libraries explain the same input on the same graph through a session
that records every ``run``: how it was called, the rows fed to ``x``, the
other values fed, and what came back (the same values mean the same outputs
were fetched, in the same order).  The records must agree run by run.
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


class RecordingSession:
    """Wraps a session; records each ``run`` in ``.runs``."""

    def __init__(self, session, x):
        self.session, self.x, self.runs = session, x, []

    def run(self, fetches, *args, **kwargs):
        out = self.session.run(fetches, *args, **kwargs)
        feed = dict(kwargs.get("feed_dict", args[0] if args else None) or {})
        named = {getattr(k, "name", k): v for k, v in feed.items()}
        rows = np.array(named.pop(self.x.name), dtype=np.float64)
        values = [np.asarray(v) for v in (out if isinstance(out, list) else [out])]
        self.runs.append(((len(args), tuple(sorted(kwargs))), rows, sorted(named), values))
        return out


@pytest.fixture(scope="module")
def net():
    """conv-relu (the Grad-CAM layer), conv-relu, mean, dense; y = logit 1; ``scale``
    is an extra placeholder (fed through feed_dict) multiplying the input."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 10, 9, 3], name="x")
        scale = v1.placeholder_with_default(tf.constant(1.0), [], name="scale")
        k1 = v1.get_variable("k1", initializer=rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
        conv = tf.nn.relu(tf.nn.conv2d(x * scale, k1, 1, "SAME"))
        k2 = v1.get_variable("k2", initializer=rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
        conv2 = tf.nn.relu(tf.nn.conv2d(conv, k2, 1, "SAME"))
        w = v1.get_variable("w", initializer=rng.normal(size=(5, 3)).astype(np.float32))
        y = tf.matmul(tf.reduce_mean(conv2, [1, 2]), w)[:, 1]
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    image = rng.normal(size=(10, 9, 3)).astype(np.float32)
    yield graph, session, y, x, conv, scale, image
    session.close()


def run_both(net, tmp_path, name, method, kwargs):
    graph, session, y, x, conv, scale, image = net
    records = []
    for lib in (ours, ref):
        spy = RecordingSession(session, x)
        if name == "GradCam":
            explainer = lib.GradCam(graph, spy, y, x, conv)
        elif name == "GuidedBackprop" and lib is ref:
            # PAIR saves the session's variables and runs a session of its own graph copy.
            explainer = lib.GuidedBackprop(graph, session, y, x, str(tmp_path / "ckpt"))
            explainer.guided_sess = spy = RecordingSession(explainer.guided_sess, x)
        else:
            explainer = getattr(lib, name)(graph, spy, y, x)
        options = kwargs(lib) if callable(kwargs) else kwargs
        np.random.seed(3)
        getattr(explainer, method)(image, {scale: 1.0}, **options)
        records.append(spy.runs)
    return records


def assert_same_runs(ours_runs, pair_runs, compare_values=True):
    assert len(pair_runs) > 0
    assert [len(r[1]) for r in ours_runs] == [len(r[1]) for r in pair_runs]
    for i, (a, b) in enumerate(zip(ours_runs, pair_runs)):
        assert a[0] == b[0], f"run {i}: called otherwise"
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-6, err_msg=f"run {i}")
        assert a[2] == b[2] == ["scale:0"], f"run {i}"
        if compare_values:
            assert len(a[3]) == len(b[3]), f"run {i}: other fetches"
            for got, expected in zip(a[3], b[3]):
                np.testing.assert_allclose(got, expected, rtol=1e-4,
                                           atol=1e-5 * max(np.abs(expected).max(), 1),
                                           err_msg=f"run {i}")


GET_MASK = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", {"x_steps": 7, "batch_size": 3}),
    ("BlurIG", {"steps": 5, "max_sigma": 3, "batch_size": 2}),
    ("GuidedIG", {"x_steps": 5, "max_dist": 0.1}),
    ("XRAI", lambda lib: {"batch_size": 4, "extra_parameters": lib.XRAIParameters(steps=5)}),
    ("Occlusion", {"size": 4}),
    ("GradCam", {}),
    ("GuidedBackprop", {}),
]


@pytest.mark.parametrize("name, kwargs", GET_MASK, ids=[n for n, _ in GET_MASK])
def test_get_mask_runs_as_pair(net, tmp_path, name, kwargs, pair_guided_ig_on_numpy2):
    ours_runs, pair_runs = run_both(net, tmp_path, name, "GetMask", kwargs)
    # PAIR's Guided Backprop runs a copy of the graph with fetches of its own form.
    assert_same_runs(ours_runs, pair_runs, compare_values=name != "GuidedBackprop")


SMOOTHED = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", {"x_steps": 3, "batch_size": 2}),
    ("Occlusion", {"size": 6}),
    ("GradCam", {}),
    ("GuidedBackprop", {}),
]


@pytest.mark.parametrize("name, kwargs", SMOOTHED, ids=[n for n, _ in SMOOTHED])
def test_get_smoothed_mask_runs_as_pair(net, tmp_path, name, kwargs):
    ours_runs, pair_runs = run_both(net, tmp_path, name, "GetSmoothedMask",
                                    {**kwargs, "nsamples": 2})
    assert_same_runs(ours_runs, pair_runs, compare_values=name != "GuidedBackprop")


def test_occlusion_batch_size_extension(net):
    graph, session, y, x, _, scale, image = net
    spy = RecordingSession(session, x)
    one_by_one = ours.Occlusion(graph, session, y, x).GetMask(image, {scale: 1.0}, size=4)
    batched = ours.Occlusion(graph, spy, y, x).GetMask(image, {scale: 1.0}, size=4,
                                                       batch_size=20)
    assert [len(run[1]) for run in spy.runs] == [20, 20, 3]  # 1 + 7 * 6 rows
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_signatures_are_pairs():
    import inspect

    for name in ("GradientSaliency", "IntegratedGradients", "BlurIG", "GuidedIG", "XRAI",
                 "Occlusion", "GradCam", "GuidedBackprop"):
        for method in ("__init__", "GetMask", "GetSmoothedMask", "GetMaskWithDetails"):
            if not hasattr(getattr(ref, name), method):
                continue
            mine = inspect.signature(getattr(getattr(ours, name), method)).parameters
            reference = inspect.signature(getattr(getattr(ref, name), method)).parameters
            assert list(mine)[: len(reference)] == list(reference), f"{name}.{method}"
            for param, spec in reference.items():
                assert mine[param].default == spec.default, f"{name}.{method}({param}=...)"
                assert mine[param].kind == spec.kind, f"{name}.{method}({param})"
            extra = list(mine)[len(reference):]
            allowed = {("Occlusion", "GetMask"): ["batch_size"]}.get((name, method), [])
            if method == "__init__" and name not in ("GradCam", "GuidedBackprop"):
                allowed = ["conv_layer"]  # from TF1CoreSaliency, as in PAIR's base class
            assert extra == allowed, f"{name}.{method} adds {extra}"


def test_get_mask_call_forms_agree_and_bad_forms_raise(net):
    graph, session, y, x, _, scale, image = net
    ig = ours.IntegratedGradients(graph, session, y, x)
    feed = {scale: 1.0}
    expected = ig.GetMask(image, feed, x_steps=4, batch_size=2)
    for args, kwargs in [((image, feed), {"batch_size": 2, "x_steps": 4}),
                         ((image,), {"feed_dict": feed, "x_steps": 4, "batch_size": 2}),
                         ((), {"x_value": image, "feed_dict": feed, "x_steps": 4,
                               "batch_size": 2}),
                         ((image, feed, None, 4, 2), {})]:
        np.testing.assert_array_equal(ig.GetMask(*args, **kwargs), expected)
    # no options: the defaults (x_steps=25, batch_size=1), as when given explicitly
    np.testing.assert_array_equal(ig.GetMask(image, feed),
                                  ig.GetMask(image, feed, x_steps=25, batch_size=1))
    with pytest.raises(TypeError, match="steps"):
        ig.GetMask(image, feed, steps=4)
    with pytest.raises(TypeError):
        ig.GetMask(image, feed, feed_dict=feed)
    with pytest.raises(TypeError):
        ig.GetMask()


def test_the_facade_runs_its_graph_model_without_the_callback_layer(net, monkeypatch):
    import salience.core
    import salience.core.base

    graph, session, y, x, conv, scale, image = net
    explainer = ours.IntegratedGradients(graph, session, y, x)
    feed = {scale: 2.0}

    def plain(x_batch, call_model_args=None, expected_keys=None):  # the same graph, as a callback
        return explainer.call_model_function(x_batch, call_model_args, expected_keys)

    through_callback = salience.core.IntegratedGradients().GetMask(
        image, plain, feed, x_steps=4, batch_size=2)

    def refuse(*args, **kwargs):
        raise AssertionError("the TF1 facade went through a callback model")

    monkeypatch.setattr(salience.core.base, "CallbackModel", refuse)
    direct = explainer.GetMask(image, feed, x_steps=4, batch_size=2)
    np.testing.assert_array_equal(direct, through_callback)
    assert not np.allclose(direct, explainer.GetMask(image, {scale: 1.0}, x_steps=4,
                                                     batch_size=2))  # the feed is used
