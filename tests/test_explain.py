"""salience.explain: the same maps as the methods called directly, predictions, counts."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience.methods import GradCAM, Gradients, IntegratedGradients
from salience.runner import Explanation, resolve_methods

torch = pytest.importorskip("torch")


def tiny_net(in_channels=3, n_classes=5, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, n_classes),
    ).eval()


@pytest.fixture
def batch():
    return np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)


def test_maps_equal_methods_called_directly(batch):
    model = salience.torch.wrap(tiny_net(), layer="0")
    result = salience.explain(
        model, batch, ["gradients", "integrated_gradients", "gradcam"], batch_size=4
    )
    top = np.argmax(model.predict(batch), axis=1)
    np.testing.assert_array_equal(result.targets, top)
    np.testing.assert_allclose(
        result.maps["gradients"], Gradients().explain(model, batch, top), rtol=1e-6
    )
    np.testing.assert_allclose(
        result.maps["integrated_gradients"],
        IntegratedGradients(steps=25).explain(model, batch, top),
        rtol=1e-5, atol=1e-7,
    )
    np.testing.assert_allclose(result.maps["gradcam"], GradCAM().explain(model, batch, top),
                               rtol=1e-6, atol=1e-7)


def test_predictions_probabilities_and_top(batch):
    model = salience.torch.wrap(tiny_net())
    result = salience.explain(model, batch, ["gradients"])
    logits = model.predict(batch)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-6)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    top = result.top(3)
    assert len(top) == 3 and all(len(row) == 3 for row in top)
    for row, probs in zip(top, result.probabilities):
        assert [c for c, _ in row] == list(np.argsort(-probs)[:3])
        assert row[0][1] >= row[1][1] >= row[2][1]


def test_rows_calls_and_timings_are_counted(model_classes, images):
    analytic_cls, _ = model_classes
    model = analytic_cls()
    result = salience.explain(model, images, ["gradients", "integrated_gradients"],
                              batch_size=32)
    assert result.rows == {"gradients": 3, "integrated_gradients": 75}
    assert result.calls == {"gradients": 1, "integrated_gradients": 3}
    assert set(result.seconds) == {"predict", "gradients", "integrated_gradients"}
    assert all(s >= 0 for s in result.seconds.values())
    # the methods' rows are all the model saw (its predict() does not go through __call__)
    assert model.rows == 3 + 75


def test_explicit_targets_are_used(model_classes, images):
    analytic_cls, _ = model_classes
    model = analytic_cls()
    result = salience.explain(model, images, ["gradients"], targets=[2, 0, 1])
    np.testing.assert_array_equal(result.targets, [2, 0, 1])
    np.testing.assert_allclose(result.maps["gradients"], model.gradient(images, [2, 0, 1]),
                               rtol=1e-5)


def test_image_groups_do_not_change_maps(model_classes, images):
    analytic_cls, _ = model_classes
    seen = []
    whole = salience.explain(analytic_cls(), images, ["integrated_gradients"])
    grouped = salience.explain(
        analytic_cls(), images, ["integrated_gradients"], group_size=1,
        progress=seen.append,
    )
    np.testing.assert_allclose(grouped.maps["integrated_gradients"],
                               whole.maps["integrated_gradients"], rtol=1e-6)
    ends = {(e.images, e.completed) for e in seen
            if e.method == "integrated_gradients" and e.completed == e.images.stop}
    assert sorted(ends, key=lambda end: end[1]) == [(range(0, 1), 1), (range(1, 2), 2),
                                                     (range(2, 3), 3)]


def test_method_instances_and_mapping(model_classes, images):
    analytic_cls, _ = model_classes
    result = salience.explain(analytic_cls(), images,
                              {"ig10": IntegratedGradients(steps=10), "g": Gradients()})
    assert list(result.maps) == ["ig10", "g"]
    assert result.rows["ig10"] == 30
    result = salience.explain(analytic_cls(), images, [Gradients(), Gradients()])
    assert list(result.maps) == ["gradients", "gradients_2"]


def test_nn_module_is_wrapped_with_its_last_conv(batch):
    net = tiny_net()
    result = salience.explain(net, batch, ["gradcam"])
    expected = GradCAM().explain(salience.torch.wrap(net, layer="0"), batch,
                                 np.argmax(result.logits, axis=1))
    np.testing.assert_allclose(result.maps["gradcam"], expected, rtol=1e-6, atol=1e-7)


def test_failing_method_is_collected_or_raised(model_classes, images):
    analytic_cls, _ = model_classes

    class Broken(Gradients):
        name = "broken"

        def _explain(self, model, x, targets):
            raise RuntimeError("boom")

    methods = {"broken": Broken(), "gradients": Gradients()}
    result = salience.explain(analytic_cls(), images, methods, errors="collect")
    assert "boom" in result.errors["broken"]
    assert "broken" not in result.maps and "gradients" in result.maps
    with pytest.raises(RuntimeError, match="boom"):
        salience.explain(analytic_cls(), images, methods)


def test_unknown_method_lists_the_valid_ones(model_classes, images):
    analytic_cls, _ = model_classes
    with pytest.raises(ValueError, match="valid methods: gradients, smoothgrad"):
        salience.explain(analytic_cls(), images, ["gradients", "magic"])
    with pytest.raises(ValueError, match="methods is empty"):
        resolve_methods([])
    with pytest.raises(ValueError, match="errors must be"):
        salience.explain(analytic_cls(), images, ["gradients"], errors="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        salience.explain(analytic_cls(), images, ["gradients"], batch_size=0)


def test_methods_by_alias_are_built_with_the_batch_size():
    resolved = resolve_methods(["IG", "Grad-CAM", "vanilla"], batch_size=7)
    assert list(resolved) == ["integrated_gradients", "gradcam", "gradients"]
    assert all(m.batch_size == 7 for m in resolved.values())


def test_model_without_predict_has_no_probabilities(model_classes, images):
    analytic_cls, _ = model_classes
    model = analytic_cls()

    def plain(x, targets, keys):
        return model(x, targets, keys)

    result = salience.explain(plain, images, ["gradients"], targets=1)
    assert isinstance(result, Explanation)
    assert result.logits is None and result.probabilities is None and result.top() == []
    np.testing.assert_array_equal(result.targets, [1, 1, 1])
