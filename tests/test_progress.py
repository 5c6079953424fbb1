"""Progress of long calls: events from salience.explain and Method.explain, counted per
model call (never per row), the same maps with and without progress, a bar on stderr."""

from __future__ import annotations

import numpy as np
import pytest

import salience
from salience import progress as progress_module
from salience.methods import Gradients, IntegratedGradients, Occlusion, SmoothGrad
from salience.progress import ProgressBar, ProgressEvent


@pytest.fixture
def every_event(monkeypatch):
    """Report every chunk (no 0.1 s throttle), so tests see each model call."""
    monkeypatch.setattr(progress_module, "EVENT_INTERVAL", 0.0)


def test_explain_reports_each_method_and_group_and_ends_at_the_total(model_classes, images):
    analytic_cls, _ = model_classes
    events: list[ProgressEvent] = []
    salience.explain(analytic_cls(), images, ["gradients", "integrated_gradients"],
                     group_size=2, progress=events.append)
    assert {e.stage for e in events} == {"explain"}
    assert all(e.total == 2 * 3 and e.n_images == 3 for e in events)
    completed = [e.completed for e in events]
    assert completed == sorted(completed) and completed[-1] == 6
    assert events[0].method is None  # predicting comes first
    methods = [e.method for e in events[1:]]
    switch = methods.index("integrated_gradients")
    assert set(methods[:switch]) == {"gradients"}
    assert set(methods[switch:]) == {"integrated_gradients"}
    groups = {(e.method, e.images) for e in events[1:]}
    assert {(m, g) for m in ("gradients", "integrated_gradients")
            for g in (range(0, 2), range(2, 3))} <= groups


def test_rows_move_the_progress_within_a_group_once_per_model_call(model_classes, images,
                                                                   every_event):
    analytic_cls, _ = model_classes
    model = analytic_cls()
    events: list[ProgressEvent] = []
    # 3 images x 10 steps = 30 rows in chunks of 7: 5 model calls
    IntegratedGradients(steps=10, batch_size=7).explain(model, images, progress=events.append)
    assert model.calls == 5
    inside = [e for e in events if 0 < e.completed < 3]
    assert len(inside) == 4  # one per model call but the last, which completes the group
    np.testing.assert_allclose([e.completed for e in inside],
                               [3 * rows / 30 for rows in (7, 14, 21, 28)])
    # rows are image-major: the images each call covered
    assert [e.images for e in inside] == [range(0, 1), range(0, 2), range(1, 3), range(2, 3)]
    assert events[-1].completed == 3 and events[-1].method == "IntegratedGradients"


def test_smoothgrad_copies_are_counted_as_their_images(model_classes, images, every_event):
    analytic_cls, _ = model_classes
    events: list[ProgressEvent] = []
    # 3 images x 4 noisy copies = 12 rows in calls of 5: the copies of image 0 are rows 0-3
    SmoothGrad(Gradients(batch_size=5), nsamples=4, seed=0).explain(
        analytic_cls(), images, progress=events.append)
    inside = [e.images for e in events if 0 < e.completed < 3]
    assert inside == [range(0, 2), range(1, 3)]  # rows 0-4, then rows 5-9


def test_progress_changes_no_number_and_no_call(model_classes, images, every_event):
    analytic_cls, _ = model_classes
    method = SmoothGrad(IntegratedGradients(steps=5, batch_size=4), nsamples=3, seed=0)
    quiet_model, watched_model = analytic_cls(), analytic_cls()
    quiet = method.explain(quiet_model, images)
    watched = method.explain(watched_model, images, progress=lambda event: None)
    np.testing.assert_array_equal(watched, quiet)
    assert (watched_model.calls, watched_model.rows) == (quiet_model.calls, quiet_model.rows)
    methods = {"sg": method, "occlusion": Occlusion(size=4, stride=2, batch_size=5)}
    plain = salience.explain(analytic_cls(), images, methods, group_size=2)
    shown = salience.explain(analytic_cls(), images, methods, group_size=2,
                             progress=lambda event: None)
    for name in plain.maps:
        np.testing.assert_array_equal(shown.maps[name], plain.maps[name])
    assert shown.rows == plain.rows and shown.calls == plain.calls


def test_a_failing_method_still_brings_the_bar_to_its_end(model_classes, images):
    analytic_cls, _ = model_classes

    class Broken(Gradients):
        def _explain(self, model, x, targets):
            raise RuntimeError("boom")

    events: list[ProgressEvent] = []
    result = salience.explain(analytic_cls(), images, {"broken": Broken(), "g": Gradients()},
                              errors="collect", progress=events.append)
    assert "broken" in result.errors
    assert events[-1].completed == events[-1].total == 6


def test_bad_progress_is_refused_before_the_model_runs(model_classes, images):
    analytic_cls, _ = model_classes
    model = analytic_cls()
    with pytest.raises(TypeError, match="progress must be True, False, None or a callable"):
        salience.explain(model, images, ["gradients"], progress="yes")
    with pytest.raises(TypeError, match="got str"):
        Gradients().explain(model, images, progress="yes")
    assert model.calls == 0


def test_progress_true_draws_a_bar_on_stderr(model_classes, images, capsys):
    analytic_cls, _ = model_classes
    salience.explain(analytic_cls(), images, ["gradients", "integrated_gradients"],
                     progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "explaining" in captured.err and "6/6" in captured.err


def test_the_bar_names_images_and_falls_back_to_text_lines(monkeypatch, capsys):
    event = ProgressEvent("explain", "xrai", range(1, 2), 3, 1.5, 6, 2.0)
    assert event.describe(["cat.png", "dog.png", "owl.png"]) == "xrai: dog.png (2/3)"
    assert event.describe() == "xrai: image (2/3)"
    several = ProgressEvent("metrics", "gradients", range(0, 3), 3, 0.5, 3, 1.0)
    assert several.describe() == "gradients: images 1-3 of 3"
    import builtins

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name.startswith("rich"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    with ProgressBar(image_names=["cat.png", "dog.png", "owl.png"]) as bar:
        bar(event)
    assert capsys.readouterr().err == "explaining: xrai: dog.png (2/3) [2/6, 2 s]\n"
