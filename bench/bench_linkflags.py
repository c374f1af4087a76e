#!/usr/bin/env python3
"""What `go build` flags (and the toolchain's GOGC) save on a rebuild of the example after a one-line edit (warm
build cache).

    .venv/bin/python bench/bench_linkflags.py [--runs 7] [--json out.json]

A copy of examples/hello-plugin/pkg is built once per variant (warming the cache for that variant's flags), then each
run edits `const Greeting` (atomic save) and rebuilds it with every variant, in a rotating order (no variant always
runs first after the edit). Per variant: the median and spread of the rebuild's wall time, its CPU time (go, compile,
link), and the binary's size.
GOPATH mode (GO111MODULE=off), like the tests and the other benches.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kit import GO_ENV, set_greeting, write_json

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hello-plugin"
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {       # name: (flags, extra env)
    "default": ([], {}),
    "-ldflags=-s -w": (["-ldflags=-s -w"], {}),
    "-trimpath": (["-trimpath"], {}),
    "-ldflags=-s -w -trimpath": (["-ldflags=-s -w", "-trimpath"], {}),
    "-buildvcs=false": (["-buildvcs=false"], {}),
    "-ldflags=-s -w -buildvcs=false": (["-ldflags=-s -w", "-buildvcs=false"], {}),
    "-ldflags=-s -w GOGC=200": (["-ldflags=-s -w"], {"GOGC": "200"}),
    "-ldflags=-s -w GOGC=400": (["-ldflags=-s -w"], {"GOGC": "400"}),
    "-ldflags=-s -w GOGC=off": (["-ldflags=-s -w"], {"GOGC": "off"}),
}


def build(tree: Path, flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the go tool and its children)."""
    before = os.times()
    t0 = time.monotonic()
    r = subprocess.run(["go", "build", *flags, "-o", "build/bin/plugin", "./pkg"], cwd=tree,
                       env={**os.environ, "GOGC": "100", **GO_ENV, **env}, capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    after = os.times()
    if r.returncode != 0:
        raise SystemExit(f"go build {' '.join(flags)} failed: {r.stderr}")
    return elapsed, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="omni-linkflags-"))
    try:
        trees = {}
        for i, (name, (flags, env)) in enumerate(VARIANTS.items()):
            tree = root / f"v{i}" / "hello"
            shutil.copytree(EXAMPLE / "pkg", tree / "pkg")
            build(tree, flags, env)                                 # warm this variant's cache entries
            trees[name] = tree
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                set_greeting(trees[name], f"Flags{run}")
                wall, cpu_s = build(trees[name], *VARIANTS[name])
                times[name].append(wall)
                cpu[name].append(cpu_s)
        base = statistics.median(times["default"])
        base_cpu = statistics.median(cpu["default"])
        go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        out = {"runs": args.runs, "go": go, "cpus": os.cpu_count(), "variants": {}}
        for name in names:
            med = statistics.median(times[name])
            size = (trees[name] / "build" / "bin" / "plugin").stat().st_size
            out["variants"][name] = {"median_ms": round(med * 1000, 1), "min_ms": round(min(times[name]) * 1000, 1),
                                     "max_ms": round(max(times[name]) * 1000, 1), "vs_default": round(med / base, 3),
                                     "cpu_s": round(statistics.median(cpu[name]), 3),
                                     "cpu_vs_default": round(statistics.median(cpu[name]) / base_cpu, 3),
                                     "binary_bytes": size, "times_ms": [round(t * 1000, 1) for t in times[name]]}
            print(f"{name:34s} median {med * 1000:7.1f} ms  ({med / base:5.2f}x)  min {min(times[name]) * 1000:7.1f}"
                  f"  CPU {statistics.median(cpu[name]):5.2f} s  binary {size / 1e6:6.2f} MB", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
