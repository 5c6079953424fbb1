"""The PyTorch adapter: exact gradients, targets, layers, layouts, and an untouched module."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import salience
import salience.core as core
import salience.torch as st
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)

ALL_KEYS = [INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES, CONVOLUTION_LAYER_VALUES,
            CONVOLUTION_OUTPUT_GRADIENTS]


class TinyCNN(nn.Module):
    """Conv - ReLU(in place) - conv - tanh - batch norm - dropout - linear; 3 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, padding=1, stride=2),
            nn.Tanh(),
        )
        self.norm = nn.BatchNorm2d(5)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5 * 4 * 4, 3)
        self.explode = False

    def forward(self, x):
        if self.explode:
            raise RuntimeError("boom inside forward")
        return self.head(self.drop(self.norm(self.features(x)).flatten(1)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    module = TinyCNN()
    with torch.no_grad():  # non-trivial batch norm statistics
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    return module


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)


def _reference_gradients(module, x, targets):
    """torch.autograd on an eval-mode copy of the module."""
    clone = copy.deepcopy(module).eval()
    xt = torch.tensor(x, requires_grad=True)
    out = clone(xt)
    out.gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    return xt.grad.numpy()


def _outputs(module, x):
    with torch.no_grad():
        return copy.deepcopy(module).eval()(torch.tensor(x)).numpy()


def test_gradients_equal_autograd(net, x):
    targets = np.array([0, 1, 2, 1])
    maps = salience.Gradients(batch_size=3).explain(st.wrap(net), x, targets)
    np.testing.assert_allclose(maps, _reference_gradients(net, x, targets), rtol=1e-5, atol=1e-7)


def test_targets_in_every_form(net, x):
    model = st.wrap(net)
    g = salience.Gradients()
    by_array = g.explain(model, x, np.array([2, 0, 1, 2]))
    np.testing.assert_allclose(by_array, _reference_gradients(net, x, [2, 0, 1, 2]), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(g.explain(model, x, [2, 0, 1, 2]), by_array)
    np.testing.assert_allclose(g.explain(model, x, np.eye(3)[[2, 0, 1, 2]]), by_array, rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(
        g.explain(model, x, torch.tensor([2, 0, 1, 2])), by_array, rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        g.explain(model, x, 1), _reference_gradients(net, x, [1, 1, 1, 1]), rtol=1e-5, atol=1e-7
    )
    top = _outputs(net, x).argmax(axis=1)
    assert len(set(top.tolist())) > 1  # the test would not notice a fixed class otherwise
    np.testing.assert_allclose(g.explain(model, x), _reference_gradients(net, x, top), rtol=1e-5,
                               atol=1e-7)


def test_target_fn_gets_the_targets_as_a_tensor_even_when_they_are_all_equal(net, x):
    # (the adapter takes one column of the output for a batch with one class index; a
    # target_fn must still get the tensor of targets)
    seen = []

    def score(out, targets):
        seen.append(targets)
        return out.gather(1, targets[:, None])[:, 0]

    maps = salience.Gradients().explain(st.wrap(net, target_fn=score), x, 2)
    assert seen and all(isinstance(t, torch.Tensor) and t.tolist() == [2] * 4 for t in seen)
    np.testing.assert_allclose(maps, _reference_gradients(net, x, [2] * 4), rtol=1e-5, atol=1e-7)


def test_predict_and_scores(net, x):
    # float32 rounding: the adapter's convolutions run on channels-last memory
    model = st.wrap(net, batch_size=3)
    np.testing.assert_allclose(model.predict(x), _outputs(net, x), rtol=1e-5, atol=1e-7)
    out = model(x, np.array([0, 1, 2, 0]), [OUTPUT_LAYER_VALUES])
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES],
                               _outputs(net, x)[np.arange(4), [0, 1, 2, 0]], rtol=1e-5,
                               atol=1e-7)


def _reference_layer(module, layer_name, x, targets):
    """Activations of a layer (before any in-place op after it) and the target's gradient."""
    clone = copy.deepcopy(module).eval()
    layer = dict(clone.named_modules())[layer_name]
    saved = {}

    def hook(_m, _i, output):
        saved["values"] = output
        return output.clone()  # keep the values out of later in-place ops

    handle = layer.register_forward_hook(hook)
    out = clone(torch.tensor(x))
    handle.remove()
    score = out.gather(1, torch.as_tensor(targets)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, saved["values"])
    return saved["values"].detach().numpy(), grad.numpy()


@pytest.mark.parametrize("keys", [ALL_KEYS[2:], ALL_KEYS])
@pytest.mark.parametrize("layer_name", ["features.0", "features.2", "features.3", "norm"])
def test_layer_values_and_gradients(layer_name, keys, net, x):
    # features.0 is followed by an in-place ReLU, which must not alter the captured values
    targets = np.array([0, 1, 2, 1])
    model = st.wrap(net, layer=layer_name)
    out = model(x, targets, keys)
    values, grads = _reference_layer(net, layer_name, x, targets)
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[CONVOLUTION_OUTPUT_GRADIENTS], grads, rtol=1e-5, atol=1e-7)


class _NoBackward(torch.autograd.Function):
    """Identity whose backward pass fails: a model that must not be differentiated."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward pass run")


@pytest.mark.parametrize("layer_name", ["features.2", "norm"])
def test_layer_values_alone_need_no_backward_pass(layer_name, net, x):
    # Eigen-CAM asks only for the layer's values: they equal the hook's, and no
    # backward pass runs (the wrapped model fails on one).
    targets = np.array([0, 1, 2, 1])
    values, _ = _reference_layer(net, layer_name, x, targets)
    guarded = nn.Sequential(net, nn.Identity())
    guarded[1].forward = _NoBackward.apply
    model = st.wrap(guarded, layer="0." + layer_name)
    out = model(x, targets, [CONVOLUTION_LAYER_VALUES, OUTPUT_LAYER_VALUES])
    assert CONVOLUTION_OUTPUT_GRADIENTS not in out
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], values, rtol=1e-5, atol=1e-7)
    assert salience.EigenCAM().explain(model, x, targets).shape == (4, 8, 8)
    with pytest.raises(RuntimeError, match="backward pass run"):
        model(x, targets, [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS])


def test_layer_by_module_equals_layer_by_name(net, x):
    by_name = salience.GradCAM().explain(st.wrap(net, layer="features.2"), x, 1)
    by_module = salience.GradCAM().explain(st.wrap(net, layer=net.features[2]), x, 1)
    np.testing.assert_array_equal(by_name, by_module)
    assert by_name.shape == (4, 8, 8) and by_name.max() > 0


def test_grad_cam_on_the_adapter_matches_the_hand_computation(net, x):
    targets = np.array([2, 1, 0, 0])
    cams = salience.GradCAM(resize=False).explain(st.wrap(net, layer="features.3"), x, targets)
    values, grads = _reference_layer(net, "features.3", x, targets)
    expected = np.maximum(np.einsum("nkhw,nk->nhw", values, grads.mean(axis=(2, 3))), 0)
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-7)


def test_unknown_layer_lists_available_layers(net):
    with pytest.raises(ValueError, match=r"no layer named 'feature\.9'; available layers: "
                                         r"features, features\.0, features\.1"):
        st.wrap(net, layer="feature.9")


def test_layer_not_in_the_model(net):
    with pytest.raises(ValueError, match="not a submodule"):
        st.wrap(net, layer=nn.Conv2d(3, 3, 1))


def test_grad_cam_without_a_layer_says_what_to_do(net, x):
    with pytest.raises(ValueError, match="layer=..."):
        salience.GradCAM().explain(st.wrap(net), x, 0)


def test_channels_last_input_to_channels_first_model_is_named(net, x):
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8, 3\).*looks channels-last.*"
                                         r"channels-first \(n, C, H, W\)"):
        salience.Gradients().explain(st.wrap(net), np.moveaxis(x, 1, -1), 0)


def test_tensors_accepted_as_input(net, x):
    model = st.wrap(net)
    from_tensor = salience.IntegratedGradients(steps=5).explain(model, torch.tensor(x), 1)
    from_array = salience.IntegratedGradients(steps=5).explain(model, x, 1)
    np.testing.assert_array_equal(from_tensor, from_array)
    assert isinstance(from_tensor, np.ndarray)


def test_integrated_gradients_on_the_adapter_is_complete(net, x):
    model = st.wrap(net.double())
    x64 = x.astype(np.float64)
    maps = salience.IntegratedGradients(steps=400, batch_size=400).explain(model, x64, 2)
    scores = model(x64, np.full(4, 2), [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    base = model(np.zeros_like(x64), np.full(4, 2), [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    np.testing.assert_allclose(maps.reshape(4, -1).sum(axis=1), scores - base, rtol=2e-2,
                               atol=1e-3)


def test_a_double_precision_module_keeps_float64(net, x):
    net = net.double()
    model = st.wrap(net, layer="features.2")
    x64 = x.astype(np.float64)
    out = model(x64, np.full(4, 2), [INPUT_OUTPUT_GRADIENTS, CONVOLUTION_LAYER_VALUES,
                                     CONVOLUTION_OUTPUT_GRADIENTS])
    assert {v.dtype for v in out.values()} == {np.dtype(np.float64)}
    xt = torch.tensor(x64, requires_grad=True)
    expected, = torch.autograd.grad(copy.deepcopy(net).eval()(xt)[:, 2].sum(), xt)
    # float64 precision (not float32's); the adapter's convolution order differs
    np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], expected.numpy(), rtol=1e-12,
                               atol=1e-18)
    assert model.predict(x64).dtype == np.float64


# ---------------------------------------------------------------- module untouched


def _state(module):
    return {
        "training": [(name, m.training) for name, m in module.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in module.named_parameters()],
        "grads": [name for name, p in module.named_parameters() if p.grad is not None],
        "hooks": [
            name
            for name, m in module.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or getattr(m, "_backward_pre_hooks", None)
        ],
        "params": {k: v.clone() for k, v in module.state_dict().items()},
        "grad_values": {
            name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None
        },
    }


def _assert_same(before, after):
    for key in ("training", "requires_grad", "grads", "hooks"):
        assert before[key] == after[key], key
    for k, v in before["grad_values"].items():
        assert torch.equal(v, after["grad_values"][k]), k
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k


def _prepare(net):
    net.train()
    net.features[0].weight.requires_grad_(False)  # a mix of frozen and trainable
    net.head.bias.grad = torch.full_like(net.head.bias, 0.5)  # a gradient the user kept
    return _state(net)


@pytest.mark.parametrize(
    "keys", [[INPUT_OUTPUT_GRADIENTS], [OUTPUT_LAYER_VALUES], ALL_KEYS, ALL_KEYS[2:]]
)
def test_module_untouched(keys, net, x):
    before = _prepare(net)
    model = st.wrap(net, layer="features.2")
    model(x, np.array([0, 1, 2, 0]), keys)
    model.predict(x)
    _assert_same(before, _state(net))
    assert net.training and net.norm.training and net.drop.training


def test_module_untouched_after_exception_inside_forward(net, x):
    before = _prepare(net)
    model = st.wrap(net, layer="features.2")
    model.predict(x)  # the output shape is known now: the next calls go straight to forward
    net.explode = True
    for keys in ([INPUT_OUTPUT_GRADIENTS], ALL_KEYS, [OUTPUT_LAYER_VALUES]):
        with pytest.raises(RuntimeError, match="boom inside forward"):
            model(x, np.array([0, 1, 2, 0]), keys)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        model.predict(x)
    _assert_same(before, _state(net))
    net.explode = False
    assert not net.features[2]._forward_hooks


def test_a_model_failing_on_its_first_row_is_named_and_untouched(net, x):
    before = _prepare(net)
    net.explode = True
    with pytest.raises(ValueError, match=r"fails on one row of x \(x has shape \(4, 3, 8, 8\).*"
                                         r"RuntimeError: boom inside forward") as info:
        salience.Gradients().explain(st.wrap(net), x, 0)
    assert isinstance(info.value.__cause__, RuntimeError)
    net.explode = False
    _assert_same(before, _state(net))


def test_module_untouched_after_a_bad_target(net, x):
    before = _prepare(net)
    with pytest.raises(ValueError, match=r"targets must be >= 0 and < 3 \(the model has 3 "
                                         r"outputs\), got 7"):
        salience.GradCAM().explain(st.wrap(net, layer="features.2"), x, 7)
    _assert_same(before, _state(net))


def test_eval_mode_is_used_while_explaining(net, x):
    net.train()  # dropout would make repeated gradients differ in training mode
    model = st.wrap(net)
    first = salience.Gradients().explain(model, x, 0)
    np.testing.assert_array_equal(first, salience.Gradients().explain(model, x, 0))
    assert net.training


def test_the_walk_of_modules_and_parameters_is_modules_and_parameters():
    from salience.torch import _modules_and_parameters

    shared = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(shared, torch.nn.Sequential(shared, torch.nn.ReLU()),
                              torch.nn.Linear(3, 3))
    net[2].weight = shared.weight  # tied weights
    shared.register_module("absent", None)
    net[1].register_parameter("unset", None)
    modules, parameters = _modules_and_parameters(net)
    assert sorted(map(id, modules)) == sorted(map(id, net.modules()))
    assert sorted(map(id, parameters)) == sorted(map(id, net.parameters()))
    assert len(modules) == len(list(net.modules())) == 5  # each once
    net.train()
    model = st.wrap(net)  # every one of them is in eval mode and frozen during a call
    seen = []
    net[1][1].register_forward_hook(lambda m, i, o: seen.append(
        ([m.training for m in net.modules()], [p.requires_grad for p in net.parameters()])))
    model.predict(np.ones((2, 3), np.float32))
    assert seen and all(state == ([False] * 5, [False] * 3) for state in seen)  # probe too
    assert net.training


# ---------------------------------------------------------------- PAIR callback


def test_pair_call_model_function_channels_last(net, x):
    model = st.wrap(net, layer="features.2")
    call = model.call_model_function(channels_last_input=True)
    image = np.moveaxis(x[0], 0, -1)  # (H, W, C) as in PAIR's notebooks
    args = {"class_idx_str": 2}
    mask = core.GradientSaliency().GetMask(image, call, args)
    expected = salience.Gradients().explain(model, x[:1], 2)[0]
    np.testing.assert_allclose(mask, np.moveaxis(expected, 0, -1), rtol=1e-6, atol=1e-8)
    ig = core.IntegratedGradients().GetMask(image, call, args, x_steps=6, batch_size=4)
    expected = salience.IntegratedGradients(steps=6).explain(model, x[:1], 2)[0]
    np.testing.assert_allclose(ig, np.moveaxis(expected, 0, -1), rtol=1e-5, atol=1e-8)
    cam = core.GradCam().GetMask(image, call, args, three_dims=False)
    expected = salience.GradCAM().explain(model, x[:1], 2)[0]
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-8)


def test_pair_call_model_function_native_layout_and_top_class(net, x):
    model = st.wrap(net)
    call = model.call_model_function()
    out = call(x, None, [INPUT_OUTPUT_GRADIENTS])
    top = _outputs(net, x).argmax(axis=1)
    np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], _reference_gradients(net, x, top),
                               rtol=1e-5, atol=1e-7)
    out = call(x, 1, [OUTPUT_LAYER_VALUES])
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES], _outputs(net, x)[:, 1], rtol=1e-6)


def test_call_model_args_dict_must_hold_one_entry(net, x):
    call = st.wrap(net).call_model_function()
    with pytest.raises(ValueError, match="exactly one entry"):
        call(x, {"a": 1, "b": 2}, [INPUT_OUTPUT_GRADIENTS])


def test_wrap_rejects_non_modules():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got function"):
        st.wrap(lambda t: t)


class TakesNHWC(nn.Module):
    """A channels-last model: permutes to NCHW for its (NCHW) conv layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1, stride=2)
        self.head = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.permute(0, 3, 1, 2))).flatten(1))


class TakesNCHW(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 2, 3, 1))


@pytest.mark.parametrize("resize", [False, True])
def test_channels_last_model_grad_cam_equals_channels_first(resize, x):
    torch.manual_seed(1)
    net = TakesNHWC()
    last = st.wrap(net, layer="conv", channels_last=True)
    first = st.wrap(TakesNCHW(net), layer="inner.conv")
    x_last = np.moveaxis(x, 1, -1)
    out = last(x_last, np.array([0, 1, 2, 0]), ALL_KEYS)
    assert out[CONVOLUTION_LAYER_VALUES].shape == (4, 4, 4, 5)  # the model's layout
    assert out[INPUT_OUTPUT_GRADIENTS].shape == x_last.shape
    cams_last = salience.GradCAM(resize=resize).explain(last, x_last, 1)
    cams_first = salience.GradCAM(resize=resize).explain(first, x, 1)
    assert cams_first.max() > 0
    np.testing.assert_allclose(cams_last, cams_first, rtol=1e-5, atol=1e-7)


class ScalesInputInPlace(nn.Module):
    """Normalises its input in place (allowed without gradients)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        x.sub_(0.5)
        return self.head(self.conv(x).flatten(1))


def test_a_module_writing_into_its_input_changes_no_array(x):
    torch.manual_seed(0)
    model = st.wrap(ScalesInputInPlace())
    before = x.copy()
    first = model.predict(x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(model.predict(x), first)
    scores = model(x, np.array([0, 1, 2, 0]), [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(scores, first[np.arange(4), [0, 1, 2, 0]], rtol=1e-6)
    # explain() resolves the top class with predict, then occludes the same images
    maps = salience.Occlusion(size=3, stride=3).explain(model, x)
    top = first.argmax(axis=1)
    np.testing.assert_array_equal(maps, salience.Occlusion(size=3, stride=3).explain(model, x, top))


def test_methods_hand_the_adapter_the_callers_array_without_copying_it(net, x, monkeypatch):
    # The adapter copies every host array into a tensor (above: a module writing into
    # its input changes no array), so a method's own copy of the input would be a
    # second one: an explain call passes the caller's float32 array itself.
    model = st.wrap(net)
    seen = []
    original = st.TorchModel._tensor

    def spy(self, rows, probing=False):
        seen.append(np.shares_memory(np.asarray(rows), x))
        return original(self, rows, probing)

    monkeypatch.setattr(st.TorchModel, "_tensor", spy)
    before = x.copy()
    salience.Gradients(batch_size=len(x)).explain(model, x, 0)
    assert seen and all(seen)
    np.testing.assert_array_equal(x, before)


# ---------------------------------------------------------------- checks before any work


class CountingForwards(nn.Module):
    """Records each forward pass: its rows and whether gradients were on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.forwards = []

    def forward(self, x):
        self.forwards.append((len(x), torch.is_grad_enabled()))
        return self.inner(x)


@pytest.mark.parametrize(
    "targets, shown",
    [(-1, "-1"), (3, "3"), (2**32 + 1, "4294967297"), (2**70, str(2**70)),
     ([1e20, 0, 0, 0], r"1e\+20"), (np.array([0, 1, 5, 0]), "5"),
     (torch.tensor([0, -2, 1, 1]), "-2")],
)
def test_targets_out_of_range_are_refused_before_any_gradient_work(net, x, targets, shown):
    counting = CountingForwards(net)
    model = st.wrap(counting, layer="inner.features.2")
    message = rf"targets must be >= 0 and < 3 \(the model has 3 outputs\), got {shown}$"
    for method in (salience.Gradients(), salience.IntegratedGradients(steps=3),
                   salience.GradCAM(), salience.GuidedBackprop()):
        with pytest.raises(ValueError, match=message):
            method.explain(model, x, targets)
    with pytest.raises(ValueError, match=message):
        model.call_model_function()(x, {"class_idx_str": targets}, [INPUT_OUTPUT_GRADIENTS])
    # only the gradient-free probe of one row that tells the model's width
    assert counting.forwards == [(1, False)]


def test_one_hot_targets_of_the_wrong_width(net, x):
    with pytest.raises(ValueError, match="one-hot/weight targets have 4 columns but the model "
                                         "has 3 outputs"):
        salience.Gradients().explain(st.wrap(net), x, np.eye(4)[[0, 1, 2, 3]])


@pytest.mark.parametrize("method", [
    salience.Gradients(), salience.SmoothGrad(salience.Gradients(), nsamples=2, seed=0),
    salience.IntegratedGradients(steps=3), salience.GuidedIG(steps=3),
    salience.GuidedBackprop()], ids=lambda m: type(m).__name__)
def test_an_image_without_its_batch_axis_is_named(net, x, method):
    counting = CountingForwards(net)
    with pytest.raises(ValueError, match=r"x has shape \(3, 8, 8\).*x must be a batch "
                                         r"\(n, \*input_shape\).*channels-first \(n, C, H, W\)"):
        method.explain(st.wrap(counting), x[0], 0)
    assert all(not with_grad for _, with_grad in counting.forwards)


def test_a_model_taking_one_fixed_batch_size_is_probed_with_the_whole_batch(net, x):
    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, t):
            if len(t) != 4:
                raise RuntimeError("this export takes batches of exactly 4")
            return self.inner(t)

    maps = salience.Gradients(batch_size=4).explain(st.wrap(FixedBatch()), x, [0, 1, 2, 1])
    np.testing.assert_allclose(maps, _reference_gradients(net, x, [0, 1, 2, 1]), rtol=1e-5,
                               atol=1e-7)


# ---------------------------------------------------------------- memory layout


class RecordsLayout(nn.Module):
    """Records, per forward pass, whether its input lies in channels-last memory."""

    def __init__(self, inner, flatten_by_view=False):
        super().__init__()
        self.inner = inner
        self.flatten_by_view = flatten_by_view
        self.channels_last_memory = []

    def forward(self, t):
        self.channels_last_memory.append(
            t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous())
        if self.flatten_by_view:
            t.view(len(t), -1)  # a view of the input needs contiguous memory
        return self.inner(t)


def test_convolutions_get_channels_last_memory_on_cpu(net, x):
    recording = RecordsLayout(net)
    model = st.wrap(recording)
    targets = np.array([0, 1, 2, 1])
    maps = salience.Gradients(batch_size=4).explain(model, x, targets)
    model.predict(x)
    assert recording.channels_last_memory == [True, True, True]  # probe, gradients, predict
    np.testing.assert_allclose(maps, _reference_gradients(net, x, targets), rtol=1e-5,
                               atol=1e-7)


def test_one_small_image_stays_in_contiguous_memory(net, x):
    # PyTorch runs its own kernel for a single image of at most 20480 values: faster there
    recording = RecordsLayout(net)
    model = st.wrap(recording)
    maps = salience.Gradients(batch_size=1).explain(model, x[:2], np.array([0, 1]))
    # probe (the memory any batch may get), then two one-image calls
    assert recording.channels_last_memory == [True, False, False]
    pooled = RecordsLayout(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten()))
    for side in (82, 83):  # 3 * 82 * 82 = 20172 values, 3 * 83 * 83 = 20667: past the limit
        image = np.random.default_rng(side).normal(size=(1, 3, side, side)).astype(np.float32)
        st.wrap(pooled)(image, np.array([0]), [INPUT_OUTPUT_GRADIENTS])
    assert pooled.channels_last_memory == [True, False, True, True]  # probe, call per size
    np.testing.assert_allclose(maps, _reference_gradients(net, x[:2], [0, 1]), rtol=1e-5,
                               atol=1e-7)


def test_the_callbacks_channels_last_batches_get_the_memory_of_direct_calls(net, x):
    # The PAIR callback's (n, C, H, W) view of an (n, H, W, C) batch is strided; torch.tensor
    # kept that layout, so one image ran in channels-last memory there and contiguous memory
    # in explain: slower, and its convolution rounded otherwise, which settled max-pooling
    # near-ties the other way (a tiny-CNN photo's maps 23% of their peak apart).
    recording = RecordsLayout(net)
    model = st.wrap(recording)
    callback = model.call_model_function(channels_last_input=True)
    hwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    one = callback(hwc[:1], 0, [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
    four = callback(hwc, [0, 1, 2, 1], [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
    assert recording.channels_last_memory == [True, False, True]  # probe, one image, four
    np.testing.assert_allclose(one[0], four[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(four.transpose(0, 3, 1, 2),
                               _reference_gradients(net, x, [0, 1, 2, 1]), rtol=1e-5, atol=1e-7)


def test_a_module_refusing_channels_last_memory_is_found_by_a_one_image_probe(net, x):
    recording = RecordsLayout(net, flatten_by_view=True)
    model = st.wrap(recording)
    model(x[:1], np.array([0]), [INPUT_OUTPUT_GRADIENTS])
    maps = salience.Gradients(batch_size=4).explain(model, x, np.array([0, 1, 2, 1]))
    assert recording.channels_last_memory == [True, False, False, False]
    np.testing.assert_allclose(maps, _reference_gradients(net, x, [0, 1, 2, 1]), rtol=1e-5,
                               atol=1e-7)


def test_a_module_needing_contiguous_memory_gets_it(net, x):
    recording = RecordsLayout(net, flatten_by_view=True)
    model = st.wrap(recording)
    targets = np.array([0, 1, 2, 1])
    maps = salience.Gradients(batch_size=4).explain(model, x, targets)
    # the probe met the refusal and retried in contiguous memory, which every later call uses
    assert recording.channels_last_memory == [True, False, False]
    np.testing.assert_allclose(maps, _reference_gradients(net, x, targets), rtol=1e-5,
                               atol=1e-7)


class ViewsAnActivation(nn.Module):
    """An MNIST-style network: views its input to its image shape, then flattens an
    activation with ``.view()``, which needs contiguous memory.  ``fails_on_batches``
    makes it raise an error of its own for batches of several rows."""

    def __init__(self, fails_on_batches=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.fails_on_batches = fails_on_batches
        self.passes = 0

    def forward(self, t):
        self.passes += 1
        if self.fails_on_batches and len(t) > 1:
            raise RuntimeError("this module takes one row at a time")
        t = t.view(len(t), 3, 8, 8)
        return self.head(self.conv(t).view(len(t), -1))


def test_a_module_viewing_an_activation_gets_contiguous_memory_for_batches(x):
    # The one-row probe passes in channels-last memory (a one-row view keeps no batch
    # stride), a batch of four failed there with PyTorch's "view size is not compatible"
    module = ViewsAnActivation().eval()
    model = st.wrap(module)
    targets = [0, 1, 2, 1]
    maps = salience.Gradients(batch_size=4).explain(model, x, targets)
    np.testing.assert_allclose(maps, _reference_gradients(module, x, targets), rtol=1e-5,
                               atol=1e-7)
    passes = module.passes
    salience.Gradients(batch_size=4).explain(model, x, targets)
    assert module.passes == passes + 1  # the shape now goes in contiguous memory at once
    np.testing.assert_allclose(st.wrap(module).predict(x), _outputs(module, x), rtol=1e-5,
                               atol=1e-7)
    callback = st.wrap(module).call_model_function(channels_last_input=True)
    got = callback(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), targets,
                   [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
    np.testing.assert_allclose(got, maps.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-7)


def test_a_modules_own_error_on_a_batch_is_raised_as_it_is(x):
    model = st.wrap(ViewsAnActivation(fails_on_batches=True).eval())
    with pytest.raises(RuntimeError, match="takes one row at a time"):
        model(x, np.array([0, 1, 2, 1]), [INPUT_OUTPUT_GRADIENTS])


def test_a_channels_last_module_gets_contiguous_memory(x):
    class TakesHWC(nn.Module):  # (n, H, W, C) in, as Keras-style ports take it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.head = nn.Linear(2 * 6 * 6, 3)
            self.contiguous = []

        def forward(self, t):
            self.contiguous.append(t.is_contiguous())
            return self.head(self.conv(t.permute(0, 3, 1, 2)).flatten(1))

    module = TakesHWC()
    model = st.wrap(module, channels_last=True)
    hwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    model(hwc, np.zeros(4, dtype=np.int64), [INPUT_OUTPUT_GRADIENTS])
    assert module.contiguous == [True, True]  # probe, gradients


def test_read_only_flipped_and_float64_inputs_reach_the_module_as_a_copy(net, x):
    recording = RecordsLayout(net)
    model = st.wrap(recording)
    targets = np.array([0, 1, 2, 1])
    expected = salience.Gradients().explain(model, x, targets)
    flipped = np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]  # x's values, negative strides
    frozen = x.copy()
    frozen.flags.writeable = False
    for given in (flipped, frozen, x.astype(np.float64)):
        maps = salience.Gradients().explain(model, given, targets)
        np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=1e-7)
    assert all(recording.channels_last_memory)
    np.testing.assert_array_equal(frozen, x)


@pytest.mark.parametrize("rows", [1, 4])  # contiguous memory, channels-last memory
def test_big_endian_inputs_reach_the_module_in_native_byte_order(net, x, rows):
    model = st.wrap(net)
    targets = np.array([0, 1, 2, 1])[:rows]
    expected = model(x[:rows], targets, [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
    swapped = x[:rows].astype(">f4")  # as FITS files hold them
    got = model(swapped, targets, [INPUT_OUTPUT_GRADIENTS])[INPUT_OUTPUT_GRADIENTS]
    np.testing.assert_array_equal(got, expected)
