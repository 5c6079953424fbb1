"""A hypothesis sweep over the batch API: every registered method, through the torch adapter.

Random shapes, dtypes, values, targets and parameters.  Each example must end
in a ``ValueError``/``TypeError`` with a message, or in finite maps of the right
batch size and spatial size: never a crash of another kind, a NaN or a map of
the wrong shape.  The CI profile keeps it to a few examples per method;
``HYPOTHESIS_PROFILE=long`` (``make test-long``) runs many more.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import salience  # noqa: E402
from salience import registry  # noqa: E402
from salience.torch import wrap  # noqa: E402

settings.register_profile(
    "ci", max_examples=6, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long", max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

N_CLASSES = 5

# The registry's defaults are sized for real photos; the sweep keeps each
# method's work small so many examples fit in CI.
CHEAP = {
    "smoothgrad": {"nsamples": 3},
    "integrated_gradients": {"steps": 3},
    "blur_ig": {"steps": 3},
    "guided_ig": {"steps": 3},
    "xrai": {"steps": 2},
    "occlusion": {"size": 4, "stride": 4},
    "rise": {"n_masks": 8},
    "lime": {"n_samples": 12},
    "kernel_shap": {"n_samples": 12},
}


def _tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, N_CLASSES),
    ).eval()


MODEL = wrap(_tiny_cnn(), layer="0")



@st.composite
def batches(draw):
    """Half the examples are valid inputs; the others break one thing at a time."""
    n = draw(st.integers(1, 3))
    height = draw(st.integers(1, 24))
    width = draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.normal(size=(n, 3, height, width)) * draw(st.sampled_from([1.0, 1e-6, 1e3]))
    if draw(st.booleans()):
        x = x[:, :, :, ::-1]  # non-contiguous memory
    dtype: type = draw(st.sampled_from([np.float32, np.float64]))
    targets = draw(st.one_of(
        st.none(), st.integers(0, N_CLASSES - 1),
        st.lists(st.integers(0, N_CLASSES - 1), min_size=n, max_size=n),
    ))
    breakage = draw(st.sampled_from([None, None, None, "dtype", "channels", "value", "target"]))
    if breakage == "dtype":
        dtype = draw(st.sampled_from([np.float16, np.int64, np.uint8, np.bool_, np.complex64]))
    elif breakage == "channels":
        x = np.concatenate([x, x], axis=1)[:, : draw(st.sampled_from([1, 2, 4]))]
    elif breakage == "value":
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    elif breakage == "target":
        targets = draw(st.sampled_from([-1, N_CLASSES, [0] * (n + 1), 1.5, "cat", [[0]]]))
    with np.errstate(invalid="ignore", over="ignore"):
        x = x.astype(dtype)
    batch_size = draw(st.sampled_from([1, 2, 7, 32]))
    return x, targets, batch_size


def _valid(x: np.ndarray, targets) -> bool:
    """Whether the sweep's input is one the API should explain."""
    if x.dtype.kind not in "fiub" or x.shape[1] != 3:
        return False
    if x.dtype.kind == "f" and not np.all(np.isfinite(x.astype(np.float64))):
        return False
    if targets is None:
        return True
    if isinstance(targets, int):
        return 0 <= targets < N_CLASSES
    if isinstance(targets, list):
        return len(targets) == len(x) and all(
            isinstance(t, int) and 0 <= t < N_CLASSES for t in targets
        )
    return False


@pytest.mark.parametrize("name", registry.names())
@settings(settings.get_profile(PROFILE))
@given(case=batches())
def test_every_method_gives_a_clear_error_or_a_finite_map(name, case):
    x, targets, batch_size = case
    method = registry.get(name).build(batch_size, **CHEAP.get(name, {}))
    try:
        result = salience.explain(MODEL, x, {name: method}, targets=targets, batch_size=batch_size)
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        # Small images may be refused (a window larger than the image); from 8x8
        # pixels up every method explains every valid input.
        assert not (_valid(x, targets) and min(x.shape[2:]) >= 8), f"{name} refused a valid input: {error}"
        return
    assert _valid(x, targets), f"{name} explained an input it should refuse: {x.dtype} {x.shape}, targets {targets!r}"
    maps = np.asarray(result.maps[name])
    assert maps.shape[0] == len(x)
    assert x.shape[2] in maps.shape[1:] and x.shape[3] in maps.shape[1:], (maps.shape, x.shape)
    assert np.all(np.isfinite(maps)), f"{name}: non-finite values in the map"
