"""A model whose score is the sum of a known region: the perfect map is known."""

from __future__ import annotations

import numpy as np
import pytest

from salience.model import OUTPUT_LAYER_VALUES


class RegionSumModel:
    """score(x) = sum of x over ``region`` (all channels); class k scales it by k + 1.

    Channels-last (n, H, W, C) or channels-first (n, C, H, W) inputs.  Counts
    calls and rows.  ``predict`` returns the scores of 3 classes.
    """

    def __init__(self, region, channels_last=True):
        self.region = np.asarray(region, dtype=bool)
        self.channels_last = channels_last
        self.calls = 0
        self.rows = 0

    def _sum(self, x):
        x = np.asarray(x, dtype=np.float64)
        if not self.channels_last and x.ndim == 4:
            x = np.moveaxis(x, 1, -1)
        return x[:, self.region].reshape(len(x), -1).sum(axis=1)

    def predict(self, x):
        s = self._sum(x)
        return np.stack([s, 2 * s, -s], axis=1) / 100.0

    def __call__(self, x, targets, keys):
        self.calls += 1
        self.rows += len(x)
        t = np.zeros(len(x), dtype=int) if targets is None else np.asarray(targets)
        return {OUTPUT_LAYER_VALUES: self.predict(x)[np.arange(len(x)), t] * 100.0 / (t + 1)}


@pytest.fixture
def region():
    r = np.zeros((12, 10), dtype=bool)
    r[3:7, 2:6] = True  # 16 of 120 pixels
    return r


@pytest.fixture
def region_model(region):
    return RegionSumModel(region)


@pytest.fixture
def positive_images():
    return np.random.default_rng(0).uniform(0.5, 1.5, size=(4, 12, 10, 3))
