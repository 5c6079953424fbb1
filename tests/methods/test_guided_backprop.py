"""Guided Backprop: hand-computed guided gradients for every way of writing a ReLU in
PyTorch, nothing of torch or the model changed, and clear errors where guided gradients
cannot be computed."""

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
from torch.nn.functional import relu as imported_relu  # noqa: E402

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
        if k == "tensor_method":
            return self.l3(self.l2(self.l1(x).relu()).relu_())
        if k == "imported":  # a name bound before any call: no patching could reach it
            return self.l3(imported_relu(self.l2(imported_relu(self.l1(x)))))
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
    "kind", ["module", "module_inplace", "functional", "functional_inplace", "tensor_method",
             "imported"]
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
    with pytest.warns(RuntimeWarning, match="plain gradient") as record:
        salience.GuidedBackprop().explain(st.wrap(silu), X.astype(np.float32), 0)
    assert record[0].filename == __file__  # the warning points at the caller's line
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


class CountingForwards(nn.Module):
    """Runs ``inner`` and records each forward's rows and whether gradients were on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forwards: list[tuple[int, bool]] = []

    def forward(self, x):
        self.forwards.append((len(x), torch.is_grad_enabled()))
        return self.inner(x)


def test_batch_equals_one_by_one_and_call_count():
    counting = CountingForwards(SmallCNN())
    model = st.wrap(counting)
    x = np.random.default_rng(3).normal(size=(5, 3, 8, 8)).astype(np.float32)
    batch = salience.GuidedBackprop(batch_size=2).explain(model, x, 1)
    # one gradient forward per chunk, after one gradient-free probe of one row
    assert counting.forwards == [(1, False), (2, True), (2, True), (1, True)]
    singles = [salience.GuidedBackprop().explain(model, x[i : i + 1], 1)[0] for i in range(5)]
    np.testing.assert_allclose(batch, np.stack(singles), rtol=1e-5, atol=1e-7)


def _functional_originals():
    return [torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_,
            torch.Tensor.relu, torch.Tensor.relu_]


def _module_state(net):
    return (
        [(m.training, dict(m._forward_pre_hooks), dict(m._forward_hooks),
          dict(m._backward_hooks), dict(m._backward_pre_hooks)) for m in net.modules()],
        [(p.requires_grad, p.grad) for p in net.parameters()],
    )


class Spy(nn.Module):
    """A ReLU net that records the relu functions it sees while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen: list[list] = []
        self.explode = False

    def forward(self, x):
        self.seen.append(_functional_originals())
        h = F.relu(self.lin(x))
        if self.explode and torch.is_grad_enabled():
            raise RuntimeError("boom after the ReLU")
        return h


@pytest.mark.parametrize("method", [salience.Gradients(), salience.GuidedBackprop()],
                         ids=["vanilla", "guided"])
def test_no_call_patches_torch_or_the_model(method):
    net = SmallCNN().train()
    before_functions = _functional_originals()
    before = _module_state(net)
    method.explain(st.wrap(net), np.ones((1, 3, 8, 8), np.float32), 0)
    assert _functional_originals() == before_functions
    assert _module_state(net) == before
    assert net.training
    spy = Spy()
    method.explain(st.wrap(spy), X.astype(np.float32), 0)
    assert spy.seen and all(seen == before_functions for seen in spy.seen)


def test_restored_after_an_exception():
    net = Spy().train()
    net.explode = True
    before = _module_state(net)
    with pytest.raises(RuntimeError, match="boom"):
        salience.GuidedBackprop().explain(st.wrap(net), X.astype(np.float32), 0)
    assert _module_state(net) == before
    # Plain torch code afterwards sees ordinary ReLU gradients.
    t = torch.tensor([-1.0, 2.0], requires_grad=True)
    (F.relu(t) * torch.tensor([-3.0, -4.0])).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, -4.0])


def test_plain_gradients_of_one_graph_after_a_guided_call_on_it():
    # The guided rule belongs to the guided call's autograd graph only.
    net = ThreeLayerNet("module")
    model = st.wrap(net)
    x = X.astype(np.float32)
    guided = salience.GuidedBackprop().explain(model, x, TARGETS)
    plain = salience.Gradients().explain(model, x, TARGETS)
    vanilla = np.stack([vanilla_by_hand(row, t) for row, t in zip(X, TARGETS)])
    np.testing.assert_allclose(plain, vanilla, rtol=1e-5, atol=1e-5)
    assert np.abs(guided - plain).max() > 0.1


class Hidden(nn.Module):
    """Runs a module it does not register as a child (as salience.loading does for
    torch.export graphs), so only the call itself can show what runs."""

    def __init__(self, inner) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def forward(self, x):
        return self.inner(x)


def test_torch_export_graph_gets_the_guided_rule():
    net = ThreeLayerNet("module_inplace").eval()
    example = torch.tensor(X[:2], dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(net, (example,), dynamic_shapes=({0: batch},)).module()
    maps = salience.GuidedBackprop().explain(st.wrap(Hidden(exported)), X.astype(np.float32),
                                             TARGETS)
    expected = np.stack([guided_by_hand(x, t) for x, t in zip(X, TARGETS)])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)


_NO_SCRIPT_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")


def _fused_script(net):
    for p in net.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(net)
    for _ in range(3):  # the profiling executor fuses the graph after its first runs
        scripted(torch.ones(2, 4, requires_grad=True))
    return scripted


@_NO_SCRIPT_DEPRECATION
def test_torchscript_and_compiled_modules_are_refused_before_running():
    x = X.astype(np.float32)
    for module, name in ((_fused_script(ThreeLayerNet("module")), "TorchScript"),
                         (torch.compile(ThreeLayerNet("module")), "torch.compile")):
        counting = CountingForwards(module)
        with pytest.raises(ValueError, match=f"Guided Backprop cannot change the ReLU backward "
                                             f"rule.*{name}"):
            st.wrap(counting)(x, TARGETS, [GUIDED_INPUT_GRADIENTS])
        assert counting.forwards == []
    counting = CountingForwards(_fused_script(ThreeLayerNet("module")))
    with pytest.raises(ValueError, match="TorchScript"):
        salience.GuidedBackprop().explain(st.wrap(counting), x, 0)
    assert all(not with_grad for _, with_grad in counting.forwards)  # only the shape probe


@_NO_SCRIPT_DEPRECATION
def test_relus_hidden_in_a_fused_graph_give_a_clear_error():
    model = st.wrap(Hidden(_fused_script(ThreeLayerNet("module"))))
    with pytest.raises(ValueError, match="cannot reach the ReLUs inside a TorchScript graph"):
        salience.GuidedBackprop().explain(model, X.astype(np.float32), 0)
    plain = salience.Gradients().explain(model, X.astype(np.float32), TARGETS)
    vanilla = np.stack([vanilla_by_hand(row, t) for row, t in zip(X, TARGETS)])
    np.testing.assert_allclose(plain, vanilla, rtol=1e-5, atol=1e-5)


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

        def _run(self, x, targets, kind):
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
