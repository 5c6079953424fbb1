"""The generated report in a real browser (headless Chromium): every image loads, the
page logs nothing to the console, and the screenshot is not blank.

Skipped, with the reason shown, where no Chromium is installed (the ``chromium`` fixture of
conftest.py; ``.ci/run`` installs the Debian package ``chromium`` before ``make test``, so CI
always runs it).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report from a tiny PyTorch model on a colour and a gray image."""
    from typer.testing import CliRunner

    from salience.cli import app

    root = tmp_path_factory.mktemp("browser")
    (root / "salience_browser_arch.py").write_text(textwrap.dedent("""
        import torch


        def net():
            torch.manual_seed(0)
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6))
        """))
    import sys

    sys.path.insert(0, str(root))
    try:
        import salience_browser_arch

        torch.save(salience_browser_arch.net().state_dict(), root / "net.pt")
        images = root / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        gradient = np.linspace(0, 255, 48 * 64).reshape(48, 64)
        colour = np.stack([gradient, gradient[::-1], rng.uniform(0, 255, (48, 64))], -1)
        Image.fromarray(colour.astype(np.uint8)).save(images / "colour photo.png")
        Image.fromarray(gradient.astype(np.uint8)).save(images / "gray.tif")
        result = CliRunner().invoke(app, [
            "explain", str(images), "--model", str(root / "net.pt"), "--arch",
            "salience_browser_arch:net", "--size", "32", "--methods",
            "gradients,integrated_gradients,gradcam", "--out", str(root / "report"),
        ])
    finally:
        sys.path.remove(str(root))
    assert result.exit_code == 0, result.output
    return root / "report"


def test_every_image_and_legend_loads_without_console_errors(report, chromium):
    # a legend is drawn: a colour strip of some width with its gradient
    result = chromium.probe(report / "index.html", legends=(
        "Array.prototype.slice.call(document.querySelectorAll('figure .legend .strip'))"
        ".filter(function (s) { return s.offsetWidth > 100 && getComputedStyle(s)"
        ".backgroundImage.indexOf('linear-gradient') === 0; }).length"))
    # 2 originals + 2 images x 3 methods overlays, each with its colour legend drawn
    assert result["n"] == 2 + 2 * 3
    assert result["legends"] == 2 * 3
    assert result["bad"] == [], f"images that did not load: {result['bad']}"
    assert result["errors"] == []


def test_screenshot_is_not_blank(report, chromium):
    pixels = chromium.screenshot((report / "index.html").as_uri(), 1200, 1400)
    assert pixels.std() > 10  # not one flat colour
    colours = np.unique(pixels.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 200  # photos and heatmaps, not just text on white
