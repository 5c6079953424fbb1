"""salience.core GuidedIG and XRAI against saliency==0.2.1 on identical inputs."""

from __future__ import annotations

import numpy as np
import pytest
import saliency.core as pair
from scipy import ndimage

import salience.core as ours


@pytest.fixture
def pair_gig(pair_guided_ig_on_numpy2):
    return pair.GuidedIG()


def smooth_image(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    sigma = (3, 3) + (0,) * (len(shape) - 2)
    return ndimage.gaussian_filter(rng.random(shape), sigma).astype(dtype)


def assert_close(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# ------------------------------------------------------------------ Guided IG


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "steps, fraction, max_dist, baseline",
    [(200, 0.25, 0.02, None), (40, 0.1, 0.0, None), (40, 0.5, 1.0, "random"),
     (30, 0.25, 0.1, "above")],
)
def test_guided_ig(pair_gig, analytic, images, dtype, steps, fraction, max_dist, baseline):
    x = images[0].astype(dtype)
    x_baseline = {
        None: None,
        "random": np.random.default_rng(0).normal(size=x.shape).astype(dtype),
        "above": np.abs(x) + 1,  # the input lies below the baseline
    }[baseline]
    call = analytic.call_model_function(1)
    kwargs = dict(x_baseline=x_baseline, x_steps=steps, fraction=fraction, max_dist=max_dist)
    expected = pair_gig.GetMask(x, call, **kwargs)
    actual = ours.GuidedIG().GetMask(x, call, **kwargs)
    assert actual.dtype == np.float64
    assert_close(actual, expected, rtol=1e-5)


def test_guided_ig_larger_input(pair_gig, model_classes):
    model = model_classes[0](shape=(24, 20, 3), seed=5)
    x = smooth_image((24, 20, 3), dtype=np.float64)
    call = model.call_model_function(2)
    assert_close(ours.GuidedIG().GetMask(x, call, x_steps=60),
                 pair_gig.GetMask(x, call, x_steps=60), rtol=1e-5)


def test_guided_ig_long_rows(pair_gig, model_classes):
    # 112 x 112 x 3 features: each step's k-th |gradient| comes from a sample of the row
    # (salience.methods.guided_ig.selection.kth_smallest), which must leave PAIR's numbers unchanged.
    shape = (112, 112, 3)
    model = model_classes[0](shape=shape, seed=6)
    x = smooth_image(shape, seed=1)
    call = model.call_model_function(1)
    assert_close(ours.GuidedIG().GetMask(x, call, x_steps=25),
                 pair_gig.GetMask(x, call, x_steps=25), rtol=1e-5)


def test_guided_ig_input_equal_to_baseline(pair_gig, analytic, images):
    call = analytic.call_model_function(0)
    expected = pair_gig.GetMask(images[0], call, x_baseline=images[0])
    actual = ours.GuidedIG().GetMask(images[0], call, x_baseline=images[0])
    np.testing.assert_array_equal(actual, expected)
    assert not actual.any()


# ------------------------------------------------------------------ XRAI given attributions


def _details(lib, x, **kwargs):
    params_kw = kwargs.pop("params", {})
    params = lib.XRAIParameters(**params_kw)
    params.return_xrai_segments = True
    if "min_pixel_diff" in kwargs:
        params.experimental_params["min_pixel_diff"] = kwargs.pop("min_pixel_diff")
    return lib.XRAI().GetMaskWithDetails(x, None, extra_parameters=params, **kwargs)


@pytest.mark.parametrize(
    "shape, algorithm, dtype",
    [((48, 40, 3), "full", np.float32), ((48, 40, 3), "fast", np.float32),
     ((64, 64, 1), "full", np.float64), ((50, 70), "fast", np.float64),
     ((90, 80, 3), "full", np.float64)],
)
def test_xrai_given_attribution_is_identical(shape, algorithm, dtype):
    x = smooth_image(shape)
    attr = smooth_image(shape, seed=1, dtype=dtype) - 0.5
    kw = dict(base_attribution=attr, params={"algorithm": algorithm})
    expected, actual = _details(pair, x, **kw), _details(ours, x, **kw)
    np.testing.assert_array_equal(actual.attribution_mask, expected.attribution_mask)
    np.testing.assert_array_equal(actual.segments, expected.segments)
    assert actual.attribution_mask.dtype == expected.attribution_mask.dtype


def test_xrai_boolean_segments_area_threshold_and_min_pixel_diff():
    x = smooth_image((56, 48, 3), seed=3)
    attr = smooth_image((56, 48, 3), seed=4) - 0.5
    kw = dict(base_attribution=attr, min_pixel_diff=200,
              params={"area_threshold": 0.4, "flatten_xrai_segments": False,
                      "return_ig_attributions": True})
    expected, actual = _details(pair, x, **kw), _details(ours, x, **kw)
    np.testing.assert_array_equal(actual.attribution_mask, expected.attribution_mask)
    assert len(actual.segments) == len(expected.segments) > 1
    for a, e in zip(actual.segments, expected.segments):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(actual.ig_attribution, expected.ig_attribution)
    assert actual.baselines is None and expected.baselines is None


@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_xrai_user_segments_with_ties(algorithm):
    x = smooth_image((40, 40, 3))
    attr = np.zeros((40, 40, 3))
    attr[:20] = 1.0  # equal densities everywhere in the top half: ties decide
    segments = []
    for r0, r1, c0, c1 in [(0, 20, 0, 20), (0, 20, 20, 40), (0, 20, 0, 20), (10, 40, 0, 40),
                           (20, 40, 0, 20)]:
        m = np.zeros((40, 40), dtype=bool)
        m[r0:r1, c0:c1] = True
        segments.append(m)
    kw = dict(base_attribution=attr, segments=segments, params={"algorithm": algorithm})
    expected, actual = _details(pair, x, **kw), _details(ours, x, **kw)
    np.testing.assert_array_equal(actual.attribution_mask, expected.attribution_mask)
    np.testing.assert_array_equal(actual.segments, expected.segments)


# ------------------------------------------------------------------ XRAI full pipeline


@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_xrai_full_pipeline(model_classes, algorithm):
    shape = (40, 36, 3)
    model = model_classes[0](shape=shape, seed=2)
    x = smooth_image(shape)
    call = model.call_model_function(1)
    params = dict(steps=12, algorithm=algorithm, return_ig_attributions=True)
    expected = pair.XRAI().GetMaskWithDetails(
        x, call, batch_size=5, extra_parameters=pair.XRAIParameters(**params))
    actual = ours.XRAI().GetMaskWithDetails(
        x, call, batch_size=5, extra_parameters=ours.XRAIParameters(**params))
    assert_close(actual.attribution_mask, expected.attribution_mask, rtol=1e-4)
    assert_close(ours.XRAI().GetMask(x, call, batch_size=7,
                                     extra_parameters=ours.XRAIParameters(**params)),
                 expected.attribution_mask, rtol=1e-4)
    for a, e in zip(actual.ig_attribution, expected.ig_attribution):
        assert_close(a, e, rtol=1e-4)
    for a, e in zip(actual.baselines, expected.baselines):
        np.testing.assert_array_equal(a, e)


def test_xrai_given_baselines(model_classes):
    shape = (36, 36, 3)
    model = model_classes[0](shape=shape, seed=6)
    x = smooth_image(shape, seed=7)
    baselines = [np.zeros(shape, np.float32), np.full(shape, 0.5, np.float32),
                 smooth_image(shape, seed=8)]
    call = model.call_model_function(0)
    params = dict(steps=8)
    expected = pair.XRAI().GetMask(x, call, baselines=baselines, batch_size=4,
                                   extra_parameters=pair.XRAIParameters(**params))
    actual = ours.XRAI().GetMask(x, call, baselines=baselines, batch_size=4,
                                 extra_parameters=ours.XRAIParameters(**params))
    assert_close(actual, expected, rtol=1e-4)


def test_xrai_bad_base_attribution_shape():
    x = smooth_image((32, 32, 3))
    with pytest.raises(ValueError, match="base attribution shape"):
        ours.XRAI().GetMask(x, None, base_attribution=np.zeros((32, 32)))
