"""Model-randomisation sanity check on a small torch CNN."""

from __future__ import annotations

import numpy as np
import pytest

from salience.metrics import sanity

torch = pytest.importorskip("torch")
from salience.methods import Gradients  # noqa: E402


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3),
    )


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)


def test_gradients_change_when_layers_are_randomised(x):
    net = _net().train()
    net[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng_state = torch.get_rng_state()
    result = sanity.model_randomisation(net, Gradients(), x, keep_maps=True)
    assert result.layers == ["5", "2", "0"]  # output first
    assert result.spearman.shape == (3, 3) and result.ssim.shape == (3, 3)
    assert np.all(result.spearman_abs[-1] < 0.9)  # everything randomised: different maps
    assert result.maps.shape == (4, 3, 8, 8)
    rows = result.as_rows()
    assert [r["layer"] for r in rows] == ["5", "2", "0"]
    assert rows[0]["ssim"] == pytest.approx(result.ssim[0].mean())
    # the caller's model and RNG are untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert net.training and all(m.training for m in net.modules())
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad
    assert net[0].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_input_only_method_fails_the_check(x):
    """A 'method' that ignores the model (here: the input itself) keeps correlation 1."""

    def edge_like(model, inputs, targets):
        return np.abs(inputs)

    result = sanity.model_randomisation(_net(), edge_like, x)
    np.testing.assert_allclose(result.spearman, 1.0)
    np.testing.assert_allclose(result.ssim, 1.0)


def test_independent_randomisation_and_seed(x):
    a = sanity.model_randomisation(_net(), Gradients(), x, cascading=False, seed=3,
                                   layers=["0", "5"])
    b = sanity.model_randomisation(_net(), Gradients(), x, cascading=False, seed=3,
                                   layers=["0", "5"])
    assert a.layers == ["5", "0"] and not a.cascading
    np.testing.assert_array_equal(a.spearman, b.spearman)


def test_rank_correlation_and_ssim_known_values():
    a = np.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_allclose(sanity.rank_correlation(a, a ** 3), [1.0])
    np.testing.assert_allclose(sanity.rank_correlation(a, -a), [-1.0])
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(sanity.rank_correlation(a, np.zeros_like(a))[0])
    np.testing.assert_allclose(sanity.ssim(a / 15, a / 15), [1.0])
    with pytest.raises(ValueError, match="3x3"):
        sanity.ssim(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))


def test_bad_inputs(x):
    with pytest.raises(TypeError, match="torch.nn.Module or a Keras model"):
        sanity.model_randomisation(lambda a: a, Gradients(), x)
    with pytest.raises(ValueError, match="not layers of the model"):
        sanity.model_randomisation(_net(), Gradients(), x, layers=["9"])
    with pytest.raises(TypeError, match="method must be"):
        sanity.model_randomisation(_net(), "gradients", x)


def test_keras_model_copy_is_randomised_and_the_original_untouched():
    keras = pytest.importorskip("keras")
    pytest.importorskip("salience.keras")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, name="dense"),
    ])
    weights = [w.copy() for w in net.get_weights()]
    xs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    assert sanity.randomisable_layers(net) == ["conv", "dense"]
    result = sanity.model_randomisation(net, Gradients(), xs, seed=1)
    assert result.layers == ["dense", "conv"]
    assert np.all(result.spearman_abs[-1] < 0.9)
    for before, after in zip(weights, net.get_weights()):
        np.testing.assert_array_equal(before, after)
    same = sanity.model_randomisation(net, lambda m, a, t: np.abs(a), xs)
    np.testing.assert_allclose(same.spearman, 1.0)
