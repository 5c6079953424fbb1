"""The local and Ray engines on ~40 images (photos, grayscale, 16-bit TIFF, a corrupt
file) with gradient methods and XRAI: the same store from either engine, from a
run whose Ray worker was killed, and from a local run killed by SIGKILL or stopped
by Ctrl-C (SIGINT) and resumed."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import salience
from salience.dataset import open_results

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ray_session():
    """One small local Ray for the module (the engine leaves a running Ray alone)."""
    ray.init(num_cpus=3, object_store_memory=300 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_store(dataset_dir, tmp_path_factory, kit):
    out = tmp_path_factory.mktemp("local") / "store"
    summary = kit.explain_here(out, dataset_dir)
    return summary, open_results(out)


def test_the_local_engine_explains_every_file_once(local_store, dataset_dir):
    summary, results = local_store
    files = sorted(p for p in dataset_dir.rglob("*") if p.is_file())
    assert len(files) >= 38 and summary.total == len(files) == len(set(results.ids))
    assert (summary.done, summary.failed) == (len(files) - 1, 1)
    records = results.records.to_pylist()
    assert [r["name"] for r in records if r["status"] == "failed"] == ["generated/corrupt.png"]
    assert {r["name"] for r in records} == {p.relative_to(dataset_dir).as_posix() for p in files}
    for record in records:
        if record["status"] == "ok":
            assert all(record[f"{m}.status"] == "ok" for m in results.methods), record["name"]
            assert results.map(record["id"], "xrai").shape == (32, 32)


def test_the_ray_engine_gives_the_local_store(local_store, dataset_dir, tmp_path, kit,
                                              ray_session):
    out = tmp_path / "ray"
    summary = salience.explain_dataset(dataset_dir, kit.tiny_net, kit.METHODS, out,
                                       engine="ray", workers=2, preprocessing=kit.PREP,
                                       batch_size=4, report_sample=0)
    assert (summary.done, summary.failed, summary.total) == (local_store[0].done, 1,
                                                             local_store[0].total)
    kit.assert_same_stores(local_store[1], open_results(out))
    assert open_results(out).manifest["runs"][0]["engine"] == "ray"


def test_a_killed_ray_worker_is_restarted_and_each_image_stored_once(
        local_store, dataset_dir, tmp_path, kit, ray_session):
    marker = tmp_path / "died"
    out = tmp_path / "ray"
    methods = ["gradients", "integrated_gradients"]
    summary = salience.explain_dataset(
        dataset_dir, functools.partial(kit.dies_once_net, str(marker)), methods, out,
        engine="ray", workers=2, preprocessing=kit.PREP, batch_size=4, report_sample=0)
    assert marker.is_file(), "no worker process died: the test did not test anything"
    assert int(marker.read_text()) != os.getpid()
    results = open_results(out)
    assert summary.total == local_store[0].total == len(set(results.ids)) == len(results)
    reference = local_store[1]
    for image in reference.ids:
        if reference.record(image)["status"] == "ok":
            for method in methods:
                np.testing.assert_allclose(results.map(image, method),
                                           reference.map(image, method), rtol=0,
                                           atol=1e-6 * np.abs(reference.map(image, method)).max())


def _parts(out: Path) -> list[Path]:
    return sorted((out / "records").glob("part-*.parquet"))


def _default_signal_actions() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_after_two_parts(command: list[str], out: Path, sig: int, timeout: float):
    """Run the command, send ``sig`` once two record parts are committed (or it ends);
    the process's return code and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The signal's default action in the child, whatever this process inherited: a suite
    # started in the background by a non-interactive shell ignores SIGINT, and an ignored
    # SIGINT is inherited (Python then installs no KeyboardInterrupt handler).
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=_default_signal_actions)
    try:
        deadline = time.monotonic() + 300
        while len(_parts(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr.decode()


def test_a_local_run_killed_by_sigkill_resumes_to_the_same_store(local_store, dataset_dir,
                                                                 tmp_path, kit):
    from salience.cli import run_explain_dataset

    torch.save(kit.tiny_net(), tmp_path / "tiny.pth")  # plain torch.nn classes only
    out = tmp_path / "killed"
    methods = [m for m in kit.METHODS if m != "xrai"]  # the engine test has XRAI; time
    args = dict(model=str(tmp_path / "tiny.pth"), trust_model=True, size="32", preset="unit",
                methods=",".join(methods), batch_size=4, report_sample=0, quiet=True)
    command = [sys.executable, "-m", "salience.cli", "explain-dataset", str(dataset_dir),
               "--out", str(out), "--model", args["model"], "--trust-model", "--size", "32",
               "--preset", "unit", "--methods", args["methods"], "-b", "4",
               "--report-sample", "0", "-q"]
    returncode, stderr = _signal_after_two_parts(command, out, signal.SIGKILL, timeout=60)
    assert returncode == -signal.SIGKILL, stderr[-2000:]
    committed = open_results(out)
    n_committed = len(committed)
    assert not committed.complete and 8 <= n_committed < local_store[0].total
    assert json.loads((out / "manifest.json").read_text())["runs"][0]["finished"] is None

    summary = run_explain_dataset([dataset_dir], out=out, **args)
    assert summary.skipped == n_committed
    assert summary.done + summary.failed + summary.skipped == local_store[0].total
    resumed = open_results(out)
    assert resumed.complete and len(_parts(out)) == 1
    kit.assert_same_stores(local_store[1], resumed, methods=methods)


def test_a_local_run_stopped_by_ctrl_c_exits_130_and_resumes(dataset_dir, tmp_path, kit):
    total = sum(1 for p in dataset_dir.rglob("*") if p.is_file())
    torch.save(kit.tiny_net(), tmp_path / "tiny.pth")
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "salience.cli", "explain-dataset", str(dataset_dir),
               "--out", str(out), "--model", str(tmp_path / "tiny.pth"), "--trust-model",
               "--size", "32", "--preset", "unit", "--methods", "gradients", "-b", "2",
               "--report-sample", "0", "-q"]
    # SIGINT is what Ctrl-C sends
    returncode, stderr = _signal_after_two_parts(command, out, signal.SIGINT, timeout=120)
    assert returncode == 130, stderr[-2000:]
    assert "run the same command again" in " ".join(stderr.split())
    stopped = open_results(out)
    committed = len(stopped)
    assert not stopped.complete and 4 <= committed < total

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, timeout=600)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert f"{committed} skipped" in finished.stdout.decode()
    resumed = open_results(out)
    assert resumed.complete and len(resumed) == total == len(set(resumed.ids))


def test_a_ray_dataset_source_of_paths_or_arrays(dataset_dir, tmp_path, kit, ray_session):
    from salience.io import load_image

    files = sorted(p for p in dataset_dir.rglob("*.png") if "corrupt" not in p.name)[:5]
    paths = ray.data.from_items([{"path": str(p), "name": p.name, "target": 2} for p in files])
    arrays = ray.data.from_items([{"image": load_image(p), "name": p.name, "target": 2}
                                  for p in files])
    options = dict(preprocessing=kit.PREP, batch_size=2, report_sample=0)
    methods = ["gradients", "smoothgrad"]
    stores = {}
    for name, source, engine in [("files", [str(p) for p in files], "local"),
                                 ("paths", paths, "ray"), ("arrays", arrays, "local")]:
        summary = salience.explain_dataset(
            source, kit.tiny_net, methods, tmp_path / name, engine=engine, targets=None
            if name != "files" else 2, **options, **({"workers": 2} if engine == "ray" else {}))
        assert (summary.done, summary.failed) == (5, 0), name
        stores[name] = open_results(tmp_path / name)
    kit.assert_same_stores(stores["files"], stores["paths"])
    assert [r["target"] for r in stores["arrays"].records.to_pylist()] == [2] * 5
    # An image given as an array has the file's maps (SmoothGrad's draws follow the pixels).
    by_name = {r["name"]: r["id"] for r in stores["files"].records.to_pylist()}
    for record in stores["arrays"].records.to_pylist():
        for method in methods:
            np.testing.assert_array_equal(stores["arrays"].map(record["id"], method),
                                          stores["files"].map(by_name[record["name"]], method))
    # A resumed run finds rows by their content: nothing is explained twice.
    again = salience.explain_dataset(arrays, kit.tiny_net, methods, tmp_path / "arrays",
                                     **options)
    assert (again.done, again.skipped, again.total) == (0, 5, 5)
