"""``salience explain-dataset``: a store from a state_dict and a folder, progress,
refused parameter changes, Ctrl-C, and the Ray engine started by the command."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
typer_testing = pytest.importorskip("typer.testing")
Image = pytest.importorskip("PIL.Image")

from salience.cli import app  # noqa: E402
from salience.dataset import open_results  # noqa: E402

ARCH = textwrap.dedent(
    """
    import torch


    def tiny():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5),
        )
    """
)


def run(*args):
    return typer_testing.CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The architecture module (found through the working directory), its weights and
    five images, one of them corrupt."""
    (tmp_path / "salience_ds_arch.py").write_text(ARCH)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import salience_ds_arch

    torch.save(salience_ds_arch.tiny().state_dict(), tmp_path / "tiny.pt")
    images = tmp_path / "imgs"
    (images / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            images / f"{k}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
        images / "deeper" / "gray.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def args(workdir, out="store", *extra):
    return ["explain-dataset", workdir / "imgs", "--out", workdir / out, "--model",
            workdir / "tiny.pt", "--arch", "salience_ds_arch:tiny", "--size", "16", "--preset",
            "unit", "--report-sample", "2", *extra]


def test_a_store_from_a_state_dict_and_a_folder(workdir):
    result = run(*args(workdir), "--methods", "gradients,gradcam", "-b", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith(
        "4 images explained, 1 failed, 0 skipped (already done) in ")
    results = open_results(workdir / "store")
    assert sorted(r["name"] for r in results.records.to_pylist()) == [
        "0.png", "1.png", "2.png", "broken.png", "deeper/gray.jpg"]
    assert results.manifest["parameters"]["model"].startswith("tiny.pt (salience_ds_arch:tiny)")
    assert "file sha256:" in results.manifest["parameters"]["model"]
    assert (workdir / "store" / "index.html").is_file()
    assert (workdir / "store" / "samples" / "index.html").is_file()
    again = run(*args(workdir), "--methods", "gradients,gradcam", "-b", "3")  # batch size free
    assert again.exit_code == 0, again.output
    assert "0 images explained, 0 failed, 5 skipped" in again.stdout


def test_progress_bar_on_a_terminal(workdir, monkeypatch):
    import salience.cli

    monkeypatch.setattr(salience.cli, "_is_terminal", lambda: True)
    result = run(*args(workdir), "--methods", "gradients", "-b", "2")
    assert result.exit_code == 0, result.output
    assert "5/5" in result.stderr and "images/s" in result.stderr and "1 failed" in result.stderr
    quiet = run(*args(workdir, "quiet"), "--methods", "gradients", "-q")
    assert quiet.exit_code == 0 and "images/s" not in quiet.stderr


def test_changed_options_are_refused_and_no_resume_starts_over(workdir):
    assert run(*args(workdir), "--methods", "gradients").exit_code == 0
    refused = run(*args(workdir), "--methods", "gradients", "--size", "20")
    assert refused.exit_code == 2
    assert "preprocessing.size: [16, 16] -> [20, 20]" in " ".join(refused.stderr.split())
    replaced = run(*args(workdir), "--methods", "gradients", "--size", "20", "--no-resume")
    assert replaced.exit_code == 0, replaced.output
    assert "4 images explained, 1 failed, 0 skipped" in replaced.stdout


def test_a_store_inside_the_source_folder_is_not_read_as_images(workdir):
    inside = workdir / "imgs" / "store"
    first = run(*args(workdir), "--methods", "gradients", "--out", inside)
    assert first.exit_code == 0, first.output
    assert list(inside.rglob("*.png"))  # the summary's plots and sample pages
    again = run(*args(workdir), "--methods", "gradients", "--out", inside)
    assert again.exit_code == 0, again.output
    assert "0 images explained, 0 failed, 5 skipped" in again.stdout
    assert len(open_results(inside)) == 5


def test_nothing_explained_exits_1(workdir):
    only_broken = workdir / "broken"
    only_broken.mkdir()
    (only_broken / "a.png").write_bytes(b"not an image")
    result = run("explain-dataset", only_broken, "--out", workdir / "store", "--model",
                 workdir / "tiny.pt", "--arch", "salience_ds_arch:tiny", "--size", "16",
                 "--methods", "gradients")
    assert result.exit_code == 1
    assert "nothing was explained" in " ".join(result.stderr.split())
    assert open_results(workdir / "store").records.column("status").to_pylist() == ["failed"]


@pytest.mark.parametrize("extra, message", [
    (["--engine", "spark"], "--engine must be local or ray"),
    (["--workers", "3"], "need --engine ray"),
    (["--map-dtype", "float64"], "map_dtype must be one of"),
    (["--methods", "nope"], "unknown method 'nope'"),
])
def test_bad_options_exit_2_before_any_work(workdir, extra, message):
    result = run(*args(workdir), *extra)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not (workdir / "store").exists()


def test_ctrl_c_keeps_what_was_committed_and_the_same_command_finishes(workdir, monkeypatch):
    import salience.dataset.engines as engines

    real = engines.explain_batch
    calls = []

    def interrupted(model, batch, plan):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, batch, plan)

    monkeypatch.setattr(engines, "explain_batch", interrupted)
    stopped = run(*args(workdir), "--methods", "gradients", "-b", "2")
    assert stopped.exit_code == 130
    assert "interrupted" in stopped.stderr and "run the same command again" in stopped.stderr
    first = open_results(workdir / "store")
    assert len(first) == 2 and not first.complete
    monkeypatch.setattr(engines, "explain_batch", real)
    finished = run(*args(workdir), "--methods", "gradients", "-b", "2")
    assert finished.exit_code == 0, finished.output
    assert "2 images explained, 1 failed, 2 skipped" in finished.stdout
    done = open_results(workdir / "store")
    assert done.complete and len(done) == 5 == len(set(done.ids))


def test_the_ray_engine_loads_the_model_in_each_worker(workdir):
    pytest.importorskip("ray")
    local = run(*args(workdir, "local"), "--methods", "gradients,smoothgrad", "-b", "2")
    assert local.exit_code == 0, local.output
    remote = run(*args(workdir, "ray"), "--methods", "gradients,smoothgrad", "-b", "2",
                 "--engine", "ray", "--workers", "2")
    assert remote.exit_code == 0, remote.output
    assert "4 images explained, 1 failed" in remote.stdout
    a, b = open_results(workdir / "local"), open_results(workdir / "ray")
    assert b.manifest["runs"][0]["engine"] == "ray" and b.manifest["runs"][0]["workers"] == 2
    for image in a.ids:
        if a.record(image)["status"] == "ok":
            for method in ("gradients", "smoothgrad"):
                # Other batches on the workers: float sums may differ in the last bits.
                want = a.map(image, method)
                np.testing.assert_allclose(b.map(image, method), want, rtol=0,
                                           atol=1e-6 * np.abs(want).max())
    import ray

    assert not ray.is_initialized()  # the command stopped the Ray it started
