"""salience.core calls ``call_model_function`` exactly as saliency==0.2.1 does.

For every method (``GetMask``, ``GetSmoothedMask``, XRAI's
``GetMaskWithDetails``) both libraries explain the same input with the same
arguments through a callback that records each call: how it was called
(positional and keyword arguments), the rows it got, the ``call_model_args``
object and the keys asked for.  The two records must agree call by call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import saliency.core as pair

import salience.core as ours

ARGS = {"class": 2}  # the call_model_args object; the callback reads the class from it


@dataclass
class Call:
    convention: tuple  # (number of positional arguments, keyword names)
    rows: np.ndarray
    args: object
    keys: list


def recording(model):
    """A PAIR callback running ``model`` and recording its calls in ``.calls``."""
    calls: list[Call] = []

    def call_model_function(*args, **kwargs):
        x = np.array(args[0])
        call_model_args = kwargs.get("call_model_args", args[1] if len(args) > 1 else None)
        keys = list(kwargs.get("expected_keys", args[2] if len(args) > 2 else None))
        calls.append(Call((len(args), tuple(sorted(kwargs))), x, call_model_args, keys))
        return model(x, np.full(len(x), call_model_args["class"]), keys)

    call_model_function.calls = calls
    return call_model_function


def assert_same_calls(ours_calls: list[Call], pair_calls: list[Call]) -> None:
    assert len(pair_calls) > 0
    assert [len(c.rows) for c in ours_calls] == [len(c.rows) for c in pair_calls]
    for i, (a, b) in enumerate(zip(ours_calls, pair_calls)):
        assert a.convention == b.convention, f"call {i}"
        assert a.keys == b.keys, f"call {i}"
        assert a.args is b.args is ARGS, f"call {i}"
        assert a.rows.shape == b.rows.shape, f"call {i}"
        scale = np.abs(b.rows).max()
        np.testing.assert_allclose(a.rows, b.rows, rtol=1e-6, atol=1e-9 * scale,
                                   err_msg=f"call {i}")


@pytest.fixture
def image():
    return np.random.default_rng(4).normal(size=(10, 9, 3))


@pytest.fixture
def analytic(model_classes):
    return model_classes[0](shape=(10, 9, 3))


def run_both(analytic, name, method, x, kwargs):
    """``method`` of class ``name`` on both libraries; kwargs may be a function of the
    library (for its own XRAIParameters)."""
    records = []
    for lib in (ours, pair):
        callback = recording(analytic)
        np.random.seed(3)  # the same noise for GetSmoothedMask
        options = kwargs(lib) if callable(kwargs) else kwargs
        getattr(getattr(lib, name)(), method)(x, callback, ARGS, **options)
        records.append(callback.calls)
    return records


GET_MASK = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", {}),
    ("IntegratedGradients", dict(x_steps=7, batch_size=3)),
    ("IntegratedGradients", dict(x_baseline=np.full((10, 9, 3), 0.3), x_steps=6, batch_size=6)),
    ("BlurIG", dict(steps=7, max_sigma=4)),
    ("BlurIG", dict(steps=7, max_sigma=4, batch_size=3, sqrt=True)),
    ("Occlusion", dict(size=3)),
    ("Occlusion", dict(size=4, value=0.5)),
    ("GradCam", {}),
    ("GradCam", dict(should_resize=False, three_dims=False)),
    ("GuidedIG", dict(x_steps=8, max_dist=0.1)),
    ("XRAI", lambda lib: dict(batch_size=4, extra_parameters=lib.XRAIParameters(steps=6))),
    ("XRAI", lambda lib: dict(baselines=[np.zeros((10, 9, 3)), np.ones((10, 9, 3))],
                              extra_parameters=lib.XRAIParameters(steps=3))),
]


@pytest.mark.parametrize("name, kwargs", GET_MASK, ids=[f"{n}{i}" for i, (n, _) in
                                                       enumerate(GET_MASK)])
def test_get_mask_calls_as_pair(name, kwargs, image, analytic, pair_guided_ig_on_numpy2):
    assert_same_calls(*run_both(analytic, name, "GetMask", image, kwargs))


def test_xrai_get_mask_with_details_calls_as_pair(image, analytic):
    def kwargs(lib):
        return dict(batch_size=5, extra_parameters=lib.XRAIParameters(
            steps=7, return_ig_attributions=True, return_xrai_segments=True))

    assert_same_calls(*run_both(analytic, "XRAI", "GetMaskWithDetails", image, kwargs))


SMOOTHED = [
    ("GradientSaliency", {}),
    ("IntegratedGradients", dict(x_steps=5, batch_size=2)),
    ("BlurIG", dict(steps=4, max_sigma=3, batch_size=3)),
    ("Occlusion", dict(size=5)),
    ("GradCam", {}),
    ("GuidedIG", dict(x_steps=4)),
    ("XRAI", lambda lib: dict(batch_size=3, extra_parameters=lib.XRAIParameters(steps=3))),
]


@pytest.mark.parametrize("name, kwargs", SMOOTHED, ids=[n for n, _ in SMOOTHED])
def test_get_smoothed_mask_calls_as_pair(name, kwargs, model_classes,
                                         pair_guided_ig_on_numpy2):
    # XRAI on a grayscale (H, W) image: PAIR's loop can add only such 2-D maps to its total.
    x = np.random.default_rng(5).normal(size=(10, 9) if name == "XRAI" else (10, 9, 3))
    analytic = model_classes[0](shape=x.shape)
    options = (lambda lib: {**kwargs(lib), "nsamples": 3}) if callable(kwargs) else \
        {**kwargs, "nsamples": 3}
    ours_calls, pair_calls = run_both(analytic, name, "GetSmoothedMask", x, options)
    assert_same_calls(ours_calls, pair_calls)


def test_occlusion_batch_size_extension_keeps_the_rows_and_their_order(image, analytic):
    one_by_one, batched = recording(analytic), recording(analytic)
    expected = ours.Occlusion().GetMask(image, one_by_one, ARGS, size=4)
    got = ours.Occlusion().GetMask(image, batched, ARGS, size=4, batch_size=16)
    assert [len(c.rows) for c in batched.calls] == [16, 16, 11]  # 1 + 7 * 6 rows
    np.testing.assert_array_equal(np.concatenate([c.rows for c in batched.calls]),
                                  np.concatenate([c.rows for c in one_by_one.calls]))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_smoothing_is_one_loop_for_maps_of_any_shape(image, analytic):
    """A user's GetMask returning 2-D maps of a 3-D input, smoothed by core and by tf1."""
    seen = []

    class ChannelSum(ours.CoreSaliency):
        def GetMask(self, x_value, call_model_function, call_model_args=None):
            seen.append(x_value.copy())
            return x_value.sum(axis=-1)

    np.random.seed(0)
    smoothed = ChannelSum().GetSmoothedMask(image, None, nsamples=4, magnitude=False)
    assert smoothed.shape == (10, 9) and len(seen) == 4
    np.testing.assert_allclose(smoothed, np.mean([s.sum(axis=-1) for s in seen], axis=0),
                               rtol=1e-12)
    with pytest.raises(ValueError):  # PAIR's core loop cannot add it to its 3-D total
        np.random.seed(0)
        type("ChannelSum", (pair.CoreSaliency,), {"GetMask": ChannelSum.GetMask})() \
            .GetSmoothedMask(image, None, nsamples=4, magnitude=False)


def test_smoothing_refuses_masks_that_change_shape(image):
    class Shrinking(ours.CoreSaliency):
        def GetMask(self, x_value, call_model_function, call_model_args=None):
            self.size = getattr(self, "size", 10) - 1
            return x_value[: self.size]

    with pytest.raises(ValueError, match=r"shape \(9, 9, 3\) and then \(8, 9, 3\)"):
        Shrinking().GetSmoothedMask(image, None, nsamples=3)
