"""Methods whose own work per chunk is a few whole-array kernels (Blur IG's blur,
SmoothGrad's noise, RISE's and Score-CAM's masks) overlap it with the model from
the first chunk once a chunk holds ARRAY_WORK_OVERLAP_VALUES values, and leave
smaller chunks to the scheduler's measure; either way the maps are the serial ones."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import salience
from salience.schedule import ARRAY_WORK_OVERLAP_VALUES, overlap_for_array_work

SIZE = 32  # 3072 values a row: 22 rows reach ARRAY_WORK_OVERLAP_VALUES

METHODS = {
    "blur_ig": lambda b: salience.BlurIG(max_sigma=8, steps=24, batch_size=b),
    "smoothgrad": lambda b: salience.SmoothGrad(salience.Gradients(batch_size=b),
                                                nsamples=24, seed=0),
    "rise": lambda b: salience.RISE(n_masks=48, grid_size=5, seed=0, batch_size=b),
    "score_cam": lambda b: salience.ScoreCAM(batch_size=b),
}


def test_overlap_for_array_work_starts_at_its_value_count():
    assert overlap_for_array_work(1, 5, ARRAY_WORK_OVERLAP_VALUES) is True
    assert overlap_for_array_work(2, 5, ARRAY_WORK_OVERLAP_VALUES // 2) is True
    assert overlap_for_array_work(2, 5, ARRAY_WORK_OVERLAP_VALUES // 2 - 1) is None
    # the largest chunk counts: a batch_size above the rows there are makes no larger one
    assert overlap_for_array_work(64, 1, ARRAY_WORK_OVERLAP_VALUES // 2) is None
    assert overlap_for_array_work(64, 2, ARRAY_WORK_OVERLAP_VALUES // 2) is True


@pytest.mark.parametrize("module", list(METHODS))
@pytest.mark.parametrize("batch_size, overlap", [(32, True), (8, None)])
def test_chunk_size_decides_the_overlap_and_the_maps_are_the_serial_ones(
        module, batch_size, overlap, model_classes, monkeypatch):
    method_module = importlib.import_module(f"salience.methods.{module}")
    run_rows, asked = method_module.run_rows, []

    def noting(*args, **kwargs):
        asked.append(kwargs.get("overlap"))
        return run_rows(*args, **kwargs)

    def forced_serial(*args, **kwargs):
        return run_rows(*args, **{**kwargs, "overlap": False})

    model = model_classes[0](shape=(SIZE, SIZE, 3))
    model.W *= 0.05  # keep tanh away from saturation on this many pixels
    # Score-CAM has one row per image and layer channel (3 here): 16 images make 48 rows
    images = 16 if module == "score_cam" else 2
    x = np.random.default_rng(0).random((images, SIZE, SIZE, 3))
    method = METHODS[module](batch_size)
    monkeypatch.setattr(method_module, "run_rows", noting)
    maps = method.explain(model, x, 1)
    assert asked == [overlap]
    monkeypatch.setattr(method_module, "run_rows", forced_serial)
    np.testing.assert_array_equal(maps, method.explain(model, x, 1))


@pytest.mark.threading
@pytest.mark.parametrize("module", list(METHODS))
def test_threads_sharing_a_torch_model_get_the_serial_maps_when_chunks_overlap(module):
    # 32 rows of 32 x 32 x 3 a chunk: every run overlaps its own work with the model,
    # each on its own helper thread, four runs at a time on one wrapped module.
    from concurrent.futures import ThreadPoolExecutor

    torch = pytest.importorskip("torch")
    import salience.torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5)).double()
    model = salience.torch.wrap(net, layer=net[1])
    images = 12 if module == "score_cam" else 2  # Score-CAM: 4 rows an image here
    x = np.random.default_rng(1).random((images, 3, SIZE, SIZE))
    method = METHODS[module](32)
    serial = method.explain(model, x, 3)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: method.explain(model, x, 3), range(8)))
    for maps in results:
        np.testing.assert_array_equal(maps, serial)
