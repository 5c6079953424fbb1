"""Black-box models: any scores function, and a real ONNX Runtime session of an
exported torch model, explained by the methods that need only scores."""

from __future__ import annotations

import numpy as np
import pytest

import salience
import salience.blackbox
from salience import registry
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)


class Counted:
    """``scores = x . W`` (flattened), counting calls."""

    def __init__(self, shape=(8, 8, 3), n_outputs=4, seed=0):
        self.w = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), n_outputs))
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x.reshape(len(x), -1) @ self.w


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(2, 8, 8, 3))


def test_scores_and_predict(x):
    fn = Counted()
    model = salience.blackbox.wrap(fn, n_outputs=4)
    out = model(x, np.array([1, 3]), [OUTPUT_LAYER_VALUES])
    raw = fn(x)
    np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES], raw[[0, 1], [1, 3]])
    np.testing.assert_allclose(model(x, None, [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES],
                               raw.max(axis=1))
    weights = np.array([[1.0, -1.0, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(model(x, weights, [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES],
                               (raw * weights).sum(axis=1))
    np.testing.assert_allclose(model.predict(x, batch_size=1), raw)


@pytest.mark.parametrize("method", [salience.Gradients(), salience.IntegratedGradients(steps=2),
                                    salience.GradCAM(), salience.GuidedBackprop(),
                                    salience.EigenCAM(), salience.ScoreCAM()],
                         ids=lambda m: type(m).__name__)
def test_gradient_and_layer_methods_say_which_methods_work(method, x):
    fn = Counted()
    model = salience.blackbox.wrap(fn, n_outputs=4)
    expected = ", ".join(registry.score_only_names())
    assert expected == "occlusion, rise, lime, kernel_shap"
    with pytest.raises(salience.blackbox.ScoresOnlyError,
                       match=f"gives only scores.*methods that need only scores: {expected}"):
        method.explain(model, x, 0)
    assert fn.calls == 0  # nothing ran: targets were given, the first request was refused


@pytest.mark.parametrize("keys", [[INPUT_OUTPUT_GRADIENTS],
                                  [OUTPUT_LAYER_VALUES, CONVOLUTION_LAYER_VALUES]])
def test_any_other_key_is_refused_before_fn_runs(keys, x):
    fn = Counted()
    with pytest.raises(salience.blackbox.ScoresOnlyError, match=str(keys[-1])):
        salience.blackbox.wrap(fn)(x, None, keys)
    assert fn.calls == 0


def test_targets_out_of_range_are_refused_before_fn_runs(x):
    fn = Counted()
    model = salience.blackbox.wrap(fn, n_outputs=4)
    with pytest.raises(ValueError, match=r"targets must be >= 0 and < 4 \(the model has 4 "
                                         r"outputs\), got 4"):
        salience.Occlusion(size=4, stride=4).explain(model, x, 4)
    with pytest.raises(ValueError, match="3 columns but the model has 4 outputs"):
        model(x, np.ones((2, 3)), [OUTPUT_LAYER_VALUES])
    assert fn.calls == 0
    unknown = Counted()  # n_outputs not given: learnt from one row, before the batch runs
    with pytest.raises(ValueError, match="< 4 .* got 9"):
        salience.blackbox.wrap(unknown)(x, np.array([9, 0]), [OUTPUT_LAYER_VALUES])
    assert unknown.calls == 1


def test_bad_results_get_clear_errors(x):
    with pytest.raises(ValueError, match=r"fn returned shape \(3, 4\) for a batch of 1"):
        salience.blackbox.wrap(lambda b: np.zeros((3, 4)))(x, None, [OUTPUT_LAYER_VALUES])
    with pytest.raises(ValueError, match="fn returned 4 outputs per row, but n_outputs=5"):
        salience.blackbox.wrap(Counted(), n_outputs=5).predict(x)
    with pytest.raises(TypeError, match="fn must be callable"):
        salience.blackbox.wrap("model.onnx")
    one = salience.blackbox.wrap(lambda b: b.reshape(len(b), -1).sum(axis=1))  # 1-D: one output
    assert one.predict(x).shape == (2, 1)


def test_explain_runs_the_score_methods_by_name():
    x = np.random.default_rng(2).normal(size=(2, 20, 20, 3))
    fn = Counted(shape=(20, 20, 3))
    model = salience.blackbox.wrap(fn, n_outputs=4)
    result = salience.explain(model, x, ["occlusion", "rise", "lime", "kernel_shap"],
                              batch_size=32)
    assert set(result.maps) == {"occlusion", "rise", "lime", "kernel_shap"}
    for maps in result.maps.values():
        assert maps.shape == x.shape and np.isfinite(maps).all()
    np.testing.assert_array_equal(result.targets, fn(x).argmax(axis=1))


# ------------------------------------------------------------------ ONNX Runtime

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """A small torch CNN and an ONNX Runtime session of it (exported to a temp file)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # torch.onnx.export writes through it
    import warnings

    import salience.torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 5)).eval()
    with torch.no_grad():
        net[-1].weight.mul_(50)  # scores that vary enough for LIME's Lasso to keep terms
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return net, salience.torch.wrap(net), session


def test_onnx_session_is_read_for_layout_dtype_and_outputs(onnx_pair):
    _, _, session = onnx_pair
    model = salience.blackbox.wrap(session)
    assert model.channels_last is False and model.expected_channels == 3
    assert model.n_outputs == 5 and model.dtype == np.float32
    with pytest.raises(ValueError, match="the input looks channels-last"):
        model.predict(np.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("method", [
    salience.Occlusion(size=4, stride=2, batch_size=16),
    salience.RISE(n_masks=64, grid_size=4, seed=0, batch_size=16),
    salience.LIME(n_samples=64, n_segments=8, seed=0, batch_size=16),
    salience.KernelSHAP(n_samples=64, n_segments=8, seed=0, batch_size=16),
], ids=lambda m: type(m).__name__)
def test_onnx_session_maps_equal_the_torch_models(method, onnx_pair):
    _, torch_model, session = onnx_pair
    x = np.random.default_rng(0).uniform(size=(2, 3, 16, 16)).astype(np.float32)
    by_onnx = method.explain(salience.blackbox.wrap(session), x)
    by_torch = method.explain(torch_model, x)
    assert by_onnx.shape == x.shape and np.abs(by_torch).max() > 0
    np.testing.assert_allclose(by_onnx, by_torch, rtol=0, atol=1e-4 * np.abs(by_torch).max())


def test_onnx_session_through_a_plain_function(onnx_pair):
    net, _, session = onnx_pair
    model = salience.blackbox.wrap(lambda b: session.run(None, {"image": b})[0], n_outputs=5,
                                   channels_last=False, dtype=np.float32)
    x = np.random.default_rng(3).uniform(size=(3, 3, 16, 16))
    with torch.no_grad():
        expected = net(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(salience.blackbox.ScoresOnlyError):
        salience.Gradients().explain(model, x)
