"""evaluate_maps: the report's per-image values, their names, the score, progress."""

from __future__ import annotations

import numpy as np
import pytest

from salience import progress as progress_module
from salience.metrics import METRICS, evaluate_maps, insertion_deletion_curves

pytest.importorskip("PIL")


class ScaledLinear:
    """Logits ``scale * [s, -s, 0]`` with ``s`` the mean of the (n, H, W, C) input."""

    channels_last = True

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def predict(self, x):
        s = np.asarray(x, dtype=np.float64).mean(axis=(1, 2, 3))
        return self.scale * np.stack([s, -s, np.zeros_like(s)], axis=1)

    def __call__(self, x, targets, keys):
        logits = self.predict(x)
        return {"OUTPUT_LAYER_VALUES": logits[np.arange(len(x)), targets]}


def _inputs(n=2, size=16):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    x = np.stack(images).astype(np.float64) / 255
    maps = {"a": rng.random((n, size, size)), "b": rng.random((n, size, size, 3))}
    return images, x, maps


def test_every_value_is_named_with_which_way_is_better():
    images, x, maps = _inputs()
    values = evaluate_maps(ScaledLinear(3.0), x, images, maps, np.zeros(2, dtype=int),
                           lambda batch: np.asarray(batch, dtype=np.float64) / 255, steps=4)
    assert set(values[0]["a"]) == set(METRICS)
    assert {info.better for info in METRICS.values()} == {"higher", "lower"}
    assert METRICS["deletion_auc"].better == "lower" and METRICS["insertion_auc"].label
    assert all(info.description.endswith(".") for info in METRICS.values())


def test_insertion_deletion_follow_the_class_probability_as_in_python():
    images, x, maps = _inputs()
    targets = np.zeros(2, dtype=int)
    preprocess = lambda batch: np.asarray(batch, dtype=np.float64) / 255  # noqa: E731
    for scale in (1.0, 50.0):
        model = ScaledLinear(scale)
        values = evaluate_maps(model, x, images, {"a": maps["a"]}, targets, preprocess,
                               steps=4)
        ins, dele = insertion_deletion_curves(model, x, maps["a"], targets, steps=4)
        assert ins.score == "probability"
        for i in range(2):
            assert values[i]["a"]["insertion_auc"] == pytest.approx(ins.auc[i])
            assert values[i]["a"]["deletion_auc"] == pytest.approx(dele.auc[i])
            assert 0 <= values[i]["a"]["insertion_auc"] <= 1
    raw = evaluate_maps(ScaledLinear(50.0), x, images, {"a": maps["a"]}, targets, preprocess,
                        steps=4, score="output")
    ins, _ = insertion_deletion_curves(ScaledLinear(50.0), x, maps["a"], targets, steps=4,
                                       score="output")
    assert raw[0]["a"]["insertion_auc"] == pytest.approx(ins.auc[0])
    assert raw[0]["a"]["insertion_auc"] > 1  # logits are not probabilities
    with pytest.raises(ValueError, match="score must be one of"):
        evaluate_maps(ScaledLinear(1.0), x, images, maps, targets, preprocess, score="logits")


def test_progress_covers_every_method_and_image_and_times_each_method(monkeypatch):
    monkeypatch.setattr(progress_module, "EVENT_INTERVAL", 0.0)
    images, x, maps = _inputs(n=3)
    events, seconds = [], {}
    evaluate_maps(ScaledLinear(3.0), x, images, maps, np.zeros(3, dtype=int),
                  lambda batch: np.asarray(batch, dtype=np.float64) / 255, steps=4,
                  batch_size=4, progress=events.append, seconds=seconds)
    assert {e.stage for e in events} == {"metrics"} and events[-1].completed == 6 == \
        events[-1].total
    completed = [e.completed for e in events]
    assert completed == sorted(completed)
    assert [m for m in dict.fromkeys(e.method for e in events)] == ["a", "b"]
    # PIC runs image by image: each image of each method is named on its own
    singles = {(e.method, e.images) for e in events if len(e.images) == 1}
    assert {(m, range(i, i + 1)) for m in "ab" for i in range(3)} <= singles
    assert any(0 < e.completed < 3 and e.completed != int(e.completed) for e in events)
    assert set(seconds) == {"a", "b"} and all(s > 0 for s in seconds.values())
