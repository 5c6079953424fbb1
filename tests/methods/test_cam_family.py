"""The CAM family (Grad-CAM++, XGrad-CAM, HiResCAM, Layer-CAM, Eigen-CAM, Score-CAM,
Guided Grad-CAM): each map against its paper's formula written out with loops,
layouts, batching, call counts and the shared finishing (resize, broadcast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.transform import resize

import salience
from salience.methods import score_cam
from salience.methods.grad_cam_plus_plus import grad_cam_plus_plus_weights
from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    GUIDED_INPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)


class LayerModel:
    """A 'layer' A = tanh(2x2-pooled x @ mix), shape (n, h, w, k), and the score
    sum(w_t * A + v_t * A^2 / 2), so dscore/dA = w_t + v_t * A varies by position.
    Channels first when asked (then contiguous (n, k, h, w) arrays, as PyTorch's
    default memory order); counts calls and rows."""

    def __init__(self, channels_last=True, k=5, seed=0):
        rng = np.random.default_rng(seed)
        self.channels_last = channels_last
        self.mix = rng.normal(size=(3, k))
        self.w = rng.normal(size=(4, k))
        self.v = rng.normal(size=(4, k))
        self.calls, self.rows = 0, 0

    def layer(self, x):
        if not self.channels_last:
            x = np.moveaxis(x, 1, -1)
        n, height, width, c = x.shape
        pooled = x.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))
        return np.tanh(pooled @ self.mix)

    def __call__(self, x, targets, keys):
        self.calls += 1
        self.rows += len(x)
        a = self.layer(x)
        t = np.zeros(len(x), int) if targets is None else targets
        w, v = self.w[t][:, None, None, :], self.v[t][:, None, None, :]
        out = {OUTPUT_LAYER_VALUES: (w * a + v * a**2 / 2).sum(axis=(1, 2, 3)),
               CONVOLUTION_LAYER_VALUES: a, CONVOLUTION_OUTPUT_GRADIENTS: w + v * a}
        if not self.channels_last:
            for key in (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS):
                out[key] = np.ascontiguousarray(np.moveaxis(out[key], -1, 1))
        return {key: out[key] for key in keys}


TARGETS = np.array([0, 1, 2, 3])


@pytest.fixture
def x():
    return np.random.default_rng(2).normal(size=(4, 12, 10, 3))


def _layer(model, image, target):
    """(h, w, k) values and gradients of one channels-last image."""
    out = LayerModel.__call__(model, image[None], np.array([target]),
                              [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS])
    model.calls -= 1
    model.rows -= 1
    a, g = out[CONVOLUTION_LAYER_VALUES][0], out[CONVOLUTION_OUTPUT_GRADIENTS][0]
    return a, g


def _weighted_sum(a, weights):
    cam = np.zeros(a.shape[:2])
    for k, weight in enumerate(weights):
        cam += weight * a[:, :, k]
    return np.maximum(cam, 0)


def plus_plus_by_hand(a, g, eps):
    h, w, k = a.shape
    weights = np.zeros(k)
    for c in range(k):
        total = a[:, :, c].sum()
        for i in range(h):
            for j in range(w):
                gij = g[i, j, c]
                if gij != 0:
                    alpha = gij**2 / (2 * gij**2 + total * gij**3 + eps)
                    weights[c] += alpha * max(gij, 0.0)
    return _weighted_sum(a, weights)


def xgrad_by_hand(a, g, eps):
    weights = [(a[:, :, c] / (a[:, :, c].sum() + eps) * g[:, :, c]).sum()
               for c in range(a.shape[2])]
    return _weighted_sum(a, weights)


def hires_by_hand(a, g):
    cam = sum(g[:, :, c] * a[:, :, c] for c in range(a.shape[2]))
    return np.maximum(cam, 0)


def layer_cam_by_hand(a, g):
    cam = sum(np.maximum(g[:, :, c], 0) * a[:, :, c] for c in range(a.shape[2]))
    return np.maximum(cam, 0)


BY_HAND = {
    "GradCAMPlusPlus": (lambda: salience.GradCAMPlusPlus(resize=False),
                        lambda a, g: plus_plus_by_hand(a, g, 1e-6)),
    "GradCAMPlusPlus-eps0": (lambda: salience.GradCAMPlusPlus(eps=0, resize=False),
                             lambda a, g: plus_plus_by_hand(a, g, 0.0)),
    "XGradCAM": (lambda: salience.XGradCAM(resize=False), lambda a, g: xgrad_by_hand(a, g, 1e-7)),
    "HiResCAM": (lambda: salience.HiResCAM(resize=False), hires_by_hand),
    "LayerCAM": (lambda: salience.LayerCAM(resize=False), layer_cam_by_hand),
}


# 5 channels on 6 x 5 positions, and 40; the kernels see the layer as (n, k, h, w)
# views of either memory order (see cam_base.layer_arrays).
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc-memory", "nchw-memory"])
@pytest.mark.parametrize("k", [5, 40])
@pytest.mark.parametrize("name", list(BY_HAND))
def test_raw_maps_follow_the_papers_formulas(name, k, channels_last, x):
    make, by_hand = BY_HAND[name]
    model = LayerModel(channels_last=channels_last, k=k)
    images = x if channels_last else np.moveaxis(x, -1, 1)
    cams = make().explain(model, images, TARGETS)
    assert cams.shape == (4, 6, 5)
    for i in range(4):
        expected = by_hand(*_layer(LayerModel(k=k), x[i], TARGETS[i]))
        np.testing.assert_allclose(cams[i], expected, rtol=1e-10, atol=1e-12)
    assert (cams >= 0).all() and (cams > 0).any()


def test_the_methods_differ_from_each_other_and_from_grad_cam(x):
    # The analytic model's gradients vary by position, so every weighting differs.
    model = LayerModel()
    maps = [cls(resize=False).explain(model, x, TARGETS) for cls in
            (salience.GradCAM, salience.GradCAMPlusPlus, salience.XGradCAM, salience.HiResCAM,
             salience.LayerCAM, salience.EigenCAM)]
    for a in range(len(maps)):
        for b in range(a + 1, len(maps)):
            assert not np.allclose(maps[a], maps[b])


def test_hires_cam_sums_to_the_score_of_a_linear_head():
    # score = sum_ijk W_k A_ijk: HiResCAM before its ReLU is the score split by position.
    model = LayerModel(k=4)
    model.v[:] = 0
    model.w = np.abs(model.w)
    model.mix = np.abs(model.mix)
    x = np.abs(np.random.default_rng(3).normal(size=(2, 8, 8, 3)))
    cams = salience.HiResCAM(resize=False).explain(model, x, np.array([0, 1]))
    scores = model(x, np.array([0, 1]), [OUTPUT_LAYER_VALUES])[OUTPUT_LAYER_VALUES]
    np.testing.assert_allclose(cams.sum(axis=(1, 2)), scores, rtol=1e-12)


def eigen_by_hand(a):
    h, w, k = a.shape
    m = a.reshape(h * w, k)
    m = m - m.mean(axis=0)
    # first principal direction: the leading eigenvector of the covariance
    vals, vecs = np.linalg.eigh(m.T @ m)
    v = vecs[:, np.argmax(vals)]
    p = (m @ v).reshape(h, w)
    total = m.sum(axis=1).reshape(h, w)  # centred activation of each position
    if (p * total).sum() < 0:
        p = -p
    return np.maximum(p, 0)


def test_eigen_cam_is_the_first_principal_component_signed_by_total_activation(x):
    model = LayerModel(k=6)
    cams = salience.EigenCAM(resize=False).explain(model, x, TARGETS)
    for i in range(4):
        a, _ = _layer(model, x[i], TARGETS[i])
        np.testing.assert_allclose(cams[i], eigen_by_hand(a), rtol=1e-8, atol=1e-10)


def test_eigen_cam_needs_no_gradients_and_ignores_the_target(x):
    model = LayerModel()
    seen = []

    def values_only(batch, targets, keys):
        seen.append(list(keys))
        return model(batch, targets, keys)

    a = salience.EigenCAM().explain(values_only, x, TARGETS)
    b = salience.EigenCAM().explain(values_only, x, TARGETS[::-1].copy())
    np.testing.assert_array_equal(a, b)
    assert seen == [[CONVOLUTION_LAYER_VALUES]] * 2


def score_cam_by_hand(model, image, target, align_corners):
    """Algorithm 1 of the paper, one channel at a time (channels-last image)."""
    a, _ = _layer(model, image, target)
    height, width = image.shape[:2]
    scores = []
    for c in range(a.shape[2]):
        up = _bilinear(a[:, :, c], (height, width), align_corners)
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        masked = image * mask[:, :, None]
        out = LayerModel.__call__(model, masked[None], np.array([target]), [OUTPUT_LAYER_VALUES])
        scores.append(out[OUTPUT_LAYER_VALUES][0])
    scores = np.array(scores)
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    return _weighted_sum(a, weights)


def test_score_cam_masks_scale_channels_to_the_unit_interval_and_damp_noise():
    from salience.methods.score_cam import channel_masks

    channels = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), 3.0),
                         3.0 + 1e-12 * np.arange(4.0).reshape(2, 2)])
    masks = channel_masks(channels, (5, 5), align_corners=True)
    np.testing.assert_allclose([masks[0].min(), masks[0].max()], [0, 1], atol=1e-8)
    np.testing.assert_array_equal(masks[1], 0)  # constant channel: no mask at all
    assert masks[2].max() < 1e-3  # rounding-noise channel: not stretched to [0, 1]


def test_score_cam_masks_in_float32_are_the_float64_masks_rounded_once():
    from salience.methods.score_cam import channel_masks

    channels = np.random.default_rng(4).random((6, 7, 7)).astype(np.float32)
    channels[2] = 0.3  # constant: a zero mask in either precision
    wide = channel_masks(channels, (30, 30), align_corners=False)
    narrow = channel_masks(channels, (30, 30), align_corners=False, dtype=np.float32)
    assert wide.dtype == np.float64 and narrow.dtype == np.float32
    np.testing.assert_array_equal(narrow, wide.astype(np.float32))
    np.testing.assert_array_equal(narrow[2], 0)


def test_score_cam_weights_are_a_softmax_that_cannot_overflow():
    from salience.methods.score_cam import score_cam_weights

    scores = np.array([[0.0, 1.0, 2.0], [1000.0, 999.0, -1000.0]])
    weights = score_cam_weights(scores)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-15)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(weights[0], e / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(weights[1], [1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0],
                               rtol=1e-15, atol=1e-300)


def _bilinear(img, size, align_corners):
    """PyTorch's bilinear upsampling, one output pixel at a time."""
    h, w = img.shape

    def positions(n_in, n_out):
        if align_corners:
            return np.linspace(0, n_in - 1, n_out)
        return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)

    out = np.empty(size)
    for i, r in enumerate(positions(h, size[0])):
        r0 = min(int(np.floor(r)), h - 2)
        for j, c in enumerate(positions(w, size[1])):
            c0 = min(int(np.floor(c)), w - 2)
            fr, fc = r - r0, c - c0
            out[i, j] = ((1 - fr) * (1 - fc) * img[r0, c0] + (1 - fr) * fc * img[r0, c0 + 1]
                         + fr * (1 - fc) * img[r0 + 1, c0] + fr * fc * img[r0 + 1, c0 + 1])
    return out


def test_bilinear_matrices_equal_torch_upsampling():
    torch = pytest.importorskip("torch")
    from salience.methods.cam_base import bilinear_matrix

    a = np.random.default_rng(0).normal(size=(1, 1, 5, 7))
    for align_corners in (True, False):
        for size in [(5, 7), (12, 9), (224, 224), (5, 1)]:
            expected = torch.nn.functional.interpolate(
                torch.tensor(a), size=size, mode="bilinear", align_corners=align_corners)
            got = (bilinear_matrix(5, size[0], align_corners) @ a[0, 0]
                   @ bilinear_matrix(7, size[1], align_corners).T)
            np.testing.assert_allclose(got, expected[0, 0].numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 7, 64])
@pytest.mark.parametrize("all_at_once", [True, False], ids=["all-masks", "chunk-masks"])
def test_score_cam_follows_the_algorithm_and_batches_its_masked_rows(align_corners, batch_size,
                                                                      all_at_once, x,
                                                                      monkeypatch):
    # A run's masks are made in one call when they are few (these 20), else per chunk.
    if not all_at_once:
        monkeypatch.setattr(score_cam, "_ALL_MASKS_VALUES", 19 * 12 * 10)
    model = LayerModel(k=5)
    cams = salience.ScoreCAM(align_corners=align_corners, resize=False,
                             batch_size=batch_size).explain(model, x, TARGETS)
    n, k = len(x), 5
    # one layer row per image, then one masked row per image and channel
    assert model.rows == n + n * k
    assert model.calls == math.ceil(n / batch_size) + math.ceil(n * k / batch_size)
    for i in range(n):
        expected = score_cam_by_hand(model, x[i], TARGETS[i], align_corners)
        np.testing.assert_allclose(cams[i], expected, rtol=1e-9, atol=1e-12)


def test_score_cam_masks_every_layout_alike(x):
    last = salience.ScoreCAM(batch_size=8).explain(LayerModel(True), x, TARGETS)
    first = salience.ScoreCAM(batch_size=8).explain(LayerModel(False), np.moveaxis(x, -1, 1),
                                                    TARGETS)
    np.testing.assert_allclose(first, last, rtol=1e-10, atol=1e-12)


ALL_CAMS = [salience.GradCAM, salience.GradCAMPlusPlus, salience.XGradCAM, salience.HiResCAM,
            salience.LayerCAM, salience.EigenCAM, salience.ScoreCAM]


@pytest.mark.parametrize("k", [5, 40])
@pytest.mark.parametrize("cls", ALL_CAMS, ids=lambda c: c.__name__)
def test_channels_first_equals_channels_last(cls, k, x):
    last = cls(broadcast=True).explain(LayerModel(True, k=k), x, TARGETS)
    first = cls(broadcast=True).explain(LayerModel(False, k=k), np.moveaxis(x, -1, 1),
                                        TARGETS)
    assert first.shape == (4, 3, 12, 10)
    np.testing.assert_allclose(np.moveaxis(first, 1, -1), last, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", ALL_CAMS, ids=lambda c: c.__name__)
def test_resized_maps_are_the_raw_maps_scaled_and_resized(cls, x):
    model = LayerModel()
    raw = cls(resize=False).explain(model, x, TARGETS)
    maps = cls().explain(model, x, TARGETS)
    assert maps.shape == (4, 12, 10)
    for i in range(4):
        scaled = raw[i] / raw[i].max() if raw[i].max() > 0 else raw[i]
        np.testing.assert_allclose(maps[i], resize(scaled, (12, 10)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", ALL_CAMS, ids=lambda c: c.__name__)
def test_batch_equals_one_by_one(cls, x):
    together = cls(batch_size=3).explain(LayerModel(), x, TARGETS)
    for i in range(4):
        alone = cls(batch_size=1).explain(LayerModel(), x[i:i + 1], TARGETS[i:i + 1])
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-10, atol=1e-12)


class RunSetUpModel(LayerModel):
    """Counts how often a method run holds the model's set-up for all its calls."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def calls_of_one_run(self):
        import contextlib

        self.runs += 1
        return contextlib.nullcontext()


@pytest.mark.parametrize("cls", ALL_CAMS, ids=lambda c: c.__name__)
def test_a_run_of_one_call_leaves_the_set_up_to_the_call(cls, x):
    # One layer call for the whole batch: the call sets itself up, so the run does
    # not (an adapter's eval mode set and undone twice); more calls share one set-up.
    one, two = RunSetUpModel(), RunSetUpModel()
    together = cls(batch_size=4).explain(one, x, TARGETS)
    chunked = cls(batch_size=2).explain(two, x, TARGETS)
    masks_after_layer = cls is salience.ScoreCAM  # a layer call, then the masked inputs'
    assert (one.calls, one.runs) == ((one.calls, 1) if masks_after_layer else (1, 0))
    assert two.calls > 1 and two.runs == 1
    np.testing.assert_allclose(together, chunked, rtol=1e-10, atol=1e-12)


def test_a_half_precision_layer_is_weighed_in_float32(x):
    class HalfLayerModel(LayerModel):
        def __call__(self, x, targets, keys):
            return {k: v.astype(np.float16) for k, v in super().__call__(x, targets, keys).items()}

    half = salience.GradCAM(resize=False).explain(HalfLayerModel(), x.astype(np.float32), TARGETS)
    out = HalfLayerModel()(x, TARGETS, [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS])
    a, g = (out[k].astype(np.float32) for k in (CONVOLUTION_LAYER_VALUES,
                                                 CONVOLUTION_OUTPUT_GRADIENTS))
    weights = g.mean(axis=(1, 2), dtype=np.float32)
    expected = np.maximum(np.einsum("nk,nhwk->nhw", weights, a), 0)
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, expected, rtol=1e-6, atol=1e-6)


class GuidedLayerModel(LayerModel):
    """Adds made-up guided gradients (x * 0.5 + target) so the product can be checked."""

    def __call__(self, x, targets, keys):
        out = {}
        if GUIDED_INPUT_GRADIENTS in keys:
            out[GUIDED_INPUT_GRADIENTS] = x * 0.5 + np.asarray(targets)[:, None, None, None]
            keys = [k for k in keys if k != GUIDED_INPUT_GRADIENTS]
        self.calls -= 1 if not keys else 0
        out.update(super().__call__(x, targets, keys) if keys else {})
        self.calls += 1
        return out


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(x):
    model = GuidedLayerModel()
    ggc = salience.GuidedGradCAM(batch_size=2).explain(model, x, TARGETS)
    guided = salience.GuidedBackprop().explain(model, x, TARGETS)
    cam = salience.GradCAM(broadcast=True).explain(model, x, TARGETS)
    assert ggc.shape == x.shape
    np.testing.assert_allclose(ggc, guided * cam, rtol=1e-12)
    assert not np.allclose(ggc, guided)


def test_guided_grad_cam_keeps_guided_and_layer_gradients_apart(x):
    seen = []
    model = GuidedLayerModel()

    def spy(batch, targets, keys):
        seen.append(sorted(keys))
        return model(batch, targets, keys)

    salience.GuidedGradCAM(batch_size=4).explain(spy, x, TARGETS)
    assert sorted(map(tuple, seen)) == sorted([
        (GUIDED_INPUT_GRADIENTS,),
        (CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS)])


def test_input_x_gradient_is_the_input_times_its_gradient(analytic, images):
    targets = np.array([0, 2, 1])
    maps = salience.InputXGradient(batch_size=2).explain(analytic, images, targets)
    np.testing.assert_allclose(maps, images * analytic.gradient(images, targets), rtol=1e-12)


def test_input_x_gradient_of_a_linear_model_splits_the_score(linear, images):
    targets = np.array([0, 2, 1])
    maps = salience.InputXGradient().explain(linear, images, targets)
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), linear.score(images, targets),
                               rtol=1e-10)


def test_grad_cam_plus_plus_gives_alpha_zero_where_its_denominator_vanishes():
    # One channel summing to -1: at g = 2, (S g + 2) g^2 + eps is 0 with eps = 0, so that
    # position adds nothing; the position with g = 1 adds g^3 / ((S g + 2) g^2) = 1.
    values = np.array([-1.0, 0.0]).reshape(1, 1, 1, 2)
    grads = np.array([2.0, 1.0]).reshape(1, 1, 1, 2)
    np.testing.assert_array_equal(grad_cam_plus_plus_weights(values, grads, 0.0), [[1.0]])
    with_eps = grad_cam_plus_plus_weights(values, grads, 1e-6)
    np.testing.assert_allclose(with_eps, [[8 / 1e-6 + 1 / (1 + 1e-6)]], rtol=1e-12)


class ReusedBufferModel(LayerModel):
    """Answers every call from one buffer per output, and scribbles over every buffer
    it does not fill (a framework reusing its output memory between calls)."""

    def __init__(self, channels_last):
        super().__init__(channels_last=channels_last)
        self.buffers = {}

    def __call__(self, x, targets, keys):
        out = super().__call__(x, targets, keys)
        for key, buffer in self.buffers.items():
            if key not in out:
                buffer[...] = 1e3
        for key, value in out.items():
            buffer = self.buffers.get(key)
            if buffer is None or buffer.shape[1:] != value.shape[1:] or len(buffer) < len(value):
                buffer = self.buffers[key] = np.empty(value.shape)  # C order
            buffer[:len(value)] = value
            out[key] = buffer[:len(value)]
        return out


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("resize", [True, False])
@pytest.mark.parametrize("batch_size", [2, 4])
@pytest.mark.parametrize("cls", ALL_CAMS, ids=lambda c: c.__name__)
def test_maps_never_alias_a_models_reused_buffers(cls, batch_size, resize, channels_last, x):
    # One call answering every image (batch_size=4) hands the model's own arrays to the
    # kernels without a copy; the maps must still be new arrays, and Score-CAM's layer
    # values must survive its later forward calls.
    if not channels_last:
        x = np.moveaxis(x, -1, 1)
    expected = cls(resize=resize, batch_size=batch_size).explain(
        LayerModel(channels_last=channels_last), x, TARGETS)
    model = ReusedBufferModel(channels_last)
    maps = cls(resize=resize, batch_size=batch_size).explain(model, x, TARGETS)
    np.testing.assert_allclose(maps, expected, rtol=1e-12, atol=1e-15)
    assert not any(np.shares_memory(maps, b) for b in model.buffers.values())
    for buffer in model.buffers.values():
        buffer[...] = -7.0
    np.testing.assert_allclose(maps, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resized_crops_are_crops_of_the_resized_maps(dtype):
    from salience.methods.cam_base import resize_maps, resized_crops

    maps = np.random.default_rng(4).random((6, 5, 4)).astype(dtype)
    corners = np.array([[0, 0], [3, 1], [5, 7], [1, 7], [4, 0], [2, 3]])
    crops = resized_crops(maps, (17, 15), corners, (12, 8))
    assert crops.dtype == dtype and crops.shape == (6, 12, 8)
    full = resize_maps(maps, (17, 15))
    for i, (top, left) in enumerate(corners):
        np.testing.assert_allclose(crops[i], full[i, top:top + 12, left:left + 8],
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)
    with pytest.raises(ValueError, match="would shrink"):
        resized_crops(maps, (4, 15), corners, (3, 3))
