"""Shared test models with known answers.  Nothing here downloads anything."""

from __future__ import annotations

import numpy as np
import pytest

from salience.model import (
    CONVOLUTION_LAYER_VALUES,
    CONVOLUTION_OUTPUT_GRADIENTS,
    INPUT_OUTPUT_GRADIENTS,
    OUTPUT_LAYER_VALUES,
)


class AnalyticModel:
    """score_t(x) = sum(tanh(W_t * x)^2) + sum(V_t * x): smooth, nonlinear, exact gradients.

    Implements the Model protocol for channels-last (n, H, W, C) inputs (or
    any shape matching W).  Counts calls and rows.  The "layer" is
    A = tanh(W_t * x) itself (so Grad-CAM has values and gradients).
    """

    def __init__(self, shape=(8, 8, 3), n_classes=3, seed=0, channels_last=True):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(size=(n_classes, *shape))
        self.V = rng.normal(size=(n_classes, *shape)) * 0.1
        self.channels_last = channels_last
        self.calls = 0
        self.rows = 0

    def _per_row(self, targets, n):
        t = np.zeros(n, dtype=int) if targets is None else np.asarray(targets)
        assert t.ndim == 1, "AnalyticModel takes class indices"
        return self.W[t], self.V[t]

    def score(self, x, targets=None):
        x = np.asarray(x, dtype=np.float64)
        w, v = self._per_row(targets, len(x))
        axes = tuple(range(1, x.ndim))
        return np.sum(np.tanh(w * x) ** 2, axis=axes) + np.sum(v * x, axis=axes)

    def gradient(self, x, targets=None):
        x = np.asarray(x, dtype=np.float64)
        w, v = self._per_row(targets, len(x))
        t = np.tanh(w * x)
        return 2 * t * (1 - t**2) * w + v

    def predict(self, x):
        x = np.asarray(x, dtype=np.float64)
        return np.stack([self.score(x, np.full(len(x), k)) for k in range(len(self.W))], axis=1)

    def __call__(self, x, targets, keys):
        self.calls += 1
        self.rows += len(x)
        out = {}
        if INPUT_OUTPUT_GRADIENTS in keys:
            out[INPUT_OUTPUT_GRADIENTS] = self.gradient(x, targets)
        if OUTPUT_LAYER_VALUES in keys:
            out[OUTPUT_LAYER_VALUES] = self.score(x, targets)
        if CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys:
            w, _ = self._per_row(targets, len(x))
            t = np.tanh(w * np.asarray(x, dtype=np.float64))
            out[CONVOLUTION_LAYER_VALUES] = t
            out[CONVOLUTION_OUTPUT_GRADIENTS] = 2 * t
        return out

    def call_model_function(self, targets=None):
        """The same model as a PAIR callback (class fixed by ``targets``)."""

        def fn(x_value_batch, call_model_args=None, expected_keys=None):
            t = call_model_args if call_model_args is not None else targets
            t = None if t is None else np.full(len(x_value_batch), t)
            return self(x_value_batch, t, expected_keys)

        return fn


class LinearModel(AnalyticModel):
    """score_t(x) = sum(V_t * x): IG is exactly (x - baseline) * V_t."""

    def __init__(self, shape=(8, 8, 3), n_classes=3, seed=0, channels_last=True):
        super().__init__(shape, n_classes, seed, channels_last)
        self.W = np.zeros_like(self.W)
        self.V = self.V * 10


@pytest.fixture
def analytic():
    return AnalyticModel()


@pytest.fixture
def linear():
    return LinearModel()


@pytest.fixture
def images():
    return np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float64)


@pytest.fixture(scope="session")
def model_classes():
    """(AnalyticModel, LinearModel): the classes themselves, for tests that build their own."""
    return AnalyticModel, LinearModel


@pytest.fixture
def png_claiming():
    """``png_claiming(path, width, height, mode="RGB")``: a tiny PNG whose header claims that
    size; it cannot be decoded, so a check that refuses it must run before decoding."""
    import struct
    import zlib

    from PIL import Image

    def make(path, width, height, mode="RGB"):
        Image.new(mode, (4, 4)).save(path)
        data = bytearray(path.read_bytes())
        ihdr = 8 + 4  # after the signature and the chunk length
        data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
        crc = zlib.crc32(bytes(data[ihdr: ihdr + 17]))
        data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
        path.write_bytes(bytes(data))
        return path

    return make


class _NumpyWithOldQuantile:
    """numpy, with ``quantile(interpolation=)`` (gone in numpy 2) mapped to ``method=``."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return np.quantile(a, q, *args, **kwargs)


@pytest.fixture
def pair_guided_ig_on_numpy2(monkeypatch):
    """Let the reference's Guided IG (``saliency.core.guided_ig``, also behind
    ``saliency.tf1.GuidedIG``) run on numpy >= 2, for one test."""
    guided_ig = pytest.importorskip("saliency.core.guided_ig")
    monkeypatch.setattr(guided_ig, "np", _NumpyWithOldQuantile())
