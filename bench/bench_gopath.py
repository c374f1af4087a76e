#!/usr/bin/env python3
"""Benchmark of the managed Go path: save -> ready for the example plugin, and invoke gaps across a reload.

    .venv/bin/python bench/bench_gopath.py [--runs 5] [--debounce-ms 30] [--gap-runs 3] [--rapid-runs 3]
                                           [--out results.json]

Per run: edit `const Greeting` in a copy of examples/hello-plugin (atomic save), wait for dev_reload_complete, and
split save -> ready into
  debounce          save -> debounce fired (inotify delivery + the quiet window, [go] debounce_ms)
  queue             debounce fired -> go build spawned (cycle start, build slot)
  build             the `go build` run by omni (warm cache)
  install           atomic copy into <home>/bin/plugin (+ fsync, rename, plugin.prev)
  handshake_health  spawn -> handshake -> gRPC connect -> health -> switch
The same edit is built standalone (`go build` on a second copy, same command and env) in the same run, before or
after omni's build on alternate runs:
  overhead = total - debounce - standalone_build         (everything omni adds besides the debounce it is asked for)
  total / standalone_build                               (save -> ready against the build alone; goal <= 1.15)
Then, --rapid-runs times each: 5 saves 60 ms apart (reloads until the last save is served, builds cancelled and the
CPU-seconds they had used: Builder.cancelled_cpu_s), and `git checkout` of a branch where 30 generated .go files
and the greeting differ (reloads; the branch's greeting served).
Separately (so the busy client does not slow the builds above), a client calls invoke in a loop across reloads
(both reload orders) and the longest gap between two answers is recorded, next to a baseline: the longest gap the
same client sees while a standalone go build loads the machine without any reload. Figures: median over runs.
Results as JSON on stdout, or to the path given with --out.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from kit import GO_ENV, build_env, set_greeting, write_json  # noqa: E402

EXAMPLE = REPO / "examples" / "hello-plugin"
GREET = "/hello.Greeter/Greet"


def load_greeter():
    spec = importlib.util.spec_from_file_location("greeter_pb", EXAMPLE / "greeter_pb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_example(dst: Path) -> Path:
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("ui", "node_modules", ".git", "__pycache__"))
    return dst


async def standalone_build(tree: Path) -> float:
    env = build_env()
    t0 = time.monotonic()
    from omniworker.gobuild import DEFAULT_BUILD_COMMAND          # the very command omni runs, in its env
    proc = await asyncio.create_subprocess_exec(*DEFAULT_BUILD_COMMAND, cwd=tree, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"standalone go build failed: {err.decode()}")
    return time.monotonic() - t0


def git_branches(tree: Path, files: int = 30) -> None:
    """A git repository in `tree`: branch main with `files` generated .go files, branch other where all of them and
    the greeting differ; main checked out."""
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for i in range(files):
        (tree / "pkg" / f"gen_{i:02d}.go").write_text(f'package main\n\nconst genValue{i:02d} = "a{i}"\n')
    subprocess.run(["git", "init", "-q", "-b", "main", str(tree)], check=True)
    for args in (["add", "-A"], ["commit", "-qm", "a"], ["checkout", "-qb", "other"]):
        subprocess.run([*git, *args], cwd=tree, check=True)
    for i in range(files):
        (tree / "pkg" / f"gen_{i:02d}.go").write_text(f'package main\n\nconst genValue{i:02d} = "b{i}"\n')
    set_greeting(tree, "Checkout")
    for args in (["commit", "-qam", "b"], ["checkout", "-q", "main"]):
        subprocess.run([*git, *args], cwd=tree, check=True)


def med(values):
    return statistics.median(values) if values else None


class Session:
    def __init__(self, root: Path, name: str, settings: dict):
        from omnibroker import protocol
        from omniworker.context import NullSink, PluginContext
        from omniworker.gopath import GoPath
        self.protocol = protocol
        self.tree = copy_example(root / name / "hello")
        self.sink = NullSink()
        self.ctx = PluginContext(protocol.PluginSpec(id="hello", path=str(self.tree), settings=settings), self.sink)
        self.gp = GoPath(self.ctx)

    async def wait(self, topic: str, since: int, timeout: float):
        i = since

        async def scan():
            nonlocal i
            while True:
                while i < len(self.sink.events):
                    t, p = self.sink.events[i]
                    i += 1
                    if t == topic:
                        return p
                self.sink.changed.clear()
                await self.sink.changed.wait()
        return await asyncio.wait_for(scan(), timeout)

    async def reload(self, value: str, timeout: float = 120) -> tuple[float, float]:
        """Save, wait for the reload; returns (t_save, t_ready) in loop time."""
        loop = asyncio.get_running_loop()
        mark = len(self.sink.events)
        t_save = loop.time()
        set_greeting(self.tree, value)
        done = asyncio.ensure_future(self.wait(self.protocol.RELOAD_COMPLETE, mark, timeout))
        err = asyncio.ensure_future(self.wait(self.protocol.RELOAD_ERROR, mark, timeout))
        finished, _ = await asyncio.wait({done, err}, return_when=asyncio.FIRST_COMPLETED)
        for f in (done, err):
            f.cancel()
        if err in finished and not err.cancelled():
            raise SystemExit(f"reload failed: {err.result()}")
        return t_save, self.gp.last_cycle.get("ready", loop.time())


async def bench(args) -> dict:
    greeter = load_greeter()
    root = Path(tempfile.mkdtemp(prefix="omni-bench-gopath-"))
    os.environ["OMNIVIEW_HOME"] = str(root / "home")
    os.environ["OMNI_RUNTIME_DIR"] = str(root / "run")
    settings = {"build": {"env": dict(GO_ENV)}, "go": {"debounce_ms": args.debounce_ms}}
    results: dict = {"runs": [], "gaps": {}, "debounce_ms": args.debounce_ms, "n": args.runs,
                     "cpus": os.cpu_count(), "go": shutil.which("go")}
    try:
        standalone_tree = copy_example(root / "standalone" / "hello")
        await standalone_build(standalone_tree)                     # warm
        s = Session(root, "omni", settings)
        await s.gp.start()
        if s.ctx.state.goStatus != "ready":
            raise SystemExit(f"plugin did not start: {s.ctx.state.lastError}")
        for i in range(args.runs + 1):                              # run 0 warms this tree's build path
            value = f"Bench{i}"
            standalone_first = i % 2 == 1           # alternate the order: no bias from running second
            if standalone_first:
                set_greeting(standalone_tree, value)
                sa = await standalone_build(standalone_tree)
            t_save, t_ready = await s.reload(value)
            c = dict(s.gp.last_cycle)
            got = greeter.decode_greet_reply(await s.gp.invoke(GREET, greeter.encode_greet_request("b")))
            assert got == f"{value}, b", got
            if not standalone_first:
                set_greeting(standalone_tree, value)
                sa = await standalone_build(standalone_tree)
            if i == 0:
                continue
            run = {
                "total": t_ready - t_save,
                "debounce": c["fired"] - t_save,
                "queue": c["build_start"] - c["fired"],
                "build": c["build_end"] - c["build_start"],
                "install": c["installed"] - c["build_end"],
                "handshake_health": t_ready - c["installed"],
                "spawn_to_handshake": c["plugin_handshake"] - c["plugin_spawned"],
                "health_rpc": c["plugin_healthy"] - c["plugin_connected"],
                "standalone_build": sa,
            }
            run["overhead"] = run["total"] - run["debounce"] - sa
            run["overhead_vs_configured_debounce"] = run["total"] - args.debounce_ms / 1000 - sa
            results["runs"].append(run)
            print(f"run {i}: " + "  ".join(f"{k}={v * 1000:.0f}ms" for k, v in run.items()), file=sys.stderr)
        # 5 saves 60 ms apart: how many reloads, the last one served, CPU-s spent on the builds cancelled meanwhile
        results["rapid"] = []
        for i in range(args.rapid_runs):
            loop = asyncio.get_running_loop()
            first = mark = len(s.sink.events)
            cpu0, n0 = s.gp.builder.cancelled_cpu_s, s.gp.builder.cancelled
            words = [f"Rapid{i}x{k}" for k in range(5)]
            for k, word in enumerate(words):
                set_greeting(s.tree, word)
                if k < 4:
                    await asyncio.sleep(0.06)               # the pacing of the saves, not a synchronisation
            deadline = loop.time() + 60
            while True:                                     # until the last save is served
                await s.wait(s.protocol.RELOAD_COMPLETE, mark, deadline - loop.time())
                mark = len(s.sink.events)
                got = greeter.decode_greet_reply(await s.gp.invoke(GREET, greeter.encode_greet_request("b")))
                if got == f"{words[-1]}, b":
                    break
            await asyncio.sleep(1.0)                        # room for a late extra reload to show up in the count
            reloads = sum(1 for t, _ in s.sink.events[first:] if t == s.protocol.RELOAD_COMPLETE)
            results["rapid"].append({"reloads": reloads, "last_served": True,
                                     "cancelled_builds": s.gp.builder.cancelled - n0,
                                     "cancelled_cpu_s": s.gp.builder.cancelled_cpu_s - cpu0})
            print(f"rapid {i}: {results['rapid'][-1]}", file=sys.stderr)
        await s.gp.stop()

        # `git checkout` of 30 files (a branch where 30 generated files and the greeting differ) -> reloads
        c = Session(root, "checkout", settings)
        git_branches(c.tree)
        await c.gp.start()
        results["checkout"] = []
        for i in range(args.rapid_runs):
            branch, word = ("other", "Checkout") if i % 2 == 0 else ("main", "Hello")
            first = len(c.sink.events)
            n0 = c.gp.builder.cancelled
            subprocess.run(["git", "checkout", "-q", branch], cwd=c.tree, check=True)
            await c.wait(c.protocol.RELOAD_COMPLETE, first, 60)
            await asyncio.sleep(1.0)                        # room for a late extra reload to show up in the count
            got = greeter.decode_greet_reply(await c.gp.invoke(GREET, greeter.encode_greet_request("b")))
            results["checkout"].append({
                "reloads": sum(1 for t, _ in c.sink.events[first:] if t == c.protocol.RELOAD_COMPLETE),
                "served": got == f"{word}, b", "cancelled_builds": c.gp.builder.cancelled - n0})
            print(f"checkout {i}: {results['checkout'][-1]}", file=sys.stderr)
        await c.gp.stop()

        # invoke gaps across reloads
        for order in ("start-first", "stop-first") if args.gap_runs > 1 else ():
            st = {"build": {"env": dict(GO_ENV)}, "go": {"debounce_ms": args.debounce_ms, "reload_order": order}}
            g = Session(root, f"gap-{order}", st)
            await g.gp.start()
            gaps, failures, calls, baseline = [], 0, 0, []
            # baseline: the same client while a standalone go build (no reload) loads the machine
            for i in range(args.gap_runs):
                stamps0: list[float] = []
                stop0 = asyncio.Event()

                async def client0():
                    loop = asyncio.get_running_loop()
                    while not stop0.is_set():
                        await g.gp.invoke(GREET, greeter.encode_greet_request("g"), timeout=10)
                        stamps0.append(loop.time())
                t0 = asyncio.create_task(client0())
                set_greeting(standalone_tree, f"Base{order}{i}")
                await standalone_build(standalone_tree)
                stop0.set()
                await t0
                baseline.append(max(b - a for a, b in zip(stamps0, stamps0[1:])))
            for i in range(args.gap_runs + 1):
                stamps: list[float] = []
                stop = asyncio.Event()

                async def client():
                    nonlocal failures, calls
                    loop = asyncio.get_running_loop()
                    while not stop.is_set():
                        try:
                            await g.gp.invoke(GREET, greeter.encode_greet_request("g"), timeout=10)
                            stamps.append(loop.time())
                            calls += 1
                        except Exception:
                            failures += 1
                task = asyncio.create_task(client())
                t_save, t_ready = await g.reload(f"Gap{i}")
                await asyncio.sleep(0.3)        # let the client run past the switch (measurement window)
                stop.set()
                await task
                window = [t for t in stamps if t_save - 0.05 <= t <= t_ready + 0.3]
                gap = max((b - a for a, b in zip(window, window[1:])), default=float("nan"))
                if i > 0:
                    gaps.append(gap)
            await g.gp.stop()
            results["gaps"][order] = {"max_gap_ms_median": med(gaps) * 1000, "max_gap_ms_worst": max(gaps) * 1000,
                                      "failures": failures, "calls": calls,
                                      "baseline_max_gap_ms_median": med(baseline) * 1000}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    keys = list(results["runs"][0].keys()) if results["runs"] else []
    results["median_ms"] = {k: med([r[k] for r in results["runs"]]) * 1000 for k in keys}
    m = results["median_ms"]
    if m:
        results["ratios"] = {
            "overhead_over_total": m["overhead"] / m["total"],
            "omni_build_over_standalone": m["build"] / m["standalone_build"],
            "total_over_standalone": m["total"] / m["standalone_build"],
            "total_over_budget_1300ms": m["total"] / 1300,
            "overhead_over_goal_100ms": m["overhead"] / 100,
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gap-runs", type=int, default=3)
    from omnibroker.settings import GoSettings
    ap.add_argument("--debounce-ms", type=float, default=GoSettings().debounce_ms,
                    help="[go] debounce_ms (default: omni's)")
    ap.add_argument("--rapid-runs", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if not (EXAMPLE / "pkg" / "greeting.go").exists():
        raise SystemExit("examples/hello-plugin is missing")
    res = asyncio.run(bench(args))
    m = res.get("median_ms", {})
    print("\nsave -> ready, median of %d runs (debounce %d ms):" % (res["n"], res["debounce_ms"]), file=sys.stderr)
    for k in ("total", "debounce", "queue", "build", "install", "handshake_health", "spawn_to_handshake",
              "health_rpc", "standalone_build", "overhead", "overhead_vs_configured_debounce"):
        if k in m:
            print(f"  {k:32s} {m[k]:8.1f} ms", file=sys.stderr)
    for k, v in res.get("ratios", {}).items():
        print(f"  {k:32s} {v:8.3f}", file=sys.stderr)
    for order, g in res["gaps"].items():
        print(f"  invoke gap ({order}): median of max gaps {g['max_gap_ms_median']:.1f} ms, worst "
              f"{g['max_gap_ms_worst']:.1f} ms, {g['failures']} failed of {g['calls'] + g['failures']}; baseline "
              f"(same client during a go build, no reload) {g['baseline_max_gap_ms_median']:.1f} ms",
              file=sys.stderr)
    write_json(res, args.out)


if __name__ == "__main__":
    main()
