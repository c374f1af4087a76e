"""External mode (Mode B) latencies with the real example plugin.

- attach latency: an attached External is watching; a plugin is running (started without OMNIVIEW_DEV, handshake
  read here); `.devinfo` is written atomically at t0 -> the status event with grpcConnected true (validation, the
  gRPC connection and the health check included).
- death detection latency: kill -9 of the attached plugin at t0 -> the status event with grpcConnected false.
- (also) follow-restart latency: a second plugin's `.devinfo` replaces the first's -> plugin/dev_reload_complete.

Times are taken when the event is published (a sink that stamps events), not when a waiter wakes up.
Median and max over N runs (default 20) after one warm-up run (shown apart), each run with fresh plugin processes.

Usage: .venv/bin/python bench/bench_external.py [--runs N] [--plugin PATH] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnibroker import protocol  # noqa: E402
from omniworker.devinfo import write_devinfo  # noqa: E402
from omniworker.goplugin import parse_handshake  # noqa: E402
from omniworker.children import set_pdeathsig  # noqa: E402
from omniworker.context import PluginContext  # noqa: E402
from omniworker.external import External  # noqa: E402
from omniworker.state import Mode  # noqa: E402
from kit import TimedSink, stamp_of  # noqa: E402

EXAMPLE = REPO / "examples" / "hello-plugin"
PLUGIN = "hello"


def build_plugin(tmp: Path) -> str:
    src = tmp / "src"
    shutil.copytree(EXAMPLE / "pkg", src / "pkg")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode")
    subprocess.run(["go", "build", "-p", "1", "-o", "plugin", "./pkg"], cwd=src, env=env, check=True, timeout=600)
    return str(src / "plugin")


async def start_plugin(binary: str) -> tuple[asyncio.subprocess.Process, protocol.DevInfo]:
    env = dict(os.environ, OMNIVIEW=PLUGIN, PLUGIN_PROTOCOL_VERSIONS="1")
    env.pop("OMNIVIEW_DEV", None)
    proc = await asyncio.create_subprocess_exec(binary, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, preexec_fn=set_pdeathsig)
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    hs = parse_handshake(line.decode())
    return proc, protocol.DevInfo(pid=proc.pid, protocol="grpc", protocolVersion=hs.app, addr=hs.addr,
                                  pluginId=PLUGIN, startedAt=protocol.now_rfc3339())


def summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3),
            "min_ms": round(min(ms), 3), "runs": len(ms), "all_ms": [round(v, 3) for v in ms]}


async def bench(binary: str, runs: int, home: Path) -> dict:
    os.environ["OMNIVIEW_HOME"] = str(home)
    sink = TimedSink()
    ctx = PluginContext(protocol.PluginSpec(id=PLUGIN, path=str(EXAMPLE)), sink)
    ext = External(ctx)
    ctx.mode.change_state(Mode.EXTERNAL)        # as DevServer does: it owns the mode, External follows .devinfo
    await ext.attach()
    path = os.path.join(ctx.home, ".devinfo")
    attach, death, follow = [], [], []
    try:
        for _ in range(runs + 1):           # the first run is a warm-up (page cache, first channel), not counted
            proc, info = await start_plugin(binary)
            # attach: .devinfo written -> grpcConnected true
            mark = len(sink.events)
            t0 = time.perf_counter()
            write_devinfo(path, info)
            t1 = await stamp_of(sink, lambda t, p: t == protocol.STATUS and p["grpcConnected"]
                                  and p["pluginPid"] == proc.pid, mark)
            attach.append(t1 - t0)
            # follow a restart: a new plugin's .devinfo replaces this one -> dev_reload_complete
            proc2, info2 = await start_plugin(binary)
            mark = len(sink.events)
            t0 = time.perf_counter()
            write_devinfo(path, info2)
            t1 = await stamp_of(sink, lambda t, p: t == protocol.RELOAD_COMPLETE, mark)
            follow.append(t1 - t0)
            proc.kill()
            await proc.wait()
            # death: kill -9 -> grpcConnected false
            mark = len(sink.events)
            t0 = time.perf_counter()
            os.kill(proc2.pid, signal.SIGKILL)
            t1 = await stamp_of(sink, lambda t, p: t == protocol.STATUS and not p["grpcConnected"], mark)
            death.append(t1 - t0)
            await proc2.wait()
            # let the removal of the dead pid's .devinfo happen before the next run writes a new one
            deadline = time.monotonic() + 5
            while os.path.exists(path) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
    finally:
        await ext.detach()
    return {"warmup_ms": {"attach": round(attach.pop(0) * 1000, 3), "death": round(death.pop(0) * 1000, 3),
                          "follow_restart": round(follow.pop(0) * 1000, 3)},
            "attach": summary(attach), "death": summary(death), "follow_restart": summary(follow),
            "death_watch": "pidfd" if hasattr(os, "pidfd_open") else "thread"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--plugin", help="a built example plugin binary (default: build one from examples/)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-external-"))
    try:
        binary = args.plugin or build_plugin(tmp)
        home = tmp / "home"
        home.mkdir()
        res = asyncio.run(bench(binary, args.runs, home))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"external mode, {args.runs} runs (death watch: {res['death_watch']})")
    for name, label in (("attach", ".devinfo written -> grpcConnected true"),
                        ("death", "kill -9 -> grpcConnected false"),
                        ("follow_restart", ".devinfo replaced -> dev_reload_complete")):
        r = res[name]
        print(f"  {label:45s} median {r['median_ms']:8.2f} ms   max {r['max_ms']:8.2f} ms   "
              f"(warm-up run: {res['warmup_ms'][name]:.2f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
