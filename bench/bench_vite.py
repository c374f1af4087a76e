"""Managed Vite vs the same Vite run directly, on the example plugin's UI.

Measures, in one run:
- ready time: managed (ViteServer.start() -> viteStatus "ready", measured inside a worker-like process) vs direct
  (exec -> first HTTP answer, polled every 5 ms); median of N each, alternating, after one warm-up of each; ratio.
- HMR latency: save App.tsx -> the `update` message on a Vite HMR WebSocket client (vite-hmr subprotocol, Origin and
  token, as a cross-origin host page), managed vs direct Vite running side by side; median of N each, alternating.
  The managed Vite runs under a separate worker process, as in production, so the client is not slowed by our log
  handling in its own event loop.
- memory: RSS (and peak RSS, PSS) of each managed Vite process: warm (dependency cache present) and cold (a fresh
  copy: the dependency optimizer runs); RSS of the worker process that supervises it.

Usage: .venv/bin/python bench/bench_vite.py [--runs N] [--hmr-runs N] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnibroker.ports import PortAllocator  # noqa: E402
from omniworker.vite import http_answers  # noqa: E402

EXAMPLE_UI = REPO / "examples" / "hello-plugin" / "ui"
ORIGIN = "http://127.0.0.1:15170"
EDIT_GAP = 0.15     # s between two saves of the same file (Vite's watcher drops a change within 50 ms of the last)

WORKER = textwrap.dedent("""
    # A minimal worker: a ViteServer driven by stdin lines ("start PORT", "stop", "quit").
    import asyncio, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from omnibroker import protocol
    from omniworker.context import NullSink, PluginContext
    from omniworker.vite import ViteServer

    class TimedSink(NullSink):
        def __init__(self):
            super().__init__()
            self.running_at = None
        def publish(self, topic, payload):
            if topic == protocol.STATUS and payload.viteStatus == "ready" and self.running_at is None:
                self.running_at = time.perf_counter()
            super().publish(topic, payload)

    async def main():
        sink = TimedSink()
        ctx = PluginContext(protocol.PluginSpec(id="bench", path=sys.argv[2]), sink)
        vite = ViteServer(ctx)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                await vite.stop()
                return
            if line[0] == "start":
                sink.running_at = None
                t0 = time.perf_counter()
                await vite.start(int(line[1]))
                ok = await vite.wait_running(60)
                if ok:
                    print("RUNNING", vite.pid, sink.running_at - t0, flush=True)
                else:
                    print("FAILED", ctx.state.lastError.replace("\\n", " | "), flush=True)
            elif line[0] == "stop":
                await vite.stop()
                print("STOPPED", flush=True)

    asyncio.run(main())
""")


def make_copy(dest: Path) -> Path:
    """A copy of the example plugin's UI with a node_modules of links (Vite's own cache stays in the copy)."""
    ui = dest / "ui"
    shutil.copytree(EXAMPLE_UI, ui, ignore=shutil.ignore_patterns("node_modules", "dist", ".vite"))
    (ui / "node_modules").mkdir()
    for entry in os.listdir(EXAMPLE_UI / "node_modules"):
        if entry not in (".vite", ".vite-temp"):
            (ui / "node_modules" / entry).symlink_to(EXAMPLE_UI / "node_modules" / entry)
    return dest


def vite_argv(ui: Path, port: int) -> list[str]:
    return [str(ui / "node_modules" / ".bin" / "vite"), "--host", "127.0.0.1", "--port", str(port), "--strictPort",
            "--cors", "--clearScreen", "false"]


def get(url: str, headers: dict | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return r.read()


class Direct:
    """The same Vite, run by hand: exec, poll HTTP every 5 ms."""

    def __init__(self, ui: Path, port: int):
        self.ui, self.port, self.proc = ui, port, None

    async def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            *vite_argv(self.ui, self.port), cwd=self.ui, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + 60
        while not await http_answers(self.port):
            if self.proc.returncode is not None or time.perf_counter() > deadline:
                raise RuntimeError("direct Vite did not start")
            await asyncio.sleep(0.005)
        return time.perf_counter() - t0

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), 5)
            except (ProcessLookupError, asyncio.TimeoutError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await self.proc.wait()
        self.proc = None


class Managed:
    """A worker-like process running omniworker.vite.ViteServer, driven over stdin."""

    def __init__(self, plugin_dir: Path, port: int, env: dict):
        self.dir, self.port, self.env, self.proc, self.vite_pid = plugin_dir, port, env, None, 0

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, str(REPO), str(self.dir), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=self.env)

    async def _cmd(self, line: str, timeout: float = 90) -> list[str]:
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().split()

    async def start(self) -> float:
        reply = await self._cmd(f"start {self.port}")
        if not reply or reply[0] != "RUNNING":
            raise RuntimeError(f"managed Vite did not start: {' '.join(reply)}")
        self.vite_pid = int(reply[1])
        return float(reply[2])

    async def stop(self) -> None:
        await self._cmd("stop")

    async def quit(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def hmr_client(port: int):
    import websockets
    base = f"http://127.0.0.1:{port}"
    for path in ("/src/entry.tsx", "/src/App.tsx"):
        await asyncio.to_thread(get, base + path, {"Origin": ORIGIN})
    client = (await asyncio.to_thread(get, base + "/@vite/client")).decode()
    token = re.search(r'const wsToken = "([^"]*)"', client).group(1)
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/?token={token}", subprotocols=["vite-hmr"], origin=ORIGIN,
                                  open_timeout=10)
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connected"
    return ws


async def hmr_once(ws, app: Path, text: str, i: int) -> float:
    new = text.replace("Hello from hello-plugin", f"Hello #{i} from hello-plugin")
    t0 = time.perf_counter()
    app.write_text(new)
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if msg.get("type") == "update":
            return (time.perf_counter() - t0) * 1000


async def load_all(port: int) -> None:
    """What a page does: the entry modules and the pre-bundled dependencies they import (served once the
    dependency optimizer is done, so this also waits for it)."""
    base = f"http://127.0.0.1:{port}"
    deps: set[str] = set()
    for path in ("/src/main.tsx", "/src/entry.tsx", "/src/App.tsx"):
        body = (await asyncio.to_thread(get, base + path, {"Origin": ORIGIN})).decode()
        deps.update(re.findall(r'"(/node_modules/\.vite/deps/[^"]+)"', body))
    for dep in sorted(deps):
        await asyncio.to_thread(get, base + dep, {"Origin": ORIGIN})


def mem_of(pid: int) -> dict:
    p = psutil.Process(pid)
    out = {"rss_mb": p.memory_info().rss / 2**20}
    try:
        out["pss_mb"] = p.memory_full_info().pss / 2**20
    except (psutil.Error, AttributeError):
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        if m:
            out["peak_rss_mb"] = int(m.group(1)) / 1024
    except OSError:
        pass
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def bench(runs: int, hmr_runs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="omni-bench-vite-"))
    env = dict(os.environ, OMNI_RUNTIME_DIR=str(tmp / "run"), OMNIVIEW_HOME=str(tmp / "home"))
    os.environ.update(OMNI_RUNTIME_DIR=env["OMNI_RUNTIME_DIR"], OMNIVIEW_HOME=env["OMNIVIEW_HOME"])
    alloc = PortAllocator(15800, 15900, {})
    pm, pd, pc = alloc.allocate("managed"), alloc.allocate("direct"), alloc.allocate("cold")
    m_dir, d_dir = make_copy(tmp / "managed"), make_copy(tmp / "direct")
    managed, direct = Managed(m_dir, pm, env), Direct(d_dir / "ui", pd)
    res: dict = {"vite_version": json.loads((EXAMPLE_UI / "node_modules" / "vite" / "package.json").read_text())
                 ["version"], "node": shutil.which("node"), "runs": runs, "hmr_runs": hmr_runs, "cpus": os.cpu_count()}
    await managed.spawn()
    try:
        # --- cold start (fresh copy: the dependency optimizer runs, after Vite is ready) ----------------------------
        cold = Managed(make_copy(tmp / "cold"), pc, env)
        await cold.spawn()
        try:
            res["cold_ready_s"] = await cold.start()
            res["mem_cold_ready"] = mem_of(cold.vite_pid)
            await load_all(pc)
            res["mem_cold_loaded"] = mem_of(cold.vite_pid)
        finally:
            await cold.quit()

        # --- warm both copies: let the optimizer finish and write its cache -----------------------------------------
        for target, port in ((managed, pm), (direct, pd)):
            await target.start()
            await load_all(port)
            await target.stop()

        # --- ready time, warm (one warm-up each, then alternate) ----------------------------------------------------
        m_ready, d_ready = [], []
        for i in range(runs + 1):
            order = (("m", managed), ("d", direct)) if i % 2 == 0 else (("d", direct), ("m", managed))
            for name, target in order:
                t = await target.start()
                if i > 0:
                    (m_ready if name == "m" else d_ready).append(t)
                await target.stop()
        res["ready_managed_s"] = m_ready
        res["ready_direct_s"] = d_ready

        # --- HMR latency, side by side ------------------------------------------------------------------------------
        await managed.start()
        await direct.start()
        res["mem_warm_ready"] = mem_of(managed.vite_pid)
        await load_all(pm)
        await load_all(pd)
        res["mem_warm_loaded"] = mem_of(managed.vite_pid)
        res["worker_rss_mb"] = psutil.Process(managed.proc.pid).memory_info().rss / 2**20
        ws_m, ws_d = await hmr_client(pm), await hmr_client(pd)
        app_m, app_d = m_dir / "ui" / "src" / "App.tsx", d_dir / "ui" / "src" / "App.tsx"
        text_m, text_d = app_m.read_text(), app_d.read_text()
        h_m, h_d = [], []
        try:
            for i in range(hmr_runs + 1):       # the first edit of each is a warm-up
                order = ((h_m, ws_m, app_m, text_m), (h_d, ws_d, app_d, text_d))
                for out, ws, app, text in (order if i % 2 == 0 else order[::-1]):
                    ms = await hmr_once(ws, app, text, i)
                    if i > 0:
                        out.append(ms)
                await asyncio.sleep(EDIT_GAP)     # pacing the edits (Vite's watcher throttle), not synchronisation
            res["mem_after_hmr"] = mem_of(managed.vite_pid)
        finally:
            await ws_m.close()
            await ws_d.close()
        res["hmr_managed_ms"] = h_m
        res["hmr_direct_ms"] = h_d
    finally:
        await direct.stop()
        await managed.quit()
        shutil.rmtree(tmp, ignore_errors=True)

    res["summary"] = {
        "ready_managed_median_s": med(res["ready_managed_s"]),
        "ready_direct_median_s": med(res["ready_direct_s"]),
        "ready_ratio": med(res["ready_managed_s"]) / med(res["ready_direct_s"]),
        "hmr_managed_median_ms": med(h_m),
        "hmr_direct_median_ms": med(h_d),
        "hmr_delta_ms": med(h_m) - med(h_d),
        "cold_ready_s": res["cold_ready_s"],
        "rss_warm_ready_mb": res["mem_warm_ready"]["rss_mb"],
        "rss_warm_loaded_mb": res["mem_warm_loaded"]["rss_mb"],
        "rss_after_hmr_mb": res["mem_after_hmr"]["rss_mb"],
        "peak_rss_warm_mb": res["mem_after_hmr"].get("peak_rss_mb", float("nan")),
        "rss_cold_ready_mb": res["mem_cold_ready"]["rss_mb"],
        "rss_cold_loaded_mb": res["mem_cold_loaded"]["rss_mb"],
        "peak_rss_cold_mb": res["mem_cold_loaded"].get("peak_rss_mb", float("nan")),
        "worker_rss_mb": res["worker_rss_mb"],
    }
    return res


def print_table(res: dict) -> None:
    s = res["summary"]
    rows = [
        ("Vite", res["vite_version"], ""),
        ("ready, managed (median of %d)" % res["runs"], f"{s['ready_managed_median_s'] * 1000:.0f} ms",
         "start() -> viteStatus ready"),
        ("ready, direct (median of %d)" % res["runs"], f"{s['ready_direct_median_s'] * 1000:.0f} ms",
         "exec -> first HTTP answer (5 ms poll)"),
        ("ready ratio managed/direct", f"{s['ready_ratio']:.2f}", ""),
        ("ready, cold (optimizer runs)", f"{s['cold_ready_s'] * 1000:.0f} ms", "managed, fresh copy"),
        ("HMR save->update, managed (median of %d)" % res["hmr_runs"], f"{s['hmr_managed_median_ms']:.2f} ms", ""),
        ("HMR save->update, direct (median of %d)" % res["hmr_runs"], f"{s['hmr_direct_median_ms']:.2f} ms", ""),
        ("HMR delta managed-direct", f"{s['hmr_delta_ms']:+.2f} ms", "goal: within 1 ms"),
        ("RSS managed Vite, warm: ready", f"{s['rss_warm_ready_mb']:.0f} MB", "dependency cache present"),
        ("RSS managed Vite, warm: page loaded", f"{s['rss_warm_loaded_mb']:.0f} MB", "entry modules + deps served"),
        ("RSS managed Vite, warm: after HMR runs", f"{s['rss_after_hmr_mb']:.0f} MB",
         f"peak {s['peak_rss_warm_mb']:.0f} MB"),
        ("RSS managed Vite, cold: ready", f"{s['rss_cold_ready_mb']:.0f} MB", "fresh copy"),
        ("RSS managed Vite, cold: page loaded", f"{s['rss_cold_loaded_mb']:.0f} MB",
         f"peak {s['peak_rss_cold_mb']:.0f} MB (dependency optimizer ran)"),
        ("RSS of the supervising worker", f"{s['worker_rss_mb']:.0f} MB", "python, ViteServer only"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="ready-time runs of each kind (default 7)")
    ap.add_argument("--hmr-runs", type=int, default=30, help="HMR edits of each kind (default 30)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    if not (EXAMPLE_UI / "node_modules" / ".bin" / "vite").exists():
        sys.exit(f"run `npm ci` in {EXAMPLE_UI} first")
    res = asyncio.run(bench(args.runs, args.hmr_runs))
    print_table(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
