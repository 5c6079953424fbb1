"""The masked-row methods (Score-CAM, RISE, LIME, Kernel SHAP) give the same maps
when the row scheduler builds and consumes their chunks on its helper thread as
when every row goes to the model in one serial call."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import salience

SIZE = 64


class ThreadNoting:
    """Forwards to a model and notes whether the scheduler's helper thread was alive."""

    def __init__(self, model):
        self.model = model
        self.helper_seen = False
        self.channels_last = True

    def __call__(self, x, targets, keys):
        alive = [t.name for t in threading.enumerate()]
        self.helper_seen |= any(name.startswith("salience-rows") for name in alive)
        return self.model(x, targets, keys)


def make(name, batch_size):
    return {
        "ScoreCAM": lambda: salience.ScoreCAM(batch_size=batch_size),
        "RISE": lambda: salience.RISE(n_masks=64, grid_size=5, seed=0, batch_size=batch_size),
        "LIME": lambda: salience.LIME(n_samples=64, n_segments=9, seed=0,
                                      batch_size=batch_size),
        "KernelSHAP": lambda: salience.KernelSHAP(n_samples=64, n_segments=9, seed=0,
                                                  batch_size=batch_size),
    }[name]()


@pytest.mark.parametrize("name", ["ScoreCAM", "RISE", "LIME", "KernelSHAP"])
def test_helper_thread_gives_the_serial_maps(name, model_classes, monkeypatch):
    # Every chunk's own work counts as worth the helper thread, whatever the machine.
    monkeypatch.setattr(salience.schedule, "_WORTH_A_THREAD_S", 0.0)
    analytic_cls, _ = model_classes
    analytic = analytic_cls(shape=(SIZE, SIZE, 3))
    analytic.W *= 0.05  # keep tanh away from saturation on this many pixels
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3))
    serial = ThreadNoting(analytic)
    one_call = make(name, batch_size=10_000).explain(serial, x, 1)
    overlapped = ThreadNoting(analytic)
    # Score-CAM has one row per image and layer channel (3 here): chunks of 2
    chunked = make(name, batch_size=2 if name == "ScoreCAM" else 16).explain(overlapped, x, 1)
    assert not serial.helper_seen and overlapped.helper_seen
    np.testing.assert_allclose(chunked, one_call, rtol=1e-10, atol=1e-12 * np.abs(one_call).max())


@pytest.mark.parametrize("is_last", [False, True])
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_apply_masks_gives_each_row_its_own_images_masked_copy(is_last, baseline):
    from salience.methods.masking import apply_masks

    rng = np.random.default_rng(0)
    images = rng.random((3, 5, 4, 2) if is_last else (3, 2, 5, 4)).astype(np.float32)
    owners = np.array([0, 0, 1, 2, 2, 2])  # runs of rows of one image, as chunks hold them
    masks = rng.random((len(owners), 5, 4))
    rows = apply_masks(images, owners, masks, is_last, baseline)
    assert rows.dtype == np.float32 and rows.shape == (len(owners), *images.shape[1:])
    for r, owner in enumerate(owners):
        mask = masks[r][..., None] if is_last else masks[r][None]
        expected = baseline + (images[owner].astype(np.float64) - baseline) * mask
        np.testing.assert_allclose(rows[r], expected, rtol=1e-6, atol=1e-7)
