"""salience.core against the installed reference saliency.core 0.2.1 on identical inputs."""

from __future__ import annotations

import numpy as np
import pytest
import saliency.core as pair

import salience.core as ours
from salience.model import CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS

RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL):
    """Within ``rtol`` relative to the map's scale (PAIR accumulates in float32)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.fixture
def image():
    return np.random.default_rng(4).normal(size=(8, 8, 3))


@pytest.fixture
def call(analytic):
    return analytic.call_model_function(1)


def both(name, method, *args, **kwargs):
    """Run the same method with the same arguments on both libraries."""
    return (
        getattr(getattr(ours, name)(), method)(*args, **kwargs),
        getattr(getattr(pair, name)(), method)(*args, **kwargs),
    )


def test_gradients(image, call):
    assert_close(*both("GradientSaliency", "GetMask", image, call))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [1, 3, 25, 100])
@pytest.mark.parametrize("baseline", [None, "constant", "random"])
def test_integrated_gradients(dtype, batch_size, baseline, image, call):
    x = image.astype(dtype)
    x_baseline = {
        None: None,
        "constant": np.full_like(x, 0.4),
        "random": np.random.default_rng(0).normal(size=x.shape).astype(dtype),
    }[baseline]
    assert_close(
        *both("IntegratedGradients", "GetMask", x, call, x_baseline=x_baseline, x_steps=25,
              batch_size=batch_size)
    )


def test_integrated_gradients_counts_calls_like_pair(image, analytic):
    ours.IntegratedGradients().GetMask(image, analytic.call_model_function(0), x_steps=10,
                                       batch_size=4)
    assert analytic.calls == 3 and analytic.rows == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sqrt=False, batch_size=1),
        dict(sqrt=False, batch_size=4),
        dict(sqrt=True, batch_size=1),
        dict(sqrt=False, batch_size=7, max_sigma=5, grad_step=0.05),
    ],
)
def test_blur_ig(kwargs, image, call):
    assert_close(*both("BlurIG", "GetMask", image, call, steps=20, **kwargs))


def test_blur_ig_default_parameters(image, call):
    assert_close(*both("BlurIG", "GetMask", image, call))


@pytest.mark.parametrize("batch_size", [2, 4, 20])
def test_blur_ig_sqrt_batched_is_right_where_pair_is_wrong(batch_size, image, call):
    kwargs = dict(steps=20, sqrt=True)
    mine, reference = both("BlurIG", "GetMask", image, call, batch_size=batch_size, **kwargs)
    one_at_a_time = ours.BlurIG().GetMask(image, call, batch_size=1, **kwargs)
    assert_close(mine, one_at_a_time, rtol=1e-9)
    assert_close(one_at_a_time, pair.BlurIG().GetMask(image, call, batch_size=1, **kwargs))
    assert not np.allclose(reference, one_at_a_time, rtol=1e-3)  # PAIR's step-weight bug


@pytest.mark.parametrize("size, value", [(3, 0), (5, -0.5), (8, 1.0)])
def test_occlusion(size, value, image, call):
    assert_close(*both("Occlusion", "GetMask", image, call, size=size, value=value))


def test_occlusion_default_size(call, model_classes):
    analytic_cls, _ = model_classes
    model = analytic_cls(shape=(17, 16, 3))
    x = np.random.default_rng(0).normal(size=(17, 16, 3))
    assert_close(*both("Occlusion", "GetMask", x, model.call_model_function(2)))


def test_occlusion_two_dimensional(model_classes):
    analytic_cls, _ = model_classes
    model = analytic_cls(shape=(8, 8))
    x = np.random.default_rng(0).normal(size=(8, 8))
    assert_close(*both("Occlusion", "GetMask", x, model.call_model_function(0), size=3))


def pooled_layer_call(x_value_batch, call_model_args=None, expected_keys=None):
    """A PAIR callback whose 'layer' is a 2x2-pooled, mixed copy of the image (h/2, w/2, 5)."""
    n, height, width, c = x_value_batch.shape
    mix = np.random.default_rng(3).normal(size=(c, 5))
    pooled = x_value_batch.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))
    values = np.tanh(pooled @ mix)
    weights = np.random.default_rng(call_model_args or 0).normal(size=5)
    return {
        CONVOLUTION_LAYER_VALUES: values,
        CONVOLUTION_OUTPUT_GRADIENTS: values**2 * weights + weights,
    }


@pytest.mark.parametrize("should_resize", [True, False])
@pytest.mark.parametrize("three_dims", [True, False])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_grad_cam(should_resize, three_dims, target):
    x = np.random.default_rng(target).normal(size=(12, 10, 3))
    assert_close(
        *both("GradCam", "GetMask", x, pooled_layer_call, target,
              should_resize=should_resize, three_dims=three_dims)
    )


# ------------------------------------------------------------- SmoothGrad


SMOOTHED = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", dict(x_steps=5, batch_size=4)),
    ("IntegratedGradients", dict(x_steps=4, x_baseline=np.full((8, 8, 3), 0.3))),
    ("BlurIG", dict(steps=6, max_sigma=4, batch_size=1)),
    ("BlurIG", dict(steps=6, max_sigma=4, batch_size=3)),
    ("Occlusion", dict(size=4)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("magnitude", [True, False])
@pytest.mark.parametrize("name, kwargs", SMOOTHED, ids=[n for n, _ in SMOOTHED])
def test_smoothed_mask_same_noise_after_seed(name, kwargs, magnitude, dtype, image, call):
    results = []
    for lib in (ours, pair):
        np.random.seed(123)
        results.append(
            getattr(lib, name)().GetSmoothedMask(image.astype(dtype), call, nsamples=5,
                                                 stdev_spread=0.2, magnitude=magnitude, **kwargs)
        )
        results.append(np.random.random())  # the global state advanced alike
    assert_close(results[0], results[2])
    assert results[1] == results[3]


def test_smoothed_grad_cam_same_noise_after_seed():
    x = np.random.default_rng(0).normal(size=(12, 10, 3))
    results = []
    for lib in (ours, pair):
        np.random.seed(5)
        results.append(lib.GradCam().GetSmoothedMask(x, pooled_layer_call, 2, nsamples=4))
    assert_close(*results)


def test_smoothed_grad_cam_without_three_dims():
    # PAIR cannot add a 2-D map into its 3-D total here; we return the smoothed 2-D map
    x = np.random.default_rng(0).normal(size=(12, 10, 3))
    np.random.seed(5)
    flat = ours.GradCam().GetSmoothedMask(x, pooled_layer_call, 2, nsamples=4, three_dims=False)
    np.random.seed(5)
    wide = ours.GradCam().GetSmoothedMask(x, pooled_layer_call, 2, nsamples=4)
    assert flat.shape == (12, 10)
    for c in range(3):
        np.testing.assert_array_equal(wide[..., c], flat)


def _get_mask_body(self, x_value, call_model_function, call_model_args=None, scale=1.0):
    """A user's own method: input times gradient (uses only the PAIR callback)."""
    self.calls += 1
    out = call_model_function(x_value[None], call_model_args, [pair.INPUT_OUTPUT_GRADIENTS])
    return scale * x_value * out[pair.INPUT_OUTPUT_GRADIENTS][0]


@pytest.mark.parametrize("magnitude", [True, False])
def test_user_subclass_with_only_get_mask(magnitude, image, call):
    results, counters = [], []
    for base in (ours.CoreSaliency, pair.CoreSaliency):
        cls = type("InputTimesGradient", (base,), {"GetMask": _get_mask_body, "calls": 0})
        method = cls()
        np.random.seed(9)
        results.append(method.GetSmoothedMask(image, call, None, 0.1, 7, magnitude, scale=2.0))
        counters.append(method.calls)
    assert counters == [7, 7]
    assert_close(*results)


def test_user_override_of_a_builtin_get_mask_is_respected(image, call):
    class Doubled(ours.GradientSaliency):
        calls = 0

        def GetMask(self, x_value, call_model_function, call_model_args=None):
            self.calls += 1
            return 2 * super().GetMask(x_value, call_model_function, call_model_args)

    method = Doubled()
    np.random.seed(1)
    smoothed = method.GetSmoothedMask(image, call, nsamples=3, magnitude=False)
    assert method.calls == 3
    np.random.seed(1)
    plain = ours.GradientSaliency().GetSmoothedMask(image, call, nsamples=3, magnitude=False)
    assert_close(smoothed, 2 * plain, rtol=1e-6)


def test_core_saliency_get_mask_is_abstract(image, call):
    with pytest.raises(NotImplementedError):
        ours.CoreSaliency().GetMask(image, call)


def test_constants_and_names_are_exported():
    for name in ["CONVOLUTION_LAYER_VALUES", "CONVOLUTION_OUTPUT_GRADIENTS",
                 "INPUT_OUTPUT_GRADIENTS", "OUTPUT_LAYER_VALUES"]:
        assert getattr(ours, name) == getattr(pair, name)
    for key, text in pair.SHAPE_ERROR_MESSAGE.items():
        assert ours.SHAPE_ERROR_MESSAGE[key] == text
    for name in ["CoreSaliency", "GradientSaliency", "IntegratedGradients", "BlurIG",
                 "Occlusion", "GradCam", "VisualizeImageGrayscale", "VisualizeImageDiverging"]:
        assert hasattr(ours, name)


# ------------------------------------------------------------- visualisers


@pytest.mark.parametrize("percentile", [99, 90, 100])
@pytest.mark.parametrize("name", ["VisualizeImageGrayscale", "VisualizeImageDiverging"])
def test_visualisers_equal_pair_on_ordinary_maps(name, percentile):
    attribution = np.random.default_rng(percentile).normal(size=(9, 7, 3))
    mine = getattr(ours, name)(attribution, percentile=percentile)
    reference = getattr(pair, name)(attribution, percentile=percentile)
    np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["VisualizeImageGrayscale", "VisualizeImageDiverging"])
@pytest.mark.parametrize("constant", [0.0, 2.5])
def test_visualisers_on_constant_maps_give_zeros_not_nan(name, constant):
    attribution = np.full((6, 5, 3), constant)
    mine = getattr(ours, name)(attribution)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = getattr(pair, name)(attribution)
    assert mine.shape == reference.shape == (6, 5)
    assert np.isfinite(mine).all()
    if np.isnan(reference).any():
        np.testing.assert_array_equal(mine, 0)  # where PAIR divides 0 by 0
    else:
        np.testing.assert_array_equal(mine, reference)
    if name == "VisualizeImageGrayscale":
        np.testing.assert_array_equal(mine, 0)


def test_format_and_check_helper_gives_pairs_errors():
    bad = {pair.INPUT_OUTPUT_GRADIENTS: np.zeros((2, 3))}
    messages = []
    for lib in (ours, pair):
        with pytest.raises(ValueError) as info:
            lib.CoreSaliency().format_and_check_call_model_output(dict(bad), (2, 4),
                                                                  [pair.INPUT_OUTPUT_GRADIENTS])
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    good = {pair.OUTPUT_LAYER_VALUES: [1.0, 2.0]}
    ours.CoreSaliency().format_and_check_call_model_output(good, (2, 4),
                                                           [pair.OUTPUT_LAYER_VALUES])
    assert isinstance(good[pair.OUTPUT_LAYER_VALUES], np.ndarray)


@pytest.mark.parametrize(
    "name", ["GradientSaliency", "IntegratedGradients", "BlurIG", "Occlusion", "GradCam",
             "CoreSaliency"]
)
@pytest.mark.parametrize("method", ["GetMask", "GetSmoothedMask"])
def test_signatures_and_defaults_are_pairs(name, method):
    import inspect

    mine = inspect.signature(getattr(getattr(ours, name), method)).parameters
    reference = inspect.signature(getattr(getattr(pair, name), method)).parameters
    for param, spec in reference.items():
        assert param in mine, f"{name}.{method} lacks {param}"
        assert mine[param].default == spec.default, f"{name}.{method}({param}=...)"
        assert mine[param].kind == spec.kind
    assert list(mine)[: len(reference)] == list(reference)  # same order for positional use


def test_batch_first_defaults_are_the_references():
    import salience

    assert salience.IntegratedGradients().steps == 25
    blur = salience.BlurIG()
    assert (blur.max_sigma, blur.steps, blur.grad_step, blur.sqrt) == (50, 100, 0.01, False)
    occlusion = salience.Occlusion()
    assert (occlusion.size, occlusion.value, occlusion.stride) == (15, 0, 1)
    smooth = salience.SmoothGrad(salience.Gradients())
    assert (smooth.nsamples, smooth.stdev_spread, smooth.magnitude) == (25, 0.15, True)
    assert salience.GradCAM().resize is True
