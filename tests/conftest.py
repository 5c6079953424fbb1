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


@pytest.fixture(scope="session")
def tiny_vit():
    """``tiny_vit(size=(16, 16), patch=4, dim=16, depth=2, heads=2, classes=5, prefix=1,
    pool="token")``: a small vision transformer in torch (float64, eval mode, seeded
    weights), laid out as timm's ViT (``patch_embed``, ``blocks.<i>.norm1``, ...).

    ``prefix`` learned tokens come before the patch tokens (1: ViT's class token; 2:
    DeiT's class and distillation tokens); the head reads the class token
    (``pool="token"``) or the mean patch token (``pool="mean"``).  With the class-token
    head, the last block's patch tokens do not reach the score (their gradient is 0),
    which is why pytorch-grad-cam's ViT recipe takes the last block's ``norm1``, the
    input of its attention."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            n, t, d = x.shape
            qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            weights = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                     nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TinyViT(nn.Module):
        def __init__(self, size=(16, 16), patch=4, dim=16, depth=2, heads=2, classes=5,
                     prefix=1, pool="token"):
            super().__init__()
            torch.manual_seed(0)
            self.pool, self.n_prefix = pool, prefix
            self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.prefix = nn.Parameter(torch.randn(1, prefix, dim) * 0.5)
            patches = (size[0] // patch) * (size[1] // patch)
            self.pos_embed = nn.Parameter(torch.randn(1, prefix + patches, dim) * 0.5)
            self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (n, h*w, dim) by rows
            tokens = torch.cat([self.prefix.expand(len(x), -1, -1), patches], 1)
            out = self.norm(self.blocks(tokens + self.pos_embed))
            pooled = out[:, 0] if self.pool == "token" else out[:, self.n_prefix:].mean(1)
            return self.head(pooled)

    def build(**kwargs):
        return TinyViT(**kwargs).double().eval()

    return build


class Chromium:
    """Headless Chromium, run once per page (flags that work in containers and CI)."""

    FLAGS = (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
    )

    def __init__(self, executable: str, workdir):
        self.executable = executable
        self.workdir = workdir
        self.runs = 0

    @staticmethod
    def find() -> str | None:
        import shutil
        from pathlib import Path

        for name in ("chromium", "chromium-browser", "google-chrome"):
            found = shutil.which(name)
            if found:
                return found
        return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None

    def run(self, url: str, *extra: str):
        """Open ``url`` in a fresh profile; ``extra``: e.g. ``--dump-dom``, ``--screenshot=``."""
        import subprocess

        self.runs += 1
        profile = self.workdir / f"chromium-profile-{self.runs}"
        profile.mkdir()
        return subprocess.run(
            [self.executable, *self.FLAGS, f"--user-data-dir={profile}",
             "--virtual-time-budget=10000", *extra, url],
            capture_output=True, text=True, timeout=120, check=False,
        )

    def screenshot(self, url: str, width: int, height: int):
        """The page as an (height, width, 3) int16 array, after checking that Chromium
        drew it and that the page logged nothing to its console."""
        import numpy as np
        from PIL import Image

        shot = self.workdir / f"shot-{self.runs + 1}.png"
        run = self.run(url, f"--screenshot={shot}", f"--window-size={width},{height}")
        assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
        assert self.console_lines(run.stderr) == []
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
        assert pixels.shape[:2] == (height, width)
        return pixels

    # Injected into a copy of the page under test: records failed loads and errors, and once
    # everything has loaded writes what it saw (and each of ``extra``'s JavaScript
    # expressions) into the DOM for --dump-dom.
    PROBE_HEAD = """<script>
window.__probeErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  var attr = t.getAttribute ? (t.getAttribute('src') ?? t.getAttribute('href')) : null;
  window.__probeErrors.push({tag: t.tagName || null, src: attr,
                             message: e.message ? String(e.message) : null});
}, true);
</script>"""
    PROBE_TAIL = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                .map(function (i) { return (i.getAttribute('src') || '').slice(0, 60); });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({n: imgs.length, bad: bad, errors: window.__probeErrors%s});
  document.body.appendChild(out);
});
</script>"""

    def probe(self, page, base_url: str | None = None, **extra: str) -> dict:
        """Open a copy of the HTML file ``page`` with the probe, at ``base_url`` +
        ``probe.html`` (served next to the page) or as a file; return what the probe saw:
        ``n`` images, the ``bad`` ones, the ``errors`` events and each of ``extra``'s
        JavaScript expressions, after checking Chromium ran and the page logged nothing."""
        import json
        import re

        fields = "".join(f", {name}: ({expression})" for name, expression in extra.items())
        copy = page.with_name("probe.html")
        html = page.read_text(encoding="utf-8")
        copy.write_text(html.replace("<head>", "<head>" + self.PROBE_HEAD, 1)
                        .replace("</body>", self.PROBE_TAIL % fields + "</body>", 1),
                        encoding="utf-8")
        try:
            run = self.run(copy.as_uri() if base_url is None else base_url + "probe.html",
                           "--dump-dom")
        finally:
            copy.unlink()
        assert run.returncode == 0, run.stderr[-2000:]
        assert self.console_lines(run.stderr) == []
        found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
        assert found, f"the probe did not run; DOM starts with {run.stdout[:300]!r}"
        return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    @staticmethod
    def console_lines(stderr: str) -> list[str]:
        """What the page logged to its console (Chromium echoes it on stderr)."""
        return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium; the test is skipped, with the reason shown, where none is
    installed (``.ci/run`` installs the Debian package ``chromium`` before ``make test``)."""
    executable = Chromium.find()
    if executable is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium'; "
                    ".ci/run installs it)")
    return Chromium(executable, tmp_path)
