"""External mode with real plugin processes: `run-external` → `attach` → `invoke`; `detach` leaves the plugin running;
kill -9 is noticed and `.devinfo` removed; restarts are followed; every kind of bad `.devinfo` is refused with its own
error event and no connection attempt; a hung plugin is caught by the health check.

Events are collected with NullSink; every wait is on an event (or a process exit) with a timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support.example import EXAMPLE, GO_ENV, REPO, copy_ui, go_build, greeter_pb
from support.waits import wait_event

from omnibroker import protocol
from omnibroker.protocol import CommandError
from omniworker.context import NullSink, PluginContext
from omniworker.devinfo import Code
from omniworker.external import External
from omniworker.state import Mode

PLUGIN = "hello"
FAST = {"external": {"health_interval": 0.5, "connect_timeout": 3.0}}


# ---------------------------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def plugin_bin(tmp_path_factory) -> str:
    """The example plugin built from a private copy of its sources."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain")
    src = tmp_path_factory.mktemp("hello-src")
    shutil.copytree(EXAMPLE / "pkg", src / "pkg")
    return str(go_build(src, "-p", "1", timeout=600))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("OMNIVIEW_HOME", str(h))
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    return h


def devinfo_path(home: Path) -> Path:
    return home / "plugins" / PLUGIN / ".devinfo"


class Followed(External):
    """External as DevServer runs it: the mode is external while it is attached (DevServer owns the mode)."""

    async def attach(self) -> None:
        self.ctx.mode.change_state(Mode.EXTERNAL)
        await super().attach()

    async def detach(self) -> None:
        await super().detach()
        self.ctx.mode.change_state(Mode.IDLE)


def make_ext(settings=None) -> tuple[External, NullSink, PluginContext]:
    sink = NullSink()
    spec = protocol.PluginSpec(id=PLUGIN, path=str(EXAMPLE), settings=settings or FAST)
    ctx = PluginContext(spec, sink)
    return Followed(ctx), sink, ctx


async def attach_connected(ext: External, sink: NullSink) -> tuple[int, int]:
    """Attach and wait until the plugin is connected; (its pid, the index of the next event)."""
    await ext.attach()
    await wait_event(sink, is_status(grpcConnected=True), 30)
    return ext.info().pid, len(sink.events)


async def assert_no_event(sink: NullSink, pred, duration: float, since: int) -> None:
    """Nothing matching pred for `duration` seconds."""
    try:
        i = await wait_event(sink, pred, duration, since)
    except AssertionError:
        return
    raise AssertionError(f"unexpected event: {sink.events[i]}")


def is_status(**fields):
    return lambda t, p: t == protocol.STATUS and all(p.get(k) == v for k, v in fields.items())


def is_error(code: str):
    return lambda t, p: t == protocol.ERROR and any(e["message"].startswith(code + ": ") for e in p["errors"])


def is_log(fragment: str):
    return lambda t, p: t == protocol.LOG and any(fragment in e["message"] for e in p)


class RunExternal:
    """`omnictl run-external` as a real subprocess (its output kept in files)."""

    def __init__(self, tmp: Path, home: Path, cmd: list[str], args: list[str] = (), name: str = "rx"):
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        env = dict(os.environ, OMNIVIEW_HOME=str(home), PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniworker.run_external", PLUGIN, *args, "--", *cmd], cwd=str(tmp), env=env,
            stdout=open(self.out, "wb"), stderr=open(self.err, "wb"), start_new_session=True)

    def plugin_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    async def wait(self, timeout: float = 15.0) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def greet(name: str) -> bytes:
    return greeter_pb.encode_greet_request(name)


async def assert_greets(ext: External, name: str = "omni") -> None:
    reply = greeter_pb.decode_greet_reply(await ext.invoke(greeter_pb.GREET_METHOD, greet(name), 5.0))
    assert reply.endswith(", " + name), reply


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def wait_exit(pid: int, timeout: float = 10.0) -> None:
    await asyncio.wait_for(asyncio.to_thread(_wait_gone, pid), timeout)


def _wait_gone(pid: int) -> None:
    try:
        psutil.Process(pid).wait()
    except psutil.Error:
        pass


# ---------------------------------------------------------------------------------------------------------------
# run-external → attach → invoke; detach leaves it running

async def test_run_external_attach_invoke_detach(plugin_bin, home, tmp_path):
    rx = RunExternal(tmp_path, home, [plugin_bin])
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        assert ctx.state.mode == "external" and not ctx.state.grpcConnected
        await wait_event(sink, is_status(grpcConnected=True), 30)
        info = ext.info()
        assert info is not None and info.pluginId == PLUGIN and info.protocol == "grpc"
        assert ctx.state.pluginPid == info.pid and ctx.state.mode == "external"
        assert info.pid in rx.plugin_pids()                     # the plugin, not run-external itself
        st = os.stat(devinfo_path(home))
        assert st.st_mode & 0o777 == 0o600
        await assert_greets(ext)
        assert ext.connect_attempts == 1

        await ext.detach()
        assert ctx.state.mode == "idle" and not ctx.state.grpcConnected
        assert alive(info.pid) and rx.proc.poll() is None       # never ours to kill
        assert devinfo_path(home).exists()
        with pytest.raises(CommandError):
            await ext.invoke(greeter_pb.GREET_METHOD, greet("x"), 1.0)

        # Still serving: a second attach (a new worker, say) reattaches to the same process.
        ext2, sink2, ctx2 = make_ext()
        await ext2.attach()
        await wait_event(sink2, is_status(grpcConnected=True, pluginPid=info.pid), 10)
        await assert_greets(ext2, "again")

        # Ctrl-C to run-external: forwarded (go-plugin ignores SIGINT, so SIGTERM follows), .devinfo removed.
        mark = len(sink2.events)
        rx.proc.send_signal(signal.SIGINT)
        await wait_event(sink2, is_status(grpcConnected=False), 10, since=mark)
        assert await rx.wait(15) == 0, rx.stderr()
        assert not devinfo_path(home).exists()
        assert not alive(info.pid)
        await ext2.detach()
    finally:
        rx.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# death

async def test_kill9_plugin_started_by_run_external(plugin_bin, home, tmp_path):
    rx = RunExternal(tmp_path, home, [plugin_bin])
    try:
        ext, sink, ctx = make_ext()
        pid, mark = await attach_connected(ext, sink)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await wait_event(sink, is_status(grpcConnected=False, pluginPid=0), 2.0, since=mark)
        noticed = time.monotonic() - t0
        assert noticed < 2.0
        assert ctx.state.lastError.startswith(f"external plugin process {pid} exited")
        await rx.wait(10)                                       # run-external ends with its plugin
        assert not devinfo_path(home).exists()
        assert ext.info() is None
        await ext.detach()
    finally:
        rx.cleanup()


async def test_kill9_run_external_takes_the_plugin_down_and_stale_devinfo_is_removed(plugin_bin, home, tmp_path):
    """run-external killed with SIGKILL cannot clean up: PDEATHSIG kills the plugin, and the worker removes the
    `.devinfo` that names the dead pid."""
    rx = RunExternal(tmp_path, home, [plugin_bin])
    try:
        ext, sink, ctx = make_ext()
        pid, mark = await attach_connected(ext, sink)
        t0 = time.monotonic()
        rx.proc.kill()
        await wait_event(sink, is_status(grpcConnected=False), 2.0, since=mark)
        assert time.monotonic() - t0 < 2.0
        await wait_event(sink, is_log(f"removed {devinfo_path(home)}"), 2.0, since=mark)
        assert not devinfo_path(home).exists()
        assert not alive(pid)
        await ext.detach()
    finally:
        rx.cleanup()


async def test_kill9_sdk_written_devinfo_removed_only_if_it_names_the_dead_pid(plugin_bin, home, tmp_path):
    """The plugin's own devinfo package writes `.devinfo` (OMNIVIEW_DEV=1); after kill -9 nobody but the worker can
    remove it."""
    env = dict(os.environ, OMNIVIEW_HOME=str(home), OMNIVIEW=PLUGIN, PLUGIN_PROTOCOL_VERSIONS="1", OMNIVIEW_DEV="1")
    plugin = subprocess.Popen([plugin_bin], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        await wait_event(sink, is_status(grpcConnected=True, pluginPid=plugin.pid), 30)
        await assert_greets(ext)
        mark = len(sink.events)
        t0 = time.monotonic()
        plugin.kill()
        await wait_event(sink, is_status(grpcConnected=False, pluginPid=0), 2.0, since=mark)
        assert time.monotonic() - t0 < 2.0
        await wait_event(sink, is_log("removed"), 2.0, since=mark)
        assert not devinfo_path(home).exists()
        await ext.detach()
    finally:
        plugin.kill()
        plugin.wait()


# ---------------------------------------------------------------------------------------------------------------
# restarts

@pytest.mark.async_timeout(150)
async def test_restart_with_new_pid_is_followed(plugin_bin, home, tmp_path):
    a = RunExternal(tmp_path, home, [plugin_bin], name="a")
    others: list[RunExternal] = []
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        await wait_event(sink, is_status(grpcConnected=True), 30)
        pid_a = ext.info().pid

        # 1. a new instance replaces .devinfo while the old one still runs
        mark = len(sink.events)
        b = RunExternal(tmp_path, home, [plugin_bin], name="b")
        others.append(b)
        await wait_event(sink, lambda t, p: t == protocol.RELOAD_COMPLETE, 30, since=mark)
        pid_b = ext.info().pid
        assert pid_b != pid_a and pid_b in b.plugin_pids()
        assert ctx.state.grpcConnected and ctx.state.pluginPid == pid_b
        await assert_greets(ext, "b")
        # the old one goes away: it must not take b's .devinfo (or our connection) with it
        a.proc.terminate()
        await a.wait(15)
        assert json.loads(devinfo_path(home).read_text())["pid"] == pid_b
        await assert_greets(ext, "still-b")
        assert ctx.state.grpcConnected and ctx.state.pluginPid == pid_b

        # 2. air-style: the old one dies first, then a new one appears
        mark = len(sink.events)
        os.kill(pid_b, signal.SIGKILL)
        await wait_event(sink, is_status(grpcConnected=False), 2.0, since=mark)
        await b.wait(10)
        c = RunExternal(tmp_path, home, [plugin_bin], name="c")
        others.append(c)
        await wait_event(sink, lambda t, p: t == protocol.RELOAD_COMPLETE, 30, since=mark)
        await wait_event(sink, is_status(grpcConnected=True), 5, since=mark)
        assert ctx.state.pluginPid == ext.info().pid and ext.info().pid in c.plugin_pids()
        await assert_greets(ext, "c")
        await ext.detach()
        assert c.proc.poll() is None
    finally:
        for rx in [a, *others]:
            rx.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# bad .devinfo files: each its own error event, no connection attempt

class Canary:
    """A unix socket we listen on and put in `.devinfo` files, so any connection attempt would show up here."""

    def __init__(self, tmp: Path):
        self.path = str(tmp / "canary.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)

    def connections(self, wait: float = 0.0) -> int:
        n = 0
        while select.select([self.sock], [], [], wait if n == 0 else 0)[0]:
            conn, _ = self.sock.accept()
            conn.close()
            n += 1
        return n

    def close(self) -> None:
        self.sock.close()


def _good_doc(addr: str, pid: int | None = None) -> dict:
    return {"pid": pid or os.getpid(), "protocol": "grpc", "protocolVersion": 1, "addr": addr, "pluginId": PLUGIN,
            "vitePort": 0, "version": "0.1.0", "startedAt": protocol.now_rfc3339()}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_bad(kind: str, staging: Path, canary: Canary, keep: list) -> tuple[Path, str]:
    """A bad .devinfo prepared in `staging` (moved into place atomically by the caller), and its error code."""
    f = staging / f"{kind}.json"
    doc = _good_doc(canary.path)
    data = json.dumps(doc).encode()
    mode = 0o600
    if kind == "invalid_json":
        data, code = data[:-7], Code.JSON
    elif kind == "missing_fields":
        data, code = json.dumps({"pid": os.getpid(), "protocol": "grpc"}).encode(), Code.SHAPE
    elif kind == "dead_pid":
        data, code = json.dumps(_good_doc(canary.path, _dead_pid())).encode(), Code.PID_DEAD
    elif kind == "reused_pid":
        sleeper = subprocess.Popen(["sleep", "60"])            # alive, ours, but younger than the file
        keep.append(sleeper)
        data, code = json.dumps(_good_doc(canary.path, sleeper.pid)).encode(), Code.PID_REUSED
    elif kind == "unrelated_pid":
        sleeper = subprocess.Popen(["sleep", "60"])            # alive, ours, older than the file, listens nowhere
        keep.append(sleeper)
        data, code = json.dumps(_good_doc(canary.path, sleeper.pid)).encode(), Code.PID_NOT_LISTENING
    elif kind == "non_loopback":
        data, code = json.dumps(_good_doc("10.0.0.1:1234")).encode(), Code.ADDR_NOT_LOOPBACK
    elif kind == "world_writable":
        mode, code = 0o666, Code.PERMISSIONS
    elif kind == "too_large":
        data, code = data + b" " * (10 * 1024 * 1024), Code.TOO_LARGE
    elif kind == "symlink":
        target = staging / "target.json"
        target.write_bytes(data)
        target.chmod(0o600)
        os.symlink(target, f)
        return f, Code.SYMLINK
    else:
        raise ValueError(kind)
    f.write_bytes(data)
    f.chmod(mode)
    if kind == "reused_pid":
        past = time.time() - 3600
        os.utime(f, (past, past))
    return f, code


BAD_KINDS = ["invalid_json", "missing_fields", "dead_pid", "reused_pid", "unrelated_pid", "non_loopback", "symlink",
             "world_writable", "too_large"]


@pytest.mark.parametrize("when", ["before_attach", "after_attach"])
@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.async_timeout(30)
async def test_bad_devinfo_is_refused_without_connecting(kind, when, home, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    canary = Canary(tmp_path)
    keep: list[subprocess.Popen] = []
    target = devinfo_path(home)
    target.parent.mkdir(parents=True, mode=0o700)
    try:
        ext, sink, ctx = make_ext()
        staged, code = make_bad(kind, staging, canary, keep)
        if when == "before_attach":
            os.rename(staged, target)
            await ext.attach()
        else:
            await ext.attach()
            os.rename(staged, target)
        _, payload = sink.events[await wait_event(sink, is_error(code), 5)]
        (err,) = payload["errors"]
        assert err["file"] == str(target)
        assert len(err["message"]) > len(code) + 10               # a sentence, not just a code
        assert ctx.state.lastError == err["message"]
        await wait_event(sink, is_log(code + ": "), 1)
        # no connection: nothing dialled, the canary socket named by the file saw nobody, state says detached
        assert ext.connect_attempts == 0
        assert canary.connections(wait=0.2) == 0
        assert not ctx.state.grpcConnected and ctx.state.pluginPid == 0 and ext.info() is None
        assert ctx.state.mode == "external"
        # reported once, not again at every health tick (0.5 s)
        await assert_no_event(sink, lambda t, p: t == protocol.ERROR, 1.2, since=len(sink.events))
        await ext.detach()
    finally:
        canary.close()
        for p in keep:
            p.kill()
            p.wait()


@pytest.mark.async_timeout(30)
async def test_canary_sees_a_connection_attempt_when_the_file_is_valid(home, tmp_path):
    """Control for the test above: the same canary does see a dial when validation passes (so its silence there
    means something); a canary is no gRPC server, so this ends in an external_connect error."""
    canary = Canary(tmp_path)
    target = devinfo_path(home)
    target.parent.mkdir(parents=True, mode=0o700)
    staged = tmp_path / "ok.json"
    staged.write_text(json.dumps(_good_doc(canary.path)))
    staged.chmod(0o600)
    try:
        ext, sink, ctx = make_ext({"external": {"health_interval": 30, "connect_timeout": 1.0}})
        await ext.attach()
        os.rename(staged, target)
        await wait_event(sink, is_error(Code.CONNECT), 10)
        assert ext.connect_attempts == 1
        assert await asyncio.to_thread(canary.connections, 1.0) >= 1
        assert not ctx.state.grpcConnected
        await ext.detach()
    finally:
        canary.close()


@pytest.mark.async_timeout(60)
async def test_bad_then_good_devinfo_connects(plugin_bin, home, tmp_path):
    """Nothing is stuck after a refusal: a valid file that follows is attached."""
    canary = Canary(tmp_path)
    target = devinfo_path(home)
    target.parent.mkdir(parents=True, mode=0o700)
    target.write_text("{not json")
    target.chmod(0o600)
    rx = None
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        await wait_event(sink, is_error(Code.JSON), 5)
        target.chmod(0o666)                                     # chmod alone is noticed too
        await wait_event(sink, is_error(Code.PERMISSIONS), 5)
        target.unlink()
        rx = RunExternal(tmp_path, home, [plugin_bin])
        await wait_event(sink, is_status(grpcConnected=True, lastError=""), 30)
        await assert_greets(ext)
        assert ext.connect_attempts == 1 and canary.connections() == 0
        # deletion of the file while connected: disconnect (the plugin is left alone)
        mark = len(sink.events)
        pid = ext.info().pid
        target.unlink()
        await wait_event(sink, is_status(grpcConnected=False), 5, since=mark)
        assert alive(pid)
        await ext.detach()
    finally:
        canary.close()
        if rx is not None:
            rx.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# alive but hung

@pytest.mark.async_timeout(60)
async def test_hung_plugin_is_caught_by_the_health_check(plugin_bin, home, tmp_path):
    rx = RunExternal(tmp_path, home, [plugin_bin])
    try:
        ext, sink, ctx = make_ext()          # health_interval 0.5 s
        pid, mark = await attach_connected(ext, sink)
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_event(sink, is_error(Code.UNHEALTHY), 5, since=mark)
            await wait_event(sink, is_status(grpcConnected=False), 1, since=mark)
            assert ctx.state.pluginPid == pid                   # still there, just not answering
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_event(sink, is_status(grpcConnected=True, lastError=""), 5, since=mark)
        await assert_greets(ext)
        await ext.detach()
    finally:
        rx.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# run-external details

def test_run_external_wrong_cookie_says_so(plugin_bin, home, tmp_path):
    rx = RunExternal(tmp_path, home, [plugin_bin], ["--cookie-value", "not-hello"])
    try:
        assert rx.proc.wait(20) != 0
        err = rx.stderr()
        assert "magic cookie" in err and "--cookie-key/--cookie-value" in err, err
        assert not devinfo_path(home).exists()
    finally:
        rx.cleanup()


def test_run_external_without_handshake_times_out(home, tmp_path):
    rx = RunExternal(tmp_path, home, ["sleep", "30"], ["--handshake-timeout", "0.5"])
    try:
        assert rx.proc.wait(20) != 0
        assert "no go-plugin handshake" in rx.stderr()
        assert not devinfo_path(home).exists()
    finally:
        rx.cleanup()


@pytest.mark.slow
async def test_run_external_with_vite(plugin_bin, home, tmp_path):
    if not (EXAMPLE / "ui" / "node_modules" / ".bin" / "vite").exists():
        pytest.skip("example UI has no node_modules")
    src = copy_ui(tmp_path / "plugin")
    rx = RunExternal(tmp_path, home, [plugin_bin], ["--vite", "--dir", str(src)])
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        await wait_event(sink, is_status(grpcConnected=True), 30)
        port = ext.info().vitePort
        assert 15173 <= port <= 15273
        await wait_event(sink, is_status(viteStatus="ready", viteURL=f"http://127.0.0.1:{port}"), 40)
        assert ctx.state.vitePort == port
        await ext.detach()
        rx.proc.terminate()
        assert await rx.wait(20) == 0
        assert not devinfo_path(home).exists()
    finally:
        rx.cleanup()


# ---------------------------------------------------------------------------------------------------------------
# robustness

async def test_death_during_calls_and_health_checks(plugin_bin, home, tmp_path):
    """Calls in flight and (very frequent) health checks when the plugin dies: callers get a CommandError, never a
    stray CancelledError (grpc.aio cancels the calls of a channel being closed), and external mode keeps working."""
    settings = {"external": {"health_interval": 0.02, "connect_timeout": 3.0}}
    rx = RunExternal(tmp_path, home, [plugin_bin], name="a")
    others: list[RunExternal] = []
    try:
        ext, sink, ctx = make_ext(settings)
        await ext.attach()
        await wait_event(sink, is_status(grpcConnected=True), 30)
        pid = ext.info().pid
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def caller():
            while not stop.is_set():
                try:
                    await ext.invoke(greeter_pb.GREET_METHOD, greet("x"), 0.5)
                    outcomes.append("ok")
                except CommandError as e:
                    outcomes.append(e.code)
                    return

        callers = [asyncio.create_task(caller()) for _ in range(4)]
        await wait_event(sink, is_status(grpcConnected=True), 1)
        while len(outcomes) < 20:
            await asyncio.wait(callers, timeout=0.05)
        mark = len(sink.events)
        os.kill(pid, signal.SIGKILL)
        await wait_event(sink, is_status(grpcConnected=False), 2, since=mark)
        done, pending = await asyncio.wait(callers, timeout=5)
        stop.set()
        assert not pending
        for task in done:
            assert task.exception() is None                 # CommandError is caught inside; nothing else escapes
        assert {o for o in outcomes if o != "ok"} <= {protocol.ErrorCode.NOT_RUNNING, protocol.ErrorCode.RPC}
        assert not ext._main_task.done()
        b = RunExternal(tmp_path, home, [plugin_bin], name="b")
        others.append(b)
        await wait_event(sink, is_status(grpcConnected=True), 30, since=mark)
        await assert_greets(ext, "after")
        await ext.detach()
    finally:
        for r in [rx, *others]:
            r.cleanup()


@pytest.mark.async_timeout(30)
async def test_plugin_dir_removed_and_recreated_is_watched_again(home, tmp_path):
    ext, sink, ctx = make_ext()          # health_interval 0.5 s re-checks the watch
    await ext.attach()
    d = devinfo_path(home).parent
    shutil.rmtree(d)
    d.mkdir(mode=0o700)
    mark = len(sink.events)
    staged = tmp_path / "bad.json"
    staged.write_text("{oops")
    staged.chmod(0o600)
    os.rename(staged, d / ".devinfo")
    await wait_event(sink, is_error(Code.JSON), 5, since=mark)
    assert ext.connect_attempts == 0
    await ext.detach()


@pytest.mark.slow
@pytest.mark.async_timeout(150)
async def test_run_external_go_run_records_the_serving_binary(plugin_bin, home, tmp_path):
    """`run-external -- go run ./pkg`: the handshake comes from the compiled binary, a child of `go`; `.devinfo`
    names that process (whose death is the plugin's death), not the `go` command."""
    src = Path(plugin_bin).parents[2]
    env_backup = {k: os.environ.get(k) for k in GO_ENV}
    os.environ.update(GO_ENV)
    try:
        rx = RunExternal(tmp_path, home, ["go", "run", "-p", "1", "./pkg"], ["--dir", str(src)])
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        ext, sink, ctx = make_ext()
        await ext.attach()
        await wait_event(sink, is_status(grpcConnected=True), 120)
        pid = ext.info().pid
        proc = psutil.Process(pid)
        assert proc.parent().pid != rx.proc.pid and os.path.basename(proc.parent().exe()).startswith("go")
        await assert_greets(ext)
        mark = len(sink.events)
        os.kill(pid, signal.SIGKILL)
        await wait_event(sink, is_status(grpcConnected=False), 2, since=mark)
        await rx.wait(15)
        assert not devinfo_path(home).exists()
        await ext.detach()
    finally:
        rx.cleanup()
