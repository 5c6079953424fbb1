"""Grad-CAM: the weighted sum, per-image resize, broadcasting and layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.transform import resize

import salience
from salience.model import CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS


class PooledLayerModel:
    """A 'layer' of (n, h, w, k) values at a quarter of the input's resolution, with
    gradients that depend on the target; channels first when asked."""

    def __init__(self, channels_last=True, k=5, seed=0):
        self.channels_last = channels_last
        self.mix = np.random.default_rng(seed).normal(size=(3, k))  # input channel -> layer
        self.weights = np.random.default_rng(seed + 1).normal(size=(4, k))  # per target
        self.calls = 0

    def _layer(self, x):
        if not self.channels_last:
            x = np.moveaxis(x, 1, -1)
        n, height, width, c = x.shape
        pooled = x.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))
        return np.tanh(pooled @ self.mix)

    def __call__(self, x, targets, keys):
        self.calls += 1
        values = self._layer(x)
        t = np.zeros(len(x), int) if targets is None else targets
        grads = values**2 * self.weights[t][:, None, None, :] + self.weights[t][:, None, None, :]
        if not self.channels_last:
            values, grads = np.moveaxis(values, -1, 1), np.moveaxis(grads, -1, 1)
        return {CONVOLUTION_LAYER_VALUES: values, CONVOLUTION_OUTPUT_GRADIENTS: grads}


def _cam_by_hand(model, image, target):
    """PAIR's loop over layer channels, for one channels-last image."""
    batch = image[None] if model.channels_last else np.moveaxis(image, -1, 0)[None]
    out = model(batch, np.array([target]), None)
    values, grads = out[CONVOLUTION_LAYER_VALUES][0], out[CONVOLUTION_OUTPUT_GRADIENTS][0]
    if not model.channels_last:
        values, grads = np.moveaxis(values, 0, -1), np.moveaxis(grads, 0, -1)
    cam = np.zeros(values.shape[:2])
    for channel, weight in enumerate(grads.mean(axis=(0, 1))):
        cam += weight * values[:, :, channel]
    return np.maximum(cam, 0)


@pytest.fixture
def x():
    return np.random.default_rng(2).normal(size=(4, 12, 10, 3))


TARGETS = np.array([0, 1, 2, 3])


def test_raw_map_is_relu_of_weighted_channels(x):
    model = PooledLayerModel()
    cams = salience.GradCAM(resize=False).explain(model, x, TARGETS)
    assert cams.shape == (4, 6, 5)
    for i in range(4):
        np.testing.assert_allclose(cams[i], _cam_by_hand(model, x[i], TARGETS[i]), rtol=1e-10,
                                   atol=1e-12)
    assert (cams >= 0).all() and (cams > 0).any()


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_resize_equals_per_image_skimage_resize(batch_size, x):
    model = PooledLayerModel()
    maps = salience.GradCAM(batch_size=batch_size).explain(model, x, TARGETS)
    assert model.calls == math.ceil(4 / batch_size)
    assert maps.shape == (4, 12, 10)
    for i in range(4):
        cam = _cam_by_hand(model, x[i], TARGETS[i])
        if cam.max() > 0:
            cam = cam / cam.max()
        np.testing.assert_allclose(maps[i], resize(cam, (12, 10)), rtol=1e-10, atol=1e-12)
        assert maps[i].max() <= 1 + 1e-12


def test_all_zero_map_stays_zero(x):
    model = PooledLayerModel()
    model.weights[:] = -10.0  # every channel weighted negatively: ReLU removes everything...
    model.mix = np.abs(model.mix)  # ...as long as activations have one sign
    maps = salience.GradCAM().explain(model, np.abs(x), TARGETS)
    assert np.isfinite(maps).all()
    np.testing.assert_array_equal(maps, 0)


def test_broadcast_repeats_over_channels(x):
    model = PooledLayerModel()
    plain = salience.GradCAM().explain(model, x, TARGETS)
    wide = salience.GradCAM(broadcast=True).explain(model, x, TARGETS)
    assert wide.shape == x.shape
    for c in range(3):
        np.testing.assert_array_equal(wide[..., c], plain)


def test_channels_first_equals_channels_last(x):
    last = salience.GradCAM(broadcast=True).explain(PooledLayerModel(True), x, TARGETS)
    first = salience.GradCAM(broadcast=True).explain(
        PooledLayerModel(False), np.moveaxis(x, -1, 1), TARGETS
    )
    assert first.shape == (4, 3, 12, 10)
    np.testing.assert_allclose(np.moveaxis(first, 1, -1), last, rtol=1e-10, atol=1e-12)


def test_downsizing_equals_per_image_resize():
    # a layer larger than the input (anti-aliased downsizing in scikit-image)
    class Upsampled(PooledLayerModel):
        def _layer(self, x):
            return np.tanh(np.repeat(np.repeat(x, 3, axis=1), 3, axis=2) @ self.mix)

    model = Upsampled()
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 3))
    maps = salience.GradCAM().explain(model, x, [1, 2])
    for i, t in enumerate([1, 2]):
        cam = _cam_by_hand(model, x[i], t)
        np.testing.assert_allclose(maps[i], resize(cam / cam.max(), (6, 6)), rtol=1e-10,
                                   atol=1e-12)


def test_broadcast_needs_resize():
    with pytest.raises(ValueError, match="broadcast=True needs resize=True"):
        salience.GradCAM(resize=False, broadcast=True)


def test_layer_of_wrong_rank_is_explained(x):
    def model(batch, targets, keys):
        return {CONVOLUTION_LAYER_VALUES: np.ones((len(batch), 5)),
                CONVOLUTION_OUTPUT_GRADIENTS: np.ones((len(batch), 5))}

    with pytest.raises(ValueError, match=r"Grad-CAM needs layer values.*\(4, 5\)"):
        salience.GradCAM().explain(model, x)
