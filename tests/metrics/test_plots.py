"""Plots come back as Figures, without pyplot, with the expected lines and labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from salience.metrics import insertion_deletion as idl  # noqa: E402
from salience.metrics import pic, plots, sanity  # noqa: E402


def _curve(kind="deletion"):
    scores = np.array([[3.0, 2.0, 1.0], [2.0, 1.0, 0.0]])
    return idl.CurveResult(kind, np.array([0.0, 0.5, 1.0]), scores, np.array([2.0, 1.0]))


def test_plot_curves_insertion_deletion_and_pic(tmp_path):
    from matplotlib.figure import Figure

    fig = plots.plot_curves({"perfect": _curve(), "random": _curve()}, title="deletion")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 6  # 2 means + 2 x 2 images
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.5, 1.5, 0.5])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["perfect (AUC 1.500)", "random (AUC 1.500)"]
    assert ax.get_xlabel() == "fraction of pixels deleted"
    assert ax.get_ylabel() == "class probability"
    raw = idl.CurveResult("insertion", np.array([0.0, 1.0]), np.ones((1, 2)), np.ones(1),
                          score="output")
    assert plots.plot_curves(raw).axes[0].get_ylabel() == "model output"
    agg = pic.AggregateMetricResult(np.linspace(0, 1, 5), np.linspace(0, 1, 5) ** 2, 0.34)
    fig2 = plots.plot_curves(agg)
    assert fig2.axes[0].get_legend().get_texts()[0].get_text() == "PIC (AUC 0.340)"
    fig2.savefig(tmp_path / "pic.png")
    assert (tmp_path / "pic.png").stat().st_size > 0


def test_plot_sanity_starts_at_one():
    result = sanity.SanityResult(["fc", "conv"], True, np.array([[0.5, 0.7], [0.1, 0.1]]),
                                 np.array([[0.6, 0.6], [0.2, 0.2]]),
                                 np.array([[0.9, 0.9], [0.3, 0.3]]))
    fig = plots.plot_sanity(result)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 0.6, 0.2])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [1.0, 0.6, 0.1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["trained", "fc", "conv"]


def test_plot_bad_inputs():
    with pytest.raises(TypeError, match="expected CurveResult"):
        plots.plot_curves({"x": [1, 2, 3]})
    with pytest.raises(ValueError, match="empty"):
        plots.plot_curves({})
    with pytest.raises(TypeError, match="SanityResult"):
        plots.plot_sanity(_curve())


@pytest.mark.parametrize("layers", [["fc", "conv"],
                                    [f"features.{i}.block.0" for i in range(12)],
                                    [f"encoder.layers.{i}.attention.output.dense"
                                     for i in range(30)]])
def test_plot_sanity_labels_fit_in_the_figure(layers):
    k = len(layers)
    result = sanity.SanityResult(layers, True, np.full((k, 2), 0.5), np.full((k, 2), 0.4),
                                 np.full((k, 2), 0.3))
    fig = plots.plot_sanity(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    inside = fig.bbox.padded(0.5)
    for text in [ax.yaxis.label, ax.xaxis.label, *ax.get_xticklabels()]:
        box = text.get_window_extent(renderer)
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (
            f"{text.get_text()!r} is cut off: {box} outside {fig.bbox}")
