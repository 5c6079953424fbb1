"""Run every benchmark module (bench/bench_*.py) and write a results file.

Usage::

    python bench/run.py [--quick] [--only core,adapters] [--out bench/RESULTS.md]

Each module exposes ``run(quick: bool) -> list[dict]`` (rows made with
``common.make_row``).  A module that fails is reported in the results file with
its error; the others still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shlex
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import ROW_FIELDS, configure_process, machine_info  # noqa: E402

# Modules whose rows come first in the results file; the rest follow by name, and
# the Ray engine's module comes last: the small TF1 graph measured right after it
# (Ray's processes shutting down) ran 2-3x slower than alone (a GetMask's floor
# 0.86 and 1.5 ms in two runs, 0.5-0.7 ms in runs of that module alone).
ORDER = ("core", "guided_ig_xrai", "adapters", "metrics", "report")
LAST = ("dataset",)


def discover(only: list[str] | None) -> list[Path]:
    found = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}
    names = ([n for n in ORDER if n in found]
             + sorted(n for n in found if n not in ORDER + LAST)
             + [n for n in LAST if n in found])
    if only:
        unknown = [n for n in only if n not in found]
        if unknown:
            raise SystemExit(f"--only: no bench module named {unknown}; have {sorted(found)}")
        names = [n for n in names if n in only]
    return [found[n] for n in names]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_modules.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def fmt_s(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 100:
        return f"{v:.0f} s"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} us"


def fmt_x(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}x" if v < 100 else f"{v:.0f}x"


HEADER = ("method", "model", "setting", "salience", "reference", "captum", "floor",
          "reference / salience", "salience / floor", "notes")


def table(rows: list[dict]) -> list[str]:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = [
            str(r.get("method", "")), str(r.get("model", "")), str(r.get("setting", "")),
            fmt_s(r.get("salience_s")), fmt_s(r.get("reference_s")), fmt_s(r.get("captum_s")),
            fmt_s(r.get("floor_s")), fmt_x(r.get("vs_reference")), fmt_x(r.get("vs_floor")),
            str(r.get("notes", "")).replace("|", "/").replace("\n", " "),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def targets_table(rows: list[dict]) -> list[str]:
    checked = [r for r in rows if r.get("target")]
    if not checked:
        return []
    out = ["## Targets", "", "| method | model | setting | target | measured | met |",
           "|---|---|---|---|---|---|"]
    for r in checked:
        measured = r.get("measured") or ""
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        out.append(f"| {r['method']} | {r['model']} | {r['setting']} | {r['target']} | "
                   f"{measured} | {met} |")
    return out + [""]


def write(out: Path, rows_by_module: dict, errors: dict, durations: dict, info: dict,
          command: str, quick: bool) -> None:
    lines = [
        "# salience benchmark results",
        "",
        f"Written by `{command}` ({'quick' if quick else 'full'} run). Every figure below "
        "was measured in this one run on this machine; nothing is copied from elsewhere.",
        "",
        "How to read it: *salience*, *reference* (PAIR `saliency==0.2.1`, through its own "
        "API with a PAIR-style `call_model_function` on identical inputs and parameters), "
        "*captum* (Captum's equivalent on the same PyTorch module, its best batching options) "
        "and *floor* (the same number of forward(+backward) rows through the same model, at "
        "the model's best batch size: what no method can beat) are best-of-k wall times, "
        "timed interleaved so machine load hits all alike, each after one untimed warm-up "
        "call. *reference / salience* > 1 means salience is faster; *salience / floor* "
        "close to 1 means salience adds almost nothing to the model's own work. On a shared "
        "machine (see the load average below) differences of about 10% are within noise; "
        "`make bench` repeats more.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines.append("")
    all_rows = [r for rows in rows_by_module.values() for r in rows]
    lines += targets_table(all_rows)
    for name, rows in rows_by_module.items():
        areas: dict[str, list[dict]] = {}
        for r in rows:
            areas.setdefault(str(r.get("area", name)), []).append(r)
        for area, area_rows in areas.items():
            lines += [f"## {area}", "", *table(area_rows), ""]
        lines.append(f"_bench_{name}.py took {durations[name]:.0f} s._")
        lines.append("")
    for name, err in errors.items():
        lines += [f"## bench_{name}.py failed", "", "```", err.rstrip(), "```", ""]
    extra = sorted({k for r in all_rows for k in r} - set(ROW_FIELDS)
                   - {"target", "measured", "met"})
    if extra:
        lines += ["Extra row fields (see the module docstrings): " + ", ".join(extra), ""]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (< 5 minutes)")
    parser.add_argument("--only", default="", help="comma-separated module names (core, ...)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch intra-op threads (default 1: stable on shared machines)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="results file")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/run.py", *sys.argv[1:]])

    configure_process(args.threads)
    info = machine_info()
    rows_by_module: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    start_all = time.perf_counter()
    for path in discover(only):
        name = path.stem[len("bench_"):]
        print(f"== {path.name}", flush=True)
        start = time.perf_counter()
        try:
            rows = list(load(path).run(args.quick))
            rows_by_module[name] = rows
            for r in rows:
                print("   " + " | ".join(
                    [str(r.get("method")), str(r.get("model")), str(r.get("setting")),
                     "salience " + fmt_s(r.get("salience_s")),
                     "ref/sal " + fmt_x(r.get("vs_reference")),
                     "sal/floor " + fmt_x(r.get("vs_floor"))]), flush=True)
        except Exception:  # noqa: BLE001 - report and continue with the next module
            errors[name] = traceback.format_exc()
            print(errors[name], file=sys.stderr, flush=True)
        durations[name] = time.perf_counter() - start
        print(f"   ({durations[name]:.0f} s)", flush=True)
    info["total benchmark time"] = f"{time.perf_counter() - start_all:.0f} s"
    out = Path(args.out)
    write(out, rows_by_module, errors, durations, info, command, args.quick)
    all_rows = [r for rows in rows_by_module.values() for r in rows]
    missed = [r for r in all_rows if r.get("target") and r.get("met") is False]
    print(f"wrote {out}: {len(all_rows)} rows, {len(errors)} failed modules, "
          f"{len(missed)} missed targets, {info['total benchmark time']}")
    for r in missed:
        print(f"   missed: {r['method']} on {r['model']} ({r['setting']}): target {r['target']}, "
              f"measured {r.get('measured')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
