"""The generated report in a real browser (headless Chromium): every image loads, the
page logs nothing to the console, and the screenshot is not blank.

Skipped, with the reason shown, where no Chromium is installed (the ``chromium`` fixture of
conftest.py; ``.ci/run`` installs the Debian package ``chromium`` before ``make test``, so CI
always runs it).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


PROBE_HEAD = """<script>
window.__probeErrors = [];
window.addEventListener('error', function (e) {
  window.__probeErrors.push((e.target && e.target.src) || String(e.message));
}, true);
</script>"""

PROBE_TAIL = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                .map(function (i) { return i.getAttribute('src'); });
  var strips = Array.prototype.slice.call(document.querySelectorAll('figure .legend .strip'));
  var drawn = strips.filter(function (s) {
    return s.offsetWidth > 100 && getComputedStyle(s).backgroundImage.indexOf('linear-gradient') === 0;
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({n: imgs.length, bad: bad, errors: window.__probeErrors,
                                    legends: drawn.length});
  document.body.appendChild(out);
});
</script>"""


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
    html = (report / "index.html").read_text(encoding="utf-8")
    probe = report / "probe.html"
    probe.write_text(
        html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>"),
        encoding="utf-8",
    )
    try:
        run = chromium.run(probe.as_uri(), "--dump-dom")
    finally:
        probe.unlink()
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the probe did not run; DOM starts with {run.stdout[:300]!r}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    # 2 originals + 2 images x 3 methods overlays, each with its colour legend drawn
    assert result["n"] == 2 + 2 * 3
    assert result["legends"] == 2 * 3
    assert result["bad"] == [], f"images that did not load: {result['bad']}"
    assert result["errors"] == []
    assert chromium.console_lines(run.stderr) == []


def test_screenshot_is_not_blank(report, chromium):
    pixels = chromium.screenshot((report / "index.html").as_uri(), 1200, 1400)
    assert pixels.std() > 10  # not one flat colour
    colours = np.unique(pixels.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 200  # photos and heatmaps, not just text on white
