"""The registry: one entry per method, read by explain, the CLI and the report."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import salience
from salience import registry
from salience.methods import Method
from salience.model import OUTPUT_LAYER_VALUES


def test_every_exported_method_has_one_entry():
    exported = {getattr(salience, n) for n in salience.__all__}
    classes = {c for c in exported if inspect.isclass(c) and issubclass(c, Method)
               and c is not Method}
    assert classes == {e.cls for e in registry.METHODS.values()}


@pytest.mark.parametrize("name", registry.names())
def test_each_entry_builds_its_class_with_the_batch_size(name):
    entry = registry.get(name)
    method = entry.build(batch_size=7)
    assert type(method) is entry.cls
    inner = getattr(method, "method", method)  # a wrapper passes it to what it wraps
    assert inner.batch_size == 7
    assert entry.family in registry.FAMILIES
    assert entry.description.endswith(".") and len(entry.description) < 200


def test_aliases_and_spellings():
    assert registry.canonical_name("IG") == "integrated_gradients"
    assert registry.canonical_name("Grad-CAM") == "gradcam"
    assert registry.canonical_name(" Blur IG ") == "blur_ig"
    assert registry.get("vanilla").name == "gradients"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(registry.UnknownMethodError, match="valid methods: gradients, "):
        registry.get("magic")
    with pytest.raises(TypeError, match="must be a str"):
        registry.get(3)


def test_what_each_method_needs_from_the_model():
    assert registry.get("gradcam").needs_layer
    assert not registry.get("gradients").needs_layer
    assert registry.get("occlusion").keys == {OUTPUT_LAYER_VALUES}
    assert not registry.get("occlusion").needs_gradients
    assert registry.get("guided_backprop").needs_gradients
    assert registry.get("xrai").regions and not registry.get("gradcam").regions


def test_defaults_are_registered():
    assert all(name in registry.METHODS for name in registry.DEFAULT_METHODS)


def test_build_takes_overrides():
    ig = registry.build("ig", batch_size=3, steps=4)
    assert ig.steps == 4 and ig.batch_size == 3
    assert np.isclose(registry.build("smoothgrad", nsamples=2).nsamples, 2)


def test_the_new_methods_say_what_they_need():
    for name in ("gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam",
                 "scorecam", "guided_gradcam"):
        assert registry.get(name).needs_layer and registry.get(name).family == "cam"
    assert registry.get("eigencam").keys == {salience.CONVOLUTION_LAYER_VALUES}
    assert not registry.get("input_x_gradient").needs_layer
    assert registry.score_only_names() == ["occlusion", "rise", "lime", "kernel_shap"]
    assert registry.canonical_name("Grad-CAM++") == "gradcam_plus_plus"
    assert registry.canonical_name("SHAP") == "kernel_shap"


def test_vargrad_and_squaregrad_are_smoothgrad_aggregations_of_gradients(analytic, images):
    for name in ("vargrad", "squaregrad"):
        entry = registry.get(name)
        assert entry.wraps == "gradients" and not entry.signed and entry.family == "gradient"
        method = entry.build(batch_size=4)
        assert method.aggregation == name and isinstance(method.method, salience.Gradients)
    assert registry.canonical_name("VarGrad") == "vargrad"
    assert registry.canonical_name("Square-Grad") == "squaregrad"
    maps = salience.explain(analytic, images, ["vargrad", "squaregrad", "smoothgrad"], 0).maps
    expected = salience.SmoothGrad(salience.Gradients(), nsamples=25, seed=0,
                                   aggregation="vargrad").explain(analytic, images, 0)
    np.testing.assert_array_equal(maps["vargrad"], expected)
    # PAIR's SmoothGrad squares (magnitude=True): the same map as SquareGrad
    np.testing.assert_array_equal(maps["squaregrad"], maps["smoothgrad"])
