"""XRAI: one IG schedule, exact region masks, greedy ranking, layouts and sizes, errors."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import dilation, disk
from skimage.transform import resize

import salience
from salience import runtime
from salience.methods.xrai import (
    FELZENSZWALB_SCALES,
    SegmentMasks,
    XRAIResult,
    felzenszwalb_masks,
    xrai_regions,
)
from salience.methods.xrai.segments import dilate, nearest_index_maps
from salience.model import INPUT_OUTPUT_GRADIENTS


@pytest.fixture
def AnalyticModel(model_classes):  # noqa: N802 - the class itself
    return model_classes[0]


def smooth_images(n, height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((n, height, width, channels)), (0, 3, 3, 0))
    return x.astype(np.float32)


def smooth_attr(shape, seed=1):
    sigma = (3, 3) + (0,) * (len(shape) - 2)
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)


def no_model(x, targets, keys):
    raise AssertionError("the model must not be called when attributions are given")


def rect_masks(height, width):
    """Overlapping rectangles (and one duplicate) as user segments."""
    boxes = [(0, height // 2, 0, width // 2), (0, height, 0, width // 3),
             (height // 3, height, width // 4, width), (0, height // 2, 0, width // 2),
             (height // 4, 3 * height // 4, width // 4, 3 * width // 4)]
    masks = []
    for r0, r1, c0, c1 in boxes:
        m = np.zeros((height, width), dtype=bool)
        m[r0:r1, c0:c1] = True
        masks.append(m)
    return masks


# ------------------------------------------------------------------ segmentation pieces


@pytest.mark.parametrize("shape", [(32, 32), (2048, 2048), (2048, 37), (300, 200), (225, 223)])
def test_nearest_index_maps_equal_skimage_resize(shape):
    labels = np.random.default_rng(0).integers(0, 500, size=(224, 224))
    expected = resize(labels, shape, order=0, preserve_range=True, mode="constant",
                      anti_aliasing=False).astype(int)
    rmap, cmap = nearest_index_maps((224, 224), shape)
    np.testing.assert_array_equal(labels[rmap[:, None], cmap[None, :]], expected)


@pytest.mark.parametrize("shape", [(1, 1), (3, 40), (40, 3), (60, 70)])
def test_bbox_dilation_equals_disk_dilation(shape):
    rng = np.random.default_rng(2)
    mask = rng.random(shape) > 0.9
    np.testing.assert_array_equal(dilate(mask), dilation(mask, footprint=disk(5)))


def test_felzenszwalb_masks_are_full_image_dilated_labels():
    image = smooth_images(1, 48, 40)[0]
    masks = felzenszwalb_masks(image)
    assert len(masks) > 6
    # every mask is a dilated union of pixels, stored exactly inside its box
    for i in range(len(masks)):
        full = masks.full(i)
        assert full.shape == (48, 40)
        np.testing.assert_array_equal(np.flatnonzero(full), np.sort(masks.pixel_ids(i)))


def _as_user_segments(masks):
    return [masks.full(i) for i in range(len(masks))]


@pytest.fixture
def counted_felzenszwalb(monkeypatch):
    """Count Felzenszwalb segmentations (skimage's public function, wrapped)."""
    import skimage.segmentation

    calls, original = [], skimage.segmentation.felzenszwalb

    def counting(image, **kwargs):
        calls.append(kwargs["scale"])
        return original(image, **kwargs)

    monkeypatch.setattr(skimage.segmentation, "felzenszwalb", counting)
    return calls


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_segmenting_beside_ig_equals_the_serial_masks_each_scale_once(
        cores, monkeypatch, counted_felzenszwalb):
    monkeypatch.setattr(runtime, "usable_cores", lambda: cores)
    x = smooth_images(3, 48, 40)
    attr = smooth_attr(x.shape)
    got = salience.XRAI(min_pixel_diff=1).explain_with_details(no_model, x, attributions=attr)
    assert sorted(counted_felzenszwalb) == sorted(FELZENSZWALB_SCALES * 3)  # each once
    serial = [_as_user_segments(felzenszwalb_masks(image)) for image in x]
    expected = salience.XRAI(min_pixel_diff=1, segments=serial).explain_with_details(
        no_model, x, attributions=attr)
    np.testing.assert_array_equal(got.maps, expected.maps)
    np.testing.assert_array_equal(got.ranks, expected.ranks)


def test_felzenszwalb_masks_are_those_of_each_scale_in_order():
    from salience.methods.xrai.segments import masks_at_scale, shrink_for_segmentation

    image = smooth_images(1, 40, 52)[0]
    small = shrink_for_segmentation(image)
    parts = [masks_at_scale(small, scale) for scale in FELZENSZWALB_SCALES]
    whole = felzenszwalb_masks(image)
    assert len(whole) == sum(len(p) for p in parts)
    np.testing.assert_array_equal(whole.boxes, np.concatenate([p.boxes for p in parts]))
    for a, b in zip(whole.crops, [c for p in parts for c in p.crops]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ ranking


def test_regions_partition_the_image_and_keep_the_attribution_total():
    attr = smooth_attr((40, 50))
    masks = SegmentMasks.from_masks(rect_masks(40, 50), (40, 50))
    heat, ranks, n_regions = xrai_regions(attr, masks, "full", 1.0, 1)
    assert set(np.unique(ranks)) == set(range(1, n_regions + 1))
    for r in range(1, n_regions + 1):  # each region holds its own mean attribution
        region = ranks == r
        np.testing.assert_allclose(heat[region], attr[region].mean(), rtol=1e-12)
    np.testing.assert_allclose(heat.sum(), attr.sum(), rtol=1e-9)
    means = [heat[ranks == r][0] for r in range(1, n_regions + 1)]
    assert means[:-1] == sorted(means[:-1], reverse=True)


def test_first_region_is_the_densest():
    attr = np.zeros((30, 30))
    attr[20:, 20:] = 5.0
    masks = [np.zeros((30, 30), bool) for _ in range(3)]
    masks[0][:15] = True
    masks[1][15:, 15:] = True
    masks[2][:, :15] = True
    heat, ranks, _ = xrai_regions(attr, SegmentMasks.from_masks(masks, (30, 30)), "full", 1.0, 1)
    assert ranks[25, 25] == 1
    assert heat[25, 25] == attr[15:, 15:].mean()


def test_ties_go_to_the_earlier_segment():
    attr = np.ones((20, 20))
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[:10] = True
    b[10:] = True
    masks = SegmentMasks.from_masks([b, a], (20, 20))
    _, ranks, _ = xrai_regions(attr, masks, "full", 1.0, 1)
    assert ranks[15, 0] == 1 and ranks[0, 0] == 2


@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_constant_attribution_gives_no_nan(algorithm):
    x = smooth_images(1, 40, 36)
    result = salience.XRAI(algorithm=algorithm).explain_with_details(
        no_model, x, attributions=np.full(x.shape, 0.25, dtype=np.float32))
    assert np.isfinite(result.maps).all()
    np.testing.assert_allclose(result.maps, 0.25, rtol=1e-6)


def test_area_threshold_leaves_one_remainder_region():
    attr = smooth_attr((40, 50))
    masks = SegmentMasks.from_masks(rect_masks(40, 50), (40, 50))
    _, ranks, n_regions = xrai_regions(attr, masks, "full", 0.2, 1)
    _, all_ranks, all_regions = xrai_regions(attr, masks, "full", 1.0, 1)
    assert n_regions < all_regions
    remainder = ranks == n_regions
    np.testing.assert_array_equal(ranks[ranks == 1], all_ranks[ranks == 1])
    assert remainder.mean() > 0.2


# ------------------------------------------------------------------ the method


def test_batch_of_three_equals_one_by_one(AnalyticModel):
    x = smooth_images(3, 40, 44)
    model = AnalyticModel(shape=(40, 44, 3))
    method = salience.XRAI(steps=10, batch_size=64)
    batch = method.explain_with_details(model, x, [0, 1, 2])
    assert model.calls == math.ceil(3 * 2 * 10 / 64)  # both baselines, all inputs: one schedule
    for i in range(3):
        one = method.explain_with_details(model, x[i : i + 1], [i])
        np.testing.assert_array_equal(batch.maps[i], one.maps[0])
        np.testing.assert_array_equal(batch.ranks[i], one.ranks[0])
        np.testing.assert_allclose(batch.ig_attributions[i], one.ig_attributions[0], rtol=1e-6)


def test_fast_batch_equals_one_by_one_with_given_segments():
    x = smooth_images(3, 30, 34)
    attr = smooth_attr(x.shape)
    method = salience.XRAI(algorithm="fast", segments=rect_masks(30, 34), min_pixel_diff=1)
    batch = method.explain_with_details(no_model, x, attributions=attr)
    for i in range(3):
        one = method.explain_with_details(no_model, x[i : i + 1], attributions=attr[i : i + 1])
        np.testing.assert_array_equal(batch.maps[i], one.maps[0])
        np.testing.assert_array_equal(batch.ranks[i], one.ranks[0])


def test_details_hold_ig_per_baseline_and_baselines(AnalyticModel):
    x = smooth_images(2, 36, 36)
    model = AnalyticModel(shape=(36, 36, 3))
    result = salience.XRAI(steps=8).explain_with_details(model, x, [0, 1])
    assert isinstance(result, XRAIResult)
    assert result.baselines.shape == (2, 2, 36, 36, 3)
    np.testing.assert_array_equal(result.baselines[:, 0], np.broadcast_to(
        x.reshape(2, -1).min(axis=1)[:, None, None, None], x.shape))
    np.testing.assert_array_equal(result.baselines[:, 1], np.broadcast_to(
        x.reshape(2, -1).max(axis=1)[:, None, None, None], x.shape))
    ig = salience.IntegratedGradients(steps=8, baseline=result.baselines[:, 1])
    np.testing.assert_allclose(result.ig_attributions[:, 1], ig.explain(model, x, [0, 1]),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.attributions, result.ig_attributions.mean(axis=1),
                               rtol=1e-5, atol=1e-7)
    stack = result.segment_stack(1)
    assert stack.shape == (result.n_regions[1], 36, 36)
    np.testing.assert_array_equal(stack.sum(axis=0), 1)  # the regions tile the image
    np.testing.assert_array_equal(np.argmax(stack, axis=0) + 1, result.ranks[1])


def test_grayscale_2d_and_single_channel_agree():
    x = smooth_images(1, 36, 52, channels=1)
    attr = smooth_attr(x.shape)
    method = salience.XRAI()
    with_channel = method.explain_with_details(no_model, x, attributions=attr)
    flat = method.explain_with_details(no_model, x[..., 0], attributions=attr[..., 0])
    assert with_channel.maps.shape == (1, 36, 52)
    np.testing.assert_array_equal(with_channel.maps, flat.maps)
    np.testing.assert_array_equal(with_channel.ranks, flat.ranks)


def test_channels_first_model_agrees_with_channels_last():
    x = smooth_images(1, 40, 33)
    attr = smooth_attr(x.shape)

    class ChannelsFirst:
        channels_last = False

        def __call__(self, x, targets, keys):
            raise AssertionError("not called")

    last = salience.XRAI().explain_with_details(no_model, x, attributions=attr)
    first = salience.XRAI().explain_with_details(
        ChannelsFirst(), x.transpose(0, 3, 1, 2), attributions=attr.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(last.maps, first.maps)
    np.testing.assert_array_equal(last.ranks, first.ranks)


def test_pixel_attribution_is_the_channel_maximum():
    x = smooth_images(1, 32, 32)
    attr = smooth_attr(x.shape)
    masks = rect_masks(32, 32)
    rgb = salience.XRAI(segments=masks).explain_with_details(no_model, x, attributions=attr)
    gray = salience.XRAI(segments=masks).explain_with_details(
        no_model, x[..., :1], attributions=attr.max(axis=-1, keepdims=True))
    np.testing.assert_array_equal(rgb.maps, gray.maps)


def test_segments_one_list_per_input():
    x = smooth_images(2, 30, 30)
    attr = smooth_attr(x.shape)
    a, b = rect_masks(30, 30), rect_masks(30, 30)[::-1]
    both = salience.XRAI(segments=[a, b]).explain_with_details(no_model, x, attributions=attr)
    first = salience.XRAI(segments=a).explain_with_details(no_model, x[:1],
                                                           attributions=attr[:1])
    second = salience.XRAI(segments=b).explain_with_details(no_model, x[1:],
                                                            attributions=attr[1:])
    np.testing.assert_array_equal(both.maps, np.concatenate([first.maps, second.maps]))


def test_segment_masks_computed_ahead_give_the_same_maps():
    # A dataset run segments images in a stage of its own, before the model is free.
    x = smooth_images(2, 30, 34)
    attr = smooth_attr(x.shape)
    ahead = [felzenszwalb_masks(image) for image in x]
    given = salience.XRAI(segments=ahead).explain_with_details(no_model, x, attributions=attr)
    inside = salience.XRAI().explain_with_details(no_model, x, attributions=attr)
    np.testing.assert_array_equal(given.maps, inside.maps)
    np.testing.assert_array_equal(given.ranks, inside.ranks)
    with pytest.raises(ValueError, match=r"segments\[1\] holds masks of shape \(30, 30\)"):
        salience.XRAI(segments=[ahead[0], felzenszwalb_masks(x[1, :, :30])]
                      ).explain_with_details(no_model, x, attributions=attr)


@pytest.mark.parametrize("shape, algorithms", [((32, 32), ("full", "fast")),
                                               ((48, 160), ("full", "fast")),
                                               ((2048, 2048), ("full",))])
def test_sizes_with_cheap_attribution(shape, algorithms):
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    attr = (np.sin(yy / height * 7) * np.cos(xx / width * 5))[None, :, :, None]
    x = np.zeros((1, height, width, 1), dtype=np.float32)
    masks = rect_masks(height, width)
    for algorithm in algorithms:
        result = salience.XRAI(segments=masks, algorithm=algorithm, min_pixel_diff=1
                               ).explain_with_details(no_model, x, attributions=attr)
        assert result.maps.shape == (1, height, width)
        np.testing.assert_allclose(result.maps.sum(), attr.sum(), rtol=1e-6,
                                   atol=1e-6 * attr.size)


def test_felzenszwalb_on_small_non_square_image():
    x = smooth_images(1, 32, 45)
    result = salience.XRAI(algorithm="fast").explain_with_details(
        no_model, x, attributions=smooth_attr(x.shape))
    assert result.n_regions[0] >= 2 and np.isfinite(result.maps).all()


# ------------------------------------------------------------------ errors


def test_nan_attributions_raise():
    x = smooth_images(1, 32, 32)
    attr = smooth_attr(x.shape)
    attr[0, 3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="attributions contains NaN"):
        salience.XRAI().explain_with_details(no_model, x, attributions=attr)


def test_nan_gradients_raise():
    def nan_model(x, targets, keys):
        return {INPUT_OUTPUT_GRADIENTS: np.full_like(x, np.nan)}

    with pytest.raises(FloatingPointError, match="non-finite"):
        salience.XRAI(steps=4).explain(nan_model, smooth_images(1, 32, 32))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"algorithm": "slow"}, ValueError, "algorithm"),
        ({"steps": 0}, ValueError, "steps"),
        ({"min_pixel_diff": -1}, ValueError, "min_pixel_diff"),
        ({"area_threshold": -0.5}, ValueError, "area_threshold"),
        ({"baselines": 0.5}, TypeError, "baselines"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        salience.XRAI(**kwargs)


def test_bad_inputs_raise_before_the_model_runs(AnalyticModel):
    model = AnalyticModel(shape=(32, 32, 3))
    x = smooth_images(1, 32, 32)
    with pytest.raises(ValueError, match="segments\\[0\\] has shape"):
        salience.XRAI(segments=[np.ones((5, 5), bool)]).explain(model, x)
    with pytest.raises(ValueError, match="segments has 3 lists"):
        salience.XRAI(segments=[rect_masks(32, 32)] * 3).explain(model, x)
    with pytest.raises(ValueError, match="baseline has shape"):
        salience.XRAI(baselines=[np.zeros((4, 4))]).explain(model, x)
    with pytest.raises(ValueError, match="attributions has shape"):
        salience.XRAI().explain_with_details(model, x, attributions=np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="images shaped"):
        salience.XRAI().explain(model, np.zeros((1, 4, 4, 4, 3)))
    assert model.calls == 0


def test_input_is_not_modified(AnalyticModel):
    x = smooth_images(1, 32, 32)
    before = x.copy()
    salience.XRAI(steps=3).explain(AnalyticModel(shape=(32, 32, 3)), x, [0])
    np.testing.assert_array_equal(x, before)


def test_min_pixel_diff_zero_with_an_empty_segment():
    # PAIR 0.2.1 raises KeyError here ('full'); the empty region is simply never chosen
    attr = smooth_attr((30, 30))
    masks = rect_masks(30, 30) + [np.zeros((30, 30), bool)]
    sm = SegmentMasks.from_masks(masks, (30, 30))
    heat, ranks, n_regions = xrai_regions(attr, sm, "full", 1.0, 0)
    assert np.isfinite(heat).all() and ranks.min() == 1
    fast_heat, _, fast_regions = xrai_regions(attr, sm, "fast", 1.0, 0)
    assert np.isfinite(fast_heat).all() and fast_regions >= 1


def test_constant_image_is_one_flat_region():
    x = np.full((1, 40, 40, 3), 0.3, np.float32)
    result = salience.XRAI().explain_with_details(no_model, x, attributions=smooth_attr(x.shape))
    assert np.isfinite(result.maps).all()
    assert result.n_regions[0] == 1


def test_uniform_baseline_follows_the_seed(AnalyticModel):  # noqa: N803 - the class itself
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 32, 32, 3))
    model = AnalyticModel(shape=(32, 32, 3))

    def run(seed):
        return salience.XRAI(steps=4, baselines=["uniform"], seed=seed).explain_with_details(
            model, x, 0).attributions

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))



@pytest.mark.threading
def test_a_failing_model_drops_the_queued_segmentation(monkeypatch, counted_felzenszwalb):
    # One segmentation worker; its first scale holds until the model has failed, so
    # the run must stop with the 4 x 6 queued scales dropped, not finish them first.
    import skimage.segmentation

    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    failed, counting = threading.Event(), skimage.segmentation.felzenszwalb

    def held(image, **kwargs):
        failed.wait(timeout=30)
        return counting(image, **kwargs)

    def broken(x, targets, keys):
        failed.set()
        raise RuntimeError("model failed")

    monkeypatch.setattr(skimage.segmentation, "felzenszwalb", held)
    images = np.random.default_rng(6).random((4, 64, 64, 3))
    with pytest.raises(RuntimeError, match="model failed"):
        salience.XRAI(steps=2).explain(broken, images, targets=0)
    assert len(counted_felzenszwalb) <= 1  # at most the scale the worker had started
    assert not any(t.name.startswith("salience") for t in threading.enumerate())
