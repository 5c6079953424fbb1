"""Agreement with expert masks: known answers, random maps, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from salience.metrics import agreement as ag


@pytest.fixture
def masks():
    m = np.zeros((5, 16, 16), dtype=bool)
    m[:, 4:8, 6:12] = True  # 24 of 256 pixels
    return m


def test_perfect_map_scores_one(masks):
    maps = masks.astype(float) + np.random.default_rng(0).random(masks.shape) * 1e-3
    np.testing.assert_array_equal(ag.pointing_game(maps, masks), [True] * 5)
    np.testing.assert_allclose(ag.energy_pointing_game(masks.astype(float), masks), 1.0)
    np.testing.assert_allclose(ag.top_k_iou(maps, masks, k=24 / 256), 1.0)
    # a larger top-k region: IoU = mask area / region area
    np.testing.assert_allclose(ag.top_k_iou(maps, masks, k=48 / 256), 0.5)


def test_random_maps_do_worse(masks):
    rng = np.random.default_rng(1)
    many = np.repeat(masks[:1], 200, axis=0)
    maps = rng.random(many.shape)
    assert ag.pointing_game(maps, many).mean() < 0.3  # expected 24/256
    energy = ag.energy_pointing_game(maps, many)
    assert 0.05 < energy.mean() < 0.15
    assert ag.top_k_iou(maps, many, k=24 / 256).mean() < 0.2


def test_known_values_and_tolerance(masks):
    maps = np.zeros(masks.shape)
    maps[:, 0, 0] = 1.0  # peak far from the mask
    maps[:, 5, 7] = 0.5  # some energy inside
    assert not ag.pointing_game(maps, masks).any()
    # (0, 0) to the nearest mask pixel (4, 6): distance sqrt(16 + 36) ~ 7.2
    assert ag.pointing_game(maps, masks, tolerance=7.3).all()
    assert not ag.pointing_game(maps, masks, tolerance=7.1).any()
    np.testing.assert_allclose(ag.energy_pointing_game(maps, masks), 0.5 / 1.5)
    np.testing.assert_allclose(ag.top_k_iou(maps, masks, k=2 / 256), 1 / 25)
    rows = ag.agreement_table(maps, masks, k=2 / 256)
    assert rows[0] == {"image": 0, "pointing_hit": False, "energy": pytest.approx(1 / 3),
                       "top_k_iou": pytest.approx(1 / 25), "mask_fraction": 24 / 256}


def test_channels_are_summed(masks):
    maps = np.random.default_rng(2).random((*masks.shape, 3))
    np.testing.assert_array_equal(ag.pointing_game(maps, masks),
                                  ag.pointing_game(maps.sum(-1), masks))
    np.testing.assert_array_equal(
        ag.top_k_iou(np.moveaxis(maps, -1, 1), masks, channels_last=False),
        ag.top_k_iou(maps, masks))


def test_bad_inputs(masks):
    maps = np.random.default_rng(3).random(masks.shape)
    with pytest.raises(ValueError, match=r"masks has shape \(5, 16, 15\)"):
        ag.pointing_game(maps, masks[:, :, :15])
    empty = masks.copy()
    empty[2] = False
    with pytest.raises(ValueError, match=r"masks\[2\] is empty"):
        ag.top_k_iou(maps, empty)
    nan = maps.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"saliency contains NaN.*\(1, 2, 3\)"):
        ag.energy_pointing_game(nan, masks)
    with pytest.raises(ValueError, match=r"saliency\[0\] has no positive value"):
        ag.energy_pointing_game(-maps, masks)
    with pytest.raises(ValueError, match="k must be in"):
        ag.top_k_iou(maps, masks, k=0)
    with pytest.raises(ValueError, match="0/1"):
        ag.pointing_game(maps, masks * 2)
    with pytest.raises(ValueError, match="batch of maps"):
        ag.pointing_game(maps[0], masks[0])
    rows = ag.agreement_table(-maps, masks)
    assert rows[0]["energy"] is None
