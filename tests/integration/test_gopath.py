"""GoPath end to end: the real example plugin (copied to tmp), real `go build`, real go-plugin, a NullSink.

One binary is built per module (warm Go cache) and pre-installed in each test's home, so a test only pays for the
builds it provokes. Every wait is bounded; no sleep is used to synchronise.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from support.example import EXAMPLE, GO_ENV, GREET, copy_go_tree, go_build, greeter_pb, set_greeting
from support.waits import wait_event

from omnibroker import protocol
from omnibroker.protocol import CommandError, ErrorCode
from omniworker.context import NullSink, PluginContext
from omniworker import gopath
from omniworker.gopath import GoPath

DEBOUNCE_MS = 250

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The example copied once and built once: (source tree, binary)."""
    src = tmp_path_factory.mktemp("example") / "hello"
    copy_go_tree(EXAMPLE, src)
    return src, go_build(src)


class Harness:
    def __init__(self, root: Path, built_src: Path, binary: Path, settings: dict):
        self.dir = root / "hello"
        copy_go_tree(built_src, self.dir)
        self.home = Path(os.environ["OMNIVIEW_HOME"]) / "plugins" / "hello"
        (self.home / "bin").mkdir(parents=True)
        shutil.copy2(binary, self.home / "bin" / "plugin")
        base = {"build": {"env": dict(GO_ENV)},
                "go": {"debounce_ms": DEBOUNCE_MS, "build_on_start": "missing"}}
        for sec, vals in settings.items():
            base.setdefault(sec, {}).update(vals)
        self.sink = NullSink()
        self.ctx = PluginContext(protocol.PluginSpec(id="hello", path=str(self.dir), settings=base), self.sink)
        self.gp = GoPath(self.ctx)
        self.greeting = self.dir / "pkg" / "greeting.go"
        self.original_greeting = self.greeting.read_text()

    # --- files -------------------------------------------------------------------------------------------------
    def set_greeting(self, value: str) -> None:
        set_greeting(self.dir, value, atomic=True)         # an editor's atomic save

    # --- events ------------------------------------------------------------------------------------------------
    def mark(self) -> int:
        return len(self.sink.events)

    def since(self, mark: int, topic: str | None = None) -> list:
        return [(t, p) for t, p in self.sink.events[mark:] if topic is None or t == topic]

    async def wait(self, pred, timeout: float, since: int = 0):
        """First event (topic, payload) at index >= since matching pred."""
        return self.sink.events[await wait_event(self.sink, pred, timeout, since)]

    async def wait_status(self, timeout: float, since: int = 0, **fields):
        return await self.wait(lambda t, p: t == protocol.STATUS and all(p[k] == v for k, v in fields.items()),
                               timeout, since)

    async def wait_log(self, text: str, timeout: float, since: int = 0):
        return await self.wait(lambda t, p: t == protocol.LOG and any(text in e["message"] for e in p),
                               timeout, since)

    def logs(self, mark: int, text: str) -> list[str]:
        return [e["message"] for _, p in self.since(mark, protocol.LOG) for e in p if text in e["message"]]

    async def greet(self, name: str = "omni", timeout: float = 10.0) -> str:
        return greeter_pb.decode_greet_reply(
            await self.gp.invoke(GREET, greeter_pb.encode_greet_request(name), timeout))


@pytest.fixture
def harness(tmp_path, monkeypatch, built):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    src, binary = built

    def make(**settings) -> Harness:
        return Harness(tmp_path, src, binary, settings)
    return make


@contextlib.asynccontextmanager
async def started(h: Harness):
    await asyncio.wait_for(h.gp.start(), 60)
    try:
        yield h
    finally:
        await asyncio.wait_for(h.gp.stop(), 30)


async def wait_gone(pid: int, timeout: float) -> None:
    """Bounded poll until pid is gone (or a zombie about to be reaped). psutil's wait() would reap our children."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"pid {pid} still running after {timeout} s"
        await asyncio.sleep(0.02)


def descendants() -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


# ------------------------------------------------------------------------------------------------------------------

async def test_edit_constant_building_then_ready_and_new_answer(harness):
    h = harness()
    async with started(h):
        assert h.ctx.state.goStatus == "ready" and h.ctx.state.grpcConnected
        assert await h.greet() == "Hello, omni"
        old_pid = h.ctx.state.pluginPid
        old_addr = h.gp.plugin.addr
        m = h.mark()
        # five saves within 200 ms: one build
        t0 = time.monotonic()
        for i, word in enumerate(["B", "Bo", "Bon", "Bonj", "Bonjour"]):
            h.set_greeting(word)
            if i < 4:
                await asyncio.sleep(0.03)           # pacing the saves: ~120 ms in all
        assert time.monotonic() - t0 < 0.5     # premise: one debounce window (500 ms), any load
        await h.wait_status(10, m, goStatus="building")
        await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m)
        await h.wait_status(5, m, goStatus="ready", grpcConnected=True)
        assert await h.greet() == "Bonjour, omni"
        assert len(h.since(m, protocol.RELOAD_START)) == 1
        assert len(h.logs(m, "$ go build")) == 1                   # exactly one build
        [timing] = h.logs(m, "serving the new build")              # where the reload's time went
        assert re.search(r"\d+ ms after the change: quiet window \d+ ms, to the build \d+ ms, build \d+ ms, "
                         r"install \d+ ms, start \+ handshake \d+ ms$", timing), timing
        st = h.ctx.state
        assert st.pluginPid != old_pid and st.lastError == ""
        assert st.lastBuildDuration > 10_000_000                  # ns
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", st.lastBuildTime)
        assert (h.home / "bin" / "plugin.prev").is_file()
        order = [p["goStatus"] for t, p in h.since(m, protocol.STATUS)]
        assert order.index("building") < len(order) - 1 - order[::-1].index("ready")
        await wait_gone(old_pid, 5)                                 # the old one is drained and stopped
        deadline = time.monotonic() + 5
        while os.path.exists(old_addr):                             # and its socket removed (bounded poll)
            assert time.monotonic() < deadline, old_addr
            await asyncio.sleep(0.02)


async def test_a_stop_right_after_a_reload_stops_the_replaced_plugin_at_once(harness, monkeypatch):
    """A replaced plugin keeps running RETIRE_AFTER after the switch (its teardown would take the cores from the new
    plugin's first calls), and the install's displaced binary waits as long to be removed. A stop meanwhile does not
    wait: both plugins are gone when it returns, and so is the displaced binary."""
    monkeypatch.setattr(gopath, "RETIRE_AFTER", 60.0)         # far beyond the stop's bound below
    h = harness()
    await asyncio.wait_for(h.gp.start(), 60)
    try:
        old_pid = h.ctx.state.pluginPid
        for word in ("Salut", "Ciao"):                          # two reloads: the second displaces a plugin.prev
            m = h.mark()
            h.set_greeting(word)
            await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m)
        assert await h.greet() == "Ciao, omni"
        new_pid = h.ctx.state.pluginPid
        assert psutil.Process(old_pid).status() != psutil.STATUS_ZOMBIE      # retiring, not stopped yet
        assert any(n.endswith(".old") for n in os.listdir(h.home / "bin")), os.listdir(h.home / "bin")
    finally:
        await asyncio.wait_for(h.gp.stop(), 20)
    await h.gp.settled()
    for pid in (old_pid, new_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert descendants() == []
    assert sorted(os.listdir(h.home / "bin")) == ["plugin", "plugin.prev", "plugin.stamp"]


async def test_compile_error_reports_position_keeps_old_then_fix(harness):
    h = harness()
    async with started(h):
        pid = h.ctx.state.pluginPid
        lines = h.original_greeting.splitlines()
        bad_line = len(lines) + 1
        m = h.mark()
        h.greeting.write_text(h.original_greeting.rstrip("\n") + '\nvar Broken int = "oops"\n')
        _, payload = await h.wait(lambda t, p: t == protocol.ERROR, 30, m)
        [err] = payload["errors"]
        assert (err["file"], err["line"], err["column"]) == ("pkg/greeting.go", bad_line, 18)
        assert "oops" in err["message"]
        assert (h.dir / err["file"]).is_file()                   # resolves from the plugin dir
        await h.wait_status(5, m, goStatus="error")
        _, rerr = await h.wait(lambda t, p: t == protocol.RELOAD_ERROR, 5, m)
        meta, text = rerr                                            # Omniview's [PluginMeta, "error"]
        assert meta["id"] == h.ctx.id and "pkg/greeting.go:%d:18" % bad_line in text
        assert h.ctx.state.lastError and h.ctx.state.grpcConnected
        assert await h.greet() == "Hello, omni"                   # the old plugin keeps serving
        assert h.ctx.state.pluginPid == pid
        m2 = h.mark()
        h.greeting.write_text(h.original_greeting.replace('"Hello"', '"Fixed"'))
        await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m2)
        await h.wait_status(5, m2, goStatus="ready", lastError="")
        assert await h.greet() == "Fixed, omni"


async def test_save_during_build_cancels_first_build(harness):
    h = harness()
    async with started(h):
        m = h.mark()
        h.set_greeting("One")
        await h.wait_log("$ go build", 10, m)                    # the first build is being spawned
        deadline = time.monotonic() + 5
        while not (gos := [p for p in descendants() if p.name() == "go"]):   # bounded poll: go is running
            assert time.monotonic() < deadline, "go build never showed up"
            await asyncio.sleep(0.01)
        h.set_greeting("Two")
        await h.wait_log("build cancelled", 10, m)
        await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m)
        assert await h.greet() == "Two, omni"
        assert len(h.logs(m, "$ go build")) == 2
        assert len(h.since(m, protocol.RELOAD_START)) == 1         # one reload, its first build cancelled
        assert len(h.since(m, protocol.RELOAD_COMPLETE)) == 1
        for p in gos:                                               # the first go process was killed
            await wait_gone(p.pid, 5)
        assert not list((h.home / "tmp").glob("go-build-*"))        # its WORK dir removed


BAD_MAIN = """package main

import (
\t"fmt"
\t"os"
\t"time"
)

func main() {
\tfmt.Fprintln(os.Stderr, "boom: cannot open config for "+Greeting)
\tif len(os.Args) > 99 {
\t\ttime.Sleep(time.Millisecond)
\t}
\t%s
}
"""


@pytest.mark.parametrize("mode", ["exits", "no_handshake"])
async def test_bad_binary_rolls_back_and_old_keeps_serving(harness, mode):
    h = harness(handshake={"timeout": 2})
    async with started(h):
        pid = h.ctx.state.pluginPid
        installed = h.home / "bin" / "plugin"
        good = installed.read_bytes()
        m = h.mark()
        body = "os.Exit(3)" if mode == "exits" else "time.Sleep(time.Hour)"
        (h.dir / "pkg" / "main.go").write_text(BAD_MAIN % body)
        _, rerr = await h.wait(lambda t, p: t == protocol.RELOAD_ERROR, 30, m)
        _, payload = [(t, p) for t, p in h.since(m, protocol.ERROR)][-1]
        msg = payload["errors"][0]["message"]
        assert "boom: cannot open config for Hello" in msg                  # its stderr
        assert "rolled back to the previous binary" in msg
        if mode == "exits":
            assert "exited during startup with code 3" in msg
        else:
            assert "no go-plugin handshake within 2 s" in msg
        assert h.ctx.state.goStatus == "error" and h.ctx.state.grpcConnected
        assert h.ctx.state.pluginPid == pid
        assert installed.read_bytes() == good                               # rolled back
        assert not (h.home / "bin" / "plugin.stamp").exists()               # and the bad one's stamp gone
        assert await h.greet() == "Hello, omni"
        bad = [p for p in descendants() if p.pid != pid and p.name() == "plugin"]
        assert bad == []                                                    # the bad one is gone


async def test_kill9_is_noticed_and_restarted(harness):
    h = harness()
    async with started(h):
        pid = h.ctx.state.pluginPid
        addr = h.gp.plugin.addr
        m = h.mark()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await h.wait_status(1.0, m, grpcConnected=False)
        assert time.monotonic() - t0 < 1.0
        _, st = await h.wait(lambda t, p: t == protocol.STATUS and p["grpcConnected"] and p["pluginPid"] != pid,
                             10, m)
        assert st["goStatus"] == "ready" and st["restarts"] == 1
        assert await h.greet() == "Hello, omni"
        assert h.logs(m, "exited unexpectedly with code -9")
        assert not os.path.exists(addr)              # go-plugin could not remove its socket: we did


async def test_stop_during_build_leaves_no_process(harness):
    h = harness()
    await asyncio.wait_for(h.gp.start(), 60)
    addr = h.gp.plugin.addr
    m = h.mark()
    h.set_greeting("Stopping")
    await h.wait_log("$ go build", 10, m)
    deadline = time.monotonic() + 5
    while not any(p.name() == "go" for p in descendants()):       # bounded poll: go is running
        assert time.monotonic() < deadline, "go build never showed up"
        await asyncio.sleep(0.01)
    await asyncio.wait_for(h.gp.stop(), 30)
    assert h.ctx.state.goStatus == "stopped" and not h.ctx.state.grpcConnected
    left = [(p.pid, p.name()) for p in descendants()]
    assert left == []
    for p in psutil.process_iter(["exe", "name"]):
        exe = p.info.get("exe") or ""
        assert not exe.startswith(str(h.home)), (p.pid, exe)
    assert not os.path.exists(addr)                                   # no socket left


@pytest.mark.parametrize("order", ["start-first", "stop-first"])
async def test_invoke_loop_across_reload_never_fails(harness, order):
    h = harness(go={"reload_order": order})
    async with started(h):
        results: list[tuple[float, str]] = []
        failures: list[str] = []
        done = asyncio.Event()

        async def loop():
            while not done.is_set():
                try:
                    results.append((time.monotonic(), await h.greet("loop", timeout=10)))
                except CommandError as e:
                    failures.append(f"{e.code}: {e.reason}")
        task = asyncio.create_task(loop())
        try:
            m = h.mark()
            h.set_greeting("Reloaded")
            await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m)
            deadline = time.monotonic() + 10
            while not results or results[-1][1] != "Reloaded, loop":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
                if failures:
                    break
        finally:
            done.set()
            await asyncio.wait_for(task, 15)
        assert failures == []
        answers = [r for _, r in results]
        assert answers[0] == "Hello, loop" and answers[-1] == "Reloaded, loop"
        switch = answers.index("Reloaded, loop")
        assert set(answers[switch:]) == {"Reloaded, loop"}        # never back to the old one
        gap = max(b - a for (a, _), (b, _) in zip(results, results[1:]))
        print(f"{order}: {len(results)} calls, longest gap {gap * 1000:.1f} ms")


async def test_no_pkg_dir_is_idle(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "p" / "ui").mkdir(parents=True)
    sink = NullSink()
    ctx = PluginContext(protocol.PluginSpec(id="uionly", path=str(tmp_path / "p")), sink)
    gp = GoPath(ctx)
    await gp.start()
    assert ctx.state.goStatus == "idle" and not gp.enabled
    assert not await gp.rebuild()
    with pytest.raises(CommandError) as ei:
        await gp.invoke(GREET, b"")
    assert ei.value.code == ErrorCode.NOT_RUNNING
    await gp.stop()
    assert ctx.state.goStatus == "idle"
    assert [t for t, _ in sink.events if t in (protocol.ERROR, protocol.RELOAD_ERROR)] == []
    assert descendants() == []


async def test_start_builds_when_nothing_installed_and_rebuild(harness):
    h = harness(go={"build_on_start": "always"})
    (h.home / "bin" / "plugin").unlink()
    m = h.mark()
    async with started(h):
        assert h.logs(m, "$ go build")
        assert (h.home / "bin" / "plugin").is_file()
        assert h.ctx.state.goStatus == "ready" and await h.greet() == "Hello, omni"
        pid = h.ctx.state.pluginPid
        m2 = h.mark()
        assert await h.gp.rebuild() is True
        assert h.since(m2, protocol.RELOAD_COMPLETE) and h.ctx.state.pluginPid != pid
        await h.gp.settled()
        # nothing to build: `go build` left its output as it was, the installed inode; nothing else is left behind
        assert sorted(os.listdir(h.home / "bin")) == ["plugin", "plugin.prev", "plugin.stamp"]
        assert await h.greet() == "Hello, omni"


# --- the go-plugin host on its own ------------------------------------------------------------------------------------

FAKE_PLUGIN = r'''
import os, sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
mode = sys.argv[1]
if os.environ.get("OMNIVIEW") != "fake":
    print("This binary is a plugin. These are not meant to be executed directly.", file=sys.stderr, flush=True)
    sys.exit(1)
server = grpc.server(futures.ThreadPoolExecutor(2))
h = health.HealthServicer()
h.set("plugin", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req[::-1])}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print('{"@level":"warn","@message":"fake warning","k":1}', file=sys.stderr, flush=True)
print("2024-01-01T00:00:00.000Z [ERROR] fake: bad thing", file=sys.stderr, flush=True)
print(f"1|{os.environ['PLUGIN_PROTOCOL_VERSIONS']}|tcp|127.0.0.1:{port}|{'netrpc' if mode == 'netrpc' else 'grpc'}|",
      flush=True)
server.wait_for_termination()
'''


@pytest.fixture
def host_ctx(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    script = tmp_path / "fake_plugin.py"
    script.write_text(FAKE_PLUGIN)

    def make(**handshake):
        sink = NullSink()
        ctx = PluginContext(protocol.PluginSpec(id="fake", path=str(tmp_path),
                                                settings={"handshake": handshake}), sink)
        return ctx, sink, str(script)
    return make


async def test_host_tcp_levels_reattach_and_stop(host_ctx):
    import sys

    from omniworker.goplugin import PluginHost
    ctx, sink, script = host_ctx()
    host = PluginHost(ctx)
    await host.start(sys.executable, args=[script, "grpc"], timeout=20)
    try:
        assert host.network == "tcp" and host.addr.startswith("127.0.0.1:")
        assert await host.invoke("/test.Echo/Echo", b"abc", 5) == b"cba"
        assert await host.health()
        levels = {(e["level"], e["message"]) for t, p in sink.events if t == protocol.LOG for e in p
                  if e["source"] == "plugin"}
        assert ("warn", "fake warning k=1") in levels and ("error", "fake: bad thing") in levels
        # external mode: a second host attaches to the same process and leaves it alone when closing
        other = PluginHost(ctx)
        assert await other.reattach(host.addr, "tcp")
        assert await other.invoke("/test.Echo/Echo", b"xy", 5) == b"yx"
        await other.close()
        assert not await other.health()
        assert host.running and await host.health()
    finally:
        rc = await host.stop(grace=2)
    assert rc is not None and not host.running             # no Shutdown service here: TERM did it
    assert host.exited.done()


async def test_host_explains_failures(host_ctx, built):
    import sys

    from omniworker.goplugin import PluginError, PluginHost
    _, binary = built
    ctx, _, script = host_ctx()
    with pytest.raises(PluginError, match="serves 'netrpc'; omni hosts gRPC plugins only"):
        await PluginHost(ctx).start(sys.executable, args=[script, "netrpc"], timeout=20)
    ctx, _, script = host_ctx(protocol_versions="7", cookie_value="hello")
    host = PluginHost(ctx)
    with pytest.raises(PluginError, match="plugin protocol version mismatch"):
        await host.start(str(binary), timeout=20)                # the real plugin speaks 1
    assert host.network == "unix" and not os.path.exists(host.addr) and not host.running
    ctx, _, _ = host_ctx(cookie_value="wrong")
    with pytest.raises(PluginError) as ei:
        await PluginHost(ctx).start(str(binary), timeout=20)
    assert "magic cookie env was missing or wrong" in str(ei.value) and "OMNIVIEW=wrong" in str(ei.value)
    assert "This binary is a plugin" in ei.value.stderr and ei.value.returncode == 1
    ctx, _, _ = host_ctx(timeout=1)
    with pytest.raises(PluginError, match=r"no go-plugin handshake within 1 s"):
        await PluginHost(ctx).start("/bin/sleep", args=["30"])
    assert descendants() == []


async def test_start_with_broken_sources_runs_installed_binary(harness):
    h = harness(go={"build_on_start": "always"})
    h.greeting.write_text(h.original_greeting + "\nfunc Broken() int { return \"x\" }\n")
    async with started(h):
        st = h.ctx.state
        assert st.goStatus == "error" and st.grpcConnected and "pkg/greeting.go" in st.lastError
        errs = [p for t, p in h.sink.events if t == protocol.ERROR]
        assert errs and errs[0]["errors"][0]["file"] == "pkg/greeting.go"
        assert await h.greet() == "Hello, omni"                 # the installed binary serves meanwhile
        m = h.mark()
        h.greeting.write_text(h.original_greeting)
        await h.wait_status(30, m, goStatus="ready", lastError="")
        assert await h.greet() == "Hello, omni"


# --- build_on_start = "changed": the build stamp ----------------------------------------------------------------------

@pytest.mark.async_timeout(150)
async def test_restart_with_unchanged_sources_skips_the_build(harness):
    """start (builds: no stamp yet) -> stop -> start: no `go build`, the same binary serves; an edit after that start
    still builds; an edit made while stopped builds at the next start; "always" builds despite a matching stamp."""
    h = harness(go={"build_on_start": "changed"})
    installed = h.home / "bin" / "plugin"
    stamp = h.home / "bin" / "plugin.stamp"

    def exe(pid: int) -> str:
        return os.readlink(f"/proc/{pid}/exe")
    m = h.mark()
    async with started(h):                              # a binary is installed, but no stamp: build
        assert len(h.logs(m, "$ go build")) == 1 and h.logs(m, "building at start: no build stamp")
        assert h.ctx.state.goStatus == "ready" and await h.greet() == "Hello, omni"
        await h.gp.settled()                            # on disk, then stamped, just after the switch
        assert stamp.is_file()
        built_time = h.ctx.state.lastBuildTime
        ino = installed.stat().st_ino
        assert exe(h.ctx.state.pluginPid) == str(installed)
    first_pid = h.ctx.state.pluginPid
    h.ctx.go.update(lastBuildTime="", lastBuildDuration=0)    # as in a fresh worker: the stamp brings them back

    m = h.mark()
    async with started(h):                              # nothing changed: no build at all
        assert h.logs(m, "$ go build") == [] and h.since(m, protocol.RELOAD_START) == []
        [line] = h.logs(m, "sources unchanged since the installed build")
        assert "starting it without a build" in line and "omnictl rebuild hello" in line
        st = h.ctx.state
        assert st.goStatus == "ready" and st.grpcConnected and st.lastBuildTime == built_time
        assert st.lastBuildDuration > 0
        assert st.pluginPid != first_pid and exe(st.pluginPid) == str(installed)
        assert installed.stat().st_ino == ino                   # the same installed binary
        assert await h.greet() == "Hello, omni"
        # the watcher runs: an edit after such a start builds and reloads as usual
        m2 = h.mark()
        h.set_greeting("Watched")
        await h.wait(lambda t, p: t == protocol.RELOAD_COMPLETE, 30, m2)
        assert len(h.logs(m2, "$ go build")) == 1 and await h.greet() == "Watched, omni"

    h.set_greeting("Offline")                           # edited while stopped
    m = h.mark()
    async with started(h):
        assert h.logs(m, "sources unchanged") == [] and len(h.logs(m, "$ go build")) == 1
        assert h.logs(m, "building at start: the sources")
        assert h.ctx.state.goStatus == "ready" and await h.greet() == "Offline, omni"

    h.ctx.settings.go_settings.build_on_start = "always"   # read at each start
    m = h.mark()
    async with started(h):
        assert len(h.logs(m, "$ go build")) == 1 and h.logs(m, "sources unchanged") == []
        assert await h.greet() == "Offline, omni"


async def test_stamped_binary_that_fails_to_start_is_rebuilt(harness):
    """The stamp matches but the binary does not run (damaged in place: same inode, size and mtime): a build follows,
    not a rollback to the older plugin.prev."""
    h = harness(go={"build_on_start": "changed"})
    installed = h.home / "bin" / "plugin"
    async with started(h):
        assert await h.greet() == "Hello, omni"
    st = installed.stat()
    with open(installed, "r+b") as f:
        f.write(b"\0\0\0\0")                            # no ELF magic any more
    os.utime(installed, ns=(st.st_atime_ns, st.st_mtime_ns))
    m = h.mark()
    async with started(h):
        assert h.logs(m, "sources unchanged since the installed build")
        assert h.logs(m, "the installed plugin binary failed to start")
        assert len(h.logs(m, "$ go build")) == 1 and h.logs(m, "rolled back") == []
        assert h.ctx.state.goStatus == "ready" and h.ctx.state.lastError == ""
        assert await h.greet() == "Hello, omni"
        await h.gp.settled()
        assert (h.home / "bin" / "plugin.stamp").is_file()          # stamped again by that build
