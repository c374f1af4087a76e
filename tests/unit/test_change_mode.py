"""Broker.change_mode, the policy of the mode commands: desired state (persisted), Vite port, then the worker. A real
Registry and PortAllocator on temp files; the worker, supervisord and the event bus are small fakes."""
from __future__ import annotations

import asyncio
import json
import os
import socket
from types import SimpleNamespace

import pytest

from omnibroker import protocol
from omnibroker.broker import Broker
from omnibroker.commands import COMMANDS
from omnibroker.errors import CommandError, ErrorCode
from omnibroker.ports import PortAllocator
from omnibroker.registry import Registry


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "omni.toml").write_text("")
    plugin_dir = tmp_path / "p"
    plugin_dir.mkdir()
    b = Broker.__new__(Broker)
    b.registry = Registry(str(tmp_path / "omni.toml"), str(tmp_path / "state.json"))
    b.registry.add("p", str(plugin_dir), {})
    b.ports = PortAllocator(30100, 30110, b.registry.state.ports)
    b.debug_ports = PortAllocator(30200, 30210, b.registry.state.debug_ports, what="debug")
    b.dir_errors, b.held_program = {}, ""
    published = []
    b.events = SimpleNamespace(states={}, status=published.append, publish=lambda *a: published.append(a))

    async def program_info(plugin):
        return {"statename": b.held_program} if b.held_program else None
    b.supervisor = SimpleNamespace(program_info=program_info)
    b.workers = {}
    b.forwarded = []
    b.debug_forwarded = []

    async def forward(cmd, props, *, vite_port=0, debug_port=0):
        b.forwarded.append((cmd.name, dict(props), vite_port))
        b.debug_forwarded.append(debug_port)
        return "worker's answer"
    b.forward = forward
    b.published = published
    return b


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_start_persists_managed_takes_a_port_and_forwards_it(broker):
    assert run(COMMANDS["start"].execute(broker, {"plugin": "p", "vite": False})) == "worker's answer"
    assert broker.registry.get("p").desired == protocol.Desired(mode="managed", vite=False, go=True)
    assert broker.forwarded == [("start", {"plugin": "p", "vite": False, "go": True}, 0)]     # no Vite, no port
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))     # vite as last asked (False) unless given
    run(COMMANDS["start"].execute(broker, {"plugin": "p", "vite": True}))
    port = broker.ports.port_of("p")
    assert port and broker.forwarded[-1] == ("start", {"plugin": "p", "vite": True, "go": True}, port)
    reread = Registry(broker.registry.config_path, broker.registry.state_path)
    assert reread.get("p").desired.mode == "managed"


def test_start_refuses_a_bad_id_and_a_missing_directory(broker):
    with pytest.raises(CommandError) as err:
        run(COMMANDS["start"].execute(broker, {"plugin": "../x"}))
    assert err.value.code == ErrorCode.BAD_PROPERTY
    os.rmdir(broker.registry.get("p").spec.path)
    with pytest.raises(CommandError) as err:
        run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    assert err.value.code == ErrorCode.NO_PLUGIN_DIR and broker.forwarded == []
    assert broker.registry.get("p").desired.mode == "idle"


def test_stop_persists_idle_and_releases_the_port_even_when_the_worker_fails(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    port = broker.ports.port_of("p")
    assert port

    async def fails(cmd, props, *, vite_port=0):
        raise CommandError(ErrorCode.TIMEOUT, "no answer")
    broker.forward = fails
    with pytest.raises(CommandError):
        run(COMMANDS["stop"].execute(broker, {"plugin": "p"}))
    assert broker.registry.get("p").desired.mode == "idle" and broker.ports.port_of("p") is None
    saved = json.loads(open(broker.registry.state_path).read())["ports"]      # the state file says so too
    assert saved["held"] == {} and saved["preferred"] == {"p": port}


def test_stop_of_a_held_worker_program_answers_the_state_without_the_worker(broker):
    broker.held_program = "FATAL"
    state = run(COMMANDS["stop"].execute(broker, {"plugin": "p"}))
    assert state["mode"] == "idle" and state["pluginID"] == "p" and broker.forwarded == []
    assert broker.published[-1].mode == "idle"


def test_attach_persists_external_and_releases_the_port(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    run(COMMANDS["attach"].execute(broker, {"plugin": "p"}))
    assert broker.registry.get("p").desired.mode == "external" and broker.ports.port_of("p") is None
    assert broker.forwarded[-1] == ("attach", {"plugin": "p"}, 0)


def test_detach_leaves_only_external_mode(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    run(COMMANDS["detach"].execute(broker, {"plugin": "p"}))
    assert broker.registry.get("p").desired.mode == "managed"           # a managed plugin stays managed
    run(COMMANDS["attach"].execute(broker, {"plugin": "p"}))
    run(COMMANDS["detach"].execute(broker, {"plugin": "p"}))
    assert broker.registry.get("p").desired.mode == "idle"
    assert [f[0] for f in broker.forwarded] == ["start", "detach", "attach", "detach"]


def test_restart_keeps_the_mode_and_takes_the_port_when_there_is_one(broker):
    run(COMMANDS["restart"].execute(broker, {"plugin": "p"}))           # idle: no port
    assert broker.forwarded[-1] == ("restart", {"plugin": "p"}, 0) and broker.ports.port_of("p") is None
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    port = broker.ports.port_of("p")
    broker.ports.release("p")
    run(COMMANDS["restart"].execute(broker, {"plugin": "p"}))
    assert broker.forwarded[-1] == ("restart", {"plugin": "p"}, port)
    assert broker.registry.get("p").desired.mode == "managed"
    broker.ports.release("p")
    broker.ports = PortAllocator(30100, 30101, {})
    broker.ports.allocate("other")                                      # the only port is taken: none left
    run(COMMANDS["restart"].execute(broker, {"plugin": "p"}))           # the worker reports it, as for start
    assert broker.forwarded[-1] == ("restart", {"plugin": "p"}, 0)


def test_debug_is_recorded_with_the_desired_state_and_takes_a_debug_port(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p", "debug": True}))
    debug_port = broker.debug_ports.port_of("p")
    assert debug_port and broker.debug_forwarded[-1] == debug_port
    assert broker.forwarded[-1][1] == {"plugin": "p", "vite": True, "go": True}     # `debug` is the broker's to keep
    assert Registry(broker.registry.config_path, broker.registry.state_path).get("p").desired.debug
    run(COMMANDS["restart"].execute(broker, {"plugin": "p"}))            # a restart keeps debug mode and its port
    assert broker.debug_forwarded[-1] == debug_port
    run(COMMANDS["stop"].execute(broker, {"plugin": "p"}))
    assert broker.debug_ports.port_of("p") is None and broker.registry.get("p").desired.debug
    run(COMMANDS["start"].execute(broker, {"plugin": "p"}))             # as last time: debug, the same port
    assert broker.debug_forwarded[-1] == debug_port
    run(COMMANDS["restart"].execute(broker, {"plugin": "p", "debug": False}))
    assert broker.debug_forwarded[-1] == 0 and not broker.registry.get("p").desired.debug
    assert broker.debug_ports.port_of("p") is None                      # free for others meanwhile
    run(COMMANDS["start"].execute(broker, {"plugin": "p", "debug": True}))
    assert broker.debug_forwarded[-1] == debug_port                     # the preferred port, persisted
    reread = json.loads(open(broker.registry.state_path).read())
    assert reread["debug_ports"]["preferred"] == {"p": debug_port}


def test_a_start_without_go_takes_no_debug_port(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p", "go": False, "debug": True}))
    assert broker.debug_forwarded[-1] == 0 and broker.debug_ports.port_of("p") is None


def test_an_exhausted_debug_range_fails_the_start_and_changes_nothing(broker):
    broker.debug_ports = PortAllocator(30200, 30201, {}, what="debug")
    broker.debug_ports.allocate("other")
    with pytest.raises(CommandError) as e:
        run(COMMANDS["start"].execute(broker, {"plugin": "p", "debug": True}))
    assert e.value.code == ErrorCode.NO_PORT and "debug port range" in e.value.reason
    assert broker.ports.port_of("p") is None and broker.registry.get("p").desired.mode == "idle"


def test_a_debug_port_held_by_another_program_moves_the_plugin_and_says_so(broker):
    run(COMMANDS["start"].execute(broker, {"plugin": "p", "debug": True}))
    first = broker.debug_ports.port_of("p")
    run(COMMANDS["stop"].execute(broker, {"plugin": "p"}))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first))
        holder.listen()
        run(COMMANDS["start"].execute(broker, {"plugin": "p"}))
    moved = broker.debug_ports.port_of("p")
    assert moved != first and broker.debug_forwarded[-1] == moved
    logs = [a for a in broker.published if isinstance(a, tuple) and a[0] == protocol.LOG]
    message = logs[-1][1][0].message
    assert f"debug port {first} is not free" in message and f"has port {moved} now" in message
