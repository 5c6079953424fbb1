"""Insertion/deletion: exact curves on a region-sum model, batching, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from salience.metrics import insertion_deletion as idl


def _perfect(region, n, seed=0):
    noise = np.random.default_rng(seed).random((n, *region.shape)) * 0.01
    return region[None].astype(float) + noise


def test_perfect_map_gives_the_exact_deletion_curve(region_model, region, positive_images):
    x = positive_images
    result = idl.deletion(region_model, x, _perfect(region, len(x)), targets=0, steps=10,
                          baseline="zeros", score="output")
    counts = np.round(np.linspace(0, 120, 11)).astype(int)
    # most salient first: the region's pixels go first, in the map's order
    for i in range(len(x)):
        order = np.argsort(-_perfect(region, len(x))[i].ravel(), kind="stable")
        pixel_sums = x[i].sum(axis=-1).ravel()[order]
        in_region = region.ravel()[order]
        expected = [pixel_sums[in_region].sum() - pixel_sums[:c][in_region[:c]].sum()
                    for c in counts]
        np.testing.assert_allclose(result.scores[i], expected, rtol=1e-12)
    assert result.scores[:, -1] == pytest.approx(0.0)
    np.testing.assert_allclose(result.fractions, counts / 120)


def test_perfect_map_beats_random_map(region_model, region, positive_images):
    x = positive_images
    rng = np.random.default_rng(1)
    random_map = rng.random((len(x), *region.shape))
    perfect = _perfect(region, len(x))
    ins_p, del_p = idl.insertion_deletion_curves(region_model, x, perfect, targets=0, steps=20,
                                                 insertion_baseline="zeros", score="output")
    ins_r, del_r = idl.insertion_deletion_curves(region_model, x, random_map, targets=0,
                                                 steps=20, insertion_baseline="zeros",
                                                 score="output")
    # perfect: the whole score is gone / back after 16/120 of the pixels
    assert (del_p.auc < del_r.auc).all() and (ins_p.auc > ins_r.auc).all()
    full = region_model._sum(x)
    k = int(np.argmax(ins_p.fractions >= 16 / 120))
    np.testing.assert_allclose(ins_p.scores[:, k:], np.repeat(full[:, None], 21 - k, 1))
    # any map: insertion + deletion areas with the same zero baseline add up to f(x)
    np.testing.assert_allclose(ins_r.scores + del_r.scores, full[:, None] * np.ones(21))


def test_batch_size_and_call_count(region_model, region, positive_images):
    x = positive_images
    maps = np.random.default_rng(2).random((len(x), 12, 10))
    one = type(region_model)(region)
    big = type(region_model)(region)
    a = idl.insertion(one, x, maps, targets=[0, 1, 0, 1], steps=6, batch_size=1,
                      score="output")
    b = idl.insertion(big, x, maps, targets=[0, 1, 0, 1], steps=6, batch_size=10,
                      score="output")
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)
    assert one.calls == 4 * 7 and big.calls == int(np.ceil(4 * 7 / 10))
    assert big.rows == 4 * 7


def test_channels_first_and_map_shaped_like_x(region_model, region, positive_images):
    x = positive_images
    maps = np.random.default_rng(3).random(x.shape)
    last = idl.deletion(region_model, x, maps, targets=0, steps=8, baseline="mean",
                        score="output")
    first_model = type(region_model)(region, channels_last=False)
    first = idl.deletion(first_model, np.moveaxis(x, -1, 1), np.moveaxis(maps, -1, 1),
                         targets=0, steps=8, baseline="mean", score="output")
    np.testing.assert_allclose(last.scores, first.scores, rtol=1e-12)
    summed = idl.deletion(region_model, x, maps.sum(-1), targets=0, steps=8, baseline="mean",
                          score="output")
    np.testing.assert_allclose(last.scores, summed.scores, rtol=1e-12)


def test_baselines_and_softmax_score(region_model, region, positive_images):
    x = positive_images
    maps = _perfect(region, len(x))
    before = x.copy()
    blurred = idl.make_baseline(x, "blurred", True, 2.0)
    assert blurred.shape == x.shape and not np.allclose(blurred, x)
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=0.05)
    mean = idl.make_baseline(x, "mean")
    np.testing.assert_allclose(mean[:, 0, 0], x.mean(axis=(1, 2)))
    custom = idl.insertion(region_model, x, maps, 0, steps=4, baseline=np.ones(x.shape[1:]),
                           score="output")
    np.testing.assert_allclose(custom.scores[:, 0], 16 * 3)
    soft = idl.insertion(region_model, x, maps, targets=1, steps=4, score="softmax")
    probs = np.exp(region_model.predict(x))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(soft.scores[:, -1], probs[:, 1])
    np.testing.assert_array_equal(x, before)
    rows = soft.as_rows()
    assert rows[0]["kind"] == "insertion" and rows[2]["auc"] == pytest.approx(soft.auc[2])


def test_the_default_score_is_the_class_probability(region_model, region, positive_images):
    x = positive_images
    maps = _perfect(region, len(x))
    ins, dele = idl.insertion_deletion_curves(region_model, x, maps, targets=1, steps=6)
    probs = np.exp(region_model.predict(x))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ins.scores[:, -1], probs[:, 1])  # everything inserted: x
    np.testing.assert_allclose(dele.scores[:, 0], probs[:, 1])  # nothing deleted yet: x
    assert ins.score == dele.score == "probability"
    assert ((0 <= ins.auc) & (ins.auc <= 1) & (0 <= dele.auc) & (dele.auc <= 1)).all()
    older = idl.insertion(region_model, x, maps, targets=1, steps=6, score="softmax")
    np.testing.assert_array_equal(older.scores, ins.scores)
    raw = idl.insertion(region_model, x, maps, targets=1, steps=6, score="output")
    assert raw.score == "output"
    np.testing.assert_allclose(raw.scores[:, -1], region_model._sum(x))  # the region sum
    with pytest.raises(TypeError, match="score='output'"):  # a model without predict
        idl.deletion(lambda a, t, k: {}, x, maps, 0)


def test_bad_inputs(region_model, region, positive_images):
    x = positive_images
    maps = _perfect(region, len(x))
    with pytest.raises(ValueError, match=r"maps of size \(12, 9\)"):
        idl.deletion(region_model, x, maps[:, :, :9], 0)
    with pytest.raises(ValueError, match="3 maps but x has 4"):
        idl.deletion(region_model, x, maps[:3], 0)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"saliency contains NaN.*\(1, 2, 3\)"):
        idl.deletion(region_model, x, bad, 0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        idl.deletion(region_model, x, maps, 0, baseline="noise")
    with pytest.raises(ValueError, match="baseline has shape"):
        idl.deletion(region_model, x, maps, 0, baseline=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="score must be"):
        idl.deletion(region_model, x, maps, 0, score="logit")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        idl.deletion(region_model, x, maps, 0, steps=0)
    with pytest.raises(TypeError, match="predict"):
        idl.deletion(lambda a, t, k: {}, x, maps, 0, score="softmax")
    assert region_model.calls == 0


def test_torch_adapter_end_points():
    torch = pytest.importorskip("torch")
    import salience.torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    model = salience.torch.wrap(net)
    x = np.random.default_rng(0).normal(size=(3, 3, 6, 6)).astype(np.float32)
    maps = np.random.default_rng(1).random((3, 6, 6))
    ins, dele = idl.insertion_deletion_curves(model, x, maps, steps=4, score="softmax",
                                              insertion_baseline="mean")
    with torch.no_grad():
        probs = torch.softmax(net(torch.as_tensor(x)), dim=1).numpy()
        blank = torch.softmax(net(torch.zeros(3, 3, 6, 6)), dim=1).numpy()
    top = probs.argmax(axis=1)  # targets=None: the top class on x
    np.testing.assert_allclose(ins.scores[:, -1], probs[np.arange(3), top], rtol=1e-5)
    np.testing.assert_allclose(dele.scores[:, 0], probs[np.arange(3), top], rtol=1e-5)
    np.testing.assert_allclose(dele.scores[:, -1], blank[np.arange(3), top], rtol=1e-5)
