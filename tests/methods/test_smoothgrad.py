"""SmoothGrad: noise drawn from an explicit seed, rows of all samples batched together."""

from __future__ import annotations

import math

import numpy as np
import pytest

import salience


def _noisy_copies(x, nsamples, stdev_spread, seed):
    """The noisy inputs SmoothGrad documents: per input, sample after sample, float32
    standard normals (salience.numeric.standard_normal_rows) scaled to the input's range."""
    from salience.numeric import standard_normal_rows

    rng = np.random.default_rng(seed)
    out = []
    for image in x:
        stdev = stdev_spread * (image.max() - image.min())
        out.append([image + stdev * standard_normal_rows(rng, 1, image.size).reshape(image.shape)
                    for _ in range(nsamples)])
    return np.array(out)


@pytest.mark.parametrize("magnitude", [True, False])
def test_equals_mean_over_documented_noise(magnitude, analytic, images):
    maps = salience.SmoothGrad(
        salience.Gradients(), nsamples=6, stdev_spread=0.2, magnitude=magnitude, seed=11
    ).explain(analytic, images, 1)
    noisy = _noisy_copies(images, 6, 0.2, 11)
    grads = analytic.gradient(noisy.reshape(-1, 8, 8, 3), np.ones(18, int)).reshape(3, 6, 8, 8, 3)
    expected = (grads**2 if magnitude else grads).mean(axis=1)
    np.testing.assert_allclose(maps, expected, rtol=1e-10)


def test_seed_reproduces_and_different_seeds_differ(analytic, images):
    def run(seed):
        return salience.SmoothGrad(salience.Gradients(), nsamples=3, seed=seed).explain(
            analytic, images, 0
        )

    np.testing.assert_array_equal(run(4), run(4))
    assert not np.allclose(run(4), run(5))
    gen = np.random.default_rng(4)
    np.testing.assert_array_equal(
        salience.SmoothGrad(salience.Gradients(), nsamples=3, seed=gen).explain(
            analytic, images, 0
        ),
        run(4),
    )


def test_zero_noise_gives_the_wrapped_method(analytic, images):
    plain = salience.Gradients().explain(analytic, images, 2)
    smooth = salience.SmoothGrad(
        salience.Gradients(), nsamples=3, stdev_spread=0, magnitude=False, seed=0
    ).explain(analytic, images, 2)
    np.testing.assert_allclose(smooth, plain, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 5, 7, 64])
def test_noise_rows_share_model_calls(batch_size, analytic, images):
    salience.SmoothGrad(salience.Gradients(batch_size=batch_size), nsamples=5, seed=0).explain(
        analytic, images, 0
    )
    assert analytic.rows == 15
    assert analytic.calls == math.ceil(15 / batch_size)


@pytest.mark.parametrize("batch_size", [1, 8, 100])
def test_smoothgrad_over_integrated_gradients(batch_size, analytic, images):
    steps, nsamples = 4, 3
    ig = salience.IntegratedGradients(steps=steps, baseline=0.1, batch_size=batch_size)
    maps = salience.SmoothGrad(ig, nsamples=nsamples, seed=2, magnitude=False).explain(
        analytic, images, [0, 1, 2]
    )
    rows = 3 * nsamples * steps
    assert analytic.rows == rows and analytic.calls == math.ceil(rows / batch_size)
    noisy = _noisy_copies(images, nsamples, 0.15, 2)
    expected = np.mean(
        [
            [
                salience.IntegratedGradients(steps=steps, baseline=0.1).explain(
                    analytic, noisy[i, s][None], i
                )[0]
                for s in range(nsamples)
            ]
            for i in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(maps, expected, rtol=1e-9)


def test_targets_resolved_once_on_clean_input(analytic, images):
    top = np.argmax(analytic.predict(images), axis=1)
    smooth = salience.SmoothGrad(salience.Gradients(), nsamples=4, stdev_spread=1.0, seed=3)
    np.testing.assert_allclose(
        smooth.explain(analytic, images), smooth.explain(analytic, images, top), rtol=1e-12
    )


def test_wraps_only_methods():
    with pytest.raises(TypeError, match="method must be a salience Method"):
        salience.SmoothGrad(lambda x: x)


def test_bad_seed_is_rejected_early():
    with pytest.raises(TypeError, match="seed must be None, an int"):
        salience.SmoothGrad(salience.Gradients(), seed="abc")


@pytest.mark.parametrize("nested", [False, True])
def test_smoothgrad_over_ig_with_one_baseline_per_input(nested, linear, images):
    per_row = np.random.default_rng(9).normal(size=images.shape)
    ig = salience.IntegratedGradients(steps=3, baseline=per_row)
    inner = salience.SmoothGrad(ig, nsamples=2, seed=1, magnitude=False) if nested else ig
    maps = salience.SmoothGrad(inner, nsamples=3, seed=2, magnitude=False).explain(
        linear, images, [0, 1, 2]
    )
    # a linear model's IG averages to (mean noisy x - baseline) * V; the noise is what differs
    noisy = _noisy_copies(images, 3, 0.15, 2)
    if not nested:
        expected = (noisy.mean(axis=1) - per_row) * linear.V[[0, 1, 2]]
        np.testing.assert_allclose(maps, expected, rtol=1e-9)
    else:
        assert maps.shape == images.shape
        # each input's map is still computed from its own baseline: over seeds the
        # correlation is 0.90 +- 0.01; another input's baseline gives 0.33, none 0.58
        assert np.corrcoef(maps.ravel(), ((images - per_row) * linear.V[[0, 1, 2]]).ravel())[
            0, 1
        ] > 0.8


def test_float32_noise_is_drawn_in_float32_at_each_inputs_scale():
    from salience.methods.smoothgrad import draw_noise

    x = np.stack([np.linspace(0, 1, 4096), np.linspace(-10, 30, 4096)]).astype(np.float32)
    x = x.reshape(2, 64, 64)
    noisy = draw_noise(np.random.default_rng(3), x, 8, 0.1)
    assert noisy.dtype == np.float32 and noisy.shape == (16, 64, 64)
    noise = noisy.reshape(2, 8, 64, 64) - x[:, None]
    np.testing.assert_allclose(noise.std(axis=(1, 2, 3)), [0.1 * 1, 0.1 * 40], rtol=0.02)
    np.testing.assert_allclose(noise.mean(axis=(1, 2, 3)), 0, atol=0.02 * 4)
    np.testing.assert_array_equal(noisy, draw_noise(np.random.default_rng(3), x, 8, 0.1))
    assert not np.array_equal(noisy, draw_noise(np.random.default_rng(4), x, 8, 0.1))


@pytest.mark.parametrize("seed", [11, "legacy"])
@pytest.mark.parametrize("inner", ["Gradients", "IntegratedGradients"])
def test_the_same_seed_gives_the_same_noise_in_float32_and_float64(seed, inner, analytic,
                                                                   images):
    # Seeded float32 and float64 copies of one image used to get unrelated noise
    # (maps 55-83% apart); now only rounding separates them.
    def smooth(x):
        rng = np.random.RandomState(11) if seed == "legacy" else seed
        method = (salience.Gradients() if inner == "Gradients"
                  else salience.IntegratedGradients(steps=4))
        return salience.SmoothGrad(method, nsamples=5, seed=rng).explain(analytic, x, [0, 1, 2])

    single = images.astype(np.float32)
    double = single.astype(np.float64)  # the same values
    maps32, maps64 = smooth(single), smooth(double)
    assert maps32.dtype == np.float32 and maps64.dtype == np.float64
    np.testing.assert_allclose(maps32, maps64, rtol=2e-4, atol=1e-5 * np.abs(maps64).max())


# --- VarGrad and SquareGrad (aggregation=) ---------------------------------------------


def _xplique_statistic(gradients, aggregation, chunk=2):
    """Xplique's online statistics, written from its documented formulas: running sums of
    the gradients and of their squares over chunks of perturbations, then SquareGrad =
    sum(g^2) / N and VarGrad = N / (N - 1) * (sum(g^2) / N - (sum(g) / N)^2)."""
    n = gradients.shape[1]
    total = np.zeros(gradients.shape[:1] + gradients.shape[2:])
    square_total = np.zeros_like(total)
    for start in range(0, n, chunk):
        part = gradients[:, start : start + chunk]
        total += part.sum(axis=1)
        square_total += (part**2).sum(axis=1)
    square_mean = square_total / n
    if aggregation == "squaregrad":
        return square_mean
    return n / (n - 1) * (square_mean - (total / n) ** 2)


def _assert_xplique(maps, samples, aggregation):
    # Xplique's one-pass E[g^2] - E[g]^2 loses ~1e-16 * E[g^2] to cancellation (ours
    # subtracts the mean first), so small variances are compared to that absolute bound.
    atol = 1e-13 * (samples**2).mean(axis=1).max()
    np.testing.assert_allclose(maps, _xplique_statistic(samples, aggregation), rtol=1e-9,
                               atol=atol)


@pytest.mark.parametrize("aggregation", ["vargrad", "squaregrad"])
def test_vargrad_and_squaregrad_equal_a_direct_computation(aggregation, analytic, images):
    maps = salience.SmoothGrad(
        salience.Gradients(), nsamples=7, stdev_spread=0.3, seed=5, aggregation=aggregation
    ).explain(analytic, images, [2, 0, 1])
    noisy = _noisy_copies(images, 7, 0.3, 5)
    grads = analytic.gradient(noisy.reshape(-1, 8, 8, 3), np.repeat([2, 0, 1], 7))
    grads = grads.reshape(3, 7, 8, 8, 3)
    if aggregation == "vargrad":
        mean = grads.sum(axis=1) / 7
        expected = ((grads - mean[:, None]) ** 2).sum(axis=1) / 6
    else:
        expected = (grads * grads).sum(axis=1) / 7
    np.testing.assert_allclose(maps, expected, rtol=1e-10)
    # and Xplique's formula on the same noisy samples
    _assert_xplique(maps, grads, aggregation)


@pytest.mark.parametrize("aggregation", ["vargrad", "squaregrad"])
def test_aggregations_wrap_any_method(aggregation, analytic, images):
    steps, nsamples = 4, 3
    ig = salience.IntegratedGradients(steps=steps, baseline=0.1, batch_size=5)
    maps = salience.SmoothGrad(ig, nsamples=nsamples, seed=2, aggregation=aggregation).explain(
        analytic, images, [0, 1, 2]
    )
    rows = 3 * nsamples * steps
    assert analytic.rows == rows and analytic.calls == math.ceil(rows / 5)
    noisy = _noisy_copies(images, nsamples, 0.15, 2)
    per_copy = np.array([
        [salience.IntegratedGradients(steps=steps, baseline=0.1).explain(
            analytic, noisy[i, s][None], i)[0] for s in range(nsamples)]
        for i in range(3)
    ])
    _assert_xplique(maps, per_copy, aggregation)


def test_the_aggregations_share_the_noise(analytic, images):
    def run(**kwargs):
        return salience.SmoothGrad(salience.Gradients(), nsamples=5, seed=8, **kwargs).explain(
            analytic, images, 1)

    mean, square, variance = run(magnitude=False), run(aggregation="squaregrad"), run(
        aggregation="vargrad")
    # PAIR's magnitude=True is SquareGrad, and Var = N / (N - 1) * (E[g^2] - E[g]^2)
    np.testing.assert_array_equal(run(), square)
    np.testing.assert_allclose(variance, 5 / 4 * (square - mean**2), rtol=1e-9, atol=1e-14)
    assert (variance >= 0).all()


def test_vargrad_keeps_float32_maps_float32(analytic, images):
    maps = salience.SmoothGrad(salience.Gradients(), nsamples=3, seed=0,
                               aggregation="vargrad").explain(analytic,
                                                              images.astype(np.float32), 0)
    assert maps.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aggregation": "var"}, "aggregation must be one of 'mean', 'squaregrad', 'vargrad', "
                                 "got 'var'"),
        ({"aggregation": None}, "aggregation must be one of .* got None"),
        ({"aggregation": "vargrad", "magnitude": False},
         "magnitude=False applies only to aggregation='mean'"),
        ({"aggregation": "squaregrad", "magnitude": True},
         "magnitude=True applies only to aggregation='mean'"),
        ({"aggregation": "vargrad", "nsamples": 1},
         "aggregation='vargrad' needs nsamples >= 2 .* got nsamples=1"),
    ],
)
def test_bad_aggregation_settings_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        salience.SmoothGrad(salience.Gradients(), **kwargs)


def test_magnitude_keeps_its_pair_default_and_meaning():
    assert salience.SmoothGrad(salience.Gradients()).magnitude is True
    assert salience.SmoothGrad(salience.Gradients(), magnitude=False).magnitude is False
    assert salience.SmoothGrad(salience.Gradients(), aggregation="vargrad").magnitude is None


@pytest.mark.parametrize("inner", ["Gradients", "InputXGradient"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("aggregation", ["mean", "signed mean", "squaregrad", "vargrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_rows_give_the_maps_of_every_copy_drawn_first(inner, batch_size, legacy,
                                                               aggregation, dtype, analytic,
                                                               images):
    # Over a method that maps each row from its own outputs, SmoothGrad draws the noise
    # chunk by chunk as rows are built: the same numbers as all copies drawn first,
    # their maps computed and then averaged (in float64 too, where a different order of
    # the additions would show in the last bits).
    from salience.methods.smoothgrad import aggregate_samples, draw_noise

    def rng():
        return np.random.RandomState(7) if legacy else np.random.default_rng(7)

    x = images.astype(dtype)
    method = getattr(salience, inner)(batch_size=batch_size)
    options = {"mean": {"magnitude": True}, "signed mean": {"magnitude": False},
               "squaregrad": {"aggregation": "squaregrad"},
               "vargrad": {"aggregation": "vargrad"}}[aggregation]
    streamed = salience.SmoothGrad(method, nsamples=5, seed=rng(), **options).explain(
        analytic, x, [1, 0, 2])
    noisy = draw_noise(rng(), x, 5, 0.15)
    maps = getattr(salience, inner)().explain(analytic, noisy, np.repeat([1, 0, 2], 5))
    how = {"mean": "squaregrad", "signed mean": "mean"}.get(aggregation, aggregation)
    expected = aggregate_samples(maps.reshape(3, 5, *x.shape[1:]), how).astype(x.dtype)
    if aggregation == "vargrad":  # Welford's running variance: the two-pass one, rounded
        np.testing.assert_allclose(streamed, expected, rtol=1e-12 if dtype == np.float64
                                   else 2e-7)
    else:
        np.testing.assert_array_equal(streamed, expected)
    assert analytic.rows == 2 * 15  # the noisy rows once each (and the direct run's)


def test_noise_rows_are_the_rows_of_draw_noise_in_any_chunks():
    from salience.methods.smoothgrad import NoiseRows, draw_noise

    x = np.random.default_rng(0).uniform(size=(3, 4, 5, 2)).astype(np.float32)
    whole = draw_noise(np.random.default_rng(1), x, 6, 0.2)
    rows = NoiseRows(np.random.default_rng(1), x, 6, 0.2)
    parts = [rows.rows(a, b) for a, b in ((0, 4), (4, 5), (5, 13), (13, 18))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(RuntimeError, match="in order"):
        NoiseRows(np.random.default_rng(1), x, 6, 0.2).rows(4, 8)


def test_a_subclass_with_its_own_explain_is_not_streamed(analytic, images):
    # SmoothGrad streams only methods whose maps come from _row_maps; one that makes
    # its maps in its own _explain gets those maps averaged.
    class Doubled(salience.Gradients):
        def _explain(self, model, x, targets):
            return 2 * super()._explain(model, x, targets)

    plain = salience.SmoothGrad(salience.Gradients(), nsamples=4, seed=3,
                                magnitude=False).explain(analytic, images, 1)
    doubled = salience.SmoothGrad(Doubled(), nsamples=4, seed=3,
                                  magnitude=False).explain(analytic, images, 1)
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-12)


def test_welford_add_is_the_unbiased_variance_without_cancellation():
    from salience.methods.smoothgrad import welford_add

    rng = np.random.default_rng(0)
    # a small spread on a large offset: mean(v^2) - mean(v)^2 loses every digit here
    samples = 1e8 + rng.standard_normal((9, 4, 5))
    mean, spread = np.zeros((4, 5)), np.zeros((4, 5))
    for k, value in enumerate(samples, 1):
        welford_add(mean, spread, value, k)
    np.testing.assert_allclose(mean, samples.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(spread / 8, samples.var(axis=0, ddof=1), rtol=1e-7)
