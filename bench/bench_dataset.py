"""Dataset runs (``salience.explain_dataset``) on pretrained EfficientNet-Lite0 and JPEG
photos on disk: the local engine against the model floor, the Ray engine against
the local engine, and Ray with 1 and 2 workers.

Claims:

- local engine: images/s >= 0.9x the model floor's images/s for the same method,
  i.e. time <= 1.11x the floor.  The floor of N images is the method's
  forward+backward rows and the prediction's forward row per image (the top
  classes every record holds), each at the model's best batch size, timed round
  robin with the run.  Reading, decoding, resizing, XRAI's segmentation and
  writing Parquet and Zarr are salience's own work and should hide beside the
  model.
- Ray engine with 2 workers: images/s >= 0.85x the local engine's.  Both rates
  are steady rates, from the first committed batch to the last: starting Ray and
  each actor's model is a one-off cost per run (reported apart; on a cluster it
  is paid once per job, not per image).  Ray's workers run at niceness 0 here,
  as the local engine does (Ray's default is 15, which loses to other processes
  on a shared machine).

Every run writes a fresh store; timings are ``DatasetSummary.seconds`` (model
loading and the HTML summary excluded, as they are once per run).  The notes
give the per-image times the cost model in the README uses.

Run alone: ``python bench/bench_dataset.py [--quick]``.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FULL_REPEATS, QUICK_REPEATS, floor_callable, make_row, photos

LOCAL_CLAIM = 1 / 0.9  # time vs floor
RAY_CLAIM = 0.85  # Ray 2 workers' images/s vs the local engine's
RATE_RUNS = 2  # runs of each engine on the Ray case, the best steady rate kept
BATCH = 32


def _write_photos(root: Path, n: int) -> Path:
    from PIL import Image

    folder = root / "photos"
    folder.mkdir()
    for i, image in enumerate(photos(n, 320)):
        Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


class _Rate:
    """Progress callback: when the first batch and the last were committed."""

    def __init__(self) -> None:
        self.first = self.last = None
        self.at_first = self.at_last = 0

    def __call__(self, event) -> None:  # a salience.progress.ProgressEvent per commit
        now = time.perf_counter()
        if self.first is None:
            self.first, self.at_first = now, event.completed
        self.last, self.at_last = now, event.completed

    @property
    def steady(self) -> float | None:
        """Images/s after the first commit (None with a single commit)."""
        if self.first is None or self.last <= self.first:
            return None
        return (self.at_last - self.at_first) / (self.last - self.first)


def _run(folder: Path, model, methods: list[str], out: Path, **options):
    import salience

    rate = _Rate()
    summary = salience.explain_dataset(folder, model, methods, out, batch_size=BATCH,
                                       report_sample=0, progress=rate, **options)
    if summary.failed or summary.done == 0:
        raise RuntimeError(f"dataset run failed: {summary}")
    shutil.rmtree(out)
    return summary, rate


def _floor(model, x1: np.ndarray, method: str, n: int):
    """Callable doing the model work of ``n`` images: the method's rows and the prediction."""
    import salience
    from salience import registry

    rows = salience.explain(model, x1, [method], batch_size=BATCH).rows[method]
    method_rows = floor_callable(model, x1, n * rows, sorted(registry.get(method).keys))
    xb = np.ascontiguousarray(np.repeat(x1, BATCH, axis=0))

    def run() -> None:
        method_rows()
        for start in range(0, n, BATCH):
            model.predict(xb[: min(BATCH, n - start)], batch_size=BATCH)

    run.rows = rows  # type: ignore[attr-defined]
    return run


def run(quick: bool) -> list[dict]:
    from salience.io import load_image
    from salience.loading import load_model

    n = 16 if quick else 64
    repeats = QUICK_REPEATS if quick else max(2, FULL_REPEATS // 2)
    methods = ["gradients", "integrated_gradients"] + ([] if quick else ["xrai"])
    # Ray needs several batches per worker to show a rate: more images, a cheap method
    # in the quick run.
    ray_method, ray_n = ("gradients", 128) if quick else ("integrated_gradients", 128)
    loaded = load_model()
    model, prep = loaded.model, loaded.preprocessing
    root = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    rows_out = []
    try:
        folder = _write_photos(root, max(n, ray_n))
        files = sorted(folder.glob("*.jpg"))
        few = root / "few.txt"
        few.write_text("\n".join(str(f) for f in files[:n]))
        x1 = prep.model_input([prep.display(load_image(files[0]))])
        _run(few, loaded, ["gradients"], root / "warm")  # warm-up, not timed
        for method in methods:
            floor = _floor(model, x1, method, n)
            floor()  # warm-up
            local_s, floor_s = [], []
            for k in range(repeats):  # round robin: the run, then its floor
                summary, _ = _run(few, loaded, [method], root / f"local-{method}-{k}")
                local_s.append(summary.seconds)
                start = time.perf_counter()
                floor()
                floor_s.append(time.perf_counter() - start)
            best, best_floor = min(local_s), min(floor_s)
            ratio = best / best_floor
            row = make_row(
                "dataset", method, "EfficientNet-Lite0",
                f"local engine, {n} JPEG photos 320x320 -> 224, batch {BATCH}", best,
                floor_s=best_floor,
                notes=(f"{n / best:.2f} images/s vs floor {n / best_floor:.2f} images/s "
                       f"({best_floor / best:.2f}x; claim >= 0.9x); floor = {floor.rows} "
                       f"forward+backward rows + 1 forward row per image; best of {repeats}; "
                       f"{best / n * 1e3:.0f} ms per image"))
            row["target"] = "<= 1.11x floor (images/s >= 0.9x the floor's)"
            row["measured"] = f"{ratio:.2f}x floor ({best_floor / best:.2f}x its images/s)"
            row["met"] = ratio <= LOCAL_CLAIM
            rows_out.append(row)
        # Each engine's best steady rate of two runs: one run's steady rate comes from a
        # few batches per worker, and single runs of either engine moved the ratio by
        # 0.80-0.95 between quick runs.
        local_rates = []
        for k in range(RATE_RUNS):
            local, local_rate = _run(folder, loaded, [ray_method], root / f"local-ray-case-{k}")
            local_rates.append(local_rate.steady or ray_n / local.seconds)
        rows_out += _ray_rows(folder, root, ray_n, ray_method, max(local_rates), prep)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows_out


def _ray_rows(folder: Path, root: Path, n: int, method: str, local_rate: float,
              prep) -> list[dict]:
    import ray

    from salience.loading import load_model

    # Ray starts its workers at niceness 15; the local engine runs at 0.  On this shared
    # machine an actor timed 1.0x to 1.5x the same code in this process with it, so
    # the workers run at 0 here, like everything else timed.
    ray.init(num_cpus=3, object_store_memory=300 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR",
             _system_config={"worker_niceness": 0})
    try:
        factory = functools.partial(load_model)
        results = {}
        for workers in (1, 2):
            best = None
            for k in range(RATE_RUNS):
                summary, rate = _run(folder, factory, [method], root / f"ray-{workers}-{k}",
                                     engine="ray", workers=workers, preprocessing=prep)
                steady = rate.steady or (n / summary.seconds)
                if best is None or steady > best[1]:
                    best = (summary, steady)
            results[workers] = best
    finally:
        ray.shutdown()
    rows = []
    for workers, (summary, steady) in results.items():
        startup = summary.seconds - n / steady
        row = make_row(
            "dataset", method, "EfficientNet-Lite0",
            f"ray engine, {workers} worker(s), {n} photos, batch {BATCH}", n / steady,
            notes=(f"steady {steady:.3f} images/s ({1 / steady:.3f} s per image), "
                   f"{steady / local_rate:.2f}x the local engine's steady {local_rate:.3f} images/s "
                   f"(same images); whole Ray run {summary.seconds:.1f} s, of which "
                   f"~{max(startup, 0):.1f} s starting actors and models; scaling 1 -> "
                   f"{workers} workers: {steady / results[1][1]:.2f}x"))
        if workers == 2:
            row["target"] = ">= 0.85x the local engine's images/s"
            row["measured"] = f"{steady / local_rate:.2f}x"
            row["met"] = steady / local_rate >= RAY_CLAIM
        rows.append(row)
    return rows


if __name__ == "__main__":
    from common import configure_process

    configure_process(1)
    for result in run("--quick" in sys.argv):
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()})
