"""PIC (SIC/AIC): the reference saliency 0.2.1 as an oracle, batching, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from salience.metrics import pic

ref_pic = pytest.importorskip("saliency.metrics.pic")

THRESHOLDS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.21, 0.34, 0.5, 0.75]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The reference's griddata is slow with multi-threaded BLAS; same numbers on one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def _image(seed=0, size=32, gray=False):
    """A smooth picture with some texture, so blurring removes information."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], axis=-1)
    img = 128 + 90 * base + rng.normal(0, 20, size=base.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if gray else img


def _pred_func(original, calls=None):
    """Close to 1 on the original, lower the further an image is from it."""
    ref = original.astype(np.float64)

    def pred_func(batch):
        batch = np.asarray(batch)
        if calls is not None:
            calls.append(len(batch))
        diff = np.abs(batch.astype(np.float64) - ref).reshape(len(batch), -1).mean(axis=1)
        return list(np.exp(-diff / 15.0))

    return pred_func


def _reference(*args, **kwargs):
    """The reference calls np.trapz, which numpy >= 2 removed: patch it for the reference only."""
    patched = not hasattr(np, "trapz")
    if patched:
        np.trapz = np.trapezoid
    try:
        return ref_pic.compute_pic_metric(*args, **kwargs)
    finally:
        if patched:
            del np.trapz


def _saliency(img, seed):
    rng = np.random.default_rng(seed)
    true_importance = np.abs(img.astype(np.float64) - 128).reshape(*img.shape[:2], -1).sum(-1)
    return true_importance + rng.normal(0, 5, size=img.shape[:2])


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("keep_monotonous", [True, False])
def test_compute_pic_metric_matches_reference(gray, keep_monotonous):
    img = _image(seed=3, gray=gray)
    smap = _saliency(img, 1)
    np.random.seed(5)
    mask = ref_pic.generate_random_mask(*img.shape[:2], fraction=0.02)
    args = dict(img=img, saliency_map=smap, random_mask=mask,
                pred_func=_pred_func(img), saliency_thresholds=THRESHOLDS,
                min_pred_value=0.5, keep_monotonous=keep_monotonous, num_data_points=200)
    ref = _reference(**args)
    ours = pic.compute_pic_metric(**args, batch_size=4)
    np.testing.assert_allclose(ours.curve_x, ref.curve_x, rtol=1e-12)
    np.testing.assert_allclose(ours.curve_y, ref.curve_y, rtol=1e-7, atol=1e-12)
    assert ours.auc == pytest.approx(ref.auc, rel=1e-7)
    np.testing.assert_allclose(ours.predictions, ref.predictions, rtol=1e-7)
    assert ours.thresholds == ref.thresholds
    assert len(ours.blurred_images) == len(ref.blurred_images)
    for a, b in zip(ours.blurred_images, ref.blurred_images):
        np.testing.assert_array_equal(a, b)


def test_batch_size_extension_batches_the_thresholded_images():
    img = _image(seed=4)
    calls: list[int] = []
    np.random.seed(1)
    mask = pic.generate_random_mask(32, 32)
    result = pic.compute_pic_metric(img, _saliency(img, 2), mask, _pred_func(img, calls),
                                    THRESHOLDS, min_pred_value=0.5, batch_size=4)
    # the original, the fully blurred image, then the 9 thresholds in chunks of <= 4
    assert calls == [1, 1, 4, 4, 1]
    calls.clear()
    one_by_one = pic.compute_pic_metric(img, _saliency(img, 2), mask, _pred_func(img, calls),
                                        THRESHOLDS, min_pred_value=0.5, n_jobs=1)
    assert calls == [1] * (2 + len(THRESHOLDS))  # PAIR's calls by default
    np.testing.assert_allclose(result.curve_y, one_by_one.curve_y, rtol=1e-12)
    assert result.auc == pytest.approx(one_by_one.auc, rel=1e-12)
    threaded = pic.compute_pic_metric(img, _saliency(img, 2), mask, _pred_func(img),
                                      THRESHOLDS, min_pred_value=0.5, batch_size=3, n_jobs=3)
    assert threaded.auc == result.auc
    for a, b in zip(threaded.blurred_images, one_by_one.blurred_images):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("case", ["curve", "original below min_pred_value", "blurred not lower"])
def test_pred_func_is_called_as_pair_calls_it(case, gray):
    img = _image(seed=4, gray=gray)
    np.random.seed(1)
    mask = pic.generate_random_mask(32, 32)
    score = {"curve": _pred_func(img),
             "original below min_pred_value": _pred_func(img),
             "blurred not lower": lambda batch: [0.9] * len(batch)}[case]
    min_pred_value = 1.5 if case == "original below min_pred_value" else 0.5
    records = []
    for compute in (pic.compute_pic_metric, _reference):
        seen = []

        def pred_func(batch, seen=seen):
            seen.append(np.array(batch))
            return score(batch)

        try:
            compute(img, _saliency(img, 2), mask, pred_func, THRESHOLDS,
                    min_pred_value=min_pred_value, num_data_points=20)
        except (ref_pic.ComputePicMetricError, pic.ComputePicMetricError):
            assert case != "curve"
        records.append(seen)
    ours, reference = records
    assert len(ours) == len(reference) == {"curve": 2 + len(THRESHOLDS),
                                           "original below min_pred_value": 1,
                                           "blurred not lower": 2}[case]
    for a, b in zip(ours, reference):
        assert a.shape == b.shape == (1, *img.shape) and a.dtype == b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


def test_map_of_the_region_the_model_uses_beats_the_inverted_map():
    img = _image(seed=6)
    region = np.zeros((32, 32), dtype=bool)
    region[8:20, 10:22] = True
    ref = img.astype(np.float64)

    def pred_func(batch):  # only the region matters to this "model"
        diff = np.abs(np.asarray(batch, dtype=np.float64) - ref)[:, region].mean(axis=(1, 2))
        return np.exp(-diff / 10.0)

    np.random.seed(2)
    mask = pic.generate_random_mask(32, 32)
    good = region + np.random.default_rng(0).random((32, 32)) * 0.1
    good_auc = pic.compute_pic_metric(img, good, mask, pred_func, THRESHOLDS,
                                      min_pred_value=0.5).auc
    bad_auc = pic.compute_pic_metric(img, -good, mask, pred_func, THRESHOLDS,
                                     min_pred_value=0.5).auc
    assert good_auc > bad_auc + 0.2


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("method", ["linear", "nearest"])
def test_create_blurred_image_matches_reference(gray, method):
    img = _image(seed=7, gray=gray)
    rng = np.random.default_rng(0)
    mask = rng.random(img.shape[:2]) < 0.2
    before = img.copy(), mask.copy()
    ours = pic.create_blurred_image(img, mask, method=method)
    np.testing.assert_array_equal(ours, ref_pic.create_blurred_image(img, mask, method=method))
    assert ours.dtype == img.dtype and ours.shape == img.shape
    np.testing.assert_array_equal(img, before[0])
    np.testing.assert_array_equal(mask, before[1])


def test_create_blurred_image_float_and_full_mask():
    img = _image(seed=8).astype(np.float64) / 255
    mask = np.random.default_rng(1).random((32, 32)) < 0.1
    np.testing.assert_allclose(pic.create_blurred_image(img, mask),
                               ref_pic.create_blurred_image(img, mask), rtol=1e-12)
    gray = _image(seed=8, gray=True)
    full = pic.create_blurred_image(gray, np.ones((32, 32), dtype=bool))
    assert full.shape == gray.shape and full is not gray
    np.testing.assert_array_equal(full, gray)


def test_generate_random_mask_and_entropy_match_reference():
    np.random.seed(11)
    ref_mask = ref_pic.generate_random_mask(20, 30, fraction=0.1)
    np.random.seed(11)
    ours = pic.generate_random_mask(20, 30, fraction=0.1)
    np.testing.assert_array_equal(ours, ref_mask)
    assert ours.sum() == 60
    seeded = pic.generate_random_mask(20, 30, 0.1, rng=np.random.default_rng(0))
    again = pic.generate_random_mask(20, 30, 0.1, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(seeded, again)
    img = _image(seed=9)
    assert pic.estimate_image_entropy(img) == ref_pic.estimate_image_entropy(img)


def test_aggregate_matches_reference():
    img_results = []
    for seed in range(3):
        img = _image(seed=seed)
        np.random.seed(seed)
        mask = pic.generate_random_mask(32, 32)
        img_results.append(pic.compute_pic_metric(img, _saliency(img, seed), mask,
                                                  _pred_func(img), THRESHOLDS,
                                                  min_pred_value=0.5, num_data_points=50))
    np.trapz = np.trapezoid
    try:
        for method in ("mean", "median"):
            ref = ref_pic.aggregate_individual_pic_results(img_results, method=method)
            ours = pic.aggregate_individual_pic_results(img_results, method=method)
            np.testing.assert_allclose(ours.curve_y, ref.curve_y, rtol=1e-12)
            assert ours.auc == pytest.approx(ref.auc, rel=1e-12)
    finally:
        del np.trapz


def test_aggregate_rejects_different_x_points_and_bad_method():
    a = pic.AggregateMetricResult(np.linspace(0, 1, 5), np.linspace(0, 1, 5), 0.5)
    b = pic.AggregateMetricResult(np.linspace(0, 1, 6), np.linspace(0, 1, 6), 0.5)
    with pytest.raises(ValueError, match="other x points"):
        pic.aggregate_individual_pic_results([a, b])
    with pytest.raises(ValueError, match="'mean' or 'median'"):
        pic.aggregate_individual_pic_results([a], method="max")
    with pytest.raises(ValueError, match="empty"):
        pic.aggregate_individual_pic_results([])


def test_skipped_images_raise_compute_pic_metric_error():
    img = _image(seed=1)
    np.random.seed(0)
    mask = pic.generate_random_mask(32, 32)
    calls: list[int] = []
    with pytest.raises(pic.ComputePicMetricError, match="min_pred_value"):
        pic.compute_pic_metric(img, _saliency(img, 0), mask,
                               lambda b: calls.append(len(b)) or [0.1] * len(b), THRESHOLDS)
    assert calls == [1]  # skipped after the original, before the blurred image
    with pytest.raises(pic.ComputePicMetricError, match="fully blurred"):
        pic.compute_pic_metric(img, _saliency(img, 0), mask, lambda b: [0.9] * len(b),
                               THRESHOLDS)


def test_bad_inputs_give_clear_errors():
    img = _image()
    mask = np.zeros((32, 32), dtype=bool)
    smap = _saliency(img, 0)
    f = _pred_func(img)
    with pytest.raises(ValueError, match="uint8"):
        pic.compute_pic_metric(img.astype(np.float32), smap, mask, f, THRESHOLDS)
    with pytest.raises(ValueError, match="saliency_map has shape"):
        pic.compute_pic_metric(img, smap[:-1], mask, f, THRESHOLDS)
    nan_map = smap.copy()
    nan_map[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"saliency_map contains NaN.*\(3, 4\)"):
        pic.compute_pic_metric(img, nan_map, mask, f, THRESHOLDS)
    with pytest.raises(ValueError, match="random_mask has shape"):
        pic.compute_pic_metric(img, smap, mask[:, :5], f, THRESHOLDS)
    with pytest.raises(TypeError, match="random_mask must be a boolean"):
        pic.compute_pic_metric(img, smap, mask.astype(str), f, THRESHOLDS)
    twos = mask.astype(int)
    twos[2, 3] = 2
    with pytest.raises(ValueError, match=r"random_mask must hold only 0 and 1.*2 at \(2, 3\)"):
        pic.compute_pic_metric(img, smap, twos, f, THRESHOLDS)
    with pytest.raises(ValueError, match=r"pixel_mask must hold only 0 and 1.*0.5"):
        pic.create_blurred_image(img, np.full((32, 32), 0.5))
    with pytest.raises(ValueError, match="saliency_thresholds"):
        pic.compute_pic_metric(img, smap, mask, f, [0.1, 1.5])
    with pytest.raises(ValueError, match="saliency_thresholds"):
        pic.compute_pic_metric(img, smap, mask, f, [])
    with pytest.raises(ValueError, match="non-finite"):
        pic.compute_pic_metric(img, smap, mask, lambda b: [np.nan] * len(b), THRESHOLDS)
    with pytest.raises(ValueError, match=r"pred_func returned predictions of shape \(2,\) for 1"):
        pic.compute_pic_metric(img, smap, mask, lambda b: [0.9, 0.8], THRESHOLDS)
    with pytest.raises(ValueError, match=r"shape \(1,\) for 4 image"):
        pic.compute_pic_metric(img, smap, mask, lambda b: f(b)[:1], THRESHOLDS,
                               min_pred_value=0.5, batch_size=4)
    with pytest.raises(ValueError, match="fraction"):
        pic.generate_random_mask(4, 4, fraction=2.0)
    with pytest.raises(ValueError, match="n_jobs"):
        pic.compute_pic_metric(img, smap, mask, f, THRESHOLDS, n_jobs=0)


def test_pred_func_from_model_sic_aic_score():
    class Tiny:
        """Logits: class 0 = mean brightness, class 1 = minus it."""

        def predict(self, x):
            m = np.asarray(x, dtype=np.float64).reshape(len(x), -1).mean(axis=1) / 255
            return np.stack([m, -m], axis=1)

        def __call__(self, x, targets, keys):
            return {"OUTPUT_LAYER_VALUES": self.predict(x)[np.arange(len(x)), targets]}

    batch = np.stack([np.full((4, 4, 3), 200, np.uint8), np.full((4, 4, 3), 0, np.uint8)])
    m = 200 / 255
    sic = pic.pred_func_from_model(Tiny(), 0, "sic")(batch)
    np.testing.assert_allclose(sic, [np.exp(m) / (np.exp(m) + np.exp(-m)), 0.5])
    np.testing.assert_array_equal(pic.pred_func_from_model(Tiny(), 1, "aic")(batch), [0.0, 0.0])
    np.testing.assert_allclose(pic.pred_func_from_model(Tiny(), 1, "score")(batch), [-m, 0.0])
    with pytest.raises(TypeError, match="predict"):
        pic.pred_func_from_model(lambda x, t, k: {}, 0, "sic")
    with pytest.raises(ValueError, match="kind"):
        pic.pred_func_from_model(Tiny(), 0, "auc")


@pytest.mark.parametrize("seed", range(5))
def test_curve_resampling_matches_interp1d_with_tied_x(seed):
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(seed)
    # ties at 0 (clipped entropies) and elsewhere, as real curves have
    x = list(np.clip(rng.choice([0.0, 0.25, 0.5, rng.random()], size=8), 0, 1)) + [0.0, 1.0]
    y = list(np.maximum.accumulate(rng.random(8))) + [0.0, 1.0]
    curve_x, curve_y = pic._resample(x, y, 100)
    expected = np.asarray([interp1d(x=x, y=y)(v) for v in curve_x[:-1]])
    np.testing.assert_array_equal(curve_y[:-1], expected)
    assert curve_x[-1] == 1.0 and curve_y[-1] == 1.0
