"""Each part's named states and transitions (omniworker/state.py), DevServerState composed from them, and the
transitions the parts make — Vite, the Go path, DevServer's mode — driven with the doubles of doubles.py (no real
process)."""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from doubles import FakeBuilder, FakeChild, FakeHost, FakeWatcher, context, status, statuses
from support.waits import wait_event

from omnibroker import protocol
from omniworker import gopath, vite
from omniworker.devserver import DevServer
from omniworker.state import (TRANSITIONS, ExternalStatus, GoStatus, InvalidTransition, Mode, PartState,
                              ViteStatus, compose)


def run(coro, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIVIEW_HOME", str(tmp_path / "home"))


# --- the tables ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enum", [Mode, ViteStatus, GoStatus, ExternalStatus])
def test_every_state_has_its_row_and_every_target_is_a_state(enum):
    table = TRANSITIONS[enum]
    assert set(table) == set(enum)
    assert all(targets <= set(enum) for targets in table.values())


def test_a_listed_transition_changes_the_state_and_an_unlisted_one_raises():
    seen = []
    part = PartState("vite", ViteStatus.IDLE, {"vitePort": 0}, lambda: seen.append(1))
    part.change_state(ViteStatus.STARTING, vitePort=15173)
    part.change_state(ViteStatus.READY)
    part.change_state(ViteStatus.READY)                 # to itself: an update
    assert part.state is ViteStatus.READY and part.fields["vitePort"] == 15173 and len(seen) == 3
    with pytest.raises(InvalidTransition, match="vite: invalid transition READY -> STARTING"):
        part.change_state(ViteStatus.STARTING)          # a ready Vite restarts only after it failed or stopped
    assert part.state is ViteStatus.READY and len(seen) == 3
    with pytest.raises(KeyError, match="pluginPid"):
        part.update(pluginPid=1)                        # not a field this part owns


def test_mode_changes_go_through_idle():
    ctx, _ = context()
    ctx.mode.change_state(Mode.MANAGED)
    with pytest.raises(InvalidTransition):
        ctx.mode.change_state(Mode.EXTERNAL)
    ctx.mode.change_state(Mode.IDLE)
    ctx.mode.change_state(Mode.EXTERNAL)
    assert ctx.state.mode == "external"


# --- composition ---------------------------------------------------------------------------------------------------
def test_composed_fields_come_from_the_part_of_the_current_mode():
    ctx, sink = context()
    ctx.go.change_state(GoStatus.STARTING)
    ctx.go.change_state(GoStatus.READY, pluginPid=42)
    ctx.vite.change_state(ViteStatus.STARTING, vitePort=15180)
    ctx.vite.change_state(ViteStatus.READY)
    st = ctx.state
    assert (st.goStatus, st.grpcConnected, st.pluginPid) == ("ready", True, 42)
    assert (st.viteStatus, st.viteURL) == ("ready", "http://127.0.0.1:15180")
    with ctx.batch():                                   # one status event for both
        ctx.mode.change_state(Mode.EXTERNAL)
        ctx.external.change_state(ExternalStatus.CONNECTED, pluginPid=7, vitePort=5173, viteStatus="stopped")
    assert statuses(sink, "mode")[-1] == "external" and sink.events[-2][1]["mode"] == "idle"
    st = ctx.state
    assert (st.goStatus, st.grpcConnected, st.pluginPid, st.vitePort, st.viteURL) == ("running", True, 7, 5173, "")
    ctx.external.change_state(ExternalStatus.UNHEALTHY)
    assert ctx.state.goStatus == "running" and not ctx.state.grpcConnected and ctx.state.pluginPid == 7


def test_last_error_is_the_newest_part_error_and_clearing_it_uncovers_the_older():
    ctx, _ = context()
    ctx.vite.change_state(ViteStatus.ERROR, lastError="vite broke")
    ctx.go.set_error("go broke")
    assert ctx.state.lastError == "go broke"
    ctx.go.set_error("")
    assert ctx.state.lastError == "vite broke"
    ctx.vite.set_error("")
    assert ctx.state.lastError == ""


def test_restarts_add_up_over_the_parts():
    ctx, _ = context()
    ctx.vite.count_restart()
    ctx.go.count_restart()
    ctx.go.count_restart()
    assert ctx.state.restarts == 3


def test_compose_only_names_devserverstate_fields():
    ctx, _ = context()
    fields = compose(ctx.state, ctx.mode, ctx.vite, ctx.go, ctx.external)
    assert set(fields) <= set(type(ctx.state).__struct_fields__)


# --- Vite ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_vite(monkeypatch, tmp_path):
    (tmp_path / "ui" / "node_modules").mkdir(parents=True)
    answering = {"on": True}

    async def http_answers(port, timeout=1.0):
        return answering["on"]

    FakeChild.spawned = []
    monkeypatch.setattr(vite, "Child", FakeChild)
    monkeypatch.setattr(vite, "http_answers", http_answers)
    monkeypatch.setattr(vite, "_listens", lambda pid, port: True)
    ctx, sink = context(str(tmp_path), vite={"command": ["vite"], "restart_backoff": 0, "restart_backoff_max": 0})
    return vite.ViteServer(ctx), ctx, sink


def test_vite_starting_ready_crash_restart_stop(fake_vite):
    server, ctx, sink = fake_vite

    async def body():
        await server.start(15190)
        assert await server.wait_running(5)
        assert ctx.state.viteURL == "http://127.0.0.1:15190"
        FakeChild.spawned[-1].exit(1)                   # READY -> ERROR -> (backoff) STARTING -> READY
        await wait_event(sink, status(lambda p: len(FakeChild.spawned) == 2 and p["viteStatus"] == "ready"), 5)
        await server.stop()

    run(body())
    assert statuses(sink, "viteStatus") == ["starting", "ready", "error", "starting", "ready", "stopped"]
    assert ctx.state.restarts == 1 and ctx.state.vitePort == 0 and ctx.state.lastError == ""


def test_vite_stop_clears_its_own_error_only(fake_vite):
    server, ctx, sink = fake_vite

    async def body():
        await server.start(15191)
        assert await server.wait_running(5)
        FakeChild.spawned[-1].exit(3)
        await wait_event(sink, status(lambda p: p["viteStatus"] == "error"), 5)
        ctx.go.set_error("go's own error")
        await server.stop()

    run(body())
    assert ctx.state.lastError == "go's own error" and ctx.vite.error == ""


# --- the Go path -----------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_go(monkeypatch, tmp_path):
    FakeHost.start_error = None
    monkeypatch.setattr(gopath, "Builder", FakeBuilder)
    monkeypatch.setattr(gopath, "PluginHost", FakeHost)
    monkeypatch.setattr(gopath, "GoWatcher", FakeWatcher)
    monkeypatch.setattr(gopath.GoPath, "_install", lambda self, result: (0, 0))   # no file; _settle finds it replaced
    ctx, sink = context(str(tmp_path), go={"enabled": True, "build_on_start": "always", "restart_backoff": 0,
                                           "restart_backoff_max": 0})
    path = gopath.GoPath(ctx)
    os.makedirs(path.bin_dir, exist_ok=True)
    open(path.installed, "w").close()
    return path, ctx, sink


def test_go_build_switch_crash_restart_stop(fake_go):
    path, ctx, sink = fake_go

    async def body():
        await path.start()
        assert ctx.state.goStatus == "ready" and ctx.state.grpcConnected
        first = ctx.state.pluginPid
        path.plugin.crash()                             # READY -> STARTING -> READY (a new process)
        await wait_event(sink, status(lambda p: p["goStatus"] == "ready" and p["pluginPid"] not in (0, first)), 5)
        await path.stop()

    run(body())
    assert statuses(sink, "goStatus") == ["starting", "building", "starting", "ready", "starting", "ready",
                                          "stopped"]
    assert ctx.state.restarts == 1 and not ctx.state.grpcConnected and ctx.state.pluginPid == 0


def test_go_failed_build_is_an_error_with_its_message(fake_go):
    path, ctx, sink = fake_go
    path.builder.fail = True

    async def body():
        await path.start()
        await path.stop()

    run(body())
    assert statuses(sink, "goStatus")[:3] == ["starting", "building", "error"]
    assert "broken" in [p for t, p in sink.events if t == "plugin/devserver/status"][-2]["lastError"]


# --- DevServer -------------------------------------------------------------------------------------------------------
def test_devserver_modes_and_what_idle_shows(fake_vite, fake_go):
    _, ctx, sink = fake_vite
    ctx.settings.go = fake_go[1].settings.go            # one context with both halves faked
    ds = DevServer(ctx)

    async def body():
        await ds.start(vite_port=15192)
        assert ds.mode == "managed" and await ds.vite.wait_running(5)
        await wait_event(sink, status(lambda p: p["goStatus"] == "ready"), 5)
        assert ctx.state.grpcConnected and ctx.state.viteStatus == "ready"
        await ds.attach()                               # MANAGED -> IDLE -> EXTERNAL
        assert ds.mode == "external" and ctx.vite.state is ViteStatus.STOPPED
        assert ctx.state.goStatus == "idle" and not ctx.state.grpcConnected     # no .devinfo yet
        await ds.detach()                               # EXTERNAL -> IDLE: nothing runs
        st = ctx.state
        assert (st.mode, st.viteStatus, st.goStatus, st.vitePort, st.pluginPid) == ("idle", "idle", "idle", 0, 0)

    run(body(), 30)


def test_devserver_without_a_vite_port_reports_it_and_takes_one_later(fake_vite):
    server, ctx, sink = fake_vite
    ds = DevServer(ctx)

    async def body():
        await ds.start(go=False, vite_port=0)
        assert ctx.state.viteStatus == "error" and "no Vite port" in ctx.state.lastError
        await ds.start(go=False, vite_port=15193)        # ERROR -> STARTING, the port error forgotten
        assert await ds.vite.wait_running(5) and ctx.state.lastError == ""
        await ds.stop()

    run(body())
    assert ctx.state.mode == "idle" and ctx.state.viteStatus == "stopped"


# --- the plugin slot -------------------------------------------------------------------------------------------------
class Host:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    async def invoke(self, method, request, timeout):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def unavailable():
    import grpc
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")


def test_slot_waits_for_a_coming_host_and_moves_to_the_next_one_when_its_host_goes():
    from omniworker.runtime import PluginSlot
    coming = {"on": True}

    async def body():
        slot = PluginSlot("the plugin", coming=lambda: coming["on"], why=lambda last: last or "none")
        first, second = Host([unavailable()]), Host([b"second"])
        call = asyncio.ensure_future(slot.call("/a.B/C", b"", 5.0))
        await asyncio.sleep(0)
        slot.set(first)                                 # wakes the waiting call at once
        while first.calls == 0:
            await slot.changed(0.01)
        slot.set(second)                                # the process it called was replaced: retried there
        assert await call == b"second"

    run(body())


def test_slot_errors_say_nothing_runs_the_time_ran_out_or_the_plugin_answered_so():
    from omnibroker.protocol import CommandError
    from omniworker.runtime import PluginSlot
    coming = {"on": False}

    async def body():
        slot = PluginSlot("the plugin", coming=lambda: coming["on"], why=lambda last: "it was stopped")
        with pytest.raises(CommandError) as e:
            await slot.call("/a.B/C", b"", 1.0)
        assert e.value.code == "not_running" and "it was stopped" in e.value.reason
        coming["on"] = True
        with pytest.raises(CommandError) as e:
            await slot.call("/a.B/C", b"", 0.05)
        assert e.value.code == "timeout"
        maybe = PluginSlot("the plugin", coming=lambda: True, why=lambda last: "it died", none_came="not_running")
        with pytest.raises(CommandError) as e:
            await maybe.call("/a.B/C", b"", 0.05)       # one only might come (a developer's process that died)
        assert e.value.code == "not_running" and "it died" in e.value.reason
        coming["on"] = False
        slot.set(Host([unavailable()]))                 # a live process answering UNAVAILABLE itself
        with pytest.raises(CommandError) as e:
            await slot.call("/a.B/C", b"", 2.0)
        assert e.value.code == "rpc_error" and "UNAVAILABLE" in e.value.reason

    run(body())


# --- the external follower -------------------------------------------------------------------------------------------
def test_external_idle_connected_unhealthy_gone_invalid(monkeypatch):
    from doubles import FakePidWatch, FakeRemote

    from omnibroker.protocol import DevInfo
    from omniworker import external

    files: dict = {"now": None}                         # what validate_devinfo finds: None (no file), a ValidDevInfo

    def validate(path, plugin_id, slack=1.0):           # or a DevInfoError
        found = files["now"]
        if found is None:
            raise external.DevInfoMissing(path)
        if isinstance(found, Exception):
            raise found
        return found

    async def no_vite(port, timeout=1.0):
        return False

    monkeypatch.setattr(external, "validate_devinfo", validate)
    monkeypatch.setattr(external, "PidWatch", FakePidWatch)
    monkeypatch.setattr(external, "http_answers", no_vite)
    ctx, sink = context(external={"health_interval": 3600})
    hosts: list[FakeRemote] = []
    follower = external.External(ctx, host_factory=lambda c: hosts.append(FakeRemote(c)) or hosts[-1])
    valid = external.ValidDevInfo(info=DevInfo(pid=4242, protocol="grpc", protocolVersion=1, addr="127.0.0.1:1"),
                                  network="tcp", address="127.0.0.1:1", create_time=1.0, key=(1, 2, 3, 4))

    async def body():
        ctx.mode.change_state(Mode.EXTERNAL)             # as DevServer.attach does
        await follower.attach()
        assert ctx.external.state is ExternalStatus.IDLE
        files["now"] = valid
        follower._mark_dirty()                          # what the debounced file watch calls: IDLE -> CONNECTED
        await wait_event(sink, status(lambda p: p["grpcConnected"]), 5)
        assert ctx.external.state is ExternalStatus.CONNECTED and ctx.external.fields["pluginPid"] == 4242
        hosts[-1].healthy = False
        await follower._health()                        # CONNECTED -> UNHEALTHY
        assert ctx.external.state is ExternalStatus.UNHEALTHY and "not serving" in ctx.external.error
        hosts[-1].healthy = True
        await follower._health()                        # UNHEALTHY -> CONNECTED
        assert ctx.external.state is ExternalStatus.CONNECTED and ctx.external.error == ""
        files["now"] = None
        follower._on_exit(follower._conn)               # the process exited: CONNECTED -> GONE
        assert ctx.external.state is ExternalStatus.GONE and "exited" in ctx.external.error
        files["now"] = external.DevInfoError(external.Code.JSON, "not JSON")
        follower._mark_dirty()                          # a wrong file: GONE -> INVALID
        await wait_event(sink, status(lambda p: p["goStatus"] == "error"), 5)
        assert ctx.external.state is ExternalStatus.INVALID
        await follower.detach()                         # INVALID -> IDLE
        assert ctx.external.state is ExternalStatus.IDLE and ctx.external.fields["pluginPid"] == 0

    run(body())


def test_slot_waits_instead_of_spinning_on_a_closed_channel():
    """A host whose calls are cut short (grpc.aio cancels the calls of a closing channel) is not called in a busy
    loop: the call waits for the host to change, so the event loop (heartbeat, the exit watcher) keeps running."""
    from omnibroker.protocol import CommandError
    from omniworker.runtime import PluginSlot

    async def body():
        slot = PluginSlot("the plugin", coming=lambda: True, why=lambda last: last)
        host = Host([asyncio.CancelledError()] * 100)
        slot.set(host)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        with pytest.raises(CommandError) as e:
            await slot.call("/a.B/C", b"", 1.2)
        ticker.cancel()
        assert e.value.code in ("timeout", "rpc_error") and host.calls <= 4 and ticks > 10

    run(body())


# --- debug mode ----------------------------------------------------------------------------------------------------
def test_debug_fields_come_from_the_go_path_in_managed_mode_only():
    ctx, sink = context()
    ctx.mode.change_state(Mode.MANAGED)
    ctx.go.update(debugPort=2345)
    ctx.go.update(paused=True, pausedAt="main.go:52")
    st = ctx.state
    assert (st.debugPort, st.paused, st.pausedAt) == (2345, True, "main.go:52")
    assert statuses(sink, "paused") == [False, True]
    ctx.go.update(paused=False, pausedAt="")
    with ctx.batch():
        ctx.mode.change_state(Mode.IDLE)
        ctx.mode.change_state(Mode.EXTERNAL)
    assert (ctx.state.debugPort, ctx.state.paused, ctx.state.pausedAt) == (0, False, "")


class FakeDelve:
    """delve's JSON-RPC client: a blocking `State` answers with a stop once, then `stops` says the target stays
    halted for that many looks before it runs again; breakpoints as listed."""

    def __init__(self, stops: int):
        from omniworker.delve import Stop
        self.stop = Stop("/src/pkg/main.go", 52, "main.(*greeter).Greet", 1)
        self.stops = stops
        self.blocking = 0
        self.closed = False
        self.released = asyncio.Event()

    async def call(self, method, params=None, timeout=10.0):
        assert (method, params, timeout) == ("State", {"NonBlocking": False}, None)
        self.blocking += 1
        if self.blocking > 1:                       # running: delve answers at the next stop (never, here)
            self.released.set()
            await asyncio.Event().wait()
        return {"State": {"Running": False, "currentThread": {
            "file": self.stop.file, "line": self.stop.line, "function": {"name": self.stop.function},
            "breakPoint": {"id": 1, "file": self.stop.file, "line": self.stop.line}}}}

    async def stopped_at(self):
        self.stops -= 1
        return self.stop if self.stops > 0 else None

    def send(self, method, params):
        assert (method, params) == ("ListBreakpoints", {"All": False})
        listed = asyncio.get_running_loop().create_future()
        listed.set_result({"Breakpoints": [{"id": -1, "file": "<runtime>", "line": 0},
                                           {"id": 1, "file": self.stop.file, "line": self.stop.line, "cond": ""}]})
        return listed

    async def close(self):
        self.closed = True


def test_a_stop_under_delve_shows_paused_and_where_and_the_breakpoints_are_remembered(monkeypatch):
    from omniworker import debugsession
    ctx, sink = context()
    ctx.mode.change_state(Mode.MANAGED)
    delve = FakeDelve(stops=3)

    async def connect(port):
        return delve
    monkeypatch.setattr(debugsession.DelveClient, "connect", connect)
    monkeypatch.setattr(debugsession, "PAUSE_POLL", 0.01)

    async def body():
        session = debugsession.DebugSession(ctx, 2345)
        target = SimpleNamespace(port=2345, running=True)
        watcher = asyncio.create_task(session._watch(target))
        await asyncio.wait_for(delve.released.wait(), 5)        # paused, then running: a blocking State again
        assert statuses(sink, "paused") == [False, True, False]
        assert [p for p in statuses(sink, "pausedAt")] == ["", "main.go:52", ""]
        assert session.breakpoints == [{"file": "/src/pkg/main.go", "line": 52}]
        assert delve.blocking == 2                              # no polling while it runs
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        assert delve.closed
    run(body())


def test_a_lost_delve_is_an_error_event_and_the_state_says_so():
    from omniworker.debugsession import DebugSession
    ctx, sink = context()
    ctx.mode.change_state(Mode.MANAGED)
    session = DebugSession(ctx, 2345)
    target = SimpleNamespace(address="127.0.0.1:2345")
    session.target = target
    session.breakpoints = [{"file": "/src/pkg/main.go", "line": 52}]
    ctx.go.update(debugPort=2345, paused=True, pausedAt="main.go:52")
    session._delve_exited(target, -9)
    assert not ctx.state.paused and "delve on 127.0.0.1:2345 exited with code -9" in ctx.state.lastError
    assert "1 breakpoints set again" in ctx.state.lastError
    assert [p for t, p in sink.events if t == protocol.ERROR][-1]["errors"][0]["message"] == ctx.state.lastError
    session._delve_exited(SimpleNamespace(address="x"), -9)     # an older delve's end: not this session's news
    assert len([t for t, _ in sink.events if t == protocol.ERROR]) == 1


def test_a_debug_port_taken_before_delve_listens_moves_to_the_brokers_next_one(monkeypatch):
    from omniworker import debugsession
    from omniworker.delve import DelveError
    ctx, sink = context()
    ctx.mode.change_state(Mode.MANAGED)
    asked = []

    async def other_port(kind, taken):
        asked.append((kind, taken))
        return 2399
    sink.other_port = other_port
    started = []

    class FakeTarget:
        def __init__(self, ctx, port, on_exit=None):
            self.port, self.running, self.plugin_pid = port, False, 4242

        async def start(self, binary, env, breakpoints=()):
            started.append((self.port, list(breakpoints)))
            if self.port == 2345:
                raise DelveError("delve cannot listen on 127.0.0.1:2345: the port is in use", port_taken=True)
            self.running = True
            return "1|1|unix|/tmp/plugin1|grpc|"

    async def no_delve(port):
        raise DelveError("not in this test")
    monkeypatch.setattr(debugsession, "DelveTarget", FakeTarget)
    monkeypatch.setattr(debugsession.DelveClient, "connect", no_delve)
    adopted = []
    host = SimpleNamespace(plugin_env=lambda: {}, adopt=lambda line, pid: adopted.append((line, pid)) or _done())

    async def body():
        session = debugsession.DebugSession(ctx, 2345)
        session.breakpoints = [{"file": "/src/pkg/main.go", "line": 52}]
        await session.launch(host, "/home/bin/plugin")
        assert asked == [("debug", 2345)] and session.port == 2399 and ctx.state.debugPort == 2399
        assert started == [(2345, session.breakpoints), (2399, session.breakpoints)]
        assert adopted == [("1|1|unix|/tmp/plugin1|grpc|", 4242)]
        assert any("debug port 2345 is in use by another program: delve listens on 2399" in p[0]["message"]
                   for t, p in sink.events if t == protocol.LOG)
        await asyncio.gather(session._watcher)
    run(body())


async def _done():
    return None
