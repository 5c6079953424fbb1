"""Model files from untrusted sources: nothing in them runs without --trust-model, and every
loading failure is one line naming the file and the reason (exit status 2)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
typer_testing = pytest.importorskip("typer.testing")
Image = pytest.importorskip("PIL.Image")

from salience.cli import app  # noqa: E402
from salience.loading import ModelLoadError, load_model  # noqa: E402


class Marker:
    """Pickles into a call that creates the file ``path`` when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5),
    ).eval()


def run(*args):
    return typer_testing.CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def explain(images, model, *extra):
    return run("explain", images, "--model", model, "--size", "16", "--methods", "gradients",
               "-o", images.parent / "out", *extra)


# --- torch.export archives -------------------------------------------------------------


def save_exported(path, net=None, example=None):
    net = net or tiny_net()
    example = torch.zeros(2, 3, 16, 16) if example is None else example
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def rewrite(src, dst, edit):
    """Copy a zip archive, letting ``edit(entries)`` change the {name: bytes} entries."""
    with zipfile.ZipFile(src) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    entries = edit(entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return dst


def entry(entries, suffix):
    [name] = [n for n in entries if n.endswith(suffix)]
    return name


def pickled_weight(marker):
    def edit(entries):
        config_name = entry(entries, "data/weights/model_weights_config.json")
        config = json.loads(entries[config_name])
        config["config"]["0.bias"]["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        buffer = io.BytesIO()
        torch.save(Marker(marker), buffer)
        entries[entry(entries, "data/weights/" + config["config"]["0.bias"]["path_name"])] = (
            buffer.getvalue())
        return entries
    return edit


def pickled_sample_inputs(marker):
    def edit(entries):
        buffer = io.BytesIO()
        torch.save(Marker(marker), buffer)
        entries[entry(entries, "data/sample_inputs/model.pt")] = buffer.getvalue()
        return entries
    return edit


def program_edit(change):
    def make(marker):
        def edit(entries):
            name = entry(entries, "models/model.json")
            program = json.loads(entries[name])
            assert " " not in str(marker)  # the payload is code that must stay unquoted
            change(program, f"__import__('os').system('touch {marker}')")
            entries[name] = json.dumps(program).encode()
            return entries
        return edit
    return make


def add_guard(program, code):
    program["guards_code"] = [f"{code} == 0"]


def poison_expressions(program, code):
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    item[key] = f"{value} + 0*{code}"
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


EXPLOITS = {
    "pickled weight": pickled_weight,
    "pickled sample inputs": pickled_sample_inputs,
    "guard code": program_edit(add_guard),
    "shape expression": program_edit(poison_expressions),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", sorted(EXPLOITS))
def test_a_malicious_export_archive_runs_nothing_without_trust(tmp_path, images, kind):
    marker = tmp_path / "marker"
    evil = rewrite(save_exported(tmp_path / "tiny.pt2"), tmp_path / "evil.pt2",
                   EXPLOITS[kind](marker))
    # the archive really is an exploit: plain torch runs its payload
    try:
        torch.export.load(str(evil)).module()(torch.zeros(2, 3, 16, 16))
    except Exception:  # noqa: BLE001 - some payloads break the program after running
        pass
    assert marker.exists(), kind
    marker.unlink()

    result = explain(images, evil)
    assert_one_line_error(result, str(evil), "--trust-model")
    assert not marker.exists()
    assert not (images.parent / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    ({"data/aotinductor/model/model.so": b"\x7fELF"}, "data/aotinductor/model/model.so"),
    ({"data/weights/model.pt": b"legacy"}, "data/weights/model.pt"),
    ({"../outside": b"x"}, "one folder"),
])
def test_unknown_entries_in_an_export_archive_are_refused(tmp_path, extra, needle):
    def edit(entries):
        root = next(iter(entries)).split("/")[0]
        for name, data in extra.items():
            entries[name if name.startswith("..") else f"{root}/{name}"] = data
        return entries

    evil = rewrite(save_exported(tmp_path / "tiny.pt2"), tmp_path / "odd.pt2", edit)
    with pytest.raises(ModelLoadError, match="--trust-model") as caught:
        load_model(str(evil))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


class WithConstants(torch.nn.Module):
    """Buffers, a lifted tensor constant and shape arithmetic: what real exports hold."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()
        self.register_buffer("scale", torch.full((1,), 2.0))

    def forward(self, x):
        n = x.shape[0]
        y = x.reshape(n * 3, 16, 16).reshape(n, 3, 16, 16)
        return self.net(y) * self.scale + torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])


@pytest.mark.filterwarnings("ignore")
def test_ordinary_export_archives_load_without_trust(tmp_path):
    net = WithConstants().eval()
    path = save_exported(tmp_path / "constants.pt2", net)
    with zipfile.ZipFile(path) as archive:
        program = json.loads(archive.read(entry(archive.namelist(), "models/model.json")))
    assert "Mul(Integer(3)" in json.dumps(program)  # the expressions are really checked
    loaded = load_model(str(path))
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    logits = loaded.model.predict(x)
    np.testing.assert_allclose(logits, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


# --- TorchScript, state_dicts, other files --------------------------------------------


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("part", ["data.pkl", "constants.pkl", "code"])
def test_torchscript_payloads_are_refused_in_one_line(tmp_path, images, part):
    marker = tmp_path / "marker"
    torch.jit.script(tiny_net()).save(str(tmp_path / "tiny.ts"))

    def edit(entries):
        if part == "code":
            name = entry(entries, "code/__torch__/torch/nn/modules/activation.py")
            source = entries[name].decode().replace(
                "    return _0", f"    _1 = __import__('os').system('touch {marker}')\n"
                                 "    return _0")
            assert "__import__" in source
            entries[name] = source.encode()
        else:
            entries[entry(entries, part)] = pickle.dumps(Marker(marker), protocol=2)
        return entries

    evil = rewrite(tmp_path / "tiny.ts", tmp_path / "evil.ts", edit)
    line = assert_one_line_error(explain(images, evil), str(evil))
    assert "Unknown type name 'posix.system'" in line or "__import__" in line
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore")
def test_pickled_objects_need_trust_and_trust_means_running_them(tmp_path, images):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Marker(marker)}, evil)
    assert_one_line_error(explain(images, evil), str(evil), "pickled Python objects",
                          "--trust-model")
    assert not marker.exists()
    trusted = explain(images, evil, "--trust-model")  # it then fails as not-a-model ...
    assert_one_line_error(trusted, str(evil), "not a state_dict")
    assert marker.exists()  # ... after running the payload: the flag means what it says


@pytest.mark.parametrize("content", [b"hello world", bytes(range(256)) * 4])
def test_files_that_are_no_model_say_so(tmp_path, images, content):
    odd = tmp_path / "odd.pt"
    odd.write_bytes(content)
    line = assert_one_line_error(explain(images, odd), str(odd))
    assert "--trust-model" not in line


def test_a_keras_lambda_of_a_named_function_is_one_line(tmp_path, images):
    keras = pytest.importorskip("keras")
    pytest.importorskip("salience.keras")

    def brighten(x):
        return x * 2.0

    net = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Lambda(brighten),
                            keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D()])
    net.save(tmp_path / "lambda.keras")
    assert_one_line_error(explain(images, tmp_path / "lambda.keras"),
                          str(tmp_path / "lambda.keras"), "Could not locate function")


# --- devices ------------------------------------------------------------------------------


@pytest.mark.parametrize("device, needle", [
    ("cuda:7", "is not available on this machine"),
    ("quantum", "is not a PyTorch device"),
])
def test_device_errors_are_device_errors(tmp_path, images, device, needle):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    torch.save(tiny_net().state_dict(), tmp_path / "tiny.pt")
    line = assert_one_line_error(explain(images, tmp_path / "tiny.pt", "--device", device),
                                 f"--device {device!r}", needle)
    assert "--trust-model" not in line and "state_dict" not in line
