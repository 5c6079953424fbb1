"""The row scheduler: call counts, chunk sizes, batch-size independence, non-finite outputs,
the helper thread's modes (each chunk once, in order, errors within one chunk) and the row budget."""

from __future__ import annotations

import contextlib
import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import salience
import salience.schedule
from salience.model import INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES
from salience.schedule import run_rows


class Recorder:
    """A model returning each row's own values as gradient; records chunk sizes."""

    def __init__(self):
        self.chunks = []

    def __call__(self, x, targets, keys):
        self.chunks.append((len(x), None if targets is None else targets.tolist()))
        return {INPUT_OUTPUT_GRADIENTS: x * 2.0, OUTPUT_LAYER_VALUES: x.sum(axis=1)}


@settings(max_examples=60, deadline=None)
@given(n_rows=st.integers(1, 60), batch_size=st.integers(1, 70))
def test_rows_packed_into_ceil_calls_in_order(n_rows, batch_size):
    model = Recorder()
    data = np.arange(n_rows * 2, dtype=np.float64).reshape(n_rows, 2)
    built, seen = [], np.full((n_rows, 2), np.nan)

    def make_rows(start, stop):
        built.append((start, stop))
        return data[start:stop]

    def consume(start, stop, outputs):
        seen[start:stop] = outputs[INPUT_OUTPUT_GRADIENTS]

    owners = np.arange(n_rows) // 3
    targets = np.arange(owners[-1] + 1) * 10
    run_rows(model, [INPUT_OUTPUT_GRADIENTS], owners, make_rows, consume, targets, batch_size,
             "Test")
    assert len(model.chunks) == math.ceil(n_rows / batch_size)
    assert all(size <= batch_size for size, _ in model.chunks)
    assert [b for _, b in built[:-1]] == [a for a, _ in built[1:]]  # contiguous slices
    assert built[0][0] == 0 and built[-1][1] == n_rows
    np.testing.assert_array_equal(seen, data * 2)
    # each row carries its own image's target
    assert sum((t for _, t in model.chunks), []) == (owners * 10).tolist()


def test_no_targets_passes_none():
    model = Recorder()
    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(3, int), lambda a, b: np.ones((b - a, 2)),
             lambda *a: None, None, 2, "Test")
    assert model.chunks == [(2, None), (1, None)]


def _run_with_batch_size(batch_size):
    model = Recorder()
    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(3, int), lambda a, b: np.ones((b - a, 2)),
             lambda *a: None, None, batch_size, "Test")
    return model


@pytest.mark.parametrize("bad", [0, -1])
def test_batch_size_must_be_positive(bad):
    with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {bad}"):
        _run_with_batch_size(bad)


@pytest.mark.parametrize("bad", [1.5, "4", True, None])
def test_batch_size_must_be_an_int(bad):
    with pytest.raises(TypeError, match="batch_size must be a positive int"):
        _run_with_batch_size(bad)


def _methods(batch_size):
    return {
        "Gradients": salience.Gradients(batch_size=batch_size),
        "IntegratedGradients": salience.IntegratedGradients(
            steps=7, baseline=[None, 0.5], batch_size=batch_size
        ),
        "SmoothGrad": salience.SmoothGrad(
            salience.IntegratedGradients(steps=3, batch_size=batch_size), nsamples=4, seed=5
        ),
        "BlurIG": salience.BlurIG(max_sigma=4, steps=6, batch_size=batch_size),
        "Occlusion": salience.Occlusion(size=3, stride=2, batch_size=batch_size),
        "GradCAM": salience.GradCAM(batch_size=batch_size),
    }


# rows per call of explain for 3 images, per method (see _methods)
_ROWS = {
    "Gradients": 3,
    "IntegratedGradients": 3 * 2 * 7,
    "SmoothGrad": 3 * 4 * 3,
    "BlurIG": 3 * 6,
    "Occlusion": 3 * (1 + 3 * 3),
    "GradCAM": 3,
}


@pytest.mark.parametrize("name", list(_ROWS))
@settings(max_examples=8, deadline=None)
@given(batch_size=st.integers(1, 40))
def test_results_do_not_depend_on_batch_size(name, batch_size, model_classes):
    analytic_cls, _ = model_classes
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3))
    targets = [0, 2, 1]
    reference = _methods(1)[name].explain(analytic_cls(), x, targets)
    model = analytic_cls()
    maps = _methods(batch_size)[name].explain(model, x, targets)
    np.testing.assert_allclose(maps, reference, rtol=1e-9, atol=1e-12)
    assert model.calls == math.ceil(_ROWS[name] / batch_size)
    assert model.rows == _ROWS[name]


class NonFiniteAt:
    """An analytic model whose gradient is NaN (or inf) in one row of the whole run."""

    def __init__(self, inner, bad_row, value):
        self.inner, self.bad_row, self.value, self.seen = inner, bad_row, value, 0

    def __call__(self, x, targets, keys):
        out = dict(self.inner(x, targets, keys))
        grads = np.array(out[INPUT_OUTPUT_GRADIENTS])
        local = self.bad_row - self.seen
        if 0 <= local < len(x):
            grads[local, 0, 0, 0] = self.value
        self.seen += len(x)
        out[INPUT_OUTPUT_GRADIENTS] = grads
        return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "method, bad_row, image",
    [
        (salience.Gradients(batch_size=2), 2, 2),
        (salience.IntegratedGradients(steps=5, batch_size=4), 7, 1),
        (salience.BlurIG(max_sigma=3, steps=4, batch_size=3), 9, 2),
    ],
)
def test_non_finite_gradient_names_method_and_row(method, bad_row, image, value, analytic,
                                                  images):
    model = NonFiniteAt(analytic, bad_row, value)
    with pytest.raises(FloatingPointError) as info:
        method.explain(model, images, 0)
    message = str(info.value)
    assert message.startswith(method.name)
    assert f"row {bad_row} " in message
    assert f"image {image} of the batch" in message
    assert INPUT_OUTPUT_GRADIENTS in message


class NonFiniteScoreAt:
    """Returns a NaN score (and NaN layer values) for one row of the run."""

    def __init__(self, inner, bad_row):
        self.inner, self.bad_row, self.seen = inner, bad_row, 0

    def __call__(self, x, targets, keys):
        out = {k: np.array(v, dtype=np.float64) for k, v in self.inner(x, targets, keys).items()}
        local = self.bad_row - self.seen
        if 0 <= local < len(x):
            for key in out:
                out[key][local] = np.nan
        self.seen += len(x)
        return out


@pytest.mark.parametrize(
    "method, key",
    [
        (salience.Occlusion(size=4, stride=4, batch_size=4), OUTPUT_LAYER_VALUES),
        (salience.GradCAM(batch_size=2), salience.CONVOLUTION_LAYER_VALUES),
    ],
)
def test_non_finite_scores_and_layer_values_are_not_silent(method, key, analytic, images):
    model = NonFiniteScoreAt(analytic, 2)
    with pytest.raises(FloatingPointError, match=rf"{method.name}: .*non-finite {key} .*row 2 "):
        method.explain(model, images, 0)


# --- overlap of row building and consuming with the model's work ---------------------
# The helper thread is forced on or off (overlap=True / False) or left to decide
# (None); every mode must do each unit of work once, in order, with the same results.

OVERLAP_MODES = [None, True, False]


def _rows(start, stop):
    return np.arange(start, stop, dtype=np.float64)[:, None] * np.ones((1, 2))


def _echo(x, targets, keys):
    return {INPUT_OUTPUT_GRADIENTS: x * 3.0}


def _salience_threads():
    return [t for t in threading.enumerate() if t.name.startswith("salience")]


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
@pytest.mark.parametrize("with_prepare", [False, True])
@pytest.mark.parametrize("n_rows", [1, 2, 3, 4, 11])
def test_every_mode_builds_prepares_and_consumes_each_chunk_once_in_order(
        overlap, with_prepare, n_rows):
    events, seen = [], np.full((n_rows, 2), np.nan)

    def build(start, stop):
        events.append(("build", start))
        return _rows(start, stop)

    def consume(start, stop, outputs):
        events.append(("consume", start))
        seen[start:stop] = outputs[INPUT_OUTPUT_GRADIENTS]

    prepare = (lambda a, b: events.append(("prepare", a))) if with_prepare else None
    run_rows(_echo, [INPUT_OUTPUT_GRADIENTS], np.zeros(n_rows, int), build, consume, None, 3,
             "Test", prepare=prepare, overlap=overlap)
    starts = list(range(0, n_rows, 3))
    stages = ("build", "prepare", "consume") if with_prepare else ("build", "consume")
    for stage in stages:
        assert [a for s, a in events if s == stage] == starts
    for a in starts:
        order = [events.index((stage, a)) for stage in stages]
        assert order == sorted(order)
    np.testing.assert_array_equal(seen, _rows(0, n_rows) * 3.0)


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
def test_no_rows_no_call(overlap):
    model = Recorder()
    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(0, int), _rows, lambda *a: None, None,
             4, "Test", overlap=overlap)
    assert model.chunks == []


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
@pytest.mark.parametrize("where", ["make_rows", "prepare", "consume", "model"])
def test_errors_in_any_stage_reach_the_caller_within_one_chunk(where, overlap):
    calls = []

    def make_rows(start, stop):
        if where == "make_rows" and start == 4:
            raise KeyError("boom in make_rows")
        return _rows(start, stop)

    def prepare(start, stop):
        if where == "prepare" and start == 4:
            raise KeyError("boom in prepare")

    def consume(start, stop, outputs):
        if where == "consume" and start == 2:
            raise KeyError("boom in consume")

    def model(x, targets, keys):
        calls.append(len(x))
        if where == "model" and x[0, 0] == 4:
            raise KeyError("boom in model")
        return {INPUT_OUTPUT_GRADIENTS: x}

    with pytest.raises(KeyError, match=f"boom in {where}"):
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(10, int), make_rows, consume, None,
                 2, "Test", prepare=prepare, overlap=overlap)
    # The run stops within one chunk of the failure: never all 5 calls.
    assert len(calls) <= 4


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
def test_wrong_output_shape_is_reported(overlap):
    def model(x, targets, keys):
        return {INPUT_OUTPUT_GRADIENTS: x[:, :1]}

    with pytest.raises(ValueError, match="shape"):
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(6, int), _rows, lambda *a: None,
                 None, 2, "Test", overlap=overlap)


# Tests that must look at threads: which thread runs what, and what runs beside the model.


@pytest.mark.threading
def test_next_chunk_is_built_while_the_model_runs():
    third_chunk_started = threading.Event()
    saw = []

    def make_rows(start, stop):
        if start == 4:
            third_chunk_started.set()
        return _rows(start, stop)

    def model(x, targets, keys):
        if x[0, 0] == 2:  # chunk 1 waits for chunk 2 to be under construction
            saw.append(third_chunk_started.wait(timeout=30))
        return {INPUT_OUTPUT_GRADIENTS: x}

    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(8, int), make_rows, lambda *a: None,
             None, 2, "Test", overlap=True)
    assert saw == [True]


@pytest.mark.threading
def test_prepare_of_a_single_chunk_runs_during_its_model_call():
    model_running, prepared = threading.Event(), threading.Event()
    saw = []

    def model(x, targets, keys):
        model_running.set()
        saw.append(prepared.wait(timeout=30))  # False if prepare waited for the model
        return {INPUT_OUTPUT_GRADIENTS: x}

    def prepare(start, stop):
        model_running.wait(timeout=30)
        prepared.set()

    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(4, int), _rows, lambda *a: None,
             None, 8, "Test", prepare=prepare, overlap=True)
    assert saw == [True]


@pytest.mark.threading
@pytest.mark.parametrize("overlap", [False, True])
def test_the_model_is_called_from_the_callers_thread_and_the_rest_where_asked(overlap):
    threads = {"model": set(), "build": set(), "prepare": set(), "consume": set()}

    def note(stage):
        threads[stage].add(threading.current_thread() is threading.main_thread())

    def model(x, targets, keys):
        note("model")
        return {INPUT_OUTPUT_GRADIENTS: x}

    run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(8, int),
             lambda a, b: (note("build"), _rows(a, b))[1], lambda *a: note("consume"), None, 2,
             "Test", prepare=lambda a, b: note("prepare"), overlap=overlap)
    assert threads["model"] == {True}
    for stage in ("build", "prepare", "consume"):
        assert threads[stage] == {not overlap}


@pytest.mark.threading
def test_slow_own_work_moves_to_the_helper_thread_by_itself():
    # Own work far above the documented 2 ms: building the first chunk spins for
    # at least 20 ms (a lower bound, whatever the machine's load).
    in_caller = []

    def make_rows(start, stop):
        in_caller.append(threading.current_thread() is threading.main_thread())
        if start == 0:
            began = time.perf_counter()
            while time.perf_counter() - began < 0.02:
                pass
        return _rows(start, stop)

    run_rows(_echo, [INPUT_OUTPUT_GRADIENTS], np.zeros(8, int), make_rows, lambda *a: None,
             None, 2, "Test")
    assert in_caller == [True, False, False, False]  # the first chunk measures, here


@pytest.mark.threading
@pytest.mark.parametrize("where", ["make_rows", "consume", "model", None])
def test_no_helper_thread_outlives_the_run(where):
    def make_rows(start, stop):
        if where == "make_rows" and start == 4:
            raise KeyError(where)
        return _rows(start, stop)

    def consume(start, stop, outputs):
        if where == "consume" and start == 2:
            raise KeyError(where)

    def model(x, targets, keys):
        if where == "model" and x[0, 0] == 4:
            raise KeyError(where)
        return {INPUT_OUTPUT_GRADIENTS: x}

    with contextlib.suppress(KeyError):
        run_rows(model, [INPUT_OUTPUT_GRADIENTS], np.zeros(10, int), make_rows, consume, None,
                 2, "Test", overlap=True)
    assert _salience_threads() == []
# --- refusing absurd work before allocating -------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: salience.BlurIG(steps=10**12),
    lambda: salience.IntegratedGradients(steps=10**12),
    lambda: salience.GuidedIG(steps=10**12),
    lambda: salience.XRAI(steps=10**12, segments=[np.ones((8, 8), bool)]),
    lambda: salience.SmoothGrad(salience.Gradients(), nsamples=10**12),
    lambda: salience.SmoothGrad(salience.IntegratedGradients(steps=10**6), nsamples=10**6),
])
def test_absurd_work_is_refused_before_anything_is_allocated(make, analytic, images):
    method = make()
    with pytest.raises(ValueError, match=r"rows of 192 values .*MAX_ROW_VALUES") as info:
        method.explain(analytic, images, 0)
    assert "TiB as float32" in str(info.value)
    assert analytic.calls == 0


def test_the_row_budget_can_be_raised(analytic, images, monkeypatch):
    method = salience.IntegratedGradients(steps=10)  # 3 images x 10 rows x 192 values
    monkeypatch.setattr(salience.schedule, "MAX_ROW_VALUES", 3 * 10 * 192 - 1)
    with pytest.raises(ValueError, match="30 rows of 192 values"):
        method.explain(analytic, images, 0)
    monkeypatch.setattr(salience.schedule, "MAX_ROW_VALUES", 3 * 10 * 192)
    assert method.explain(analytic, images, 0).shape == images.shape
