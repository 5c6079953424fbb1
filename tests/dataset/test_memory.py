"""The local engine streams: peak memory does not grow with the number of images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torch")

#: Runs one dataset in a fresh process and prints its peak resident memory.
SCRIPT = textwrap.dedent(
    """
    import json, resource, sys

    import torch

    import salience
    from salience.io import Preprocessing

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    source, out = sys.argv[1], sys.argv[2]
    summary = salience.explain_dataset(
        [source], salience.torch.wrap(net), ["gradients"], out,
        preprocessing=Preprocessing(size=(64, 64), preset="unit"), batch_size=32,
        report_sample=0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"done": summary.done, "peak_mib": peak_kib / 1024}))
    """
)


def _peak(list_file, out) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(list_file), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_peak_memory_is_flat_from_200_to_2000_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for k in range(2000):
        name = f"{k:04d}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / name)
        names.append(f"imgs/{name}")
    (tmp_path / "few.txt").write_text("\n".join(names[:200]))
    (tmp_path / "many.txt").write_text("\n".join(names))
    few = _peak(tmp_path / "few.txt", tmp_path / "few")
    many = _peak(tmp_path / "many.txt", tmp_path / "many")
    assert (few["done"], many["done"]) == (200, 2000)
    # Each image's input and map take 96 KiB: keeping them would add ~170 MiB for
    # the 1800 more images.  The source list and the records are a few MiB.
    grown = many["peak_mib"] - few["peak_mib"]
    assert grown < 24, f"peak memory grew by {grown:.1f} MiB from 200 to 2000 images ({few}, {many})"
