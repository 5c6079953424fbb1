"""The documentation site builds with warnings as errors, every example executed.

``mkdocs build --strict`` runs on a copy of ``mkdocs.yml`` that writes the site to a
temporary directory and turns the notebook cache off, so each example really runs (a stale
cache would hide an example broken by a change in salience). Deselect locally with
``-m 'not docs'``; ``make test`` runs it.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
DEFAULT_TIMEOUT = 1800  # seconds; a 2-core CI machine builds it in a few minutes

yaml = pytest.importorskip("yaml")
pytest.importorskip("mkdocs")


def build_config(site_dir: Path) -> dict:
    """mkdocs.yml with absolute paths, the site in ``site_dir`` and no notebook cache."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(ROOT / "docs")
    config["site_dir"] = str(site_dir)
    for extension in config["markdown_extensions"]:
        if isinstance(extension, dict) and "pymdownx.snippets" in extension:
            extension["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocs-jupyter" in plugin:
            plugin["mkdocs-jupyter"]["cache"] = False
            assert plugin["mkdocs-jupyter"]["execute"] is True
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    return config


def build_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(build_config(site), sort_keys=False),
                           encoding="utf-8")
    # MPLBACKEND stays unset: the kernel then draws figures inline, into the page.
    env = {**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
           "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=float(os.environ.get("SALIENCE_DOCS_TIMEOUT", DEFAULT_TIMEOUT)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-8000:]
    return site


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The site, built once per test session (the browser test opens it too)."""
    return build_site(tmp_path_factory.mktemp("docs"))


def test_every_example_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert EXAMPLES
    for example in EXAMPLES:
        assert f"examples/{example.name}" in nav, example.name


@pytest.mark.docs
def test_strict_build_executes_every_example(built_site):
    for example in EXAMPLES:
        page = (built_site / "examples" / example.stem / "index.html").read_text(
            encoding="utf-8")
        # Executed: outputs, and every plotted figure inlined as a PNG.
        assert "jp-OutputArea-output" in page, example.name
        assert "Traceback" not in page, example.name
        if "plt." in example.read_text(encoding="utf-8"):
            assert re.search(r'<img[^>]+src="data:image/png;base64,', page), example.name
    api = (built_site / "api" / "methods" / "index.html").read_text(encoding="utf-8")
    for name in ("IntegratedGradients", "GradCAM", "KernelSHAP", "References"):
        assert name in api
    architecture = (built_site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert "Where to add" in architecture




@pytest.fixture
def served_site(built_site):
    """The built site over HTTP on localhost (as it is published: the search worker and
    relative links behave as on a web server, not as on file://)."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.mark.docs
def test_quick_start_page_in_a_browser(built_site, served_site, chromium):
    page = built_site / "examples" / "quick_start" / "index.html"
    result = chromium.probe(page, f"{served_site}/examples/quick_start/")
    assert result["n"] >= 1  # the example's figure, an inlined PNG
    assert result["bad"] == [], f"images that did not load: {result['bad']}"
    # mkdocs-jupyter writes an empty MathJax tag (<script src="">, no CDN); browsers answer
    # it with an error event, fetching and logging nothing.  Anything else is a failure.
    errors = [e for e in result["errors"] if not (e["tag"] == "SCRIPT" and e["src"] == "")]
    assert errors == []

    pixels = chromium.screenshot(f"{served_site}/examples/quick_start/", 1200, 2400)
    assert pixels.std() > 10                                       # not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3) // 8, axis=0)) > 200  # pictures, not just text
