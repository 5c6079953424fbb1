"""Vision transformers: the CAM family on token layers through the adapters' ``reshape=``
(class / distillation tokens dropped, patch tokens on their grid), gradient methods
unchanged.  The small ViTs are built in the tests (conftest's ``tiny_vit``; nothing is
downloaded)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import salience  # noqa: E402
import salience.torch as st  # noqa: E402
from salience.model import (  # noqa: E402
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
)

LAYER_KEYS = [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS]


def _x(n=3, size=(16, 16)):
    return np.random.default_rng(0).normal(size=(n, 3, *size))


def _direct_layer(net, layer, x, targets, prefix, grid):
    """The layer's patch tokens and the score's gradient with respect to them, by torch
    autograd, laid out as (n, dim, h, w)."""
    seen = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        seen["tokens"] = output

    handle = net.get_submodule(layer).register_forward_hook(keep)
    try:
        scores = net(torch.tensor(x))[torch.arange(len(x)), torch.as_tensor(targets)]
        scores.sum().backward()
    finally:
        handle.remove()
    tokens = seen["tokens"]

    def to_grid(t):
        t = t.detach()[:, prefix:].numpy()
        return t.reshape(len(t), *grid, t.shape[-1]).transpose(0, 3, 1, 2)

    return to_grid(tokens), to_grid(tokens.grad)


def _direct_grad_cam(values, grads):
    weights = grads.mean(axis=(2, 3))
    return np.maximum(np.einsum("nk,nkhw->nhw", weights, values), 0)


@pytest.mark.parametrize("prefix", [1, 2], ids=["vit", "deit"])
@pytest.mark.parametrize("layer, pool", [("blocks.1", "mean"), ("blocks.1.norm1", "token")],
                         ids=["last-block-mean-head", "last-norm1-token-head"])
def test_grad_cam_on_a_token_layer_equals_a_direct_computation(prefix, layer, pool, tiny_vit):
    net = tiny_vit(prefix=prefix, pool=pool)
    x, targets = _x(), [0, 3, 1]
    model = st.wrap(net, layer=layer)
    values, grads = _direct_layer(net, layer, x, targets, prefix, (4, 4))
    out = model(x, targets, LAYER_KEYS)
    # The adapter hands the patch convolution channels-last memory: float rounding only.
    np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], values, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out[CONVOLUTION_OUTPUT_GRADIENTS], grads, rtol=1e-10,
                               atol=1e-14)
    expected = _direct_grad_cam(values, grads)
    assert (expected > 0).any()
    got = salience.GradCAM(resize=False).explain(model, x, targets)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13 * expected.max())
    resized = salience.GradCAM().explain(model, x, targets)
    assert resized.shape == (3, 16, 16)


@pytest.mark.filterwarnings("ignore:Guided Backprop met no ReLU")  # the blocks' GELU
@pytest.mark.parametrize("name", ["GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM",
                                  "EigenCAM", "ScoreCAM", "GuidedGradCAM"])
def test_the_cam_family_runs_on_token_layers(name, tiny_vit):
    net = tiny_vit()
    model = st.wrap(net, layer="blocks.1.norm1")
    method = getattr(salience, name)()
    maps = method.explain(model, _x(2), [0, 1])
    assert maps.shape[-2:] == (16, 16) and np.isfinite(maps).all()
    assert np.abs(maps).max() > 0


def test_the_default_layer_of_a_vit_is_the_last_blocks_first_norm(tiny_vit):
    # Its last Conv2d is the patch embedding: Grad-CAM there would explain the
    # pixels' own patches, not what the class token attends to.
    net = tiny_vit()
    assert st.last_conv_layer(net) == "blocks.1.norm1"
    x = _x(2)
    by_default = salience.explain(net, x, ["gradcam"], targets=[0, 1]).maps["gradcam"]
    chosen = salience.GradCAM().explain(st.wrap(net, layer="blocks.1.norm1"), x, [0, 1])
    np.testing.assert_array_equal(by_default, chosen)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    assert st.last_conv_layer(cnn) == "2"


def test_gradient_methods_are_unchanged(recwarn, tiny_vit):
    net = tiny_vit()
    x, targets = _x(2), [2, 4]
    plain = st.wrap(net)
    with_layer = st.wrap(net, layer="blocks.1")
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[torch.arange(2), torch.tensor(targets)].sum().backward()
    for model in (plain, with_layer):
        np.testing.assert_allclose(salience.Gradients().explain(model, x, targets),
                                   xt.grad.numpy(), rtol=1e-10, atol=1e-14)
        out = model(x, targets, [INPUT_OUTPUT_GRADIENTS])
        np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], xt.grad.numpy(), rtol=1e-10,
                                   atol=1e-14)
    ig = salience.IntegratedGradients(steps=5)
    np.testing.assert_array_equal(ig.explain(plain, x, targets),
                                  ig.explain(with_layer, x, targets))


def test_a_convolution_layer_is_left_as_it_is(tiny_vit):
    net = tiny_vit()
    x, targets = _x(2), [0, 1]
    auto = st.wrap(net, layer="patch_embed")(x, targets, LAYER_KEYS)
    none = st.wrap(net, layer="patch_embed", reshape=None)(x, targets, LAYER_KEYS)
    assert auto[CONVOLUTION_LAYER_VALUES].shape == (2, 16, 4, 4)
    for key in LAYER_KEYS:
        np.testing.assert_array_equal(auto[key], none[key])


def test_a_non_square_grid_needs_its_size(tiny_vit):
    net = tiny_vit(size=(16, 12))  # 4 x 3 patches + a class token: 13 tokens
    x, targets = _x(2, (16, 12)), [0, 1]
    model = st.wrap(net, layer="blocks.1", reshape=(4, 3))
    values, grads = _direct_layer(net, "blocks.1", x, targets, 1, (4, 3))
    got = salience.GradCAM(resize=False).explain(model, x, targets)
    expected = _direct_grad_cam(values, grads)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13 * expected.max())
    assert salience.GradCAM().explain(model, x, targets).shape == (2, 16, 12)


class _GradientPasses:
    """Counts the forward passes of a module that build a gradient graph."""

    def __init__(self, net):
        self.count = 0
        net.register_forward_pre_hook(self)

    def __call__(self, _module, _inputs):
        self.count += torch.is_grad_enabled()


@pytest.mark.parametrize(
    "size, reshape, match",
    [
        ((16, 12), "auto", r"the layer's output has shape \(n, 13, 16\), read as 13 tokens of "
                           r"16 features, but neither 13, 12 nor 11 of them .* fill a square "
                           r"grid; wrap the model with reshape=\(h, w\)"),
        ((16, 16), (5, 5), r"reshape=\(5, 5\) needs a layer that outputs at least 25 tokens.* "
                           r"the layer gives 17 tokens"),
    ],
)
def test_tokens_that_fit_no_grid_are_refused_before_any_gradient_pass(size, reshape, match,
                                                                       tiny_vit):
    net = tiny_vit(size=size)
    passes = _GradientPasses(net)
    model = st.wrap(net, layer="blocks.1", reshape=reshape)
    with pytest.raises(ValueError, match=match):
        salience.GradCAM().explain(model, _x(2, size), [0, 1])
    assert passes.count == 0


def test_a_grid_for_a_convolution_layer_is_refused(tiny_vit):
    model = st.wrap(tiny_vit(), layer="patch_embed", reshape=(4, 4))
    with pytest.raises(ValueError, match=r"per-row shape \(16, 4, 4\), not \(tokens, "
                                         r"features\)"):
        model(_x(1), [0], LAYER_KEYS)


def test_a_callable_reshape_equals_auto(tiny_vit):
    net = tiny_vit()
    x, targets = _x(2), [0, 1]

    def patches_first(tokens):  # numpy: drop the class token, (n, dim, 4, 4)
        return tokens[:, 1:].reshape(len(tokens), 4, 4, -1).transpose(0, 3, 1, 2)

    auto = st.wrap(net, layer="blocks.1")(x, targets, LAYER_KEYS)
    given = st.wrap(net, layer="blocks.1", reshape=patches_first)(x, targets, LAYER_KEYS)
    for key in LAYER_KEYS:
        np.testing.assert_array_equal(given[key], auto[key])


@pytest.mark.parametrize(
    "fn, match",
    [
        (lambda t: 2 * t[:, 1:].reshape(len(t), 4, 4, -1), "computes new values"),
        (lambda t: t[::-1, 1:].reshape(len(t), 4, 4, -1), "mixes rows"),
        (lambda t: np.concatenate([t[:, 1:], t[:, 1:]], 1).reshape(len(t), 8, 4, -1),
         "repeats entries"),
        (lambda t: t[:, 1:], r"for a batch shaped \(2, 17, 16\) it returned float64 of shape "
                             r"\(2, 16, 16\)"),
        (lambda t: t.reshape(len(t), 5, 5, -1), r"it failed on a batch shaped \(2, 17, 16\): "
                                                 "ValueError"),
    ],
)
def test_a_callable_must_only_rearrange_entries(fn, match, tiny_vit):
    net = tiny_vit()
    passes = _GradientPasses(net)
    model = st.wrap(net, layer="blocks.1", reshape=fn)
    with pytest.raises(ValueError, match="reshape must be a function of numpy arrays .* only "
                                         "selects and rearranges") as error:
        salience.GradCAM().explain(model, _x(2), [0, 1])
    assert error.match(match)
    assert passes.count == 0


@pytest.mark.parametrize("reshape", ["grid", (0, 4), (4,), (4, 4, 1), 3.5, (True, 2)])
def test_bad_reshape_arguments_are_refused_when_wrapping(reshape, tiny_vit):
    with pytest.raises(ValueError, match=r"reshape must be 'auto', None, a grid \(h, w\) of "
                                         r"positive ints, or a callable"):
        st.wrap(tiny_vit(), layer="blocks.1", reshape=reshape)


def test_no_reshape_keeps_tokens_and_the_cams_say_what_they_need(tiny_vit):
    model = st.wrap(tiny_vit(), layer="blocks.1", reshape=None)
    out = model(_x(1), [0], LAYER_KEYS)
    assert out[CONVOLUTION_LAYER_VALUES].shape == (1, 17, 16)
    with pytest.raises(ValueError, match=r"Grad-CAM needs layer values and gradients shaped .* "
                                         r"reshape="):
        salience.GradCAM().explain(model, _x(1), [0])


# --- the other adapters ------------------------------------------------------------------


def test_keras_vit_grad_cam_equals_a_direct_computation():
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    import salience.keras as sk

    dim, prefix = 8, 1

    class Prefix(keras.layers.Layer):
        def build(self, input_shape):
            self.token = self.add_weight(shape=(1, prefix, dim), initializer="random_normal")

        def call(self, patches):
            n = keras.ops.shape(patches)[0]
            return keras.ops.concatenate(
                [keras.ops.broadcast_to(self.token, (n, prefix, dim)), patches], axis=1)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    patches = keras.layers.Reshape((9, dim))(keras.layers.Conv2D(dim, 4, strides=4)(inputs))
    tokens = Prefix()(patches)
    normed = keras.layers.LayerNormalization()(tokens)
    mixed = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(normed, normed)
    block = keras.layers.Add(name="block")([tokens, mixed])
    pooled = keras.layers.Lambda(lambda t: keras.ops.mean(t[:, prefix:], axis=1))(block)
    head = keras.layers.Dense(4)(pooled)
    net = keras.Model(inputs, head)
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    targets = [1, 3]

    model = sk.wrap(net, layer="block")
    got = salience.GradCAM(resize=False).explain(model, x, targets)

    view = keras.Model(inputs, [block, head])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        layer, out = view(xt, training=False)
        scores = tf.gather(out, targets, axis=1, batch_dims=1)
    grads = tape.gradient(scores, layer).numpy()
    values = layer.numpy()

    def grid(t):  # (n, 3, 3, dim), channels last
        return t[:, prefix:].reshape(len(t), 3, 3, dim).transpose(0, 3, 1, 2)

    expected = _direct_grad_cam(grid(values), grid(grads))
    assert (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * expected.max())
    layer_out = model(x, targets, LAYER_KEYS)[CONVOLUTION_LAYER_VALUES]
    assert layer_out.shape == (2, 3, 3, dim)  # the model's layout: channels last

    # a grid that does not fit is refused before anything is traced or run
    bad = sk.wrap(net, layer="block", reshape=(4, 4))
    with pytest.raises(ValueError, match=r"reshape=\(4, 4\) needs a layer that outputs at least "
                                         r"16 tokens"):
        salience.GradCAM().explain(bad, x, targets)
    assert bad.trace_count == 0


def test_the_default_layer_of_a_keras_vit_is_the_input_of_its_last_attention():
    keras = pytest.importorskip("keras")
    import salience.keras as sk

    dim = 8
    inputs = keras.Input((12, 12, 3))
    patches = keras.layers.Reshape((9, dim))(keras.layers.Conv2D(dim, 4, strides=4)(inputs))

    def head(tokens):
        pooled = keras.layers.GlobalAveragePooling1D()(tokens)
        return keras.Model(inputs, keras.layers.Dense(4)(pooled))

    tokens = patches  # functional pre-norm blocks: the last block's first norm
    for i in range(2):
        normed = keras.layers.LayerNormalization(name=f"norm1_{i}")(tokens)
        mixed = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(normed, normed)
        tokens = keras.layers.Add()([tokens, mixed])
        normed = keras.layers.LayerNormalization(name=f"norm2_{i}")(tokens)
        tokens = keras.layers.Add()([tokens, keras.layers.Dense(dim)(normed)])
    net = head(tokens)
    assert sk.last_conv_layer(net) == "norm1_1"
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    by_default = salience.explain(net, x, ["gradcam"], targets=[0, 1]).maps["gradcam"]
    chosen = salience.GradCAM().explain(sk.wrap(net, layer="norm1_1"), x, [0, 1])
    np.testing.assert_array_equal(by_default, chosen)

    class Block(keras.layers.Layer):  # blocks as layers: the last one's input
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.norm = keras.layers.LayerNormalization()
            self.attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)

        def call(self, tokens):
            normed = self.norm(tokens)
            return tokens + self.attention(normed, normed)

    assert sk.last_conv_layer(head(Block(name="b1")(Block(name="b0")(patches)))) == "b0"
    # A ViT nested as one layer reads the model's input: no CAM layer (not the input).
    backbone = keras.Model(inputs, Block()(patches))
    outer_in = keras.Input((12, 12, 3))
    pooled = keras.layers.GlobalAveragePooling1D()(backbone(outer_in))
    assert sk.last_conv_layer(keras.Model(outer_in, keras.layers.Dense(4)(pooled))) is None
    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c0"),
                            keras.layers.Conv2D(4, 3, name="c1"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    assert sk.last_conv_layer(cnn) == "c1"


def test_jax_token_layer_grad_cam_equals_a_direct_computation():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    import salience.jax as sj

    rng = np.random.default_rng(0)
    params = {"embed": rng.normal(size=(48, 6)), "cls": rng.normal(size=(1, 6)),
              "mix": rng.normal(size=(10, 10)) * 0.3, "head": rng.normal(size=(6, 3))}

    def layer_fn(p, x):  # (n, 12, 12, 3) -> 9 patch tokens + a class token, mixed
        n = x.shape[0]
        patches = x.reshape(n, 3, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 9, 48)
        tokens = jnp.concatenate([jnp.broadcast_to(p["cls"], (n, 1, 6)),
                                  patches @ p["embed"]], axis=1)
        return jnp.tanh(jnp.einsum("st,ntd->nsd", p["mix"], tokens))

    def head_fn(p, tokens):
        return jnp.tanh(tokens[:, 0]) @ p["head"] + (tokens[:, 1:] ** 2).mean(axis=(1, 2))[:, None]

    model = sj.wrap(lambda p, x: head_fn(p, layer_fn(p, x)), params, layer_fn=layer_fn,
                    head_fn=head_fn)
    x = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
    targets = np.array([0, 2])
    got = salience.GradCAM(resize=False).explain(model, x, targets)

    tokens = layer_fn(params, jnp.asarray(x))
    grads = jax.grad(lambda t: head_fn(params, t)[jnp.arange(2), targets].sum())(tokens)

    def grid(t):
        t = np.asarray(t)[:, 1:]
        return t.reshape(2, 3, 3, 6).transpose(0, 3, 1, 2)

    expected = _direct_grad_cam(grid(tokens), grid(grads))
    assert (expected > 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.max())

    bad = sj.wrap(lambda p, x: head_fn(p, layer_fn(p, x)), params, layer_fn=layer_fn,
                  head_fn=head_fn, reshape=(2, 2))
    bad(x, targets, LAYER_KEYS)  # 10 tokens hold a 2 x 2 grid after 6 dropped: allowed
    nine = sj.wrap(lambda p, x: head_fn(p, layer_fn(p, x)), params, layer_fn=layer_fn,
                   head_fn=head_fn, reshape=(4, 4))
    with pytest.raises(ValueError, match="at least 16 tokens"):
        salience.GradCAM().explain(nine, x, targets)
    assert nine.trace_count == 0


# --- the command line --------------------------------------------------------------------

_VIT_ARCH = '''
import torch
from torch import nn


class TinyViT(nn.Module):
    def __init__(self, dim=16, patch=4, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.blocks(tokens)[:, 0])


def tiny_vit():
    return TinyViT()
'''


def test_cli_grad_cam_on_a_vit_block_equals_the_python_api(tmp_path, monkeypatch):
    # The CLI's --layer on a transformer block: the adapters' default reshape='auto'
    # lays its tokens out on the patch grid, as salience.torch.wrap does in Python.
    Image = pytest.importorskip("PIL.Image")
    typer_testing = pytest.importorskip("typer.testing")
    from salience.cli import app
    from salience.io import Preprocessing, load_image

    (tmp_path / "salience_vit_arch.py").write_text(_VIT_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    import salience_vit_arch as arch

    torch.save(arch.tiny_vit().state_dict(), tmp_path / "vit.pt")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
                    ).save(tmp_path / "imgs" / "a.png")
    layer = "blocks.layers.1.norm1"
    result = typer_testing.CliRunner().invoke(app, [str(a) for a in (
        "explain", tmp_path / "imgs", "--model", tmp_path / "vit.pt", "--arch",
        "salience_vit_arch:tiny_vit", "--layer", layer, "--methods", "gradcam", "--size",
        "16", "--preset", "unit", "--out", tmp_path / "out")])
    assert result.exit_code == 0, result.output
    # Without --layer the same block is chosen (nn.TransformerEncoderLayer's norm1).
    by_default = typer_testing.CliRunner().invoke(app, [str(a) for a in (
        "explain", tmp_path / "imgs", "--model", tmp_path / "vit.pt", "--arch",
        "salience_vit_arch:tiny_vit", "--methods", "gradcam", "--size",
        "16", "--preset", "unit", "--out", tmp_path / "out-default")])
    assert by_default.exit_code == 0, by_default.output
    np.testing.assert_array_equal(np.load(tmp_path / "out-default" / "maps.npz")["a__gradcam"],
                                  np.load(tmp_path / "out" / "maps.npz")["a__gradcam"])

    net = arch.tiny_vit()
    net.load_state_dict(torch.load(tmp_path / "vit.pt", weights_only=True))
    prep = Preprocessing(size=(16, 16), channels=3, preset="unit")
    x = prep.model_input([prep.display(load_image(tmp_path / "imgs" / "a.png"))])
    model = st.wrap(net.eval(), layer=layer)
    assert model(x, [0], LAYER_KEYS)[CONVOLUTION_LAYER_VALUES].shape == (1, 16, 4, 4)
    expected = salience.explain(model, x, ["gradcam"])
    maps = np.load(tmp_path / "out" / "maps.npz")
    assert np.abs(maps["a__gradcam"]).max() > 0
    np.testing.assert_allclose(maps["a__gradcam"], expected.maps["gradcam"][0], rtol=1e-5,
                               atol=1e-7)
