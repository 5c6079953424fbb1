"""Threads x calls on one wrapped model give the serial maps and leave the model as it was.

Each test starts its threads together (a barrier) and mixes kinds of calls
(Gradients, Integrated Gradients, Grad-CAM, Guided Backprop), so that a call's
mode switch, hook or patched function overlaps with the other kinds' calls:
the races of issue 18 (items 7-9) showed up within a few calls.  Results are
compared with the same calls made one after another; the model's state is
compared with its state before.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import salience  # noqa: E402

THREADS = 6
ROUNDS = 4  # calls of every kind per thread

METHODS = {
    "gradients": salience.Gradients(),
    "ig": salience.IntegratedGradients(steps=4),
    "gradcam": salience.GradCAM(),
    "guided": salience.GuidedBackprop(),
}


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every 10 us instead of 5 ms, so that calls interleave inside
    each other more often (as on a loaded machine)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def _jobs(kinds, n_images, rounds):
    """Every (kind, image) pair ``rounds`` times for each of THREADS threads, each
    thread starting with a different pair."""
    pairs = [(kind, i) for kind in kinds for i in range(n_images)]
    per_thread = []
    for t in range(THREADS):
        shifted = pairs[t % len(pairs):] + pairs[: t % len(pairs)]
        per_thread.append(shifted * rounds)
    return per_thread


def run_together(model, x, targets, kinds, models=None, rounds=ROUNDS):
    """Run the jobs of :func:`_jobs` on THREADS threads started at once; returns
    {(kind, image): [maps from every call]}."""
    jobs = _jobs(kinds, len(x), rounds)
    barrier = threading.Barrier(THREADS)
    results: dict[tuple[str, int], list[np.ndarray]] = {}
    lock = threading.Lock()

    def work(thread_jobs):
        barrier.wait()
        for kind, i in thread_jobs:
            wrapped = (models or {}).get(kind, model)
            got = METHODS[kind].explain(wrapped, x[i : i + 1], targets[i : i + 1])[0]
            with lock:
                results.setdefault((kind, i), []).append(got)

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(work, j) for j in jobs]:
            future.result()
    return results


def assert_equal_to_serial(results, serial, rounds=ROUNDS):
    for (kind, i), maps in results.items():
        assert len(maps) == THREADS * rounds
        for got in maps:
            np.testing.assert_allclose(got, serial[kind][i], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{kind}, image {i}")


def serial_maps(model, x, targets, kinds, models=None):
    """The threads' calls (one image each) made one after another."""
    return {kind: np.concatenate([
        METHODS[kind].explain((models or {}).get(kind, model), x[i : i + 1], targets[i : i + 1])
        for i in range(len(x))]) for kind in kinds}


# -- PyTorch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_setup():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        """Conv - BN - ReLU - conv - ReLU - dropout - linear; used in train mode."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(
                nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
            )
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.drop(self.features(x).mean(dim=(2, 3))))

    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    return torch, Net, x, np.array([0, 1, 3])


def _torch_state(torch, net):
    functional = torch.nn.functional
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
             len(m._backward_pre_hooks)) for m in net.modules()
        ],
        "functions": [torch.relu, torch.relu_, functional.relu, functional.relu_,
                      functional.relu6, functional.hardtanh, torch.Tensor.relu],
    }


def _assert_torch_state(torch, before, after):
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key  # incl. num_batches_tracked
    for key in ("training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    assert all(a is b for a, b in zip(before["functions"], after["functions"]))


def test_torch_threads_give_serial_maps_and_leave_the_module_alone(torch_setup):
    torch, Net, x, targets = torch_setup
    net = Net().train()
    net.features[0].weight.requires_grad_(False)  # a mix of frozen and trainable
    model = salience.torch.wrap(net, layer="features.4")
    kinds = list(METHODS)
    serial = serial_maps(model, x, targets, kinds)
    before = _torch_state(torch, net)
    results = run_together(model, x, targets, kinds)
    _assert_torch_state(torch, before, _torch_state(torch, net))
    assert_equal_to_serial(results, serial)


class _Relay:
    """Orders the forward passes of one "leader" call and several "follower" calls.

    The leader waits before the Grad-CAM layer until every follower has passed
    it and stopped after it; the followers stay there until the leader's call
    has returned.  So the leader's call starts first and ends while all the
    others are inside their forward pass: its hook sees their layer, and
    whatever it undoes at its end happens in the middle of their calls.  Every
    wait is bounded, so a broken order fails instead of hanging.
    """

    TIMEOUT_S = 10.0

    def __init__(self, followers: int) -> None:
        self.followers = followers
        self.leader: int | None = None
        self.leader_inside = threading.Event()
        self.leader_done = threading.Event()
        self.stopped = threading.Semaphore(0)

    def before_layer(self) -> None:
        if threading.get_ident() == self.leader:
            self.leader_inside.set()
            for _ in range(self.followers):
                assert self.stopped.acquire(timeout=self.TIMEOUT_S), "a follower never arrived"

    def after_layer(self) -> None:
        if threading.get_ident() != self.leader:
            self.stopped.release()
            assert self.leader_done.wait(self.TIMEOUT_S), "the leader never finished"


@pytest.mark.parametrize("kind", list(METHODS))
def test_torch_a_call_ending_while_others_run_changes_none_of_them(torch_setup, kind):
    # Issue 18, items 7-9, made deterministic: with per-call mode switches, hooks or
    # patched functions, the leader's end would put the module back in train mode
    # under the followers (BatchNorm statistics move, dropout changes their maps),
    # its Grad-CAM hook would capture their layer, or its restore of F.relu would
    # be undone by theirs.
    torch, _, x, targets = torch_setup
    nn = torch.nn
    relay = _Relay(followers=3)

    class Stop(nn.Module):
        def __init__(self, wait):
            super().__init__()
            self.wait = wait

        def forward(self, h):
            self.wait()
            return h

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), Stop(relay.before_layer), nn.Conv2d(6, 6, 3, padding=1),
        Stop(relay.after_layer), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).train()
    model = salience.torch.wrap(net, layer="2")
    method = METHODS[kind]
    relay.leader = threading.get_ident()  # the serial calls pass straight through
    relay.followers = 0
    serial = method.explain(model, x, targets)
    before = _torch_state(torch, net)
    relay.followers = len(x)

    def lead():
        relay.leader = threading.get_ident()
        try:
            return method.explain(model, x[:1], targets[:1])
        finally:
            relay.leader_done.set()

    def follow(i):
        assert relay.leader_inside.wait(relay.TIMEOUT_S)
        return method.explain(model, x[i : i + 1], targets[i : i + 1])

    with ThreadPoolExecutor(1 + len(x)) as pool:
        leader = pool.submit(lead)
        assert relay.leader_inside.wait(relay.TIMEOUT_S)
        followers = [pool.submit(follow, i) for i in range(len(x))]
        np.testing.assert_allclose(leader.result(), serial[:1], rtol=1e-5, atol=1e-7)
        for i, future in enumerate(followers):
            np.testing.assert_allclose(future.result(), serial[i : i + 1], rtol=1e-5,
                                       atol=1e-7, err_msg=f"follower {i}")
    _assert_torch_state(torch, before, _torch_state(torch, net))


def test_torch_two_wrappers_of_one_module_in_threads(torch_setup):
    # Mode changes are held per module, not per wrapper: a wrapper without a layer
    # finishing must not put the module back in train mode under the other's call.
    torch, Net, x, targets = torch_setup
    net = Net().train()
    plain, with_layer = salience.torch.wrap(net), salience.torch.wrap(net, layer="features.1")
    models = {"gradients": plain, "guided": plain, "ig": with_layer, "gradcam": with_layer}
    kinds = list(METHODS)
    serial = serial_maps(None, x, targets, kinds, models)
    before = _torch_state(torch, net)
    results = run_together(None, x, targets, kinds, models)
    _assert_torch_state(torch, before, _torch_state(torch, net))
    assert_equal_to_serial(results, serial)


# -- Keras --------------------------------------------------------------------------------


def _keras_model(keras):
    rng = np.random.default_rng(1)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(8, 3, padding="same", name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(4, name="dense"),
    ])
    weights = [rng.normal(size=w.shape).astype(np.float32) * 0.4 for w in model.get_weights()]
    weights[5] = np.abs(weights[5]) + 0.5  # the batch norm's moving variance
    model.set_weights(weights)
    return model


def _keras_state(model):
    return ([np.array(w) for w in model.get_weights()],
            [(layer.name, getattr(layer, "activation", None), vars(layer).get("call"))
             for layer in model.layers])


def test_keras_threads_trace_once_give_serial_maps_and_leave_the_layers_alone():
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    import salience.keras as sk

    model = _keras_model(keras)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    targets = np.array([0, 3])
    kinds = list(METHODS)
    one_by_one = sk.wrap(model, "relu2")
    serial = serial_maps(one_by_one, x, targets, kinds)
    weights, layers = _keras_state(model)
    fresh = sk.wrap(model, "relu2")  # every kind is traced first while threads compete
    # Few rounds: the races were in the first (tracing) calls; later calls only run graphs.
    results = run_together(fresh, x, targets, kinds, rounds=2)
    after_weights, after_layers = _keras_state(model)
    for old, new in zip(weights, after_weights):
        np.testing.assert_array_equal(old, new)
    assert after_layers == layers
    assert_equal_to_serial(results, serial, rounds=2)
    # one trace per kind (input gradients, the layer's, guided), as in the serial calls
    assert fresh.trace_count == one_by_one.trace_count == 3


# -- JAX ----------------------------------------------------------------------------------


def test_jax_threads_give_serial_maps():
    jax = pytest.importorskip("jax")
    import salience.jax as sj

    rng = np.random.default_rng(3)
    w1 = (rng.normal(size=(3, 3, 3, 6)) * 0.4).astype(np.float32)
    wd = rng.normal(size=(6, 4)).astype(np.float32)

    def features(p, x):
        conv = jax.lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(conv)

    def head(p, h):
        return h.mean(axis=(1, 2)) @ p["wd"]

    params = {"w1": w1, "wd": wd}
    x = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
    targets = np.array([0, 1, 3])
    kinds = ["gradients", "ig", "gradcam"]  # the JAX adapter has no Guided Backprop

    def wrapped():
        return sj.wrap(lambda p, x: head(p, features(p, x)), params, layer_fn=features,
                       head_fn=head)

    serial = serial_maps(wrapped(), x, targets, kinds)
    results = run_together(wrapped(), x, targets, kinds)
    assert_equal_to_serial(results, serial)


# -- TF1 graphs ---------------------------------------------------------------------------


def test_tf1_threads_building_and_running_give_serial_maps():
    tf = pytest.importorskip("tensorflow")
    import salience.tf1 as stf1

    v1 = tf.compat.v1
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 3))
    graph = tf.Graph()
    with graph.as_default():
        x_in = v1.placeholder(tf.float32, [None, 4])
        h = tf.nn.relu(tf.matmul(x_in, tf.constant(w1, tf.float32)))
        y = tf.matmul(h, tf.constant(w2, tf.float32))[:, 1]
        session = v1.Session(graph=graph)
    x = (rng.normal(size=(3, 4)) * 2).astype(np.float32)
    kinds = ["gradients", "ig", "guided"]
    serial = {kind: METHODS[kind].explain(stf1.wrap(graph, session, y, x_in), x)
              for kind in kinds}
    barrier = threading.Barrier(THREADS)

    def work(t):
        barrier.wait()
        out = []
        for r in range(ROUNDS):
            kind = kinds[(t + r) % len(kinds)]
            # a new wrapper each time: its gradient ops are built while others build theirs
            out.append((kind, METHODS[kind].explain(stf1.wrap(graph, session, y, x_in), x)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        done = [f.result() for f in [pool.submit(work, t) for t in range(THREADS)]]
    session.close()
    for kind, maps in (pair for thread in done for pair in thread):
        np.testing.assert_allclose(maps, serial[kind], rtol=1e-5, atol=1e-7, err_msg=kind)
    assert np.abs(serial["guided"] - serial["gradients"]).max() > 0.1
