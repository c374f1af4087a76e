#!/usr/bin/env python3
"""Benchmark of debug mode (delve) against normal mode, with the real example plugin and the managed Go path.

    .venv/bin/python bench/bench_debug.py [--runs 5] [--json PATH] [--quick]

In one run, for each mode (normal, then debug), on its own copy of examples/hello-plugin driven by omniworker's GoPath
(the worker's Go half, events stamped when published):
  start_ready        GoPath.start() -> goStatus ready (debug: a debug build, delve, the handshake through delve)
  breakpoint_ready   debug only: start -> the state has its debugPort and delve's JSON-RPC API answers `State` on it
                     (an IDE can attach and set breakpoints)
  save_ready         an atomic save of `const Greeting` -> the reload complete event (debounce, build, install, the
                     switch; debug: `-gcflags=all=-N -l`, delve's restart of the new binary, the host's reconnect)
  idle_cpu           the worker process's CPU (user + system) over --idle-s seconds of a ready plugin, in % of one core
                     (debug: with the pause watcher's connections to delve open)
Median and max over --runs saves per mode (the first start of each mode builds with a cold or warm Go cache: shown
as it is). Results as JSON on stdout, or to --json PATH.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnibroker import protocol  # noqa: E402
from omnibroker.ports import PortAllocator  # noqa: E402
from omniworker.context import PluginContext  # noqa: E402
from omniworker.delve import DEBUG_PORTS, DelveClient, DelveError  # noqa: E402
from omniworker.gopath import GoPath  # noqa: E402
from kit import GO_ENV, TimedSink, set_greeting, stamp_of, write_json  # noqa: E402

EXAMPLE = REPO / "examples" / "hello-plugin"





def ready(topic, payload) -> bool:
    return topic == protocol.STATUS and payload["goStatus"] == "ready" and payload["grpcConnected"]


async def delve_answers(port: int, deadline: float) -> float:
    """The time delve's JSON-RPC API first answers `State` on `port`."""
    while True:
        try:
            client = await DelveClient.connect(port, timeout=1.0)
            try:
                await client.call("State", {"NonBlocking": True})
                return time.perf_counter()
            finally:
                await client.close()
        except DelveError:
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.01)       # delve is not listening yet: try again (bounded by the deadline)


async def one_mode(root: Path, debug: bool, runs: int, idle_s: float) -> dict:
    tree = root / ("debug" if debug else "normal")
    shutil.copytree(EXAMPLE, tree, ignore=shutil.ignore_patterns("ui", "node_modules", "build", ".devinfo"))
    os.environ["OMNIVIEW_HOME"] = str(root / ("home-debug" if debug else "home-normal"))
    sink = TimedSink()
    ctx = PluginContext(protocol.PluginSpec(id="hello", path=str(tree), settings={
        "build": {"env": GO_ENV}, "handshake": {"cookie_value": "hello"}}), sink)
    port = PortAllocator(*DEBUG_PORTS, state={}).allocate("hello") if debug else 0
    go = GoPath(ctx, debug_port=port)
    out: dict = {"mode": "debug" if debug else "normal"}
    try:
        t0 = time.perf_counter()
        start = asyncio.ensure_future(go.start())
        if debug:
            t_port = await stamp_of(sink, lambda t, p: t == protocol.STATUS and p["debugPort"], 0, 600)
            t_api = await delve_answers(port, time.perf_counter() + 60)
            out["breakpoint_ready_ms"] = (max(t_port, t_api) - t0) * 1000
            out["debug_port"] = port
        out["start_ready_ms"] = (await stamp_of(sink, ready, 0, 600) - t0) * 1000
        await start
        saves = []
        for i in range(runs):
            since = len(sink.events)
            t0 = time.perf_counter()
            set_greeting(tree, f"Run {i} {time.time()}")
            t1 = await stamp_of(sink, lambda t, p: t == protocol.RELOAD_COMPLETE, since, 300)
            saves.append((t1 - t0) * 1000)
        out["save_ready_ms"] = {"median": statistics.median(saves), "max": max(saves), "runs": saves}
        c0, w0 = os.times(), time.perf_counter()
        await asyncio.sleep(idle_s)         # the measured idle period itself
        c1, w1 = os.times(), time.perf_counter()
        out["idle_cpu_percent"] = ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0) * 100
        out["last_build_ms"] = ctx.state.lastBuildDuration / 1e6
    finally:
        await go.stop()
    return out


async def main_async(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="omni-bench-debug-"))
    os.environ["OMNI_RUNTIME_DIR"] = str(root / "run")
    (root / "run").mkdir(mode=0o700)
    try:
        normal = await one_mode(root, False, args.runs, args.idle_s)
        debug = await one_mode(root, True, args.runs, args.idle_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"runs": args.runs, "idle_s": args.idle_s, "normal": normal, "debug": debug,
            "save_ready_debug_over_normal": debug["save_ready_ms"]["median"] / normal["save_ready_ms"]["median"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="saves per mode")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds of idle CPU measured per mode")
    ap.add_argument("--quick", action="store_true", help="2 saves per mode, 3 s idle")
    ap.add_argument("--json", default="", help="write the results here (default: stdout)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.idle_s = 2, 3.0
    result = asyncio.run(main_async(args))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
