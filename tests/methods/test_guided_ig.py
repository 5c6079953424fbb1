"""Guided IG: known answers, lockstep batching, bounded loops, clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import salience
from salience.methods.guided_ig.selection import (
    SAMPLE_SIZE,
    SAMPLED_SELECT_MIN,
    StepTarget,
    advance_rows,
    kth_smallest,
)
from salience.model import INPUT_OUTPUT_GRADIENTS

TARGETS = np.array([0, 1, 2])


def left_riemann_ig(model, x, baseline, targets, steps):
    """IG with gradients at a_k = k / steps, k = 0..steps-1: the straight path
    Guided IG walks when max_dist = 0."""
    total = np.zeros_like(x, dtype=np.float64)
    for k in range(steps):
        total += model.gradient(baseline + (k / steps) * (x - baseline), targets)
    return (x - baseline) * total / steps


def test_linear_model_equals_integrated_gradients(linear, images):
    # gradients are constant, so every path gives (x - baseline) * V exactly
    maps = salience.GuidedIG(steps=20).explain(linear, images, TARGETS)
    ig = salience.IntegratedGradients(steps=5).explain(linear, images, TARGETS)
    np.testing.assert_allclose(maps, images * linear.V[TARGETS], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(maps, ig, rtol=1e-10, atol=1e-12)


def test_max_dist_zero_is_straight_path_ig(analytic, images):
    maps = salience.GuidedIG(steps=30, max_dist=0.0).explain(analytic, images, TARGETS)
    expected = left_riemann_ig(analytic, images, np.zeros_like(images), TARGETS, 30)
    np.testing.assert_allclose(maps, expected, rtol=1e-9, atol=1e-12)


def test_guided_path_differs_from_straight_path(analytic, images):
    # the test above could not pass if the guided path were always straight
    guided = salience.GuidedIG(steps=30, max_dist=0.5).explain(analytic, images, TARGETS)
    straight = salience.GuidedIG(steps=30, max_dist=0.0).explain(analytic, images, TARGETS)
    assert np.abs(guided - straight).max() > 1e-3


def test_input_below_baseline(analytic, linear, images):
    baseline = np.abs(images) + 1.0  # every feature walks downwards
    maps = salience.GuidedIG(steps=20, baseline=baseline).explain(linear, images, TARGETS)
    np.testing.assert_allclose(maps, (images - baseline) * linear.V[TARGETS], rtol=1e-10)
    straight = salience.GuidedIG(steps=20, max_dist=0.0, baseline=baseline)
    np.testing.assert_allclose(
        straight.explain(analytic, images, TARGETS),
        left_riemann_ig(analytic, images, baseline, TARGETS, 20), rtol=1e-9, atol=1e-12,
    )


def test_completeness_with_many_steps(analytic, images):
    maps = salience.GuidedIG(steps=1000, max_dist=0.1).explain(analytic, images, TARGETS)
    gap = analytic.score(images, TARGETS) - analytic.score(np.zeros_like(images), TARGETS)
    assert np.all(np.abs(gap) > 1)
    np.testing.assert_allclose(maps.reshape(3, -1).sum(axis=1), gap, rtol=2e-2)


def test_input_equal_to_baseline_gives_zeros_without_model_calls(analytic, images):
    maps = salience.GuidedIG(steps=10, baseline=images).explain(analytic, images, TARGETS)
    assert maps.shape == images.shape
    assert not maps.any()
    assert analytic.calls == 0


def test_one_input_equal_to_baseline_in_a_batch(analytic, images):
    baseline = np.zeros_like(images)
    baseline[1] = images[1]
    maps = salience.GuidedIG(steps=10, baseline=baseline).explain(analytic, images, TARGETS)
    assert not maps[1].any()
    alone = salience.GuidedIG(steps=10).explain(analytic, images[[0, 2]], TARGETS[[0, 2]])
    np.testing.assert_allclose(maps[[0, 2]], alone, rtol=1e-12)
    assert analytic.rows == 10 * 2 + 10 * 2  # only moving inputs send rows


@pytest.mark.parametrize("max_dist", [0.02, 1.0])
def test_batch_of_three_equals_one_by_one_in_lockstep(analytic, images, max_dist):
    method = salience.GuidedIG(steps=25, max_dist=max_dist, batch_size=8)
    batch = method.explain(analytic, images, TARGETS)
    assert analytic.calls == 25  # one model call per path step for all three inputs
    assert analytic.rows == 75
    for i in range(3):
        single = method.explain(analytic, images[i : i + 1], TARGETS[i : i + 1])
        np.testing.assert_allclose(batch[i], single[0], rtol=1e-12, atol=1e-15)


def test_small_batch_size_splits_each_step(analytic, images):
    salience.GuidedIG(steps=10, batch_size=2).explain(analytic, images, TARGETS)
    assert analytic.calls == 10 * 2


def test_several_baselines_are_averaged(analytic, images):
    baselines = [None, 0.5]
    maps = salience.GuidedIG(steps=15, baseline=baselines).explain(analytic, images, TARGETS)
    each = [salience.GuidedIG(steps=15, baseline=b).explain(analytic, images, TARGETS)
            for b in baselines]
    np.testing.assert_allclose(maps, np.mean(each, axis=0), rtol=1e-12)


def test_large_values_finish(linear):
    # Values like uint8 pixels over many features: rounding keeps the last step's
    # L1 target just out of reach, where PAIR 0.2.1 loops forever.
    shape = (64, 64, 3)
    model = type(linear)(shape=shape)
    x = np.random.default_rng(0).integers(0, 256, size=(1, *shape)).astype(np.float64)
    maps = salience.GuidedIG(steps=20).explain(model, x, [0])
    np.testing.assert_allclose(maps[0], x[0] * model.V[0], rtol=1e-9)


def test_uint8_input_is_converted(linear):
    x = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    maps = salience.GuidedIG(steps=5).explain(linear, x, [0, 1])
    np.testing.assert_allclose(maps, x.astype(np.float64) * linear.V[[0, 1]], rtol=1e-6)


def test_non_finite_gradients_raise(images):
    calls = []

    def nan_model(x, targets, keys):
        calls.append(len(x))
        grads = np.ones_like(x)
        if len(calls) == 3:
            grads[0, 0, 0, 0] = np.nan
        return {INPUT_OUTPUT_GRADIENTS: grads}

    with pytest.raises(FloatingPointError, match="non-finite INPUT_OUTPUT_GRADIENTS"):
        salience.GuidedIG(steps=50).explain(nan_model, images, TARGETS)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"fraction": 1.5}, ValueError, "fraction"),
        ({"fraction": -0.1}, ValueError, "fraction"),
        ({"max_dist": 2}, ValueError, "max_dist"),
        ({"max_dist": "far"}, TypeError, "max_dist"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        salience.GuidedIG(**kwargs)


def test_bad_baseline_raises_before_the_model_runs(analytic, images):
    with pytest.raises(ValueError, match="baseline has shape"):
        salience.GuidedIG(baseline=np.zeros((5, 5))).explain(analytic, images)
    assert analytic.calls == 0


def test_input_is_not_modified(analytic, images):
    before = images.copy()
    salience.GuidedIG(steps=5).explain(analytic, images, TARGETS)
    np.testing.assert_array_equal(images, before)


def test_smoothgrad_over_guided_ig_with_per_input_baseline(analytic, images):
    baseline = np.random.default_rng(3).normal(size=images.shape)
    smooth = salience.SmoothGrad(salience.GuidedIG(steps=5, baseline=baseline), nsamples=2,
                                 stdev_spread=0.0, magnitude=False)
    plain = salience.GuidedIG(steps=5, baseline=baseline).explain(analytic, images, TARGETS)
    np.testing.assert_allclose(smooth.explain(analytic, images, TARGETS), plain, rtol=1e-12)


def test_uniform_baseline_follows_the_seed(analytic, images):
    def run(seed):
        return salience.GuidedIG(steps=5, baseline="uniform", seed=seed).explain(
            analytic, images, 0)

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))


# ------------------------------------------------ the selection kernels, on plain arrays


def _reference_step(t, weights, abs_grad, step, steps, fraction, max_dist):
    """One guided step of one row, written out plainly (positions t in [0, 1]).

    Trailing features catch up with the band's lower edge; then, until the L1
    distance left is (1 - (step + 1) / steps) of the total, the features
    below the row's 'lower' fraction-quantile of |gradient| (features at the
    upper edge count as +inf) move to the upper edge, or part of the way
    when that is enough.
    """
    t = t.copy()
    alpha = (step + 1) / steps
    lower, upper = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    total = float(np.sum(weights))
    target = total * (1 - (step + 1) / steps)
    t = np.maximum(t, lower)
    k = int(np.floor((len(t) - 1) * fraction))
    for _ in range(len(t) + 2):
        left = total - float(np.dot(weights, t))
        if abs(target - left) <= max(1e-9 * max(abs(target), abs(left)), 1e-9):
            break
        free = t < upper
        ranked = sorted(g if f else np.inf for g, f in zip(abs_grad, free))
        chosen = free & (abs_grad <= ranked[k])
        room = np.where(chosen, upper - t, 0.0)
        movable = float(np.dot(weights, room))
        if movable <= 0 or (left - target) / movable <= 0:
            break
        gamma = (left - target) / movable
        if gamma <= 1:
            return t + gamma * room
        t = np.where(chosen, upper, t)
    return t


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction, max_dist", [(0.25, 0.02), (0.1, 0.3), (0.5, 1.0),
                                                (1.0, 0.0)])
def test_advance_rows_equals_one_row_at_a_time_written_out(seed, fraction, max_dist):
    rng = np.random.default_rng(seed)
    n_rows, features, steps = 4, 50, 7
    weights = np.abs(rng.normal(size=(n_rows, features)))
    weights[:, :3] = 0.0  # features with no way to go
    t = np.where(weights == 0, 1.0, 0.0)
    expected = t.copy()
    k = int(np.floor((features - 1) * fraction))
    for step in range(steps):
        abs_grad = np.abs(rng.normal(size=(n_rows, features)))
        abs_grad[:, 5] = abs_grad[:, 6]  # a tie
        target = StepTarget.of(step, steps, max_dist)
        advance_rows(t, weights, abs_grad.copy(), target, k)
        for r in range(n_rows):
            expected[r] = _reference_step(expected[r], weights[r], abs_grad[r], step, steps,
                                          fraction, max_dist)
        np.testing.assert_allclose(t, expected, rtol=1e-12, atol=1e-12)
        left = (weights * (1 - t)).sum(axis=1)
        np.testing.assert_allclose(left, weights.sum(axis=1) * target.l1_left, rtol=1e-9,
                                   atol=1e-9)
    np.testing.assert_allclose(t, 1.0, atol=1e-12)  # the last step ends at the input


def test_advance_rows_keeps_rows_inside_the_band_and_never_moves_back():
    rng = np.random.default_rng(9)
    weights = np.abs(rng.normal(size=(3, 40)))
    t = rng.uniform(0.0, 0.2, size=(3, 40))
    before = t.copy()
    target = StepTarget.of(2, 10, 0.05)  # band [0.25, 0.35], 70% of the way left
    advance_rows(t, weights, np.abs(rng.normal(size=(3, 40))), target, 9)
    assert (t >= before).all() and (t >= target.lower).all() and (t <= target.upper).all()


def test_step_target_of_a_step():
    target = StepTarget.of(3, 10, 0.02)
    assert (target.lower, target.upper) == (pytest.approx(0.38), pytest.approx(0.42))
    assert target.l1_left == pytest.approx(0.6)
    assert StepTarget.of(9, 10, 0.5) == StepTarget(0.5, 1.0, 0.0)


def _long_row_values(rng, features, kind):
    values = np.abs(rng.standard_normal(features)).astype(np.float32)
    if kind == "ties":
        values = np.round(values, 1)
    elif kind == "limits":  # features at their limit rank as +inf
        values[rng.random(features) < 0.6] = np.inf
    elif kind == "misleading sample":  # every sampled position holds the minimum
        values[:: features // SAMPLE_SIZE] = 0.0
    return values


@pytest.mark.parametrize("kind", ["plain", "ties", "limits", "misleading sample"])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.5, 0.99, 1.0])
def test_kth_smallest_is_numpys_partition(kind, fraction):
    rng = np.random.default_rng(len(kind))
    features = SAMPLED_SELECT_MIN + 123
    values = np.stack([_long_row_values(rng, features, kind) for _ in range(3)])
    k = int(np.floor((features - 1) * fraction))
    kept = values.copy()
    kth = kth_smallest(values, k)
    np.testing.assert_array_equal(kth[:, 0], np.partition(kept, k, axis=1)[:, k])
    np.testing.assert_array_equal(values, kept)  # the ranking is left for the caller


@pytest.mark.parametrize("features", [7, 1000])
def test_kth_smallest_of_short_rows(features):
    values = np.random.default_rng(features).normal(size=(4, features))
    k = features // 3
    expected = np.partition(values, k, axis=1)[:, k]
    np.testing.assert_array_equal(kth_smallest(values, k)[:, 0], expected)


# ------------------------------------- long rows, many rows: the walk in two halves


def test_long_rows_walk_in_two_halves_with_the_same_maps(model_classes):
    # 3 rows of 160 x 160 x 3 exceed one group each: two halves alternate with the
    # model, each step one call per half; the maps equal one input at a time.
    shape = (160, 160, 3)
    model = model_classes[0](shape=shape, seed=2)
    x = np.random.default_rng(1).normal(size=(3, *shape))
    targets = np.array([0, 1, 2])
    method = salience.GuidedIG(steps=6, batch_size=8)
    batch = method.explain(model, x, targets)
    assert model.calls == 6 * 2
    assert model.rows == 6 * 3
    for i in range(3):
        single = method.explain(model, x[i : i + 1], targets[i : i + 1])
        np.testing.assert_allclose(batch[i], single[0], rtol=1e-12, atol=1e-15)
    gap = model.score(x, targets) - model.score(np.zeros_like(x), targets)
    np.testing.assert_allclose(batch.reshape(3, -1).sum(axis=1), gap, rtol=0.1)


def test_many_short_rows_walk_in_two_halves_with_the_same_maps(model_classes):
    # 24 rows of 32 x 32 x 3 fit one group but hold 2**16 features or more: halved,
    # each step one call per half of 12 rows; each map equals its input alone.
    shape = (32, 32, 3)
    model = model_classes[0](shape=shape, seed=2)
    x = np.random.default_rng(1).normal(size=(24, *shape))
    targets = np.arange(24) % 3
    method = salience.GuidedIG(steps=5, batch_size=32)
    batch = method.explain(model, x, targets)
    assert model.calls == 5 * 2
    assert model.rows == 5 * 24
    for i in (0, 11, 12, 23):
        single = method.explain(model, x[i : i + 1], targets[i : i + 1])
        np.testing.assert_allclose(batch[i], single[0], rtol=1e-12, atol=1e-15)


@pytest.mark.threading
@pytest.mark.parametrize("shape, rows, beside", [
    ((160, 160, 3), 2, True), ((32, 32, 3), 24, True), ((32, 32, 3), 16, False),
    ((8, 8, 3), 2, False)])
def test_only_large_batches_select_on_a_helper_thread(model_classes, shape, rows, beside):
    inner = model_classes[0](shape=shape, seed=2)
    helpers_seen = []

    def model(x, targets, keys):
        helpers_seen.append(any(t.name.startswith("salience-guided-ig")
                                for t in threading.enumerate()))
        return inner(x, targets, keys)

    x = np.random.default_rng(1).normal(size=(rows, *shape))
    salience.GuidedIG(steps=4).explain(model, x, np.arange(rows) % 2)
    assert any(helpers_seen) == beside
    assert not any(t.name.startswith("salience") for t in threading.enumerate())


def test_error_in_the_second_half_surfaces_and_stops_the_walk():
    shape = (160, 160, 3)
    calls = []

    def failing(x, targets, keys):
        calls.append(len(x))
        if len(calls) == 4:  # step 1, second half
            raise RuntimeError("model failed")
        return {INPUT_OUTPUT_GRADIENTS: np.cos(x)}

    with pytest.raises(RuntimeError, match="model failed"):
        salience.GuidedIG(steps=50).explain(failing, np.ones((2, *shape)), [0, 1])
    assert len(calls) == 4
