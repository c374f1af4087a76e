"""omniworker/delve.py with real delve and the real example plugin built with `-gcflags=all=-N -l` in GOPATH mode.

A debugging session through delve's JSON-RPC API: halt, a breakpoint in the example's Greet handler, continue; a
Greet call stops there (and the state says so); continue; the call answers. Then a rebuilt binary installed at the
same path, a restart through the same delve: same port, the breakpoint listed and hit again. delve SIGKILLed:
noticed, nothing left behind. Another user cannot connect. Every wait is on an event with a timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import psutil
import pytest

from omnibroker import protocol
from omnibroker.ports import PortAllocator, port_is_free
from omniworker.children import Child
from omniworker.context import NullSink, PluginContext
from omniworker.delve import DEBUG_PORTS, DelveError, DelveTarget, debug_build, find_dlv
from omniworker.gobuild import install
from omniworker.goplugin import PluginHost, looks_like_handshake, parse_handshake

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello-plugin"
from support.example import greeter_pb  # noqa: E402

GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}
BUILD = ["go", "build", "-o", "build/bin/plugin", "./pkg"]

pytestmark = pytest.mark.skipif(shutil.which("go") is None or shutil.which("dlv") is None,
                                reason="needs the Go toolchain and delve")


def plugin_ctx(src: Path) -> PluginContext:
    """The context a worker would give the plugin at `src`; events collected by a NullSink."""
    return PluginContext(protocol.PluginSpec(id="hello", path=str(src)), NullSink())


def go_build(src: Path) -> Path:
    argv, env = debug_build(BUILD, {**os.environ, **GO_ENV})
    r = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return src / "build" / "bin" / "plugin"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A private copy of the example's Go sources, built once (debug flags) to warm the Go cache."""
    root = tmp_path_factory.mktemp("hello-src")
    shutil.copytree(EXAMPLE / "pkg", root / "pkg")
    go_build(root)
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def plugin_env() -> dict[str, str]:
    """What the go-plugin host passes to its plugin (magic cookie, protocol versions, port range)."""
    return {**os.environ, "OMNIVIEW": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1",
            "PLUGIN_MIN_PORT": "10000", "PLUGIN_MAX_PORT": "25000"}


def greet_line(main_go: Path) -> int:
    """The first statement of the Greet handler."""
    lines = main_go.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("func (g *greeter) Greet("))
    return start + 2


def debug_port() -> int:
    return PortAllocator(*DEBUG_PORTS, state={}).allocate("hello")


@contextlib.asynccontextmanager
async def running_target(src: Path, port: int | None = None):
    """The example (debug build) running under its own delve: (its context, the DelveTarget); stopped at the end."""
    binary = str(go_build(src))
    ctx = plugin_ctx(src)
    target = DelveTarget(ctx, port or debug_port())
    await target.start(binary, plugin_env(), timeout=60)
    try:
        yield ctx, target
    finally:
        await target.stop()


async def connect(ctx: PluginContext, handshake: str) -> PluginHost:
    hs = parse_handshake(handshake, [1])
    host = PluginHost(ctx)
    await host.connect(hs.network, hs.addr, timeout=5)
    return host


async def greet(host: PluginHost, name: str = "omni", timeout: float = 30) -> str:
    reply = await host.invoke(greeter_pb.GREET_METHOD, greeter_pb.encode_greet_request(name), timeout)
    return greeter_pb.decode_greet_reply(reply)


async def gone(pids: list[int], timeout: float = 10) -> None:
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)]
    _, alive = await asyncio.get_running_loop().run_in_executor(None, lambda: psutil.wait_procs(procs, timeout))
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


async def hit_breakpoint(target: DelveTarget, host: PluginHost, main_go: Path, line: int, name: str):
    """A Greet call to the running target stops at the breakpoint (the pending continue answers, the state says
    where); continued, it answers. Returns the reply."""
    call = asyncio.ensure_future(greet(host, name))
    state = await asyncio.wait_for(target.next_stop, 30)
    assert not call.done()
    stop = await target.paused()
    assert stop is not None and (stop.file, stop.line) == (str(main_go), line), (stop, state)
    assert state["currentThread"]["breakPoint"]["id"] == stop.breakpoint
    assert stop.breakpoint > 0 and stop.function == "main.(*greeter).Greet"
    assert not await host.health(timeout=0.5)            # paused: no gRPC answer, health checks included
    assert await target.paused() == stop
    target.resume()
    reply = await asyncio.wait_for(call, 30)
    assert await target.paused() is None
    return reply


@pytest.mark.async_timeout(120)
async def test_session_survives_a_rebuild(src, env):
    main_go = src / "pkg" / "main.go"
    line = greet_line(main_go)
    installed = env / "bin"
    installed.mkdir()
    binary = install(str(go_build(src)), str(installed))
    port = debug_port()

    ctx = plugin_ctx(src)
    target = DelveTarget(ctx, port)
    hs = await target.start(binary, plugin_env(), timeout=60)
    assert looks_like_handshake(hs)
    host = await connect(ctx, hs)
    try:
        assert await host.health() and await greet(host, "a") == "Hello, a"
        assert await target.paused() is None
        first_pid = target.plugin_pid

        await target.client.halt()
        assert await target.paused() is not None
        bp = await target.client.create_breakpoint(str(main_go), line)
        assert [(b["id"], b["file"], b["line"]) for b in await target.client.breakpoints()] == \
            [(bp["id"], str(main_go), line)]
        target.resume()
        assert await hit_breakpoint(target, host, main_go, line, "omni") == "Hello, omni"

        # a save: rebuilt with an edit, installed at the same path (atomic rename), restarted by the same delve
        greeting = src / "pkg" / "greeting.go"
        greeting.write_text(re.sub(r'const Greeting = ".*"', 'const Greeting = "Howdy"', greeting.read_text()))
        install(str(go_build(src)), str(installed))
        old_socket = target.socket
        await host.close()
        restarted = await target.restart(timeout=60)
        assert restarted.discarded == [] and target.port == port and target.running
        assert not os.path.exists(old_socket)
        assert target.plugin_pid != first_pid and not psutil.pid_exists(first_pid)
        assert [(b["id"], b["file"], b["line"]) for b in restarted.breakpoints] == [(bp["id"], str(main_go), line)]
        host = await connect(ctx, restarted.handshake)
        assert await hit_breakpoint(target, host, main_go, line, "again") == "Howdy, again"

        # a save while the target is halted at the breakpoint: the stopped call fails, the breakpoint stays
        stuck = asyncio.ensure_future(greet(host, "stuck"))
        await asyncio.wait_for(target.next_stop, 30)
        assert (await target.paused()).line == line
        restarted = await target.restart(timeout=60)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(stuck, 10)
        assert [b["id"] for b in restarted.breakpoints] == [bp["id"]]
        await host.close()
        host = await connect(ctx, restarted.handshake)
        assert await hit_breakpoint(target, host, main_go, line, "third") == "Howdy, third"

        await target.client.halt()
        await target.client.clear_breakpoint(bp["id"])
        assert await target.client.breakpoints() == []
        target.resume()
        assert await greet(host, "free") == "Howdy, free"
    finally:
        await host.close()
        pid = target.plugin_pid
        socket_path = target.socket
        await target.stop()
    await gone([target.pid, pid])
    # a running target's session ends through delve's API (halt, Detach), not by terminating delve
    assert not [e for e in ctx.logs.tail(200, source="manager") if "did not answer Detach" in e.message]
    assert not os.path.exists(socket_path)
    assert port_is_free(port)
    assert target.exited.done()


@pytest.mark.parametrize("halted", [False, True], ids=["running", "halted"])
@pytest.mark.async_timeout(120)
async def test_killed_delve_is_noticed_and_leaves_nothing(src, env, halted):
    binary = str(go_build(src))
    port = debug_port()

    ctx = plugin_ctx(src)
    noticed = asyncio.get_running_loop().create_future()
    target = DelveTarget(ctx, port, on_exit=lambda t, rc: noticed.set_result(rc))
    await target.start(binary, plugin_env(), timeout=60)
    pid, socket_path = target.plugin_pid, target.socket
    assert os.path.exists(socket_path)
    if halted:
        await target.client.halt()
    os.kill(target.pid, signal.SIGKILL)
    assert await asyncio.wait_for(noticed, 10) == -signal.SIGKILL
    if not halted:                      # (a halt answers the pending continue)
        with pytest.raises(DelveError, match="closed the connection"):
            await asyncio.wait_for(target.next_stop, 10)
    await gone([target.pid, pid])
    assert not os.path.exists(socket_path) and port_is_free(port)
    with pytest.raises(DelveError, match="not running"):
        await target.paused()
    await target.stop()


@pytest.mark.async_timeout(120)
async def test_dap_on_the_same_port(src, env):
    """delve 1.20 answers DAP (VS Code's dlv-dap) on the JSON-RPC port; omni's own connection is unaffected."""
    async with running_target(src) as (_, target):
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                           "arguments": {"adapterID": "go"}}).encode()
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(header.split(b":")[1])
        reply = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        assert reply["type"] == "response" and reply["command"] == "initialize" and reply["success"]
        writer.close()
        assert await target.paused() is None


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")     # one that user nobody may run


@pytest.mark.async_timeout(120)
async def test_plugin_exit_under_delve_is_reported_and_restarted(src, env):
    """The plugin dies, delve stays: the pending continue answers with the exit; restart runs the binary again."""
    async with running_target(src) as (ctx, target):
        first = target.plugin_pid
        os.kill(first, signal.SIGKILL)
        state = await asyncio.wait_for(target.next_stop, 10)
        assert state["exited"] and target.running and await target.paused() is None
        restarted = await target.restart(timeout=60)
        assert target.plugin_pid not in (0, first)
        host = await connect(ctx, restarted.handshake)
        assert (await greet(host, "back")).endswith(", back")
        await host.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None or SYSTEM_PYTHON is None,
                    reason="needs root (runuser -u nobody) and /usr/bin/python3")
@pytest.mark.async_timeout(120)
async def test_another_user_cannot_connect(src, env):
    port = debug_port()
    probe = (f"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
             "s.sendall(b'{\"method\":\"RPCServer.State\",\"params\":[{\"NonBlocking\":true}],\"id\":1}\\n'); "
             "s.settimeout(10); print(repr(s.recv(100)))")
    async with running_target(src, port) as (_, target):
        proc = await asyncio.create_subprocess_exec("runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-I", "-c",
                                                    probe, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        # refused: the connection is reset (or closed) without an answer
        assert b"result" not in out and (b"ConnectionResetError" in err or out.strip() == b"b''"), (out, err)
        assert await target.paused() is None               # our own connection still works


@pytest.mark.async_timeout(120)
async def test_missing_delve_and_taken_port(src, env):
    with pytest.raises(DelveError, match="Debian's 'delve' package"):
        find_dlv({"PATH": str(env)})

    ctx = plugin_ctx(src)
    with pytest.raises(DelveError, match="apt-get install delve"):
        await DelveTarget(ctx, debug_port()).start(str(src / "build" / "bin" / "plugin"),
                                                   {**plugin_env(), "PATH": str(env)})
    with pytest.raises(DelveError, match="cannot run the plugin binary .*no-such-plugin: not found"):
        await DelveTarget(ctx, debug_port()).start(str(env / "no-such-plugin"), plugin_env())
    not_a_binary = env / "not-a-binary"
    not_a_binary.write_text("garbage\n")
    not_a_binary.chmod(0o755)
    target = DelveTarget(ctx, debug_port())
    with pytest.raises(DelveError, match="(?s)delve exited with code 1; its output:.*not an executable file"):
        await target.start(str(not_a_binary), plugin_env(), timeout=30)
    assert not target.running and target.exited.result() == 1
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        target = DelveTarget(ctx, holder.getsockname()[1])
        with pytest.raises(DelveError) as e:
            await target.start(str(src / "build" / "bin" / "plugin"), plugin_env(), timeout=30)
        assert e.value.port_taken and "in use" in str(e.value)
        assert not target.running


@pytest.mark.async_timeout(120)
async def test_timings(src, env):
    """Start → handshake under delve and restart → handshake, next to a plain start of the same binary."""
    binary = str(go_build(src))
    port = debug_port()

    ctx = plugin_ctx(src)
    loop = asyncio.get_running_loop()
    plain, start, restart = [], [], []
    for _ in range(3):
        handshake = loop.create_future()
        t0 = loop.time()
        child = await Child.spawn("plugin", [binary], env=plugin_env(), registry=ctx.children,
                                  on_line=lambda s, l: s == "stdout" and looks_like_handshake(l)
                                  and not handshake.done() and handshake.set_result(loop.time()))
        plain.append((await asyncio.wait_for(handshake, 30) - t0) * 1000)
        await child.stop(1)
    for _ in range(3):
        target = DelveTarget(ctx, port)
        t0 = loop.time()
        await target.start(binary, plugin_env(), timeout=60)
        start.append((loop.time() - t0) * 1000)
        t0 = loop.time()
        await target.restart(timeout=60)
        restart.append((loop.time() - t0) * 1000)
        await target.stop()

    def ms(values):
        return "/".join(f"{v:.0f}" for v in values) + " ms"
    print(f"\nstart → handshake: plain {ms(plain)}, under delve {ms(start)}; "
          f"restart under delve → handshake {ms(restart)}")
