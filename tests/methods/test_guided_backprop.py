"""Guided Backprop: hand-computed guided gradients, the PyTorch ReLU override and its
restoration, and clear errors where guided gradients are unavailable."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_h

import salience
from salience._adapter import FrameworkModel
from salience.model import GUIDED_INPUT_GRADIENTS, INPUT_OUTPUT_GRADIENTS, CallbackModel

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
import salience.torch as st  # noqa: E402

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(5, 4))
W2 = RNG.normal(size=(6, 5))
W3 = RNG.normal(size=(3, 6))
X = RNG.normal(size=(7, 4)) * 3
TARGETS = np.array([0, 1, 2, 0, 1, 2, 0])


class ThreeLayerNet(nn.Module):
    """logits = W3 act(W2 act(W1 x)) with the activation written in different ways."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.l1 = nn.Linear(4, 5, bias=False)
        self.l2 = nn.Linear(5, 6, bias=False)
        self.l3 = nn.Linear(6, 3, bias=False)
        for layer, w in zip((self.l1, self.l2, self.l3), (W1, W2, W3)):
            layer.weight.data = torch.tensor(w, dtype=torch.float32)
        self.relu = nn.ReLU(inplace=kind == "module_inplace")
        self.relu6 = nn.ReLU6()

    def forward(self, x):
        k = self.kind
        if k in ("module", "module_inplace"):
            return self.l3(self.relu(self.l2(self.relu(self.l1(x)))))
        if k == "functional":
            return self.l3(torch.relu(self.l2(F.relu(self.l1(x)))))
        if k == "functional_inplace":
            h = self.l1(x)
            F.relu(h, inplace=True)  # result unused: only the in-place side effect counts
            h2 = self.l2(h)
            torch.relu_(h2)
            return self.l3(h2)
        if k == "relu6":
            return self.l3(self.relu6(self.l2(F.relu6(self.l1(x)))))
        if k == "hardtanh_relu6":
            return self.l3(F.hardtanh(self.l2(F.hardtanh(self.l1(x), 0.0, 6.0)), min_val=0.0,
                                      max_val=6.0))
        raise AssertionError(k)


def guided_by_hand(x: np.ndarray, target: int, upper: float = np.inf) -> np.ndarray:
    """The guided gradient of logit ``target`` of ThreeLayerNet, in numpy."""
    pre1 = W1 @ x
    pass1 = (pre1 > 0) & (pre1 < upper)
    pre2 = W2 @ np.clip(pre1, 0, upper)
    pass2 = (pre2 > 0) & (pre2 < upper)
    g = W3[target]
    g = g * (g > 0) * pass2
    g = W2.T @ g
    g = g * (g > 0) * pass1
    return W1.T @ g


def vanilla_by_hand(x: np.ndarray, target: int) -> np.ndarray:
    pre1 = W1 @ x
    pre2 = W2 @ np.maximum(pre1, 0)
    return W1.T @ ((W2.T @ (W3[target] * (pre2 > 0))) * (pre1 > 0))


@pytest.mark.parametrize(
    "kind", ["module", "module_inplace", "functional", "functional_inplace"]
)
def test_relu_net_matches_hand_computation(kind):
    model = st.wrap(ThreeLayerNet(kind))
    maps = salience.GuidedBackprop(batch_size=3).explain(model, X.astype(np.float32), TARGETS)
    expected = np.stack([guided_by_hand(x, t) for x, t in zip(X, TARGETS)])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)
    # The guided rule really changed something: vanilla gradients differ.
    vanilla = np.stack([vanilla_by_hand(x, t) for x, t in zip(X, TARGETS)])
    assert np.abs(vanilla - expected).max() > 0.1
    plain = salience.Gradients().explain(model, X.astype(np.float32), TARGETS)
    np.testing.assert_allclose(plain, vanilla, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st_h.integers(0, 2**31 - 1), inplace=st_h.booleans())
def test_one_hidden_layer_property(seed, inplace):
    # f(x) = v . relu(W x + b): the guided map is W^T (max(v, 0) * [W x + b > 0]).
    rng = np.random.default_rng(seed)
    w, b, v = rng.normal(size=(6, 3)), rng.normal(size=6), rng.normal(size=(1, 6))
    x = rng.normal(size=(4, 3)) * 2
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 1, bias=False))
    net[0].weight.data, net[0].bias.data = torch.tensor(w), torch.tensor(b)
    net[2].weight.data = torch.tensor(v)
    maps = salience.GuidedBackprop().explain(st.wrap(net.double()), x, 0)
    expected = (np.maximum(v, 0) * (x @ w.T + b > 0)) @ w
    np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["relu6", "hardtanh_relu6"])
def test_relu6_gates_above_six(kind):
    pre = np.concatenate([W1 @ x for x in X])
    assert (pre > 6).any(), "the test needs activations above 6"
    model = st.wrap(ThreeLayerNet(kind))
    maps = salience.GuidedBackprop().explain(model, X.astype(np.float32), TARGETS)
    expected = np.stack([guided_by_hand(x, t, upper=6.0) for x, t in zip(X, TARGETS)])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)


def test_hardtanh_that_is_not_a_relu_keeps_its_gradient():
    net = nn.Sequential(nn.Linear(4, 5), nn.Hardtanh(-1.0, 1.0), nn.Linear(5, 3))
    x = X.astype(np.float32)
    with pytest.warns(RuntimeWarning, match="no ReLU"):
        guided = salience.GuidedBackprop().explain(st.wrap(net), x, TARGETS)
    vanilla = salience.Gradients().explain(st.wrap(net), x, TARGETS)
    np.testing.assert_array_equal(guided, vanilla)


def test_model_without_relu_warns_and_relu_model_does_not():
    silu = nn.Sequential(nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 3))
    with pytest.warns(RuntimeWarning, match="plain gradient"):
        salience.GuidedBackprop().explain(st.wrap(silu), X.astype(np.float32), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        salience.GuidedBackprop().explain(st.wrap(ThreeLayerNet("functional")),
                                          X.astype(np.float32), 0)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cnn_matches_captum_guided_backprop():
    captum_attr = pytest.importorskip("captum.attr")
    net = SmallCNN()
    x = np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)
    ours = salience.GuidedBackprop().explain(st.wrap(net), x, [0, 1, 3])
    theirs = captum_attr.GuidedBackprop(net).attribute(
        torch.tensor(x), target=torch.tensor([0, 1, 3])
    ).detach().numpy()
    assert np.abs(theirs).max() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


class CountingForward(nn.Module):
    """A network that records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(len(x))
        return self.inner(x)


def test_batch_equals_one_by_one_and_call_count():
    net = CountingForward(SmallCNN())
    model = st.wrap(net)
    x = np.random.default_rng(3).normal(size=(5, 3, 8, 8)).astype(np.float32)
    batch = salience.GuidedBackprop(batch_size=2).explain(model, x, 1)
    assert net.batches == [2, 2, 1]
    singles = [salience.GuidedBackprop().explain(model, x[i : i + 1], 1)[0] for i in range(5)]
    np.testing.assert_allclose(batch, np.stack(singles), rtol=1e-5, atol=1e-7)


def _functional_originals():
    return [torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_]


def _module_state(net):
    return (
        [(m.training, dict(m._forward_pre_hooks), dict(m._forward_hooks),
          dict(m._backward_hooks)) for m in net.modules()],
        [(p.requires_grad, p.grad) for p in net.parameters()],
    )


def test_model_and_torch_functions_restored_after_call():
    net = SmallCNN().train()
    before_functions = _functional_originals()
    before = _module_state(net)
    salience.GuidedBackprop().explain(st.wrap(net), np.ones((1, 3, 8, 8), np.float32), 0)
    assert _functional_originals() == before_functions
    assert _module_state(net) == before
    assert net.training


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        self.patched_relu = F.relu
        F.relu(self.relu(self.lin(x)))
        raise RuntimeError("boom after the ReLUs")


def test_restored_after_an_exception():
    net = Exploding()
    before_functions = _functional_originals()
    before = _module_state(net)
    with pytest.raises(RuntimeError, match="boom"):
        salience.GuidedBackprop().explain(st.wrap(net), X.astype(np.float32), 0)
    assert net.patched_relu is not before_functions[2]  # the override was active
    assert _functional_originals() == before_functions
    assert _module_state(net) == before
    # Plain torch code afterwards sees ordinary ReLU gradients.
    t = torch.tensor([-1.0, 2.0], requires_grad=True)
    (F.relu(t) * torch.tensor([-3.0, -4.0])).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, -4.0])


def test_vanilla_call_does_not_patch_anything():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(F.relu)
            return F.relu(x)

    original = F.relu
    salience.Gradients().explain(st.wrap(Spy()), X.astype(np.float32), 0)
    assert seen == [original]


def test_input_not_modified():
    x = X.astype(np.float32)
    copy = x.copy()
    salience.GuidedBackprop().explain(st.wrap(ThreeLayerNet("module_inplace")), x, TARGETS)
    np.testing.assert_array_equal(x, copy)


def test_callable_without_guided_key_gets_clear_error():
    calls = []

    def model(x, targets, keys):
        calls.append(keys)
        return {INPUT_OUTPUT_GRADIENTS: np.ones_like(x)}

    with pytest.raises(ValueError, match="GUIDED_INPUT_GRADIENTS") as info:
        salience.GuidedBackprop().explain(model, X)
    assert "Guided Backprop" in str(info.value)
    assert calls == [[GUIDED_INPUT_GRADIENTS]]


def test_pair_callback_returning_guided_gradients_works():
    def call_model_function(x_batch, call_model_args=None, expected_keys=None):
        assert expected_keys == [GUIDED_INPUT_GRADIENTS]
        return {GUIDED_INPUT_GRADIENTS: 2 * np.asarray(x_batch)}

    maps = salience.GuidedBackprop().explain(CallbackModel(call_model_function), X)
    np.testing.assert_allclose(maps, 2 * X)


def test_callback_with_wrong_shape_names_key():
    def model(x, targets, keys):
        return {GUIDED_INPUT_GRADIENTS: np.ones((len(x), 2))}

    with pytest.raises(ValueError, match="GUIDED_INPUT_GRADIENTS to be the same shape"):
        salience.GuidedBackprop().explain(model, X)


def test_adapter_without_guided_support_refuses_before_running():
    class NoGuided(FrameworkModel):
        ran = False

        def _run(self, x, targets, keys):
            NoGuided.ran = True
            return {}

    with pytest.raises(ValueError, match="cannot compute guided gradients"):
        salience.GuidedBackprop().explain(NoGuided(), X, targets=0)
    assert not NoGuided.ran


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (1.5, TypeError),
                                               (True, TypeError)])
def test_bad_batch_size(batch_size, error):
    with pytest.raises(error, match="batch_size"):
        salience.GuidedBackprop(batch_size=batch_size)
