"""Channel reductions: one function (salience.arrays.reduce_channels) wherever a map
becomes 2-D, and the ``reduction=`` option of the places that use it."""

from __future__ import annotations

import numpy as np
import pytest

from salience.arrays import REDUCTIONS, reduce_channels

MAPS = np.random.default_rng(3).normal(size=(2, 5, 6, 3))  # (n, H, W, C), signed

# Each reduction written out channel by channel, the way its source defines it.
EXPECTED = {
    "sum": MAPS[..., 0] + MAPS[..., 1] + MAPS[..., 2],
    "abs_sum": abs(MAPS[..., 0]) + abs(MAPS[..., 1]) + abs(MAPS[..., 2]),
    "abs_max": np.maximum(np.maximum(abs(MAPS[..., 0]), abs(MAPS[..., 1])), abs(MAPS[..., 2])),
    "l2": (MAPS[..., 0] ** 2 + MAPS[..., 1] ** 2 + MAPS[..., 2] ** 2) ** 0.5,
    "max": np.maximum(np.maximum(MAPS[..., 0], MAPS[..., 1]), MAPS[..., 2]),
}


def test_every_reduction_is_tested():
    assert set(EXPECTED) == set(REDUCTIONS)


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_each_reduction_equals_its_definition_in_either_layout(how):
    np.testing.assert_allclose(reduce_channels(MAPS, how, -1), EXPECTED[how], rtol=1e-14)
    first = np.moveaxis(MAPS, -1, 1)  # (n, C, H, W)
    np.testing.assert_allclose(reduce_channels(first, how, 1), EXPECTED[how], rtol=1e-14)
    np.testing.assert_allclose(reduce_channels(MAPS[0], how, 2), EXPECTED[how][0], rtol=1e-14)


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_maps_without_channels_are_one_channel(how):
    flat = MAPS[..., 0]
    out = reduce_channels(flat, how, None)
    np.testing.assert_allclose(out, reduce_channels(flat[..., None], how, -1), rtol=0)
    assert out.shape == flat.shape


def test_dtypes_and_array_types():
    assert reduce_channels(MAPS.astype(np.float32), "l2").dtype == np.float32
    ints = np.arange(-6, 6).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(reduce_channels(ints, "abs_max"),
                                  np.abs(ints).max(axis=-1).astype(np.float64))
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(reduce_channels(torch.from_numpy(MAPS), "abs_sum"),
                               EXPECTED["abs_sum"], rtol=1e-14)


@pytest.mark.parametrize("how", ["L2", "mean", None, 2])
def test_unknown_reductions_name_the_valid_ones(how):
    with pytest.raises(ValueError, match=r"reduction must be one of 'sum', 'abs_sum', "
                                         r"'abs_max', 'l2', 'max', got "):
        reduce_channels(MAPS, how)


def test_channel_axis_out_of_range():
    with pytest.raises(ValueError, match=r"channel_axis=4 is out of range for maps of shape "
                                         r"\(2, 5, 6, 3\)"):
        reduce_channels(MAPS, "sum", 4)


# --- visualize --------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_to_2d_reduces_with_the_chosen_reduction(how):
    from salience.visualize import to_2d

    np.testing.assert_allclose(to_2d(MAPS[0], reduction=how), EXPECTED[how][0], rtol=1e-14)
    first = np.moveaxis(MAPS[0], -1, 0)  # (C, H, W), found by the image size
    np.testing.assert_allclose(to_2d(first, (5, 6), how), EXPECTED[how][0], rtol=1e-14)


def test_to_2d_keeps_summing_by_default_and_refuses_unknown_reductions():
    from salience.visualize import to_2d

    np.testing.assert_array_equal(to_2d(MAPS[0]), MAPS[0].sum(axis=-1))
    with pytest.raises(ValueError, match="reduction must be one of"):
        to_2d(MAPS[0], reduction="median")


@pytest.mark.parametrize("how", ["abs_max", "l2"])
def test_heatmap_overlay_and_top_regions_take_the_reduction(how):
    from salience import visualize

    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    reduced = EXPECTED[how][0]
    np.testing.assert_array_equal(visualize.heatmap(MAPS[0], reduction=how),
                                  visualize.heatmap(reduced))
    np.testing.assert_array_equal(visualize.overlay(image, MAPS[0], reduction=how),
                                  visualize.overlay(image, reduced))
    np.testing.assert_array_equal(visualize.top_regions(image, MAPS[0], 0.3, reduction=how),
                                  visualize.top_regions(image, reduced, 0.3))
    # a real difference from the default sum, so the option is not ignored
    assert not np.array_equal(visualize.heatmap(MAPS[0], reduction=how),
                              visualize.heatmap(MAPS[0]))


def test_abs_sum_is_pairs_grayscale_reduction():
    saliency = pytest.importorskip("saliency.core")
    from salience.visualize import visualize_image_grayscale

    for image_3d in MAPS:
        np.testing.assert_allclose(
            visualize_image_grayscale(reduce_channels(image_3d, "abs_sum")),
            saliency.VisualizeImageGrayscale(image_3d), rtol=1e-12)


# --- metrics ----------------------------------------------------------------------------


def _masks():
    masks = np.zeros((2, 5, 6), bool)
    masks[:, 1:3, 2:5] = True
    return masks


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_agreement_metrics_reduce_with_the_chosen_reduction(how):
    from salience.metrics import agreement

    masks = _masks()
    first = np.moveaxis(MAPS, -1, 1)
    for fn in (agreement.pointing_game, agreement.top_k_iou):
        np.testing.assert_array_equal(fn(MAPS, masks, reduction=how), fn(EXPECTED[how], masks))
        np.testing.assert_array_equal(fn(first, masks, channels_last=False, reduction=how),
                                      fn(EXPECTED[how], masks))
    table = agreement.agreement_table(MAPS, masks, reduction=how)
    assert table == agreement.agreement_table(EXPECTED[how], masks)


def test_the_reduction_changes_what_the_metrics_see():
    from salience.metrics import agreement

    # a pixel whose channels cancel: first by abs_max / abs_sum, last by the signed sum
    maps = np.zeros((1, 5, 6, 3))
    maps[0, 0, 0] = [5.0, -5.0, 0.1]
    maps[0, 4, 5] = [0.5, 0.5, 0.5]
    masks = np.zeros((1, 5, 6), bool)
    masks[0, 0, 0] = True
    assert not agreement.pointing_game(maps, masks)[0]
    assert agreement.pointing_game(maps, masks, reduction="abs_max")[0]


def test_insertion_and_deletion_reduce_with_the_chosen_reduction(analytic, images):
    from salience.metrics import deletion, insertion, insertion_deletion_curves

    maps = np.random.default_rng(5).normal(size=images.shape)
    flat = reduce_channels(maps, "l2")
    for fn in (insertion, deletion):
        got = fn(analytic, images, maps, 1, steps=6, score="output", reduction="l2")
        np.testing.assert_allclose(got.auc, fn(analytic, images, flat, 1, steps=6,
                                               score="output").auc, rtol=1e-12)
        assert not np.allclose(got.auc, fn(analytic, images, maps, 1, steps=6,
                                           score="output").auc)
    ins, dele = insertion_deletion_curves(analytic, images, maps, 1, steps=6, score="output",
                                          reduction="abs_max")
    np.testing.assert_allclose(ins.auc, insertion(analytic, images, reduce_channels(
        maps, "abs_max"), 1, steps=6, score="output").auc, rtol=1e-12)


def test_a_bad_reduction_stops_the_metrics_before_the_model_runs(analytic, images):
    from salience.metrics import evaluate_maps, insertion, insertion_deletion_curves

    class Counting(type(analytic)):
        predicts = 0

        def predict(self, x):
            self.predicts += 1
            return super().predict(x)

    model = Counting()
    maps = np.ones(images.shape)
    for call in (
        lambda: insertion(model, images, maps, reduction="abs"),
        lambda: insertion_deletion_curves(model, images, maps, reduction="abs"),
        lambda: evaluate_maps(model, images, list(np.zeros((3, 8, 8, 3), np.uint8)),
                              {"m": maps}, None, lambda b: b, reduction="abs"),
    ):
        with pytest.raises(ValueError, match="reduction must be one of"):
            call()
    assert model.calls == 0 and model.predicts == 0


def test_evaluate_maps_ranks_pixels_by_the_chosen_reduction(analytic):
    from salience.metrics import evaluate_maps

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = images / 255.0
    maps = rng.normal(size=(2, 8, 8, 3))

    def run(m, **kwargs):
        return evaluate_maps(analytic, x, list(images), {"m": m}, np.array([0, 1]),
                             lambda batch: np.asarray(batch) / 255.0, steps=5, **kwargs)

    for how in ("abs_max", "l2", "abs_sum"):
        assert run(maps, reduction=how) == run(reduce_channels(maps, how))
    # the default ranks by the sum of magnitudes, as before the option existed
    assert run(maps) == run(np.abs(maps).sum(axis=-1))
    assert run(maps, reduction="abs_max") != run(maps)


# --- XRAI -------------------------------------------------------------------------------


def _xrai_inputs():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.random((2, 24, 24, 3)), (0, 3, 3, 0))
    attr = ndimage.gaussian_filter(rng.normal(size=x.shape), (0, 2, 2, 0))
    masks = []
    for r0, r1, c0, c1 in [(0, 12, 0, 12), (0, 24, 0, 8), (8, 24, 6, 24), (6, 18, 6, 18)]:
        m = np.zeros((24, 24), bool)
        m[r0:r1, c0:c1] = True
        masks.append(m)
    return x, attr, masks


def _not_called(x, targets, keys):
    raise AssertionError("given attributions: the model is not called")


@pytest.mark.parametrize("how", list(REDUCTIONS))
def test_xrai_ranks_regions_by_the_chosen_reduction(how):
    import salience

    x, attr, masks = _xrai_inputs()
    got = salience.XRAI(segments=masks, reduction=how).explain_with_details(
        _not_called, x, attributions=attr)
    # the same ranking of the reduced attribution given as a gray image's
    gray = salience.XRAI(segments=masks).explain_with_details(
        _not_called, x[..., :1], attributions=reduce_channels(attr, how)[..., None])
    np.testing.assert_array_equal(got.maps, gray.maps)
    np.testing.assert_array_equal(got.ranks, gray.ranks)


def test_xrai_keeps_pairs_channel_maximum_by_default_and_checks_the_option():
    import salience

    x, attr, masks = _xrai_inputs()
    default = salience.XRAI(segments=masks).explain_with_details(_not_called, x,
                                                                 attributions=attr)
    pair_rule = salience.XRAI(segments=masks, reduction="max").explain_with_details(
        _not_called, x, attributions=attr)
    np.testing.assert_array_equal(default.maps, pair_rule.maps)
    other = salience.XRAI(segments=masks, reduction="abs_sum").explain_with_details(
        _not_called, x, attributions=attr)
    assert not np.array_equal(default.maps, other.maps)
    with pytest.raises(ValueError, match="reduction must be one of"):
        salience.XRAI(reduction="mean")


# --- salience.explain -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["abs_max", "l2", "sum"])
def test_explain_gives_2d_maps_with_the_chosen_reduction(how, model_classes, images):
    import salience

    analytic = model_classes[0]()
    methods = ["gradients", "input_x_gradient", "gradcam"]
    plain = salience.explain(analytic, images, methods, 0)
    reduced = salience.explain(analytic, images, methods, 0, reduction=how)
    for name in ("gradients", "input_x_gradient"):
        assert reduced.maps[name].shape == (3, 8, 8)
        np.testing.assert_allclose(reduced.maps[name], reduce_channels(plain.maps[name], how),
                                   rtol=1e-14)
    # Grad-CAM's maps have no channel axis: one channel (and >= 0, so unchanged)
    np.testing.assert_array_equal(reduced.maps["gradcam"], plain.maps["gradcam"])


def test_explain_reduces_channels_first_maps_on_axis_1(model_classes, images):
    import salience

    first = np.moveaxis(images, -1, 1)
    model = model_classes[0](shape=(3, 8, 8), channels_last=False)
    plain = salience.explain(model, first, ["gradients"], 1).maps["gradients"]
    reduced = salience.explain(model, first, ["gradients"], 1, reduction="abs_sum")
    np.testing.assert_allclose(reduced.maps["gradients"], np.abs(plain).sum(axis=1),
                               rtol=1e-14)


def test_explain_refuses_a_bad_reduction_before_the_model_runs(model_classes, images):
    import salience

    model = model_classes[0]()
    with pytest.raises(ValueError, match="reduction must be one of .* got 'norm'"):
        salience.explain(model, images, ["gradients"], 0, reduction="norm")
    assert model.calls == 0


# --- the command line -------------------------------------------------------------------


def _cli_workdir(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5))
    torch.save(net, tmp_path / "net.pt")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / "a.png")
    return ["explain", str(images), "--model", str(tmp_path / "net.pt"), "--trust-model",
            "--size", "16", "--preset", "unit", "--methods", "gradients", "-q"]


def test_cli_reduction_reaches_the_pictures_and_the_metrics(tmp_path, monkeypatch):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    import salience.metrics
    import salience.registry
    from salience import visualize
    from salience.cli import app

    args = _cli_workdir(tmp_path)
    seen = []
    original = salience.metrics.evaluate_maps

    def recording(*a, **kw):
        seen.append(kw.get("reduction"))
        return original(*a, **kw)

    monkeypatch.setattr(salience.metrics, "evaluate_maps", recording)
    for out, extra in (("plain", []), ("l2", ["--reduction", "l2"])):
        result = CliRunner().invoke(app, [*args, "--metrics", "-o", str(tmp_path / out),
                                          *extra])
        assert result.exit_code == 0, result.output
    assert seen == ["abs_sum", "l2"]  # metrics: abs_sum as before, or the chosen one
    raw = np.load(tmp_path / "l2" / "maps.npz")["a__gradients"]  # every channel kept
    assert raw.shape == (3, 16, 16)
    # Gradients are signed: the channel sum is drawn on the diverging scale; a
    # magnitude (l2) from zero.
    assert salience.registry.get("gradients").signed
    for out, how, absolute in (("plain", "sum", False), ("l2", "l2", True)):
        png = np.asarray(Image.open(tmp_path / out / "maps" / "a__gradients.png"))
        expected = visualize.heatmap(visualize.to_2d(raw, (16, 16), how), absolute=absolute)
        np.testing.assert_array_equal(png, expected)
    summary = json.loads((tmp_path / "l2" / "summary.json").read_text())
    assert summary["settings"]["reduction"] == "l2"


def test_cli_refuses_an_unknown_reduction_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from salience.cli import app

    args = _cli_workdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--reduction",
                                      "mean"])
    assert result.exit_code == 2
    assert "--reduction must be one of 'sum', 'abs_sum', 'abs_max', 'l2', 'max', got 'mean'" \
        in result.output
    assert not (tmp_path / "out").exists()
