"""Plots of the metrics, returned as matplotlib Figures.

The figures are built with ``matplotlib.figure.Figure`` and the Agg canvas,
never through ``pyplot``: nothing is shown, no global figure state is
touched, and they work on headless machines.  Save them with
``fig.savefig(path)`` or show them in a notebook by leaving them as the last
expression of a cell.

References
----------
Kapishnikov et al. "XRAI: Better Attributions Through Regions", ICCV 2019 (PIC).
Petsiuk et al. "RISE", BMVC 2018 (insertion / deletion).
Adebayo et al. "Sanity Checks for Saliency Maps", NeurIPS 2018.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .insertion_deletion import CurveResult
from .pic import AggregateMetricResult, PicMetricResult
from .sanity import SanityResult

__all__ = ["plot_curves", "plot_sanity"]


def _figure(size: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_curves(
    curves: CurveResult | PicMetricResult | AggregateMetricResult | Mapping[str, Any],
    title: str | None = None,
    show_images: bool = True,
):
    """Plot PIC (SIC/AIC) or insertion/deletion curves, one line per entry.

    Parameters
    ----------
    curves : result or mapping of label -> result
        :class:`~salience.metrics.insertion_deletion.CurveResult` (the mean
        over its images is drawn, each image faintly when ``show_images``),
        :class:`~salience.metrics.pic.PicMetricResult` or
        :class:`~salience.metrics.pic.AggregateMetricResult`.  The legend
        gives each curve's area under the curve.
    title : str, optional
        Title of the axes.
    show_images : bool
        Also draw the curve of every image of a CurveResult.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(curves, Mapping):
        curves = {_default_label(curves): curves}
    if not curves:
        raise ValueError("curves is empty; pass a result or a mapping label -> result")
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    xlabel, ylabel = "fraction of pixels", "score"
    for label, result in curves.items():
        if isinstance(result, CurveResult):
            mean = result.scores.mean(axis=0)
            (line,) = ax.plot(result.fractions, mean,
                              label=f"{label} (AUC {float(np.mean(result.auc)):.3f})")
            if show_images and len(result.scores) > 1:
                for s in result.scores:
                    ax.plot(result.fractions, s, color=line.get_color(), alpha=0.15, lw=0.8)
            xlabel = f"fraction of pixels {'inserted' if result.kind == 'insertion' else 'deleted'}"
            ylabel = "class probability" if result.score == "probability" else "model output"
        elif isinstance(result, (PicMetricResult, AggregateMetricResult)):
            ax.plot(result.curve_x, result.curve_y, label=f"{label} (AUC {result.auc:.3f})")
            xlabel, ylabel = "normalised information (entropy)", "normalised prediction"
        else:
            raise TypeError(
                f"curves[{label!r}] is a {type(result).__name__}; expected CurveResult, "
                "PicMetricResult or AggregateMetricResult"
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_sanity(result: SanityResult, title: str | None = None):
    """Plot the similarity to the trained model's maps after each randomisation step.

    The first point, "trained", is the trained model itself (similarity 1).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(result, SanityResult):
        raise TypeError(f"result must be a SanityResult, got {type(result).__name__}")
    labels = ["trained", *result.layers]
    positions = np.arange(len(labels))
    # Rotated layer names take height from the axes: grow the figure with the longest
    # one so the axes keep room for the y label.
    longest = max(len(label) for label in labels)
    fig = _figure((max(5.0, 0.45 * len(labels) + 2), 3.2 + 0.055 * longest))
    ax = fig.add_subplot()
    for name, values in (("Spearman (abs)", result.spearman_abs),
                         ("Spearman", result.spearman), ("SSIM", result.ssim)):
        mean = np.concatenate([[1.0], np.nanmean(values, axis=1)])
        ax.plot(positions, mean, marker="o", label=name)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(positions, labels, rotation=60, ha="right", fontsize="small")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("similarity to the\ntrained model's maps")
    ax.set_xlabel(("cascading" if result.cascading else "independent") + " randomisation")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def _default_label(result: Any) -> str:
    if isinstance(result, CurveResult):
        return result.kind
    return "PIC"
