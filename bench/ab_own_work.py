"""Own work per model row of two salience checkouts, interleaved (an A/B of a change).

    python bench/ab_own_work.py OLD/src NEW/src [--methods GradCAM,EigenCAM] [--rounds 3]

Each round runs one process per checkout, in alternating order, with that
checkout's ``src`` first on ``PYTHONPATH`` and this file's harness
(:mod:`bench_own_work`: the zero-cost model, 224 px images, ``batch_size=32``,
registry settings, best of 5).  On a shared machine whose speed drifts within
minutes, only figures taken this close together compare two versions; the
table gives each side's range over the rounds and the ratio of their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def _child(methods: list[str], images: int) -> None:
    """Print {label: own ms per row} for ``methods`` (all when empty) as JSON."""
    sys.path.insert(0, str(BENCH))
    from bench_own_work import measure_cases, own_work_images
    from common import configure_process

    configure_process(1)
    out = {}
    for method, setting, rows, wall, cpu in measure_cases(own_work_images(images), 5, methods):
        out[f"{method} ({setting})" if setting else method] = min(wall, cpu) / rows * 1e3
    print(json.dumps(out))


def _run_side(src: str, methods: list[str], images: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(BENCH)])}
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--methods", ",".join(methods),
         "--images", str(images)],
        env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _span(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", nargs="?", help="the src directory of the old checkout")
    parser.add_argument("new", nargs="?", help="the src directory of the new checkout")
    parser.add_argument("--methods", default="", help="comma-separated class names (all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.child:
        _child(methods, args.images)
        return
    if not (args.old and args.new):
        parser.error("give the src directories of the old and the new checkout")
    for src in (args.old, args.new):
        if not (Path(src) / "salience" / "__init__.py").is_file():
            parser.error(f"{src} holds no salience package (pass a checkout's src directory)")
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for side in order:
            runs[side].append(_run_side(getattr(args, side), methods, args.images))
            print(f"round {r + 1}: {side} done", file=sys.stderr, flush=True)
    print("| method | old ms/row | new ms/row | new / old (medians) |")
    print("|---|---:|---:|---:|")
    for label in runs["new"][0]:
        old = [run[label] for run in runs["old"] if label in run]
        new = [run[label] for run in runs["new"]]
        ratio = f"{statistics.median(new) / statistics.median(old):.2f}x" if old else "-"
        print(f"| {label} | {_span(old)} | {_span(new)} | {ratio} |")


if __name__ == "__main__":
    main()
