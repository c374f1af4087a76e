"""Debug mode end to end: a real service (supervisord, broker, worker), real delve, the example plugin.

`start --debug` → the state's debugPort lies in the debug range and delve answers there; through delve's JSON-RPC API
(as an IDE would): halt, a breakpoint in the Greet handler, continue; an `invoke` stops there, the state says paused
and where, the plugin is not restarted however long it stays paused; continued, the invoke answers. A save → reload:
the same port, the breakpoint listed and hit again. delve killed → reported, a new delve on the same port with the
breakpoint. `stop` → no delve and no plugin left. Also: delve missing is a clear error; another user cannot connect
to the debug port; `run-external --debug` runs the binary under delve and omni attaches to it. Every wait is on an
event or a state, with a timeout.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

import psutil
import pytest

from omnibroker import protocol
from omnibroker.client import Client
from omniworker.delve import DEBUG_PORTS, DelveClient, stop_of
from support.config import plugin_toml, toml_str
from support.example import GREET, VENV_BIN, copy_example, go_build, greet_reply, greet_request, set_greeting
from support.service import Service, descendants

pytestmark = pytest.mark.skipif(shutil.which("go") is None or shutil.which("dlv") is None,
                                reason="needs the Go toolchain and delve")

PLUGIN = "dbg"


def greet_line(main_go: Path) -> int:
    """The first statement of the Greet handler."""
    lines = main_go.read_text().splitlines()
    return next(i for i, line in enumerate(lines) if line.startswith("func (g *greeter) Greet(")) + 2


def processes(svc: Service, name: str) -> list[psutil.Process]:
    """The service's processes called `name` (supervisord's descendants)."""
    return [p for p in descendants(svc.proc.pid) if p.name() == name]


async def invoke(svc: Service, name: str, timeout: float = 60) -> str:
    """A Greet call on a client of its own (the service's client serves the state polls meanwhile)."""
    def call() -> protocol.Reply:
        client = Client(svc.endpoint("control"), timeout=timeout + 5, retries=1, context=svc.ctx)
        try:
            return client.request("invoke", wait=timeout + 5, plugin=PLUGIN, method=GREET,
                                  request=greet_request(name), timeout=timeout)
        finally:
            client.close()
    reply = await asyncio.to_thread(call)
    assert reply.status == "ok", f"invoke: {reply.code}: {reply.reason}"
    return greet_reply(reply.result)


async def state(svc: Service, what: str, pred, timeout: float = 120) -> dict:
    return await asyncio.to_thread(svc.wait_state, PLUGIN, pred, timeout, what)


async def set_breakpoint(client: DelveClient, file: str, line: int) -> dict:
    """As an IDE does: halt, create the breakpoint, continue."""
    await client.halt()
    bp = await client.create_breakpoint(file, line)
    client.resume()
    return bp


async def hit(svc: Service, client: DelveClient, name: str, at: str) -> str:
    """An invoke stops at the breakpoint: the state says paused at `at`; continued, the invoke answers."""
    events = svc.subscribe(protocol.STATUS)
    try:
        call = asyncio.ensure_future(invoke(svc, name))
        await asyncio.to_thread(events.wait, lambda e: e.payload["pluginID"] == PLUGIN and e.payload["paused"]
                                and e.payload["pausedAt"] == at, 60, f"a status paused at {at}")
    finally:
        events.close()
    assert not call.done()
    client.resume()
    reply = await asyncio.wait_for(call, 60)
    await state(svc, "running again", lambda s: not s["paused"] and s["pausedAt"] == "", 30)
    return reply


@pytest.mark.async_timeout(600)
async def test_debug_session_through_pause_reload_and_a_killed_delve(tmp_path):
    src = copy_example(tmp_path / PLUGIN, ui=False)
    main_go = src / "pkg" / "main.go"
    line = greet_line(main_go)
    at = f"main.go:{line}"
    with Service(plugin_toml(PLUGIN, src, autostart=False)) as svc:
        events = svc.subscribe(protocol.ERROR)
        try:
            svc.call("start", plugin=PLUGIN, debug=True)
            ready = await state(svc, "ready under delve", lambda s: s["goStatus"] == "ready" and s["debugPort"], 300)
            port = ready["debugPort"]
            assert DEBUG_PORTS[0] <= port < DEBUG_PORTS[1] and not ready["paused"]
            assert [p.pid for p in processes(svc, "dlv")]
            client = await DelveClient.connect(port)
            assert await invoke(svc, "plain") == "Hello, plain"

            bp = await set_breakpoint(client, str(main_go), line)
            pid, restarts = ready["pluginPid"], ready["restarts"]
            call = asyncio.ensure_future(invoke(svc, "omni"))
            paused = await state(svc, "paused at the breakpoint", lambda s: s["paused"] and s["pausedAt"] == at, 60)
            assert paused["pluginPid"] == pid
            # paused is not dead: no status saying otherwise for several seconds (a bounded wait on events)
            since = svc.subscribe(protocol.STATUS)
            try:
                with pytest.raises(AssertionError, match="no restart"):
                    await asyncio.to_thread(since.wait, lambda e: e.payload["pluginID"] == PLUGIN and (
                        not e.payload["paused"] or e.payload["pluginPid"] != pid), 5, "restart")
            finally:
                since.close()
            assert not call.done()
            client.resume()
            assert await asyncio.wait_for(call, 60) == "Hello, omni"
            now = await state(svc, "running again", lambda s: not s["paused"], 30)
            assert (now["pluginPid"], now["restarts"], now["pausedAt"]) == (pid, restarts, "")

            # a save: rebuilt with the debug flags, restarted under the same delve, same port, breakpoint kept
            set_greeting(src, "Howdy", atomic=True)
            reloaded = await state(svc, "reloaded", lambda s: s["goStatus"] == "ready" and s["pluginPid"] != pid, 300)
            assert reloaded["debugPort"] == port
            await client.halt()
            assert [(b["id"], b["file"], b["line"]) for b in await client.breakpoints()] == \
                [(bp["id"], str(main_go), line)]
            client.resume()
            assert await hit(svc, client, "again", at) == "Howdy, again"

            # delve killed: reported, the plugin restarted under a new delve on the same port, the breakpoint set again
            dlv = processes(svc, "dlv")
            assert len(dlv) == 1
            dlv[0].send_signal(signal.SIGKILL)
            error = await asyncio.to_thread(events.wait, lambda e: e.topic == protocol.ERROR and "delve on" in str(
                e.payload), 30, "an error event about delve")
            assert f"127.0.0.1:{port} exited" in str(error.payload)
            back = await state(svc, "back under a new delve",
                               lambda s: s["goStatus"] == "ready" and s["pluginPid"] not in (0, reloaded["pluginPid"]),
                               120)
            assert back["debugPort"] == port and [p.pid for p in processes(svc, "dlv")] != [dlv[0].pid]
            await client.close()
            client = await DelveClient.connect(port)
            await client.halt()
            assert [(b["file"], b["line"]) for b in await client.breakpoints()] == [(str(main_go), line)]
            client.resume()
            assert await hit(svc, client, "third", at) == "Howdy, third"
            await client.close()

            # stop: no delve and no plugin left
            plugin_pid = back["pluginPid"]
            svc.call("stop", plugin=PLUGIN)
            stopped = await state(svc, "stopped", lambda s: s["mode"] == "idle" and not s["debugPort"], 30)
            assert not stopped["paused"]
            gone = await asyncio.to_thread(psutil.wait_procs, [psutil.Process(p.pid) for p in processes(svc, "dlv")],
                                           10)
            assert not gone[1] and not processes(svc, "dlv") and not psutil.pid_exists(plugin_pid)
        finally:
            events.close()


@pytest.mark.async_timeout(300)
async def test_missing_delve_is_a_clear_error(tmp_path):
    """delve is looked up on the plugin's PATH (`[plugin] env`): one without it is the missing delve."""
    src = copy_example(tmp_path / PLUGIN, ui=False)
    config = plugin_toml(PLUGIN, src, autostart=False) + \
        f"[plugins.{PLUGIN}.plugin]\nenv = {{ PATH = {toml_str(str(tmp_path))} }}\n"
    with Service(config) as svc:
        svc.call("start", plugin=PLUGIN, debug=True)
        failed = await state(svc, "the error", lambda s: "delve" in s["lastError"], 300)
        assert "install Debian's 'delve' package" in failed["lastError"]
        assert failed["debugPort"] == 0 and failed["goStatus"] == "error"


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")     # one that user nobody may run


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None or SYSTEM_PYTHON is None,
                    reason="needs root (runuser -u nobody) and /usr/bin/python3")
@pytest.mark.async_timeout(300)
async def test_another_user_cannot_connect_to_the_debug_port(tmp_path):
    src = copy_example(tmp_path / PLUGIN, ui=False)
    with Service(plugin_toml(PLUGIN, src, autostart=False)) as svc:
        svc.call("start", plugin=PLUGIN, debug=True)
        port = (await state(svc, "ready under delve", lambda s: s["goStatus"] == "ready" and s["debugPort"],
                            300))["debugPort"]
        probe = (f"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
                 "s.sendall(b'{\"method\":\"RPCServer.State\",\"params\":[{\"NonBlocking\":true}],\"id\":1}\\n'); "
                 "s.settimeout(10); print(repr(s.recv(100)))")
        proc = await asyncio.create_subprocess_exec("runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-I", "-c", probe,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        # refused: the connection is reset (or closed) without an answer
        assert b"result" not in out and (b"ConnectionResetError" in err or out.strip() == b"b''"), (out, err)
        client = await DelveClient.connect(port)                 # the same user is served
        try:
            assert (await client.state())["Running"]
        finally:
            await client.close()


@pytest.mark.async_timeout(300)
async def test_run_external_debug_runs_the_binary_under_delve_and_omni_attaches(tmp_path):
    src = copy_example(tmp_path / PLUGIN, ui=False)
    binary = go_build(src, "-gcflags=all=-N -l")
    main_go = src / "pkg" / "main.go"
    with Service() as svc:
        svc.call("add", plugin=PLUGIN, path=str(src))
        svc.call("attach", plugin=PLUGIN)
        runner = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "omnictl"), "run-external", PLUGIN, "--debug", "--cookie-value", "hello", "--", str(binary),
            env=svc.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            said = []
            while not any("debugger: delve on" in line for line in said):
                raw = await asyncio.wait_for(runner.stderr.readline(), 60)
                assert raw, f"run-external ended: {said}"
                said.append(raw.decode())
            port = int(re.search(r"delve on 127\.0\.0\.1:(\d+)", said[-1]).group(1))
            assert DEBUG_PORTS[0] <= port < DEBUG_PORTS[1]
            attached = await state(svc, "attached", lambda s: s["mode"] == "external" and s["grpcConnected"], 60)
            dlv = psutil.Process(attached["pluginPid"]).parent()
            assert dlv.name() == "dlv" and dlv.pid in [p.pid for p in descendants(runner.pid)]
            client = await DelveClient.connect(port)
            await set_breakpoint(client, str(main_go), greet_line(main_go))
            call = asyncio.ensure_future(invoke(svc, "ext"))
            stop = None
            while stop is None or stop.breakpoint <= 0:     # delve's own view: the target's stop at a breakpoint
                stop = stop_of((await client.call("State", {"NonBlocking": False}, timeout=60))["State"])
            assert (stop.file, stop.line) == (str(main_go), greet_line(main_go)) and not call.done()
            client.resume()
            assert await asyncio.wait_for(call, 60) == "Hello, ext"
            await client.close()
        finally:
            runner.send_signal(signal.SIGTERM)
            await asyncio.wait_for(runner.communicate(), 30)
        assert not psutil.pid_exists(attached["pluginPid"]) and not dlv.is_running()
        assert not (svc.home / "plugins" / PLUGIN / ".devinfo").exists()
