"""The same small CNN with identical weights in PyTorch, Keras and JAX gives the same maps.

conv(3->8, 3x3, same) - ReLU - conv(8->8, 3x3, same) - ReLU - global average pool -
dense(8->4), on 16x16x3 channels-last images; Grad-CAM uses the second ReLU's output.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import salience  # noqa: E402

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
jax = pytest.importorskip("jax")
jnp = jax.numpy

import salience.jax as sjax  # noqa: E402
import salience.keras as skeras  # noqa: E402
import salience.torch as storch  # noqa: E402

REGION = (slice(None), slice(4, 8), slice(4, 8))  # rows 4:8, cols 4:8 of a (n, H, W, K) map


def _weights():
    rng = np.random.default_rng(0)
    return {
        "w1": (rng.normal(size=(3, 3, 3, 8)) * 0.4).astype(np.float32),
        "b1": (rng.normal(size=8) * 0.1).astype(np.float32),
        "w2": (rng.normal(size=(3, 3, 8, 8)) * 0.25).astype(np.float32),
        "b2": (rng.normal(size=8) * 0.1).astype(np.float32),
        "wd": rng.normal(size=(8, 4)).astype(np.float32),
        "bd": (rng.normal(size=4) * 0.1).astype(np.float32),
    }


class _ToChannelsLast(torch.nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class TorchCNN(torch.nn.Module):
    """Takes (n, H, W, C) like the others; ``features`` outputs (n, H, W, 8)."""

    def __init__(self, w, segment=False):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.features = _ToChannelsLast()
        self.fc = torch.nn.Linear(8, 4)
        self.segment = segment
        with torch.no_grad():
            self.conv1.weight.copy_(torch.from_numpy(w["w1"].transpose(3, 2, 0, 1)))
            self.conv1.bias.copy_(torch.from_numpy(w["b1"]))
            self.conv2.weight.copy_(torch.from_numpy(w["w2"].transpose(3, 2, 0, 1)))
            self.conv2.bias.copy_(torch.from_numpy(w["b2"]))
            self.fc.weight.copy_(torch.from_numpy(w["wd"].T))
            self.fc.bias.copy_(torch.from_numpy(w["bd"]))

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x.permute(0, 3, 1, 2)))))
        h = self.features(h)
        return h if self.segment else self.fc(h.mean(dim=(1, 2)))


def keras_cnn(w, segment=False):
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    if segment:
        model = keras.Model(inputs, h)
    else:
        out = layers.Dense(4, name="dense")(layers.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, out)
    model.get_layer("conv1").set_weights([w["w1"], w["b1"]])
    model.get_layer("conv2").set_weights([w["w2"], w["b2"]])
    if not segment:
        model.get_layer("dense").set_weights([w["wd"], w["bd"]])
    return model


def jax_features(p, x):
    dn = ("NHWC", "HWIO", "NHWC")
    conv = jax.lax.conv_general_dilated
    h = jax.nn.relu(conv(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn) + p["b1"])
    return jax.nn.relu(conv(h, p["w2"], (1, 1), "SAME", dimension_numbers=dn) + p["b2"])


def jax_head(p, h):
    return h.mean(axis=(1, 2)) @ p["wd"] + p["bd"]


def jax_cnn(p, x):
    return jax_head(p, jax_features(p, x))


@pytest.fixture(scope="module")
def weights():
    return _weights()


@pytest.fixture(scope="module")
def models(weights):
    return {
        "torch": storch.wrap(TorchCNN(weights).eval(), "features", channels_last=True),
        "keras": skeras.wrap(keras_cnn(weights), "conv2"),
        "jax": sjax.wrap(jax_cnn, weights, layer_fn=jax_features, head_fn=jax_head,
                         channels=3),
    }


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(0, 1, size=(4, 16, 16, 3)).astype(np.float32)


def assert_close(actual, expected, rtol=1e-4, what=""):
    """Equal within ``rtol`` of the largest magnitude of the expected map."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol}"


def _methods():
    methods = {
        "Gradients": lambda: salience.Gradients(batch_size=3),
        "SmoothGrad": lambda: salience.SmoothGrad(salience.Gradients(batch_size=5), nsamples=3,
                                                  seed=7),
        "SmoothGradIG": lambda: salience.SmoothGrad(
            salience.IntegratedGradients(steps=4, batch_size=8), nsamples=2, seed=1,
            magnitude=False),
        "IntegratedGradients": lambda: salience.IntegratedGradients(steps=10, batch_size=16),
        "BlurIG": lambda: salience.BlurIG(max_sigma=4, steps=8, batch_size=16),
        "Occlusion": lambda: salience.Occlusion(size=4, stride=3, batch_size=32),
        "GradCAM": lambda: salience.GradCAM(),
        "GradCAMRaw": lambda: salience.GradCAM(resize=False),
    }
    if hasattr(salience, "GuidedIG"):
        methods["GuidedIG"] = lambda: salience.GuidedIG(steps=12, max_dist=0.1, fraction=0.5)
    if hasattr(salience, "XRAI"):
        methods["XRAI"] = lambda: salience.XRAI(steps=8, batch_size=16)
    return methods


@pytest.mark.parametrize("name", sorted(_methods()))
@pytest.mark.parametrize("targets", [None, [0, 1, 2, 3]], ids=["top", "given"])
def test_same_map_in_every_framework(models, images, name, targets):
    make = _methods()[name]
    if name == "XRAI":  # numpy-heavy (segmentation, region search): two images suffice
        images, targets = images[:2], (None if targets is None else targets[:2])
    maps = {fw: make().explain(model, images, targets) for fw, model in models.items()}
    assert np.abs(maps["torch"]).max() > 0, "the map must not be trivially zero"
    for fw in ("keras", "jax"):
        assert_close(maps[fw], maps["torch"], what=f"{name} {fw} vs torch")


def test_predictions_agree(models, images):
    ref = models["torch"].predict(images)
    for fw in ("keras", "jax"):
        assert_close(models[fw].predict(images), ref, what=fw)


def test_guided_backprop_torch_and_keras_agree_jax_refuses(models, images):
    if not hasattr(salience, "GuidedBackprop"):
        pytest.skip("salience.GuidedBackprop does not exist yet")
    method = salience.GuidedBackprop(batch_size=3)
    ref = method.explain(models["torch"], images, [0, 1, 2, 3])
    plain = salience.Gradients().explain(models["torch"], images, [0, 1, 2, 3])
    assert not np.allclose(ref, plain), "guided and plain gradients should differ here"
    assert_close(method.explain(models["keras"], images, [0, 1, 2, 3]), ref, what="keras")
    with pytest.raises(ValueError, match="guided"):
        method.explain(models["jax"], images, [0, 1, 2, 3])


# -- target functions --------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_models(weights):
    """One score per row from a target_fn: the third output, as a regression head."""
    return {
        "torch": storch.wrap(TorchCNN(weights).eval(), channels_last=True,
                             target_fn=lambda out, t: out[:, 2]),
        "keras": skeras.wrap(keras_cnn(weights), target_fn=lambda out, t: out[:, 2]),
        "jax": sjax.wrap(jax_cnn, weights, target_fn=lambda out, t: out[:, 2]),
    }


def test_target_fn_regression_output(models, regression_models, images):
    for fw, model in regression_models.items():
        got = salience.Gradients().explain(model, images, targets=0)
        expected = salience.Gradients().explain(models[fw], images, targets=2)
        assert_close(got, expected, rtol=1e-6, what=fw)
        ig = salience.IntegratedGradients(steps=6).explain(model, images, targets=0)
        assert_close(ig, salience.IntegratedGradients(steps=6).explain(models[fw], images, 2),
                     rtol=1e-6, what=f"IG {fw}")


def test_difference_of_logits_by_weight_rows(models, images):
    rows = np.zeros((4, 4), dtype=np.float32)
    rows[:, 1], rows[:, 3] = 1.0, -1.0
    maps = {}
    for fw, model in models.items():
        maps[fw] = salience.Gradients().explain(model, images, rows)
        g1 = salience.Gradients().explain(model, images, 1)
        g3 = salience.Gradients().explain(model, images, 3)
        assert_close(maps[fw], g1 - g3, rtol=1e-5, what=fw)
    for fw in ("keras", "jax"):
        assert_close(maps[fw], maps["torch"], what=fw)


@pytest.fixture(scope="module")
def segmentation_models(weights):
    """A (n, H, W, 8) map; the score is the mean of channel ``target`` over a region."""

    def torch_region(out, t):
        return out[REGION].mean(dim=(1, 2)).gather(1, t.long()[:, None])[:, 0]

    def tf_region(out, t):
        return tf.gather(tf.reduce_mean(out[REGION], axis=(1, 2)), t, axis=1, batch_dims=1)

    def jax_region(out, t):
        return jnp.take_along_axis(out[REGION].mean(axis=(1, 2)), t[:, None], axis=1)[:, 0]

    return {
        "torch": storch.wrap(TorchCNN(weights, segment=True).eval(), channels_last=True,
                             target_fn=torch_region),
        "keras": skeras.wrap(keras_cnn(weights, segment=True), target_fn=tf_region),
        "jax": sjax.wrap(jax_features, weights, target_fn=jax_region),
    }


def test_target_fn_segmentation_region(segmentation_models, images):
    targets = [0, 5, 7, 2]
    maps = {fw: salience.IntegratedGradients(steps=6).explain(m, images, targets)
            for fw, m in segmentation_models.items()}
    grads = {fw: salience.Gradients().explain(m, images, targets)
             for fw, m in segmentation_models.items()}
    for fw in ("keras", "jax"):
        assert_close(maps[fw], maps["torch"], what=f"IG {fw}")
        assert_close(grads[fw], grads["torch"], what=f"Gradients {fw}")
    # Two 3x3 convolutions see 2 pixels around the region (rows/cols 2..9): nothing else.
    outside = np.ones((16, 16), dtype=bool)
    outside[2:10, 2:10] = False
    for fw, g in grads.items():
        assert np.abs(g[:, 2:10, 2:10]).max() > 0, fw
        assert np.all(g[:, outside] == 0), fw
