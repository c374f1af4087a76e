"""ViteServer with real Vite (the example plugin's UI, copied to a temp dir), plus Vite output parsing.

Every wait has a timeout and synchronises on events, HTTP answers or process states; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from support.example import EXAMPLE_UI, REPO, copy_ui
from support.waits import wait_event

from omnibroker import protocol
from omnibroker.ports import PortAllocator
from omniworker.context import NullSink, PluginContext
from omniworker.vite import ViteServer, parse_vite_errors

TEST_PORTS = (15600, 15700)        # away from the default range, so a running omni is not disturbed

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def example_ui() -> Path:
    """The example UI with its node_modules (waits a while for it to appear; `npm ci` once if needed)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    deadline = time.monotonic() + 20 * 60
    while not (EXAMPLE_UI / "package.json").exists() or not (EXAMPLE_UI / "src" / "entry.tsx").exists():
        if time.monotonic() > deadline:
            pytest.skip("examples/hello-plugin/ui did not appear")
        time.sleep(2)       # polling for another engineer's files, not synchronising with our own code
    if not (EXAMPLE_UI / "node_modules" / ".bin" / "vite").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE_UI, check=True, timeout=600)
    return EXAMPLE_UI


def make_plugin(example_ui: Path, dest: Path, ui: bool = True, node_modules: bool = True) -> Path:
    """A plugin dir with a private copy of the example UI (example_ui: the fixture that made sure it is there)."""
    dest.mkdir(parents=True, exist_ok=True)
    if ui:
        copy_ui(dest, node_modules)
    return dest


@pytest.fixture(autouse=True)
def private_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def ports():
    return PortAllocator(*TEST_PORTS, state={})


def new_vite(path: Path, plugin: str = "p", **settings) -> tuple[ViteServer, NullSink, PluginContext]:
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id=plugin, path=str(path), settings=settings), sink)
    return ViteServer(ctx), sink, ctx


def statuses(sink: NullSink) -> list[dict]:
    return [p for t, p in sink.events if t == protocol.STATUS]


def is_status(value: str):
    return lambda t, p: t == protocol.STATUS and p["viteStatus"] == value


def http_get(url: str, timeout: float = 10.0, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


async def aget(url: str, **kw):
    return await asyncio.to_thread(http_get, url, **kw)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pids, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(gone(p) for p in pids):
        assert loop.time() < deadline, f"still alive: {[p for p in pids if not gone(p)]}"
        await asyncio.sleep(0.05)       # polling a process table with a deadline


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def processes_under(path: Path) -> list[int]:
    """node / esbuild processes whose command line or cwd mentions path (our Vite copies)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline", "cwd"]):
        try:
            if p.info["name"] not in ("node", "esbuild") or p.status() == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
            if str(path) in text:
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


# ---------------------------------------------------------------------------------------------------------------
# Vite for real

async def test_start_running_serves_transformed_entry_and_logs(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "hello")
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("start-test")
    try:
        await vite.start(port)
        assert ctx.state.viteStatus == "starting" and ctx.state.vitePort == port and ctx.state.viteURL == ""
        await wait_event(sink, is_status("ready"), 30)
        assert ctx.state.viteURL == f"http://127.0.0.1:{port}"
        # the status sequence: starting (with the port) -> ready (with the URL)
        seq = [(s["viteStatus"], s["vitePort"], s["viteURL"]) for s in statuses(sink)]
        assert seq[0] == ("starting", port, "") and seq[-1] == ("ready", port, f"http://127.0.0.1:{port}")
        status, headers, body = await aget(f"{ctx.state.viteURL}/src/entry.tsx",
                                           headers={"Origin": "http://127.0.0.1:15170"})
        text = body.decode()
        assert status == 200
        assert "javascript" in headers.get("Content-Type", "")
        assert headers.get("Access-Control-Allow-Origin") in ("*", "http://127.0.0.1:15170")   # --cors
        assert "export function mount" in text
        assert "interface MountProps" not in text           # TypeScript removed
        assert "<App" not in text and "jsx" in text.lower()  # JSX compiled
        # logs: Vite's banner as vite/info entries, ANSI-free, also in the ring buffer
        vite_logs = ctx.logs.tail(100, source="vite")
        assert any("ready in" in e.message for e in vite_logs)
        assert all(e.level == "info" for e in vite_logs if "ready in" in e.message or "Local:" in e.message)
        assert not any("\x1b" in e.message for e in ctx.logs.tail(1000))
        assert vite.ready_time is not None and vite.ready_time < 30
        await vite.stop()
        assert ctx.state.viteStatus == "stopped" and ctx.state.vitePort == 0 and ctx.state.viteURL == ""
    finally:
        await vite.stop()
        ports.release("start-test")


async def test_two_plugins_two_ports(example_ui, tmp_path, ports):
    a_dir = make_plugin(example_ui, tmp_path / "a")
    b_dir = make_plugin(example_ui, tmp_path / "b")
    a, sink_a, ctx_a = new_vite(a_dir, "a")
    b, sink_b, ctx_b = new_vite(b_dir, "b")
    pa, pb = ports.allocate("two-a"), ports.allocate("two-b")
    assert pa != pb
    try:
        await a.start(pa)
        await b.start(pb)
        await asyncio.gather(wait_event(sink_a, is_status("ready"), 30), wait_event(sink_b, is_status("ready"), 30))
        for ctx, d in ((ctx_a, a_dir), (ctx_b, b_dir)):
            _, _, body = await aget(f"{ctx.state.viteURL}/src/App.tsx")
            assert str(d / "ui" / "src" / "App.tsx") in body.decode()      # each serves its own copy
        assert a.pid != b.pid
        await asyncio.gather(a.stop(), b.stop())
    finally:
        await a.stop()
        await b.stop()
        ports.release("two-a")
        ports.release("two-b")


async def test_kill9_vite_restarts_on_same_port(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "crash")
    vite, sink, ctx = new_vite(plugin, vite={"restart_backoff": 0.2})   # short; the policy is tested below
    port = ports.allocate("crash")
    try:
        await vite.start(port)
        assert await vite.wait_running(30)
        first = vite.pid
        mark = len(sink.events)
        os.kill(first, signal.SIGKILL)
        i = await wait_event(sink, is_status("error"), 10, since=mark)
        assert sink.events[i][1]["vitePort"] == port
        assert "exited unexpectedly" in sink.events[i][1]["lastError"]
        e = await wait_event(sink, lambda t, p: t == protocol.ERROR, 10, since=mark)
        assert "SIGKILL" in sink.events[e][1]["errors"][0]["message"]
        j = await wait_event(sink, is_status("ready"), 30, since=i)
        assert sink.events[j][1]["vitePort"] == port and sink.events[j][1]["viteURL"].endswith(f":{port}")
        assert vite.pid and vite.pid != first and vite.restart_count == 1
        status, _, _ = await aget(f"http://127.0.0.1:{port}/src/entry.tsx")
        assert status == 200
        await wait_gone([first], 5)
    finally:
        await vite.stop()
        ports.release("crash")


async def test_stop_leaves_no_node_or_esbuild_process(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "stop")
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("stop")
    try:
        await vite.start(port)
        assert await vite.wait_running(30)
        await aget(f"http://127.0.0.1:{port}/src/entry.tsx")       # make it do some work first
        pgid = vite.pid
        members = group_members(pgid)
        assert pgid in members
        assert processes_under(plugin)
        await vite.stop()
        assert group_members(pgid) == []
        assert processes_under(plugin) == []
        assert vite.pid is None and ctx.state.viteStatus == "stopped"
    finally:
        await vite.stop()
        ports.release("stop")


WORKER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from omnibroker import protocol
    from omniworker.context import NullSink, PluginContext
    from omniworker.vite import ViteServer

    async def main():
        ctx = PluginContext(protocol.PluginSpec(id="orphan", path=sys.argv[2]), NullSink())
        vite = ViteServer(ctx)
        await vite.start(int(sys.argv[3]))
        ok = await vite.wait_running(30)
        print(("RUNNING %d" % vite.pid) if ok else "FAILED " + ctx.state.lastError, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_worker_killed_with_sigkill_leaves_no_orphaned_vite(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "orphan")
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    port = ports.allocate("orphan")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(REPO), str(plugin), str(port),
            stdout=asyncio.subprocess.PIPE, env=dict(os.environ))
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 40)).decode().strip()
            assert line.startswith("RUNNING"), line
            node = int(line.split()[1])
            assert psutil.Process(node).ppid() == proc.pid
            proc.kill()                                          # SIGKILL: no cleanup code runs
            await asyncio.wait_for(proc.wait(), 10)
            await wait_gone([node], 10)                          # PR_SET_PDEATHSIG took it down
            assert processes_under(plugin) == []
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        ports.release("orphan")


async def test_hmr_update_reaches_a_websocket_client(example_ui, tmp_path, ports):
    websockets = pytest.importorskip("websockets")
    plugin = make_plugin(example_ui, tmp_path / "hmr")
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("hmr")
    app = plugin / "ui" / "src" / "App.tsx"
    origin = "http://127.0.0.1:15170"       # a host page on another origin, like Omniview's
    try:
        await vite.start(port)
        assert await vite.wait_running(30)
        base = f"http://127.0.0.1:{port}"
        # the modules must be in Vite's module graph (a browser would have imported them)
        for path in ("/src/entry.tsx", "/src/App.tsx"):
            await aget(base + path, headers={"Origin": origin})
        _, _, client = await aget(base + "/@vite/client")
        m = re.search(r'const wsToken = "([^"]*)"', client.decode())
        assert m, "no wsToken in /@vite/client"
        token = m.group(1)
        # Vite 8 refuses an upgrade that sends an Origin without the token
        with pytest.raises(Exception):
            async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["vite-hmr"], origin=origin,
                                          open_timeout=10):
                pass
        async with websockets.connect(f"ws://127.0.0.1:{port}/?token={token}", subprotocols=["vite-hmr"],
                                      origin=origin, open_timeout=10) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connected"
            app.write_text(app.read_text().replace("Hello from hello-plugin", "Hello again from hello-plugin"))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if msg["type"] == "update":
                    break
            assert any(u["path"] == "/src/App.tsx" and u["type"] == "js-update" for u in msg["updates"])
            _, _, body = await aget(f"{base}/src/App.tsx?t={msg['updates'][0]['timestamp']}")
            assert "Hello again from hello-plugin" in body.decode()
        # HMR stays between Vite and its client: no error or status events from the edit
        assert ctx.state.viteStatus == "ready"
        assert not [e for e in sink.events if e[0] == protocol.ERROR]
    finally:
        await vite.stop()
        ports.release("hmr")


async def test_broken_vite_config_gives_error_event_with_position(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "badcfg")
    cfg = plugin / "ui" / "vite.config.ts"
    cfg.write_text('import { defineConfig } from "vite";\nexport default defineConfig({\n  plugins: [ ,, oops ]]\n});\n')
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("badcfg")
    try:
        await vite.start(port)
        assert not await vite.wait_running(30)
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 10)
        errors = sink.events[i][1]["errors"]
        assert errors[0]["file"] == str(cfg)
        assert errors[0]["line"] == 3 and errors[0]["column"] > 0
        assert errors[0]["message"]
        assert ctx.state.viteStatus == "error" and ctx.state.vitePort == port
        assert "before it was ready" in ctx.state.lastError and "vite.config.ts" in ctx.state.lastError
        assert any(e.level == "error" for e in ctx.logs.tail(100, source="vite"))
        await vite.stop()               # cancels the pending restart
        assert vite._task is None and vite.pid is None and ctx.state.viteStatus == "stopped"
    finally:
        await vite.stop()
        ports.release("badcfg")


async def test_config_broken_while_running_gives_error_event_and_keeps_serving(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "livecfg")
    cfg = plugin / "ui" / "vite.config.ts"
    good = cfg.read_text()
    assert "plugins: [react()]," in good
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("livecfg")
    try:
        await vite.start(port)
        assert await vite.wait_running(30)
        mark = len(sink.events)
        cfg.write_text(good.replace("plugins: [react()],", "plugins: [react(),, ]],"))
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 15, since=mark)
        err = sink.events[i][1]["errors"][0]
        line = 1 + good.splitlines().index(next(x for x in good.splitlines() if "plugins: [react()]," in x))
        assert err["file"] == str(cfg) and err["line"] == line and err["column"] > 0
        # Vite keeps the old config and goes on serving
        assert ctx.state.viteStatus == "ready"
        status, _, _ = await aget(f"http://127.0.0.1:{port}/src/entry.tsx")
        assert status == 200
        mark = len(sink.events)
        cfg.write_text(good)
        await wait_event(sink, lambda t, p: t == protocol.LOG and "server restarted" in p[0]["message"], 15,
                         since=mark)
        assert ctx.state.viteStatus == "ready"
    finally:
        await vite.stop()
        ports.release("livecfg")


async def test_config_that_throws_names_the_config_file(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "throwcfg")
    (plugin / "ui" / "vite.config.ts").unlink()
    cfg = plugin / "ui" / "vite.config.js"
    cfg.write_text('throw new Error("boom in config");\nexport default {};\n')
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("throwcfg")
    try:
        await vite.start(port)
        assert not await vite.wait_running(30)
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 10)
        err = sink.events[i][1]["errors"][0]
        assert err["file"] == str(cfg) and "boom in config" in err["message"]
    finally:
        await vite.stop()
        ports.release("throwcfg")


async def test_failed_dependency_prebundle_gives_error_event_with_position(example_ui, tmp_path, ports):
    plugin = make_plugin(example_ui, tmp_path / "baddep")
    dep = plugin / "ui" / "node_modules" / "brokendep"
    dep.mkdir()
    (dep / "package.json").write_text('{"name": "brokendep", "version": "1.0.0", "main": "index.js"}')
    (dep / "index.js").write_text("export const a = 1;\nexport const b = (;\n")
    (plugin / "ui" / "vite.config.ts").write_text(
        'import { defineConfig } from "vite";\nexport default defineConfig({ optimizeDeps: { include: ["brokendep"] } });\n')
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("baddep")
    try:
        await vite.start(port)
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR and any(
            e["file"].endswith("brokendep/index.js") for e in p["errors"]), 30)
        err = next(e for e in sink.events[i][1]["errors"] if e["file"].endswith("brokendep/index.js"))
        assert err["line"] == 2 and err["column"] > 0 and err["message"]
    finally:
        await vite.stop()
        ports.release("baddep")


async def test_port_held_by_foreign_http_server_is_an_error_and_kept(example_ui, tmp_path, ports):
    """Another program answers HTTP on our port: Vite (--strictPort) refuses, and our readiness probe is not fooled
    by the foreign answer; once the port is free again, the next attempt runs on the same port."""
    import http.server
    import threading

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    plugin = make_plugin(example_ui, tmp_path / "busy")
    vite, sink, ctx = new_vite(plugin)
    port = ports.allocate("busy")
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    try:
        await vite.start(port)
        assert not await vite.wait_running(30)
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 10)
        assert any(f"{port}" in e["message"] and "in use" in e["message"] for e in sink.events[i][1]["errors"])
        assert ctx.state.vitePort == port and ctx.state.viteStatus == "error"
        assert not [p for t, p in sink.events if t == protocol.STATUS and p["viteStatus"] == "ready"]
        mark = len(sink.events)
        await asyncio.to_thread(foreign.shutdown)
        foreign.server_close()                           # the port frees up: the next attempt gets it
        await wait_event(sink, is_status("ready"), 30, since=mark)
        assert ctx.state.vitePort == port
    finally:
        await vite.stop()
        foreign.server_close()
        ports.release("busy")


async def test_install_option_runs_npm_ci(example_ui, tmp_path, ports, monkeypatch):
    """With install = true and no node_modules, `npm ci` runs first (a stand-in npm that links the example's)."""
    plugin = make_plugin(example_ui, tmp_path / "inst", node_modules=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "fake npm $*"
        [ "$1" = ci ] || exit 2
        mkdir node_modules && for e in "{example_ui}/node_modules/"* "{example_ui}/node_modules/.bin"; do
          ln -s "$e" node_modules/; done
        echo "added 42 packages"
        """))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    vite, sink, ctx = new_vite(plugin, vite={"install": True})
    port = ports.allocate("inst")
    try:
        await vite.start(port)
        assert await vite.wait_running(30), ctx.state.lastError
        msgs = [e.message for e in ctx.logs.tail(200, source="vite")]
        assert "fake npm ci --no-audit --no-fund" in msgs and "added 42 packages" in msgs
    finally:
        await vite.stop()
        ports.release("inst")


# ---------------------------------------------------------------------------------------------------------------
# no Vite needed

async def test_missing_node_modules_tells_what_to_run(example_ui, tmp_path):
    plugin = make_plugin(example_ui, tmp_path / "nonm", node_modules=False)
    vite, sink, ctx = new_vite(plugin)
    try:
        await vite.start(15699)
        assert not await vite.wait_running(10)
        assert ctx.state.viteStatus == "error"
        assert "npm ci" in ctx.state.lastError and str(plugin / "ui") in ctx.state.lastError
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 5)
        assert "npm ci" in sink.events[i][1]["errors"][0]["message"]
        assert vite.pid is None
        await vite.stop()
    finally:
        await vite.stop()


async def test_plugin_without_ui_stays_idle(tmp_path):
    (tmp_path / "goonly" / "pkg").mkdir(parents=True)
    vite, sink, ctx = new_vite(tmp_path / "goonly")
    try:
        await vite.start(15698)
        assert ctx.state.viteStatus == "idle" and ctx.state.vitePort == 0
        assert not await vite.wait_running(1)
        await vite.stop()
        assert ctx.state.viteStatus == "idle"
        assert not [e for e in sink.events if e[0] in (protocol.ERROR, protocol.STATUS)]
    finally:
        await vite.stop()


async def test_start_timeout_reports_last_stderr_lines(tmp_path):
    """A 'Vite' that never answers HTTP: error after start_timeout with its stderr in lastError; stderr -> error."""
    ui = tmp_path / "slow" / "ui"
    (ui / "node_modules").mkdir(parents=True)
    cmd = [sys.executable, "-c", "import sys, time\nprint('hello out', flush=True)\n"
           "print('line one of trouble', file=sys.stderr, flush=True)\n"
           "print('line two of trouble', file=sys.stderr, flush=True)\ntime.sleep(120)"]
    vite, sink, ctx = new_vite(tmp_path / "slow", vite={"command": cmd, "args": [], "start_timeout": 1.0,
                                                        "stop_grace": 1.0})
    try:
        await vite.start(15697)
        assert not await vite.wait_running(10)
        assert ctx.state.viteStatus == "error"
        assert "did not answer" in ctx.state.lastError
        assert "line one of trouble" in ctx.state.lastError and "line two of trouble" in ctx.state.lastError
        i = await wait_event(sink, lambda t, p: t == protocol.ERROR, 5)
        assert "line two of trouble" in sink.events[i][1]["errors"][0]["message"]
        levels = {e.message: e.level for e in ctx.logs.tail(50, source="vite")}
        assert levels["hello out"] == "info" and levels["line one of trouble"] == "error"
        await vite.stop()
        assert ctx.state.lastError == ""         # our own stale error is cleared on stop
    finally:
        await vite.stop()


async def test_restart_backoff_doubles_caps_and_stop_cancels_it(tmp_path):
    ui = tmp_path / "flaky" / "ui"
    (ui / "node_modules").mkdir(parents=True)
    cmd = [sys.executable, "-c", "import sys; print('dying', file=sys.stderr); sys.exit(3)"]
    vite, sink, ctx = new_vite(tmp_path / "flaky", vite={"command": cmd, "args": [], "restart_backoff": 0.05,
                                                         "restart_backoff_max": 0.2})

    def restarts():
        return [e.message for e in ctx.logs.tail(200, source="manager") if "restarting in" in e.message]
    try:
        await vite.start(15696)
        await wait_event(sink, lambda t, p: len(restarts()) >= 5, 20)
        delays = [float(re.search(r"restarting in ([\d.]+) s", m).group(1)) for m in restarts()[:5]]
        assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert "dying" in ctx.state.lastError and "code 3" in ctx.state.lastError
        await vite.stop()
        n = vite.restart_count
        assert vite._task is None and ctx.state.viteStatus == "stopped"
        # no restart after stop: the task is gone, so nothing can spawn again
        assert vite.restart_count == n and vite.pid is None
    finally:
        await vite.stop()


async def test_backoff_resets_after_a_healthy_run(tmp_path):
    """A crash after more than `restart_reset` seconds of running restarts after `restart_backoff` again."""
    ui = tmp_path / "healthy" / "ui"
    (ui / "node_modules").mkdir(parents=True)
    # an HTTP server that answers, then exits by itself once it was asked for /exit
    server = textwrap.dedent("""
        import http.server, sys, threading
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(204); self.end_headers()
                if self.path == "/exit":
                    threading.Thread(target=self.server.shutdown).start()
            def log_message(self, *a): pass
        http.server.HTTPServer.allow_reuse_address = True
        s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
        s.serve_forever()
        sys.exit(1)
    """)
    (tmp_path / "server.py").write_text(server)
    cmd = [sys.executable, str(tmp_path / "server.py"), "{port}"]
    vite, sink, ctx = new_vite(tmp_path / "healthy", vite={"command": cmd, "args": [], "restart_backoff": 0.05,
                                                           "restart_backoff_max": 0.4, "restart_reset": 0.3})
    port = 15695

    def restarts():
        return [float(re.search(r"restarting in ([\d.]+) s", e.message).group(1))
                for e in ctx.logs.tail(200, source="manager") if "restarting in" in e.message]
    try:
        await vite.start(port)
        for n in range(1, 4):            # quick crashes: 0.05, 0.1, 0.2
            mark = len(sink.events)
            await wait_event(sink, is_status("ready"), 10, since=mark if n > 1 else 0)
            await aget(f"http://127.0.0.1:{port}/exit")
            await wait_event(sink, lambda t, p: len(restarts()) >= n, 10)
        assert restarts() == [0.05, 0.1, 0.2]
        await wait_event(sink, is_status("ready"), 10, since=len(sink.events) - 1)
        started = time.monotonic()
        # stay healthy past restart_reset (wait on our own clock via Vite's readiness, not a fixed sleep)
        while time.monotonic() - started < vite.settings.restart_reset + 0.05:
            await aget(f"http://127.0.0.1:{port}/")
        await aget(f"http://127.0.0.1:{port}/exit")
        await wait_event(sink, lambda t, p: len(restarts()) >= 4, 10)
        assert restarts()[3] == 0.05
        await vite.stop()
    finally:
        await vite.stop()


# ---------------------------------------------------------------------------------------------------------------
# parsing what Vite prints

ROLLDOWN_CONFIG = """failed to load config from /p/ui/vite.config.ts
error when starting dev server:
Error: Build failed with 1 error:

\x1b[31m[PARSE_ERROR] \x1b[0mExpected `,` or `}` but found `]`
   \x1b[38;5;246m╭\x1b[0m\x1b[38;5;246m─\x1b[0m\x1b[38;5;246m[\x1b[0m vite.config.ts:3:23 \x1b[38;5;246m]\x1b[0m
   │
 3 │   plugins: [ ,, oops ]]
───╯

    at aggregateBindingErrorsIntoJsError (file:///x/node_modules/rolldown/dist/shared/error.mjs:50:18)
"""

ESBUILD = """✘ [ERROR] Could not resolve "nope"

    src/main.ts:1:7:
      1 │ import "nope";
        ╵        ~~~~~~

error when starting dev server:
Error: Build failed with 1 error:
node_modules/dep/index.js:4:2: ERROR: Unexpected "}"
"""

THROWN = """failed to load config from /p/ui/vite.config.js
error when starting dev server:
Error: boom in config
    at file:///p/ui/node_modules/.vite-temp/vite.config.js.timestamp-1-2.mjs:2:7
"""


def test_parse_rolldown_config_error():
    errs = parse_vite_errors(ROLLDOWN_CONFIG.splitlines(), "/p/ui")
    assert [(e.file, e.line, e.column) for e in errs] == [("/p/ui/vite.config.ts", 3, 23)]
    assert errs[0].message == "[PARSE_ERROR] Expected `,` or `}` but found `]`"


def test_parse_esbuild_style_errors():
    errs = parse_vite_errors(ESBUILD.splitlines(), "/p/ui")
    assert [(e.file, e.line, e.column, e.message) for e in errs] == [
        ("/p/ui/src/main.ts", 1, 7, '[ERROR] Could not resolve "nope"'),
        ("/p/ui/node_modules/dep/index.js", 4, 2, 'Unexpected "}"')]


def test_parse_thrown_config_error_and_port_in_use():
    errs = parse_vite_errors(THROWN.splitlines(), "/p/ui")
    assert len(errs) == 1 and errs[0].file == "/p/ui/vite.config.js" and errs[0].line == 0
    assert "boom in config" in errs[0].message
    errs = parse_vite_errors(["error when starting dev server:", "Error: Port 15173 is already in use",
                              "    at httpServerStart (file:///x.js:1:2)"], "/p/ui")
    assert errs[0].message == "Error: Port 15173 is already in use" and errs[0].file == ""
    assert parse_vite_errors(["  VITE v8 ready in 300 ms", "  ➜  Local:   http://127.0.0.1:1/"], "/p/ui") == []


MODULE_ERROR_OUTPUT = """5:32:58 PM [vite] Internal server error: Transform failed with 1 error:
[PARSE_ERROR] Expected `,` or `)` but found `;`
    ╭─[ src/App.tsx?t=1:48:4 ]
  File: /p/ui/src/App.tsx?t=1
5:32:58 PM [vite] (client) Pre-transform error: Failed to resolve import "not-a-module" from "src/Other.tsx".
  File: /p/ui/src/Other.tsx:1:14"""

LIVE_CONFIG_OUTPUT = """5:30:25 PM [vite] vite.config.ts changed, restarting server...
failed to load config from /p/ui/vite.config.ts
5:30:25 PM [vite] Build failed with 1 error:
[PARSE_ERROR] Expected `,` or `}` but found `]`
   ╭─[ vite.config.ts:9:24 ]
5:30:25 PM [vite] server restart failed"""


async def test_module_errors_stay_logs_but_config_errors_start_an_error_block(tmp_path):
    """Which output lines open an error block (-> error event) while Vite runs: not module transform errors."""
    (tmp_path / "ui").mkdir()
    vite, sink, ctx = new_vite(tmp_path)
    for line in MODULE_ERROR_OUTPUT.splitlines():
        vite._on_line("stderr", line)
    assert vite._block == [] and vite._block_timer is None
    assert len(ctx.logs.tail(100, source="vite")) == len(MODULE_ERROR_OUTPUT.splitlines())
    for line in LIVE_CONFIG_OUTPUT.splitlines():
        vite._on_line("stderr" if "[vite]" not in line else "stdout", line)
    assert vite._block and vite._block[0].startswith("failed to load config")
    errs = parse_vite_errors(vite._block, str(tmp_path / "ui"))
    assert [(e.file, e.line, e.column) for e in errs] == [(str(tmp_path / "ui" / "vite.config.ts"), 9, 24)]
    vite._cancel_block()
