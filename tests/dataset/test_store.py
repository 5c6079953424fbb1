"""The store of a dataset run: right numbers, standard formats, failed images, resuming,
refusing other parameters, each image once, the HTML summary."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import salience
from salience.dataset import ParameterMismatchError, StoreError, open_results
from salience.dataset.store import StoreWriter
from salience.io import load_image

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torch")


@pytest.fixture
def small_dir(tmp_path):
    """Six files: three RGB, one grayscale, one 16-bit TIFF, one corrupt."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + k, 36, 3), dtype=np.uint8)).save(
            root / f"rgb{k}.png")
    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8)).save(root / "sub" / "g.png")
    Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16)).save(root / "deep.tif")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_records_and_maps_are_standard_files_with_explain_numbers(small_dir, tmp_path, kit):
    import pyarrow.parquet as pq
    import zarr

    out = tmp_path / "out"
    methods = ["gradients", "smoothgrad", "gradcam"]
    summary = kit.explain_here(out, small_dir, methods, batch_size=8)
    assert (summary.done, summary.failed, summary.skipped, summary.total) == (5, 1, 0, 6)

    # Readable without salience: pyarrow for the records, zarr for the maps, json.
    records = {r["name"]: r for r in pq.read_table(out / "records").to_pylist()}
    group = zarr.open_group(out / "maps.zarr", mode="r")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"]["row_column"] == "map_index" and manifest["complete"] is True
    assert sorted(records) == ["deep.tif", "rgb0.png", "rgb1.png", "rgb2.png", "sub/broken.jpg",
                               "sub/g.png"]
    ok = [n for n in sorted(records) if records[n]["status"] == "ok"]
    x = kit.PREP.model_input([kit.PREP.display(load_image(small_dir / n)) for n in ok])
    # SmoothGrad's noise is drawn per image: compare it one image at a time.
    expected = salience.explain(kit.tiny_model(), x, ["gradients", "gradcam"], batch_size=8)
    for i, name in enumerate(ok):
        record = records[name]
        assert record["target"] == int(np.argmax(expected.probabilities[i]))
        assert record["top_classes"] == [c for c, _ in expected.top(5)[i]]
        np.testing.assert_allclose(record["top_probabilities"],
                                   [p for _, p in expected.top(5)[i]], rtol=1e-6)
        assert (record["height"], record["width"]) == load_image(small_dir / name).shape[:2]
        for method in ("gradients", "gradcam"):
            stored = group[method][record["map_index"]]
            want = expected.maps[method][i]
            np.testing.assert_allclose(stored, want, rtol=0, atol=1e-6 * np.abs(want).max())
            assert record[f"{method}.max"] == pytest.approx(float(expected.maps[method][i].max()),
                                                           rel=1e-6)
            assert record[f"{method}.seconds"] > 0
        assert group["smoothgrad"][record["map_index"]].shape == x.shape[1:]
    assert group["gradients"].chunks == (1, *x.shape[1:])


def test_metric_values_are_those_of_evaluate_maps(small_dir, tmp_path, kit):
    from salience.metrics import evaluate_maps

    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"], metrics=True, batch_size=8)  # one batch
    results = open_results(out)
    ok = sorted((r for r in results.records.to_pylist() if r["status"] == "ok"),
                key=lambda r: r["map_index"])  # the batch's order
    displays = [kit.PREP.display(load_image(r["path"])) for r in ok]
    x = kit.PREP.model_input(displays)
    maps = {"gradients": np.stack([results.map(r["id"], "gradients") for r in ok])}
    expected = evaluate_maps(kit.tiny_model(), x, displays, maps,
                             np.array([r["target"] for r in ok]),
                             lambda images: kit.PREP.model_input(list(images)), batch_size=8)
    for record, want in zip(ok, expected):
        for metric in ("insertion_auc", "deletion_auc", "sic_auc", "aic_auc"):
            value = want["gradients"][metric]
            stored = record[f"gradients.{metric}"]
            assert (stored is None or np.isnan(stored)) if value is None else \
                stored == pytest.approx(value, rel=1e-6, abs=1e-9), (record["name"], metric)
    assert any(r["gradients.insertion_auc"] is not None for r in ok)


def test_a_corrupt_image_is_a_failed_record_with_its_reason(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"])
    results = open_results(out)
    failed = [r for r in results.records.to_pylist() if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["sub/broken.jpg"]
    assert "not a readable image" in failed[0]["error"] and failed[0]["map_index"] is None
    with pytest.raises(ValueError, match="has no gradients map: .*not a readable image"):
        results.map(failed[0]["id"], "gradients")
    with pytest.raises(KeyError, match="no image with id"):
        results.map("0" * 24, "gradients")


def test_progress_events_count_this_runs_images_and_failures(small_dir, tmp_path, kit):
    events = []
    summary = kit.explain_here(tmp_path / "out", small_dir, ["gradients"], batch_size=2,
                               progress=events.append)
    assert {e.stage for e in events} == {"dataset"}
    assert [e.completed for e in events] == [2, 4, 6]  # one event per committed batch
    assert events[-1].total == 6 and events[-1].failed == 1 == summary.failed
    assert "images/s" in events[-1].describe() and "1 failed" in events[-1].describe()
    with pytest.raises(TypeError, match="progress must be True, False, None or a callable"):
        kit.explain_here(tmp_path / "other", small_dir, ["gradients"], progress="yes")
    assert not (tmp_path / "other").exists()


def test_resume_skips_what_the_store_has_and_adds_new_images(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"])
    before = open_results(out)
    again = kit.explain_here(out, small_dir, ["gradients"])
    assert (again.done, again.failed, again.skipped, again.total) == (0, 0, 6, 6)
    Image.fromarray(np.full((20, 20, 3), 90, dtype=np.uint8)).save(small_dir / "new.png")
    more = kit.explain_here(out, small_dir, ["gradients"])
    assert (more.done, more.skipped, more.total) == (1, 6, 7)
    after = open_results(out)
    for image in before.ids:
        np.testing.assert_array_equal(after.map(image, "gradients") if before.record(image)[
            "status"] == "ok" else 0, before.map(image, "gradients") if before.record(image)[
            "status"] == "ok" else 0)
    assert [r["complete"] for r in after.manifest["runs"]] == [True, True, True]


def test_a_changed_file_is_explained_again_and_replaces_its_record(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"])
    old = {r["name"]: r for r in open_results(out).records.to_pylist()}
    Image.fromarray(np.full((40, 36, 3), 200, dtype=np.uint8)).save(small_dir / "rgb1.png")
    summary = kit.explain_here(out, small_dir, ["gradients"])
    assert (summary.done, summary.skipped, summary.total) == (1, 5, 6)
    new = {r["name"]: r for r in open_results(out).records.to_pylist()}
    assert new["rgb1.png"]["content_hash"] != old["rgb1.png"]["content_hash"]
    assert new["rgb0.png"] == old["rgb0.png"]


def test_other_parameters_are_refused_naming_them_and_no_resume_replaces(small_dir, tmp_path,
                                                                         kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients", "smoothgrad"])
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(ParameterMismatchError, match=r"seed: 0 -> 1"):
        kit.explain_here(out, small_dir, ["gradients", "smoothgrad"], seed=1)
    with pytest.raises(ParameterMismatchError,
                       match=r"methods.smoothgrad: \{.*\} -> absent.*--no-resume"):
        kit.explain_here(out, small_dir, ["gradients"])
    with pytest.raises(ParameterMismatchError, match=r"preprocessing.size: \[32, 32\] -> \[16, 16\]"):
        kit.explain_here(out, small_dir, ["gradients", "smoothgrad"],
                         preprocessing=kit.PREP.with_(size=(16, 16)))
    with pytest.raises(ParameterMismatchError, match=r"model: .* weights sha256:"):
        salience.explain_dataset(small_dir, salience.torch.wrap(kit.tiny_net()[:3]),
                                 ["gradients", "smoothgrad"], out, preprocessing=kit.PREP)
    assert (out / "manifest.json").read_bytes() == manifest  # refused before writing
    fresh = kit.explain_here(out, small_dir, ["gradients"], resume=False)
    assert (fresh.done, fresh.skipped) == (5, 0)
    assert open_results(out).methods == ["gradients"]


def test_only_empty_folders_or_stores_are_written_to(small_dir, tmp_path, kit):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and holds no salience dataset store"):
        kit.explain_here(taken, small_dir, ["gradients"])
    with pytest.raises(StoreError, match="not empty and holds no salience dataset store"):
        kit.explain_here(taken, small_dir, ["gradients"], resume=False)
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        kit.explain_here(a_file, small_dir, ["gradients"])


def test_a_second_run_on_the_same_store_is_refused_while_one_writes(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"])
    manifest = json.loads((out / "manifest.json").read_text())
    writer = StoreWriter(out, manifest["parameters"], methods=["gradients"], metrics=False)
    try:
        with pytest.raises(StoreError, match="another salience run is writing"):
            kit.explain_here(out, small_dir, ["gradients"])
    finally:
        writer.close()
    assert kit.explain_here(out, small_dir, ["gradients"]).skipped == 6


def test_each_image_once_even_with_a_part_written_twice(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"], batch_size=2)
    records = out / "records"
    (part,) = records.glob("*.parquet")  # compacted at the end of the complete run
    shutil.copy(part, records / "part-9999-000000.parquet")  # as if committed twice
    results = open_results(out)
    assert len(results) == 6 and len(set(results.ids)) == 6
    # The next run's compaction leaves one record per image on disk too.
    kit.explain_here(out, small_dir, ["gradients"], batch_size=2)
    import pyarrow.parquet as pq

    assert pq.read_table(records).num_rows == 6


def test_an_interrupted_compaction_and_temporaries_are_cleaned_by_the_next_run(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients"], batch_size=2)
    # Killed between the compaction's two renames: records/ moved away, the new one
    # not yet in place.
    (out / "records").rename(out / ".records.old-deadbeef")
    (out / ".records.compact-deadbeef").mkdir()
    # And temporaries of other writes cut short: summary folders, the manifest, a chunk.
    (out / ".plots.tmp-12345678").mkdir()
    (out / ".manifest.json.tmp-12345678").write_text("{")
    chunk = next(p for p in (out / "maps.zarr" / "gradients").rglob("*") if p.is_file())
    (chunk.parent / f"{chunk.name}.0123abcd.partial").write_bytes(b"half")
    summary = kit.explain_here(out, small_dir, ["gradients"], batch_size=2)
    assert (summary.done, summary.skipped, summary.total) == (0, 6, 6)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".salience-lock.json"]
    assert not list((out / "maps.zarr").rglob("*.partial"))


def test_float16_maps_are_the_float32_maps_rounded(small_dir, tmp_path, kit):
    wide = kit.explain_here(tmp_path / "f32", small_dir, ["gradients"])
    half = kit.explain_here(tmp_path / "f16", small_dir, ["gradients"], map_dtype="float16")
    a, b = open_results(tmp_path / "f32"), open_results(tmp_path / "f16")
    assert wide.total == half.total == 6
    assert b.maps("gradients").dtype == np.float16
    for image in a.ids:
        if a.record(image)["status"] == "ok":
            np.testing.assert_array_equal(b.map(image, "gradients"),
                                          a.map(image, "gradients").astype(np.float16))


def test_list_files_give_names_targets_and_labels(small_dir, tmp_path, kit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "list.csv").write_text(
        "path,target,label\nimgs/rgb0.png,3,cat\nimgs/rgb1.png,,dog\nimgs/sub/g.png,1,\n")
    pq.write_table(pa.table({"path": [str(small_dir / "rgb2.png")], "target": [5],
                             "label": ["fish"]}), tmp_path / "list.parquet")
    (tmp_path / "list.txt").write_text("# a comment\nimgs/deep.tif\n\n")
    out = tmp_path / "out"
    summary = kit.explain_here(out, [tmp_path / "list.csv", tmp_path / "list.parquet",
                                     tmp_path / "list.txt"], ["gradients"])
    assert (summary.done, summary.failed) == (5, 0)
    records = {r["name"]: r for r in open_results(out).records.to_pylist()}
    top = salience.explain(kit.tiny_model(), kit.PREP.model_input(
        [kit.PREP.display(load_image(small_dir / "rgb1.png"))]), ["gradients"])
    assert records["imgs/rgb0.png"]["target"] == 3 and records["imgs/rgb0.png"]["label"] == "cat"
    assert records["imgs/rgb1.png"]["target"] == int(top.targets[0])  # no target: top class
    assert records["imgs/sub/g.png"]["target"] == 1 and records["imgs/sub/g.png"]["label"] is None
    assert records[str(small_dir / "rgb2.png")]["target"] == 5
    assert records["imgs/deep.tif"]["label"] is None
    # The map explains the target given in the list.
    x = kit.PREP.model_input([kit.PREP.display(load_image(small_dir / "rgb0.png"))])
    expected = salience.explain(kit.tiny_model(), x, ["gradients"], targets=3)
    want = expected.maps["gradients"][0]
    np.testing.assert_allclose(open_results(out).map(records["imgs/rgb0.png"]["id"], "gradients"),
                               want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_bad_list_files_and_arguments_fail_before_any_work(small_dir, tmp_path, kit):
    from salience.dataset import SourceError

    out = tmp_path / "out"
    (tmp_path / "nopath.csv").write_text("file,target\na.png,1\n")
    (tmp_path / "badtarget.csv").write_text("path,target\nimgs/rgb0.png,cat\n")
    (tmp_path / "missing.txt").write_text("imgs/nope.png\n")
    cases = [
        (tmp_path / "nopath.csv", {}, SourceError, "needs a header row with a 'path' column"),
        (tmp_path / "badtarget.csv", {}, SourceError, "row 2: target must be a class index"),
        (tmp_path / "missing.txt", {}, SourceError, "row 1: image 'imgs/nope.png' does not exist"),
        (tmp_path / "nowhere", {}, SourceError, "does not exist"),
        (small_dir, {"map_dtype": "float64"}, ValueError, "map_dtype must be one of"),
        (small_dir, {"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        (small_dir, {"targets": -2}, ValueError, "targets must be an int >= 0"),
        (small_dir, {"engine": "spark"}, ValueError, "engine must be one of"),
        (small_dir, {"workers": 2}, ValueError, "engine 'local' takes no option"),
        (small_dir, {"preprocessing": kit.PREP.with_(channels_last=True)}, ValueError,
         "the model takes channels-first inputs but the preprocessing gives channels-last"),
    ]
    for source, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            kit.explain_here(out, source, ["gradients"], **kwargs)
        assert not out.exists(), (source, kwargs)


def test_random_methods_give_each_image_its_own_draws(small_dir, tmp_path, kit):
    # SmoothGrad's noise comes from the image's content: the same maps whatever the
    # batch size and order, and other maps with another seed.
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["rgb0.png", "rgb1.png", "rgb2.png", "sub/g.png", "deep.tif"]
    pq.write_table(pa.table({"path": names[::-1]}), small_dir / "reversed.parquet")
    kit.explain_here(tmp_path / "a", small_dir, ["smoothgrad"], batch_size=4)
    kit.explain_here(tmp_path / "b", [small_dir / "reversed.parquet"], ["smoothgrad"],
                     batch_size=1)
    kit.explain_here(tmp_path / "c", small_dir, ["smoothgrad"], batch_size=4, seed=1)
    a, b, c = (open_results(tmp_path / k) for k in "abc")
    by_name = {r["name"]: r["id"] for r in b.records.to_pylist()}
    for record in a.records.to_pylist():
        if record["status"] != "ok":
            continue
        ma = a.map(record["id"], "smoothgrad")
        scale = float(np.abs(ma).max())
        np.testing.assert_allclose(ma, b.map(by_name[record["name"]], "smoothgrad"),
                                   rtol=0, atol=1e-6 * scale)
        assert np.abs(ma - c.map(record["id"], "smoothgrad")).max() > 1e-2 * scale


def test_summary_page_plots_and_sample_pages(small_dir, tmp_path, kit):
    out = tmp_path / "out"
    kit.explain_here(out, small_dir, ["gradients", "xrai"], metrics=True, report_sample=3)
    page = (out / "index.html").read_text()
    assert "6</strong> image(s) in the store: 5 explained" in page
    assert "sub/broken.jpg" in page and "not a readable image" in page
    for plot in ("seconds", "insertion_auc", "deletion_auc"):
        assert (out / "plots" / f"{plot}.png").is_file() and f"plots/{plot}.png" in page
    assert 'href="samples/index.html"' in page
    sample = json.loads((out / "samples" / "summary.json").read_text())
    chosen = sorted(r["id"] for r in open_results(out).records.to_pylist()
                    if r["status"] == "ok")[:3]
    assert sample["settings"]["ids"] == chosen
    assert [m["name"] for m in sample["methods"]] == ["gradients", "xrai"]
    assert all(im["metrics"]["xrai"]["insertion_auc"] is not None for im in sample["images"])
    records = open_results(out).records.to_pylist()
    assert all(r["xrai.insertion_auc"] is not None for r in records if r["status"] == "ok")


def test_a_run_leaves_the_callers_matplotlib_backend_alone(small_dir, tmp_path, kit):
    # The summary's plots are drawn without pyplot: in a notebook, switching the backend
    # to Agg would stop the user's own figures from showing.
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        kit.explain_here(tmp_path / "out", small_dir, ["gradients"], batch_size=8)
        assert (tmp_path / "out" / "plots" / "seconds.png").is_file()
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


@pytest.mark.parametrize("method, setting", [("smoothgrad", "noise_on"), ("blur_ig", "blur_on"),
                                             ("guided_ig", "select_on")])
def test_where_rows_were_built_is_recorded_and_a_resume_elsewhere_refused(
        small_dir, tmp_path, kit, monkeypatch, method, setting):
    # A run on an accelerator draws SmoothGrad's noise (blurs Blur IG's path, walks
    # Guided IG's) on the device ("auto"): other numbers than the host's, so a resume on
    # a CPU must not add host maps to it.
    out = tmp_path / "out"
    monkeypatch.setattr(salience.torch.TorchModel, "on_accelerator", property(lambda s: True))
    kit.explain_here(out, small_dir, ["gradients", method])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["methods"][method][setting] == "model"
    monkeypatch.undo()
    with pytest.raises(ParameterMismatchError,
                       match=rf'methods.{method}.{setting}: "model" -> "host"'):
        kit.explain_here(out, small_dir, ["gradients", method])
