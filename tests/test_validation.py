"""Every bad input of the issue gets a clear error before the model runs; dtypes; no mutation."""

from __future__ import annotations

import numpy as np
import pytest

import salience
import salience.core as core
from salience.model import INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES


@pytest.fixture
def model(model_classes):
    """An analytic model that also counts predict() calls (the model runs there too)."""
    analytic_cls, _ = model_classes

    class Counting(analytic_cls):
        predicts = 0

        def predict(self, x):
            self.predicts += 1
            return super().predict(x)

    return Counting()


def _ran(model):
    return model.calls + model.predicts


ALL_METHODS = [
    salience.Gradients(),
    salience.SmoothGrad(salience.Gradients(), nsamples=2, seed=0),
    salience.SmoothGrad(salience.Gradients(), nsamples=2, seed=0, aggregation="vargrad"),
    salience.IntegratedGradients(steps=3),
    salience.BlurIG(max_sigma=2, steps=3),
    salience.Occlusion(size=3),
    salience.GradCAM(),
    salience.InputXGradient(),
    salience.GradCAMPlusPlus(),
    salience.XGradCAM(),
    salience.HiResCAM(),
    salience.LayerCAM(),
    salience.EigenCAM(),
    salience.ScoreCAM(batch_size=8),
    salience.RISE(n_masks=20, grid_size=2, seed=0),
    salience.LIME(n_samples=20, n_segments=4, seed=0),
    salience.KernelSHAP(n_samples=20, n_segments=4, seed=0),
]
IDS = [type(m).__name__ for m in ALL_METHODS]


def _x(n=2):
    return np.random.default_rng(0).normal(size=(n, 8, 8, 3))


# Guided Grad-CAM needs guided gradients, which the analytic model does not give: it
# joins the checks that must stop before any model call.
BEFORE_ANY_CALL = [*ALL_METHODS, salience.GuidedGradCAM()]
BEFORE_ANY_CALL_IDS = [*IDS, "GuidedGradCAM"]


@pytest.mark.parametrize("method", BEFORE_ANY_CALL, ids=BEFORE_ANY_CALL_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("targets", [None, 0])
def test_non_finite_input(method, bad, targets, model):
    x = _x()
    x[1, 2, 3, 1] = bad
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(1, 2, 3, 1\)"):
        method.explain(model, x, targets)
    assert _ran(model) == 0


@pytest.mark.parametrize("method", BEFORE_ANY_CALL, ids=BEFORE_ANY_CALL_IDS)
def test_empty_batch(method, model):
    with pytest.raises(ValueError, match=r"x is an empty batch \(shape \(0, 8, 8, 3\)\)"):
        method.explain(model, np.zeros((0, 8, 8, 3)), 0)
    assert _ran(model) == 0


def test_unbatched_input_is_rejected(model):
    with pytest.raises(ValueError, match=r"x must be a batch.*got shape \(5,\)"):
        salience.Gradients().explain(model, np.zeros(5))
    assert _ran(model) == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("targets", [None, 1])
@pytest.mark.parametrize("form", ["scalar", "shared", "per-row", "callable", "in-list"])
def test_non_finite_baseline(bad, targets, form, model):
    x = _x()
    shared = np.zeros(x.shape[1:])
    shared[0, 0, 0] = bad
    per_row = np.zeros(x.shape)
    per_row[1, 4, 4, 2] = bad
    spec = {
        "scalar": bad,
        "shared": shared,
        "per-row": per_row,
        "callable": lambda batch: per_row,
        "in-list": [None, shared],
    }[form]
    with pytest.raises(ValueError, match="baseline contains NaN or inf"):
        salience.IntegratedGradients(baseline=spec).explain(model, x, targets)
    assert _ran(model) == 0


@pytest.mark.parametrize("targets", [None, 1])
@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (3, 8, 8, 3), (1, 8, 8, 3)])
def test_baseline_of_wrong_shape(shape, targets, model):
    with pytest.raises(ValueError, match=rf"baseline has shape \({shape[0]}, 8.*expected"):
        salience.IntegratedGradients(baseline=np.zeros(shape)).explain(model, _x(), targets)
    assert _ran(model) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda v: salience.IntegratedGradients(steps=v),
        lambda v: salience.IntegratedGradients(batch_size=v),
        lambda v: salience.BlurIG(steps=v),
        lambda v: salience.BlurIG(batch_size=v),
        lambda v: salience.SmoothGrad(salience.Gradients(), nsamples=v),
        lambda v: salience.Gradients(batch_size=v),
        lambda v: salience.Occlusion(batch_size=v),
        lambda v: salience.GradCAM(batch_size=v),
        lambda v: salience.InputXGradient(batch_size=v),
        lambda v: salience.GradCAMPlusPlus(batch_size=v),
        lambda v: salience.XGradCAM(batch_size=v),
        lambda v: salience.HiResCAM(batch_size=v),
        lambda v: salience.LayerCAM(batch_size=v),
        lambda v: salience.EigenCAM(batch_size=v),
        lambda v: salience.ScoreCAM(batch_size=v),
        lambda v: salience.GuidedGradCAM(batch_size=v),
        lambda v: salience.RISE(n_masks=v),
        lambda v: salience.RISE(grid_size=v),
        lambda v: salience.RISE(batch_size=v),
        lambda v: salience.LIME(n_samples=v),
        lambda v: salience.LIME(n_segments=v),
        lambda v: salience.LIME(max_sweeps=v),
        lambda v: salience.LIME(batch_size=v),
        lambda v: salience.KernelSHAP(n_samples=v),
        lambda v: salience.KernelSHAP(n_segments=v),
        lambda v: salience.KernelSHAP(batch_size=v),
    ],
)
@pytest.mark.parametrize("value", [0, -3])
def test_counts_must_be_positive(make, value):
    with pytest.raises(ValueError, match=rf"(steps|nsamples|batch_size|n_masks|grid_size|"
                                         rf"n_samples|n_segments|max_sweeps) must be a positive "
                                         rf"int, got {value}"):
        make(value)


@pytest.mark.parametrize("value", [2.0, "3", None, True])
def test_counts_must_be_ints(value):
    with pytest.raises(TypeError, match="steps must be a positive int"):
        salience.IntegratedGradients(steps=value)


@pytest.mark.parametrize("value", [-0.01, -1, float("nan"), float("inf")])
def test_stdev_spread_must_be_nonnegative(value):
    with pytest.raises(ValueError, match="stdev_spread must be a finite number >= 0"):
        salience.SmoothGrad(salience.Gradients(), stdev_spread=value)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, f: core.IntegratedGradients().GetMask(x, f, x_steps=0),
        lambda m, x, f: core.IntegratedGradients().GetMask(x, f, batch_size=0),
        lambda m, x, f: core.BlurIG().GetMask(x, f, steps=-1),
        lambda m, x, f: core.GradientSaliency().GetSmoothedMask(x, f, nsamples=0),
        lambda m, x, f: core.GradientSaliency().GetSmoothedMask(x, f, stdev_spread=-0.1),
        lambda m, x, f: core.Occlusion().GetMask(x, f, size=0),
        lambda m, x, f: core.IntegratedGradients().GetMask(x, f, x_baseline=np.zeros((8, 8))),
        lambda m, x, f: core.IntegratedGradients().GetMask(x * np.nan, f),
    ],
)
def test_facade_checks_before_the_callback_runs(call, model):
    with pytest.raises(ValueError):
        call(model, _x(1)[0], model.call_model_function(0))
    assert _ran(model) == 0


@pytest.mark.parametrize("method", ALL_METHODS, ids=IDS)
@pytest.mark.parametrize(
    "targets, match",
    [
        ([0, 1, 2], "targets has 3 entries but the batch x has 2 inputs"),
        (np.array([1]), "targets has 1 entries but the batch x has 2 inputs"),
        (np.eye(3)[:1], "targets has 1 entries but the batch x has 2 inputs"),
    ],
)
def test_targets_count_must_match_batch(method, targets, match, model):
    with pytest.raises(ValueError, match=match):
        method.explain(model, _x(), targets)
    assert _ran(model) == 0


@pytest.mark.parametrize(
    "targets, error, match",
    [
        ([-1, 0], ValueError, "targets must be >= 0, got -1"),
        ([0.5, 1.0], TypeError, "targets must be class indices"),
        (True, TypeError, "targets must be an int"),
        ("cat", TypeError, "targets must be None, an int"),
        (np.zeros((2, 3, 1)), TypeError, r"targets must be None.*shape \(2, 3, 1\)"),
        (np.array([[0.0, np.nan], [1, 0]]), ValueError, "targets contains NaN or inf"),
    ],
)
def test_bad_targets(targets, error, match, model):
    with pytest.raises(error, match=match):
        salience.Gradients().explain(model, _x(), targets)
    assert _ran(model) == 0


def _callback(outputs):
    def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
        return outputs(x_value_batch)

    return call_model_function


@pytest.mark.parametrize(
    "get_mask",
    [
        lambda f, x: core.GradientSaliency().GetMask(x, f),
        lambda f, x: core.IntegratedGradients().GetMask(x, f, x_steps=3),
        lambda f, x: core.BlurIG().GetMask(x, f, steps=3),
    ],
)
def test_callback_missing_a_key(get_mask):
    f = _callback(lambda b: {OUTPUT_LAYER_VALUES: np.zeros(len(b))})
    with pytest.raises(ValueError, match="no key 'INPUT_OUTPUT_GRADIENTS'"):
        get_mask(f, _x(1)[0])


@pytest.mark.parametrize(
    "get_mask",
    [
        lambda f, x: core.GradientSaliency().GetMask(x, f),
        lambda f, x: core.IntegratedGradients().GetMask(x, f, x_steps=3, batch_size=2),
        lambda f, x: core.BlurIG().GetMask(x, f, steps=3, batch_size=3),
    ],
)
def test_callback_gradient_of_wrong_shape(get_mask):
    f = _callback(lambda b: {INPUT_OUTPUT_GRADIENTS: np.zeros((len(b), 8, 8))})
    with pytest.raises(ValueError, match="Expected key INPUT_OUTPUT_GRADIENTS to be the same "
                                         r"shape as input x_value_batch - expected \(\d, 8, 8, 3\), "
                                         r"actual \(\d, 8, 8\)"):
        get_mask(f, _x(1)[0])


def test_callback_scores_of_wrong_length():
    f = _callback(lambda b: {OUTPUT_LAYER_VALUES: np.zeros(len(b) + 1)})
    with pytest.raises(ValueError, match=r"OUTPUT_LAYER_VALUES to be the same as x_value_batch - expected (\d+), actual (\d+)"):
        core.Occlusion().GetMask(_x(1)[0], f, size=3)


def test_model_returning_a_non_dict():
    with pytest.raises(TypeError, match="must return a dict of outputs, got list"):
        salience.Gradients().explain(lambda x, t, k: [1, 2], _x())


# ---------------------------------------------------------------- dtypes


def test_uint8_input_does_not_wrap_around(model_classes):
    _, linear_cls = model_classes
    linear = linear_cls()
    x8 = np.full((1, 8, 8, 3), 250, dtype=np.uint8)
    x8[0, :4] = 5
    maps = salience.IntegratedGradients(steps=4, baseline=255.0).explain(linear, x8, 0)
    # (x - baseline) must be -5 and -250, never 251 or 6 from uint8 arithmetic
    np.testing.assert_allclose(maps, (x8.astype(np.float64) - 255.0) * linear.V[0], rtol=1e-5)
    assert maps.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float16, bool])
@pytest.mark.parametrize("method", ALL_METHODS, ids=IDS)
def test_integer_and_half_inputs_are_converted(dtype, method, model):
    x = np.random.default_rng(0).integers(0, 200, size=(2, 8, 8, 3)).astype(dtype)
    seen = []
    original = type(model).__call__

    def spy(self, batch, targets, keys):
        seen.append(batch.dtype)
        return original(self, batch, targets, keys)

    type(model).__call__ = spy
    maps = method.explain(model, x, 1)
    assert set(seen) == {np.dtype(np.float32)}
    reference = method.explain(model, x.astype(np.float32), 1)
    np.testing.assert_array_equal(maps, reference)
    assert np.isfinite(maps).all()


def test_smoothgrad_noise_on_uint8_is_scaled_by_the_real_range(model_classes):
    _, linear_cls = model_classes
    x = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    x[0, 0, 0, 0] = 200  # value range 200
    seen = []

    def model(batch, targets, keys):
        seen.append(batch.copy())
        return {INPUT_OUTPUT_GRADIENTS: np.zeros_like(batch)}

    salience.SmoothGrad(salience.Gradients(), nsamples=50, stdev_spread=0.1, seed=0).explain(
        model, x, 0
    )
    noise = seen[0] - x.astype(np.float32)
    assert 15 < noise.std() < 25  # 0.1 * 200
    assert seen[0].min() < -30 and seen[0].max() < 300  # negative noise on 0 stays negative


# ---------------------------------------------------------------- no mutation


@pytest.mark.parametrize("method", ALL_METHODS, ids=IDS)
def test_inputs_are_never_modified(method, model):
    x = _x()
    x_before = x.copy()
    targets = np.array([1, 0])
    method.explain(model, x, targets)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(targets, [1, 0])


READ_ONLY_INPUT = [*ALL_METHODS, salience.GuidedIG(steps=3),
                   salience.SmoothGrad(salience.IntegratedGradients(steps=2), nsamples=2, seed=0),
                   salience.XRAI(steps=2, batch_size=4)]


@pytest.mark.parametrize("method", READ_ONLY_INPUT, ids=[type(m).__name__ for m in READ_ONLY_INPUT])
def test_methods_only_read_the_input_a_copying_model_lets_them_keep(method, model):
    # A model that copies its input (the torch and JAX adapters) spares the method its
    # own copy, so the method then works on the caller's array: it must only read it.
    x = _x()
    expected = method.explain(model, x.copy(), np.array([1, 0]))
    model.copies_input = True
    x.flags.writeable = False  # any write into it raises
    np.testing.assert_array_equal(method.explain(model, x, np.array([1, 0])), expected)


def test_baselines_are_never_modified(model):
    x = _x()
    shared, per_row = np.full(x.shape[1:], 0.5), np.full(x.shape, -0.5)
    s0, p0 = shared.copy(), per_row.copy()
    salience.IntegratedGradients(steps=3, baseline=[shared, per_row]).explain(model, x, 0)
    np.testing.assert_array_equal(shared, s0)
    np.testing.assert_array_equal(per_row, p0)


def test_a_model_writing_into_its_input_cannot_reach_the_callers_array():
    x = _x()
    before = x.copy()

    def vandal(batch, targets, keys):
        batch[...] = 0
        return {INPUT_OUTPUT_GRADIENTS: np.ones_like(batch)}

    salience.Gradients().explain(vandal, x)
    np.testing.assert_array_equal(x, before)


def test_facade_does_not_modify_inputs(model):
    x = _x(1)[0]
    base = np.full_like(x, 0.2)
    x0, b0 = x.copy(), base.copy()
    core.IntegratedGradients().GetMask(x, model.call_model_function(0), x_baseline=base, x_steps=3)
    core.Occlusion().GetMask(x, model.call_model_function(0), size=3)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(base, b0)


SPATIAL = [salience.BlurIG(), salience.Occlusion(), salience.GradCAM(), salience.GradCAMPlusPlus(),
           salience.XGradCAM(), salience.HiResCAM(), salience.LayerCAM(), salience.EigenCAM(),
           salience.ScoreCAM(), salience.GuidedGradCAM(), salience.RISE(), salience.LIME(),
           salience.KernelSHAP()]


@pytest.mark.parametrize("method", SPATIAL, ids=[type(m).__name__ for m in SPATIAL])
def test_spatial_methods_reject_non_images_before_predict(method, model):
    with pytest.raises(ValueError, match="needs images shaped"):
        method.explain(model, np.zeros((2, 4)))
    assert _ran(model) == 0


def test_occlusion_window_checked_before_predict(model):
    with pytest.raises(ValueError, match="size=15 is larger than the image"):
        salience.Occlusion().explain(model, _x())
    assert _ran(model) == 0


def test_facade_uint8_image_and_baseline_do_not_wrap_around(model_classes):
    _, linear_cls = model_classes
    linear = linear_cls()
    image = np.full((8, 8, 3), 10, dtype=np.uint8)
    white = np.full((8, 8, 3), 255, dtype=np.uint8)
    mask = core.IntegratedGradients().GetMask(image, linear.call_model_function(1),
                                              x_baseline=white, x_steps=3)
    np.testing.assert_allclose(mask, (10.0 - 255.0) * linear.V[1], rtol=1e-5)


# ---------------------------------------------------------------- new methods' parameters


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: salience.GradCAMPlusPlus(eps=-1e-6), ValueError, "eps must be a finite number"),
        (lambda: salience.XGradCAM(eps=float("nan")), ValueError, "eps must be a finite number"),
        (lambda: salience.ScoreCAM(resize=False, broadcast=True), ValueError,
         "broadcast=True needs resize=True"),
        (lambda: salience.RISE(p=0), ValueError, r"p must be in \(0, 1\], got 0.0"),
        (lambda: salience.RISE(p=1.5), ValueError, r"p must be in \(0, 1\], got 1.5"),
        (lambda: salience.RISE(baseline=float("inf")), ValueError, "baseline must be finite"),
        (lambda: salience.RISE(seed="x"), TypeError, "seed must be None, an int"),
        (lambda: salience.LIME(kernel_width=0), ValueError, "kernel_width must be > 0"),
        (lambda: salience.LIME(alpha=-0.1), ValueError, "alpha must be a finite number >= 0"),
        (lambda: salience.LIME(baseline=float("nan")), ValueError, "baseline must be finite"),
        (lambda: salience.LIME(feature_mask=np.zeros((8, 8))), ValueError,
         r"feature_mask must be an int array.*float64"),
        (lambda: salience.LIME(feature_mask=np.zeros(8, int)), ValueError,
         r"feature_mask must be an int array.*shape \(8,\)"),
        (lambda: salience.LIME(feature_mask=np.zeros((8, 8), int), coalitions=[[0, 2]]),
         ValueError, "coalitions must be a non-empty \\(n_samples, n_features\\) array of 0s"),
        (lambda: salience.LIME(coalitions=[[0, 1]]), ValueError, "coalitions need a feature_mask"),
        (lambda: salience.KernelSHAP(n_samples=1), ValueError, "n_samples must be >= 2"),
        (lambda: salience.KernelSHAP(feature_mask=np.zeros((8, 8), int),
                                     coalitions=[[1, 1], [0, 1]]),
         ValueError, "must include an all-ones row and an all-zeros row"),
    ],
)
def test_new_methods_check_their_parameters_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()


FOUR = np.repeat(np.arange(4), 16).reshape(8, 8)  # four features of an 8x8 image


@pytest.mark.parametrize(
    "method, match",
    [
        (salience.RISE(grid_size=9), "grid_size=9 is larger than the image"),
        (salience.LIME(feature_mask=np.zeros((8, 7), int)),
         r"feature_mask has shape \(8, 7\); expected the images' \(H, W\) = \(8, 8\)"),
        (salience.KernelSHAP(feature_mask=np.zeros((3, 8, 8), int)),
         r"feature_mask has shape \(3, 8, 8\).*one mask per image \(2, 8, 8\)"),
        (salience.LIME(feature_mask=FOUR, coalitions=np.eye(3, dtype=int)),
         "coalitions have 3 columns but feature_mask has 4 features"),
        (salience.KernelSHAP(feature_mask=np.stack([FOUR, FOUR // 2]),
                             coalitions=[[1, 1, 1, 1], [0, 0, 0, 0]]),
         "coalitions have 4 columns but feature_mask of image 1 has 2 features"),
    ],
)
def test_new_methods_check_inputs_before_predict(method, match, model):
    with pytest.raises(ValueError, match=match):
        method.explain(model, _x())
    assert _ran(model) == 0
